//! One accepted connection: its socket, its inbound (unfinished frame) and outbound
//! (owed bytes) buffers, its lifecycle phase and deadlines, and the one function that
//! decides which readiness it wants from the poll.

use std::io::{self, Write};
use std::time::Duration;

use mio::{Interest, Registry, Token};

use crate::clock::Tick;
use crate::net::{Peer, Stream};
use crate::outbound::Outbound;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading requests and answering them.
    Open,
    /// No more reading: flush what is owed, then close.
    Closing,
    /// Our write side is shut and everything was sent; read and discard what the peer
    /// still sends until it closes or `until`, so that closing with unread input does not
    /// make the kernel answer with a reset that destroys our last reply (lingering close).
    Lingering { until: Tick },
    /// Done; removed in the sweep after the current batch of events.
    Closed,
}

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
    /// Its pending output passed the cap while others' messages were queued for it.
    SlowConsumer,
    /// An unfinished frame grew past the protocol's limit.
    InputTooLarge,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 9] = [
        CloseReason::PeerClosed,
        CloseReason::Protocol,
        CloseReason::Error,
        CloseReason::IdleTimeout,
        CloseReason::FrameTimeout,
        CloseReason::WriteTimeout,
        CloseReason::SlowConsumer,
        CloseReason::InputTooLarge,
        CloseReason::Shutdown,
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
        }
    }
}

/// Which of a connection's deadlines is the nearest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineKind {
    Idle,
    Frame,
    Write,
    Linger,
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
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: Some(Duration::from_secs(300)),
            write: Some(Duration::from_secs(30)),
            frame: Some(Duration::from_secs(30)),
            linger: Duration::from_secs(2),
        }
    }
}

/// A connection and everything the loop keeps for it. Idle, it holds no heap memory:
/// both buffers are unallocated while empty.
pub struct Connection<S> {
    pub stream: Stream,
    pub peer: Peer,
    /// Unique for the loop's lifetime; a slab key is reused, this is not, so stale
    /// timers and deferred work can tell a successor from the connection they meant.
    pub id: u64,
    pub session: S,
    /// The unconsumed tail of the input: an unfinished frame.
    pub inbound: Vec<u8>,
    pub outbound: Outbound,
    /// The interest currently registered with the poll.
    pub registered: Interest,
    pub phase: Phase,
    /// Reading stopped because the outbound buffer passed its cap.
    pub read_paused: bool,
    /// The peer sent FIN.
    pub peer_closed: bool,
    pub close_reason: CloseReason,
    pub last_activity: Tick,
    /// When the unfinished frame in `inbound` started.
    pub frame_started: Option<Tick>,
    /// Since when output has been pending with no write progress.
    pub write_stalled_since: Option<Tick>,
    /// The deadline of this connection's entry in the loop's timer queue, if any.
    pub timer_at: Option<Tick>,
    /// Queued on the loop's list of connections to flush at the end of the batch.
    pub dirty: bool,
    /// A streaming protocol's `on_drained` was stopped by the loop's per-turn budget while
    /// it still had output: the loop serves the connection again next turn, and until then
    /// an empty queue does not mean the connection is finished.
    pub more_to_stream: bool,
}

impl<S> Connection<S> {
    pub fn new(stream: Stream, peer: Peer, id: u64, session: S, now: Tick) -> Self {
        Connection {
            stream,
            peer,
            id,
            session,
            inbound: Vec::new(),
            outbound: Outbound::default(),
            registered: Interest::READABLE,
            phase: Phase::Open,
            read_paused: false,
            peer_closed: false,
            close_reason: CloseReason::PeerClosed,
            last_activity: now,
            frame_started: None,
            write_stalled_since: None,
            timer_at: None,
            dirty: false,
            more_to_stream: false,
        }
    }

    /// Whether the loop should read from this connection now.
    pub fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Open => !self.read_paused && !self.peer_closed,
            Phase::Lingering { .. } => true,
            Phase::Closing | Phase::Closed => false,
        }
    }

    /// The one place that decides interest: READABLE while the connection may read,
    /// WRITABLE only while bytes are waiting to go out. `None`: the connection is finished.
    pub fn wanted_interest(&self) -> Option<Interest> {
        if self.phase == Phase::Closed {
            return None;
        }
        match (self.wants_read(), !self.outbound.is_empty()) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            // Nothing to wait for, but the loop itself comes back next turn.
            (false, false) if self.more_to_stream => Some(self.registered),
            (false, false) => None,
        }
    }

    /// Settling would change nothing: open and reading, nothing owed, READABLE registered,
    /// and only the idle deadline applies, whose timer is armed (activity only moves it
    /// later). The state of a connection between two echoed messages, checked first.
    pub fn is_steady(&self) -> bool {
        self.phase == Phase::Open
            && !self.read_paused
            && !self.peer_closed
            && !self.more_to_stream
            && self.outbound.is_empty()
            && self.registered == Interest::READABLE
            && self.timer_at.is_some()
            && self.frame_started.is_none()
            && self.write_stalled_since.is_none()
    }

    /// Registers `wanted` in place of the current interest; the caller has checked that
    /// they differ. Returns whether WRITABLE was newly added.
    pub fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        wanted: Interest,
    ) -> io::Result<bool> {
        registry.reregister(&mut self.stream, token, wanted)?;
        let added_writable = wanted.is_writable() && !self.registered.is_writable();
        self.registered = wanted;
        Ok(added_writable)
    }

    /// Marks the connection finished; the loop removes it in its sweep.
    pub fn close(&mut self, reason: CloseReason) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.close_reason = reason;
        }
    }

    /// Stops reading and closes once what is queued has been sent.
    pub fn finish(&mut self, reason: CloseReason) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
            self.close_reason = reason;
        }
    }

    /// Sends `reply`: straight from the caller's buffer when nothing else is queued,
    /// keeping only what the socket did not take. Returns the bytes written.
    pub fn send(&mut self, reply: &[u8], now: Tick) -> io::Result<usize> {
        if reply.is_empty() {
            return Ok(0);
        }
        if !self.outbound.is_empty() {
            self.outbound.push_bytes(reply);
            return self.flush(now);
        }
        let written = loop {
            match self.stream.write(reply) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if written > 0 {
            self.last_activity = now;
        }
        if written < reply.len() {
            self.outbound.push_bytes(&reply[written..]);
            self.write_stalled_since = Some(now);
        }
        Ok(written)
    }

    /// Writes queued output until it is gone or the socket is full. Returns the bytes written.
    pub fn flush(&mut self, now: Tick) -> io::Result<usize> {
        let mut total = 0;
        while !self.outbound.is_empty() {
            match self.outbound.write_to(&mut self.stream) {
                Ok((0, _)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok((n, all)) => {
                    total += n;
                    if !all {
                        // A short write means the send buffer is full; edge-triggered
                        // epoll reports WRITABLE again once it has room.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if total > 0 {
            self.last_activity = now;
        }
        self.write_stalled_since = if self.outbound.is_empty() {
            None
        } else if total > 0 {
            Some(now)
        } else {
            self.write_stalled_since.or(Some(now))
        };
        Ok(total)
    }

    /// The nearest deadline, if any applies.
    pub fn deadline(&self, timeouts: &Timeouts) -> Option<(Tick, DeadlineKind)> {
        match self.phase {
            Phase::Closed => return None,
            Phase::Lingering { until } => return Some((until, DeadlineKind::Linger)),
            Phase::Open | Phase::Closing => {}
        }
        let candidates = [
            timeouts
                .idle
                .map(|d| (self.last_activity + d, DeadlineKind::Idle)),
            timeouts
                .frame
                .zip(self.frame_started)
                .map(|(d, start)| (start + d, DeadlineKind::Frame)),
            timeouts
                .write
                .zip(self.write_stalled_since)
                .map(|(d, since)| (since + d, DeadlineKind::Write)),
        ];
        candidates.into_iter().flatten().min_by_key(|(at, _)| *at)
    }
}

/// Whether an I/O error is the peer's doing (reset, broken pipe), not worth more than a
/// debug line.
pub fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::WriteZero
    )
}
