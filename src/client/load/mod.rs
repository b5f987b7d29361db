//! The load generator: T threads, each one client loop driving its share of the
//! connections ([`worker`]); what each connection sends and checks, and where answers are
//! recorded, is a client protocol ([`requests`]) over the [`crate::client::workload`]
//! exchanges. Closed loop by default; with a rate plan (constant, ramp or steps), requests
//! follow its schedule ([`rate`]) and latency counts from the scheduled time, so a stalled
//! server cannot hide. With `--udp`, each thread runs a UDP echo loop instead ([`udp`]), on
//! the same start line, schedule, progress and report.
//! This file starts the loops, prints progress ([`progress`]) and merges their results.

mod config;
mod progress;
mod rate;
mod requests;
mod udp;
mod worker;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::Waker;

use super::pace::{PaceSeries, PaceSummary};
use super::report::{per_second, CpuTime, Interval, LoadReport, SecondTally, Tally, LATE_AFTER_MS};
use super::series::SeriesCollector;
pub use config::{LoadConfig, LoadError, StopAt, DEFAULT_MAX_LOSS, MAX_MESSAGE_SIZE, MAX_PIPELINE};
pub use rate::RatePlan;
pub use udp::{MAX_DATAGRAM, SEQ_LEN};

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

    pub(crate) fn add_waker(&self, waker: Arc<Waker>) {
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
    /// Per loop, the measured seconds it has finished, for the series (always kept).
    seconds: Vec<Mutex<SecondSlot>>,
    /// The wall-clock time when the measured window begins (set with `start`).
    measure_start_wall: OnceLock<SystemTime>,
}

/// One loop's finished seconds, oldest first, waiting for the collector; and emptied
/// ones it gave back, so a second costs the loop no allocation.
#[derive(Default)]
struct SecondSlot {
    done: VecDeque<SecondTally>,
    spare: Vec<SecondTally>,
    /// The loop has handed over its last second.
    finished: bool,
}

/// Emptied seconds a slot keeps for reuse at most.
const SPARE_SECONDS: usize = 2;
/// The length of the measured window's intervals (the series, `--hdr-log`).
const SECOND: Duration = Duration::from_secs(1);

/// Hands loop `thread`'s current second to the collector and starts the next one in its
/// place (with an emptied second the collector gave back, if any); `last`: the loop is
/// done. TCP and UDP loops alike.
fn hand_over_second(
    shared: &Shared<'_>,
    thread: usize,
    current: &mut SecondTally,
    pace: &mut PaceSeries,
    last: bool,
) {
    current.pace = pace.take(current.index as usize, last);
    let mut slot = shared.seconds[thread]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let next_index = current.index + 1;
    let next = match slot.spare.pop() {
        Some(mut spare) => {
            spare.reset(next_index);
            spare
        }
        None if last => SecondTally::new_empty(next_index),
        None => SecondTally::new(next_index),
    };
    slot.done.push_back(std::mem::replace(current, next));
    slot.finished |= last;
}

/// Completes every second all loops are past into `collector`.
fn collect_seconds(shared: &Shared<'_>, collector: &mut SeriesCollector) {
    fn lock(slot: &Mutex<SecondSlot>) -> std::sync::MutexGuard<'_, SecondSlot> {
        slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    loop {
        let next = collector.next_index();
        let mut any = false;
        for slot in &shared.seconds {
            let slot = lock(slot);
            match slot.done.front() {
                Some(second) if second.index == next => any = true,
                // Loops hand seconds over in order from 0: another head is a bug.
                Some(second) => {
                    log::error!("second {} handed over while {next} was due", second.index);
                    return;
                }
                None if slot.finished => {}
                None => return,
            }
        }
        if !any {
            return;
        }
        for slot in &shared.seconds {
            let mut slot = lock(slot);
            if let Some(mut second) = slot.done.pop_front() {
                collector.add(&second);
                if slot.spare.len() < SPARE_SECONDS {
                    second.reset(0);
                    slot.spare.push(second);
                }
            }
        }
        collector.complete();
    }
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
        seconds: (0..threads)
            .map(|_| Mutex::new(SecondSlot::default()))
            .collect(),
        measure_start_wall: OnceLock::new(),
    };
    let mut collector = SeriesCollector::default();
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
                        Ok(()) if shared.config.udp => udp::run(shared, index, threads),
                        Ok(()) => worker::run(shared, index, threads),
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
        progress::print_until_done(&shared, &done_rx, progress.take(), &mut collector);
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
    collect_seconds(&shared, &mut collector);
    let cpu_after = cpu_time();
    let cpu = CpuTime {
        user_s: round3(cpu_after.user_s - cpu_before.user_s),
        system_s: round3(cpu_after.system_s - cpu_before.system_s),
    };
    let mut report = LoadReport::new(config.report_options(), &tally, elapsed, partial, cpu);
    report.started_unix_s = shared
        .measure_start_wall
        .get()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| (d.as_secs_f64() * 1e3).round() / 1e3);
    report.intervals = collector.finish(elapsed);
    let open_loop = config.rate.is_some();
    if open_loop {
        let seconds = report.intervals.iter().map(|second| second.pace);
        report.pace = Some(PaceSummary::of(seconds, LATE_AFTER_MS));
    }
    report.per_second = per_second(&report.intervals, open_loop);
    Ok(report)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// CPU time used so far by this process (all threads).
pub(crate) fn cpu_time() -> CpuTime {
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
