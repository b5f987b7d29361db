//! A loop's counters, and the reasons a connection can end. Connections add their I/O to
//! them; the loop adds accepts and closes; `ServerHandle::stats` and the exit line read them.

use std::fmt;

/// Why a connection ended, for the statistics and the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side and everything owed was sent.
    PeerClosed,
    /// The protocol ended the session (error reply, `quit`, `Connection: close`).
    Protocol,
    /// Reset, broken pipe or another socket error.
    Error,
    IdleTimeout,
    FrameTimeout,
    WriteTimeout,
    /// Its unwritten backlog of others' messages passed the cap after a write was tried.
    SlowConsumer,
    /// An unfinished frame grew past the protocol's limit.
    InputTooLarge,
    /// The server is shutting down.
    Shutdown,
    /// Behind a proxy (`--proxy-protocol`): its PROXY header was invalid, or the peer
    /// closed or failed before it was complete.
    ProxyHeader,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::PeerClosed,
        CloseReason::Protocol,
        CloseReason::Error,
        CloseReason::IdleTimeout,
        CloseReason::FrameTimeout,
        CloseReason::WriteTimeout,
        CloseReason::SlowConsumer,
        CloseReason::InputTooLarge,
        CloseReason::Shutdown,
        CloseReason::ProxyHeader,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer-closed",
            CloseReason::Protocol => "protocol",
            CloseReason::Error => "error",
            CloseReason::IdleTimeout => "idle-timeout",
            CloseReason::FrameTimeout => "frame-timeout",
            CloseReason::WriteTimeout => "write-timeout",
            CloseReason::SlowConsumer => "slow-consumer",
            CloseReason::InputTooLarge => "input-too-large",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ProxyHeader => "proxy-header",
        }
    }
}

/// Counters of one loop; `run` returns them when it ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    /// Connections accepted and closed at once because the server was full.
    pub refused: u64,
    pub closed: [u64; CloseReason::ALL.len()],
    /// Of the closed, those the server cut off with a reset (slow consumer, write
    /// timeout, a cap exceeded) rather than closed gracefully.
    pub resets: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub requests: u64,
    /// `epoll_ctl(MOD)` calls: only when a connection's interest changed.
    pub reregistrations: u64,
    /// Of those, the ones that added WRITABLE (a write could not finish at once).
    pub writable_registrations: u64,
    /// The most bytes any connection had queued for its peer.
    pub peak_outbound: usize,
    /// Times reading stopped for a connection because its output had to drain first.
    pub pauses: u64,
    /// Accept errors such as EMFILE.
    pub accept_errors: u64,
    /// Open connections at the time of the snapshot.
    pub open: usize,
    /// Times the loop came back from `epoll_wait`.
    pub turns: u64,
    /// The loop thread's CPU time at the time of the snapshot: its busy time.
    pub cpu: std::time::Duration,
    /// UDP echo (`--udp`): datagrams received, and echoed.
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Echoes dropped because the socket's send buffer and the loop's bounded queue
    /// behind it were full.
    pub datagrams_dropped: u64,
}

impl Stats {
    pub fn closed_by(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }

    pub fn merge(&mut self, other: &Stats) {
        self.accepted += other.accepted;
        self.refused += other.refused;
        for (a, b) in self.closed.iter_mut().zip(other.closed) {
            *a += b;
        }
        self.resets += other.resets;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.requests += other.requests;
        self.reregistrations += other.reregistrations;
        self.writable_registrations += other.writable_registrations;
        self.peak_outbound = self.peak_outbound.max(other.peak_outbound);
        self.pauses += other.pauses;
        self.accept_errors += other.accept_errors;
        self.open += other.open;
        self.turns += other.turns;
        self.cpu += other.cpu;
        self.datagrams_in += other.datagrams_in;
        self.datagrams_out += other.datagrams_out;
        self.datagrams_dropped += other.datagrams_dropped;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open {} accepted {} refused {} requests {} bytes in {} out {} closed",
            self.open, self.accepted, self.refused, self.requests, self.bytes_in, self.bytes_out
        )?;
        for reason in CloseReason::ALL {
            let n = self.closed_by(reason);
            if n > 0 {
                write!(f, " {}={}", reason.name(), n)?;
            }
        }
        if self.resets > 0 {
            write!(f, " (reset {})", self.resets)?;
        }
        if self.datagrams_in > 0 {
            write!(
                f,
                " udp in {} out {} dropped {}",
                self.datagrams_in, self.datagrams_out, self.datagrams_dropped
            )?;
        }
        Ok(())
    }
}
