//! A server loop's configuration as plain values: where it listens, the limits that bound
//! memory and fairness, and the timeouts. The binaries build it from flags; tests and
//! benches build it directly. Below everything that reads it.

use std::sync::Arc;
use std::time::Duration;

use crate::net::{ListenAddr, SocketOptions};

/// Size of a loop's scratch read buffer: one read takes at most this much.
pub const READ_CHUNK: usize = 64 * 1024;

/// The low-water mark of a connection's outbound queue, in bytes: a streaming protocol is
/// asked for more, and a paused connection is read again, once its queue is at or below
/// this (or half the cap, when the cap is smaller). One read's worth: refilled from there,
/// the socket never runs dry while the loop serves others.
pub const LOW_WATER: usize = 64 * 1024;

/// Limits that bound memory and fairness per connection and per loop turn.
#[derive(Debug, Clone)]
pub struct Limits {
    /// New connections past this many are accepted and closed at once.
    pub max_connections: usize,
    /// Bytes owed to one peer (its high-water mark): at it the loop stops reading from the
    /// connection, and resumes at the low-water mark; a peer whose unwritten backlog of
    /// others' messages passes it is cut off.
    pub max_outbound: usize,
    /// Accepts per loop turn, so a connection flood cannot starve open connections.
    pub accepts_per_turn: usize,
    /// Reads of `READ_CHUNK` per connection per turn before others get their turn.
    pub reads_per_turn: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_outbound: 1024 * 1024,
            accepts_per_turn: 256,
            reads_per_turn: 16,
        }
    }
}

impl Limits {
    /// The outbound level at which reading resumes and streaming refills.
    pub fn low_water(&self) -> usize {
        LOW_WATER.min(self.max_outbound / 2)
    }
}

/// The timeouts that apply to every connection of a loop (`None`: no such timeout).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// No traffic in either direction for this long closes the connection.
    pub idle: Option<Duration>,
    /// Output pending with no write progress for this long: the peer stopped reading.
    pub write: Option<Duration>,
    /// A frame that has started must be complete within this (defeats slowloris).
    pub frame: Option<Duration>,
    /// How long a lingering close waits for the peer's FIN.
    pub linger: Duration,
    /// An outgoing connection's connect must complete within this (clients only).
    pub connect: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: Some(Duration::from_secs(300)),
            write: Some(Duration::from_secs(30)),
            frame: Some(Duration::from_secs(30)),
            linger: Duration::from_secs(2),
            connect: None,
        }
    }
}

/// Everything a server loop needs, as plain values (the binaries build it from flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: ListenAddr,
    pub socket: SocketOptions,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// After a shutdown request, how long pending output may drain before everything closes.
    pub drain_timeout: Duration,
    /// Log a statistics line this often.
    pub stats_interval: Option<Duration>,
    /// Prefix for log lines when several loops run (`worker 1: ...`).
    pub name: Option<String>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) naming the
    /// client; it is opened with that address once the header has come.
    pub proxy_protocol: bool,
    /// Every connection is under TLS with this configuration (certificate, key, ALPN):
    /// a loop whose connections are `net::AnyStream` needs it; a plain one ignores it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServerConfig {
    pub fn new(listen: ListenAddr) -> Self {
        ServerConfig {
            listen,
            socket: SocketOptions::default(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            drain_timeout: Duration::from_secs(5),
            stats_interval: None,
            name: None,
            proxy_protocol: false,
            tls: None,
        }
    }

    /// Refuses values that would make the loop spin or never read or accept: the message
    /// names the setting. (Zero timeouts are not among them: `None` means "never".)
    pub fn validate(&self) -> Result<(), String> {
        let limits = &self.limits;
        if limits.max_outbound == 0 {
            // Nothing could ever be owed, so nothing could be read: the loop would pause
            // and resume the connection forever.
            return Err("--max-outbound must be at least 1 byte".into());
        }
        if limits.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if limits.accepts_per_turn == 0 || limits.reads_per_turn == 0 {
            return Err("accepts and reads per turn must be at least 1".into());
        }
        if self.socket.backlog < 1 {
            return Err("--backlog must be at least 1".into());
        }
        if self
            .socket
            .keepalive
            .is_some_and(|k| k < Duration::from_secs(1))
        {
            // TCP_KEEPIDLE counts whole seconds; zero is refused by the kernel.
            return Err("--keepalive must be at least 1s".into());
        }
        if self.stats_interval.is_some_and(|i| i.is_zero()) {
            return Err("--stats must be longer than 0".into());
        }
        for (name, timeout) in [
            ("--idle-timeout", self.timeouts.idle),
            ("--write-timeout", self.timeouts.write),
            ("--frame-timeout", self.timeouts.frame),
        ] {
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(format!(
                    "{name} must be longer than 0 (leave it out for never)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig::new(ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()))
    }

    /// Values that would make the loop spin or never read are refused, naming the flag.
    #[test]
    fn meaningless_values_are_refused() {
        assert_eq!(config().validate(), Ok(()));
        let mut c = config();
        c.limits.max_outbound = 0;
        assert!(c.validate().unwrap_err().contains("--max-outbound"));
        let mut c = config();
        c.stats_interval = Some(Duration::ZERO);
        assert!(c.validate().unwrap_err().contains("--stats"));
        let mut c = config();
        c.limits.max_connections = 0;
        assert!(c.validate().unwrap_err().contains("--max-connections"));
        let mut c = config();
        c.socket.backlog = 0;
        assert!(c.validate().unwrap_err().contains("--backlog"));
        let mut c = config();
        c.timeouts.frame = Some(Duration::ZERO);
        assert!(c.validate().unwrap_err().contains("--frame-timeout"));
    }

    /// The low-water mark never exceeds half the cap, so a paused connection can resume.
    #[test]
    fn low_water_is_below_the_cap() {
        for cap in [1, 2, 100, 64 * 1024, 1024 * 1024] {
            let limits = Limits {
                max_outbound: cap,
                ..Limits::default()
            };
            assert!(limits.low_water() < cap, "{cap}");
        }
    }
}
