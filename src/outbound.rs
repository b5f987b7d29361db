//! A connection's pending output: a queue of byte chunks written with one `writev`.
//! Chunks are either owned (this connection's replies) or shared (`Arc<[u8]>`, one
//! broadcast line serialised once and queued on many connections).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// How many chunks one `writev` takes at most (Linux allows 1024; more buys nothing).
const MAX_IOVECS: usize = 64;

/// An owned chunk is extended in place while smaller than this, so many small replies
/// queued in one turn become one chunk rather than many.
const COALESCE_LIMIT: usize = 64 * 1024;

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
}
