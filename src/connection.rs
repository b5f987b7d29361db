//! One connection's life in one place: its socket, its inbound (unfinished frame) and
//! outbound (owed bytes) buffers, its phase (open → closing → lingering → closed), its
//! deadlines, and the one function that decides what it needs from the loop. The loop
//! schedules connections (events, timers, the sweep) and never reaches inside one.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use mio::{Interest, Registry, Token};

use crate::clock::Tick;
use crate::config::{Limits, Timeouts};
use crate::net::{describe, Peer, Stream, Transport};
use crate::outbound::{Outbound, Reply, Sink, SENDFILE_MAX_CHUNK};
use crate::protocol::{Flow, Produced, Protocol, Timeout};
pub use crate::stats::CloseReason;
use crate::stats::Stats;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// An outgoing connection whose non-blocking connect has not completed: what the
    /// protocol produced on opening waits in the queue until it has.
    Connecting,
    /// Reading requests and answering them.
    Open,
    /// No more reading: flush what is owed, then close.
    Closing,
    /// Our write side is shut and everything was sent; read and discard what the peer
    /// still sends until it closes or `until`, so that closing with unread input does not
    /// make the kernel answer with a reset that destroys our last reply (lingering close).
    /// How long it lingers is the connection's linger deadline (kept with its other
    /// deadlines, so a phase is one byte).
    Lingering,
    /// Done; removed in the sweep after the current batch of events.
    Closed,
}

/// Which of a connection's deadlines is the nearest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineKind {
    Connect,
    Idle,
    Frame,
    Write,
    Linger,
}

/// What serving a connection borrows from its loop for one turn.
pub struct Turn<'a, P> {
    pub protocol: &'a mut P,
    /// The reply, broadcasts and request count the protocol produces; the loop writes and
    /// delivers them after each connection's turn.
    pub produced: &'a mut Produced,
    pub read_buf: &'a mut [u8],
    pub limits: &'a Limits,
    pub timeouts: &'a Timeouts,
    pub stats: &'a mut Stats,
    pub now: Tick,
}

/// What a readiness event reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN arrived (with or before the data the event announces).
    pub read_closed: bool,
}

impl From<&mio::event::Event> for Readiness {
    fn from(event: &mio::event::Event) -> Self {
        // An error event (a reset while we only wait to write) is both: the write or read
        // reports the error.
        let error = event.is_error();
        Readiness {
            readable: event.is_readable() || event.is_read_closed() || error,
            writable: event.is_writable() || event.is_write_closed() || error,
            read_closed: event.is_read_closed(),
        }
    }
}

/// What the loop has to schedule for a connection after settling it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// It is closed: remove it in the sweep.
    pub finished: bool,
    /// Serve it next turn without waiting for an event: input may be waiting that
    /// edge-triggered epoll will not report again (a read budget ran out, a pause ended,
    /// streaming was cut by its budget).
    pub serve_again: bool,
    /// Arm a timer at this tick.
    pub timer: Option<Tick>,
}

/// What settling has to do, decided from the connection's state in one place
/// ([`Connection::wants`]); the steady state is `Interest` of what is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wants {
    Interest(Interest),
    /// Closing and everything owed is sent: shut the write side and linger.
    EndClosing,
    /// Reading was paused and the queue has drained to the low-water mark.
    Resume,
    /// Nothing left to wait for: remove it.
    Finished,
}

/// The deadlines of one connection, and the one timer armed for the nearest.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    last_activity: Tick,
    /// When the frame in progress (unconsumed bytes, or one the protocol consumes as it
    /// comes) started, or the last frame of it completed.
    frame_started: Option<Tick>,
    /// Since when output has been pending with no write progress.
    write_stalled_since: Option<Tick>,
    /// The deadline of this connection's entry in the loop's timer queue, if any.
    timer_at: Option<Tick>,
    /// Lingering: until when unread input is drained before the close.
    linger_until: Option<Tick>,
}

impl Deadlines {
    /// Only the idle deadline applies and its timer is armed: activity only moves the idle
    /// deadline later, so there is nothing to re-arm (the state between two messages).
    fn only_idle_armed(&self) -> bool {
        self.timer_at.is_some()
            && self.frame_started.is_none()
            && self.write_stalled_since.is_none()
    }
}

/// The socket error that ended a connection: what was being done (`connect`, `read`,
/// `write`, `reregister`) and the error, its text without Rust's "(os error N)".
#[derive(Debug)]
pub struct Failure {
    pub op: &'static str,
    pub error: io::Error,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.error)
    }
}

/// A connection taken apart once closed: what the loop and a client report need of it.
pub struct Ended<S> {
    pub session: S,
    pub peer: Peer,
    pub reason: CloseReason,
    /// Closed with a reset rather than gracefully.
    pub was_cut: bool,
    /// The socket error that ended it, if one did (a connect that timed out is one:
    /// `connect`, `TimedOut`).
    pub error: Option<Failure>,
}

/// A connection and everything the loop keeps for it. Idle, it holds no heap memory:
/// both buffers are unallocated while empty. `T` is its stream: a plain [`Stream`] (a
/// server), or one that may be under TLS (`net::AnyStream`, a client).
pub struct Connection<S, T = Stream> {
    stream: T,
    peer: Peer,
    /// Unique for the loop's lifetime; a slab key is reused, this is not, so stale
    /// timers and deferred work can tell a successor from the connection they meant.
    id: u64,
    session: S,
    /// The unconsumed tail of the input: an unfinished frame, or after a pause whatever
    /// the protocol has not consumed yet.
    inbound: Vec<u8>,
    outbound: Outbound,
    /// The interest currently registered with the poll.
    registered: Interest,
    phase: Phase,
    /// Reading stopped until the queue drains to the low-water mark: the protocol paused,
    /// or the queue reached the cap.
    paused: bool,
    /// Paused by the loop because its broadcasts filled other members' queues: it stays
    /// paused, whatever its own queue, until the loop releases it.
    held: bool,
    /// A pause left input the protocol has not consumed (complete frames perhaps): it is
    /// presented again before the socket is read.
    input_waiting: bool,
    /// The peer sent FIN.
    peer_closed: bool,
    close_reason: CloseReason,
    /// Closed with a reset rather than gracefully.
    was_cut: bool,
    /// The socket error that ended it, if one did (a client reports it).
    /// Boxed: rare, and a connection's size is the server's memory per idle connection.
    error: Option<Box<Failure>>,
    deadlines: Deadlines,
    /// Queued on the loop's list of connections to flush at the end of the batch.
    flush_queued: bool,
    /// A streaming protocol's `on_drained` was stopped by the per-turn budget while it
    /// still had output: the loop serves the connection again next turn, and until then
    /// an empty queue does not mean the connection is finished.
    more_to_stream: bool,
    /// A flush stopped at the per-turn file budget while the socket still took everything:
    /// the loop serves the connection again next turn to go on (epoll would not say).
    send_again: bool,
    /// An accepted connection's TLS handshake is under way: it runs on the frame clock,
    /// started at accept, so a handshake that stalls is closed after the frame timeout.
    handshaking: bool,
}

impl<S, T: Transport + Sink> Connection<S, T> {
    /// An accepted connection, registered READABLE by the caller. Under TLS, its
    /// handshake starts the frame clock.
    pub fn new(stream: T, peer: Peer, id: u64, session: S, now: Tick) -> Self {
        let mut conn = Connection::with_phase(stream, peer, id, session, now, Phase::Open);
        if T::TLS && conn.stream.is_handshaking() {
            conn.handshaking = true;
            conn.deadlines.frame_started = Some(now);
        }
        conn
    }

    /// An outgoing connection whose connect was started, registered READABLE | WRITABLE
    /// by the caller (a non-blocking connect completes as writability).
    pub fn connecting(stream: T, peer: Peer, id: u64, session: S, now: Tick) -> Self {
        let mut conn = Connection::with_phase(stream, peer, id, session, now, Phase::Connecting);
        conn.registered = Interest::READABLE | Interest::WRITABLE;
        conn
    }

    fn with_phase(stream: T, peer: Peer, id: u64, session: S, now: Tick, phase: Phase) -> Self {
        Connection {
            stream,
            peer,
            id,
            session,
            inbound: Vec::new(),
            outbound: Outbound::default(),
            registered: Interest::READABLE,
            phase,
            paused: false,
            held: false,
            input_waiting: false,
            peer_closed: false,
            close_reason: CloseReason::PeerClosed,
            was_cut: false,
            error: None,
            deadlines: Deadlines {
                last_activity: now,
                frame_started: None,
                write_stalled_since: None,
                timer_at: None,
                linger_until: None,
            },
            flush_queued: false,
            more_to_stream: false,
            send_again: false,
            handshaking: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The socket (and its TLS layer, if any).
    pub fn stream(&self) -> &T {
        &self.stream
    }

    /// Bytes owed to the peer and not yet taken by the socket.
    pub fn outbound_len(&self) -> usize {
        self.outbound.len()
    }

    /// Stops reading it until [`release`](Self::release): its broadcasts are more than
    /// the other members can take now.
    pub fn hold(&mut self) {
        if matches!(self.phase, Phase::Open) {
            self.paused = true;
            self.held = true;
        }
    }

    /// Ends a [`hold`](Self::hold); reading resumes once its own queue is low, as after
    /// any pause (settle it).
    pub fn release(&mut self) {
        self.held = false;
    }

    /// Whether it is open and owes more than `bytes`.
    pub fn backlog_over(&self, bytes: usize) -> bool {
        matches!(self.phase, Phase::Open) && self.outbound.len() > bytes
    }

    /// How long output has been pending without the socket taking any of it.
    pub fn write_stalled_for(&self, now: Tick) -> Duration {
        self.deadlines
            .write_stalled_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Whether `at` is the timer this connection has armed (not a stale entry).
    pub fn timer_is(&self, at: Tick) -> bool {
        self.deadlines.timer_at == Some(at)
    }

    pub fn session(&self) -> &S {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut S {
        &mut self.session
    }

    /// Takes the connection apart once it is closed. Dropping the stream here closes the
    /// socket (and removes it from the poll).
    pub fn into_ended(self) -> Ended<S> {
        Ended {
            session: self.session,
            peer: self.peer,
            reason: self.close_reason,
            was_cut: self.was_cut,
            error: self.error.map(|failure| *failure),
        }
    }

    /// The one decision of what the connection needs, from its state: which interest,
    /// or a phase step first. `settle` carries it out; its fast path is this same answer.
    #[inline(always)]
    fn wants(&self, limits: &Limits) -> Wants {
        // A TLS layer's records (handshake, encrypted output) are owed like queued bytes.
        let owes = !self.outbound.is_empty() || self.stream.tls_pending();
        let reads = match self.phase {
            Phase::Closed => return Wants::Finished,
            // Writability says the connect completed (or failed); readability, an error.
            Phase::Connecting => return Wants::Interest(Interest::READABLE | Interest::WRITABLE),
            Phase::Open if self.paused => {
                if !self.held && self.outbound.drained_to(limits.low_water()) {
                    return Wants::Resume;
                }
                false
            }
            Phase::Open => true,
            Phase::Closing if !owes && !self.more_to_stream => return Wants::EndClosing,
            Phase::Closing => false,
            Phase::Lingering => true,
        };
        Wants::Interest(match (reads, owes) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (true, false) => Interest::READABLE,
            (false, true) => Interest::WRITABLE,
            // Nothing to wait for, but the loop itself comes back: next turn, or when it
            // releases a held member.
            (false, false) if self.more_to_stream || self.held => self.registered,
            (false, false) => return Wants::Finished,
        })
    }

    /// Whether the loop should read from this connection now.
    fn reads_now(&self) -> bool {
        matches!(self.phase, Phase::Open) && !self.paused
    }

    /// After any work on the connection: take the phase step its state calls for,
    /// register the interest it now wants (only if changed), and say what the loop must
    /// schedule. The steady state (interest unchanged, only the idle timer armed) returns
    /// at once: that is every echoed message.
    #[inline(always)]
    pub fn settle(
        &mut self,
        registry: &Registry,
        token: Token,
        limits: &Limits,
        timeouts: &Timeouts,
        stats: &mut Stats,
        now: Tick,
    ) -> Option<Settled> {
        let wants = self.wants(limits);
        if wants == Wants::Interest(self.registered) && self.deadlines.only_idle_armed() {
            return None;
        }
        Some(self.settle_changed(wants, registry, token, limits, timeouts, stats, now))
    }

    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn settle_changed(
        &mut self,
        mut wants: Wants,
        registry: &Registry,
        token: Token,
        limits: &Limits,
        timeouts: &Timeouts,
        stats: &mut Stats,
        now: Tick,
    ) -> Settled {
        if !matches!(self.phase, Phase::Closed) {
            // A connection cut off for its backlog is not counted: its queue is dropped.
            stats.peak_outbound = stats.peak_outbound.max(self.outbound.len());
        }
        let mut settled = Settled {
            // A flush stopped at the file budget is one the socket was still keeping up with.
            serve_again: self.send_again,
            ..Settled::default()
        };
        loop {
            match wants {
                Wants::EndClosing => self.end_closing(now + timeouts.linger),
                Wants::Resume => {
                    // Reading stopped without seeing WouldBlock, so input may be waiting
                    // that epoll will not report again: read it next turn.
                    self.paused = false;
                    settled.serve_again = true;
                }
                Wants::Finished => {
                    self.phase = Phase::Closed;
                    settled.finished = true;
                    return settled;
                }
                Wants::Interest(wanted) => {
                    if wanted != self.registered {
                        // The one place interest changes, and only when it really does.
                        if let Err(e) = registry.reregister(&mut self.stream, token, wanted) {
                            self.fail(&e, "reregister");
                            settled.finished = true;
                            return settled;
                        }
                        stats.reregistrations += 1;
                        stats.writable_registrations +=
                            u64::from(wanted.is_writable() && !self.registered.is_writable());
                        self.registered = wanted;
                    }
                    break;
                }
            }
            wants = self.wants(limits);
        }
        // A lingering connection has its own deadline, sooner than the idle one.
        if self.deadlines.only_idle_armed() && !matches!(self.phase, Phase::Lingering) {
            return settled;
        }
        if let Some((at, _)) = self.deadline(timeouts) {
            // The queue is lazy: an entry may be earlier than the real deadline (activity
            // only moves deadlines later); a new entry is pushed only when one comes sooner.
            if self.deadlines.timer_at.is_none_or(|t| at < t) {
                self.deadlines.timer_at = Some(at);
                settled.timer = Some(at);
            }
        }
        settled
    }

    /// The nearest deadline, if any applies.
    pub fn deadline(&self, timeouts: &Timeouts) -> Option<(Tick, DeadlineKind)> {
        let d = &self.deadlines;
        match self.phase {
            Phase::Closed => return None,
            Phase::Lingering => return d.linger_until.map(|until| (until, DeadlineKind::Linger)),
            Phase::Connecting => {
                return timeouts
                    .connect
                    .map(|t| (d.last_activity + t, DeadlineKind::Connect))
            }
            Phase::Open | Phase::Closing => {}
        }
        let after = |timeout: Option<Duration>, since: Option<Tick>, kind| {
            timeout.zip(since).map(|(t, since)| (since + t, kind))
        };
        [
            after(timeouts.idle, Some(d.last_activity), DeadlineKind::Idle),
            // A paused connection waits for us, not the peer: its frame clock is stopped.
            after(timeouts.frame, d.frame_started, DeadlineKind::Frame),
            after(timeouts.write, d.write_stalled_since, DeadlineKind::Write),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
    }

    /// Marks the connection finished; the loop removes it in its sweep.
    pub fn close(&mut self, reason: CloseReason) {
        if !matches!(self.phase, Phase::Closed) {
            self.phase = Phase::Closed;
            self.close_reason = reason;
        }
    }

    /// Ends the connection with a reset (SO_LINGER 0), for peers the server cuts off: the
    /// kernel drops what it still holds for them at once instead of trickling it out from
    /// FIN-WAIT-1, like nginx's `reset_timedout_connection`.
    pub fn cut(&mut self, reason: CloseReason) {
        if !matches!(self.phase, Phase::Closed) {
            if let Err(e) = self.stream.reset_on_close() {
                log::debug!("{}: cannot set SO_LINGER: {e}", self.peer);
            }
            self.was_cut = true;
            self.close(reason);
        }
    }

    /// Stops reading and closes once what is queued has been sent.
    pub fn finish(&mut self, reason: CloseReason) {
        if matches!(self.phase, Phase::Open | Phase::Connecting) {
            self.phase = Phase::Closing;
            self.close_reason = reason;
        }
    }

    /// A shutdown began: an idle connection closes now, one that owes output closes once
    /// it has sent it.
    pub fn begin_shutdown(&mut self) {
        if self.outbound.is_empty() && matches!(self.phase, Phase::Open | Phase::Connecting) {
            self.close(CloseReason::Shutdown);
        } else {
            self.finish(CloseReason::Shutdown);
        }
    }

    /// The drain time is over: gone now, reset if it still owed output (the peer must not
    /// take a truncated reply for a whole one).
    pub fn end_at_shutdown(&mut self) {
        if self.outbound.is_empty() {
            self.close(CloseReason::Shutdown);
        } else {
            self.cut(CloseReason::Shutdown);
        }
    }

    /// Ends the connection after a socket error; resets and broken pipes are the peer's
    /// business and only logged at debug, and so is a failed connect: the client that made
    /// it reports it in its own words.
    #[cold]
    fn fail(&mut self, e: &io::Error, op: &'static str) {
        if T::TLS && self.handshaking && e.kind() == io::ErrorKind::InvalidData {
            // A failed handshake (plaintext on a TLS port, a scanner, an old client): the
            // operator wants to see these, as nginx's "SSL_do_handshake() failed".
            log::info!("{}: TLS handshake failed: {e}", self.peer);
        } else if is_peer_error(e) || op == "connect" {
            log::debug!("{}: {op}: {e}", self.peer);
        } else {
            log::warn!("{}: {op}: {e}", self.peer);
        }
        if !matches!(self.phase, Phase::Closed) {
            self.error = Some(Box::new(Failure {
                op,
                error: io::Error::new(e.kind(), describe(e)),
            }));
        }
        self.close(CloseReason::Error);
    }

    /// Writes `reply` straight from the loop's buffer when nothing else is queued, keeping
    /// only what the socket did not take (write first, then ask for WRITABLE); clears it.
    #[inline(always)]
    pub fn send_reply(&mut self, reply: &mut Reply, stats: &mut Stats, now: Tick) {
        if reply.is_empty() {
            return;
        }
        if !matches!(self.phase, Phase::Closed) {
            self.send(reply, stats, now);
        }
        reply.clear();
    }

    #[inline(always)]
    fn send(&mut self, reply: &Reply, stats: &mut Stats, now: Tick) {
        if !self.outbound.is_empty() || matches!(self.phase, Phase::Connecting) {
            return self.queue_behind(reply, stats, now);
        }
        let (written, all) = loop {
            match reply.write_to(&mut self.stream) {
                Ok(result) => break result,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break (0, false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(&e, "write"),
            }
        };
        if written > 0 {
            stats.bytes_out += written as u64;
            self.deadlines.last_activity = now;
        }
        if !all {
            self.outbound.push_reply(reply, written);
            self.deadlines.write_stalled_since = Some(now);
        } else if reply.has_spliced() {
            self.send_rest(reply, written, stats, now);
        }
    }

    /// A reply with spliced pieces whose first `written` bytes were all the socket was
    /// offered: what is left (more pieces than one writev takes, or a file range) is
    /// queued and sent now, since the socket has room.
    #[cold]
    fn send_rest(&mut self, reply: &Reply, written: usize, stats: &mut Stats, now: Tick) {
        if !reply.is_written(written) {
            self.outbound.push_reply(reply, written);
            self.flush(stats, now);
        }
    }

    /// Output already waits (or the connect has not completed): the reply goes behind it.
    #[cold]
    fn queue_behind(&mut self, reply: &Reply, stats: &mut Stats, now: Tick) {
        self.outbound.push_reply(reply, 0);
        if !matches!(self.phase, Phase::Connecting) {
            self.flush(stats, now);
        }
    }

    /// Writes queued output until it is gone, the socket is full, or this flush has sent
    /// `SENDFILE_MAX_CHUNK` bytes from files (then the loop comes back next turn).
    pub fn flush(&mut self, stats: &mut Stats, now: Tick) {
        let mut total = 0;
        let mut file_budget = SENDFILE_MAX_CHUNK;
        while !self.outbound.is_empty() {
            if file_budget == 0 && self.outbound.front_is_file() {
                self.send_again = true;
                break;
            }
            let from_file = self.outbound.front_is_file();
            match self.outbound.write_to(&mut self.stream, file_budget) {
                Ok((0, _)) => return self.fail(&io::ErrorKind::WriteZero.into(), "write"),
                Ok((n, all)) => {
                    total += n;
                    if from_file {
                        file_budget -= n;
                    }
                    if !all {
                        // A short write means the send buffer is full; edge-triggered
                        // epoll reports WRITABLE again once it has room.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(&e, "write"),
            }
        }
        stats.bytes_out += total as u64;
        if total > 0 {
            self.deadlines.last_activity = now;
        }
        self.deadlines.write_stalled_since = if self.outbound.is_empty() {
            None
        } else if total > 0 {
            Some(now)
        } else {
            self.deadlines.write_stalled_since.or(Some(now))
        };
    }

    /// Queues chunks broadcast by another connection, shared, not copied. A member is cut
    /// off only when its unwritten backlog passes the cap after a write was tried: one that
    /// reads keeps up however large the burst. Returns whether it should now be put on the
    /// loop's list to flush at the end of the batch.
    pub fn deliver(
        &mut self,
        chunks: &[Arc<[u8]>],
        max_outbound: usize,
        stats: &mut Stats,
        now: Tick,
    ) -> bool {
        // A member that is leaving receives nothing more.
        if !matches!(self.phase, Phase::Open) {
            return false;
        }
        for chunk in chunks {
            self.outbound.push_shared(chunk.clone());
            if self.outbound.len() > max_outbound {
                self.flush(stats, now);
                if self.outbound.len() > max_outbound {
                    log::warn!(
                        "disconnecting slow consumer {}: {} bytes pending",
                        self.peer,
                        self.outbound.len()
                    );
                    self.cut(CloseReason::SlowConsumer);
                    return false;
                }
            }
        }
        !std::mem::replace(&mut self.flush_queued, true)
    }

    /// Flushes what deliveries queued this batch (the loop's end-of-batch flush).
    pub fn flush_delivered(&mut self, stats: &mut Stats, now: Tick) {
        self.flush_queued = false;
        if !matches!(self.phase, Phase::Closed) && !self.outbound.is_empty() {
            self.flush(stats, now);
        }
    }

    /// A `Closing` connection whose output is all sent: closed if the peer already sent its
    /// FIN, otherwise our side is shut so the peer sees EOF after the last reply, and we wait
    /// for its FIN (until `linger_until`) instead of resetting the connection under it.
    #[cold]
    fn end_closing(&mut self, linger_until: Tick) {
        self.phase = if self.peer_closed {
            Phase::Closed
        } else {
            match self.stream.shutdown_write() {
                Ok(()) => {
                    self.deadlines.linger_until = Some(linger_until);
                    Phase::Lingering
                }
                Err(_) => Phase::Closed,
            }
        };
    }

    /// Reads and discards what a peer sends after our last reply, until its FIN.
    fn linger_read(&mut self, buf: &mut [u8]) {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return self.phase = Phase::Closed,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.phase = Phase::Closed,
            }
        }
    }
}

impl<S, T: crate::net::Accepted> Connection<S, T> {
    /// Input that came before the connection was opened (after a PROXY header, in the
    /// same read): presented to the protocol before the socket is read, as the input a
    /// pause left is; under TLS, records the layer takes (the ClientHello). Serve the
    /// connection to present it.
    pub fn present_early_input(&mut self, bytes: &[u8]) {
        match self.stream.take_early_records(bytes) {
            Ok(true) => {}
            Ok(false) => {
                self.inbound.extend_from_slice(bytes);
                self.input_waiting = !self.inbound.is_empty();
            }
            Err(e) => self.fail(&e, "read"),
        }
    }
}

impl<S, T: Transport + Sink> Connection<S, T> {
    /// Handles a readiness event: flush first (it frees room that may let reading go on),
    /// then serve. Returns whether the read budget ran out with input possibly left.
    pub fn on_event<P>(&mut self, turn: &mut Turn<'_, P>, ready: Readiness) -> bool
    where
        P: Protocol<Session = S>,
    {
        if matches!(self.phase, Phase::Closed) {
            return false;
        }
        if matches!(self.phase, Phase::Connecting) && !self.connect_completed(ready) {
            return false;
        }
        if ready.writable {
            if !self.outbound.is_empty() {
                self.flush(turn.stats, turn.now);
            } else if self.stream.tls_pending() {
                self.send_tls_records();
            }
        }
        self.serve(turn, ready.readable, ready.read_closed)
    }

    /// Starts a connection the loop has just opened: writes (or, while connecting, queues)
    /// what the protocol's `open` produced, and starts the frame clock if the protocol
    /// already awaits an answer (a client's first request), so that the frame timeout
    /// bounds the whole exchange from here, the connect included.
    pub fn opened<P>(&mut self, turn: &mut Turn<'_, P>)
    where
        P: Protocol<Session = S>,
    {
        if turn.protocol.mid_frame(&self.session) {
            self.deadlines.frame_started = Some(turn.now);
        }
        self.send_reply(&mut turn.produced.reply, turn.stats, turn.now);
    }

    /// Writes what a TLS layer holds for the socket (its queue of plaintext is empty).
    #[cold]
    fn send_tls_records(&mut self) {
        if let Err(e) = self.stream.send_tls_records() {
            self.fail(&e, "write");
        }
    }

    /// Whether a started connect has completed; a failed one closes the connection.
    #[cold]
    fn connect_completed(&mut self, ready: Readiness) -> bool {
        if !ready.writable && !ready.readable {
            return false;
        }
        match self.stream.connect_result() {
            Ok(true) => {
                self.phase = Phase::Open;
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.fail(&e, "connect");
                false
            }
        }
    }

    /// Serves a connection the loop deferred to this turn (`Settled::serve_again`): goes on
    /// with a flush the file budget stopped, then serves it as if readable.
    pub fn serve_deferred<P>(&mut self, turn: &mut Turn<'_, P>) -> bool
    where
        P: Protocol<Session = S>,
    {
        if std::mem::take(&mut self.send_again) && !matches!(self.phase, Phase::Closed) {
            self.flush(turn.stats, turn.now);
        }
        self.serve(turn, true, false)
    }

    /// Reads what the connection has and hands it to the protocol, writes the reply, and
    /// lets a streaming protocol refill the queue. Broadcasts are left in `turn.produced`
    /// for the loop to deliver. Returns whether the connection must be served again next
    /// turn (a budget ran out).
    #[inline(always)]
    pub fn serve<P>(&mut self, turn: &mut Turn<'_, P>, readable: bool, read_closed: bool) -> bool
    where
        P: Protocol<Session = S>,
    {
        let mut again = readable && self.read(turn, read_closed);
        if T::TLS && self.handshaking {
            self.handshake_progress(turn.protocol);
        }
        self.send_reply(&mut turn.produced.reply, turn.stats, turn.now);
        if P::STREAMS {
            again |= self.stream_more(turn);
        }
        again
    }

    /// After a read while the TLS handshake was under way: once it is complete the frame
    /// clock it ran on stops, unless a frame of the protocol has begun meanwhile.
    #[cold]
    fn handshake_progress<P>(&mut self, protocol: &P)
    where
        P: Protocol<Session = S>,
    {
        if self.stream.is_handshaking() {
            return;
        }
        self.handshaking = false;
        log::debug!("{}: TLS handshake complete", self.peer);
        if self.inbound.is_empty() && !protocol.mid_frame(&self.session) {
            self.deadlines.frame_started = None;
        }
    }

    /// Reads until WouldBlock, a pause, or the per-turn budget; returns whether the budget
    /// ran out with input possibly left.
    fn read<P>(&mut self, turn: &mut Turn<'_, P>, read_closed: bool) -> bool
    where
        P: Protocol<Session = S>,
    {
        if let Phase::Lingering = self.phase {
            self.linger_read(turn.read_buf);
            return false;
        }
        let Turn {
            protocol,
            produced,
            read_buf,
            limits,
            stats,
            now,
            ..
        } = turn;
        let now = *now;
        if self.input_waiting && self.reads_now() {
            // What a pause left unconsumed comes before anything new.
            self.input_waiting = false;
            self.feed(
                &mut **protocol,
                produced,
                limits.max_outbound,
                &[],
                stats,
                now,
            );
        }
        let max_pending = protocol.max_pending_input();
        let mut reads = 0;
        while self.reads_now() {
            let owed = self.outbound.len() + produced.reply.len();
            // Reading no more than the room under the cap keeps an echo within it.
            let room = limits.max_outbound.saturating_sub(owed).min(read_buf.len());
            if room == 0 {
                self.paused = true;
                stats.pauses += 1;
                break;
            }
            let n = match self.stream.read(&mut read_buf[..room]) {
                Ok(0) => {
                    self.on_peer_fin(&mut **protocol, produced, limits.max_outbound);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(&e, "read");
                    break;
                }
            };
            stats.bytes_in += n as u64;
            self.deadlines.last_activity = now;
            let flow = self.feed(
                &mut **protocol,
                produced,
                limits.max_outbound,
                &read_buf[..n],
                stats,
                now,
            );
            if flow != Flow::Continue {
                break;
            }
            if self.inbound.len() > max_pending {
                log::info!(
                    "closing {}: unfinished frame of {} bytes exceeds {max_pending}",
                    self.peer,
                    self.inbound.len()
                );
                self.cut(CloseReason::InputTooLarge);
                break;
            }
            reads += 1;
            // A short read emptied the socket's receive queue. With edge-triggered epoll
            // any byte that arrives later raises a new event, so the read that would only
            // return EAGAIN is skipped. A FIN that came with this data raises no new edge,
            // hence the exception when the event already reported the peer's close.
            if n < room && !read_closed {
                break;
            }
            if reads == limits.reads_per_turn {
                return true;
            }
        }
        false
    }

    /// Hands bytes just read to the protocol, joined to what is kept if anything is: the
    /// common case (nothing kept) parses straight from the read buffer. Carries out the
    /// flow the protocol returns.
    #[inline(always)]
    fn feed<P>(
        &mut self,
        protocol: &mut P,
        produced: &mut Produced,
        high_water: usize,
        data: &[u8],
        stats: &mut Stats,
        now: Tick,
    ) -> Flow
    where
        P: Protocol<Session = S>,
    {
        let requests_before = produced.requests;
        let mut out = produced.output_for_queue(&self.outbound, high_water);
        let (flow, pending) = if self.inbound.is_empty() {
            let (used, flow) = protocol.on_input(&mut self.session, data, &mut out);
            let rest = data.get(used..).unwrap_or_default();
            if flow != Flow::Close && !rest.is_empty() {
                self.inbound.extend_from_slice(rest);
            }
            (flow, rest.len())
        } else {
            self.inbound.extend_from_slice(data);
            let (used, flow) = protocol.on_input(&mut self.session, &self.inbound, &mut out);
            let rest = self.inbound.len().saturating_sub(used);
            if rest == 0 || flow == Flow::Close {
                // Free the buffer: an idle connection holds no heap memory.
                self.inbound = Vec::new();
            } else {
                self.inbound.drain(..used);
            }
            (flow, rest)
        };
        let d = &mut self.deadlines;
        match flow {
            Flow::Continue => {
                if pending == 0 && !protocol.mid_frame(&self.session) {
                    d.frame_started = None;
                } else if produced.requests > requests_before || d.frame_started.is_none() {
                    // A frame completed, or one began: the frame clock starts again.
                    d.frame_started = Some(now);
                }
            }
            Flow::Pause => {
                // The connection now waits for us, not for its peer.
                d.frame_started = None;
                self.paused = true;
                self.input_waiting = pending > 0;
                stats.pauses += 1;
            }
            Flow::Close => {
                d.frame_started = None;
                self.finish(CloseReason::Protocol);
            }
        }
        flow
    }

    fn on_peer_fin<P>(&mut self, protocol: &mut P, produced: &mut Produced, high_water: usize)
    where
        P: Protocol<Session = S>,
    {
        self.peer_closed = true;
        let leftover = std::mem::take(&mut self.inbound);
        let mut out = produced.output_for_queue(&self.outbound, high_water);
        protocol.on_eof(&mut self.session, &leftover, &mut out);
        self.deadlines.frame_started = None;
        self.finish(CloseReason::PeerClosed);
    }

    /// Lets a streaming protocol refill the queue once it has drained. This runs while
    /// `Closing` too: a client that sends its request and then shuts down its write side
    /// (`nc -N`) must still get the whole response; `more_to_stream` keeps the connection
    /// alive across turns. Returns whether the per-turn budget stopped it.
    fn stream_more<P>(&mut self, turn: &mut Turn<'_, P>) -> bool
    where
        P: Protocol<Session = S>,
    {
        self.more_to_stream = false;
        let low_water = turn.limits.low_water();
        for _ in 0..turn.limits.reads_per_turn {
            let streaming = matches!(self.phase, Phase::Open | Phase::Closing);
            if !streaming || !self.outbound.drained_to(low_water) {
                return false;
            }
            let mut out = turn
                .produced
                .output_for_queue(&self.outbound, turn.limits.max_outbound);
            if turn.protocol.on_drained(&mut self.session, &mut out) == Flow::Close {
                self.finish(CloseReason::Protocol);
            }
            if turn.produced.reply.is_empty() {
                return false;
            }
            if self.deadlines.frame_started.is_none() && turn.protocol.mid_frame(&self.session) {
                // A client's request went out: its answer is due within the frame timeout.
                // (No server protocol streams while mid-frame; for them this is never true.)
                self.deadlines.frame_started = Some(turn.now);
            }
            self.send_reply(&mut turn.produced.reply, turn.stats, turn.now);
            if !self.outbound.is_empty() {
                // The socket is full: WRITABLE will bring us back.
                return false;
            }
        }
        // Budget used while the socket still takes everything: continue next turn.
        self.more_to_stream = true;
        true
    }

    /// The loop's timer for this connection, armed at `at`, went off. Returns a later tick
    /// to re-arm at when the deadline moved (activity only moves deadlines later).
    pub fn on_timer<P>(&mut self, at: Tick, turn: &mut Turn<'_, P>) -> Option<Tick>
    where
        P: Protocol<Session = S>,
    {
        if self.deadlines.timer_at != Some(at) {
            return None; // a stale entry: re-armed sooner since
        }
        self.deadlines.timer_at = None;
        let (deadline, kind) = self.deadline(turn.timeouts)?;
        if deadline > turn.now {
            self.deadlines.timer_at = Some(deadline);
            return Some(deadline);
        }
        match kind {
            DeadlineKind::Connect => {
                log::debug!("{}: connect timed out", self.peer);
                self.error = Some(Box::new(Failure {
                    op: "connect",
                    error: io::Error::new(io::ErrorKind::TimedOut, "timed out"),
                }));
                self.close(CloseReason::Error);
            }
            DeadlineKind::Idle => {
                log::debug!("{}: idle timeout", self.peer);
                self.close(CloseReason::IdleTimeout);
            }
            DeadlineKind::Write => {
                log::info!("{}: not reading its output, closing", self.peer);
                self.cut(CloseReason::WriteTimeout);
            }
            DeadlineKind::Linger => self.phase = Phase::Closed,
            DeadlineKind::Frame if T::TLS && self.handshaking => {
                // Nothing the protocol could say reaches a peer without a session.
                log::info!(
                    "{}: TLS handshake not completed in time, closing",
                    self.peer
                );
                self.close(CloseReason::FrameTimeout);
            }
            DeadlineKind::Frame => {
                log::info!("{}: frame not completed in time, closing", self.peer);
                self.deadlines.frame_started = None;
                let mut out = turn
                    .produced
                    .output_for_queue(&self.outbound, turn.limits.max_outbound);
                turn.protocol
                    .on_timeout(&mut self.session, Timeout::Frame, &mut out);
                self.inbound = Vec::new();
                self.input_waiting = false;
                self.finish(CloseReason::FrameTimeout);
                self.close_reason = CloseReason::FrameTimeout;
                self.send_reply(&mut turn.produced.reply, turn.stats, turn.now);
            }
        }
        None
    }
}

/// Whether an I/O error is the peer's doing (reset, broken pipe, TLS it sent that we
/// refuse), not worth more than a debug line.
pub fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::WriteZero
    )
}

#[cfg(test)]
mod tests {
    //! The connection core on a Unix socket pair, without a loop: what it reads, writes,
    //! registers and asks the loop to schedule, step by step.
    use super::*;
    use crate::protocol::Output;
    use mio::{Events, Poll};
    use std::io::{Read, Write};

    /// Echoes every byte, or with `pause_after` set, consumes that many bytes per call and
    /// then pauses.
    #[derive(Default)]
    struct TestEcho {
        pause_after: Option<usize>,
    }

    impl Protocol for TestEcho {
        type Session = ();
        fn open(&mut self, _: &Peer, _: &mut Output<'_>) {}
        fn on_input(&mut self, _: &mut (), input: &[u8], out: &mut Output<'_>) -> (usize, Flow) {
            match self.pause_after {
                Some(n) if input.len() > n => {
                    out.send(&input[..n]);
                    out.count_request();
                    (n, Flow::Pause)
                }
                _ => {
                    out.send(input);
                    out.count_request();
                    (input.len(), Flow::Continue)
                }
            }
        }
    }

    /// A connection on one end of a socket pair, registered with a poll, and the loop's
    /// pieces it borrows.
    struct Rig<P = TestEcho> {
        poll: Poll,
        conn: Connection<()>,
        peer: std::os::unix::net::UnixStream,
        protocol: P,
        produced: Produced,
        read_buf: Vec<u8>,
        limits: Limits,
        timeouts: Timeouts,
        stats: Stats,
        now: Tick,
    }

    impl<P: Protocol<Session = ()>> Rig<P> {
        fn new(protocol: P, limits: Limits) -> Rig<P> {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            let mut stream = Stream::Unix(mio::net::UnixStream::from_std(ours));
            let poll = Poll::new().unwrap();
            poll.registry()
                .register(&mut stream, Token(0), Interest::READABLE)
                .unwrap();
            let now = Tick::now();
            Rig {
                poll,
                conn: Connection::new(stream, Peer::Unix, 1, (), now),
                peer: theirs,
                protocol,
                produced: Produced::default(),
                read_buf: vec![0; crate::config::READ_CHUNK],
                limits,
                timeouts: Timeouts::default(),
                stats: Stats::default(),
                now,
            }
        }

        /// Calls `f` with the connection and what it borrows from the loop for a turn.
        fn with_turn<T>(
            &mut self,
            f: impl FnOnce(&mut Connection<()>, &mut Turn<'_, P>) -> T,
        ) -> T {
            let mut turn = Turn {
                protocol: &mut self.protocol,
                produced: &mut self.produced,
                read_buf: &mut self.read_buf,
                limits: &self.limits,
                timeouts: &self.timeouts,
                stats: &mut self.stats,
                now: self.now,
            };
            f(&mut self.conn, &mut turn)
        }

        /// Serves the connection as after a readable event, then settles it.
        fn serve(&mut self) -> Settled {
            let again = self.with_turn(|conn, turn| conn.serve(turn, true, false));
            let mut settled = self.settle();
            settled.serve_again |= again;
            settled
        }

        fn settle(&mut self) -> Settled {
            self.settle_step().unwrap_or_default()
        }

        fn settle_step(&mut self) -> Option<Settled> {
            self.conn.settle(
                self.poll.registry(),
                Token(0),
                &self.limits,
                &self.timeouts,
                &mut self.stats,
                self.now,
            )
        }

        /// Everything the peer can read now.
        fn peer_reads(&mut self) -> Vec<u8> {
            self.peer.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match self.peer.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            got
        }
    }

    /// An echoed message is written at once, and the connection is left exactly as it
    /// was: no reregistration, nothing for the loop to schedule but the idle timer once.
    #[test]
    fn steady_state_changes_nothing() {
        let mut rig = Rig::new(TestEcho::default(), Limits::default());
        let first = rig.settle();
        assert!(first.timer.is_some(), "the idle timer is armed once");
        for round in 0..3 {
            rig.peer.write_all(b"ping").unwrap();
            assert_eq!(rig.serve(), Settled::default(), "round {round}");
            assert_eq!(rig.peer_reads(), b"ping");
        }
        assert_eq!(rig.stats.reregistrations, 0);
        assert_eq!((rig.stats.bytes_in, rig.stats.bytes_out), (12, 12));
        // Interest decided and registered agree, and the fast path sees it.
        assert_eq!(
            rig.conn.wants(&rig.limits),
            Wants::Interest(rig.conn.registered)
        );
    }

    /// A connection that closes while only its idle timer is armed lingers no longer than
    /// the linger timeout: the timer is re-armed for it (the idle deadline may be minutes away).
    #[test]
    fn lingering_arms_its_own_timer() {
        let mut rig = Rig::new(TestEcho::default(), Limits::default());
        assert!(rig.settle().timer.is_some(), "the idle timer is armed");
        rig.conn.finish(CloseReason::Protocol);
        let settled = rig.settle();
        assert!(matches!(rig.conn.phase(), Phase::Lingering));
        assert_eq!(settled.timer, Some(rig.now + rig.timeouts.linger));
    }

    /// A protocol that pauses keeps what it did not consume; the loop is asked to serve
    /// the connection again once its queue is low, and the kept bytes come first.
    #[test]
    fn a_pause_keeps_input_and_resumes_when_drained() {
        let mut rig = Rig::new(
            TestEcho {
                pause_after: Some(3),
            },
            Limits::default(),
        );
        rig.settle();
        rig.peer.write_all(b"abcdefgh").unwrap();
        let settled = rig.serve();
        assert!(settled.serve_again, "an empty queue resumes at once");
        assert_eq!(rig.peer_reads(), b"abc");
        assert_eq!(rig.conn.inbound, b"defgh");
        assert!(rig.conn.input_waiting);
        assert_eq!(rig.stats.pauses, 1);
        // Served again: the kept bytes are presented before any new read.
        rig.peer.write_all(b"ij").unwrap();
        rig.serve();
        rig.serve();
        rig.serve();
        assert_eq!(rig.peer_reads(), b"defghij");
        assert!(rig.conn.inbound.is_empty());
    }

    /// With output the peer does not take, reading stops at the cap: what is owed never
    /// passes it by more than one read, and the connection then waits for WRITABLE only.
    #[test]
    fn reading_stops_at_the_cap() {
        let limits = Limits {
            max_outbound: 4096,
            ..Limits::default()
        };
        let mut rig = Rig::new(TestEcho::default(), limits);
        rig.settle();
        // Fill the peer's receive side first so our writes stall.
        let filler = vec![b'f'; 1 << 20];
        let mut sent = 0;
        rig.peer.set_nonblocking(true).unwrap();
        for _ in 0..64 {
            match rig.peer.write(&filler[..64 * 1024]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
            rig.serve();
            assert!(
                rig.conn.outbound_len() <= 4096,
                "{}",
                rig.conn.outbound_len()
            );
        }
        assert!(sent > 4096);
        assert!(rig.stats.pauses > 0, "reading paused at the cap");
        assert!(
            rig.stats.bytes_in < sent as u64,
            "input was left unread: {} of {sent}",
            rig.stats.bytes_in
        );
        if rig.conn.paused {
            assert_eq!(rig.conn.registered, Interest::WRITABLE);
        }
    }

    /// A member whose socket takes everything is never cut, however large the burst; one
    /// whose socket is full is cut, with a reset, once its backlog passes the cap after a
    /// write was tried.
    #[test]
    fn delivery_cuts_only_a_member_that_cannot_take_it() {
        let mut rig = Rig::new(TestEcho::default(), Limits::default());
        let chunk: Arc<[u8]> = Arc::from(vec![b'c'; 1000]);
        let mut got = 0;
        for _ in 0..200 {
            rig.conn
                .deliver(std::slice::from_ref(&chunk), 1500, &mut rig.stats, rig.now);
            assert!(!rig.conn.is_closed(), "a reading member is not cut");
            rig.conn.flush_delivered(&mut rig.stats, rig.now);
            got += rig.peer_reads().len();
        }
        assert_eq!(got, 200 * 1000);

        // Now the peer stops reading: the socket fills, the backlog passes the cap.
        for _ in 0..10_000 {
            rig.conn
                .deliver(std::slice::from_ref(&chunk), 1500, &mut rig.stats, rig.now);
            if rig.conn.is_closed() {
                break;
            }
        }
        assert!(rig.conn.is_closed());
        let ended = std::mem::replace(
            &mut rig.conn,
            Connection::new(
                Stream::Unix(mio::net::UnixStream::pair().unwrap().0),
                Peer::Unix,
                2,
                (),
                rig.now,
            ),
        )
        .into_ended();
        assert_eq!(ended.reason, CloseReason::SlowConsumer);
        assert!(ended.was_cut);
    }

    /// An outgoing connection queues what it produced before the connect completes and
    /// writes it once it has; a refused connect ends it with the error kept.
    #[test]
    fn connecting_then_open() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stream = Stream::Tcp(mio::net::TcpStream::connect(addr).unwrap());
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(
                &mut stream,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let now = Tick::now();
        let mut conn = Connection::connecting(stream, Peer::Tcp(addr), 1, (), now);
        let (mut protocol, mut produced, mut stats) =
            (TestEcho::default(), Produced::default(), Stats::default());
        produced.reply.push(b"hello");
        conn.send_reply(&mut produced.reply, &mut stats, now);
        assert_eq!(conn.outbound_len(), 5, "queued while connecting");
        let (mut accepted, _) = listener.accept().unwrap();
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        let event = events.iter().next().expect("connect completes");
        let (limits, timeouts) = (Limits::default(), Timeouts::default());
        let mut read_buf = vec![0; 1024];
        let mut turn = Turn {
            protocol: &mut protocol,
            produced: &mut produced,
            read_buf: &mut read_buf,
            limits: &limits,
            timeouts: &timeouts,
            stats: &mut stats,
            now,
        };
        conn.on_event(&mut turn, Readiness::from(event));
        assert_eq!(conn.phase(), Phase::Open);
        assert_eq!(conn.outbound_len(), 0, "written once connected");
        let mut got = [0u8; 5];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        drop(listener);
        let mut refused = Stream::Tcp(mio::net::TcpStream::connect(addr).unwrap());
        poll.registry()
            .register(
                &mut refused,
                Token(1),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let mut conn = Connection::connecting(refused, Peer::Tcp(addr), 2, (), now);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        let event = events
            .iter()
            .find(|e| e.token() == Token(1))
            .expect("refusal");
        conn.on_event(&mut turn, Readiness::from(event));
        assert!(conn.is_closed());
        let ended = conn.into_ended();
        assert_eq!(ended.reason, CloseReason::Error);
        assert_eq!(
            ended.error.map(|e| (e.op, e.error.kind())),
            Some(("connect", io::ErrorKind::ConnectionRefused))
        );
    }

    /// A client-like protocol: one request per `on_drained` while none is outstanding, an
    /// answer awaited (`mid_frame`) until a byte comes back; notes its frame timeout.
    #[derive(Default)]
    struct Requester {
        outstanding: bool,
        timed_out: bool,
    }

    impl Protocol for Requester {
        type Session = ();
        fn open(&mut self, _: &Peer, _: &mut Output<'_>) {}
        fn on_input(&mut self, _: &mut (), input: &[u8], out: &mut Output<'_>) -> (usize, Flow) {
            self.outstanding = false;
            out.count_request();
            (input.len(), Flow::Continue)
        }
        const STREAMS: bool = true;
        fn on_drained(&mut self, _: &mut (), out: &mut Output<'_>) -> Flow {
            if !std::mem::replace(&mut self.outstanding, true) {
                out.send(b"request");
            }
            Flow::Continue
        }
        fn mid_frame(&self, _: &()) -> bool {
            self.outstanding
        }
        fn on_timeout(&mut self, _: &mut (), _: Timeout, _: &mut Output<'_>) {
            self.timed_out = true;
        }
    }

    /// A request a streaming protocol sends starts the frame clock (so an answer that
    /// never comes is a frame timeout, told to the protocol), and an answer stops it;
    /// being served with nothing to read (`serve(turn, false, false)`) is how a loop
    /// lets such a protocol send when it is due.
    #[test]
    fn a_request_sent_starts_the_frame_clock() {
        let mut rig = Rig::new(Requester::default(), Limits::default());
        rig.timeouts = Timeouts {
            idle: None,
            frame: Some(Duration::from_secs(1)),
            ..Timeouts::default()
        };
        assert!(!rig.with_turn(|conn, turn| conn.serve(turn, false, false)));
        let mut got = [0u8; 7];
        rig.peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"request");
        let at = rig.settle().timer;
        assert_eq!(
            at,
            Some(rig.now + Duration::from_secs(1)),
            "the answer is due"
        );

        // Answered: the clock stops (the next request starts it again).
        rig.peer.write_all(b"answer").unwrap();
        rig.serve();
        assert!(
            rig.conn.deadlines.frame_started.is_some(),
            "the next request is out"
        );
        rig.peer.read_exact(&mut got).unwrap();

        // Never answered: the frame timeout fires, and the protocol hears of it.
        rig.now = rig.now + Duration::from_secs(5);
        assert_eq!(
            rig.with_turn(|conn, turn| conn.on_timer(at.unwrap(), turn)),
            None
        );
        assert!(rig.protocol.timed_out);
        assert_eq!(rig.conn.close_reason, CloseReason::FrameTimeout);
    }
}
