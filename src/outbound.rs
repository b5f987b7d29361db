//! Bytes on their way to a peer. [`Reply`] is what a protocol produces during one call (owned
//! bytes with shared chunks spliced in), written straight from the loop's scratch buffer;
//! [`Outbound`] is what a connection still owes after that write: a queue of owned and
//! shared (`Arc<[u8]>`) chunks written with one `writev`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// How many chunks one `writev` takes at most (Linux allows 1024; more buys nothing).
const MAX_IOVECS: usize = 64;

/// An owned chunk is extended in place while smaller than this, so many small replies
/// queued in one turn become one chunk rather than many.
const COALESCE_LIMIT: usize = 64 * 1024;

/// What a protocol produced for its own peer during one call: owned bytes, with shared
/// chunks (a large page, a broadcast line) spliced in at given offsets rather than copied.
/// The loop reuses one per turn, so producing a reply allocates nothing once warm.
#[derive(Debug, Default)]
pub struct Reply {
    bytes: Vec<u8>,
    /// Shared chunks and the offset in `bytes` before which each one goes, in order.
    shared: Vec<(usize, Arc<[u8]>)>,
    shared_len: usize,
}

impl Reply {
    pub fn with_capacity(bytes: usize) -> Reply {
        Reply {
            bytes: Vec::with_capacity(bytes),
            ..Reply::default()
        }
    }

    /// Bytes produced, owned and shared.
    #[inline]
    pub fn len(&self) -> usize {
        self.bytes.len() + self.shared_len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.shared.is_empty()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Appends a shared chunk without copying it.
    pub fn push_shared(&mut self, chunk: Arc<[u8]>) {
        if !chunk.is_empty() {
            self.shared_len += chunk.len();
            self.shared.push((self.bytes.len(), chunk));
        }
    }

    /// The owned bytes, for encoders that write in place. They may append, or truncate
    /// what they appended themselves; the shared chunks stay where they were spliced in.
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    #[inline]
    pub fn clear(&mut self) {
        self.bytes.clear();
        if !self.shared.is_empty() {
            self.shared.clear();
            self.shared_len = 0;
        }
    }

    /// The whole reply as one byte string (for tests and logs; copies).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len());
        self.for_each_piece(|piece| {
            all.extend_from_slice(piece.bytes());
            true
        });
        all
    }

    /// Calls `f` on each piece in order while it returns true.
    fn for_each_piece<'a>(&'a self, mut f: impl FnMut(Piece<'a>) -> bool) {
        let mut from = 0;
        for (at, chunk) in &self.shared {
            // A truncation by `bytes_mut` may leave an offset past the end: clamp it.
            let at = (*at).min(self.bytes.len()).max(from);
            if at > from && !f(Piece::Owned(&self.bytes[from..at])) {
                return;
            }
            from = at;
            if !f(Piece::Shared(chunk)) {
                return;
            }
        }
        if from < self.bytes.len() {
            f(Piece::Owned(&self.bytes[from..]));
        }
    }

    /// Writes as much as `out` takes in one `write`/`writev`. Returns the bytes written and
    /// whether that was everything offered (a reply of more pieces than one `writev` takes
    /// is offered in part).
    #[inline]
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<(usize, bool)> {
        if self.shared.is_empty() {
            let written = out.write(&self.bytes)?;
            return Ok((written, written == self.bytes.len()));
        }
        self.write_pieces_to(out)
    }

    #[cold]
    fn write_pieces_to<W: Write>(&self, out: &mut W) -> io::Result<(usize, bool)> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        let mut offered = 0;
        self.for_each_piece(|piece| {
            slices[count] = IoSlice::new(piece.bytes());
            offered += piece.bytes().len();
            count += 1;
            count < MAX_IOVECS
        });
        let written = out.write_vectored(&slices[..count])?;
        Ok((written, written == offered))
    }
}

#[derive(Clone, Copy)]
enum Piece<'a> {
    Owned(&'a [u8]),
    Shared(&'a Arc<[u8]>),
}

impl<'a> Piece<'a> {
    fn bytes(self) -> &'a [u8] {
        match self {
            Piece::Owned(bytes) => bytes,
            Piece::Shared(chunk) => chunk,
        }
    }
}

#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s) => s,
        }
    }
}

/// Bytes owed to the peer, in order. Empty (and holding no heap memory) when idle.
#[derive(Debug, Default)]
pub struct Outbound {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_written: usize,
    len: usize,
}

impl Outbound {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a copy of `bytes`.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        if let Some(Chunk::Owned(last)) = self.chunks.back_mut() {
            if last.len() + bytes.len() <= COALESCE_LIMIT {
                last.extend_from_slice(bytes);
                return;
            }
        }
        self.chunks.push_back(Chunk::Owned(bytes.to_vec()));
    }

    /// Queues a shared chunk without copying it.
    pub fn push_shared(&mut self, bytes: Arc<[u8]>) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.chunks.push_back(Chunk::Shared(bytes));
    }

    /// Queues what `reply` holds past its first `skip` bytes (those already written):
    /// owned bytes copied, shared chunks by reference.
    pub fn push_reply(&mut self, reply: &Reply, mut skip: usize) {
        reply.for_each_piece(|piece| {
            let bytes = piece.bytes();
            if skip >= bytes.len() {
                skip -= bytes.len();
                return true;
            }
            match piece {
                Piece::Owned(owned) => self.push_bytes(&owned[skip..]),
                Piece::Shared(chunk) => {
                    let was_empty = self.is_empty();
                    self.push_shared(chunk.clone());
                    if skip > 0 {
                        // Only the first piece can be partly written, and it was queued
                        // on an empty queue: it is the front chunk.
                        debug_assert!(was_empty);
                        self.front_written = skip;
                        self.len -= skip;
                    }
                }
            }
            skip = 0;
            true
        });
    }

    /// Writes as much as the socket takes in one `write`/`writev`. Returns the bytes
    /// written and whether that was everything offered: a short write means the socket
    /// buffer is full, so trying again before the next WRITABLE event would only get EAGAIN.
    pub fn write_to<W: Write>(&mut self, out: &mut W) -> io::Result<(usize, bool)> {
        let (written, offered) = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let mut offered = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                let bytes = chunk.bytes();
                let bytes = if i == 0 {
                    &bytes[self.front_written..]
                } else {
                    bytes
                };
                offered += bytes.len();
                slices[i] = IoSlice::new(bytes);
                count += 1;
            }
            let written = if count == 1 {
                out.write(&slices[0])?
            } else {
                out.write_vectored(&slices[..count])?
            };
            (written, offered)
        };
        self.consume(written);
        Ok((written, written == offered))
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.front_written;
            if n >= left {
                n -= left;
                self.chunks.pop_front();
                self.front_written = 0;
            } else {
                self.front_written += n;
                n = 0;
            }
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            // An idle connection should hold no heap memory for its queue.
            self.chunks = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `limit` bytes per call, like a nearly full socket.
    struct Trickle {
        got: Vec<u8>,
        limit: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.limit);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Owned and shared chunks come out in order, whatever the write sizes.
    #[test]
    fn partial_writes_keep_order() {
        for limit in [1, 3, 7, 100] {
            let mut q = Outbound::default();
            q.push_bytes(b"hello ");
            q.push_shared(Arc::from(&b"shared "[..]));
            q.push_bytes(b"world");
            assert_eq!(q.len(), 18);
            let mut w = Trickle {
                got: Vec::new(),
                limit,
            };
            while !q.is_empty() {
                q.write_to(&mut w).unwrap();
            }
            assert_eq!(w.got, b"hello shared world");
            assert_eq!(q.chunks.capacity(), 0, "drained queue frees its memory");
        }
    }

    /// Small owned pushes coalesce into one chunk.
    #[test]
    fn small_pushes_coalesce() {
        let mut q = Outbound::default();
        for _ in 0..100 {
            q.push_bytes(b"0123456789");
        }
        assert_eq!(q.chunks.len(), 1);
        assert_eq!(q.len(), 1000);
    }

    fn mixed_reply() -> (Reply, Arc<[u8]>) {
        let body: Arc<[u8]> = Arc::from(&b"<big shared body>"[..]);
        let mut reply = Reply::default();
        reply.push(b"head1 ");
        reply.push_shared(body.clone());
        reply.push(b" head2 ");
        reply.push_shared(body.clone());
        reply.push_shared(Arc::from(&b"!"[..]));
        (reply, body)
    }

    /// A reply written partly, at every point, then queued and drained, comes out whole
    /// and in order; shared chunks are queued by reference, not copied.
    #[test]
    fn reply_written_in_part_then_queued() {
        let (reply, body) = mixed_reply();
        let whole = reply.to_vec();
        assert_eq!(
            whole,
            b"head1 <big shared body> head2 <big shared body>!".to_vec()
        );
        assert_eq!(reply.len(), whole.len());
        for limit in 0..=whole.len() {
            let mut w = Trickle {
                got: Vec::new(),
                limit,
            };
            let (written, _) = reply.write_to(&mut w).unwrap();
            let mut q = Outbound::default();
            q.push_reply(&reply, written);
            assert_eq!(q.len(), whole.len() - written, "limit {limit}");
            w.limit = 5;
            while !q.is_empty() {
                q.write_to(&mut w).unwrap();
            }
            assert_eq!(w.got, whole, "limit {limit}");
        }
        let mut q = Outbound::default();
        q.push_reply(&reply, 0);
        assert_eq!(
            Arc::strong_count(&body),
            5,
            "two in the reply, two queued, one here"
        );
    }

    /// Truncating the owned bytes behind a splice point keeps the output well formed.
    #[test]
    fn truncated_reply_keeps_shared_chunks_in_place() {
        let mut reply = Reply::default();
        reply.push(b"abc");
        reply.push_shared(Arc::from(&b"S"[..]));
        reply.bytes_mut().truncate(1);
        assert_eq!(reply.to_vec(), b"aS");
        reply.clear();
        assert!(reply.is_empty());
        assert_eq!(reply.len(), 0);
    }
}
