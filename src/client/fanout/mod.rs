//! The chat fan-out load mode (`multiconn-client HOST PORT N --protocol chat --duration D`):
//! N members in one room on one client loop, K of them sending lines at a fixed rate, every
//! member timing each line it receives. One process and one monotonic clock, so send →
//! receipt is measured exactly, per delivery and to each line's last member; a delivery
//! that does not come within `--timeout` is lost. The line's text ([`line`]) says who sent
//! it, which of their lines it is and when; [`track`] counts each line's receipts;
//! [`report`] prints the result.
//!
//! A run: connect every member (each joins `--room` first, if given); senders send probes
//! until every member has heard every sender (the server has accepted them all into the
//! room); then `--duration` of lines at `--rate` per sender, open loop (latency counts
//! from each line's scheduled time, so a stalled server shows); then up to `--timeout` for
//! the last lines to arrive. Expected receivers of a line: the other members connected
//! when it was sent (a sender's own line coming back, with `--echo-sender`, is ignored).

pub mod line;
pub mod report;
pub mod track;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Token, Waker};

use self::line::{Header, Received, HEADER_LEN};
use self::report::FanoutReport;
use self::track::{Outcome, Retired, SenderTrack};
use super::driver::{client_timeouts, Client, Driver, Endpoint, Established, FIRST_CALLER_TOKEN};
use super::load::LoadControl;
use super::report::{micros, new_histogram};
use super::timer::SlotTimer;
use crate::connection::{Ended, Phase};
use crate::net::{Peer, Transport};
use crate::protocol::chat::{valid_name, DEFAULT_MAX_LINE};
use crate::protocol::{Flow, Output, Protocol};
use crate::schedule::ConnRef;

/// Lines per second per sender when `--rate` is not given: a lively room, not a flood.
pub const DEFAULT_RATE: f64 = 10.0;
/// How often senders repeat their probe until the whole room has heard them.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Longest sleep of the loop with nothing due.
const MAX_TICK: Duration = Duration::from_millis(100);
/// Lines a sender writes per call before the loop serves the others.
const LINES_PER_CALL: usize = 64;
/// Lines tracked per sender at most: the ring holds `rate × timeout` lines twice over,
/// within these bounds (a line pushed out of a full ring is counted lost).
const MIN_RING: usize = 64;
const MAX_RING: usize = 1 << 20;
const WAKER: Token = Token(FIRST_CALLER_TOKEN);
const SLOT_TIMER: Token = Token(FIRST_CALLER_TOKEN + 1);

/// A fan-out run, as plain values.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub endpoint: Endpoint,
    /// The target as the report names it.
    pub target: String,
    /// Members (connections), senders included.
    pub members: usize,
    pub senders: usize,
    /// Lines per second per sender.
    pub rate: f64,
    /// How long lines are sent.
    pub duration: Duration,
    /// Text bytes per line (at least [`HEADER_LEN`]).
    pub size: usize,
    pub room: Option<String>,
    pub connect_timeout: Duration,
    /// A delivery not made within this of the line's scheduled time is lost.
    pub timeout: Duration,
}

impl FanoutConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.members < 2 {
            return Err("the fan-out mode needs at least 2 members (NUM_CONNS)".into());
        }
        if self.senders == 0 || self.senders > self.members {
            return Err(format!(
                "--senders must be from 1 to NUM_CONNS ({}), not {}",
                self.members, self.senders
            ));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("--rate must be above 0 lines/s, not {}", self.rate));
        }
        if !(HEADER_LEN..=DEFAULT_MAX_LINE).contains(&self.size) {
            return Err(format!(
                "--size for chat is the line's length, from {HEADER_LEN} (its header) to \
                 {DEFAULT_MAX_LINE}, not {}",
                self.size
            ));
        }
        if let Some(room) = &self.room {
            if !valid_name(room) {
                return Err(format!(
                    "--room {room:?}: a room is 1 to 32 letters, digits, '-', '_' or '.'"
                ));
            }
        }
        if self.duration.is_zero() || self.timeout.is_zero() {
            return Err("--duration and --timeout must be above 0".into());
        }
        Ok(())
    }

    fn ring_capacity(&self) -> usize {
        let lines = self.rate * self.timeout.as_secs_f64() * 2.0;
        (lines.ceil() as usize).clamp(MIN_RING, MAX_RING)
    }
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Connecting, then probing: nothing is counted.
    Setup,
    /// Sending lines, from `start_ns` until `end_ns`.
    Sending { start_ns: u64, end_ns: u64 },
    /// Waiting for the last lines.
    Draining,
}

/// What the run counted: retired lines, deliveries and their latencies.
pub struct Accounts {
    pub lines_sent: u64,
    pub lines_complete: u64,
    pub lines_incomplete: u64,
    /// Deliveries the lines sent should make (their expected members added up).
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries of lines retired incomplete that never came.
    pub lost: u64,
    /// Deliveries that came after their line was given up (already counted lost).
    pub late: u64,
    /// A sender's line arriving at a member after a later one of the same sender (or
    /// twice): not counted as a delivery.
    pub out_of_order: u64,
    /// Marked lines that do not read back (corrupted on the way).
    pub garbled: u64,
    /// `! ...` lines from the server.
    pub server_errors: u64,
    /// Members whose connection ended while lines were being sent or awaited.
    pub members_lost: u64,
    pub first_error: Option<String>,
    /// Per delivery, from the line's scheduled send time.
    pub delivery: Histogram<u64>,
    /// Per delivery, from the moment the line was handed to the socket.
    pub delivery_uncorrected: Histogram<u64>,
    /// Per complete line, from its scheduled send time to its last member's receipt.
    pub to_last: Histogram<u64>,
}

impl Accounts {
    fn new() -> Self {
        Accounts {
            lines_sent: 0,
            lines_complete: 0,
            lines_incomplete: 0,
            expected: 0,
            delivered: 0,
            lost: 0,
            late: 0,
            out_of_order: 0,
            garbled: 0,
            server_errors: 0,
            members_lost: 0,
            first_error: None,
            delivery: new_histogram(),
            delivery_uncorrected: new_histogram(),
            to_last: new_histogram(),
        }
    }

    fn retired(&mut self, outcome: Outcome) {
        match outcome.retired {
            Retired::Complete {
                intended_ns,
                last_ns,
            } => {
                self.lines_complete += 1;
                let took = Duration::from_nanos(last_ns.saturating_sub(intended_ns));
                self.to_last.saturating_record(micros(took));
            }
            Retired::Incomplete { missing } => {
                self.lines_incomplete += 1;
                self.lost += u64::from(missing);
            }
        }
    }

    fn note_error(&mut self, message: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }
}

/// One sender's schedule and lines in flight.
struct Sender {
    track: SenderTrack,
    conn: Option<ConnRef>,
    /// The next slot of its schedule.
    slot: u64,
    probe_due: bool,
}

/// A member's connection.
pub struct Member {
    index: usize,
    /// The sender it is, if it is one.
    sender: Option<u32>,
    established: bool,
    /// Per sender, the last sequence number received (`u64::MAX`: none yet).
    last_seq: Box<[u64]>,
}

const NONE: u64 = u64::MAX;

/// The client protocol of every member.
struct Fanout {
    epoch: Instant,
    size: usize,
    /// Nanoseconds between a sender's slots.
    period_ns: f64,
    join: Option<Vec<u8>>,
    stage: Stage,
    senders: Vec<Sender>,
    opened: usize,
    /// Members established and not ended.
    live: u32,
    /// Per member and sender: has heard that sender's probe.
    heard: Vec<bool>,
    accounts: Accounts,
    /// Encoding scratch.
    buf: Vec<u8>,
}

impl Fanout {
    fn new(config: &FanoutConfig) -> Self {
        Fanout {
            epoch: Instant::now(),
            size: config.size,
            period_ns: 1e9 / config.rate,
            join: config
                .room
                .as_ref()
                .map(|r| format!("/join {r}\n").into_bytes()),
            stage: Stage::Setup,
            senders: (0..config.senders)
                .map(|_| Sender {
                    track: SenderTrack::new(config.ring_capacity()),
                    conn: None,
                    slot: 0,
                    probe_due: false,
                })
                .collect(),
            opened: 0,
            live: 0,
            heard: vec![false; config.members * config.senders],
            accounts: Accounts::new(),
            buf: Vec::with_capacity(config.size + 1),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// When sender `k`'s slot `slot` is due: the senders' schedules interleave evenly.
    fn slot_ns(&self, start_ns: u64, k: usize, slot: u64) -> u64 {
        let offset = k as f64 / self.senders.len() as f64;
        start_ns + ((slot as f64 + offset) * self.period_ns) as u64
    }

    /// The next due time of any sender, while sending.
    fn next_due_ns(&self) -> Option<u64> {
        let Stage::Sending { start_ns, end_ns } = self.stage else {
            return None;
        };
        (0..self.senders.len())
            .filter(|&k| self.senders[k].conn.is_some())
            .map(|k| self.slot_ns(start_ns, k, self.senders[k].slot))
            .filter(|&at| at < end_ns)
            .min()
    }

    fn on_line(&mut self, member: &mut Member, line: &[u8], now_ns: u64) {
        let k = self.senders.len();
        match line::parse(line, self.size) {
            Received::Probe(s) if (s as usize) < k => {
                // A sender's own probe coming back (`--echo-sender`) says nothing.
                if Some(s) != member.sender {
                    self.heard[member.index * k + s as usize] = true;
                }
            }
            Received::Line(h) if (h.sender as usize) < k => {
                if Some(h.sender) == member.sender {
                    return;
                }
                let s = h.sender as usize;
                let last = member.last_seq[s];
                if last != NONE && h.seq <= last {
                    self.accounts.out_of_order += 1;
                    return;
                }
                member.last_seq[s] = h.seq;
                let accounts = &mut self.accounts;
                let tracked = self.senders[s]
                    .track
                    .receive(h.seq, now_ns, &mut |o| accounts.retired(o));
                if !tracked {
                    accounts.late += 1;
                    return;
                }
                accounts.delivered += 1;
                let since = |t: u64| Duration::from_nanos(now_ns.saturating_sub(t));
                accounts
                    .delivery
                    .saturating_record(micros(since(h.intended_ns)));
                accounts
                    .delivery_uncorrected
                    .saturating_record(micros(since(h.sent_ns)));
            }
            Received::Error => {
                self.accounts.server_errors += 1;
                self.accounts
                    .note_error(|| format!("the server said: {}", String::from_utf8_lossy(line)));
            }
            Received::Garbled | Received::Line(_) | Received::Probe(_) => {
                self.accounts.garbled += 1;
                self.accounts
                    .note_error(|| format!("a garbled line: {:?}", String::from_utf8_lossy(line)));
            }
            Received::Notice | Received::Foreign => {}
        }
    }

    /// Gives up every line overdue by the timeout.
    fn expire(&mut self, before_ns: u64) {
        let accounts = &mut self.accounts;
        for sender in &mut self.senders {
            while sender.track.expire(before_ns, &mut |o| accounts.retired(o)) {}
        }
    }

    fn in_flight(&self) -> u64 {
        self.senders.iter().map(|s| s.track.in_flight()).sum()
    }

    /// Whether every live member has heard every live sender but itself.
    fn room_ready(&self, members: &[Option<ConnRef>], live: &[bool]) -> bool {
        let k = self.senders.len();
        (0..members.len())
            .filter(|&m| live[m])
            .all(|m| (0..k).all(|s| s == m || !live[s] || self.heard[m * k + s]))
    }
}

impl Protocol for Fanout {
    type Session = Member;
    const STREAMS: bool = true;

    fn open(&mut self, _: &Peer, out: &mut Output<'_>) -> Member {
        let index = self.opened;
        self.opened += 1;
        if let Some(join) = &self.join {
            out.send(join);
        }
        Member {
            index,
            sender: (index < self.senders.len()).then_some(index as u32),
            established: false,
            last_seq: vec![NONE; self.senders.len()].into_boxed_slice(),
        }
    }

    fn on_input(&mut self, member: &mut Member, input: &[u8], _: &mut Output<'_>) -> (usize, Flow) {
        let now_ns = self.now_ns();
        let mut used = 0;
        while let Some(end) = input[used..].iter().position(|&b| b == b'\n') {
            let line = &input[used..used + end];
            used += end + 1;
            self.on_line(member, line, now_ns);
        }
        (used, Flow::Continue)
    }

    fn on_drained(&mut self, member: &mut Member, out: &mut Output<'_>) -> Flow {
        let Some(k) = member.sender.map(|s| s as usize) else {
            return Flow::Continue;
        };
        match self.stage {
            Stage::Setup => {
                if std::mem::take(&mut self.senders[k].probe_due) {
                    line::encode_probe(k as u32, out.reply_buf());
                }
            }
            Stage::Sending { start_ns, end_ns } => {
                let now_ns = self.now_ns();
                let expected = self.live.saturating_sub(1);
                for _ in 0..LINES_PER_CALL {
                    let due = self.slot_ns(start_ns, k, self.senders[k].slot);
                    if due > now_ns || due >= end_ns {
                        break;
                    }
                    self.senders[k].slot += 1;
                    let accounts = &mut self.accounts;
                    let sender = &mut self.senders[k];
                    let seq = sender.track.next_seq();
                    accounts.lines_sent += 1;
                    accounts.expected += u64::from(expected);
                    sender
                        .track
                        .push(due, expected, true, &mut |o| accounts.retired(o));
                    let header = Header {
                        sender: k as u32,
                        seq,
                        intended_ns: due,
                        sent_ns: now_ns,
                    };
                    line::encode(&header, self.size, &mut self.buf);
                }
                if !self.buf.is_empty() {
                    out.send(&self.buf);
                    self.buf.clear();
                }
            }
            Stage::Draining => {}
        }
        Flow::Continue
    }

    fn max_pending_input(&self) -> usize {
        // The longest line the run expects, its prefix, and notices.
        self.size + 4096
    }
}

impl Client for Fanout {
    fn on_established(&mut self, member: &mut Member, step: Established) {
        if step == Established::Connected {
            member.established = true;
        }
    }

    fn on_ended(&mut self, ended: Ended<Member>) {
        let member = ended.session;
        if let Some(k) = member.sender {
            self.senders[k as usize].conn = None;
        }
        if member.established {
            self.live = self.live.saturating_sub(1);
        }
        if self.stage != Stage::Setup {
            self.accounts.members_lost += 1;
        }
        let why = match &ended.error {
            Some(f) => format!("{}: {}", f.op, f.error),
            None => format!("{:?}", ended.reason),
        };
        self.accounts
            .note_error(|| format!("member {} ended: {why}", member.index));
    }
}

/// Runs the fan-out load `config` describes, until its end or `control` stops it.
pub fn run_fanout(config: &FanoutConfig, control: &LoadControl) -> io::Result<FanoutReport> {
    let cpu_before = super::load::cpu_time();
    let k = config.senders;
    let protocol = Fanout::new(config);
    let mut driver = Driver::new(protocol, client_timeouts(config.connect_timeout, None))?;
    control.add_waker(Arc::new(Waker::new(driver.registry(), WAKER)?));
    let mut members = Vec::with_capacity(config.members);
    for _ in 0..config.members {
        members.push(driver.connect(&config.endpoint)?);
    }
    for (s, conn) in members.iter().take(k).enumerate() {
        driver.protocol_mut().senders[s].conn = *conn;
    }
    while driver
        .connections()
        .any(|c| c.phase() == Phase::Connecting || c.stream().is_handshaking())
        && !control.is_stopped()
    {
        driver.turn(None)?;
    }
    let live = |driver: &Driver<Fanout>| -> Vec<bool> {
        let mut live = vec![false; members.len()];
        for c in driver.connections() {
            if c.session().established && !c.is_closed() {
                live[c.session().index] = true;
            }
        }
        live
    };
    let connected = live(&driver).iter().filter(|&&l| l).count() as u64;
    driver.protocol_mut().live = connected as u32;
    if connected < 2 {
        let why = driver
            .protocol()
            .accounts
            .first_error
            .clone()
            .unwrap_or_else(|| "interrupted".into());
        return Err(io::Error::other(format!(
            "{connected} of {} members connected: {why}",
            config.members
        )));
    }
    // Probes until the whole room listens.
    let probing_ends = Instant::now() + config.connect_timeout + config.timeout;
    loop {
        if control.is_stopped() {
            break;
        }
        let alive = live(&driver);
        if driver.protocol().room_ready(&members, &alive) {
            break;
        }
        if Instant::now() >= probing_ends {
            return Err(io::Error::other(format!(
                "the room never heard every sender's probe within {:?} (is it a chat \
                 server, and do lines reach every member?)",
                config.connect_timeout + config.timeout
            )));
        }
        for s in 0..k {
            driver.protocol_mut().senders[s].probe_due = true;
            if let Some(conn) = driver.protocol().senders[s].conn {
                driver.poke(conn);
            }
        }
        let until = Instant::now() + PROBE_EVERY;
        while Instant::now() < until && !control.is_stopped() {
            driver.turn(Some(until.saturating_duration_since(Instant::now())))?;
        }
    }
    let connected = live(&driver).iter().filter(|&&l| l).count() as u64;
    driver.protocol_mut().live = connected as u32;

    let mut slot_timer = SlotTimer::new(driver.registry(), SLOT_TIMER)?;
    let protocol = driver.protocol_mut();
    let start_ns = protocol.now_ns();
    let end_ns = start_ns + config.duration.as_nanos() as u64;
    protocol.stage = Stage::Sending { start_ns, end_ns };
    let timeout_ns = config.timeout.as_nanos() as u64;
    let start = protocol.epoch + Duration::from_nanos(start_ns);
    let mut sent_until = start + config.duration;
    while !control.is_stopped() {
        let protocol = driver.protocol_mut();
        let now_ns = protocol.now_ns();
        if now_ns >= end_ns {
            break;
        }
        protocol.expire(now_ns.saturating_sub(timeout_ns));
        for s in 0..k {
            let protocol = driver.protocol();
            let sender = &protocol.senders[s];
            let at = protocol.slot_ns(start_ns, s, sender.slot);
            if let Some(conn) = sender.conn.filter(|_| at <= now_ns) {
                driver.poke(conn);
            }
        }
        let protocol = driver.protocol();
        let now = Instant::now();
        let mut wake = now + MAX_TICK;
        wake = wake.min(protocol.epoch + Duration::from_nanos(end_ns));
        if let Some(at) = protocol.next_due_ns() {
            let at = protocol.epoch + Duration::from_nanos(at);
            match &mut slot_timer {
                Some(timer) => timer.arm(at, now)?,
                None => wake = wake.min(at),
            }
        }
        driver.turn(Some(wake.saturating_duration_since(now)))?;
    }
    if control.is_stopped() {
        sent_until = sent_until.min(Instant::now());
    }
    // The last lines: until every one is retired, or the timeout is over.
    driver.protocol_mut().stage = Stage::Draining;
    let drain_ends = Instant::now() + config.timeout;
    while !control.is_stopped() && !driver.is_empty() {
        let protocol = driver.protocol_mut();
        protocol.expire(protocol.now_ns().saturating_sub(timeout_ns));
        if protocol.in_flight() == 0 {
            break;
        }
        let now = Instant::now();
        if now >= drain_ends {
            break;
        }
        driver.turn(Some(MAX_TICK.min(drain_ends - now)))?;
    }
    let stats = driver.stats();
    let (bytes_in, bytes_out) = (stats.bytes_in, stats.bytes_out);
    let mut protocol = driver.into_protocol();
    let accounts = &mut protocol.accounts;
    for sender in &mut protocol.senders {
        sender.track.retire_all(&mut |o| accounts.retired(o));
    }
    let cpu_after = super::load::cpu_time();
    Ok(FanoutReport::new(
        config,
        &protocol.accounts,
        connected,
        sent_until.saturating_duration_since(start),
        control.is_stopped(),
        (bytes_in, bytes_out),
        super::report::CpuTime {
            user_s: cpu_after.user_s - cpu_before.user_s,
            system_s: cpu_after.system_s - cpu_before.system_s,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(members: usize, senders: usize) -> FanoutConfig {
        FanoutConfig {
            endpoint: "127.0.0.1:9"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
            target: "test".into(),
            members,
            senders,
            rate: 10.0,
            duration: Duration::from_secs(1),
            size: 64,
            room: None,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    fn member(index: usize, senders: usize) -> Member {
        Member {
            index,
            sender: (index < senders).then_some(index as u32),
            established: true,
            last_seq: vec![NONE; senders].into_boxed_slice(),
        }
    }

    fn relayed(sender: u32, seq: u64, at: u64) -> Vec<u8> {
        let mut line = b"[127.0.0.1:4000] ".to_vec();
        let header = Header {
            sender,
            seq,
            intended_ns: at,
            sent_ns: at,
        };
        line::encode(&header, 64, &mut line);
        line.pop();
        line
    }

    /// Two receivers of one sender: each line completes at its second receipt with the
    /// latency to it; a repeat or an older line is out of order, not a delivery; the
    /// sender's own line coming back is ignored; a probe is heard; junk is garbled.
    #[test]
    fn receipts_are_counted_once_and_in_order() {
        let mut fanout = Fanout::new(&config(3, 1));
        let (mut sender, mut a, mut b) = (member(0, 1), member(1, 1), member(2, 1));
        for at in [1_000, 2_000] {
            let accounts = &mut fanout.accounts;
            fanout.senders[0]
                .track
                .push(at, 2, true, &mut |o| accounts.retired(o));
        }
        fanout.on_line(&mut a, &relayed(0, 0, 1_000), 5_000);
        fanout.on_line(&mut sender, &relayed(0, 0, 1_000), 5_000);
        fanout.on_line(&mut a, &relayed(0, 0, 1_000), 6_000);
        assert_eq!(fanout.accounts.out_of_order, 1);
        assert_eq!(fanout.accounts.delivered, 1);
        fanout.on_line(&mut b, &relayed(0, 0, 1_000), 9_000);
        assert_eq!(fanout.accounts.lines_complete, 1);
        assert_eq!(fanout.accounts.to_last.max(), 8, "8 µs after its due time");
        fanout.on_line(&mut a, &relayed(0, 1, 2_000), 9_000);
        fanout.on_line(&mut b, &relayed(0, 1, 2_000), 9_000);
        fanout.on_line(&mut b, &relayed(0, 0, 1_000), 9_500);
        assert_eq!(fanout.accounts.delivered, 4);
        assert_eq!(fanout.accounts.out_of_order, 2);
        assert_eq!(fanout.in_flight(), 0);

        fanout.on_line(&mut b, b"[x] #p00000000", 0);
        assert!(fanout.heard[2]);
        fanout.on_line(&mut b, b"[x] #p00000009", 0);
        fanout.on_line(&mut b, b"[x] #zz", 0);
        fanout.on_line(&mut b, &relayed(5, 0, 0), 0);
        fanout.on_line(&mut b, b"* x joined", 0);
        fanout.on_line(&mut b, b"[x] hello", 0);
        assert_eq!(fanout.accounts.garbled, 3);
        fanout.on_line(&mut b, b"! line too long", 0);
        assert_eq!(fanout.accounts.server_errors, 1);
        assert!(fanout.accounts.first_error.is_some());
    }

    /// Senders' schedules interleave: sender k's slots sit k/K of a period after sender 0's.
    #[test]
    fn schedules_interleave() {
        let fanout = Fanout::new(&config(4, 2));
        assert_eq!(fanout.slot_ns(0, 0, 0), 0);
        assert_eq!(fanout.slot_ns(0, 1, 0), 50_000_000);
        assert_eq!(fanout.slot_ns(0, 0, 1), 100_000_000);
        assert_eq!(fanout.slot_ns(1_000, 1, 2), 250_001_000);
    }
}
