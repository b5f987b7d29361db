//! File transfer (seed 002's "FTP" server) on the event loop: a client sends a path relative
//! to the served root on one line; the server answers `OK <size>\n` and exactly that many
//! bytes, or `ERR <reason>\n`, then waits for the next request on the same connection.
//!
//! The root is a security boundary: `..`, absolute paths and symlinks leading outside are
//! refused, and files are opened with openat2(2) confined beneath the root, so a directory
//! swapped for a symlink between the check and the open cannot lead out either. Files are
//! streamed a chunk at a time from `on_drained`, as the peer takes them, so a file of any
//! size holds only a couple of chunks in memory.
//!
//! Pipelining: request lines that arrive while a file is streaming are consumed and queued
//! (up to `MAX_QUEUED_BYTES`, each costing its length plus `QUEUED_REQUEST_COST`); past
//! that the protocol pauses and the rest waits, unread, until the queue has room. Each is
//! answered, in order, when the responses before it are complete. A protocol error (a
//! request line that is too long) is answered in turn like a request, after which the
//! connection closes; input after it is discarded.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::line::{next_line, Line};
#[cfg(test)]
use super::Produced;
use super::{ByteStr, Flow, Output, Protocol};
use crate::net::Peer;

/// The longest request line, in bytes (line end excluded): Linux's PATH_MAX, so no path
/// that could be opened is refused, and a connection cannot buffer more for one request.
pub const MAX_REQUEST_LINE: usize = 4096;

/// Bytes of a file read per `on_drained` call. The loop asks for more once the queue is
/// at or below its low-water mark (64 KiB), so a transfer holds about two chunks at most.
pub const CHUNK: usize = 64 * 1024;

/// Request lines waiting behind a transfer, in bytes: pipelining is allowed, but a peer
/// cannot make the server hold more than this (plus one request line) per connection;
/// past it reading pauses until the queue has room.
pub const MAX_QUEUED_BYTES: usize = 16 * 1024;

/// What one queued request costs against `MAX_QUEUED_BYTES` besides its bytes: about what
/// it takes in memory (a boxed slice's allocation and its queue slot), so that empty lines,
/// which are requests too, cannot queue without bound.
pub const QUEUED_REQUEST_COST: usize = 64;

const TOO_LONG: &[u8] = b"ERR request line too long\n";

/// Why a request is refused; each has the `ERR` line the client receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An empty path or one containing a NUL byte.
    InvalidPath,
    /// `..` leading out, an absolute path, or a symlink leading outside the root.
    OutsideRoot,
    /// `..` that stays inside the root (`sub/../small`): refused all the same, since no
    /// request needs it, but the client is told what it did rather than "outside".
    ParentDir,
    NotFound,
    /// A directory, a FIFO, a device, a socket.
    NotRegularFile,
    PermissionDenied,
    /// Any other failure to open (a symlink loop, an I/O error).
    CannotOpen,
}

impl Refusal {
    /// The whole reply line.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Refusal::InvalidPath => b"ERR invalid path\n",
            Refusal::OutsideRoot => b"ERR outside the root\n",
            Refusal::ParentDir => b"ERR `..` is not accepted\n",
            Refusal::NotFound => b"ERR not found\n",
            Refusal::NotRegularFile => b"ERR not a regular file\n",
            Refusal::PermissionDenied => b"ERR permission denied\n",
            Refusal::CannotOpen => b"ERR cannot open\n",
        }
    }

    fn from_io(e: &io::Error) -> Refusal {
        match e.kind() {
            io::ErrorKind::NotFound => Refusal::NotFound,
            io::ErrorKind::PermissionDenied => Refusal::PermissionDenied,
            _ => match e.raw_os_error() {
                // `file/more`: a path through a regular file names nothing.
                Some(libc::ENOTDIR) => Refusal::NotFound,
                Some(libc::ENAMETOOLONG) => Refusal::InvalidPath,
                _ => Refusal::CannotOpen,
            },
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reply = self.reply();
        let reason = &reply[b"ERR ".len()..reply.len() - 1];
        f.write_str(&String::from_utf8_lossy(reason))
    }
}

/// Maps a request (a path relative to `root`) to the canonical path it names, refusing
/// anything that is not inside `root`. `root` must itself be canonical.
pub fn resolve(root: &Path, request: &[u8]) -> Result<PathBuf, Refusal> {
    if request.is_empty() || request.contains(&0) {
        return Err(Refusal::InvalidPath);
    }
    // Unix paths are bytes: a non-UTF-8 name is as valid as any other.
    let relative = Path::new(OsStr::from_bytes(request));
    // `..` is refused even where it would stay inside: there is no need for it. Depth
    // counts the names above it, lexically, to tell the client which of the two it was.
    let (mut depth, mut parent) = (0usize, false);
    for component in relative.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                parent = true;
                depth = depth.checked_sub(1).ok_or(Refusal::OutsideRoot)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(Refusal::OutsideRoot),
        }
    }
    if parent {
        return Err(Refusal::ParentDir);
    }
    // Canonicalising resolves every symlink; the prefix test then catches a link that
    // leads out (`Path::starts_with` compares whole components: `/srv2` is not in `/srv`).
    let canonical = root
        .join(relative)
        .canonicalize()
        .map_err(|e| Refusal::from_io(&e))?;
    if !canonical.starts_with(root) {
        return Err(Refusal::OutsideRoot);
    }
    Ok(canonical)
}

/// Opens `path`, which `resolve` returned, for streaming if it is a regular file; returns
/// it with its size. Where the kernel has openat2(2), the open itself is confined to the
/// root (`root_dir`), which closes the race between `resolve`'s check and the open.
fn open_regular(root: &Path, root_dir: &OwnedFd, path: &Path) -> Result<(File, u64), Refusal> {
    // Looking before opening keeps FIFOs and devices from being opened at all (opening a
    // FIFO blocks, opening some devices has effects).
    let meta = fs::metadata(path).map_err(|e| Refusal::from_io(&e))?;
    if !meta.is_file() {
        return Err(Refusal::NotRegularFile);
    }
    // Something may be swapped in after the look: O_NONBLOCK keeps a FIFO from blocking the
    // loop in open(2), O_NOFOLLOW refuses a symlink put in place of the file, and the fstat
    // of the open handle has the final word. A directory on the way replaced by a symlink
    // leading out is refused by openat2's RESOLVE_BENEATH.
    let relative = path.strip_prefix(root).map_err(|_| Refusal::OutsideRoot)?;
    let file = match open_beneath(root_dir, relative) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return Err(Refusal::OutsideRoot),
        // No openat2 (Linux before 5.6, or a seccomp filter): the path-based check stands.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| Refusal::from_io(&e))?
        }
        Err(e) => return Err(Refusal::from_io(&e)),
    };
    let meta = file.metadata().map_err(|e| Refusal::from_io(&e))?;
    if !meta.is_file() {
        return Err(Refusal::NotRegularFile);
    }
    Ok((file, meta.len()))
}

/// Opens `relative` for reading under the directory `dir`, with openat2(2) refusing (EXDEV)
/// any resolution that would leave it: `..`, an absolute symlink, a symlink leading out.
fn open_beneath(dir: &OwnedFd, relative: &Path) -> io::Result<File> {
    let path = CString::new(relative.as_os_str().as_bytes())?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `dir` is an open descriptor, `path` a NUL-terminated string and `how` an
    // open_how of the size passed; all outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}

/// Serves the files under one directory. Cheap to clone (one per worker loop).
#[derive(Debug, Clone)]
pub struct FileServer {
    /// Canonical, resolved once at start: every request is checked against it.
    root: Arc<Path>,
    /// The root, opened (O_PATH) once: files are opened beneath it.
    root_dir: Arc<OwnedFd>,
}

impl FileServer {
    /// Serves `root`, which must be a readable directory.
    pub fn new(root: &Path) -> io::Result<FileServer> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a directory",
            ));
        }
        // Listing it proves it is readable, so the operator hears now rather than per request.
        fs::read_dir(&root)?;
        let root_dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&root)?;
        Ok(FileServer {
            root: root.into(),
            root_dir: Arc::new(root_dir.into()),
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Produces the next piece of this connection's responses: one chunk of the file
    /// being sent, or the header (or `ERR`) of the next queued request, or the final
    /// protocol error. Produces nothing only when there is nothing left to do.
    fn pump(&self, session: &mut FileSession, out: &mut Output<'_>) -> Flow {
        if let Some(transfer) = &mut session.current {
            return match transfer.send_chunk(out.reply_buf()) {
                Ok(false) => Flow::Continue,
                Ok(true) => {
                    session.current = None;
                    Flow::Continue
                }
                Err(e) => {
                    // The size was promised in the header; all that is left is to close,
                    // so the client sees a short transfer rather than wrong bytes.
                    log::warn!(
                        "{}: reading {}: {e}; closing",
                        session.peer,
                        transfer.path.display()
                    );
                    // The loop may still call `on_drained` while the connection flushes:
                    // nothing queued may be answered after the broken response.
                    session.current = None;
                    session.queued.clear();
                    session.queued_bytes = 0;
                    session.final_reply = None;
                    session.refused = true;
                    Flow::Close
                }
            };
        }
        if !session.queued.is_empty() {
            // Requests answered without a transfer (an `ERR`, an empty file) are answered
            // in a run, up to a chunk's worth of replies, so that many small answers cost
            // one call, not one each; one that starts a transfer ends the run.
            let until = out.owed() + CHUNK;
            while let Some(request) = session.queued.pop_front() {
                session.queued_bytes -= request.len() + QUEUED_REQUEST_COST;
                self.start(session, &request, out);
                if session.current.is_some() || out.owed() >= until || out.is_full() {
                    break;
                }
            }
            return Flow::Continue;
        }
        match session.final_reply.take() {
            Some(reply) => {
                out.send(reply);
                Flow::Close
            }
            None => Flow::Continue,
        }
    }

    /// Answers one request: `OK <size>\n` (the bytes follow from `pump`), or `ERR`.
    fn start(&self, session: &mut FileSession, request: &[u8], out: &mut Output<'_>) {
        out.count_request();
        match resolve(&self.root, request).and_then(|path| {
            let (file, size) = open_regular(&self.root, &self.root_dir, &path)?;
            Ok((path, file, size))
        }) {
            Ok((path, file, size)) => {
                log::debug!(
                    "{}: sending {} ({size} bytes)",
                    session.peer,
                    path.display()
                );
                // Writing to a Vec cannot fail.
                let _ = writeln!(out.reply_buf(), "OK {size}");
                if size > 0 {
                    session.current = Some(Transfer {
                        file,
                        remaining: size,
                        path,
                    });
                }
            }
            Err(refusal) => {
                log::debug!("{}: {} refused: {refusal}", session.peer, ByteStr(request));
                out.send(refusal.reply());
            }
        }
    }
}

/// A file being sent.
#[derive(Debug)]
struct Transfer {
    file: File,
    /// Bytes promised in the header and not yet read.
    remaining: u64,
    /// For log lines.
    path: PathBuf,
}

impl Transfer {
    /// Appends the next chunk to `buf`, read straight into it. Returns whether the file is
    /// complete; an error if it ended early (it shrank) or could not be read.
    fn send_chunk(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        let want = usize::try_from(self.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let start = buf.len();
        buf.resize(start + want, 0);
        let mut filled = 0;
        let result = loop {
            if filled == want {
                break Ok(());
            }
            match self.file.read(&mut buf[start + filled..]) {
                Ok(0) => {
                    break Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "file shrank: {} bytes short",
                            self.remaining - filled as u64
                        ),
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        // What was read is part of the file, so it is sent even after an error.
        buf.truncate(start + filled);
        self.remaining -= filled as u64;
        result.map(|()| self.remaining == 0)
    }
}

/// One client's state: the transfer in progress and the requests waiting behind it.
#[derive(Debug)]
pub struct FileSession {
    peer: Peer,
    current: Option<Transfer>,
    queued: VecDeque<Box<[u8]>>,
    queued_bytes: usize,
    /// A protocol error to answer after everything queued before it; then the connection closes.
    final_reply: Option<&'static [u8]>,
    /// The peer broke the protocol: its further input is discarded.
    refused: bool,
}

impl FileSession {
    fn refuse(&mut self, reply: &'static [u8], why: fmt::Arguments<'_>) {
        log::info!(
            "{}: {why}; closing after the responses before it",
            self.peer
        );
        self.final_reply = Some(reply);
        self.refused = true;
    }
}

impl Protocol for FileServer {
    type Session = FileSession;

    fn open(&mut self, peer: &Peer, _out: &mut Output<'_>) -> FileSession {
        FileSession {
            peer: *peer,
            current: None,
            queued: VecDeque::new(),
            queued_bytes: 0,
            final_reply: None,
            refused: false,
        }
    }

    fn on_input(
        &mut self,
        session: &mut FileSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        if session.refused {
            return (input.len(), Flow::Continue);
        }
        let mut used = 0;
        let mut queue_full = false;
        loop {
            match next_line(&input[used..], MAX_REQUEST_LINE) {
                Line::Complete(line, len) => {
                    let cost = line.len() + QUEUED_REQUEST_COST;
                    if session.queued_bytes + cost > MAX_QUEUED_BYTES {
                        // Left unread until the queue has room: backpressure, not an error.
                        queue_full = true;
                        break;
                    }
                    used += len;
                    session.queued_bytes += cost;
                    session.queued.push_back(line.into());
                }
                Line::Incomplete => break,
                // Refused as soon as it cannot become a valid line, whole or not.
                Line::TooLong(len) => {
                    session.refuse(
                        TOO_LONG,
                        format_args!("request line of {len} bytes or more"),
                    );
                    break;
                }
            }
        }
        if session.refused {
            used = input.len();
        }
        // Idle: answer now. Busy: the loop calls `on_drained` as the transfer drains, and
        // the queued requests are answered after it.
        let flow = if session.current.is_none() {
            self.pump(session, out)
        } else {
            Flow::Continue
        };
        match flow {
            Flow::Continue if queue_full => (used, Flow::Pause),
            flow => (used, flow),
        }
    }

    const STREAMS: bool = true;

    fn on_drained(&mut self, session: &mut FileSession, out: &mut Output<'_>) -> Flow {
        self.pump(session, out)
    }

    fn max_pending_input(&self) -> usize {
        // `on_input` refuses longer lines itself, with a reply; this is a backstop.
        MAX_REQUEST_LINE + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "multiconn-file-unit-{}-{n}-{name}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A root with `small` (11 bytes), `empty`, `big` (3.5 chunks), `sub/inner`, a link
    /// inside (`inside` → `small`) and one outside (`escape` → the secret next to the root).
    fn fixture(name: &str) -> (TempDir, FileServer, Vec<u8>) {
        let dir = TempDir::new(name);
        let root = dir.0.join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("small"), b"hello file\n").unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        let big: Vec<u8> = (0..CHUNK * 7 / 2).map(|i| (i % 251) as u8).collect();
        fs::write(root.join("big"), &big).unwrap();
        fs::write(root.join("sub/inner"), b"inner").unwrap();
        fs::write(dir.0.join("secret"), b"secret").unwrap();
        symlink("small", root.join("inside")).unwrap();
        symlink(dir.0.join("secret"), root.join("escape")).unwrap();
        let server = FileServer::new(&root).unwrap();
        (dir, server, big)
    }

    /// Everything a connection would receive for `pieces`, fed the way the loop feeds them
    /// (unconsumed bytes are kept and joined to the next piece), with `on_drained` called
    /// until it produces nothing, as the loop does while the peer keeps reading; after a
    /// pause the kept bytes are presented again once the output has drained.
    fn run(server: &mut FileServer, pieces: &[&[u8]]) -> (Vec<u8>, Option<Flow>) {
        let mut produced = Produced::default();
        let mut session = server.open(&Peer::Unix, &mut produced.output());
        let mut pending = Vec::new();
        let mut sent = Vec::new();
        for piece in pieces {
            pending.extend_from_slice(piece);
            loop {
                let (used, flow) = server.on_input(&mut session, &pending, &mut produced.output());
                assert!(used <= pending.len());
                pending.drain(..used);
                if flow != Flow::Pause {
                    assert!(
                        !pending.contains(&b'\n'),
                        "a complete request was left unconsumed"
                    );
                    assert!(pending.len() <= server.max_pending_input());
                }
                assert!(session.queued_bytes <= MAX_QUEUED_BYTES);
                sent.append(&mut produced.reply.to_vec());
                produced.reply.clear();
                if flow == Flow::Close {
                    return (sent, Some(flow));
                }
                loop {
                    let flow = server.on_drained(&mut session, &mut produced.output());
                    assert!(
                        produced.reply.len() <= CHUNK + 64,
                        "one call produces at most a chunk"
                    );
                    let made = !produced.reply.is_empty();
                    sent.append(&mut produced.reply.to_vec());
                    produced.reply.clear();
                    if flow == Flow::Close {
                        return (sent, Some(flow));
                    }
                    if !made {
                        break;
                    }
                }
                if flow != Flow::Pause {
                    break;
                }
            }
        }
        assert!(produced.broadcast.is_empty());
        (sent, None)
    }

    fn ok(content: &[u8]) -> Vec<u8> {
        let mut v = format!("OK {}\n", content.len()).into_bytes();
        v.extend_from_slice(content);
        v
    }

    /// A file comes back as `OK <size>\n` and its bytes, chunk by chunk; the connection stays.
    #[test]
    fn serves_files() {
        let (_dir, mut server, big) = fixture("serves");
        assert_eq!(run(&mut server, &[b"small\n"]), (ok(b"hello file\n"), None));
        assert_eq!(run(&mut server, &[b"empty\r\n"]), (ok(b""), None));
        assert_eq!(run(&mut server, &[b"./sub/inner\n"]), (ok(b"inner"), None));
        assert_eq!(
            run(&mut server, &[b"inside\n"]),
            (ok(b"hello file\n"), None)
        );
        assert_eq!(run(&mut server, &[b"big\n"]), (ok(&big), None));
    }

    /// Pipelined requests, also sent while a big file streams, are answered in order.
    #[test]
    fn pipelined_requests_answered_in_order() {
        let (_dir, mut server, big) = fixture("pipelined");
        let expect = [
            ok(&big),
            Refusal::NotFound.reply().to_vec(),
            ok(b"hello file\n"),
            ok(&big),
        ]
        .concat();
        let input: &[u8] = b"big\nnope\nsmall\nbig\n";
        assert_eq!(run(&mut server, &[input]), (expect.clone(), None));
        for split in 0..=input.len() {
            let got = run(&mut server, &[&input[..split], &input[split..]]);
            assert_eq!(got, (expect.clone(), None), "split at {split}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&mut server, &bytes), (expect, None));
    }

    /// Every way out of the root is refused, and odd paths are refused without panicking.
    #[test]
    fn refusals() {
        let (_dir, mut server, _) = fixture("refusals");
        let cases: [(&[u8], Refusal); 14] = [
            (b"../secret", Refusal::OutsideRoot),
            (b"sub/../../secret", Refusal::OutsideRoot),
            (b"sub/../small", Refusal::ParentDir),
            (b"./sub/../sub/../small", Refusal::ParentDir),
            (b"/etc/passwd", Refusal::OutsideRoot),
            (b"escape", Refusal::OutsideRoot),
            (b"missing", Refusal::NotFound),
            (b"small/more", Refusal::NotFound),
            (b"sub", Refusal::NotRegularFile),
            (b".", Refusal::NotRegularFile),
            (b"", Refusal::InvalidPath),
            (b"sm\0all", Refusal::InvalidPath),
            (b"\xff\xfe", Refusal::NotFound),
            (b"\r", Refusal::InvalidPath),
        ];
        for (path, refusal) in cases {
            let mut line = path.to_vec();
            line.push(b'\n');
            let got = run(&mut server, &[&line]);
            assert_eq!(got, (refusal.reply().to_vec(), None), "{}", ByteStr(path));
        }
    }

    /// The race a path check alone cannot close: a directory checked inside the root is
    /// swapped for a symlink leading out before the open. openat2's RESOLVE_BENEATH
    /// refuses it, where a plain open would have served the outside file.
    #[test]
    fn directory_swapped_after_the_check_does_not_lead_out() {
        let (dir, server, _) = fixture("swap");
        let checked = resolve(&server.root, b"sub/inner").unwrap();
        let outside = dir.0.join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("inner"), b"secret").unwrap();
        fs::rename(dir.0.join("root/sub"), dir.0.join("old-sub")).unwrap();
        symlink(&outside, dir.0.join("root/sub")).unwrap();
        assert_eq!(
            fs::read(&checked).unwrap(),
            b"secret",
            "the swap is in place"
        );
        let opened = open_regular(&server.root, &server.root_dir, &checked);
        assert_eq!(opened.map(|(_, size)| size), Err(Refusal::OutsideRoot));
        // A link that stays inside is still followed.
        fs::remove_file(dir.0.join("root/sub")).unwrap();
        symlink("empty-dir", dir.0.join("root/sub")).unwrap();
        fs::create_dir_all(dir.0.join("root/empty-dir")).unwrap();
        fs::write(dir.0.join("root/empty-dir/inner"), b"in").unwrap();
        let opened = open_regular(&server.root, &server.root_dir, &checked);
        assert_eq!(opened.map(|(_, size)| size), Ok(2));
    }

    /// A request line longer than the limit is refused, even before its end arrives.
    #[test]
    fn request_line_too_long() {
        let (_dir, mut server, _) = fixture("toolong");
        let long = vec![b'a'; MAX_REQUEST_LINE + 1];
        assert_eq!(run(&mut server, &[&long, b"\n"]).0, TOO_LONG);
        let longer = vec![b'a'; MAX_REQUEST_LINE + 2];
        assert_eq!(
            run(&mut server, &[&longer]),
            (TOO_LONG.to_vec(), Some(Flow::Close))
        );
        // At the limit it is just a name that does not exist.
        let limit = [&vec![b'a'; MAX_REQUEST_LINE][..], b"\r\n"].concat();
        assert_eq!(run(&mut server, &[&limit]).0, Refusal::InvalidPath.reply());
    }

    /// A protocol error during a transfer comes after it and what was queued before it.
    #[test]
    fn errors_wait_their_turn() {
        let (_dir, mut server, big) = fixture("turn");
        let long = vec![b'a'; MAX_REQUEST_LINE + 1];
        let input = [&b"big\nsmall\n"[..], &long, b"\nsmall\n"].concat();
        let expect = [ok(&big), ok(b"hello file\n"), TOO_LONG.to_vec()].concat();
        assert_eq!(run(&mut server, &[&input]), (expect, Some(Flow::Close)));
    }

    /// Requests pipelined behind a transfer queue up to the cap, each costing at least
    /// `QUEUED_REQUEST_COST`, so empty lines cannot queue without bound; past it the
    /// protocol pauses, and every request is still answered, in order.
    #[test]
    fn queue_is_bounded_and_pauses() {
        let (_dir, mut server, big) = fixture("queue");
        let mut session = server.open(&Peer::Unix, &mut Produced::default().output());
        let mut produced = Produced::default();
        let lines = b"big\n"
            .iter()
            .chain(&[b'\n'; 100_000])
            .copied()
            .collect::<Vec<u8>>();
        let (used, flow) = server.on_input(&mut session, &lines, &mut produced.output());
        assert_eq!(flow, Flow::Pause);
        let fits = MAX_QUEUED_BYTES / QUEUED_REQUEST_COST;
        assert!(used < 4 + fits + 1, "{used} bytes consumed");
        assert!(session.queued_bytes <= MAX_QUEUED_BYTES);

        let mut expect = ok(&big);
        let refusal = Refusal::InvalidPath.reply();
        for _ in 0..1000 {
            expect.extend_from_slice(refusal);
        }
        let input = [&b"big\n"[..], &[b'\n'; 1000]].concat();
        assert_eq!(run(&mut server, &[&input]), (expect, None));
    }

    /// A file that shrinks while it is sent ends the connection short instead of lying.
    #[test]
    fn shrinking_file_closes() {
        let (dir, server, _) = fixture("shrink");
        let mut server = server;
        let mut produced = Produced::default();
        let mut session = server.open(&Peer::Unix, &mut produced.output());
        let mut out = produced.output();
        assert_eq!(
            server.on_input(&mut session, b"big\n", &mut out),
            (4, Flow::Continue)
        );
        assert_eq!(server.on_drained(&mut session, &mut out), Flow::Continue);
        assert_eq!(
            server.on_input(&mut session, b"small\n", &mut out),
            (6, Flow::Continue)
        );
        fs::write(dir.0.join("root/big"), b"tiny").unwrap();
        assert_eq!(server.on_drained(&mut session, &mut out), Flow::Close);
        // The request queued behind the broken transfer is not answered.
        assert_eq!(server.on_drained(&mut session, &mut out), Flow::Continue);
        let header = format!("OK {}\n", CHUNK * 7 / 2);
        assert_eq!(produced.reply.len(), header.len() + CHUNK);
    }

    /// The root must be an existing directory.
    #[test]
    fn root_must_be_a_directory() {
        let (dir, _, _) = fixture("root");
        assert!(FileServer::new(&dir.0.join("root/small")).is_err());
        assert!(FileServer::new(&dir.0.join("nowhere")).is_err());
        let server = FileServer::new(&dir.0.join("root/sub/..")).unwrap();
        assert_eq!(server.root(), dir.0.join("root").canonicalize().unwrap());
    }

    proptest! {
        /// Random request bytes, split anywhere, never panic and get only OK/ERR answers
        /// (nothing here matches a file but `small`, whose answer is known).
        #[test]
        fn random_requests_never_panic(
            data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'.'), Just(b'/'), any::<u8>()], 0..300),
            split in 0usize..300,
        ) {
            let (_dir, mut server, _) = fixture("prop");
            let split = split.min(data.len());
            let (sent, _) = run(&mut server, &[&data[..split], &data[split..]]);
            let small = ok(b"hello file\n");
            let mut rest = &sent[..];
            while !rest.is_empty() {
                if rest.starts_with(&small) {
                    rest = &rest[small.len()..];
                    continue;
                }
                prop_assert!(rest.starts_with(b"ERR "), "{}", ByteStr(rest));
                let end = rest.iter().position(|&b| b == b'\n').unwrap();
                rest = &rest[end + 1..];
            }
        }
    }
}
