//! `--udp`: one thread of a UDP echo load run, its own small loop over `mio` UDP sockets
//! (the TCP loops are built on connections; this shares their start line, schedule,
//! progress and report). Each socket is connected to the target, so it receives only the
//! target's datagrams, and sends datagrams carrying a sequence number: closed loop (the
//! next when the echo is back, or when the outstanding one timed out and counts as lost)
//! or, with a rate, on the schedule. A reply after its timeout is late (still lost), a
//! second reply to one datagram a duplicate; neither is matched twice.
//!
//! Datagram format: the sequence number (8 bytes, big-endian, per socket from 0), then
//! `--size - 8` bytes derived from it, all checked in the echo.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::progress::{publish, PROGRESS_INTERVAL};
use super::rate::{share, Rate};
use super::{hand_over_second, SECOND};
use super::{LoopResult, Shared, StopAt};
use crate::client::pace::LATE_AFTER;
use crate::client::report::{Interval, SecondTally, Tally};
use crate::client::timer::SlotTimer;
use crate::net::{describe, ListenAddr};

/// Bytes of the sequence number at the start of every datagram: the smallest `--size`.
pub const SEQ_LEN: usize = 8;
/// The largest UDP payload over IPv4: the largest `--size` with `--udp`.
pub const MAX_DATAGRAM: usize = 65_507;
/// Datagrams whose fate (answered, lost) each socket remembers at least, so a duplicate
/// is told from a late reply; with a rate, enough for twice the datagrams sent within a
/// timeout, up to [`MAX_HISTORY`].
const MIN_HISTORY: usize = 256;
const MAX_HISTORY: usize = 65_536;
/// Longest sleep of a loop with nothing due: how often it looks at the clock at least.
const MAX_TICK: Duration = Duration::from_millis(100);
/// Datagrams read from one socket per event before the others get their turn.
const READS_PER_EVENT: usize = 256;
const WAKER: Token = Token(usize::MAX - 1);
const SLOT_TIMER: Token = Token(usize::MAX - 2);

/// What became of one datagram sent.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Sent, echo awaited. `counted`: sent in the measured window.
    Waiting {
        intended: Instant,
        sent: Instant,
        counted: bool,
    },
    Answered,
    /// Its timeout passed (or the history overflowed) without an echo.
    Lost,
}

/// One socket of the loop.
struct Sock {
    socket: UdpSocket,
    /// The next sequence number, also the datagrams sent so far (the schedule's count).
    next_seq: u64,
    /// The fates of sequence numbers `first_seq..next_seq`.
    history: VecDeque<Fate>,
    first_seq: u64,
    /// Datagrams awaiting their echo.
    waiting: usize,
    /// The last send would have blocked: WRITABLE is registered until it goes.
    blocked: bool,
}

/// One thread's sockets and counters.
struct UdpLoop<'a> {
    shared: &'a Shared<'a>,
    thread: usize,
    poll: Poll,
    socks: Vec<Sock>,
    /// (socket, sequence number, deadline), in send order: deadlines only grow.
    expiries: VecDeque<(usize, u64, Instant)>,
    tally: Tally,
    /// The current second of the measured window (handed over as it passes).
    second: SecondTally,
    interval: Option<Interval>,
    rate: Option<Rate>,
    /// With `--requests`: datagrams this loop may still send in the measured window.
    budget: Option<u64>,
    history: usize,
    size: usize,
    timeout: Duration,
    pipeline: usize,
    /// Scratch: the datagram being sent, and one received.
    out: Vec<u8>,
    input: Vec<u8>,
    measure_start: Instant,
    last_answer: Option<Instant>,
}

/// Runs UDP loop `index` of `threads` from opening its sockets to the end of the run.
pub(super) fn run(shared: &Shared<'_>, index: usize, threads: usize) -> io::Result<LoopResult> {
    let config = shared.config;
    let (_, count) = share(config.connections, threads, index);
    let setup = UdpLoop::open(shared, index, threads, count);
    let opened = setup.as_ref().map_or(0, |l| l.socks.len() as u64);
    // Every loop reaches the barrier, even after an error, or the others would wait forever.
    shared.connected.fetch_add(opened, Ordering::SeqCst);
    if shared.barrier.wait().is_leader() {
        let _ = shared.start.set(Instant::now());
    }
    shared.barrier.wait();
    let mut udp = setup?;
    udp.tally.connected = opened;
    let Some(&start) = shared.start.get() else {
        return Err(io::Error::other("the run's start time was not set"));
    };
    if shared.connected.load(Ordering::SeqCst) == 0 || shared.control.is_stopped() {
        return Ok(udp.finish(None));
    }
    udp.measure_start = start + config.warmup;
    udp.serve(start)
}

/// The byte at `offset` of datagram `seq`'s payload: differs between datagrams, so an
/// echo of another one (or a stale buffer) does not pass.
#[inline]
fn payload_byte(seq: u64, offset: usize) -> u8 {
    (seq.wrapping_add(offset as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> 56) as u8
}

fn fill(datagram: &mut [u8], seq: u64) {
    datagram[..SEQ_LEN].copy_from_slice(&seq.to_be_bytes());
    for (offset, byte) in datagram[SEQ_LEN..].iter_mut().enumerate() {
        *byte = payload_byte(seq, offset);
    }
}

/// A datagram of `size` bytes echoed whole: its sequence number, if so.
fn parse(datagram: &[u8], size: usize) -> Option<u64> {
    if datagram.len() != size {
        return None;
    }
    let seq = u64::from_be_bytes(datagram[..SEQ_LEN].try_into().ok()?);
    datagram[SEQ_LEN..]
        .iter()
        .enumerate()
        .all(|(offset, &byte)| byte == payload_byte(seq, offset))
        .then_some(seq)
}

impl<'a> UdpLoop<'a> {
    fn open(
        shared: &'a Shared<'a>,
        thread: usize,
        threads: usize,
        count: usize,
    ) -> io::Result<Self> {
        let config = shared.config;
        let ListenAddr::Tcp(target) = config.endpoint.addr else {
            return Err(io::Error::other("--udp needs a HOST PORT target"));
        };
        let poll = Poll::new()?;
        shared
            .control
            .add_waker(Arc::new(Waker::new(poll.registry(), WAKER)?));
        // This loop's part of the rate, in proportion to its sockets.
        let rate = config.rate.as_ref().map(|plan| {
            let part = count as f64 / config.connections as f64;
            Rate::new(plan, part, config.warmup, count as u64)
        });
        let history = match &config.rate {
            Some(plan) if count > 0 => {
                // Sized for the plan's highest rate, whatever second it comes in.
                let fastest = plan.rates().into_iter().fold(0.0, f64::max);
                let per_socket = fastest / config.connections as f64;
                ((per_socket * config.timeout.as_secs_f64() * 2.0).ceil() as usize)
                    .clamp(MIN_HISTORY, MAX_HISTORY)
            }
            _ => MIN_HISTORY.max(config.pipeline * 2),
        };
        let mut udp = UdpLoop {
            shared,
            thread,
            poll,
            socks: Vec::with_capacity(count),
            expiries: VecDeque::new(),
            tally: Tally::default(),
            second: SecondTally::new(0),
            interval: shared.progress.as_ref().map(|_| Interval::default()),
            rate,
            budget: match config.stop {
                StopAt::Requests(n) => Some(share(n as usize, threads, thread).1 as u64),
                StopAt::Duration(_) => None,
            },
            history,
            size: config.workload.size,
            timeout: config.timeout,
            pipeline: config.pipeline,
            out: vec![0; config.workload.size],
            input: vec![0; MAX_DATAGRAM + 1],
            measure_start: Instant::now(),
            last_answer: None,
        };
        for index in 0..count {
            match connected_socket(target) {
                Ok(mut socket) => {
                    udp.poll
                        .registry()
                        .register(&mut socket, Token(index), Interest::READABLE)?;
                    udp.socks.push(Sock {
                        socket,
                        next_seq: 0,
                        history: VecDeque::with_capacity(MIN_HISTORY.min(history)),
                        first_seq: 0,
                        waiting: 0,
                        blocked: false,
                    });
                }
                Err(e) => udp.tally.error(
                    |e| &mut e.connect,
                    || format!("cannot open a UDP socket to {target}: {}", describe(&e)),
                ),
            }
        }
        Ok(udp)
    }

    /// Sends and receives until the run ends; then waits for the echoes still due (at
    /// most the timeout) so that a datagram is only lost if its echo really did not come.
    fn serve(mut self, start: Instant) -> io::Result<LoopResult> {
        let config = self.shared.config;
        let deadline = match config.stop {
            StopAt::Duration(d) => Some(self.measure_start + d),
            StopAt::Requests(_) => None,
        };
        let mut slot_timer = match self.rate {
            Some(_) => SlotTimer::new(self.poll.registry(), SLOT_TIMER)?,
            None => None,
        };
        let mut events = Events::with_capacity(1024);
        let progress = self.interval.is_some();
        let mut next_publish = start + PROGRESS_INTERVAL;
        // The measured window's seconds, as the TCP loops keep them.
        let mut next_second = self.measure_start + SECOND;
        loop {
            let now = Instant::now();
            while now >= next_second {
                hand_over_second(
                    self.shared,
                    self.thread,
                    &mut self.second,
                    &mut self.tally.pace,
                    false,
                );
                next_second += SECOND;
            }
            if self.shared.control.is_stopped() {
                return Ok(self.finish(Some(now)));
            }
            self.expire(now);
            let sending = deadline.is_none_or(|d| now < d) && self.budget != Some(0);
            let next_slot = if sending {
                self.send_due(start, deadline, now)
            } else {
                None
            };
            let waiting: usize = self.socks.iter().map(|s| s.waiting).sum();
            if self.socks.is_empty() || (!self.can_send(deadline, now) && waiting == 0) {
                let ended = match deadline {
                    Some(d) => d.min(now),
                    None => now,
                };
                return Ok(self.finish(Some(ended)));
            }
            if progress && now >= next_publish {
                self.publish();
                next_publish += PROGRESS_INTERVAL;
            }
            let mut wake_at = now + MAX_TICK;
            if let Some(&(_, _, at)) = self.expiries.front() {
                wake_at = wake_at.min(at);
            }
            if let Some(d) = deadline.filter(|&d| d > now) {
                wake_at = wake_at.min(d);
            }
            if progress {
                wake_at = wake_at.min(next_publish);
            }
            wake_at = wake_at.min(next_second);
            if self.budget.is_some() && now < self.measure_start {
                wake_at = wake_at.min(self.measure_start);
            }
            if let Some(at) = next_slot {
                match &mut slot_timer {
                    Some(timer) => timer.arm(at, now)?,
                    None => wake_at = wake_at.min(at),
                }
            }
            match self
                .poll
                .poll(&mut events, Some(wake_at.saturating_duration_since(now)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                let index = event.token().0;
                if index >= self.socks.len() {
                    continue; // the waker or the slot timer: only ends the wait
                }
                if event.is_writable() && self.socks[index].blocked {
                    self.socks[index].blocked = false;
                    self.poll.registry().reregister(
                        &mut self.socks[index].socket,
                        Token(index),
                        Interest::READABLE,
                    )?;
                }
                self.receive(index, now);
            }
        }
    }

    /// Whether anything more may be sent: before the deadline, with budget left.
    fn can_send(&self, deadline: Option<Instant>, now: Instant) -> bool {
        deadline.is_none_or(|d| now < d) && self.budget != Some(0)
    }

    /// Sends what is due on every socket: closed loop, up to the pipeline; with a rate,
    /// every schedule slot whose time has come. Returns the next slot's time, if any.
    fn send_due(
        &mut self,
        start: Instant,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for index in 0..self.socks.len() {
            loop {
                if self.socks[index].blocked || self.budget == Some(0) {
                    break;
                }
                let intended = match &self.rate {
                    Some(rate) => {
                        let slot = rate.slot_of(index, self.socks[index].next_seq);
                        let Some(at) = rate.slot_time(start, slot) else {
                            break;
                        };
                        if deadline.is_some_and(|d| at >= d) {
                            break;
                        }
                        if at > now {
                            next = Some(next.map_or(at, |n: Instant| n.min(at)));
                            break;
                        }
                        at
                    }
                    None if self.socks[index].waiting < self.pipeline => now,
                    None => break,
                };
                if !self.send(index, intended, now) {
                    break;
                }
            }
        }
        next
    }

    /// Sends socket `index`'s next datagram; false if the socket is full (WRITABLE is
    /// then registered and the datagram goes when it is writable).
    fn send(&mut self, index: usize, intended: Instant, now: Instant) -> bool {
        let counted = intended >= self.measure_start;
        if counted && self.budget == Some(0) {
            return false;
        }
        let sock = &mut self.socks[index];
        let seq = sock.next_seq;
        fill(&mut self.out, seq);
        match sock.socket.send(&self.out) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sock.blocked = true;
                if let Err(e) = self.poll.registry().reregister(
                    &mut sock.socket,
                    Token(index),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    log::error!("udp: cannot wait for room to send: {e}");
                }
                return false;
            }
            Err(e) => {
                // A refusal (ICMP port unreachable) for an earlier datagram is reported on
                // this send: this one did not go, and is counted lost like the others.
                let target = self.shared.config.endpoint.to_string();
                if self.tally.first_error.is_none() {
                    self.tally.first_error = Some(refused(&target, &e));
                }
            }
        }
        sock.next_seq += 1;
        sock.waiting += 1;
        sock.history.push_back(Fate::Waiting {
            intended,
            sent: now,
            counted,
        });
        if sock.history.len() > self.history {
            if let Some(Fate::Waiting { .. }) = sock.history.pop_front() {
                sock.waiting -= 1;
            }
            sock.first_seq += 1;
        }
        self.expiries.push_back((index, seq, now + self.timeout));
        if counted {
            self.tally.sent += 1;
            self.tally.bytes_out += self.out.len() as u64;
            if self.rate.is_some() {
                let second_of = |at: Instant| {
                    at.saturating_duration_since(self.measure_start).as_secs() as usize
                };
                let late = now.saturating_duration_since(intended) > LATE_AFTER;
                self.tally.pace.intend(second_of(intended));
                self.tally.pace.send(second_of(now), late);
            }
            if let Some(budget) = &mut self.budget {
                *budget -= 1;
            }
        }
        true
    }

    /// Marks lost every datagram whose timeout has passed without its echo.
    fn expire(&mut self, now: Instant) {
        while let Some(&(index, seq, at)) = self.expiries.front() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            let sock = &mut self.socks[index];
            let Some(slot) = seq
                .checked_sub(sock.first_seq)
                .and_then(|i| sock.history.get_mut(i as usize))
            else {
                continue; // already out of the history: counted when it left
            };
            if let Fate::Waiting { .. } = slot {
                *slot = Fate::Lost;
                sock.waiting -= 1;
            }
        }
    }

    /// Reads every datagram socket `index` has and matches each to what it sent.
    fn receive(&mut self, index: usize, now: Instant) {
        for _ in 0..READS_PER_EVENT {
            let n = match self.socks[index].socket.recv(&mut self.input) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let target = self.shared.config.endpoint.to_string();
                    if self.tally.first_error.is_none() {
                        self.tally.first_error = Some(refused(&target, &e));
                    }
                    continue;
                }
            };
            let sock = &mut self.socks[index];
            let Some(seq) = parse(&self.input[..n], self.size) else {
                self.tally.error(
                    |e| &mut e.mismatched,
                    || format!("a {n}-byte reply is not the echo of a datagram sent"),
                );
                self.second.errors += 1;
                if let Some(interval) = &mut self.interval {
                    interval.errors += 1;
                }
                continue;
            };
            let Some(offset) = seq.checked_sub(sock.first_seq) else {
                self.tally.datagrams_late += 1; // beyond the history: long late
                continue;
            };
            let Some(slot) = sock.history.get_mut(offset as usize) else {
                self.tally.error(
                    |e| &mut e.mismatched,
                    || format!("a reply for datagram {seq}, which was never sent"),
                );
                self.second.errors += 1;
                continue;
            };
            match *slot {
                Fate::Waiting {
                    intended,
                    sent,
                    counted,
                } => {
                    *slot = Fate::Answered;
                    sock.waiting -= 1;
                    if counted {
                        self.tally.completed += 1;
                        self.tally.bytes_in += n as u64;
                        self.tally.record(
                            now.saturating_duration_since(intended),
                            now.saturating_duration_since(sent),
                        );
                        self.second.record(now.saturating_duration_since(intended));
                        self.last_answer = Some(now);
                        if let Some(interval) = &mut self.interval {
                            interval.completed += 1;
                            interval.latency.saturating_record(
                                now.saturating_duration_since(intended).as_micros() as u64,
                            );
                        }
                    }
                }
                Fate::Answered => self.tally.datagrams_duplicate += 1,
                Fate::Lost => self.tally.datagrams_late += 1,
            }
        }
    }

    fn publish(&mut self) {
        if let Some(interval) = &mut self.interval {
            publish(self.shared, self.thread, interval);
        }
    }

    fn finish(mut self, ended: Option<Instant>) -> LoopResult {
        self.publish();
        hand_over_second(
            self.shared,
            self.thread,
            &mut self.second,
            &mut self.tally.pace,
            true,
        );
        // Still awaited when the run was cut short: in flight, neither received nor lost.
        self.tally.in_flight = self
            .socks
            .iter()
            .flat_map(|s| s.history.iter())
            .filter(|f| matches!(f, Fate::Waiting { counted: true, .. }))
            .count() as u64;
        LoopResult {
            tally: self.tally,
            ended,
            last_answer: self.last_answer,
        }
    }
}

/// A non-blocking UDP socket on an ephemeral port, connected to `target`.
fn connected_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(target)?;
    Ok(socket)
}

fn refused(target: &str, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        format!("{target} refused datagrams (ICMP port unreachable: is a UDP server there?)")
    } else {
        format!("UDP to {target}: {}", describe(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram parses back to its sequence number; any changed byte, or another size,
    /// does not.
    #[test]
    fn datagrams_carry_their_sequence_number() {
        let mut datagram = vec![0u8; 64];
        fill(&mut datagram, 12_345);
        assert_eq!(&datagram[..SEQ_LEN], &12_345u64.to_be_bytes());
        assert_eq!(parse(&datagram, 64), Some(12_345));
        assert_eq!(parse(&datagram[..63], 64), None);
        for i in [0, 7, 8, 63] {
            let mut bad = datagram.clone();
            bad[i] ^= 1;
            assert_eq!(parse(&bad, 64), None, "byte {i} changed");
        }
        let mut other = vec![0u8; 64];
        fill(&mut other, 12_346);
        assert_ne!(other[SEQ_LEN..], datagram[SEQ_LEN..]);
        let mut smallest = vec![0u8; SEQ_LEN];
        fill(&mut smallest, 7);
        assert_eq!(parse(&smallest, SEQ_LEN), Some(7));
    }
}
