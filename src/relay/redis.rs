//! Broadcasts between servers through Redis pub/sub, as Socket.IO's Redis adapter does:
//! each server publishes its members' lines to a channel per room and takes every room's
//! channel (`PSUBSCRIBE multiconn:chat:*`) for its own members, dropping what it sent
//! itself. The two links (a subscribed connection cannot publish) are connections of the
//! loop's own kind: the connection core drives them (`Connection::connecting`, its
//! deadlines, its caps), their protocol is [`Resp`], and the loop's timers bring the
//! pings and the reconnects. When Redis is away, local delivery goes on: the outage is
//! logged once, lines meanwhile reach this server's members only, and the links come
//! back with backoff, subscribing again.

use std::net::SocketAddr;
use std::time::Duration;

use mio::{Interest, Registry, Token};

use crate::clock::Tick;
use crate::config::{Limits, Timeouts};
use crate::connection::{CloseReason, Connection, Readiness, Turn};
use crate::net::{describe, Peer, Stream};
use crate::outbound::Reply;
use crate::protocol::resp::{Resp, RespLink, Role, CHANNEL_PREFIX};
use crate::protocol::{Broadcasts, Produced};
use crate::server::RelayIo;
use crate::stats::Stats;

/// How often an idle link is pinged, and how long it may stay silent before it is taken
/// for dead (a Redis stopped without closing its sockets).
const PING_INTERVAL: Duration = Duration::from_secs(5);
const SILENT_LIMIT: Duration = Duration::from_secs(15);
/// A connect must complete within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnects start this soon after a failure and back off, doubling, to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the links need to know.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub addr: SocketAddr,
    /// This server's id: every message it publishes starts with it.
    pub server_id: u64,
    /// The largest chunk a broadcast may be, so the subscriber's frame cap fits it.
    pub max_chunk: usize,
    /// The cap on what is owed to Redis, as on any peer (`--max-outbound`).
    pub max_outbound: usize,
}

/// One of the two links.
struct Link {
    role: Role,
    token: Token,
    conn: Option<Connection<RespLink>>,
    /// The deadline of its entry in the timer queue (the connection core's timer).
    timer: Option<Tick>,
    /// When a link that is down connects again.
    retry_at: Tick,
    backoff: Duration,
    /// Its read budget ran out, or a pause ended: serve it next turn.
    serve_again: bool,
}

/// A loop's links to Redis.
pub struct Redis {
    config: RedisConfig,
    resp: Resp,
    links: [Link; 2],
    produced: Produced,
    limits: Limits,
    timeouts: Timeouts,
    /// The links' own counters, apart from the members'.
    stats: Stats,
    /// PUBLISH commands for this turn's broadcasts, written together at its end.
    outgoing: Reply,
    scratch: Vec<u8>,
    next_ping: Option<Tick>,
    /// Arrivals are held: the subscriber is not read.
    held: bool,
    /// The outage was logged: quiet until it is over.
    down_logged: bool,
    next_id: u64,
    /// Broadcasts that could not be published (Redis was away).
    pub lost: u64,
}

const SUBSCRIBER: usize = 0;
const PUBLISHER: usize = 1;

impl Redis {
    /// The links of one loop, under `tokens` (subscriber, publisher); they connect at the
    /// loop's first turn.
    pub fn new(config: RedisConfig, tokens: [Token; 2], now: Tick) -> Redis {
        let link = |role, token| Link {
            role,
            token,
            conn: None,
            timer: None,
            retry_at: now,
            backoff: FIRST_BACKOFF,
            serve_again: false,
        };
        Redis {
            resp: Resp::new(config.server_id, config.max_chunk),
            limits: Limits {
                max_outbound: config.max_outbound,
                ..Limits::default()
            },
            timeouts: Timeouts {
                idle: Some(SILENT_LIMIT),
                write: Some(SILENT_LIMIT),
                frame: Some(SILENT_LIMIT),
                linger: Duration::from_secs(1),
                connect: Some(CONNECT_TIMEOUT),
            },
            config,
            links: [
                link(Role::Subscriber, tokens[0]),
                link(Role::Publisher, tokens[1]),
            ],
            produced: Produced::default(),
            stats: Stats::default(),
            outgoing: Reply::default(),
            scratch: Vec::new(),
            next_ping: None,
            held: false,
            down_logged: false,
            next_id: 0,
            lost: 0,
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        self.links.iter().any(|l| l.token == token)
    }

    /// Runs `work` on link `i`'s connection with the turn it borrows, if it is up.
    fn drive<T>(
        &mut self,
        i: usize,
        io: &mut RelayIo<'_>,
        work: impl FnOnce(&mut Connection<RespLink>, &mut Turn<'_, Resp>) -> T,
    ) -> Option<T> {
        let conn = self.links[i].conn.as_mut()?;
        let mut turn = Turn {
            protocol: &mut self.resp,
            produced: &mut self.produced,
            read_buf: io.read_buf,
            limits: &self.limits,
            timeouts: &self.timeouts,
            stats: &mut self.stats,
            now: io.now,
        };
        Some(work(conn, &mut turn))
    }

    /// Serves link `i` (after an event, or again), then takes what it brought.
    fn serve(&mut self, i: usize, io: &mut RelayIo<'_>, ready: Option<Readiness>) {
        let now = io.now;
        let served = self.drive(i, io, |conn, turn| {
            let was_subscribed = conn.session().subscribed;
            let again = match ready {
                Some(ready) => conn.on_event(turn, ready),
                None => conn.serve(turn, true, false),
            };
            (again, !was_subscribed && conn.session().subscribed)
        });
        let Some((again, subscribed)) = served else {
            return;
        };
        self.links[i].serve_again = again;
        if subscribed {
            self.links[i].backoff = FIRST_BACKOFF;
            if std::mem::take(&mut self.down_logged) {
                log::info!(
                    "redis {}: reconnected; lines cross servers again",
                    self.config.addr
                );
            }
            log::info!(
                "redis {}: subscribed to {CHANNEL_PREFIX}*",
                self.config.addr
            );
        }
        if !self.produced.broadcast.is_empty() {
            io.arrivals.append(&mut self.produced.broadcast);
        }
        self.produced.reply.clear();
        self.settle(i, io.registry, now);
    }

    /// Lets link `i` take its phase step and register its interest; a finished link is
    /// taken down and its reconnect scheduled.
    fn settle(&mut self, i: usize, registry: &Registry, now: Tick) {
        let link = &mut self.links[i];
        let Some(conn) = link.conn.as_mut() else {
            return;
        };
        let Some(settled) = conn.settle(
            registry,
            link.token,
            &self.limits,
            &self.timeouts,
            &mut self.stats,
            now,
        ) else {
            return;
        };
        link.serve_again |= settled.serve_again;
        if let Some(at) = settled.timer {
            link.timer = Some(link.timer.map_or(at, |t| t.min(at)));
        }
        if settled.finished {
            self.down(i, now);
        }
    }

    /// Link `i` has ended: log the outage once, and connect again after the backoff.
    fn down(&mut self, i: usize, now: Tick) {
        let link = &mut self.links[i];
        let Some(conn) = link.conn.take() else {
            return;
        };
        let ended = conn.into_ended();
        let why = match &ended.error {
            Some(failure) => format!("{}: {}", failure.op, describe(&failure.error)),
            None => ended.reason.name().to_string(),
        };
        link.timer = None;
        link.serve_again = false;
        link.retry_at = now + link.backoff;
        link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
        if !std::mem::replace(&mut self.down_logged, true) {
            log::warn!(
                "redis {}: link lost ({why}); lines reach this server's members only until \
                 it is back; reconnecting",
                self.config.addr
            );
        } else {
            log::debug!(
                "redis {}: {:?} link down again ({why})",
                self.config.addr,
                link.role
            );
        }
    }

    /// Starts link `i`'s connect; what it must say first (the subscription) is queued
    /// until the connect completes.
    fn connect(&mut self, i: usize, registry: &Registry, now: Tick) {
        let addr = self.config.addr;
        let started = mio::net::TcpStream::connect(addr).and_then(|mut stream| {
            let interest = Interest::READABLE | Interest::WRITABLE;
            registry.register(&mut stream, self.links[i].token, interest)?;
            Ok(stream)
        });
        let stream = match started {
            Ok(stream) => stream,
            Err(e) => {
                let link = &mut self.links[i];
                link.retry_at = now + link.backoff;
                link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
                if !std::mem::replace(&mut self.down_logged, true) {
                    log::warn!("redis {addr}: cannot connect ({}); retrying", describe(&e));
                }
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        self.next_id += 1;
        let link = &mut self.links[i];
        let mut conn = Connection::connecting(
            Stream::Tcp(stream),
            Peer::Tcp(addr),
            self.next_id,
            RespLink::new(link.role),
            now,
        );
        if link.role == Role::Subscriber {
            self.resp.subscribe(self.produced.reply.bytes_mut());
            conn.send_reply(&mut self.produced.reply, &mut self.stats, now);
        }
        link.conn = Some(conn);
        self.settle(i, registry, now);
    }

    pub fn on_event(&mut self, io: &mut RelayIo<'_>, token: Token, ready: Readiness) {
        if let Some(i) = self.links.iter().position(|l| l.token == token) {
            self.serve(i, io, Some(ready));
        }
    }

    /// Encodes this turn's broadcasts as PUBLISH commands (sent in [`turn`](Self::turn)).
    pub fn forward(&mut self, broadcasts: &Broadcasts) {
        if self.links[PUBLISHER].conn.is_none() {
            self.lost += broadcasts.iter().count() as u64;
            return;
        }
        for (group, chunk) in broadcasts.iter() {
            self.resp
                .publish(group, chunk, &mut self.scratch, self.outgoing.bytes_mut());
        }
    }

    pub fn turn(&mut self, io: &mut RelayIo<'_>) -> Option<Tick> {
        let now = io.now;
        for i in [SUBSCRIBER, PUBLISHER] {
            if self.links[i].conn.is_none() {
                if now >= self.links[i].retry_at {
                    self.connect(i, io.registry, now);
                }
                continue;
            }
            if let Some(at) = self.links[i].timer.filter(|at| *at <= now) {
                self.links[i].timer = None;
                self.fire_timer(i, at, io);
            }
            if self.links[i].serve_again && !(i == SUBSCRIBER && self.held) {
                self.serve(i, io, None);
            }
        }
        self.publish(io.registry, now);
        if self.next_ping.is_none_or(|at| at <= now) {
            self.ping(now);
            self.next_ping = Some(now + PING_INTERVAL);
        }
        for i in [SUBSCRIBER, PUBLISHER] {
            self.settle(i, io.registry, now);
        }
        let mut next = self.next_ping;
        for link in &self.links {
            let at = match &link.conn {
                None => Some(link.retry_at),
                Some(_) if link.serve_again => Some(now),
                Some(_) => link.timer,
            };
            next = match (next, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    fn fire_timer(&mut self, i: usize, at: Tick, io: &mut RelayIo<'_>) {
        if let Some(Some(later)) = self.drive(i, io, |conn, turn| conn.on_timer(at, turn)) {
            self.links[i].timer = Some(later);
        }
        self.produced.reply.clear();
        self.produced.broadcast.clear();
    }

    /// Writes this turn's PUBLISH commands; a publisher whose backlog still passes the cap
    /// after a write is cut, as a slow member is.
    fn publish(&mut self, registry: &Registry, now: Tick) {
        if self.outgoing.is_empty() {
            return;
        }
        let Some(conn) = self.links[PUBLISHER].conn.as_mut() else {
            self.outgoing.clear();
            return;
        };
        conn.send_reply(&mut self.outgoing, &mut self.stats, now);
        if conn.outbound_len() > self.config.max_outbound {
            conn.flush(&mut self.stats, now);
            if conn.outbound_len() > self.config.max_outbound {
                log::warn!(
                    "redis {}: {} bytes not taken, over the cap: cutting the link",
                    self.config.addr,
                    conn.outbound_len()
                );
                conn.cut(CloseReason::SlowConsumer);
                self.settle(PUBLISHER, registry, now);
            }
        }
    }

    fn ping(&mut self, now: Tick) {
        for link in &mut self.links {
            if let Some(conn) = link.conn.as_mut() {
                if conn.phase() == crate::connection::Phase::Open {
                    self.resp.ping(self.produced.reply.bytes_mut());
                    conn.send_reply(&mut self.produced.reply, &mut self.stats, now);
                }
            }
        }
    }

    /// Whether the publisher owes more than half the cap.
    pub fn congested(&self) -> bool {
        self.links[PUBLISHER]
            .conn
            .as_ref()
            .is_some_and(|c| c.backlog_over(self.config.max_outbound / 2))
    }

    /// Cuts a publisher that holds the room and took nothing for `stall` (settled, and
    /// its reconnect scheduled, at the next turn).
    pub fn cut_stalled(&mut self, now: Tick, stall: Duration) {
        if let Some(conn) = self.links[PUBLISHER].conn.as_mut() {
            if conn.backlog_over(self.config.max_outbound / 2)
                && conn.write_stalled_for(now) >= stall
            {
                log::warn!(
                    "redis {}: {} bytes pending, none taken for {stall:?}: cutting the link",
                    self.config.addr,
                    conn.outbound_len()
                );
                conn.cut(CloseReason::SlowConsumer);
            }
        }
    }

    pub fn hold(&mut self, held: bool) {
        self.held = held;
        if let Some(conn) = self.links[SUBSCRIBER].conn.as_mut() {
            if held {
                conn.hold();
            } else {
                conn.release();
            }
        }
    }

    /// Closes both links (the publisher after a last write of what it owes).
    pub fn shutdown(&mut self, now: Tick) {
        for link in &mut self.links {
            if let Some(mut conn) = link.conn.take() {
                conn.flush(&mut self.stats, now);
            }
        }
    }
}
