//! Protocols: small state machines that turn a connection's inbound bytes into outbound
//! bytes (their own, or for chat other connections'). They never touch a socket, so each
//! is tested by feeding it byte slices.

pub mod app;
pub mod chat;
pub mod echo;
pub mod file;
pub mod http;
pub mod line;
pub mod resp;

use std::fmt;
use std::fs::File;
use std::sync::Arc;

use crate::net::Peer;
use crate::outbound::{Outbound, Reply};

/// What the connection does after the protocol has looked at its input: the effects a
/// protocol asks of the loop, which carries them out in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Present no more input until this connection's outbound queue is at or below the
    /// low-water mark and holds no file: the loop stops reading it, keeps what was not consumed (complete
    /// frames included), and presents that again, from a later turn, once the queue has
    /// drained. How a protocol whose input makes output (replies, fan-out) keeps that
    /// output within the caps. A protocol that pauses must have made progress: a pause
    /// with nothing consumed, produced or streaming would only be presented again.
    Pause,
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

/// The audience of a broadcast: the members of one named group (a chat room). Cheap to
/// clone (the name is shared) and to compare: a hash first, then the name's pointer, and
/// only then its bytes, so a member test is a few instructions and two groups that
/// merely share a hash are still told apart.
#[derive(Clone)]
pub struct Group {
    hash: u64,
    name: Arc<str>,
}

impl Group {
    pub fn new(name: &str) -> Group {
        Group {
            hash: fnv1a(name.as_bytes()),
            name: Arc::from(name),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PartialEq for Group {
    #[inline]
    fn eq(&self, other: &Group) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.name, &other.name) || self.name == other.name)
    }
}

impl Eq for Group {}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Group({:?})", &*self.name)
    }
}

/// 64-bit FNV-1a: only a fast reject before the name is compared, so its weakness against
/// chosen collisions costs a colliding member a `memcmp`, never a wrong delivery.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How a connection takes a broadcast to a group it was asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receive {
    /// Not a member: it gets nothing.
    No,
    /// The shared chunks as they are.
    Bytes,
    /// Each chunk as [`Protocol::frame`] makes it (a WebSocket frame): made once per chunk
    /// and shared by every member that takes it so.
    Framed,
}

/// Broadcasts in order, each chunk shared (`Arc<[u8]>`), grouped in runs of consecutive
/// chunks for the same group so that delivery walks the members once per run, not once
/// per chunk.
#[derive(Debug, Default)]
pub struct Broadcasts {
    chunks: Vec<Arc<[u8]>>,
    /// Each run's group and the end of its chunks in `chunks`.
    runs: Vec<(Group, usize)>,
    /// Bytes in `chunks`.
    len: usize,
}

impl Broadcasts {
    /// Appends `chunk` for the members of `group`.
    pub fn push(&mut self, group: &Group, chunk: Arc<[u8]>) {
        self.len += chunk.len();
        self.chunks.push(chunk);
        let end = self.chunks.len();
        match self.runs.last_mut() {
            Some((last, last_end)) if last == group => *last_end = end,
            _ => self.runs.push((group.clone(), end)),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes broadcast.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.runs.clear();
        self.len = 0;
    }

    /// The runs in order: a group and its consecutive chunks.
    pub fn runs(&self) -> impl Iterator<Item = (&Group, &[Arc<[u8]>])> {
        let mut start = 0;
        self.runs.iter().map(move |(group, end)| {
            let chunks = &self.chunks[start..*end];
            start = *end;
            (group, chunks)
        })
    }

    /// Every chunk in order with its group.
    pub fn iter(&self) -> impl Iterator<Item = (&Group, &Arc<[u8]>)> {
        self.runs()
            .flat_map(|(group, chunks)| chunks.iter().map(move |chunk| (group, chunk)))
    }

    /// Moves every broadcast of `other` to the end of this one.
    pub fn append(&mut self, other: &mut Broadcasts) {
        for (group, chunk) in other.iter() {
            self.push(group, chunk.clone());
        }
        other.clear();
    }
}

/// What protocols produce during one connection's turn: its reply, the broadcasts for the
/// other connections, and how many requests were served. The loop keeps one and reuses
/// it every turn; tests keep one per connection and read it.
#[derive(Debug, Default)]
pub struct Produced {
    pub reply: Reply,
    pub broadcast: Broadcasts,
    pub requests: u64,
}

impl Produced {
    /// An output without a cap: `is_full` is never true (for tests and one-off calls).
    pub fn output(&mut self) -> Output<'_> {
        self.output_for(0, usize::MAX)
    }

    /// An output for a connection that already owes `queued` bytes in memory (and no
    /// file), full at `high_water`.
    pub fn output_for(&mut self, queued: usize, high_water: usize) -> Output<'_> {
        Output {
            produced: self,
            queued,
            file_queued: false,
            high_water,
        }
    }

    /// An output for a connection whose queue is `queue`, full at `high_water`.
    #[inline(always)]
    pub fn output_for_queue(&mut self, queue: &Outbound, high_water: usize) -> Output<'_> {
        Output {
            produced: self,
            queued: queue.len(),
            file_queued: queue.has_file(),
            high_water,
        }
    }

    /// Forgets the broadcasts (after they were delivered).
    pub fn clear_broadcast(&mut self) {
        self.broadcast.clear();
    }
}

/// Where a protocol puts what it produces during one call, and how full the connection's
/// queue is, so that a protocol whose input makes output can pause before passing the cap.
pub struct Output<'a> {
    produced: &'a mut Produced,
    /// Bytes in memory this connection already owed before this turn's reply.
    queued: usize,
    /// A file chunk was already queued before this turn's reply.
    file_queued: bool,
    high_water: usize,
}

impl Output<'_> {
    /// Queues bytes for this connection's peer.
    pub fn send(&mut self, bytes: &[u8]) {
        self.produced.reply.push(bytes);
    }

    /// Queues a shared chunk for this connection's peer without copying it.
    pub fn send_shared(&mut self, bytes: Arc<[u8]>) {
        self.produced.reply.push_shared(bytes);
    }

    /// Queues `len` bytes of `file` from `offset`, sent from the file's descriptor to the
    /// socket by the kernel (sendfile), never through this process's memory: they do not
    /// count against the cap. A connection should have one file queued at a time (see
    /// [`file_pending`](Self::file_pending)): a streaming protocol is asked for more once
    /// it is gone.
    pub fn send_file(&mut self, file: Arc<File>, offset: u64, len: u64) {
        self.produced.reply.push_file(file, offset, len);
    }

    /// Whether a file is still to be sent on this connection (queued before, or in this
    /// reply): a protocol then answers nothing that needs another file, and pauses.
    pub fn file_pending(&self) -> bool {
        self.file_queued || self.produced.reply.has_file()
    }

    /// The reply's owned bytes, for encoders that write in place.
    pub fn reply_buf(&mut self) -> &mut Vec<u8> {
        self.produced.reply.bytes_mut()
    }

    /// Queues `bytes` for the other members of `group` (the connections for which
    /// [`Protocol::receives`] says so), serialised once and shared; a relay also takes
    /// them to the members on other loops and servers.
    pub fn broadcast(&mut self, group: &Group, bytes: Arc<[u8]>) {
        self.produced.broadcast.push(group, bytes);
    }

    /// Bytes broadcast so far this turn, for protocols that bound their fan-out per turn.
    pub fn broadcast_len(&self) -> usize {
        self.produced.broadcast.len()
    }

    /// Counts one request served, for the statistics.
    pub fn count_request(&mut self) {
        self.produced.requests += 1;
    }

    /// Bytes in memory this connection owes its peer, this turn's reply included.
    pub fn owed(&self) -> usize {
        self.queued + self.produced.reply.len()
    }

    /// Whether the connection owes its peer as much as its cap: a protocol should answer
    /// no more requests now and return [`Flow::Pause`].
    pub fn is_full(&self) -> bool {
        self.owed() >= self.high_water
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
    /// Return [`Flow::Pause`] instead of consuming more when `out.is_full()`.
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

    /// The connection's queued output is at or below the low-water mark: a streaming
    /// protocol (file transfer) queues its next chunk here. The loop calls it again while
    /// it produces output and the queue stays low (up to a per-turn budget), and again on
    /// later write events; it must produce nothing once it has nothing left. It is also
    /// called after the peer's FIN or a `Flow::Close`, so that a response in progress is
    /// completed before the connection closes. `Flow::Pause` here means nothing more.
    fn on_drained(&mut self, _session: &mut Self::Session, _out: &mut Output<'_>) -> Flow {
        Flow::Continue
    }

    /// Whether the session is inside a frame it consumed in part (a request body being
    /// skipped, content being parsed as it arrives). Unconsumed bytes already count; this
    /// lets the frame timeout also cover input a protocol consumes as it comes.
    fn mid_frame(&self, _session: &Self::Session) -> bool {
        false
    }

    /// A deadline passed; whatever is sent here is flushed before the connection closes.
    fn on_timeout(&mut self, _session: &mut Self::Session, _kind: Timeout, _out: &mut Output<'_>) {}

    /// The connection is gone (the peer left, an error, or a timeout).
    fn on_close(&mut self, _session: Self::Session, _peer: &Peer, _out: &mut Output<'_>) {}

    /// Whether this connection takes broadcasts to `group`, and how. Asked of every
    /// connection of the loop but the sender for each run of broadcasts, so it should be a
    /// field or two compared. Only protocols that broadcast need to say.
    #[inline(always)]
    fn receives(&self, _session: &Self::Session, _group: &Group) -> Receive {
        Receive::Bytes
    }

    /// A broadcast chunk as a member that answered [`Receive::Framed`] takes it.
    fn frame(&self, chunk: &[u8]) -> Arc<[u8]> {
        Arc::from(chunk)
    }

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

    /// Consecutive broadcasts to one group form one run; another group starts the next.
    #[test]
    fn broadcasts_run_by_group() {
        let (lobby, other) = (Group::new("lobby"), Group::new("other"));
        let mut all = Broadcasts::default();
        for (group, text) in [(&lobby, "a"), (&lobby, "bc"), (&other, "d"), (&lobby, "e")] {
            all.push(group, Arc::from(text.as_bytes()));
        }
        let runs: Vec<(String, usize)> = all
            .runs()
            .map(|(g, chunks)| (g.name().to_string(), chunks.len()))
            .collect();
        assert_eq!(
            runs,
            [
                ("lobby".into(), 2),
                ("other".into(), 1),
                ("lobby".into(), 1)
            ]
        );
        assert_eq!(all.len(), 5);
        assert_eq!(all.iter().count(), 4);
        // Equal names are the same group, whoever made them.
        assert_eq!(Group::new("lobby"), lobby);
        assert_ne!(Group::new("lobby2"), lobby);
    }

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

/// Helpers for the protocols' tests.
#[cfg(test)]
pub(crate) mod testing {
    use proptest::sample::Index;

    /// `data` cut at the given points (placed anywhere in it, in any order) into pieces,
    /// as a peer's bytes may arrive.
    pub fn pieces<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::with_capacity(cuts.len() + 1);
        let mut start = 0;
        for cut in cuts.into_iter().chain([data.len()]) {
            pieces.push(&data[start..cut]);
            start = cut;
        }
        pieces
    }
}
