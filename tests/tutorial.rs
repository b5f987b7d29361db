//! `multiconn-client HOST PORT NUM_CONNS` as the tutorial's `multiconn-client.py`, side by
//! side with its transcript: message 1 on every connection before message 2 on any, and
//! Ctrl-C printing the tutorial's line. Against small blocking test doubles.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::{client, kill, read_all_in_background, spawn_bin, wait_exit, TempDir, IO_TIMEOUT};

const MESSAGE_LEN: usize = b"Message 1 from client.".len();

/// One accepted connection of the recording server: its number (in accept order), what
/// came in not yet parsed into messages.
struct Recorded {
    number: usize,
    stream: UnixStream,
    pending: Vec<u8>,
    messages: usize,
}

impl Recorded {
    /// Reads what has arrived (without waiting) and echoes it; returns the message numbers
    /// completed by it, in order.
    fn take(&mut self) -> Vec<u8> {
        let mut chunk = [0u8; 1024];
        let mut completed = Vec::new();
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    self.stream.set_nonblocking(false).unwrap();
                    self.stream.write_all(&chunk[..n]).unwrap();
                    self.stream.set_nonblocking(true).unwrap();
                    self.pending.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        while self.pending.len() >= MESSAGE_LEN {
            let message: Vec<u8> = self.pending.drain(..MESSAGE_LEN).collect();
            let text = String::from_utf8(message).unwrap();
            let digit = text
                .strip_prefix("Message ")
                .and_then(|rest| rest.strip_suffix(" from client."))
                .and_then(|n| n.parse::<u8>().ok())
                .unwrap_or_else(|| panic!("not a tutorial message: {text:?}"));
            completed.push(digit);
            self.messages += 1;
        }
        completed
    }
}

/// Accepts every connection waiting in the listener's queue.
fn accept_all(listener: &UnixListener, conns: &mut Vec<Recorded>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true).unwrap();
                conns.push(Recorded {
                    number: conns.len() + 1,
                    stream,
                    pending: Vec::new(),
                    messages: 0,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// An echo server on one thread that records when each (connection, message) arrives:
/// every pass reads what all connections have (a snapshot), so a message seen in an
/// earlier pass arrived before one seen in a later pass; within one pass the order is
/// unknown. A Unix socket, since there a sent byte is in the peer's queue when `send`
/// returns (on TCP loopback the kernel may hold a small segment back, as autocorking
/// does, and reorder across connections what the client sent in order).
/// Returns (pass, connection, message) in the order seen.
fn recording_echo_server(
    path: &std::path::Path,
    connections: usize,
) -> std::thread::JoinHandle<Vec<(usize, usize, u8)>> {
    let listener = UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut conns: Vec<Recorded> = Vec::new();
        let mut seen = Vec::new();
        let mut pass = 0;
        while seen.len() < connections * 2 {
            assert!(Instant::now() < deadline, "the client stalled: {seen:?}");
            accept_all(&listener, &mut conns);
            for conn in conns.iter_mut() {
                for message in conn.take() {
                    seen.push((pass, conn.number, message));
                }
            }
            pass += 1;
        }
        seen
    })
}

/// With 3 connections and the default two messages, every message 1 reaches the server
/// before any message 2, and the transcript's Sending lines are in the seed's order.
#[test]
fn message_1_on_every_connection_before_message_2_on_any() {
    let dir = TempDir::new("tutorial-order");
    let path = dir.0.join("echo.sock");
    let server = recording_echo_server(&path, 3);
    let out = client(&["--unix", path.to_str().unwrap(), "3"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let seen = server.join().expect("recording server");
    assert_eq!(seen.len(), 6, "{seen:?}");
    let pass_of = |message: u8| seen.iter().filter(move |s| s.2 == message).map(|s| s.0);
    let (last_1, first_2) = (pass_of(1).max().unwrap(), pass_of(2).min().unwrap());
    assert!(
        last_1 <= first_2,
        "a message 2 arrived before a message 1 (pass, connection, message): {seen:?}"
    );
    let mut connections: Vec<usize> = seen.iter().map(|s| s.1).collect();
    connections.sort();
    assert_eq!(
        connections,
        [1, 1, 2, 2, 3, 3],
        "two messages on each of 3: {seen:?}"
    );
    let sending: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Sending "))
        .collect();
    let expected: Vec<String> = [1, 2]
        .iter()
        .flat_map(|m| {
            (1..=3).map(move |c| format!("Sending b\"Message {m} from client.\" to connection {c}"))
        })
        .collect();
    assert_eq!(sending, expected, "{}", out.stdout);
    let starting = out
        .stdout
        .lines()
        .take(3)
        .all(|l| l.starts_with("Starting connection "));
    assert!(starting, "{}", out.stdout);
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("Closing connection "))
            .count(),
        3
    );
}

/// Ctrl-C while the tutorial client waits for an echo that never comes: the tutorial's
/// line on stdout and exit status 130, as app-client does.
#[test]
fn ctrl_c_prints_the_tutorial_line() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut child = spawn_bin("multiconn-client", &["127.0.0.1", &port, "1"]);
    let stdout = read_all_in_background(child.stdout.take().unwrap());
    let stderr = read_all_in_background(child.stderr.take().unwrap());
    // The server side's accept says the client is connected (its handler is installed
    // before it connects); the connection is held open and never answered.
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    let (mut held, _) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no connection from the client: {e}");
            }
        }
    };
    // Its messages arrive (so it is past connecting and waiting for the echo).
    held.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = vec![0u8; 2 * MESSAGE_LEN];
    held.read_exact(&mut got).expect("both messages");
    kill(&child, libc::SIGINT);
    let status = wait_exit(&mut child);
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().last(),
        Some("Caught keyboard interrupt, exiting"),
        "{stdout}"
    );
    assert!(stderr.is_empty(), "{stderr}");
}

/// A connection the server drops holds no barrier up: the others still send both
/// messages and finish; the dropped one is reported, and the exit is 1.
#[test]
fn a_dropped_connection_does_not_stall_the_others() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for number in 0..3 {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            if number == 1 {
                drop(stream); // closed at once, before any message
                continue;
            }
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            kept.push(std::thread::spawn(move || {
                let mut echo = vec![0u8; 2 * MESSAGE_LEN];
                if stream.read_exact(&mut echo).is_ok() {
                    let _ = stream.write_all(&echo);
                }
                let _ = stream.read(&mut [0u8; 1]); // until the client closes
            }));
        }
        for thread in kept {
            let _ = thread.join();
        }
    });
    let out = client(&["127.0.0.1", &port, "3"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let closing = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Closing connection "))
        .count();
    assert_eq!(closing, 2, "{}", out.stdout);
    assert!(
        out.stderr.ends_with("error: 1 of 3 connections failed\n"),
        "{}",
        out.stderr
    );
}
