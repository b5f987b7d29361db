//! The tutorial's `multiconn-client.py` on the client loop: NUM_CONNS non-blocking
//! connections, each sends its messages, reads until every byte it sent has come back
//! (verifying them), and closes. The checks are a client protocol; the connection core
//! does the I/O, asking for WRITABLE only while a connection has something to send.
//! Messages go out in the tutorial's transcript order: message 1 on every connection
//! (once all are connected) before message 2 on any, a barrier per message index.

use std::io::{self, Write};
use std::time::Duration;

use super::driver::{client_timeouts, Client, Driver, Endpoint};
use crate::connection::{Ended, Failure};
use crate::net::Peer;
use crate::protocol::{ByteStr, Flow, Output, Protocol, Timeout};
use crate::schedule::ConnRef;

/// What the scenario does.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub addr: Endpoint,
    pub connections: usize,
    /// Sent in order on every connection.
    pub messages: Vec<Vec<u8>>,
    /// The whole run must finish within this.
    pub timeout: Duration,
}

impl ScenarioConfig {
    /// The tutorial's two messages.
    pub fn tutorial(addr: Endpoint, connections: usize) -> Self {
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

/// The scenario as a client protocol: every connection sends the messages in order once
/// connected and checks the echo as it arrives; the transcript is written as it happens.
struct Scenario<'a> {
    config: &'a ScenarioConfig,
    /// Every message in order: what each connection's echo must be.
    expected: Vec<u8>,
    transcript: &'a mut dyn Write,
    /// A transcript line that could not be written ends the run with that error.
    transcript_error: Option<io::Error>,
    report: ScenarioReport,
    opened: usize,
    /// Per message index, the connections that reached its barrier (ready to send it:
    /// connected, and every earlier message written) or ended before it.
    passed: Vec<usize>,
    /// Messages every connection may send now: index `k` goes out once `passed[k]`
    /// counts all the connections.
    released: usize,
    /// A barrier opened: the run loop serves every connection, in number order, so each
    /// sends the released message (the transcript's order).
    release_pending: bool,
}

/// One connection's progress.
struct Conn {
    number: usize,
    next_message: usize,
    /// Barriers this connection has reached (counted in `passed`).
    arrived: usize,
    /// Bytes of the echo received (and verified) so far.
    received: usize,
    /// Everything came back: reported as completed.
    done: bool,
    /// Why it failed, when the protocol knows better than the socket.
    failure: Option<String>,
}

impl Scenario<'_> {
    /// Writes a line the run depends on (the others are best effort, as in the tutorial).
    fn line(&mut self, line: std::fmt::Arguments<'_>) {
        if let Err(e) = writeln!(self.transcript, "{line}") {
            self.transcript_error.get_or_insert(e);
        }
    }

    /// Counts `conn` at barriers `from..to` and opens those now passed by every connection.
    fn pass(&mut self, from: usize, to: usize) {
        for passed in &mut self.passed[from..to] {
            *passed += 1;
        }
        while self
            .passed
            .get(self.released)
            .is_some_and(|&n| n >= self.config.connections)
        {
            self.released += 1;
            self.release_pending = true;
        }
    }

    fn timed_out(&self, conn: &Conn) -> String {
        format!(
            "timed out after {:?} with {} of {} bytes echoed",
            self.config.timeout,
            conn.received,
            self.expected.len()
        )
    }
}

impl Protocol for Scenario<'_> {
    type Session = Conn;

    fn open(&mut self, _: &Peer, _: &mut Output<'_>) -> Conn {
        self.opened += 1;
        let number = self.opened;
        self.line(format_args!(
            "Starting connection {number} to {}",
            self.config.addr
        ));
        Conn {
            number,
            next_message: 0,
            arrived: 0,
            received: 0,
            done: false,
            failure: None,
        }
    }

    fn on_input(&mut self, conn: &mut Conn, input: &[u8], _: &mut Output<'_>) -> (usize, Flow) {
        let _ = writeln!(
            self.transcript,
            "Received {} from connection {}",
            ByteStr(input),
            conn.number
        );
        let (from, to) = (conn.received, conn.received + input.len());
        if self.expected.get(from..to) != Some(input) {
            conn.failure = Some(format!(
                "echo mismatch: bytes {from}..{to} differ from what was sent"
            ));
            return (input.len(), Flow::Close);
        }
        conn.received = to;
        if conn.received < self.expected.len() {
            return (input.len(), Flow::Continue);
        }
        self.line(format_args!("Closing connection {}", conn.number));
        self.report.completed += 1;
        conn.done = true;
        (input.len(), Flow::Close)
    }

    const STREAMS: bool = true;

    /// Connected, or the last message was taken: this connection is ready for its next
    /// message, which goes out once every connection is (a poke from the run loop).
    fn on_drained(&mut self, conn: &mut Conn, out: &mut Output<'_>) -> Flow {
        if conn.done || conn.failure.is_some() {
            return Flow::Continue;
        }
        let Some(message) = self.config.messages.get(conn.next_message) else {
            return Flow::Continue;
        };
        if conn.next_message >= self.released {
            if conn.arrived == conn.next_message {
                conn.arrived += 1;
                self.pass(conn.next_message, conn.next_message + 1);
            }
            return Flow::Continue;
        }
        let _ = writeln!(
            self.transcript,
            "Sending {} to connection {}",
            ByteStr(message),
            conn.number
        );
        out.send(message);
        conn.next_message += 1;
        Flow::Continue
    }

    /// Until the whole echo is back: the frame timeout is the run's timeout.
    fn mid_frame(&self, conn: &Conn) -> bool {
        conn.received < self.expected.len()
    }

    fn on_eof(&mut self, conn: &mut Conn, _: &[u8], _: &mut Output<'_>) {
        conn.failure.get_or_insert_with(|| {
            format!(
                "server closed the connection after {} of {} bytes",
                conn.received,
                self.expected.len()
            )
        });
    }

    fn on_timeout(&mut self, conn: &mut Conn, _: Timeout, _: &mut Output<'_>) {
        let why = self.timed_out(conn);
        conn.failure.get_or_insert(why);
    }
}

impl Client for Scenario<'_> {
    fn on_ended(&mut self, ended: Ended<Conn>) {
        let conn = ended.session;
        // A connection gone holds no barrier up: the others send on without it.
        let barriers = self.passed.len();
        self.pass(conn.arrived.min(barriers), barriers);
        if conn.done {
            return;
        }
        let reason = match (conn.failure.clone(), ended.error) {
            (Some(failure), _) => failure,
            (
                None,
                Some(Failure {
                    op: "connect",
                    error,
                }),
            ) => {
                if error.kind() == io::ErrorKind::TimedOut {
                    self.timed_out(&conn)
                } else {
                    format!("cannot connect to {}: {error}", self.config.addr)
                }
            }
            (None, Some(Failure { op, error })) => {
                let op = match op {
                    "write" => "send",
                    "read" => "receive",
                    other => other,
                };
                format!("{op} failed: {error}")
            }
            (None, None) => format!("closed ({})", ended.reason.name()),
        };
        self.report.failures.push((conn.number, reason));
    }
}

/// Runs the scenario, printing the tutorial's transcript lines to `transcript`.
pub fn run_scenario(
    config: &ScenarioConfig,
    transcript: &mut dyn Write,
) -> io::Result<ScenarioReport> {
    let scenario = Scenario {
        config,
        expected: config.messages.concat(),
        transcript,
        transcript_error: None,
        report: ScenarioReport::default(),
        opened: 0,
        passed: vec![0; config.messages.len()],
        released: 0,
        release_pending: false,
    };
    // Connect and echo both bounded from the start: the whole run ends within the timeout.
    let timeouts = client_timeouts(config.timeout, Some(config.timeout));
    let mut driver = Driver::new(scenario, timeouts)?;
    let mut conns: Vec<ConnRef> = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        conns.extend(driver.connect(&config.addr)?);
    }
    loop {
        // Serving a connection may open the next barrier at once (its message was
        // written in full), so serve again until none opens.
        while std::mem::take(&mut driver.protocol_mut().release_pending) {
            for &conn in &conns {
                driver.poke(conn);
            }
        }
        if driver.is_empty() {
            break;
        }
        driver.turn(None)?;
    }
    let scenario = driver.into_protocol();
    if let Some(e) = scenario.transcript_error {
        return Err(e);
    }
    let mut report = scenario.report;
    report.failures.sort();
    Ok(report)
}
