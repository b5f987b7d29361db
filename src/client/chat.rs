//! The interactive chat client (`multiconn-client HOST PORT 1 --protocol chat`), the seeds'
//! ChatClient on the client loop: one connection and stdin in one `mio::Poll`. Typed lines
//! go out, what arrives is printed as it arrives; `quit`, `/quit` or EOF on stdin leaves.

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::driver::{client_timeouts, Client, Driver, Endpoint, FIRST_CALLER_TOKEN};
use crate::connection::{CloseReason, Ended};
use crate::net::Peer;
use crate::protocol::chat::DEFAULT_MAX_LINE;
use crate::protocol::{Flow, Output, Protocol};

/// Typed bytes not yet sent plus what the connection still owes the server: past this,
/// stdin is not read until the server has taken some (a server that stops reading stops
/// the typist, instead of growing this process).
pub const MAX_PENDING: usize = 256 * 1024;

/// Bytes read from stdin at once.
const STDIN_CHUNK: usize = 16 * 1024;

/// stdin's token in the driver's poll (its events only end the wait: readiness is asked
/// with `poll(2)` each turn).
const STDIN: Token = Token(FIRST_CALLER_TOKEN);

/// The lines that leave the room, as the server knows them.
fn is_quit(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line == b"quit" || line == b"/quit"
}

/// How the session ended, for the exit code.
#[derive(Debug)]
pub enum ChatEnd {
    /// We left (`quit` or EOF) and the server closed after us.
    Left,
    /// The server closed the connection while we were still in the room.
    ServerClosed,
    /// The connection failed (or could not be made): the message.
    Failed(String),
}

/// The client protocol: prints complete lines as they arrive; sends the typed lines it
/// holds whenever the connection's queue has drained.
struct ChatLines<W: Write> {
    out: W,
    /// Typed bytes not yet handed to the connection.
    pending: Vec<u8>,
    /// `/join ROOM` first, if a room was asked for.
    join: Option<Vec<u8>>,
    /// stdin is done (EOF or a `quit` line): after `pending`, a `quit` goes out, once.
    leaving: bool,
    quit_sent: bool,
    /// The wait for the server's close after `quit` is over: close ourselves.
    give_up: bool,
    ended: Option<ChatEnd>,
}

impl<W: Write> ChatLines<W> {
    /// Prints `bytes`; a reader that went away ends the session like a `quit`.
    fn print(&mut self, bytes: &[u8]) {
        if self.out.write_all(bytes).is_err() {
            self.leaving = true;
            self.pending.clear();
        }
    }
}

impl<W: Write> Protocol for ChatLines<W> {
    type Session = ();
    const STREAMS: bool = true;

    fn open(&mut self, _: &Peer, out: &mut Output<'_>) {
        if let Some(join) = self.join.take() {
            out.send(&join);
        }
    }

    fn on_input(&mut self, _: &mut (), input: &[u8], _: &mut Output<'_>) -> (usize, Flow) {
        let used = input.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if used > 0 {
            self.print(&input[..used]);
            let _ = self.out.flush();
        }
        (used, Flow::Continue)
    }

    fn on_eof(&mut self, _: &mut (), leftover: &[u8], _: &mut Output<'_>) {
        if !leftover.is_empty() {
            self.print(leftover);
            self.print(b"\n");
        }
        let _ = self.out.flush();
    }

    fn on_drained(&mut self, _: &mut (), out: &mut Output<'_>) -> Flow {
        if self.give_up {
            return Flow::Close;
        }
        if self.quit_sent {
            return Flow::Continue;
        }
        // Whole lines, up to a quit; a line longer than the server takes goes as it is
        // (the server answers it), so a missing line end cannot stall the typist.
        let mut sent = 0;
        while let Some(end) = self.pending[sent..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[sent..sent + end];
            if is_quit(line) {
                self.leaving = true;
                self.pending.truncate(sent);
                break;
            }
            sent += end + 1;
        }
        let whole = !self.leaving && sent == 0 && self.pending.len() > DEFAULT_MAX_LINE;
        if whole {
            sent = self.pending.len();
        }
        if self.leaving && sent < self.pending.len() {
            // EOF after an unfinished line: it is a line too.
            self.pending.push(b'\n');
            sent = self.pending.len();
        }
        out.send(&self.pending[..sent]);
        self.pending.drain(..sent);
        if self.leaving {
            // The server closes after it; waiting for that close means it has read all.
            out.send(b"quit\n");
            self.quit_sent = true;
        }
        Flow::Continue
    }

    fn max_pending_input(&self) -> usize {
        // A relayed line: the server's longest plus its prefix, with room to spare.
        2 * DEFAULT_MAX_LINE
    }
}

impl<W: Write> Client for ChatLines<W> {
    fn on_ended(&mut self, ended: Ended<()>) {
        let _ = self.out.flush();
        self.ended = Some(match (ended.error, ended.reason) {
            (Some(failure), _) => ChatEnd::Failed(format!("{}: {}", failure.op, failure.error)),
            (None, _) if self.quit_sent => ChatEnd::Left,
            (None, CloseReason::PeerClosed) => ChatEnd::ServerClosed,
            (None, CloseReason::Protocol) => ChatEnd::Left,
            (None, reason) => ChatEnd::Failed(format!("connection ended: {reason:?}")),
        });
    }
}

/// How stdin is watched.
#[derive(PartialEq, Eq)]
enum Input {
    /// Registered with the poll; read when `poll(2)` says it has something.
    Polled,
    /// A regular file (epoll refuses those): always ready.
    File,
    Done,
}

/// Runs one chat session to `endpoint` with `input` (stdin: fd 0) as the typist and `out`
/// as the screen, joining `room` first if given. After a `quit` the server has `linger` to
/// close the connection before the client closes it itself.
pub fn run_chat_client(
    endpoint: &Endpoint,
    room: Option<&str>,
    input: RawFd,
    out: impl Write,
    connect_timeout: Duration,
    linger: Duration,
) -> io::Result<ChatEnd> {
    let protocol = ChatLines {
        out,
        pending: Vec::new(),
        join: room.map(|r| format!("/join {r}\n").into_bytes()),
        leaving: false,
        quit_sent: false,
        give_up: false,
        ended: None,
    };
    let mut driver = Driver::new(protocol, client_timeouts(connect_timeout, None))?;
    let Some(conn) = driver.connect(endpoint)? else {
        return Ok(driver.into_protocol().ended.unwrap_or(ChatEnd::Left));
    };
    let mut stdin =
        match driver
            .registry()
            .register(&mut SourceFd(&input), STDIN, Interest::READABLE)
        {
            Ok(()) => Input::Polled,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Input::File,
            Err(_) => Input::Done,
        };
    if stdin == Input::Done {
        driver.protocol_mut().leaving = true;
    }
    let mut chunk = vec![0u8; STDIN_CHUNK];
    let mut quit_deadline: Option<Instant> = None;
    while !driver.is_empty() {
        let owed = driver
            .connections()
            .map(|c| c.outbound_len())
            .sum::<usize>()
            + driver.protocol().pending.len();
        let room_left = MAX_PENDING.saturating_sub(owed).min(STDIN_CHUNK);
        let mut more = false;
        if stdin != Input::Done && room_left > 0 && !driver.protocol().leaving {
            let ready = stdin == Input::File || has_input(input);
            if ready {
                match read_fd(input, &mut chunk[..room_left]) {
                    Ok(0) | Err(_) => {
                        driver.protocol_mut().leaving = true;
                    }
                    Ok(n) => {
                        driver.protocol_mut().pending.extend_from_slice(&chunk[..n]);
                        more = true;
                    }
                }
            }
        }
        let protocol = driver.protocol();
        if !protocol.pending.is_empty() || (protocol.leaving && !protocol.quit_sent) {
            // Also before the connect completes: the first poke after it sends these.
            driver.poke(conn);
        }
        let protocol = driver.protocol();
        if protocol.leaving && stdin != Input::Done {
            if stdin == Input::Polled {
                let _ = driver.registry().deregister(&mut SourceFd(&input));
            }
            stdin = Input::Done;
        }
        if protocol.quit_sent && quit_deadline.is_none() {
            quit_deadline = Some(Instant::now() + linger);
        }
        let now = Instant::now();
        let wait = match quit_deadline {
            Some(at) if now >= at => {
                driver.protocol_mut().give_up = true;
                driver.poke(conn);
                Some(Duration::ZERO)
            }
            Some(at) => Some(at - now),
            None if more => Some(Duration::ZERO),
            None => None,
        };
        driver.turn(wait)?;
    }
    Ok(driver.into_protocol().ended.unwrap_or(ChatEnd::Left))
}

/// Whether `fd` has bytes (or its end) to read now, without blocking: stdin is left in
/// blocking mode (its file description is shared with the shell), so it is read only
/// when this says so.
fn has_input(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quit_lines() {
        assert!(is_quit(b"quit"));
        assert!(is_quit(b"/quit\r"));
        assert!(!is_quit(b"quit now"));
        assert!(!is_quit(b" quit"));
    }
}
