//! What a load run is asked to do, as plain values, and how it is checked before it
//! starts: the limits, the stop condition, and the errors a run can end with instead of
//! a report.

use std::fmt;
use std::io;
use std::time::Duration;

use super::rate::{Rate, RatePlan};
use crate::client::driver::Endpoint;
use crate::client::report::ReportOptions;
use crate::client::workload::{LoadProtocol, Workload};
use crate::net::describe;

/// Largest `--size`: every connection holds one message (plus the pipeline's copies in
/// its output buffer), so this bounds memory per connection.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Largest `--pipeline`: bounds the per-connection queue of outstanding requests.
pub const MAX_PIPELINE: usize = 1024;
/// Largest `--rate`, requests per second: far past what one machine's loopback carries
/// (a few hundred thousand), so a larger value is a typo, and the schedule's slots
/// would only be counted through, not sent.
pub const MAX_RATE: f64 = 10_000_000.0;
/// Largest `--connect-rate`, connections per second.
pub const MAX_CONNECT_RATE: f64 = 1_000_000.0;
/// `--udp`: the fraction of datagrams that may be lost before the run fails (1%:
/// loopback and a healthy LAN lose none, so this flags real trouble, not a stray drop).
pub const DEFAULT_MAX_LOSS: f64 = 0.01;

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
    /// Where to connect (TCP or Unix, TLS or not).
    pub endpoint: Endpoint,
    /// How the target is named in the report (a URL, or the address).
    pub target: String,
    pub connections: usize,
    pub stop: StopAt,
    /// Run this long before measuring; nothing in it is counted.
    pub warmup: Duration,
    /// Requests outstanding per connection (1: send the next when the answer is back).
    pub pipeline: usize,
    /// Open loop: requests per second in total over the measured time (constant, a ramp,
    /// or steps), spread evenly over the connections.
    pub rate: Option<RatePlan>,
    pub workload: Workload,
    pub connect_timeout: Duration,
    /// A request unanswered this long is a timeout error; its connection is closed.
    pub timeout: Duration,
    /// Independent loops, each with its own share of the connections.
    pub threads: usize,
    /// A connection that ends (the server closed it, or an error) is opened again and
    /// the run goes on (false: `--no-reconnect`, it is gone for the rest of the run).
    pub reconnect: bool,
    /// False: one request per connection (`--disable-keepalive`), then a new connection.
    pub keep_alive: bool,
    /// Connections opened per second at most, in total (`--connect-rate`).
    pub connect_rate: Option<f64>,
    /// `--udp`: echo datagrams on `connections` UDP sockets instead (`timeout` is then
    /// each datagram's: past it, it is lost).
    pub udp: bool,
    /// `--udp`: the fraction of datagrams that may be lost (0 to 1).
    pub max_loss: f64,
}

impl LoadConfig {
    /// A closed-loop run with the defaults: one request in flight per connection, no
    /// warm-up, one thread, reconnecting, keep-alive, 3 s to connect, 10 s per request.
    pub fn new(
        endpoint: impl Into<Endpoint>,
        connections: usize,
        stop: StopAt,
        workload: Workload,
    ) -> Self {
        let endpoint = endpoint.into();
        LoadConfig {
            target: endpoint.to_string(),
            endpoint,
            connections,
            stop,
            warmup: Duration::ZERO,
            pipeline: 1,
            rate: None,
            workload,
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
            threads: 1,
            reconnect: true,
            keep_alive: true,
            connect_rate: None,
            udp: false,
            max_loss: DEFAULT_MAX_LOSS,
        }
    }

    /// Checks the limits; the message names the option at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("NUM_CONNS must be at least 1".into());
        }
        if !(1..=MAX_PIPELINE).contains(&self.pipeline) {
            return Err(format!("--pipeline must be between 1 and {MAX_PIPELINE}"));
        }
        if self.udp {
            if !matches!(self.endpoint.addr, crate::net::ListenAddr::Tcp(_))
                || self.endpoint.tls.is_some()
            {
                return Err("--udp sends to HOST PORT: no --unix, --tls or https://".into());
            }
            if self.workload.protocol != LoadProtocol::Echo {
                return Err("--udp echoes datagrams: no --protocol".into());
            }
            if !(super::SEQ_LEN..=super::MAX_DATAGRAM).contains(&self.workload.size) {
                return Err(format!(
                    "--size with --udp must be between {} (the sequence number) and {} bytes",
                    super::SEQ_LEN,
                    super::MAX_DATAGRAM
                ));
            }
            if !(self.max_loss.is_finite() && (0.0..=1.0).contains(&self.max_loss)) {
                return Err("--max-loss must be between 0 and 100%".into());
            }
        }
        if !(1..=MAX_MESSAGE_SIZE).contains(&self.workload.size) {
            return Err(format!(
                "--size must be between 1 and {MAX_MESSAGE_SIZE} bytes"
            ));
        }
        if let Some(plan) = &self.rate {
            plan.validate()?;
            if let StopAt::Duration(d) = self.stop {
                // Is there a slot in the measured window? The first one at or after the
                // warm-up, on the whole plan's schedule.
                let whole = Rate::new(plan, 1.0, self.warmup, 1);
                let first = whole.offset_of(whole.first_slot_from(self.warmup.as_secs_f64()));
                if first >= (self.warmup + d).as_secs_f64() {
                    return Err(format!(
                        "--rate {plan} over --duration {d:?} schedules no request in the measured \
                         time: the first would be due {first:.3}s after the start"
                    ));
                }
            }
        }
        if let Some(rate) = self.connect_rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= MAX_CONNECT_RATE) {
                return Err(format!(
                    "--connect-rate must be a number of connections per second above 0 and at \
                     most {}",
                    MAX_CONNECT_RATE as u64
                ));
            }
        }
        if !self.keep_alive && !self.reconnect {
            return Err("--disable-keepalive needs reconnecting: drop --no-reconnect".into());
        }
        if !self.keep_alive && self.pipeline > 1 {
            return Err(
                "--disable-keepalive sends one request per connection: drop --pipeline".into(),
            );
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
            address: self.target.clone(),
            protocol: if self.udp {
                "udp"
            } else {
                self.workload.protocol.name()
            },
            request: (self.workload.protocol == LoadProtocol::Http)
                .then(|| self.workload.http.label.clone()),
            tls: self.endpoint.tls.is_some(),
            reconnect: self.reconnect,
            keep_alive: self.keep_alive,
            connect_rate: self.connect_rate,
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
            rate: self.rate.as_ref().map(RatePlan::first_rate),
            rate_plan: self.rate.as_ref().map(RatePlan::to_string),
            connect_timeout_s: self.connect_timeout.as_secs_f64(),
            timeout_s: self.timeout.as_secs_f64(),
            max_loss: self.udp.then_some(self.max_loss),
        }
    }
}

/// Why a run could not produce a report.
#[derive(Debug)]
pub enum LoadError {
    /// The configuration is out of bounds (a usage error).
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
