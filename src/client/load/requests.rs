//! What one loop's connections send and how their answers are checked and recorded, as a
//! client protocol: requests go out as the pipeline (and, with a rate, the schedule)
//! allows, every response is checked by the connection's exchange as it arrives, and
//! latencies and errors go to the loop's tally. No allocation per request.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use super::config::LoadConfig;
use super::rate::Rate;
use crate::client::driver::Client;
use crate::client::report::{ErrorCounts, Interval, Tally};
use crate::client::workload::{ConnExchange, Exchange, Progress};
use crate::connection::{CloseReason, Ended, Failure};
use crate::net::Peer;
use crate::protocol::{Flow, Output, Protocol, Timeout};

/// How a connection failed, for the error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Reset,
    Timeout,
    Mismatched,
}

#[derive(Debug)]
struct RequestFailure {
    kind: FailureKind,
    message: String,
}

impl RequestFailure {
    fn reset(message: String) -> Self {
        RequestFailure {
            kind: FailureKind::Reset,
            message,
        }
    }

    fn mismatched(message: String) -> Self {
        RequestFailure {
            kind: FailureKind::Mismatched,
            message,
        }
    }
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

/// One connection's requests.
pub(super) struct Conn {
    /// Its place among the loop's connections, for the schedule.
    index: usize,
    exchange: ConnExchange,
    /// Requests sent and not yet answered, oldest first (at most `pipeline`).
    pending: VecDeque<Pending>,
    /// Requests issued so far; with a rate, the next one's place in the schedule.
    issued: u64,
    /// It is closing: nothing more is issued.
    closing: bool,
    /// Why it failed, when the protocol knows better than the socket.
    failure: Option<RequestFailure>,
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
    /// Counted requests still unanswered.
    pub outstanding: u64,
    /// With `--requests`: how many more this loop may issue after the warm-up.
    pub budget: Option<u64>,
    pub last_answer: Option<Instant>,
}

impl<'a> Requests<'a> {
    pub fn new(config: &'a LoadConfig, first_number: usize, budget: Option<u64>) -> Self {
        Requests {
            config,
            first_number,
            opened: 0,
            max_pending: config.workload.exchange(0).max_pending(),
            window: None,
            rate: None,
            tally: Tally::default(),
            interval: None,
            outstanding: 0,
            budget,
            last_answer: None,
        }
    }

    /// Issues the requests the connection may send now: up to the pipeline depth, and
    /// with a rate only those whose scheduled time has come; never past the end.
    fn issue(&mut self, conn: &mut Conn, out: &mut Output<'_>, now: Instant) {
        let Some(window) = self.window else {
            return;
        };
        while conn.pending.len() < self.config.pipeline {
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
            conn.exchange.write_request(out.reply_buf());
            conn.pending.push_back(Pending {
                intended,
                sent: now,
                counted,
            });
            conn.issued += 1;
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
            let Some(&request) = conn.pending.front() else {
                return Err(RequestFailure::mismatched(format!(
                    "the server sent {} bytes nobody asked for",
                    data.len() - used
                )));
            };
            match conn.exchange.read_response(&data[used..]) {
                Ok(Progress::NeedMore { used: n }) => return Ok(used + n),
                Ok(Progress::Done { used: n, accepted }) => {
                    used += n;
                    conn.pending.pop_front();
                    // An answer: the frame (request) clock starts again for the next one.
                    out.count_request();
                    self.record(request, accepted, now);
                }
                Err(e) => return Err(RequestFailure::mismatched(e.0)),
            }
        }
        Ok(used)
    }

    fn record(&mut self, request: Pending, accepted: bool, now: Instant) {
        if request.counted {
            self.tally.completed += 1;
            self.outstanding -= 1;
            self.last_answer = Some(now);
            let uncorrected = now.saturating_duration_since(request.sent);
            let corrected = now.saturating_duration_since(request.intended);
            let open_loop = self.rate.is_some();
            self.tally
                .record(corrected, if open_loop { uncorrected } else { corrected });
            if !accepted {
                self.tally.error(
                    |e| &mut e.status,
                    || "the server answered with a failure status".into(),
                );
            }
        }
        if let Some(interval) = &mut self.interval {
            interval.completed += 1;
            interval.errors += u64::from(!accepted);
            interval.latency.saturating_record(
                now.saturating_duration_since(request.intended).as_micros() as u64,
            );
        }
    }

    /// Why a connection that the protocol did not fail itself ended.
    fn failure_of(
        &self,
        conn: &Conn,
        reason: CloseReason,
        error: Option<Failure>,
    ) -> RequestFailure {
        match error {
            Some(Failure { op, error }) => RequestFailure::reset(format!("{op} failed: {error}")),
            None if reason == CloseReason::InputTooLarge => RequestFailure::mismatched(format!(
                "an unfinished response passed {} bytes",
                self.max_pending
            )),
            None => RequestFailure::reset(format!(
                "closed ({}) with {} requests unanswered",
                reason.name(),
                conn.pending.len()
            )),
        }
    }

    /// A failed connect: counted, and nothing was lost with it.
    fn connect_failed(&mut self, error: &io::Error) {
        let config = self.config;
        self.tally.error(
            |e| &mut e.connect,
            || {
                if error.kind() == io::ErrorKind::TimedOut {
                    format!(
                        "cannot connect to {}: timed out after {:?}",
                        config.addr, config.connect_timeout
                    )
                } else {
                    format!("cannot connect to {}: {error}", config.addr)
                }
            },
        );
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }
}

impl Protocol for Requests<'_> {
    type Session = Conn;

    fn open(&mut self, _: &Peer, _: &mut Output<'_>) -> Conn {
        let index = self.opened;
        self.opened += 1;
        Conn {
            index,
            exchange: self
                .config
                .workload
                .exchange((self.first_number + index) as u64),
            pending: VecDeque::with_capacity(self.config.pipeline),
            issued: 0,
            closing: false,
            failure: None,
        }
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
            Ok(used) => {
                self.issue(conn, out, now);
                (used, Flow::Continue)
            }
            Err(failure) => {
                conn.failure = Some(failure);
                conn.closing = true;
                (input.len(), Flow::Close)
            }
        }
    }

    const STREAMS: bool = true;

    /// Connected, poked at the start or when a scheduled slot came, or written out: the
    /// requests now due go out.
    fn on_drained(&mut self, conn: &mut Conn, out: &mut Output<'_>) -> Flow {
        if !conn.closing && conn.pending.len() < self.config.pipeline {
            self.issue(conn, out, Instant::now());
        }
        Flow::Continue
    }

    /// A request is unanswered: the frame timeout is the request timeout.
    fn mid_frame(&self, conn: &Conn) -> bool {
        !conn.pending.is_empty()
    }

    fn on_eof(&mut self, conn: &mut Conn, _: &[u8], _: &mut Output<'_>) {
        conn.closing = true;
        let message = if conn.pending.is_empty() {
            "the server closed the connection".to_string()
        } else {
            format!(
                "the server closed the connection with {} requests unanswered",
                conn.pending.len()
            )
        };
        conn.failure.get_or_insert(RequestFailure::reset(message));
    }

    fn on_timeout(&mut self, conn: &mut Conn, _: Timeout, _: &mut Output<'_>) {
        conn.closing = true;
        let message = format!("no answer within {:?}", self.timeout());
        conn.failure.get_or_insert(RequestFailure {
            kind: FailureKind::Timeout,
            message,
        });
    }

    fn max_pending_input(&self) -> usize {
        self.max_pending
    }
}

impl Client for Requests<'_> {
    /// Ends a connection: counts the error and the counted requests lost with it.
    fn on_ended(&mut self, ended: Ended<Conn>) {
        let mut conn = ended.session;
        if let Some(Failure {
            op: "connect",
            error,
        }) = &ended.error
        {
            return self.connect_failed(error);
        }
        let failure = match conn.failure.take() {
            Some(failure) => failure,
            None => self.failure_of(&conn, ended.reason, ended.error),
        };
        let lost = conn.pending.iter().filter(|p| p.counted).count() as u64;
        self.tally.failed += lost;
        self.outstanding -= lost;
        self.tally.lost += 1;
        let kind: fn(&mut ErrorCounts) -> &mut u64 = match failure.kind {
            FailureKind::Reset => |e| &mut e.reset,
            FailureKind::Timeout => |e| &mut e.timeout,
            FailureKind::Mismatched => |e| &mut e.mismatched,
        };
        log::debug!("connection {}: {}", conn.index, failure.message);
        self.tally.error(kind, || failure.message);
        if let Some(interval) = &mut self.interval {
            interval.errors += 1;
        }
    }
}
