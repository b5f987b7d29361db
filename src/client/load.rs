//! The load generator: T threads, each one mio loop driving its share of the connections
//! (held in a `Slab`, key = the connection's index within its loop). A connection writes
//! its requests at once, asks for WRITABLE only while some are left, reads until the
//! socket is drained, and checks every response as it arrives ([`Exchange`]); latencies go
//! to hdrhistograms. Closed loop by default; with a rate, requests follow a fixed schedule
//! and latency counts from the scheduled time, so a stalled server cannot hide.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::connect;
use super::report::{CpuTime, ErrorCounts, Interval, LoadReport, ReportOptions, Tally};
use super::timer::SlotTimer;
use super::workload::{ConnExchange, Exchange, Progress, Workload};
use crate::launch::describe;

/// Largest `--size`: every connection holds one message (plus the pipeline's copies in
/// its output buffer), so this bounds memory per connection.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Largest `--pipeline`: bounds the per-connection queue of outstanding requests.
pub const MAX_PIPELINE: usize = 1024;
/// Bytes taken by one read; a response larger than this is checked across several reads.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per connection per event before the others get their turn (1 MiB at most).
const READS_PER_EVENT: usize = 16;
/// Events taken from one `epoll_wait`.
const EVENTS_CAPACITY: usize = 1024;
/// Longest sleep of a loop with nothing to do: how often timeouts are checked at least.
const MAX_TICK: Duration = Duration::from_millis(100);
/// Progress lines come this often.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// The printer waits this long past each second for the loops to publish it.
const PROGRESS_GRACE: Duration = Duration::from_millis(30);
/// The tokens of each loop's waker and schedule timer, out of the range of slab keys.
const WAKER: Token = Token(usize::MAX);
const SLOT_TIMER: Token = Token(usize::MAX - 1);

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAt {
    /// After this much measured time (past the warm-up).
    Duration(Duration),
    /// When this many requests, issued after the warm-up, have been answered.
    Requests(u64),
}

/// Everything a load run needs, as plain values (the binary builds it from its flags).
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    pub connections: usize,
    pub stop: StopAt,
    /// Run this long before measuring; nothing in it is counted.
    pub warmup: Duration,
    /// Requests outstanding per connection (1: send the next when the answer is back).
    pub pipeline: usize,
    /// Open loop: requests per second in total, spread evenly over the connections.
    pub rate: Option<f64>,
    pub workload: Workload,
    pub connect_timeout: Duration,
    /// A request unanswered this long is a timeout error; its connection is closed.
    pub timeout: Duration,
    /// Independent loops, each with its own share of the connections.
    pub threads: usize,
}

impl LoadConfig {
    /// Checks the limits; the message names the option at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("NUM_CONNS must be at least 1".into());
        }
        if !(1..=MAX_PIPELINE).contains(&self.pipeline) {
            return Err(format!("--pipeline must be between 1 and {MAX_PIPELINE}"));
        }
        if !(1..=MAX_MESSAGE_SIZE).contains(&self.workload.size) {
            return Err(format!(
                "--size must be between 1 and {MAX_MESSAGE_SIZE} bytes"
            ));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of requests per second".into());
            }
        }
        match self.stop {
            StopAt::Duration(d) if d.is_zero() => {
                return Err("--duration must be longer than 0".into())
            }
            StopAt::Requests(0) => return Err("--requests must be at least 1".into()),
            _ => {}
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err("--timeout and --connect-timeout must be longer than 0".into());
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        Ok(())
    }

    fn report_options(&self) -> ReportOptions {
        ReportOptions {
            address: self.addr.to_string(),
            protocol: self.workload.protocol.name(),
            connections: self.connections,
            threads: self.threads.min(self.connections),
            duration_s: match self.stop {
                StopAt::Duration(d) => Some(d.as_secs_f64()),
                StopAt::Requests(_) => None,
            },
            requests: match self.stop {
                StopAt::Requests(n) => Some(n),
                StopAt::Duration(_) => None,
            },
            warmup_s: self.warmup.as_secs_f64(),
            size: self.workload.size,
            pipeline: self.pipeline,
            rate: self.rate,
            connect_timeout_s: self.connect_timeout.as_secs_f64(),
            timeout_s: self.timeout.as_secs_f64(),
        }
    }
}

/// Why a run could not produce a report.
#[derive(Debug)]
pub enum LoadError {
    /// The configuration is out of bounds.
    Config(String),
    /// Not one connection could be established; the first reason.
    Connect(String),
    /// The poll itself failed.
    Io(io::Error),
    /// The OS refused a thread for one of the loops.
    Thread(io::Error),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(message) | LoadError::Connect(message) => f.write_str(message),
            LoadError::Io(e) => write!(f, "event loop failed: {}", describe(e)),
            LoadError::Thread(e) => write!(f, "cannot start a load thread: {}", describe(e)),
        }
    }
}

impl std::error::Error for LoadError {}

/// Stops a run from another thread (the Ctrl-C handler, a test): the loops end at once
/// and the report covers what was measured, marked partial.
#[derive(Default)]
pub struct LoadControl {
    stopped: AtomicBool,
    wakers: Mutex<Vec<Arc<Waker>>>,
}

impl LoadControl {
    pub fn new() -> Arc<Self> {
        Arc::new(LoadControl::default())
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let wakers = self
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for waker in wakers.iter() {
            if let Err(e) = waker.wake() {
                log::error!("cannot wake a load loop: {e}");
            }
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn add_waker(&self, waker: Arc<Waker>) {
        self.wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(waker);
    }
}

/// What the loops share: the start line and the progress counters.
struct Shared<'a> {
    config: &'a LoadConfig,
    control: &'a LoadControl,
    /// All loops wait here once their connections are up, so the run starts together.
    barrier: Barrier,
    start: OnceLock<Instant>,
    connected: AtomicU64,
    /// Per loop, the current second's figures, published once a second when progress is on.
    progress: Option<Vec<Mutex<Interval>>>,
}

/// What one loop hands back.
struct LoopResult {
    tally: Tally,
    /// When the loop stopped measuring (deadline, interruption, or its last answer).
    ended: Option<Instant>,
    last_answer: Option<Instant>,
}

/// Runs the load described by `config` until its duration or request count is reached,
/// or `control` stops it. Progress lines go to `progress` once a second, if given.
pub fn run_load(
    config: &LoadConfig,
    control: &LoadControl,
    mut progress: Option<&mut dyn Write>,
) -> Result<LoadReport, LoadError> {
    config.validate().map_err(LoadError::Config)?;
    let threads = config.threads.min(config.connections);
    let cpu_before = cpu_time();
    let shared = Shared {
        config,
        control,
        barrier: Barrier::new(threads),
        start: OnceLock::new(),
        connected: AtomicU64::new(0),
        progress: progress.is_some().then(|| {
            (0..threads)
                .map(|_| Mutex::new(Interval::default()))
                .collect()
        }),
    };
    let results: io::Result<Vec<io::Result<LoopResult>>> = std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // Each loop waits for the go before it connects: if the OS refuses a thread, the
        // loops already started are called off instead of waiting at the barrier forever.
        let mut gates = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        let mut refused = None;
        for index in 0..threads {
            let shared = &shared;
            let done = done_tx.clone();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name(format!("load-{index}"))
                .spawn_scoped(scope, move || {
                    let result = match go_rx.recv() {
                        Ok(()) => LoadLoop::run(shared, index, threads),
                        Err(_) => Err(io::Error::other("called off")),
                    };
                    drop(done);
                    result
                });
            match spawned {
                Ok(handle) => {
                    gates.push(go_tx);
                    handles.push(handle);
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = refused {
            drop(gates);
            for handle in handles {
                let _ = handle.join();
            }
            return Err(e);
        }
        for gate in gates {
            let _ = gate.send(());
        }
        drop(done_tx);
        // The calling thread prints progress until every loop has dropped its sender.
        let mut second = 1u32;
        loop {
            let wait = match (&progress, shared.start.get()) {
                (Some(_), Some(start)) => (*start + PROGRESS_INTERVAL * second + PROGRESS_GRACE)
                    .saturating_duration_since(Instant::now()),
                _ => MAX_TICK,
            };
            match done_rx.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            }
            if let (Some(out), Some(slots), Some(start)) =
                (progress.as_mut(), &shared.progress, shared.start.get())
            {
                if Instant::now() >= *start + PROGRESS_INTERVAL * second {
                    let mut total = Interval::default();
                    for slot in slots {
                        total.merge_from(&mut slot.lock().unwrap_or_else(|p| p.into_inner()));
                    }
                    let warmup = PROGRESS_INTERVAL * second <= config.warmup;
                    let _ = writeln!(
                        out,
                        "{}",
                        total.line(u64::from(second), PROGRESS_INTERVAL, warmup)
                    );
                    second += 1;
                }
            }
        }
        Ok(handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a load thread panicked")))
            })
            .collect())
    });
    let results = results.map_err(LoadError::Thread)?;
    let mut tally = Tally::default();
    let mut ended: Option<Instant> = None;
    let mut last_answer: Option<Instant> = None;
    for result in results {
        let result = result.map_err(LoadError::Io)?;
        tally.merge(&result.tally);
        ended = ended.max(result.ended);
        last_answer = last_answer.max(result.last_answer);
    }
    if tally.connected == 0 {
        let reason = tally.first_error.unwrap_or_else(|| "interrupted".into());
        return Err(LoadError::Connect(reason));
    }
    let partial = control.is_stopped();
    let elapsed = match shared.start.get() {
        Some(start) => {
            let measure_start = *start + config.warmup;
            let end = match config.stop {
                StopAt::Requests(_) if !partial => last_answer.or(ended),
                StopAt::Duration(d) => ended.map(|e| e.min(measure_start + d)),
                StopAt::Requests(_) => ended,
            };
            end.map_or(Duration::ZERO, |e| {
                e.saturating_duration_since(measure_start)
            })
        }
        None => Duration::ZERO,
    };
    let cpu_after = cpu_time();
    let cpu = CpuTime {
        user_s: round3(cpu_after.user_s - cpu_before.user_s),
        system_s: round3(cpu_after.system_s - cpu_before.system_s),
    };
    Ok(LoadReport::new(
        config.report_options(),
        &tally,
        elapsed,
        partial,
        cpu,
    ))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// CPU time used so far by this process (all threads).
fn cpu_time() -> CpuTime {
    // SAFETY: getrusage only writes the struct it is given, which is zeroed and ours.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return CpuTime::default();
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    CpuTime {
        user_s: secs(usage.ru_utime),
        system_s: secs(usage.ru_stime),
    }
}

/// How a connection failed, for the error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Reset,
    Timeout,
    Mismatched,
}

#[derive(Debug)]
struct Failure {
    kind: FailureKind,
    message: String,
}

impl Failure {
    fn reset(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Reset,
            message: message.into(),
        }
    }
}

/// One outstanding request.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When it should have been sent: the schedule with a rate, else the actual send.
    intended: Instant,
    sent: Instant,
    /// Issued in the measured window (after the warm-up).
    counted: bool,
}

/// One connection of a loop.
struct Conn {
    stream: TcpStream,
    connected: bool,
    exchange: ConnExchange,
    /// Requests written or to be written; `out_pos` bytes of it are already sent.
    out: Vec<u8>,
    out_pos: usize,
    /// An unfinished response prefix the exchange needs whole (an HTTP head); empty for echo.
    inbound: Vec<u8>,
    /// Requests sent and not yet answered, oldest first (at most `pipeline`).
    pending: VecDeque<Pending>,
    /// Requests issued so far; with a rate, the next one's place in the schedule.
    issued: u64,
    registered: Interest,
    /// Marked for the rate dispatcher this turn.
    due: bool,
}

impl Conn {
    fn wanted_interest(&self) -> Interest {
        if self.out_pos < self.out.len() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

/// One thread's loop and its connections.
struct LoadLoop<'a> {
    shared: &'a Shared<'a>,
    /// This loop's number, 0-based.
    thread: usize,
    poll: Poll,
    conns: Slab<Conn>,
    read_buf: Vec<u8>,
    tally: Tally,
    interval: Option<Interval>,
    /// Counted requests still unanswered.
    outstanding: u64,
    /// With `--requests`: how many more this loop may issue after the warm-up.
    budget: Option<u64>,
    /// Connections whose read budget ran out with input possibly left (edge-triggered
    /// epoll will not report it again): served next turn without waiting.
    again: Vec<usize>,
    /// With a rate: this loop's share (requests per second) and the next schedule slot.
    rate: Option<f64>,
    slot: u64,
    /// Connections this loop started with: slot `k` belongs to connection `k % slots_per_round`.
    slots_per_round: u64,
    /// Scratch list of the connections whose slot came this turn.
    due_keys: Vec<usize>,
    start: Instant,
    measure_start: Instant,
    deadline: Option<Instant>,
    last_answer: Option<Instant>,
}

impl<'a> LoadLoop<'a> {
    fn run(shared: &'a Shared<'a>, index: usize, threads: usize) -> io::Result<LoopResult> {
        let config = shared.config;
        let (first, count) = share(config.connections, threads, index);
        let setup = LoadLoop::new(shared, index, threads, count).and_then(|mut lp| {
            lp.connect_all(first, count)?;
            Ok(lp)
        });
        // Every loop reaches the barrier, even after an error, or the others would wait forever.
        let connected = setup.as_ref().map_or(0, |lp| lp.conns.len() as u64);
        shared.connected.fetch_add(connected, Ordering::SeqCst);
        if shared.barrier.wait().is_leader() {
            let _ = shared.start.set(Instant::now());
        }
        shared.barrier.wait();
        let mut lp = setup?;
        lp.tally.connected = connected;
        let Some(&start) = shared.start.get() else {
            return Err(io::Error::other("the run's start time was not set"));
        };
        if shared.connected.load(Ordering::SeqCst) == 0 || shared.control.is_stopped() {
            return Ok(lp.finish(None));
        }
        lp.start = start;
        lp.measure_start = start + config.warmup;
        lp.deadline = match config.stop {
            StopAt::Duration(d) => Some(lp.measure_start + d),
            StopAt::Requests(_) => None,
        };
        lp.serve()
    }

    fn new(shared: &'a Shared<'a>, index: usize, threads: usize, count: usize) -> io::Result<Self> {
        let config = shared.config;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        shared.control.add_waker(waker);
        let now = Instant::now();
        Ok(LoadLoop {
            shared,
            thread: index,
            poll,
            conns: Slab::with_capacity(count),
            read_buf: vec![0; READ_CHUNK],
            tally: Tally::default(),
            interval: shared.progress.as_ref().map(|_| Interval::default()),
            outstanding: 0,
            budget: match config.stop {
                StopAt::Requests(n) => Some(share(n as usize, threads, index).1 as u64),
                StopAt::Duration(_) => None,
            },
            again: Vec::new(),
            // This loop's part of the rate, in proportion to its connections.
            rate: config
                .rate
                .map(|r| r * count as f64 / config.connections as f64),
            slot: 0,
            slots_per_round: count as u64,
            due_keys: Vec::with_capacity(count),
            // Set for real once every loop is connected.
            start: now,
            measure_start: now,
            deadline: None,
            last_answer: None,
        })
    }

    /// Opens this loop's connections and waits until each is established, failed, or out
    /// of time.
    fn connect_all(&mut self, first: usize, count: usize) -> io::Result<()> {
        let config = self.shared.config;
        for number in first..first + count {
            let entry = self.conns.vacant_entry();
            let stream =
                match connect::start(self.poll.registry(), config.addr, Token(entry.key()))? {
                    Ok(stream) => stream,
                    Err(e) => {
                        self.connect_failed(&e);
                        continue;
                    }
                };
            // Requests leave at once instead of waiting for Nagle's algorithm.
            if let Err(e) = stream.set_nodelay(true) {
                log::debug!("cannot set TCP_NODELAY: {e}");
            }
            let interest = Interest::READABLE | Interest::WRITABLE;
            entry.insert(Conn {
                stream,
                connected: false,
                exchange: config.workload.exchange(number as u64),
                out: Vec::new(),
                out_pos: 0,
                inbound: Vec::new(),
                pending: VecDeque::with_capacity(config.pipeline),
                issued: 0,
                registered: interest,
                due: false,
            });
        }
        let deadline = Instant::now() + config.connect_timeout;
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        while self.conns.iter().any(|(_, c)| !c.connected) && !self.shared.control.is_stopped() {
            let now = Instant::now();
            if now >= deadline {
                let waiting: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| !c.connected)
                    .map(|(key, _)| key)
                    .collect();
                for key in waiting {
                    self.conns.remove(key);
                    self.tally.error(
                        |e| &mut e.connect,
                        || {
                            format!(
                                "cannot connect to {}: timed out after {:?}",
                                config.addr, config.connect_timeout
                            )
                        },
                    );
                }
                break;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(deadline - now)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                let key = event.token().0;
                let Some(conn) = self.conns.get_mut(key) else {
                    continue;
                };
                if conn.connected {
                    continue;
                }
                match connect::finished(&conn.stream) {
                    Ok(connected) => conn.connected = connected,
                    Err(e) => {
                        self.conns.remove(key);
                        self.connect_failed(&e);
                    }
                }
            }
        }
        if self.shared.control.is_stopped() {
            self.conns.retain(|_, c| c.connected);
        }
        Ok(())
    }

    fn connect_failed(&mut self, e: &io::Error) {
        let addr = self.shared.config.addr;
        self.tally.error(
            |e| &mut e.connect,
            || format!("cannot connect to {addr}: {}", describe(e)),
        );
    }

    /// The measured run: issue, read, check, record, until the end.
    fn serve(mut self) -> io::Result<LoopResult> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let now = Instant::now();
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.after_io(key, now);
        }
        let mut slot_timer = match self.rate {
            Some(_) => SlotTimer::new(self.poll.registry(), SLOT_TIMER)?,
            None => None,
        };
        let mut next_tick = now + self.tick();
        let mut next_publish = self.start + PROGRESS_INTERVAL;
        loop {
            let now = Instant::now();
            if self.shared.control.is_stopped() {
                return Ok(self.finish(Some(now)));
            }
            if let Some(deadline) = self.deadline {
                if now >= deadline {
                    return Ok(self.finish(Some(deadline)));
                }
            }
            if self.conns.is_empty()
                || (self.budget == Some(0) && self.outstanding == 0 && now >= self.measure_start)
            {
                return Ok(self.finish(Some(now)));
            }
            if self.rate.is_some() {
                self.dispatch_due(now);
            }
            if now >= next_tick {
                self.check_timeouts(now);
                next_tick = now + self.tick();
            }
            if self.interval.is_some() && now >= next_publish {
                self.publish();
                next_publish += PROGRESS_INTERVAL;
            }
            let mut wake_at = next_tick;
            if let Some(deadline) = self.deadline {
                wake_at = wake_at.min(deadline);
            }
            if let Some(at) = self.slot_time(self.slot) {
                match &mut slot_timer {
                    Some(timer) => timer.arm(at, now)?,
                    None => wake_at = wake_at.min(at),
                }
            }
            if self.interval.is_some() {
                wake_at = wake_at.min(next_publish);
            }
            if self.budget.is_some() && now < self.measure_start {
                wake_at = wake_at.min(self.measure_start);
            }
            let timeout = if self.again.is_empty() {
                wake_at.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                if event.token() == WAKER || event.token() == SLOT_TIMER {
                    continue; // only here to end the wait
                }
                self.on_event(event.token().0, event);
            }
            let mut again = std::mem::take(&mut self.again);
            for &key in &again {
                if self.conns.contains(key) {
                    let now = Instant::now();
                    if let Err(failure) = self.read(key, false, now) {
                        self.fail(key, failure);
                        continue;
                    }
                    self.after_io(key, now);
                }
            }
            again.clear();
            if self.again.is_empty() {
                // Keep the allocation for the next time a read budget runs out.
                self.again = again;
            }
        }
    }

    /// Sleep between timeout checks: a tenth of the timeout, at most `MAX_TICK`.
    fn tick(&self) -> Duration {
        (self.shared.config.timeout / 10).clamp(Duration::from_millis(1), MAX_TICK)
    }

    fn on_event(&mut self, key: usize, event: &Event) {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            // Past the end: what arrives now is reported as in flight, not as done.
            return;
        }
        if !self.conns.contains(key) {
            return; // closed earlier in this batch
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            if let Err(failure) = self.read(key, event.is_read_closed(), now) {
                self.fail(key, failure);
                return;
            }
        }
        self.after_io(key, now);
    }

    /// After reading (or at the start): issue what the pipeline or schedule allows, write
    /// it, and register the interest the connection now wants.
    fn after_io(&mut self, key: usize, now: Instant) {
        self.issue(key, now);
        if let Err(failure) = self.flush(key, now) {
            self.fail(key, failure);
            return;
        }
        let conn = &mut self.conns[key];
        let wanted = conn.wanted_interest();
        if wanted != conn.registered {
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(key), wanted)
            {
                self.fail(key, Failure::reset(format!("reregister failed: {e}")));
                return;
            }
            conn.registered = wanted;
        }
    }

    /// Reads until the socket is drained, checking each response as it completes.
    fn read(&mut self, key: usize, read_closed: bool, now: Instant) -> Result<(), Failure> {
        for _ in 0..READS_PER_EVENT {
            let conn = &mut self.conns[key];
            let n = match conn.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    return Err(Failure::reset(if conn.pending.is_empty() {
                        "the server closed the connection".to_string()
                    } else {
                        format!(
                            "the server closed the connection with {} requests unanswered",
                            conn.pending.len()
                        )
                    }))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::reset(format!("read failed: {}", describe(&e)))),
            };
            if self.measuring(now) {
                self.tally.bytes_in += n as u64;
            }
            self.absorb(key, n, now)?;
            // A short read emptied the receive queue: with edge-triggered epoll, bytes that
            // arrive later raise a new event, so the read that would only say EAGAIN is
            // skipped. A FIN that came with this data raises no new edge, hence the
            // exception when the event already reported the peer's close.
            if n < self.read_buf.len() && !read_closed {
                return Ok(());
            }
        }
        self.again.push(key);
        Ok(())
    }

    /// Checks `read_buf[..n]` against the outstanding requests, oldest first, recording
    /// each completed one; keeps an unfinished prefix the exchange needs whole.
    fn absorb(&mut self, key: usize, n: usize, now: Instant) -> Result<(), Failure> {
        let LoadLoop {
            conns,
            read_buf,
            tally,
            interval,
            outstanding,
            last_answer,
            rate,
            ..
        } = self;
        let conn = &mut conns[key];
        let mut recorder = Recorder {
            tally,
            interval: interval.as_mut(),
            outstanding,
            last_answer,
            rate: rate.is_some(),
        };
        if conn.inbound.is_empty() {
            let used = check_responses(conn, &read_buf[..n], now, &mut recorder)?;
            if used < n {
                keep_pending(conn, &read_buf[used..n])?;
            }
        } else {
            let mut inbound = std::mem::take(&mut conn.inbound);
            inbound.extend_from_slice(&read_buf[..n]);
            let used = check_responses(conn, &inbound, now, &mut recorder)?;
            inbound.drain(..used);
            conn.inbound = inbound;
            if conn.inbound.len() > conn.exchange.max_pending() {
                return Err(too_long(conn));
            }
        }
        Ok(())
    }

    /// Issues the requests the connection may send now: up to the pipeline depth, and
    /// with a rate only those whose scheduled time has come; never past the end.
    fn issue(&mut self, key: usize, now: Instant) {
        let config = self.shared.config;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.due = false;
        while conn.pending.len() < config.pipeline {
            let intended = match self.rate {
                Some(_) => {
                    let slot = conn.issued * self.slots_per_round + key as u64;
                    match slot_time(self.start, self.rate, slot) {
                        Some(at) if at <= now => at,
                        _ => break,
                    }
                }
                None => now,
            };
            if self.deadline.is_some_and(|d| intended >= d) {
                break;
            }
            let counted = intended >= self.measure_start;
            if counted {
                match &mut self.budget {
                    Some(0) => break,
                    Some(left) => *left -= 1,
                    None => {}
                }
                self.tally.sent += 1;
                self.outstanding += 1;
            }
            conn.exchange.write_request(&mut conn.out);
            conn.pending.push_back(Pending {
                intended,
                sent: now,
                counted,
            });
            conn.issued += 1;
        }
    }

    /// Writes what is queued, as far as the socket takes it.
    fn flush(&mut self, key: usize, now: Instant) -> Result<(), Failure> {
        let conn = &mut self.conns[key];
        while conn.out_pos < conn.out.len() {
            match conn.stream.write(&conn.out[conn.out_pos..]) {
                Ok(n) => {
                    conn.out_pos += n;
                    if now >= self.measure_start && self.deadline.is_none_or(|d| now < d) {
                        self.tally.bytes_out += n as u64;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::reset(format!("write failed: {}", describe(&e)))),
            }
        }
        if conn.out_pos == conn.out.len() {
            // Keeps its capacity: the next requests are written without allocating.
            conn.out.clear();
            conn.out_pos = 0;
        }
        Ok(())
    }

    fn measuring(&self, now: Instant) -> bool {
        now >= self.measure_start && self.deadline.is_none_or(|d| now < d)
    }

    /// Ends a connection: counts the error and the counted requests lost with it.
    fn fail(&mut self, key: usize, failure: Failure) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        let lost = conn.pending.iter().filter(|p| p.counted).count() as u64;
        self.tally.failed += lost;
        self.outstanding -= lost;
        self.tally.lost += 1;
        let kind: fn(&mut ErrorCounts) -> &mut u64 = match failure.kind {
            FailureKind::Reset => |e| &mut e.reset,
            FailureKind::Timeout => |e| &mut e.timeout,
            FailureKind::Mismatched => |e| &mut e.mismatched,
        };
        log::debug!("connection {key}: {}", failure.message);
        self.tally.error(kind, || failure.message);
        if let Some(interval) = &mut self.interval {
            interval.errors += 1;
        }
        // Dropping the stream closes it, which also removes it from epoll.
    }

    /// Closes connections whose oldest request has waited longer than the timeout.
    fn check_timeouts(&mut self, now: Instant) {
        let timeout = self.shared.config.timeout;
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.pending
                    .front()
                    .is_some_and(|p| now.saturating_duration_since(p.sent) >= timeout)
            })
            .map(|(key, _)| key)
            .collect();
        for key in late {
            self.fail(
                key,
                Failure {
                    kind: FailureKind::Timeout,
                    message: format!("no answer within {timeout:?}"),
                },
            );
        }
    }

    fn slot_time(&self, slot: u64) -> Option<Instant> {
        slot_time(self.start, self.rate, slot)
    }

    /// With a rate: hands every schedule slot whose time has come to its connection.
    fn dispatch_due(&mut self, now: Instant) {
        if self.slots_per_round == 0 {
            return;
        }
        // Reused every turn: the schedule must not allocate per request.
        let mut due = std::mem::take(&mut self.due_keys);
        while let Some(at) = self.slot_time(self.slot) {
            if at > now || self.deadline.is_some_and(|d| at >= d) {
                break;
            }
            let key = (self.slot % self.slots_per_round) as usize;
            self.slot += 1;
            if let Some(conn) = self.conns.get_mut(key) {
                if !conn.due {
                    conn.due = true;
                    due.push(key);
                }
            }
        }
        for &key in &due {
            if self.conns.contains(key) {
                self.after_io(key, now);
            }
        }
        due.clear();
        self.due_keys = due;
    }

    /// Hands this second's progress figures to the printer.
    fn publish(&mut self) {
        if let (Some(interval), Some(slots)) = (&mut self.interval, &self.shared.progress) {
            if let Some(slot) = slots.get(self.thread) {
                slot.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .merge_from(interval);
            }
        }
    }

    fn finish(mut self, ended: Option<Instant>) -> LoopResult {
        self.publish();
        self.tally.in_flight = self.outstanding;
        LoopResult {
            tally: self.tally,
            ended,
            last_answer: self.last_answer,
        }
    }
}

/// Where answered requests are counted.
struct Recorder<'a> {
    tally: &'a mut Tally,
    interval: Option<&'a mut Interval>,
    outstanding: &'a mut u64,
    last_answer: &'a mut Option<Instant>,
    rate: bool,
}

/// Walks `data` through the connection's exchange, completing outstanding requests in
/// order; returns how many bytes were used (the rest is an unfinished prefix to keep).
fn check_responses(
    conn: &mut Conn,
    data: &[u8],
    now: Instant,
    rec: &mut Recorder<'_>,
) -> Result<usize, Failure> {
    let mut used = 0;
    while used < data.len() {
        let Some(&request) = conn.pending.front() else {
            return Err(Failure {
                kind: FailureKind::Mismatched,
                message: format!(
                    "the server sent {} bytes nobody asked for",
                    data.len() - used
                ),
            });
        };
        match conn.exchange.read_response(&data[used..]) {
            Ok(Progress::NeedMore { used: n }) => return Ok(used + n),
            Ok(Progress::Done { used: n, accepted }) => {
                used += n;
                conn.pending.pop_front();
                if request.counted {
                    rec.tally.completed += 1;
                    *rec.outstanding -= 1;
                    *rec.last_answer = Some(now);
                    let uncorrected = now.saturating_duration_since(request.sent);
                    let corrected = now.saturating_duration_since(request.intended);
                    rec.tally
                        .record(corrected, if rec.rate { uncorrected } else { corrected });
                    if !accepted {
                        rec.tally.error(
                            |e| &mut e.status,
                            || "the server answered with a failure status".into(),
                        );
                    }
                }
                if let Some(interval) = rec.interval.as_deref_mut() {
                    interval.completed += 1;
                    interval.errors += u64::from(!accepted);
                    interval.latency.saturating_record(
                        now.saturating_duration_since(request.intended).as_micros() as u64,
                    );
                }
            }
            Err(e) => {
                return Err(Failure {
                    kind: FailureKind::Mismatched,
                    message: e.0,
                })
            }
        }
    }
    Ok(used)
}

/// Keeps an unfinished response prefix for the next read, within the exchange's cap.
fn keep_pending(conn: &mut Conn, rest: &[u8]) -> Result<(), Failure> {
    if rest.len() > conn.exchange.max_pending() {
        return Err(too_long(conn));
    }
    conn.inbound.extend_from_slice(rest);
    Ok(())
}

fn too_long(conn: &Conn) -> Failure {
    Failure {
        kind: FailureKind::Mismatched,
        message: format!(
            "an unfinished response passed {} bytes",
            conn.exchange.max_pending()
        ),
    }
}

/// With a rate, when schedule slot `slot` is due: slots are evenly spaced from the start.
fn slot_time(start: Instant, rate: Option<f64>, slot: u64) -> Option<Instant> {
    let rate = rate?;
    start.checked_add(Duration::from_secs_f64(slot as f64 / rate))
}

/// The part of `total` that goes to `index` of `parts`: (first item, count), as even as
/// possible, the first ones taking the remainder.
fn share(total: usize, parts: usize, index: usize) -> (usize, usize) {
    let base = total / parts;
    let extra = total % parts;
    let count = base + usize::from(index < extra);
    let first = index * base + index.min(extra);
    (first, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections and requests split across threads add up exactly and differ by at most one.
    #[test]
    fn shares_add_up() {
        for total in [0, 1, 7, 50, 10_000] {
            for parts in 1..=5 {
                let shares: Vec<(usize, usize)> =
                    (0..parts).map(|i| share(total, parts, i)).collect();
                assert_eq!(shares.iter().map(|s| s.1).sum::<usize>(), total);
                for pair in shares.windows(2) {
                    assert_eq!(pair[0].0 + pair[0].1, pair[1].0, "contiguous");
                }
                let (min, max) = (
                    shares.iter().map(|s| s.1).min(),
                    shares.iter().map(|s| s.1).max(),
                );
                assert!(max.unwrap() - min.unwrap() <= 1);
            }
        }
    }

    /// Schedule slots are evenly spaced at the rate.
    #[test]
    fn schedule_is_even() {
        let start = Instant::now();
        assert_eq!(slot_time(start, None, 5), None);
        assert_eq!(slot_time(start, Some(1000.0), 0), Some(start));
        assert_eq!(
            slot_time(start, Some(1000.0), 250),
            Some(start + Duration::from_millis(250))
        );
    }
}
