//! The tutorial's `multiconn-client.py` on a mio loop: NUM_CONNS non-blocking connections,
//! each sends its messages, reads until every byte it sent has come back (verifying them),
//! and closes. WRITABLE is registered only while a connection has something to send.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::connect;
use crate::launch::describe;
use crate::protocol::ByteStr;

/// What the scenario does.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub addr: SocketAddr,
    pub connections: usize,
    /// Sent in order on every connection.
    pub messages: Vec<Vec<u8>>,
    /// The whole run must finish within this.
    pub timeout: Duration,
}

impl ScenarioConfig {
    /// The tutorial's two messages.
    pub fn tutorial(addr: SocketAddr, connections: usize) -> Self {
        ScenarioConfig {
            addr,
            connections,
            messages: vec![
                b"Message 1 from client.".to_vec(),
                b"Message 2 from client.".to_vec(),
            ],
            timeout: Duration::from_secs(10),
        }
    }
}

/// How the connections ended.
#[derive(Debug, Default)]
pub struct ScenarioReport {
    pub completed: usize,
    /// (connection number, what went wrong)
    pub failures: Vec<(usize, String)>,
}

struct Conn {
    number: usize,
    stream: TcpStream,
    connected: bool,
    next_message: usize,
    /// Bytes of the current message already written.
    written: usize,
    /// Everything sent so far, to verify the echo against.
    sent: Vec<u8>,
    received: usize,
    expected: usize,
}

/// Runs the scenario, printing the tutorial's transcript lines to `transcript`.
pub fn run_scenario(
    config: &ScenarioConfig,
    transcript: &mut dyn Write,
) -> io::Result<ScenarioReport> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(256);
    let mut conns = Slab::with_capacity(config.connections);
    let mut report = ScenarioReport::default();
    let expected: usize = config.messages.iter().map(Vec::len).sum();
    for number in 1..=config.connections {
        writeln!(
            transcript,
            "Starting connection {number} to {}",
            config.addr
        )?;
        let entry = conns.vacant_entry();
        let token = Token(entry.key());
        let Some(stream) = connect::start_noting_failure(
            poll.registry(),
            config.addr,
            token,
            number,
            &mut report.failures,
        )?
        else {
            continue;
        };
        entry.insert(Conn {
            number,
            stream,
            connected: false,
            next_message: 0,
            written: 0,
            sent: Vec::with_capacity(expected),
            received: 0,
            expected,
        });
    }
    let deadline = Instant::now() + config.timeout;
    let mut buf = vec![0u8; 64 * 1024];
    while !conns.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            for (_, conn) in conns.iter() {
                let conn: &Conn = conn;
                report.failures.push((
                    conn.number,
                    format!(
                        "timed out after {:?} with {} of {} bytes echoed",
                        config.timeout, conn.received, conn.expected
                    ),
                ));
            }
            break;
        }
        match poll.poll(&mut events, Some(deadline - now)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let outcome = service(conn, event, &mut buf, config, transcript, poll.registry());
            match outcome {
                Ok(false) => {}
                Ok(true) => {
                    writeln!(transcript, "Closing connection {}", conn.number)?;
                    report.completed += 1;
                    conns.remove(key);
                }
                Err(reason) => {
                    report.failures.push((conn.number, reason));
                    conns.remove(key);
                }
            }
        }
    }
    report.failures.sort();
    Ok(report)
}

/// Handles one event; `Ok(true)` when the connection is done, `Err` with the reason it failed.
fn service(
    conn: &mut Conn,
    event: &mio::event::Event,
    buf: &mut [u8],
    config: &ScenarioConfig,
    transcript: &mut dyn Write,
    registry: &mio::Registry,
) -> Result<bool, String> {
    if !conn.connected {
        match connect::finished(&conn.stream) {
            Ok(true) => conn.connected = true,
            Ok(false) => return Ok(false),
            Err(e) => {
                return Err(format!(
                    "cannot connect to {}: {}",
                    config.addr,
                    describe(&e)
                ))
            }
        }
    }
    if event.is_writable() && conn.next_message < config.messages.len() {
        while let Some(message) = config.messages.get(conn.next_message) {
            if conn.written == 0 {
                let _ = writeln!(
                    transcript,
                    "Sending {} to connection {}",
                    ByteStr(message),
                    conn.number
                );
            }
            match conn.stream.write(&message[conn.written..]) {
                Ok(n) => {
                    conn.sent
                        .extend_from_slice(&message[conn.written..conn.written + n]);
                    conn.written += n;
                    if conn.written == message.len() {
                        conn.next_message += 1;
                        conn.written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("send failed: {}", describe(&e))),
            }
        }
        if conn.next_message == config.messages.len() {
            // Everything sent: only reading is left.
            registry
                .reregister(&mut conn.stream, event.token(), Interest::READABLE)
                .map_err(|e| format!("reregister failed: {e}"))?;
        }
    }
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        loop {
            match conn.stream.read(buf) {
                Ok(0) => {
                    return Err(format!(
                        "server closed the connection after {} of {} bytes",
                        conn.received, conn.expected
                    ))
                }
                Ok(n) => {
                    let got = &buf[..n];
                    let _ = writeln!(
                        transcript,
                        "Received {} from connection {}",
                        ByteStr(got),
                        conn.number
                    );
                    let want = conn.sent.get(conn.received..conn.received + n);
                    if want != Some(got) {
                        return Err(format!(
                            "echo mismatch: bytes {}..{} differ from what was sent",
                            conn.received,
                            conn.received + n
                        ));
                    }
                    conn.received += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("receive failed: {}", describe(&e))),
            }
        }
    }
    Ok(conn.received == conn.expected)
}
