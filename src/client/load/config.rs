//! What a load run is asked to do, as plain values, and how it is checked before it
//! starts: the limits, the stop condition, and the errors a run can end with instead of
//! a report.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::client::report::ReportOptions;
use crate::client::workload::Workload;
use crate::launch::describe;

/// Largest `--size`: every connection holds one message (plus the pipeline's copies in
/// its output buffer), so this bounds memory per connection.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Largest `--pipeline`: bounds the per-connection queue of outstanding requests.
pub const MAX_PIPELINE: usize = 1024;
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

    pub(super) fn report_options(&self) -> ReportOptions {
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
