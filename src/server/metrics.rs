//! `--metrics ADDR`: the Prometheus text exposition of a server's counters, encoded by
//! `prometheus-client`, served on a listener of its own by the first worker's loop. A
//! scrape is an HTTP/1.1 `GET /metrics` on a connection of the loop's connection core
//! (reads, writes, timeouts and the lingering close are the same as for any protocol),
//! answered once every worker has sent its counters: the other loops are asked as
//! `ServerHandle::stats` asks, and wake this one when they have answered, so nothing
//! waits and no lock is touched per event. Loop turns are a counter per turn; busy time
//! is the loop thread's CPU time, read per scrape.

use std::io;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use httparse::Status;
use mio::net::TcpListener;
use mio::{Interest, Token};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry, Unit};
use slab::Slab;

use super::{Server, ServerHandle, METRICS, SCRAPE_TOKENS};
use crate::clock::Tick;
use crate::config::{Limits, Timeouts};
use crate::connection::{CloseReason, Connection, Readiness, Turn};
use crate::net::{Peer, Stream};
use crate::outbound::Reply;
use crate::protocol::{Flow, Output, Produced, Protocol, Timeout};
use crate::stats::Stats;

/// The `Content-Type` of what is served: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A scrape request's head larger than this is not a scraper's: 431 and close.
const MAX_REQUEST: usize = 8 * 1024;
/// Scrape connections open at once; past this, new ones are closed at once (a scraper
/// needs one, a few people with curl a few more).
const MAX_SCRAPES: usize = 64;
/// How long the other workers have to send their counters: past it the scrape is answered
/// with those that did (a worker that cannot answer in a second is stuck, and saying so
/// beats a scrape that times out).
const COLLECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A scrape connection's timeouts: a scraper sends its request at once and reads the
/// answer at once.
const SCRAPE_TIMEOUTS: Timeouts = Timeouts {
    idle: Some(Duration::from_secs(30)),
    write: Some(Duration::from_secs(10)),
    frame: Some(Duration::from_secs(10)),
    linger: Duration::from_secs(2),
    connect: None,
};

/// The HTTP side of a scrape: a request head parsed by `httparse`; `GET /metrics` is
/// marked for an answer, anything else answered at once and closed.
#[derive(Debug, Default)]
pub struct Scrape;

/// One scrape connection.
#[derive(Debug)]
pub struct ScrapeSession {
    peer: Peer,
    /// Asked for the metrics, not answered yet.
    waiting: bool,
    /// Its request was read: whatever follows is ignored (it is closed after the answer).
    asked: bool,
}

fn simple(status: &str) -> Vec<u8> {
    let body = format!("{status}\n");
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Protocol for Scrape {
    type Session = ScrapeSession;

    fn open(&mut self, peer: &Peer, _out: &mut Output<'_>) -> ScrapeSession {
        ScrapeSession {
            peer: *peer,
            waiting: false,
            asked: false,
        }
    }

    fn on_input(
        &mut self,
        session: &mut ScrapeSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        if session.asked {
            return (input.len(), Flow::Continue);
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut fields);
        let answer = match request.parse(input) {
            Ok(Status::Partial) if input.len() <= MAX_REQUEST => return (0, Flow::Continue),
            Ok(Status::Complete(n)) if n <= MAX_REQUEST => {
                let path = request.path.unwrap_or_default();
                let path = path.split('?').next().unwrap_or_default();
                match (request.method, path) {
                    (Some("GET"), "/metrics") => {
                        session.asked = true;
                        session.waiting = true;
                        out.count_request();
                        return (input.len(), Flow::Continue);
                    }
                    (Some("GET"), _) => simple("404 Not Found"),
                    _ => simple("405 Method Not Allowed"),
                }
            }
            Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                simple("431 Request Header Fields Too Large")
            }
            Err(_) => simple("400 Bad Request"),
        };
        log::debug!("{}: metrics: not a scrape", session.peer);
        out.send(&answer);
        (input.len(), Flow::Close)
    }

    fn on_timeout(&mut self, _session: &mut ScrapeSession, _kind: Timeout, out: &mut Output<'_>) {
        out.send(&simple("408 Request Timeout"));
    }

    fn max_pending_input(&self) -> usize {
        MAX_REQUEST
    }
}

/// Counters asked of the other workers for one scrape.
struct Collecting {
    /// This loop's, taken when the scrape came.
    own: Stats,
    /// Each other worker's reply channel, and its answer once it came.
    replies: Vec<(mpsc::Receiver<Stats>, Option<Stats>)>,
    deadline: Tick,
}

/// A worker's CPU time at the previous scrape, for its busy fraction since.
#[derive(Debug, Clone, Copy)]
struct Sample {
    cpu: Duration,
    at: Instant,
}

/// The metrics side of the first worker's loop.
pub(super) struct Metrics {
    listener: TcpListener,
    conns: Slab<Connection<ScrapeSession>>,
    protocol: Scrape,
    produced: Produced,
    /// The scrape connections' own traffic, kept out of the server's counters.
    stats: Stats,
    limits: Limits,
    next_id: u64,
    /// The other workers, asked for their counters per scrape.
    peers: Vec<ServerHandle>,
    collecting: Option<Collecting>,
    /// Per worker (this one first).
    previous: Vec<Sample>,
}

/// Whether the snapshot comes with UDP counters (`--udp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    pub udp: bool,
}

impl<P: Protocol, T: crate::net::Accepted> Server<P, T> {
    /// Serves the metrics on `listener` from this loop (the first worker's).
    pub fn serve_metrics(&mut self, listener: std::net::TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        self.poll
            .registry()
            .register(&mut listener, METRICS, Interest::READABLE)?;
        let started = Sample {
            cpu: Duration::ZERO,
            at: Instant::now(),
        };
        self.metrics = Some(Box::new(Metrics {
            listener,
            conns: Slab::new(),
            protocol: Scrape,
            produced: Produced::default(),
            stats: Stats::default(),
            limits: Limits {
                max_connections: MAX_SCRAPES,
                ..Limits::default()
            },
            next_id: 0,
            peers: Vec::new(),
            collecting: None,
            previous: vec![started],
        }));
        Ok(())
    }

    /// The other workers, whose counters the metrics include (per worker and in total).
    pub fn add_metric_peers(&mut self, peers: Vec<ServerHandle>) {
        if let Some(metrics) = &mut self.metrics {
            let started = metrics.previous[0];
            metrics.previous.resize(1 + peers.len(), started);
            metrics.peers = peers;
        }
    }

    /// Accepts scrapers until the queue is empty.
    #[cold]
    pub(super) fn metrics_accept(&mut self, now: Tick) {
        loop {
            let Some(metrics) = &mut self.metrics else {
                return;
            };
            let (stream, addr) = match metrics.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if super::is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // Rare (EMFILE): the scraper retries at its next interval.
                    log::warn!("metrics: accept failed: {e}");
                    return;
                }
            };
            if metrics.conns.len() >= MAX_SCRAPES {
                log::debug!("metrics: refusing {addr}: {MAX_SCRAPES} scrapes open");
                continue; // dropped: closed
            }
            let mut stream = Stream::Tcp(stream);
            let slot = metrics.conns.vacant_key();
            let peer = Peer::Tcp(addr);
            if !super::register_accepted(&self.poll, &mut stream, SCRAPE_TOKENS.start + slot, &peer)
            {
                continue;
            }
            let Some(metrics) = &mut self.metrics else {
                return;
            };
            let session = metrics.protocol.open(&peer, &mut metrics.produced.output());
            metrics.next_id += 1;
            metrics
                .conns
                .insert(Connection::new(stream, peer, metrics.next_id, session, now));
            self.settle_scrape(slot, now);
        }
    }

    /// Calls `f` with scrape connection `slot` (if it is there and is `id`, when given)
    /// and what it borrows from the loop for a turn.
    fn with_scrape<R>(
        &mut self,
        slot: usize,
        id: Option<u64>,
        now: Tick,
        f: impl FnOnce(&mut Connection<ScrapeSession>, &mut Turn<'_, Scrape>) -> R,
    ) -> Option<R> {
        let Metrics {
            conns,
            protocol,
            produced,
            stats,
            limits,
            ..
        } = &mut **self.metrics.as_mut()?;
        // A stale event or timer finds nothing, or a successor it does not name.
        let conn = conns
            .get_mut(slot)
            .filter(|c| id.is_none_or(|id| c.id() == id))?;
        let mut turn = Turn {
            protocol,
            produced,
            read_buf: &mut self.read_buf,
            limits,
            timeouts: &SCRAPE_TIMEOUTS,
            stats,
            now,
        };
        Some(f(conn, &mut turn))
    }

    /// A readiness event of a scrape connection.
    #[cold]
    pub(super) fn scrape_event(&mut self, slot: usize, ready: Readiness, now: Tick) {
        let asked = self.with_scrape(slot, None, now, |conn, turn| {
            conn.on_event(turn, ready);
            conn.session().waiting
        });
        let Some(asked) = asked else {
            return;
        };
        self.settle_scrape(slot, now);
        if asked {
            self.begin_collecting(now);
        }
    }

    /// A scrape connection's timer went off.
    #[cold]
    pub(super) fn scrape_timer(&mut self, slot: usize, id: u64, at: Tick, now: Tick) {
        match self.with_scrape(slot, Some(id), now, |conn, turn| conn.on_timer(at, turn)) {
            None => {}
            Some(Some(later)) => self.schedule.arm(later, SCRAPE_TOKENS.start + slot, id),
            Some(None) => self.settle_scrape(slot, now),
        }
    }

    /// Settles a scrape connection as `settle` does a connection; one that is finished is
    /// removed at once (a stale event for its slot finds nothing, or a successor with
    /// nothing to read: harmless).
    fn settle_scrape(&mut self, slot: usize, now: Tick) {
        let Some(metrics) = &mut self.metrics else {
            return;
        };
        let Some(conn) = metrics.conns.get_mut(slot) else {
            return;
        };
        let token = Token(SCRAPE_TOKENS.start + slot);
        let Some(settled) = conn.settle(
            self.poll.registry(),
            token,
            &metrics.limits,
            &SCRAPE_TIMEOUTS,
            &mut metrics.stats,
            now,
        ) else {
            return;
        };
        if settled.finished {
            let ended = metrics.conns.remove(slot).into_ended();
            log::debug!("metrics: {} closed ({})", ended.peer, ended.reason.name());
            return;
        }
        if let Some(at) = settled.timer {
            self.schedule.arm(at, token.0, conn.id());
        }
    }

    /// A scrape arrived: asks every other worker for its counters, unless that is under
    /// way already (the answer then serves this scrape too).
    fn begin_collecting(&mut self, now: Tick) {
        let own = self.snapshot();
        let control = self.control.clone();
        let Some(metrics) = &mut self.metrics else {
            return;
        };
        if metrics.collecting.is_some() {
            return;
        }
        let replies = metrics
            .peers
            .iter()
            .map(|peer| {
                let (tx, rx) = mpsc::channel();
                if peer.request_stats(tx, Some(Arc::clone(&control))).is_none() {
                    log::debug!("metrics: a worker cannot be asked for its counters");
                }
                (rx, None)
            })
            .collect();
        let deadline = now + COLLECT_TIMEOUT;
        metrics.collecting = Some(Collecting {
            own,
            replies,
            deadline,
        });
        self.schedule.arm(deadline, METRICS.0, 0);
        self.finish_collecting(now, false);
    }

    /// Takes the answers that came; once every worker's is in (or `give_up`), answers
    /// every scrape that waits.
    #[cold]
    pub(super) fn finish_collecting(&mut self, now: Tick, give_up: bool) {
        let shown = self.shown();
        let rooms = self.protocol.group_sizes();
        let Some(metrics) = &mut self.metrics else {
            return;
        };
        let Some(collecting) = &mut metrics.collecting else {
            return;
        };
        if give_up && now < collecting.deadline {
            return; // the timer of an earlier scrape
        }
        for (rx, got) in &mut collecting.replies {
            if got.is_none() {
                *got = rx.try_recv().ok();
            }
        }
        let missing = collecting
            .replies
            .iter()
            .filter(|(_, g)| g.is_none())
            .count();
        if missing > 0 && !give_up {
            return;
        }
        if missing > 0 {
            log::warn!(
                "metrics: {missing} worker(s) did not send their counters in {COLLECT_TIMEOUT:?}"
            );
        }
        let Some(collecting) = metrics.collecting.take() else {
            return;
        };
        let workers: Vec<Option<Stats>> = std::iter::once(Some(collecting.own))
            .chain(collecting.replies.into_iter().map(|(_, got)| got))
            .collect();
        let at = Instant::now();
        let busy: Vec<Option<f64>> = workers
            .iter()
            .zip(&mut metrics.previous)
            .map(|(stats, previous)| {
                let stats = stats.as_ref()?;
                let wall = at.saturating_duration_since(previous.at).as_secs_f64();
                let cpu = stats.cpu.saturating_sub(previous.cpu).as_secs_f64();
                *previous = Sample { cpu: stats.cpu, at };
                (wall > 0.0).then(|| (cpu / wall).min(1.0))
            })
            .collect();
        let text = encode(&workers, &busy, &rooms, shown);
        let mut head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            text.len()
        )
        .into_bytes();
        head.extend_from_slice(text.as_bytes());
        let answer: Arc<[u8]> = Arc::from(head);
        let waiting: Vec<usize> = metrics
            .conns
            .iter()
            .filter(|(_, conn)| conn.session().waiting)
            .map(|(slot, _)| slot)
            .collect();
        for slot in waiting {
            let Some(metrics) = &mut self.metrics else {
                return;
            };
            let conn = &mut metrics.conns[slot];
            conn.session_mut().waiting = false;
            let mut reply = Reply::default();
            reply.push_shared(answer.clone());
            conn.send_reply(&mut reply, &mut metrics.stats, now);
            conn.finish(CloseReason::Protocol);
            self.settle_scrape(slot, now);
        }
    }

    /// What the snapshot includes besides the connection counters.
    fn shown(&self) -> Shown {
        Shown {
            udp: self.udp.is_some(),
        }
    }

    /// The server is shutting down: scrapes end with it.
    pub(super) fn close_metrics(&mut self) {
        if let Some(mut metrics) = self.metrics.take() {
            let _ = self.poll.registry().deregister(&mut metrics.listener);
        }
    }
}

/// Every metric a counter of `Stats` gives, with its name (under `multiconn_`), help, and
/// unit where it has one.
struct Spec {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: Kind,
    value: fn(&Stats) -> u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

const SPECS: &[Spec] = &[
    Spec {
        name: "connections_open",
        help: "Connections open now",
        unit: None,
        kind: Kind::Gauge,
        value: |s| s.open as u64,
    },
    Spec {
        name: "connections_accepted",
        help: "Connections accepted",
        unit: None,
        kind: Kind::Counter,
        value: |s| s.accepted,
    },
    Spec {
        name: "connections_refused",
        help: "Connections accepted and closed at once because the server was full",
        unit: None,
        kind: Kind::Counter,
        value: |s| s.refused,
    },
    Spec {
        name: "requests",
        help: "Requests served (messages, for echo and chat)",
        unit: None,
        kind: Kind::Counter,
        value: |s| s.requests,
    },
    Spec {
        name: "received",
        help: "Bytes read from connections",
        unit: Some(Unit::Bytes),
        kind: Kind::Counter,
        value: |s| s.bytes_in,
    },
    Spec {
        name: "sent",
        help: "Bytes written to connections",
        unit: Some(Unit::Bytes),
        kind: Kind::Counter,
        value: |s| s.bytes_out,
    },
    Spec {
        name: "accept_errors",
        help: "Accept errors such as EMFILE",
        unit: None,
        kind: Kind::Counter,
        value: |s| s.accept_errors,
    },
    Spec {
        name: "outbound_peak",
        help: "The most bytes any connection had queued for its peer",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |s| s.peak_outbound as u64,
    },
    Spec {
        name: "loop_turns",
        help: "Times the event loop came back from epoll_wait",
        unit: None,
        kind: Kind::Counter,
        value: |s| s.turns,
    },
];

const UDP_SPECS: &[Spec] = &[
    Spec {
        name: "udp_datagrams_received",
        help: "UDP echo: datagrams received",
        unit: None,
        kind: Kind::Counter,
        value: |s| s.datagrams_in,
    },
    Spec {
        name: "udp_datagrams_sent",
        help: "UDP echo: datagrams echoed",
        unit: None,
        kind: Kind::Counter,
        value: |s| s.datagrams_out,
    },
    Spec {
        name: "udp_datagrams_dropped",
        help: "UDP echo: echoes dropped because the send queue was full",
        unit: None,
        kind: Kind::Counter,
        value: |s| s.datagrams_dropped,
    },
];

type Labels = Vec<(String, String)>;

fn worker_label(i: usize) -> Labels {
    vec![("worker".to_string(), (i + 1).to_string())]
}

fn put(registry: &mut Registry, name: &str, help: &str, unit: Option<&Unit>, metric: impl Metric) {
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit.clone(), metric),
        None => registry.register(name, help, metric),
    }
}

/// One metric in total (`multiconn_NAME`) and per worker (`multiconn_worker_NAME` with a
/// `worker` label), so that neither is counted twice by a `sum()`.
fn register(registry: &mut Registry, spec: &Spec, workers: &[Option<Stats>]) {
    let answered = || {
        workers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?)))
    };
    let total: u64 = answered().map(|(_, s)| (spec.value)(s)).sum();
    let worker_help = format!("{}, per worker", spec.help);
    let unit = spec.unit.as_ref();
    match spec.kind {
        Kind::Counter => {
            let counter = Counter::<u64>::default();
            counter.inc_by(total);
            put(registry, spec.name, spec.help, unit, counter);
            let family = Family::<Labels, Counter>::default();
            for (i, stats) in answered() {
                family
                    .get_or_create(&worker_label(i))
                    .inc_by((spec.value)(stats));
            }
            let sub = registry.sub_registry_with_prefix("worker");
            put(sub, spec.name, &worker_help, unit, family);
        }
        Kind::Gauge => {
            let gauge = Gauge::<i64>::default();
            let total = if spec.name == "outbound_peak" {
                answered().map(|(_, s)| (spec.value)(s)).max().unwrap_or(0)
            } else {
                total
            };
            gauge.set(i64::try_from(total).unwrap_or(i64::MAX));
            put(registry, spec.name, spec.help, unit, gauge);
            let family = Family::<Labels, Gauge>::default();
            for (i, stats) in answered() {
                let value = i64::try_from((spec.value)(stats)).unwrap_or(i64::MAX);
                family.get_or_create(&worker_label(i)).set(value);
            }
            let sub = registry.sub_registry_with_prefix("worker");
            put(sub, spec.name, &worker_help, unit, family);
        }
    }
}

/// The exposition of `workers`' counters (this loop's first; `None` for a worker that
/// did not answer), their busy fractions since the last scrape, and the protocol's room
/// sizes, in the Prometheus text format.
pub fn encode(
    workers: &[Option<Stats>],
    busy: &[Option<f64>],
    rooms: &[(String, usize)],
    shown: Shown,
) -> String {
    let mut registry = Registry::with_prefix("multiconn");
    let workers_gauge = Gauge::<i64>::default();
    workers_gauge.set(workers.len() as i64);
    registry.register("workers", "Event loops (worker threads)", workers_gauge);
    for spec in SPECS {
        register(&mut registry, spec, workers);
    }
    if shown.udp {
        for spec in UDP_SPECS {
            register(&mut registry, spec, workers);
        }
    }
    let answered = || {
        workers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?)))
    };

    let closed = Family::<Labels, Counter>::default();
    let closed_per_worker = Family::<Labels, Counter>::default();
    for reason in CloseReason::ALL {
        let label = ("reason".to_string(), reason.name().to_string());
        let total: u64 = answered().map(|(_, s)| s.closed_by(reason)).sum();
        closed.get_or_create(&vec![label.clone()]).inc_by(total);
        for (i, stats) in answered() {
            let mut labels = worker_label(i);
            labels.push(label.clone());
            closed_per_worker
                .get_or_create(&labels)
                .inc_by(stats.closed_by(reason));
        }
    }
    registry.register(
        "connections_closed",
        "Connections closed, by reason",
        closed,
    );

    let busy_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    let busy_ratio = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let busy_seconds_per_worker =
        Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    for (i, stats) in answered() {
        busy_seconds.inc_by(stats.cpu.as_secs_f64());
        busy_seconds_per_worker
            .get_or_create(&worker_label(i))
            .inc_by(stats.cpu.as_secs_f64());
        if let Some(Some(fraction)) = busy.get(i) {
            busy_ratio.get_or_create(&worker_label(i)).set(*fraction);
        }
    }
    registry.register_with_unit(
        "loop_busy",
        "CPU time of the event loops (busy, not waiting in epoll_wait)",
        Unit::Seconds,
        busy_seconds,
    );

    let rooms_family = Family::<Labels, Gauge>::default();
    for (room, members) in rooms {
        rooms_family
            .get_or_create(&vec![("room".to_string(), room.clone())])
            .set(i64::try_from(*members).unwrap_or(i64::MAX));
    }
    if !rooms.is_empty() {
        registry.register(
            "chat_room_members",
            "Members in each chat room, on every worker of this server",
            rooms_family,
        );
    }

    let sub = registry.sub_registry_with_prefix("worker");
    sub.register(
        "connections_closed",
        "Connections closed, by reason, per worker",
        closed_per_worker,
    );
    sub.register_with_unit(
        "loop_busy",
        "CPU time of the event loop, per worker",
        Unit::Seconds,
        busy_seconds_per_worker,
    );
    sub.register(
        "loop_busy_ratio",
        "Fraction of the time since the previous scrape the loop was busy, per worker",
        busy_ratio,
    );

    let mut text = String::new();
    // Cannot fail: writing to a String.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Produced;

    fn run(input: &[u8]) -> (Vec<u8>, Flow, bool) {
        let mut scrape = Scrape;
        let mut produced = Produced::default();
        let peer = Peer::Unix;
        let mut session = scrape.open(&peer, &mut produced.output());
        let (_, flow) = scrape.on_input(&mut session, input, &mut produced.output());
        (produced.reply.to_vec(), flow, session.waiting)
    }

    /// `GET /metrics` waits for the counters; a request cut anywhere waits for the rest;
    /// other paths and methods are answered and closed.
    #[test]
    fn requests() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        for cut in 0..get.len() {
            let (reply, flow, waiting) = run(&get[..cut]);
            assert_eq!(
                (reply.len(), flow, waiting),
                (0, Flow::Continue, false),
                "{cut}"
            );
        }
        assert_eq!(run(get), (Vec::new(), Flow::Continue, true));
        assert!(run(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").2);
        let (reply, flow, _) = run(b"GET / HTTP/1.1\r\n\r\n");
        assert!(reply.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
        assert_eq!(flow, Flow::Close);
        let (reply, _, _) = run(b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(reply.starts_with(b"HTTP/1.1 405 "));
        let (reply, _, _) = run(b"\x16\x03\x01 not http\r\n\r\n");
        assert!(reply.starts_with(b"HTTP/1.1 400 "));
    }

    /// Totals and per-worker series of every counter, closes by reason, busy time and
    /// fraction, and rooms, named as the README says.
    #[test]
    fn exposition() {
        let mut one = Stats {
            accepted: 3,
            requests: 7,
            bytes_in: 100,
            open: 1,
            peak_outbound: 10,
            turns: 40,
            cpu: Duration::from_millis(250),
            ..Stats::default()
        };
        one.closed[CloseReason::PeerClosed as usize] = 2;
        let two = Stats {
            accepted: 1,
            peak_outbound: 30,
            ..Stats::default()
        };
        let text = encode(
            &[Some(one), Some(two), None],
            &[Some(0.5), None, None],
            &[("lobby".into(), 2)],
            Shown { udp: true },
        );
        for line in [
            "multiconn_workers 3",
            "multiconn_connections_accepted_total 4",
            "multiconn_worker_connections_accepted_total{worker=\"1\"} 3",
            "multiconn_worker_connections_accepted_total{worker=\"2\"} 1",
            "multiconn_requests_total 7",
            "multiconn_received_bytes_total 100",
            "multiconn_outbound_peak_bytes 30",
            "multiconn_connections_open 1",
            "multiconn_loop_turns_total 40",
            "multiconn_connections_closed_total{reason=\"peer-closed\"} 2",
            "multiconn_worker_connections_closed_total{worker=\"1\",reason=\"peer-closed\"} 2",
            "multiconn_loop_busy_seconds_total 0.25",
            "multiconn_worker_loop_busy_ratio{worker=\"1\"} 0.5",
            "multiconn_chat_room_members{room=\"lobby\"} 2",
            "multiconn_udp_datagrams_dropped_total 0",
            "# TYPE multiconn_requests_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            !text.contains("worker=\"3\""),
            "a worker that did not answer"
        );
    }
}
