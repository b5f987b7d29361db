//! What one loop's connections send and how their answers are checked and recorded, as a
//! client protocol: requests go out as the pipeline (and, with a rate, the schedule)
//! allows, every response is checked by the connection's exchange as it arrives, and
//! latencies and errors go to the loop's tally. When a connection ends, how it ended
//! decides what is counted (a reconnect, or an error of its kind) and whether it is
//! re-established; the worker does that from [`Requests::reopen`]. No allocation per
//! request.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use super::config::LoadConfig;
use super::rate::Rate;
use crate::client::driver::{Client, Established};
use crate::client::pace::LATE_AFTER;
use crate::client::report::{ErrorCounts, Interval, SecondTally, Tally};
use crate::client::workload::{Answer, ConnExchange, Exchange, Progress};
use crate::connection::{CloseReason, Ended, Failure};
use crate::net::Peer;
use crate::protocol::{Flow, Output, Protocol, Timeout};

/// The first wait before a connection whose connect (or TLS handshake) failed is tried
/// again; it doubles with each failure in a row, up to [`MAX_RETRY_BACKOFF`].
const RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// A server that is down is tried this often at least, not in a loop.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// How a connection failed, for the error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Connect,
    Tls,
    Reset,
    /// A FIN in the middle of a response.
    Closed,
    Timeout,
    Mismatched,
}

#[derive(Debug)]
struct RequestFailure {
    kind: FailureKind,
    message: String,
}

impl RequestFailure {
    fn new(kind: FailureKind, message: String) -> Self {
        RequestFailure { kind, message }
    }
}

/// How a connection is ending, once its protocol knows.
#[derive(Debug)]
enum Ending {
    /// Between responses: the server closed it (after saying so, or not), or we did after
    /// the answer because keep-alive is off. Requests still unanswered were never taken up
    /// and are issued again on the next connection.
    Clean,
    Failed(RequestFailure),
}

/// One outstanding request.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When it should have been sent: the schedule with a rate, else the actual send.
    intended: Instant,
    sent: Instant,
    /// Issued in the measured window (after the warm-up).
    counted: bool,
}

/// The run's time line, known once every loop is connected.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub start: Instant,
    /// Requests intended from here on are counted.
    pub measure_start: Instant,
    /// Nothing is issued, nor any answer recorded, from here on.
    pub deadline: Option<Instant>,
}

/// A connection to open again: its index, and not before when (after a failed connect).
#[derive(Debug, Clone, Copy)]
pub(super) struct Reopen {
    pub index: usize,
    pub not_before: Option<Instant>,
}

/// One connection's requests.
pub(super) struct Conn {
    /// Its place among the loop's connections, for the schedule.
    index: usize,
    exchange: ConnExchange,
    /// Requests sent and not yet answered, oldest first (at most `pipeline`).
    pending: VecDeque<Pending>,
    /// Requests issued so far; with a rate, the next one's place in the schedule.
    issued: u64,
    /// Requests issued on this connection (a reopened one starts again from 0).
    issued_here: u64,
    /// The server said it closes after an answer: we wait for its FIN.
    server_closes: bool,
    /// It is closing: nothing more is issued.
    closing: bool,
    /// How it ends, when the protocol knows better than the socket.
    ending: Option<Ending>,
    /// When its connect started, and completed.
    started: Instant,
    connected_at: Option<Instant>,
    /// Its TLS handshake is done (or there is none): requests may go out.
    secured: bool,
    /// An earlier connection of this index ended: this one re-establishes it.
    reopened: bool,
    /// Connects or handshakes that failed in a row (the retry backoff grows with them).
    failed_attempts: u32,
}

impl Conn {
    fn new(index: usize, exchange: ConnExchange, pipeline: usize, tls: bool) -> Self {
        Conn {
            index,
            exchange,
            pending: VecDeque::with_capacity(pipeline),
            issued: 0,
            issued_here: 0,
            server_closes: false,
            closing: false,
            ending: None,
            started: Instant::now(),
            connected_at: None,
            secured: !tls,
            reopened: false,
            failed_attempts: 0,
        }
    }

    /// Ready for a new connection of the same index (its schedule position kept).
    fn reopen(&mut self, tls: bool) {
        self.exchange.reset();
        self.pending.clear();
        self.issued_here = 0;
        self.server_closes = false;
        self.closing = false;
        self.ending = None;
        self.started = Instant::now();
        self.connected_at = None;
        self.secured = !tls;
        self.reopened = true;
    }

    fn fail(&mut self, kind: FailureKind, message: String) {
        self.closing = true;
        if !matches!(self.ending, Some(Ending::Failed(_))) {
            self.ending = Some(Ending::Failed(RequestFailure::new(kind, message)));
        }
    }

    fn counted_pending(&self) -> u64 {
        self.pending.iter().filter(|p| p.counted).count() as u64
    }
}

/// The protocol of one loop, and everything it records.
pub(super) struct Requests<'a> {
    config: &'a LoadConfig,
    /// The first connection number of this loop (seeds its payloads).
    first_number: usize,
    opened: usize,
    /// The longest unfinished response the workload may need held.
    max_pending: usize,
    /// Set when the run starts; before that nothing is issued.
    pub window: Option<Window>,
    pub rate: Option<Rate>,
    pub tally: Tally,
    pub interval: Option<Interval>,
    /// The current second of the measured window (the worker hands it over as it passes).
    pub second: SecondTally,
    /// Counted requests still unanswered.
    pub outstanding: u64,
    /// With `--requests`: how many more this loop may issue after the warm-up.
    pub budget: Option<u64>,
    pub last_answer: Option<Instant>,
    /// Connections that ended and are to be opened again, for the worker.
    pub reopen: Vec<Reopen>,
    /// The index the next `open` is for (a reopen); `None`: a new one.
    pub reopening: Option<usize>,
    /// Sessions of ended connections by index, kept for their reopening (their buffers
    /// and exchange are reused, not allocated again).
    parked: Vec<Option<Conn>>,
}

impl<'a> Requests<'a> {
    /// For `count` connections, numbered from `first_number` in the run.
    pub fn new(
        config: &'a LoadConfig,
        first_number: usize,
        count: usize,
        budget: Option<u64>,
    ) -> Self {
        Requests {
            config,
            first_number,
            opened: 0,
            max_pending: config.workload.exchange(0).max_pending(),
            window: None,
            rate: None,
            tally: Tally::default(),
            interval: None,
            second: SecondTally::new(0),
            outstanding: 0,
            budget,
            last_answer: None,
            reopen: Vec::with_capacity(count),
            reopening: None,
            parked: (0..count).map(|_| None).collect(),
        }
    }

    /// Requests one connection may have outstanding.
    fn depth(&self) -> usize {
        if self.config.keep_alive {
            self.config.pipeline
        } else {
            1
        }
    }

    /// Issues the requests the connection may send now: up to the pipeline depth, and
    /// with a rate only those whose scheduled time has come; never past the end.
    fn issue(&mut self, conn: &mut Conn, out: &mut Output<'_>, now: Instant) {
        let Some(window) = self.window else {
            return;
        };
        // Without keep-alive a connection carries one request.
        if conn.closing || !conn.secured || (!self.config.keep_alive && conn.issued_here > 0) {
            return;
        }
        while conn.pending.len() < self.depth() {
            let intended = match &self.rate {
                Some(rate) => {
                    match rate.slot_time(window.start, rate.slot_of(conn.index, conn.issued)) {
                        Some(at) if at <= now => at,
                        _ => break,
                    }
                }
                None => now,
            };
            if window.deadline.is_some_and(|d| intended >= d) {
                break;
            }
            let counted = intended >= window.measure_start;
            if counted {
                match &mut self.budget {
                    Some(0) => break,
                    Some(left) => *left -= 1,
                    None => {}
                }
                self.tally.sent += 1;
                self.outstanding += 1;
            }
            if self.rate.is_some() {
                let late = now.saturating_duration_since(intended) > LATE_AFTER;
                if counted {
                    let second = now
                        .saturating_duration_since(window.measure_start)
                        .as_secs();
                    self.tally.pace.send(second as usize, late);
                }
                if let Some((_, sent, late_sends)) =
                    self.interval.as_mut().and_then(|i| i.pace.as_mut())
                {
                    *sent += 1;
                    *late_sends += u64::from(late);
                }
            }
            conn.exchange.write_request(out.reply_buf());
            conn.pending.push_back(Pending {
                intended,
                sent: now,
                counted,
            });
            conn.issued += 1;
            conn.issued_here += 1;
            if !self.config.keep_alive {
                break;
            }
        }
    }

    /// Walks `data` through the connection's exchange, completing outstanding requests in
    /// order; returns how many bytes were used (the rest is an unfinished prefix to keep).
    fn check_responses(
        &mut self,
        conn: &mut Conn,
        data: &[u8],
        out: &mut Output<'_>,
        now: Instant,
    ) -> Result<usize, RequestFailure> {
        let mut used = 0;
        while used < data.len() {
            if conn.pending.is_empty() {
                return Err(RequestFailure::new(
                    FailureKind::Mismatched,
                    format!(
                        "the server sent {} bytes nobody asked for",
                        data.len() - used
                    ),
                ));
            }
            match conn.exchange.read_response(&data[used..]) {
                Ok(Progress::NeedMore { used: n }) => return Ok(used + n),
                Ok(Progress::Done { used: n, answer }) => {
                    used += n;
                    // An answer: the frame (request) clock starts again for the next one.
                    out.count_request();
                    self.answered(conn, answer, now);
                    if conn.closing {
                        // Nothing more comes on this connection; what follows is not ours.
                        return Ok(data.len());
                    }
                }
                Err(e) => return Err(RequestFailure::new(FailureKind::Mismatched, e.0)),
            }
        }
        Ok(used)
    }

    /// The oldest request got `answer`: recorded; the connection ends cleanly after it
    /// if the server said it closes, or keep-alive is off.
    fn answered(&mut self, conn: &mut Conn, answer: Answer, now: Instant) {
        let Some(request) = conn.pending.pop_front() else {
            return;
        };
        self.record(request, answer, now);
        // Without reconnecting, a server that closes is an error when it does (as it
        // always was), whatever it said before.
        conn.server_closes |= answer.last && self.config.reconnect;
        if conn.server_closes || !self.config.keep_alive {
            conn.closing = true;
            conn.ending.get_or_insert(Ending::Clean);
        }
    }

    fn record(&mut self, request: Pending, answer: Answer, now: Instant) {
        if request.counted {
            self.tally.completed += 1;
            self.outstanding -= 1;
            self.last_answer = Some(now);
            let uncorrected = now.saturating_duration_since(request.sent);
            let corrected = now.saturating_duration_since(request.intended);
            let open_loop = self.rate.is_some();
            self.tally
                .record(corrected, if open_loop { uncorrected } else { corrected });
            self.second.record(corrected);
            self.tally.count_status(answer.status);
            if !answer.accepted {
                let status = answer.status;
                self.second.errors += 1;
                self.tally.error(
                    |e| &mut e.status,
                    || match status {
                        0 => "the server answered with an error".into(),
                        code => format!("the server answered {code}, not an expected status"),
                    },
                );
            }
        }
        if let Some(interval) = &mut self.interval {
            interval.completed += 1;
            interval.errors += u64::from(!answer.accepted);
            interval.latency.saturating_record(
                now.saturating_duration_since(request.intended).as_micros() as u64,
            );
        }
    }

    /// Why a connection that the protocol did not fail itself ended.
    fn failure_of(&self, conn: &Conn, reason: CloseReason, error: Option<Failure>) -> Ending {
        let target = &self.config.endpoint;
        match error {
            Some(Failure {
                op: "connect",
                error,
            }) => {
                let message = if error.kind() == io::ErrorKind::TimedOut {
                    format!(
                        "cannot connect to {target}: timed out after {:?}",
                        self.config.connect_timeout
                    )
                } else {
                    format!("cannot connect to {target}: {error}")
                };
                Ending::Failed(RequestFailure::new(FailureKind::Connect, message))
            }
            Some(Failure { error, .. })
                if !conn.secured && error.kind() == io::ErrorKind::InvalidData =>
            {
                Ending::Failed(RequestFailure::new(
                    FailureKind::Tls,
                    format!("TLS handshake with {target} failed: {error}"),
                ))
            }
            Some(Failure { op, error }) => Ending::Failed(RequestFailure::new(
                FailureKind::Reset,
                format!("{op} failed: {error}"),
            )),
            None if reason == CloseReason::InputTooLarge => Ending::Failed(RequestFailure::new(
                FailureKind::Mismatched,
                format!("an unfinished response passed {} bytes", self.max_pending),
            )),
            None => Ending::Failed(RequestFailure::new(
                FailureKind::Reset,
                format!(
                    "closed ({}) with {} requests unanswered",
                    reason.name(),
                    conn.pending.len()
                ),
            )),
        }
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Whether a connection that ended now is to be opened again.
    fn reopens(&self, now: Instant) -> bool {
        self.config.reconnect
            && self
                .window
                .is_some_and(|w| w.deadline.is_none_or(|d| now < d))
            && self.budget != Some(0)
    }
}

impl Protocol for Requests<'_> {
    type Session = Conn;

    fn open(&mut self, _: &Peer, _: &mut Output<'_>) -> Conn {
        let tls = self.config.endpoint.tls.is_some();
        let index = match self.reopening.take() {
            Some(index) => index,
            None => {
                self.opened += 1;
                self.opened - 1
            }
        };
        if let Some(mut conn) = self.parked.get_mut(index).and_then(Option::take) {
            conn.reopen(tls);
            return conn;
        }
        let exchange = self
            .config
            .workload
            .exchange((self.first_number + index) as u64);
        Conn::new(index, exchange, self.depth(), tls)
    }

    fn on_input(&mut self, conn: &mut Conn, input: &[u8], out: &mut Output<'_>) -> (usize, Flow) {
        let now = Instant::now();
        if self
            .window
            .is_some_and(|w| w.deadline.is_some_and(|d| now >= d))
        {
            // Past the end: what arrives now is reported as in flight, not as done.
            return (input.len(), Flow::Continue);
        }
        match self.check_responses(conn, input, out, now) {
            Ok(used) if conn.closing => {
                // Keep-alive is off and the server keeps the connection: close it
                // ourselves. A server that said it closes is left to do so (its side then
                // holds TIME_WAIT, not ours).
                let ours = !conn.server_closes && conn.pending.is_empty();
                (used, if ours { Flow::Close } else { Flow::Continue })
            }
            Ok(used) => {
                self.issue(conn, out, now);
                (used, Flow::Continue)
            }
            Err(failure) => {
                conn.fail(failure.kind, failure.message);
                (input.len(), Flow::Close)
            }
        }
    }

    const STREAMS: bool = true;

    /// Connected, poked at the start or when a scheduled slot came, or written out: the
    /// requests now due go out.
    fn on_drained(&mut self, conn: &mut Conn, out: &mut Output<'_>) -> Flow {
        if !conn.closing && conn.pending.len() < self.depth() {
            self.issue(conn, out, Instant::now());
        }
        Flow::Continue
    }

    /// A request is unanswered, or the server said it closes and has not yet: the frame
    /// timeout is the request timeout.
    fn mid_frame(&self, conn: &Conn) -> bool {
        !conn.pending.is_empty() || matches!(conn.ending, Some(Ending::Clean))
    }

    fn on_eof(&mut self, conn: &mut Conn, leftover: &[u8], _: &mut Output<'_>) {
        let now = Instant::now();
        let measuring = self
            .window
            .is_some_and(|w| w.deadline.is_none_or(|d| now < d));
        conn.closing = true;
        if !measuring {
            // Past the end: answers are no longer read, so nothing can be judged.
            conn.ending.get_or_insert(Ending::Clean);
            return;
        }
        if leftover.is_empty() {
            // A body that ends at the close is complete now.
            if let Some(answer) = conn.exchange.finish_at_eof() {
                self.answered(conn, answer, now);
            }
        }
        if !leftover.is_empty() || conn.exchange.mid_response() {
            conn.fail(
                FailureKind::Closed,
                format!(
                    "the server closed the connection in the middle of a response ({} requests unanswered)",
                    conn.pending.len()
                ),
            );
        } else if !self.config.reconnect && conn.ending.is_none() {
            // Without reconnecting, a server that closes ends that connection's part of
            // the run: an error, as it always was.
            let message = if conn.pending.is_empty() {
                "the server closed the connection".to_string()
            } else {
                format!(
                    "the server closed the connection with {} requests unanswered",
                    conn.pending.len()
                )
            };
            conn.fail(FailureKind::Reset, message);
        } else {
            conn.ending.get_or_insert(Ending::Clean);
        }
    }

    fn on_timeout(&mut self, conn: &mut Conn, _: Timeout, _: &mut Output<'_>) {
        if matches!(conn.ending, Some(Ending::Clean)) && conn.pending.is_empty() {
            // It said it would close and did not: close it ourselves; nothing was lost.
            return;
        }
        let message = format!("no answer within {:?}", self.timeout());
        conn.fail(FailureKind::Timeout, message);
    }

    fn max_pending_input(&self) -> usize {
        self.max_pending
    }
}

impl Client for Requests<'_> {
    /// Ends a connection: counts what it ended as (a reconnect, or an error of its kind,
    /// with the counted requests lost with it) and asks for it to be opened again.
    fn on_ended(&mut self, ended: Ended<Conn>) {
        let mut conn = ended.session;
        let now = Instant::now();
        // A failed connect is what it is, whatever the protocol thought.
        let connect_failed = matches!(&ended.error, Some(Failure { op: "connect", .. }));
        let ending = match conn.ending.take() {
            Some(ending) if !connect_failed => ending,
            _ => self.failure_of(&conn, ended.reason, ended.error),
        };
        let lost = conn.counted_pending();
        let mut not_before = None;
        // A server that answers wrongly or not at all would do so on a new connection
        // too: those connections are not opened again (nor would a run with --requests
        // against a silent server ever end).
        let mut reopen = true;
        match ending {
            Ending::Clean => {
                // Never taken up by the server: issued again on the next connection.
                self.tally.sent -= lost;
                self.outstanding -= lost;
                if let Some(budget) = &mut self.budget {
                    *budget += lost;
                }
                conn.failed_attempts = 0;
            }
            Ending::Failed(failure) => {
                let established = !matches!(failure.kind, FailureKind::Connect | FailureKind::Tls);
                if established {
                    self.tally.failed += lost;
                    self.outstanding -= lost;
                    self.tally.lost += 1;
                    conn.failed_attempts = 0;
                } else {
                    // Nothing was sent on it. Retried after a wait that grows.
                    let backoff = RETRY_BACKOFF * 2u32.saturating_pow(conn.failed_attempts);
                    not_before = Some(now + backoff.min(MAX_RETRY_BACKOFF));
                    conn.failed_attempts = conn.failed_attempts.saturating_add(1);
                    self.tally.sent -= lost;
                    self.outstanding -= lost;
                    if let Some(budget) = &mut self.budget {
                        *budget += lost;
                    }
                }
                reopen = !matches!(failure.kind, FailureKind::Timeout | FailureKind::Mismatched);
                let kind: fn(&mut ErrorCounts) -> &mut u64 = match failure.kind {
                    FailureKind::Connect => |e| &mut e.connect,
                    FailureKind::Tls => |e| &mut e.tls,
                    FailureKind::Reset => |e| &mut e.reset,
                    FailureKind::Closed => |e| &mut e.closed,
                    FailureKind::Timeout => |e| &mut e.timeout,
                    FailureKind::Mismatched => |e| &mut e.mismatched,
                };
                log::debug!("connection {}: {}", conn.index, failure.message);
                self.tally.error(kind, || failure.message);
                self.second.errors += 1;
                if let Some(interval) = &mut self.interval {
                    interval.errors += 1;
                }
            }
        }
        if reopen && self.reopens(now) {
            self.reopen.push(Reopen {
                index: conn.index,
                not_before,
            });
        }
        if let Some(slot) = self.parked.get_mut(conn.index) {
            *slot = Some(conn);
        }
    }

    fn on_established(&mut self, conn: &mut Conn, step: Established) {
        let now = Instant::now();
        match step {
            Established::Connected => {
                conn.connected_at = Some(now);
                self.tally.connect_time.saturating_record(
                    now.saturating_duration_since(conn.started).as_micros() as u64,
                );
                // Counted, like requests, from the start of the measured window.
                if conn.reopened && self.window.is_some_and(|w| now >= w.measure_start) {
                    self.tally.reconnects += 1;
                }
                if conn.secured {
                    conn.failed_attempts = 0;
                }
            }
            Established::Secured { resumed } => {
                conn.secured = true;
                conn.failed_attempts = 0;
                let since = conn.connected_at.unwrap_or(conn.started);
                self.tally
                    .tls_handshake
                    .saturating_record(now.saturating_duration_since(since).as_micros() as u64);
                self.tally.tls_resumed += u64::from(resumed);
            }
        }
    }
}
