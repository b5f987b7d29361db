//! Bytes on their way to a peer. [`Reply`] is what a protocol produces during one call (owned
//! bytes with shared chunks and at most a file range spliced in), written straight from the
//! loop's scratch buffer; [`Outbound`] is what a connection still owes after that write: a
//! queue of owned, shared (`Arc<[u8]>`) and file chunks. Chunks in memory go out with one
//! `writev`; a file chunk goes from the file's descriptor to the socket with sendfile(2),
//! never through user space, so it costs no memory while it waits.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::net::{AnyStream, Stream};

/// How many chunks one `writev` takes at most (Linux allows 1024; more buys nothing).
const MAX_IOVECS: usize = 64;

/// An owned chunk is extended in place while smaller than this, so many small replies
/// queued in one turn become one chunk rather than many.
const COALESCE_LIMIT: usize = 64 * 1024;

/// File bytes one flush sends at most, like nginx's `sendfile_max_chunk` (2m): on loopback
/// a client takes a file as fast as it is sent, so without a cap one flush would send all
/// of it while every other connection waits. At 2 GB/s this is a millisecond of the loop.
pub const SENDFILE_MAX_CHUNK: usize = 2 * 1024 * 1024;

/// Bytes read and written per call where sendfile(2) cannot be used (a sink that is not a
/// socket, a file system without it): on the stack, so the fallback holds no memory.
const FALLBACK_CHUNK: usize = 16 * 1024;

/// A range of an open file to send: `len` bytes from `offset`. Shared (`Arc`) so that a
/// reply and the queue it is copied into can both name it without a second descriptor.
#[derive(Debug, Clone)]
pub struct FileChunk {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
}

impl FileChunk {
    /// Reads the whole range (for tests and logs; copies). A file that has shrunk gives
    /// what it still has.
    fn read_all(&self) -> Vec<u8> {
        let mut all = vec![0; usize::try_from(self.len).unwrap_or(usize::MAX)];
        let mut filled = 0;
        while filled < all.len() {
            match self
                .file
                .read_at(&mut all[filled..], self.offset + filled as u64)
            {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        all.truncate(filled);
        all
    }
}

/// Where queued output goes. A socket sends file chunks with sendfile(2); any other
/// writer (a test's) gets them read and written, as does a socket where sendfile fails
/// with `Unsupported`.
pub trait Sink: Write {
    /// Sends up to `len` bytes of `file` from `offset` without copying them through user
    /// space; returns how many were taken (0 at the end of the file).
    fn send_file(&mut self, _file: &File, _offset: u64, _len: usize) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Like `write_vectored`, for bytes that a file chunk follows at once: a socket may
    /// hold them back (MSG_MORE) so the two leave in one segment.
    fn write_vectored_before_file(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored(bufs)
    }
}

impl Sink for Vec<u8> {}

impl Sink for Stream {
    /// sendfile(2): the kernel moves the file's pages to the socket; the socket's own
    /// O_NONBLOCK makes a full send buffer EAGAIN (`WouldBlock`), as for a write.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: both descriptors are open for the call; `off` outlives it.
        let sent = unsafe { libc::sendfile(self.as_raw_fd(), file.as_raw_fd(), &mut off, len) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The file cannot be mapped (some file systems) or the socket type refuses:
            // the caller reads and writes instead.
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                Err(io::ErrorKind::Unsupported.into())
            }
            _ => Err(e),
        }
    }

    /// On TCP, MSG_MORE holds a response's header back until the file's first bytes join
    /// it, so the two leave in one segment instead of a tiny one and then the rest.
    fn write_vectored_before_file(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let Stream::Tcp(tcp) = self else {
            return self.write_vectored(bufs);
        };
        // SAFETY: msghdr is plain data; all-zero is an empty message.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is guaranteed ABI-compatible with iovec on Unix.
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len() as _;
        // SAFETY: the socket is open and `msg` names `bufs`, which outlive the call.
        let sent =
            unsafe { libc::sendmsg(tcp.as_raw_fd(), &msg, libc::MSG_MORE | libc::MSG_NOSIGNAL) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Under TLS the file's bytes must pass through the encryption: read and written.
impl Sink for AnyStream {
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        match self {
            AnyStream::Plain(s) => s.send_file(file, offset, len),
            AnyStream::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn write_vectored_before_file(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            AnyStream::Plain(s) => s.write_vectored_before_file(bufs),
            AnyStream::Tls(_) => self.write_vectored(bufs),
        }
    }
}

/// Sends up to `len` bytes of `chunk` (sendfile, or read and write where the sink cannot).
/// A file that ends before the chunk does is an error: the peer was promised its length.
fn send_file_chunk<S: Sink>(out: &mut S, chunk: &FileChunk, len: usize) -> io::Result<usize> {
    let sent = match out.send_file(&chunk.file, chunk.offset, len) {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => copy_file_range_to(out, chunk, len)?,
        other => other?,
    };
    if sent == 0 && len > 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file shrank: {} bytes short", chunk.len),
        ));
    }
    Ok(sent)
}

/// The read-and-write path (TLS, where the bytes must pass through the encryption): up
/// to `len` bytes in pieces of `FALLBACK_CHUNK` read into a buffer on the stack, until
/// the sink takes less than a piece (full) or `len` is sent, so that a short count means
/// the socket is full as it does for sendfile. Memory stays one piece plus what the sink
/// itself buffers (rustls: its bounded record queue), whatever the file's size.
#[cold]
fn copy_file_range_to<S: Sink>(out: &mut S, chunk: &FileChunk, len: usize) -> io::Result<usize> {
    let mut buf = [0u8; FALLBACK_CHUNK];
    let mut sent = 0;
    while sent < len {
        let want = (len - sent).min(FALLBACK_CHUNK);
        // Positional reads: what the socket does not take is read again next time.
        let got = chunk
            .file
            .read_at(&mut buf[..want], chunk.offset + sent as u64)?;
        if got == 0 {
            break;
        }
        match out.write(&buf[..got]) {
            Ok(n) => {
                sent += n;
                if n < got {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && sent > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// A piece spliced into a reply's owned bytes.
#[derive(Debug)]
enum Spliced {
    Shared(Arc<[u8]>),
    File(FileChunk),
}

/// What a protocol produced for its own peer during one call: owned bytes, with shared
/// chunks (a large page, a broadcast line) and file ranges spliced in at given offsets
/// rather than copied. The loop reuses one per turn, so producing a reply allocates
/// nothing once warm.
#[derive(Debug, Default)]
pub struct Reply {
    bytes: Vec<u8>,
    /// Spliced pieces and the offset in `bytes` before which each one goes, in order.
    spliced: Vec<(usize, Spliced)>,
    /// Bytes of the shared chunks (in memory; file ranges are not).
    shared_len: usize,
    /// Whether a file range is spliced in.
    has_file: bool,
}

impl Reply {
    pub fn with_capacity(bytes: usize) -> Reply {
        Reply {
            bytes: Vec::with_capacity(bytes),
            ..Reply::default()
        }
    }

    /// Bytes produced that are held in memory, owned and shared (a file range is not).
    #[inline]
    pub fn len(&self) -> usize {
        self.bytes.len() + self.shared_len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.spliced.is_empty()
    }

    /// Whether a file range is spliced in.
    pub fn has_file(&self) -> bool {
        self.has_file
    }

    /// Whether anything is spliced in (shared chunks or a file range): then writing it may
    /// take more than one call.
    #[inline]
    pub fn has_spliced(&self) -> bool {
        !self.spliced.is_empty()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Appends a shared chunk without copying it.
    pub fn push_shared(&mut self, chunk: Arc<[u8]>) {
        if !chunk.is_empty() {
            self.shared_len += chunk.len();
            self.spliced
                .push((self.bytes.len(), Spliced::Shared(chunk)));
        }
    }

    /// Appends `len` bytes of `file` from `offset`, to be sent from the file by the kernel.
    pub fn push_file(&mut self, file: Arc<File>, offset: u64, len: u64) {
        if len > 0 {
            self.has_file = true;
            let chunk = FileChunk { file, offset, len };
            self.spliced.push((self.bytes.len(), Spliced::File(chunk)));
        }
    }

    /// The owned bytes, for encoders that write in place. They may append, or truncate
    /// what they appended themselves; the spliced pieces stay where they were put.
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    #[inline]
    pub fn clear(&mut self) {
        self.bytes.clear();
        if !self.spliced.is_empty() {
            self.spliced.clear();
            self.shared_len = 0;
            self.has_file = false;
        }
    }

    /// The whole reply as one byte string, file ranges read (for tests and logs; copies).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len());
        self.for_each_piece(|piece| {
            match piece {
                Piece::File(chunk) => all.extend_from_slice(&chunk.read_all()),
                piece => all.extend_from_slice(piece.bytes()),
            }
            true
        });
        all
    }

    /// Calls `f` on each piece in order while it returns true.
    fn for_each_piece<'a>(&'a self, mut f: impl FnMut(Piece<'a>) -> bool) {
        let mut from = 0;
        for (at, spliced) in &self.spliced {
            // A truncation by `bytes_mut` may leave an offset past the end: clamp it.
            let at = (*at).min(self.bytes.len()).max(from);
            if at > from && !f(Piece::Owned(&self.bytes[from..at])) {
                return;
            }
            from = at;
            let piece = match spliced {
                Spliced::Shared(chunk) => Piece::Shared(chunk),
                Spliced::File(chunk) => Piece::File(chunk),
            };
            if !f(piece) {
                return;
            }
        }
        if from < self.bytes.len() {
            f(Piece::Owned(&self.bytes[from..]));
        }
    }

    /// Writes as much as `out` takes in one `write`/`writev` of the pieces in memory.
    /// Returns the bytes written and whether that was everything offered: a reply of more
    /// pieces than one `writev` takes, or with a file range, is offered up to there, and
    /// [`is_written`](Self::is_written) says whether anything is left.
    #[inline]
    pub fn write_to<W: Sink>(&self, out: &mut W) -> io::Result<(usize, bool)> {
        if self.spliced.is_empty() {
            let written = out.write(&self.bytes)?;
            return Ok((written, written == self.bytes.len()));
        }
        self.write_pieces_to(out)
    }

    /// Whether `written` bytes are the whole reply.
    pub fn is_written(&self, written: usize) -> bool {
        !self.has_file && written == self.len()
    }

    #[cold]
    fn write_pieces_to<W: Sink>(&self, out: &mut W) -> io::Result<(usize, bool)> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        let mut offered = 0;
        let mut file_follows = false;
        self.for_each_piece(|piece| {
            if let Piece::File(_) = piece {
                file_follows = true;
                return false;
            }
            slices[count] = IoSlice::new(piece.bytes());
            offered += piece.bytes().len();
            count += 1;
            count < MAX_IOVECS
        });
        let written = match (count, file_follows) {
            // The file comes first: the queue sends it.
            (0, _) => 0,
            (_, true) => out.write_vectored_before_file(&slices[..count])?,
            (_, false) => out.write_vectored(&slices[..count])?,
        };
        Ok((written, written == offered))
    }
}

#[derive(Clone, Copy)]
enum Piece<'a> {
    Owned(&'a [u8]),
    Shared(&'a Arc<[u8]>),
    File(&'a FileChunk),
}

impl<'a> Piece<'a> {
    /// The bytes of a piece in memory (none for a file range).
    fn bytes(self) -> &'a [u8] {
        match self {
            Piece::Owned(bytes) => bytes,
            Piece::Shared(chunk) => chunk,
            Piece::File(_) => &[],
        }
    }
}

#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    File(FileChunk),
}

impl Chunk {
    /// The bytes of a chunk in memory (none for a file chunk).
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s) => s,
            Chunk::File(_) => &[],
        }
    }
}

/// Bytes owed to the peer, in order. Empty (and holding no heap memory) when idle.
#[derive(Debug, Default)]
pub struct Outbound {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written (a file chunk moves its own offset).
    front_written: usize,
    /// Bytes queued in memory; file chunks are not counted, they hold no memory.
    len: usize,
    /// File chunks queued.
    files: usize,
}

impl Outbound {
    /// Bytes queued in memory: what the caps and the low-water mark are about.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing at all is owed, in memory or from a file.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Whether a file chunk is queued: the connection still owes its bytes, though they
    /// take no memory.
    pub fn has_file(&self) -> bool {
        self.files > 0
    }

    /// Whether the next bytes to go out come from a file.
    pub fn front_is_file(&self) -> bool {
        matches!(self.chunks.front(), Some(Chunk::File(_)))
    }

    /// Whether the queue is drained to `low_water` bytes in memory, no file left in it:
    /// the point at which a paused connection is read again and a stream asked for more.
    pub fn drained_to(&self, low_water: usize) -> bool {
        self.len <= low_water && self.files == 0
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

    /// Queues a range of a file, sent from the file when its turn comes.
    pub fn push_file(&mut self, chunk: FileChunk) {
        if chunk.len == 0 {
            return;
        }
        self.files += 1;
        self.chunks.push_back(Chunk::File(chunk));
    }

    /// Queues what `reply` holds past its first `skip` bytes (those already written):
    /// owned bytes copied, shared chunks and file ranges by reference.
    pub fn push_reply(&mut self, reply: &Reply, mut skip: usize) {
        reply.for_each_piece(|piece| {
            let bytes = piece.bytes();
            if let Piece::File(chunk) = piece {
                // Never written from the reply: `skip` ends before it.
                debug_assert_eq!(skip, 0);
                self.push_file(chunk.clone());
                return true;
            }
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
                Piece::File(_) => unreachable!("handled above"),
            }
            skip = 0;
            true
        });
    }

    /// Writes as much as the socket takes in one call: the chunks in memory up to the first
    /// file chunk with one `write`/`writev`, or, when a file chunk is at the front, up to
    /// `file_budget` bytes of it with one sendfile. Returns the bytes written and whether
    /// that was everything offered: a short write means the socket buffer is full, so
    /// trying again before the next WRITABLE event would only get EAGAIN.
    pub fn write_to<W: Sink>(
        &mut self,
        out: &mut W,
        file_budget: usize,
    ) -> io::Result<(usize, bool)> {
        if let Some(Chunk::File(chunk)) = self.chunks.front() {
            let len = usize::try_from(chunk.len).map_or(file_budget, |left| left.min(file_budget));
            return self.write_file_to(out, len);
        }
        let (written, offered) = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let mut offered = 0;
            let mut file_follows = false;
            for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                if let Chunk::File(_) = chunk {
                    file_follows = true;
                    break;
                }
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
            let written = if file_follows {
                out.write_vectored_before_file(&slices[..count])?
            } else if count == 1 {
                out.write(&slices[0])?
            } else {
                out.write_vectored(&slices[..count])?
            };
            (written, offered)
        };
        self.consume(written);
        Ok((written, written == offered))
    }

    #[cold]
    fn write_file_to<W: Sink>(&mut self, out: &mut W, len: usize) -> io::Result<(usize, bool)> {
        let Some(Chunk::File(chunk)) = self.chunks.front_mut() else {
            return Ok((0, true));
        };
        let sent = send_file_chunk(out, chunk, len)?;
        chunk.offset += sent as u64;
        chunk.len -= sent as u64;
        if chunk.len == 0 {
            self.chunks.pop_front();
            self.files -= 1;
            self.free_if_empty();
        }
        Ok((sent, sent == len))
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
        self.free_if_empty();
    }

    fn free_if_empty(&mut self) {
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

    impl Sink for Trickle {}

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
                q.write_to(&mut w, usize::MAX).unwrap();
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
                q.write_to(&mut w, usize::MAX).unwrap();
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

    /// A file of `content` in the temp dir, removed when the test's handle drops.
    fn temp_file(name: &str, content: &[u8]) -> Arc<File> {
        let path =
            std::env::temp_dir().join(format!("multiconn-outbound-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        Arc::new(file)
    }

    /// A file range spliced between owned bytes comes out in order, read from the file,
    /// whatever the write sizes; it counts as owed but not as memory, and the queue holds
    /// one file chunk until its last byte is taken.
    #[test]
    fn file_ranges_go_out_in_order_and_take_no_memory() {
        let content: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let file = temp_file("order", &content);
        let mut reply = Reply::default();
        reply.push(b"head ");
        reply.push_file(file.clone(), 1000, 40_000);
        reply.push(b" tail");
        assert_eq!(reply.len(), 10, "memory only");
        assert!(reply.has_file());
        let expected = [&b"head "[..], &content[1000..41_000], b" tail"].concat();
        assert_eq!(reply.to_vec(), expected);
        for limit in [1, 3, 5, 4096, 100_000] {
            let mut w = Trickle {
                got: Vec::new(),
                limit,
            };
            let (written, _) = reply.write_to(&mut w).unwrap();
            assert!(written <= 5, "the file is not written from the reply");
            assert!(!reply.is_written(written));
            let mut q = Outbound::default();
            q.push_reply(&reply, written);
            assert_eq!(q.len(), 10 - written);
            assert!(q.has_file() && !q.drained_to(usize::MAX));
            while !q.is_empty() {
                q.write_to(&mut w, usize::MAX).unwrap();
            }
            assert_eq!(w.got, expected, "limit {limit}");
            assert!(!q.has_file() && q.drained_to(0));
            assert_eq!(q.chunks.capacity(), 0, "drained queue frees its memory");
        }
    }

    /// One call sends at most the budget of a file chunk.
    #[test]
    fn file_budget_bounds_one_call() {
        let content = vec![7u8; 100_000];
        let mut q = Outbound::default();
        q.push_file(FileChunk {
            file: temp_file("budget", &content),
            offset: 0,
            len: 100_000,
        });
        let mut sink = Vec::new();
        let (n, all) = q.write_to(&mut sink, 1000).unwrap();
        assert_eq!((n, all), (1000, true));
        while !q.is_empty() {
            q.write_to(&mut sink, 1000).unwrap();
        }
        assert_eq!(sink, content);
    }

    /// A file that ends before its chunk does is an error, not a silent short reply.
    #[test]
    fn a_shrunk_file_is_an_error() {
        let mut q = Outbound::default();
        q.push_file(FileChunk {
            file: temp_file("shrunk", b"abc"),
            offset: 0,
            len: 10,
        });
        let mut sink = Vec::new();
        assert_eq!(q.write_to(&mut sink, usize::MAX).unwrap(), (3, false));
        let e = q.write_to(&mut sink, usize::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(sink, b"abc");
    }
}
