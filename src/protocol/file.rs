//! File transfer (seed 002's "FTP" server) on the event loop: a client sends a path relative
//! to the served root on one line; the server answers `OK <size>\n` and exactly that many
//! bytes, or `ERR <reason>\n`, then waits for the next request on the same connection.
//!
//! The root is a security boundary ([`crate::root`]: confined by openat2(2)). A file's
//! bytes are queued as a file chunk: the loop sends them from the file's descriptor with
//! sendfile(2), as the peer takes them, so they never pass through this process's memory
//! and a file of any size costs the queue nothing but its descriptor.
//!
//! Pipelining: request lines that arrive while a file is being sent are consumed and queued
//! (up to `MAX_QUEUED_BYTES`, each costing its length plus `QUEUED_REQUEST_COST`); past
//! that the protocol pauses and the rest waits, unread, until the queue has room. Each is
//! answered, in order, when the responses before it are complete. A protocol error (a
//! request line that is too long) is answered in turn like a request, after which the
//! connection closes; input after it is discarded.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::line::{next_line, Line};
#[cfg(test)]
use super::Produced;
use super::{ByteStr, Flow, Output, Protocol};
use crate::net::Peer;
pub use crate::root::Refusal;
use crate::root::{Opened, Root};

/// The longest request line, in bytes (line end excluded): Linux's PATH_MAX, so no path
/// that could be opened is refused, and a connection cannot buffer more for one request.
pub const MAX_REQUEST_LINE: usize = 4096;

/// Bytes of answers that need no file (`ERR` lines, headers of empty files) produced in
/// one run before the loop gets the connection's turn back; also what the tests allow a
/// transfer to hold in memory: a file's bytes never are, they go by sendfile.
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

/// The `ERR` line a refusal is answered with.
pub fn err_line(refusal: Refusal) -> &'static [u8] {
    match refusal {
        Refusal::InvalidPath => b"ERR invalid path\n",
        Refusal::OutsideRoot => b"ERR outside the root\n",
        Refusal::NotFound => b"ERR not found\n",
        Refusal::Directory | Refusal::NotRegularFile => b"ERR not a regular file\n",
        Refusal::PermissionDenied => b"ERR permission denied\n",
        Refusal::CannotOpen => b"ERR cannot open\n",
    }
}

/// Serves the files under one directory. Cheap to clone (one per worker loop).
#[derive(Debug, Clone)]
pub struct FileServer {
    root: Root,
}

impl FileServer {
    /// Serves `root`, which must be a readable directory.
    pub fn new(root: &Path) -> std::io::Result<FileServer> {
        Ok(FileServer {
            root: Root::new(root)?,
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Produces the next piece of this connection's responses: the answers of the queued
    /// requests up to the next file (whose bytes the loop sends from the file before it
    /// asks again), or the final protocol error. Produces nothing only when there is
    /// nothing left to do, or a file is still being sent.
    fn pump(&self, session: &mut FileSession, out: &mut Output<'_>) -> Flow {
        if out.file_pending() {
            return Flow::Continue;
        }
        if !session.queued.is_empty() {
            // Requests answered without a file (an `ERR`, an empty file) are answered in a
            // run, up to a chunk's worth of replies, so that many small answers cost one
            // call, not one each; one that sends a file ends the run.
            let until = out.owed() + CHUNK;
            while let Some(request) = session.queued.pop_front() {
                session.queued_bytes -= request.len() + QUEUED_REQUEST_COST;
                self.start(session, &request, out);
                if out.file_pending() || out.owed() >= until || out.is_full() {
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

    /// Answers one request: `OK <size>\n` and the file (sent from it by the loop), or `ERR`.
    fn start(&self, session: &FileSession, request: &[u8], out: &mut Output<'_>) {
        out.count_request();
        match self.root.open(request) {
            Ok(Opened { file, size, .. }) => {
                log::debug!(
                    "{}: sending {} ({size} bytes)",
                    session.peer,
                    ByteStr(request)
                );
                // Writing to a Vec cannot fail.
                let _ = writeln!(out.reply_buf(), "OK {size}");
                // A file that shrinks while it is sent ends the connection short: the
                // size was promised, so the client sees a short transfer, not wrong bytes.
                out.send_file(Arc::new(file), 0, size);
            }
            Err(refusal) => {
                log::debug!("{}: {} refused: {refusal}", session.peer, ByteStr(request));
                out.send(err_line(refusal));
            }
        }
    }
}

/// One client's state: the requests waiting behind the file being sent.
#[derive(Debug)]
pub struct FileSession {
    peer: Peer,
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
        // Idle: answer now. Busy: the loop calls `on_drained` once the file is sent, and
        // the queued requests are answered then.
        let flow = self.pump(session, out);
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
    use crate::root::testing::TempDir;
    use proptest::prelude::*;
    use std::fs;
    use std::os::unix::fs::symlink;

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
            err_line(Refusal::NotFound).to_vec(),
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
        let cases: [(&[u8], Refusal); 13] = [
            (b"../secret", Refusal::OutsideRoot),
            (b"sub/../../secret", Refusal::OutsideRoot),
            (b"sub/../small", Refusal::OutsideRoot),
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
            assert_eq!(got, (err_line(refusal).to_vec(), None), "{}", ByteStr(path));
        }
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
        assert_eq!(
            run(&mut server, &[&limit]).0,
            err_line(Refusal::InvalidPath)
        );
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
        let refusal = err_line(Refusal::InvalidPath);
        for _ in 0..1000 {
            expect.extend_from_slice(refusal);
        }
        let input = [&b"big\n"[..], &[b'\n'; 1000]].concat();
        assert_eq!(run(&mut server, &[&input]), (expect, None));
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
