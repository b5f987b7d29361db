//! One thread of a load run: a client loop with its share of the connections. It connects
//! them (at `--connect-rate`, if given), waits at the start line for the other loops, then
//! turns the loop until the run ends, handing due schedule slots to their connections,
//! re-establishing the connections that ended, and publishing progress.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::{Token, Waker};

use super::progress::{publish, PROGRESS_INTERVAL};
use super::rate::{share, Pacer, Rate};
use super::requests::{Reopen, Requests, Window};
use super::{hand_over_second, SECOND};
use super::{LoopResult, Shared, StopAt};
use crate::client::driver::{client_timeouts, Driver, FIRST_CALLER_TOKEN};
use crate::client::report::Interval;
use crate::client::timer::SlotTimer;
use crate::connection::Phase;
use crate::net::Transport;
use crate::schedule::ConnRef;

/// Longest sleep of a loop with nothing to do: how often it looks at the clock at least.
const MAX_TICK: Duration = Duration::from_millis(100);
/// The tokens of each loop's waker and schedule timer: the caller's range of the driver.
const WAKER: Token = Token(FIRST_CALLER_TOKEN);
const SLOT_TIMER: Token = Token(FIRST_CALLER_TOKEN + 1);

/// One thread's loop and its connections.
struct Worker<'a> {
    shared: &'a Shared<'a>,
    /// This loop's number, 0-based.
    thread: usize,
    driver: Driver<Requests<'a>>,
    /// The connections by their index in the schedule (`None`: it never connected).
    by_index: Vec<Option<ConnRef>>,
    /// With a rate: this loop's schedule, its next slot, and which connections are due
    /// this turn.
    rate: Option<Rate>,
    slot: u64,
    /// With `--requests` and a rate: how many more slots of the measured time count as
    /// intended (the loop's share of the requests).
    intended_left: Option<u64>,
    due: Vec<usize>,
    is_due: Vec<bool>,
    /// The driver's byte counters when measuring began.
    bytes_at_start: Option<(u64, u64)>,
    /// With `--connect-rate`: when this loop may open its next connection.
    pacer: Option<Pacer>,
    /// The reopen list's spare, swapped with it each turn (no allocation per reconnect).
    reopen_spare: Vec<Reopen>,
}

/// Runs loop `index` of `threads` from connecting to the end of the run.
pub(super) fn run(shared: &Shared<'_>, index: usize, threads: usize) -> io::Result<LoopResult> {
    let config = shared.config;
    let (first, count) = share(config.connections, threads, index);
    let setup = Worker::connect_all(shared, index, threads, first, count);
    // Every loop reaches the barrier, even after an error, or the others would wait forever.
    let connected = setup.as_ref().map_or(0, Worker::established);
    shared.connected.fetch_add(connected, Ordering::SeqCst);
    if shared.barrier.wait().is_leader() {
        let _ = shared.start.set(Instant::now());
        let _ = shared
            .measure_start_wall
            .set(SystemTime::now() + config.warmup);
    }
    shared.barrier.wait();
    let mut worker = setup?;
    worker.driver.protocol_mut().tally.connected = connected;
    let Some(&start) = shared.start.get() else {
        return Err(io::Error::other("the run's start time was not set"));
    };
    if shared.connected.load(Ordering::SeqCst) == 0 || shared.control.is_stopped() {
        return Ok(worker.finish(None));
    }
    let measure_start = start + config.warmup;
    worker.driver.protocol_mut().window = Some(Window {
        start,
        measure_start,
        deadline: match config.stop {
            StopAt::Duration(d) => Some(measure_start + d),
            StopAt::Requests(_) => None,
        },
    });
    worker.serve()
}

impl<'a> Worker<'a> {
    /// Opens this loop's connections and waits until each is established, failed, or
    /// out of time (the connect timeout).
    fn connect_all(
        shared: &'a Shared<'a>,
        thread: usize,
        threads: usize,
        first: usize,
        count: usize,
    ) -> io::Result<Self> {
        let config = shared.config;
        let budget = match config.stop {
            StopAt::Requests(n) => Some(share(n as usize, threads, thread).1 as u64),
            StopAt::Duration(_) => None,
        };
        let mut requests = Requests::new(config, first, count, budget);
        requests.interval = shared.progress.as_ref().map(|_| Interval {
            pace: config.rate.as_ref().map(|_| (0, 0, 0)),
            ..Interval::default()
        });
        // This loop's part of the rate, in proportion to its connections.
        let rate = config.rate.as_ref().map(|plan| {
            let part = count as f64 / config.connections as f64;
            Rate::new(plan, part, config.warmup, count as u64)
        });
        requests.rate = rate.clone();
        let timeouts = client_timeouts(config.connect_timeout, Some(config.timeout));
        let mut driver = Driver::new(requests, timeouts)?;
        shared
            .control
            .add_waker(Arc::new(Waker::new(driver.registry(), WAKER)?));
        let mut pacer = config
            .connect_rate
            .map(|r| Pacer::new(r * count as f64 / config.connections as f64));
        let mut by_index = Vec::with_capacity(count);
        while by_index.len() < count && !shared.control.is_stopped() {
            let now = Instant::now();
            match pacer.as_mut().map(|p| p.take(now)) {
                Some(Some(wait)) => driver.turn(Some(wait))?,
                _ => by_index.push(driver.connect(&config.endpoint)?),
            }
        }
        by_index.resize(count, None);
        // Connected, and secured under TLS: the run starts with every handshake done.
        let establishing = |driver: &Driver<Requests<'_>>| {
            driver
                .connections()
                .any(|c| c.phase() == Phase::Connecting || c.stream().is_handshaking())
        };
        while establishing(&driver) && !shared.control.is_stopped() {
            driver.turn(None)?;
        }
        Ok(Worker {
            shared,
            thread,
            driver,
            by_index,
            rate,
            slot: 0,
            intended_left: budget,
            due: Vec::with_capacity(count),
            is_due: vec![false; count],
            bytes_at_start: None,
            pacer,
            reopen_spare: Vec::with_capacity(count),
        })
    }

    /// Connections that are established (and secured) and still open.
    fn established(&self) -> u64 {
        self.driver
            .connections()
            .filter(|c| c.phase() == Phase::Open && !c.stream().is_handshaking())
            .count() as u64
    }

    /// Opens again the connections that ended and are due (after their retry wait, and
    /// as the connect rate allows); returns when the next one is due, if any waits.
    fn reopen_due(&mut self, now: Instant) -> io::Result<Option<Instant>> {
        let mut list = std::mem::replace(
            &mut self.driver.protocol_mut().reopen,
            std::mem::take(&mut self.reopen_spare),
        );
        let mut next: Option<Instant> = None;
        let endpoint = &self.shared.config.endpoint;
        for entry in list.drain(..) {
            let paced = match (entry.not_before, &mut self.pacer) {
                (Some(at), _) if at > now => Some(at),
                (_, Some(pacer)) => pacer.take(now).map(|wait| now + wait),
                _ => None,
            };
            if let Some(at) = paced {
                next = Some(next.map_or(at, |n| n.min(at)));
                self.driver.protocol_mut().reopen.push(entry);
                continue;
            }
            self.driver.protocol_mut().reopening = Some(entry.index);
            self.by_index[entry.index] = self.driver.connect(endpoint)?;
        }
        self.reopen_spare = list;
        Ok(next)
    }

    /// The measured run: issue, read, check, record, until the end.
    fn serve(mut self) -> io::Result<LoopResult> {
        let Some(window) = self.driver.protocol().window else {
            return Ok(self.finish(None));
        };
        let mut slot_timer = match self.rate {
            Some(_) => SlotTimer::new(self.driver.registry(), SLOT_TIMER)?,
            None => None,
        };
        // A copy for the run, so dispatching can borrow the worker.
        let rate = self.rate.clone();
        self.note_measure_start(window, Instant::now());
        // The first requests: every connection sends what its pipeline (or the
        // schedule) allows.
        for conn in self.by_index.clone().into_iter().flatten() {
            self.driver.poke(conn);
        }
        let progress = self.driver.protocol().interval.is_some();
        let mut next_publish = window.start + PROGRESS_INTERVAL;
        // The measured window's seconds: answers go to the current one until it has
        // passed (checked each turn, and each turn wakes for it, so an answer read in
        // the turn that crosses a boundary lands at most one turn early).
        let mut next_second = window.measure_start + SECOND;
        loop {
            let now = Instant::now();
            self.note_measure_start(window, now);
            while now >= next_second {
                self.hand_over_second(false);
                next_second += SECOND;
            }
            if self.shared.control.is_stopped() {
                return Ok(self.finish(Some(now)));
            }
            if let Some(deadline) = window.deadline {
                if now >= deadline {
                    return Ok(self.finish(Some(deadline)));
                }
            }
            let reopen_at = if self.driver.protocol().reopen.is_empty() {
                None
            } else {
                self.reopen_due(now)?
            };
            let requests = self.driver.protocol();
            if (self.driver.is_empty() && requests.reopen.is_empty())
                || (requests.budget == Some(0)
                    && requests.outstanding == 0
                    && now >= window.measure_start)
            {
                return Ok(self.finish(Some(now)));
            }
            let budget_left = requests.budget.is_some();
            if let Some(rate) = &rate {
                self.dispatch_due(rate, window, now);
            }
            if progress && now >= next_publish {
                self.publish();
                next_publish += PROGRESS_INTERVAL;
            }
            let mut wake_at = now + MAX_TICK;
            if let Some(deadline) = window.deadline {
                wake_at = wake_at.min(deadline);
            }
            if let Some(at) = reopen_at {
                wake_at = wake_at.min(at);
            }
            if let Some(at) = rate
                .as_ref()
                .and_then(|r| r.slot_time(window.start, self.slot))
            {
                match &mut slot_timer {
                    Some(timer) => timer.arm(at, now)?,
                    None => wake_at = wake_at.min(at),
                }
            }
            if progress {
                wake_at = wake_at.min(next_publish);
            }
            wake_at = wake_at.min(next_second);
            if budget_left && now < window.measure_start {
                wake_at = wake_at.min(window.measure_start);
            }
            self.driver
                .turn(Some(wake_at.saturating_duration_since(now)))?;
        }
    }

    /// Walks the slots due by `now`, counting each as intended (in the progress figures,
    /// and in its second of the measured time); calls `due` with each one's connection.
    fn walk_slots(
        &mut self,
        rate: &Rate,
        window: Window,
        now: Instant,
        mut due: impl FnMut(&mut Self, usize),
    ) {
        while let Some(at) = rate.slot_time(window.start, self.slot) {
            if at > now || window.deadline.is_some_and(|d| at >= d) {
                break;
            }
            let index = (self.slot % rate.per_round) as usize;
            self.slot += 1;
            let requests = self.driver.protocol_mut();
            if let Some((intended, _, _)) = requests.interval.as_mut().and_then(|i| i.pace.as_mut())
            {
                *intended += 1;
            }
            if at >= window.measure_start && self.intended_left != Some(0) {
                let second = at.saturating_duration_since(window.measure_start).as_secs();
                requests.tally.pace.intend(second as usize);
                if let Some(left) = &mut self.intended_left {
                    *left -= 1;
                }
            }
            due(self, index);
        }
    }

    /// Takes the byte counters as measuring starts: bytes are reported from there on.
    fn note_measure_start(&mut self, window: Window, now: Instant) {
        if self.bytes_at_start.is_none() && now >= window.measure_start {
            let stats = self.driver.stats();
            self.bytes_at_start = Some((stats.bytes_in, stats.bytes_out));
        }
    }

    /// With a rate: hands every schedule slot whose time has come to its connection.
    fn dispatch_due(&mut self, rate: &Rate, window: Window, now: Instant) {
        if rate.per_round == 0 {
            return;
        }
        self.walk_slots(rate, window, now, |worker, index| {
            if worker.by_index[index].is_some() && !worker.is_due[index] {
                worker.is_due[index] = true;
                worker.due.push(index);
            }
        });
        // Reused every turn: the schedule must not allocate per request.
        for i in 0..self.due.len() {
            let index = self.due[i];
            self.is_due[index] = false;
            if let Some(conn) = self.by_index[index] {
                self.driver.poke(conn);
            }
        }
        self.due.clear();
    }

    /// Hands this second's progress figures to the printer.
    fn publish(&mut self) {
        let (shared, thread) = (self.shared, self.thread);
        if let Some(interval) = &mut self.driver.protocol_mut().interval {
            publish(shared, thread, interval);
        }
    }

    /// Hands the current second to the collector and starts the next one; `last`: the
    /// loop is done.
    fn hand_over_second(&mut self, last: bool) {
        let (shared, thread) = (self.shared, self.thread);
        let requests = self.driver.protocol_mut();
        hand_over_second(
            shared,
            thread,
            &mut requests.second,
            &mut requests.tally.pace,
            last,
        );
    }

    fn finish(mut self, ended: Option<Instant>) -> LoopResult {
        // The slots due between the last turn and the end were intended too.
        let window = self.driver.protocol().window;
        if let (Some(rate), Some(window), Some(end)) = (self.rate.take(), window, ended) {
            self.walk_slots(&rate, window, end, |_, _| {});
        }
        self.publish();
        self.hand_over_second(true);
        let stats = self.driver.stats();
        let (bytes_in, bytes_out) = (stats.bytes_in, stats.bytes_out);
        let mut requests = self.driver.into_protocol();
        if let Some((bytes_in_before, bytes_out_before)) = self.bytes_at_start {
            requests.tally.bytes_in = bytes_in - bytes_in_before;
            requests.tally.bytes_out = bytes_out - bytes_out_before;
        }
        requests.tally.in_flight = requests.outstanding;
        LoopResult {
            tally: requests.tally,
            ended,
            last_answer: requests.last_answer,
        }
    }
}
