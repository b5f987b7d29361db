//! Protocols: small state machines that turn a connection's inbound bytes into outbound
//! bytes (their own, or for chat other connections'). They never touch a socket, so each
//! is tested by feeding it byte slices.

pub mod app;
pub mod chat;
pub mod echo;
pub mod file;
pub mod http;

use std::fmt;
use std::sync::Arc;

use crate::net::Peer;

/// What the connection does after the protocol has looked at its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading, flush what is queued, then close (the write side first, so the last
    /// reply is not destroyed by a reset).
    Close,
}

/// Which deadline of a connection passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A frame had started and did not complete within the frame timeout.
    Frame,
}

/// Where a protocol puts what it produces during one call.
pub struct Output<'a> {
    reply: &'a mut Vec<u8>,
    broadcast: &'a mut Vec<Arc<[u8]>>,
    requests: &'a mut u64,
}

impl<'a> Output<'a> {
    pub fn new(
        reply: &'a mut Vec<u8>,
        broadcast: &'a mut Vec<Arc<[u8]>>,
        requests: &'a mut u64,
    ) -> Self {
        Output {
            reply,
            broadcast,
            requests,
        }
    }

    /// Queues bytes for this connection's peer.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reply.extend_from_slice(bytes);
    }

    /// The reply buffer itself, for encoders that write in place.
    pub fn reply_buf(&mut self) -> &mut Vec<u8> {
        self.reply
    }

    /// Queues `bytes` for every other connection of this loop, serialised once and shared.
    pub fn broadcast(&mut self, bytes: Arc<[u8]>) {
        self.broadcast.push(bytes);
    }

    /// Counts one request served, for the statistics.
    pub fn count_request(&mut self) {
        *self.requests += 1;
    }
}

/// A protocol served by the event loop. One value serves all connections of one loop;
/// per-connection state lives in `Session`.
pub trait Protocol {
    /// Per-connection state, stored next to the connection's socket.
    type Session;

    /// A new connection was accepted.
    fn open(&mut self, peer: &Peer, out: &mut Output<'_>) -> Self::Session;

    /// `input` holds the connection's unconsumed bytes. Consume every complete frame in it
    /// (never wait for another call when a whole frame is already here) and return how
    /// many bytes were used; the rest is kept and presented again, with more, next time.
    fn on_input(
        &mut self,
        session: &mut Self::Session,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow);

    /// The peer sent FIN; `leftover` is an incomplete frame it never finished (often empty).
    fn on_eof(&mut self, _session: &mut Self::Session, leftover: &[u8], _out: &mut Output<'_>) {
        if !leftover.is_empty() {
            log::debug!(
                "peer closed in the middle of a frame ({} bytes unused)",
                leftover.len()
            );
        }
    }

    /// Whether `on_drained` produces anything. Only streaming protocols say so; for the
    /// others the loop skips the call on every message.
    const STREAMS: bool = false;

    /// The connection's queued output is at or below the low-water mark (64 KiB): a
    /// streaming protocol (file transfer) queues its next chunk here. The loop calls it
    /// again while it produces output and the queue stays low (up to a per-turn budget),
    /// and again on later write events; it must produce nothing once it has nothing left.
    /// It is also called after the peer's FIN or a `Flow::Close`, so that a response in
    /// progress is completed before the connection closes.
    fn on_drained(&mut self, _session: &mut Self::Session, _out: &mut Output<'_>) -> Flow {
        Flow::Continue
    }

    /// A deadline passed; whatever is sent here is flushed before the connection closes.
    fn on_timeout(&mut self, _session: &mut Self::Session, _kind: Timeout, _out: &mut Output<'_>) {}

    /// The connection is gone (the peer left, an error, or a timeout).
    fn on_close(&mut self, _session: Self::Session, _peer: &Peer, _out: &mut Output<'_>) {}

    /// Bytes written (best effort) to a connection refused because the server is full.
    fn refusal(&self) -> Option<&[u8]> {
        None
    }

    /// The longest incomplete frame kept for a connection; past it the connection is
    /// closed. A protocol with its own, clearer limit checks it first.
    fn max_pending_input(&self) -> usize {
        64 * 1024
    }
}

/// Shows bytes the way Python's `repr(bytes)` does, as the tutorial's transcripts print them
/// (with double quotes): `b"Message 1 from client."`.
pub struct ByteStr<'a>(pub &'a [u8]);

impl fmt::Display for ByteStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("b\"")?;
        for &b in self.0 {
            match b {
                b'"' => f.write_str("\\\"")?,
                b'\\' => f.write_str("\\\\")?,
                b'\n' => f.write_str("\\n")?,
                b'\r' => f.write_str("\\r")?,
                b'\t' => f.write_str("\\t")?,
                0x20..=0x7e => write!(f, "{}", b as char)?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes print as the tutorial's transcripts show them.
    #[test]
    fn bytestr_escapes_like_python() {
        assert_eq!(ByteStr(b"Message 1").to_string(), "b\"Message 1\"");
        assert_eq!(
            ByteStr(b"a\"b\\\n\x00\xff").to_string(),
            "b\"a\\\"b\\\\\\n\\x00\\xff\""
        );
    }
}
