//! The load generator: T threads, each one client loop driving its share of the
//! connections ([`worker`]); what each connection sends and checks, and where answers are
//! recorded, is a client protocol ([`requests`]) over the [`crate::client::workload`]
//! exchanges. Closed loop by default; with a rate plan (constant, ramp or steps), requests
//! follow its schedule ([`rate`]) and latency counts from the scheduled time, so a stalled
//! server cannot hide.
//! This file starts the loops, prints progress ([`progress`]) and merges their results.

mod config;
mod progress;
mod rate;
mod requests;
mod worker;

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mio::Waker;

use super::report::{CpuTime, Interval, LoadReport, Tally};
pub use config::{LoadConfig, LoadError, StopAt, MAX_MESSAGE_SIZE, MAX_PIPELINE};
pub use rate::RatePlan;

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
        progress::print_until_done(&shared, &done_rx, progress.take());
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
