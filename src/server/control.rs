//! Reaching a running loop from outside it: shutdown requests and counter snapshots from
//! other threads (a test, the other workers), and SIGINT/SIGTERM/SIGHUP delivered into
//! the loop through a self-pipe.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use mio::Waker;
use signal_hook::consts::{SIGHUP, SIGINT};
use signal_hook_mio::v1_0::Signals;

use crate::stats::Stats;

/// What the loop has been asked to do; only ever raised (`fetch_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(super) enum State {
    Running = 0,
    /// Stop accepting, let pending output drain, then return.
    Graceful = 1,
    /// Close everything and return at once.
    Immediate = 2,
}

/// A request for a loop's counters: where the answer goes, and whose loop to wake once
/// it is there (a loop that asks must not block on the answer).
pub(super) struct StatsRequest {
    pub(super) reply: mpsc::Sender<Stats>,
    pub(super) wake: Option<Arc<Control>>,
}

impl StatsRequest {
    pub(super) fn answer(self, stats: Stats) {
        if self.reply.send(stats).is_ok() {
            if let Some(asker) = self.wake {
                let _ = asker.waker.wake();
            }
        }
    }
}

/// What a loop shares with its handles. The lock is touched only by a stats request and
/// the wake it causes, never per event.
pub(super) struct Control {
    state: AtomicU8,
    pub(super) waker: Waker,
    stats_requests: Mutex<Vec<StatsRequest>>,
}

impl Control {
    pub(super) fn new(waker: Waker) -> Arc<Control> {
        Arc::new(Control {
            state: AtomicU8::new(State::Running as u8),
            waker,
            stats_requests: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn state(&self) -> State {
        match self.state.load(Ordering::SeqCst) {
            0 => State::Running,
            1 => State::Graceful,
            _ => State::Immediate,
        }
    }

    pub(super) fn raise(&self, state: State) {
        self.state.fetch_max(state as u8, Ordering::SeqCst);
    }

    /// The pending snapshot requests, to be answered now.
    pub(super) fn take_stats_requests(&self) -> Vec<StatsRequest> {
        match self.stats_requests.lock() {
            Ok(mut requests) => std::mem::take(&mut *requests),
            Err(_) => Vec::new(),
        }
    }
}

/// Stops a running server, or reads its counters, from another thread (a signal handler
/// thread, a test).
#[derive(Clone)]
pub struct ServerHandle {
    pub(super) control: Arc<Control>,
}

impl ServerHandle {
    /// Stop accepting, let pending output drain (up to the drain timeout), then return.
    pub fn shutdown(&self) {
        self.signal(State::Graceful);
    }

    /// Close everything and return at once.
    pub fn stop_now(&self) {
        self.signal(State::Immediate);
    }

    /// A snapshot of the loop's counters, or `None` if it does not answer within `timeout`
    /// (it has stopped).
    pub fn stats(&self, timeout: Duration) -> Option<Stats> {
        let (tx, rx) = mpsc::channel();
        self.request_stats(tx, None)?;
        rx.recv_timeout(timeout).ok()
    }

    /// Asks for a snapshot of the loop's counters, sent to `reply`; then `wake`'s loop is
    /// woken, so that a loop can ask another without waiting for it. `None` if the loop
    /// cannot be reached.
    pub(super) fn request_stats(
        &self,
        reply: mpsc::Sender<Stats>,
        wake: Option<Arc<Control>>,
    ) -> Option<()> {
        self.control
            .stats_requests
            .lock()
            .ok()?
            .push(StatsRequest { reply, wake });
        self.control.waker.wake().ok()
    }

    fn signal(&self, state: State) {
        self.control.raise(state);
        if let Err(e) = self.control.waker.wake() {
            log::error!("cannot wake the server loop: {e}");
        }
    }
}

/// Signals delivered to the loop through a self-pipe, and the other workers a shutdown
/// is passed on to.
pub(super) struct SignalWatch {
    pub(super) signals: Signals,
    pub(super) peers: Vec<ServerHandle>,
    caught: u32,
}

impl SignalWatch {
    pub(super) fn new(signals: Signals, peers: Vec<ServerHandle>) -> SignalWatch {
        SignalWatch {
            signals,
            peers,
            caught: 0,
        }
    }

    /// Takes the signals that arrived: the first SIGINT/SIGTERM starts a graceful shutdown
    /// here and in every peer, a second exits the process at once with status 130. SIGHUP,
    /// which operators send out of habit (nginx reloads on it), is logged and ignored.
    pub(super) fn on_signals(&mut self, control: &Control) {
        for signal in self.signals.pending() {
            if signal == SIGHUP {
                log::info!("Caught SIGHUP: ignored (there is no configuration to reload)");
                continue;
            }
            self.caught += 1;
            if self.caught > 1 {
                // A second signal: the operator does not want to wait for the drain.
                log::warn!("Second signal, exiting now.");
                std::process::exit(130);
            }
            if signal == SIGINT {
                log::info!("Caught keyboard interrupt, exiting.");
            } else {
                log::info!("Caught SIGTERM, exiting.");
            }
            control.raise(State::Graceful);
            for peer in &self.peers {
                peer.shutdown();
            }
        }
    }
}
