//! The event loop: one `mio::Poll` over the listener, a waker and every connection (held
//! in a `Slab` whose key is the connection's `Token`), a deadline queue for timeouts, and
//! graceful shutdown. Data flows one way: accept → read → protocol → write → interest.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::event::Event;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::SIGINT;
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::clock::Tick;
use crate::connection::{is_peer_error, CloseReason, Connection, DeadlineKind, Phase, Timeouts};
use crate::net::{configure_accepted, ListenAddr, Listener, SocketOptions};
use crate::protocol::{Flow, Output, Protocol, Timeout};

/// The listener's and the waker's tokens sit at the top of the range, so a connection's
/// token is simply its slab key.
const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// Size of the loop's scratch read buffer: one read takes at most this much.
const READ_CHUNK: usize = 64 * 1024;
/// Outbound bytes at or below which a streaming protocol is asked for more.
const LOW_WATER: usize = 64 * 1024;
/// Events taken from one `epoll_wait`.
const EVENTS_CAPACITY: usize = 1024;
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM before it is retried.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// At most one accept-error log line per this interval.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Limits that bound memory and fairness per connection and per loop turn.
#[derive(Debug, Clone)]
pub struct Limits {
    /// New connections past this many are accepted and closed at once.
    pub max_connections: usize,
    /// Bytes owed to one peer before the loop stops reading from it (it resumes below half).
    pub max_outbound: usize,
    /// Accepts per loop turn, so a connection flood cannot starve open connections.
    pub accepts_per_turn: usize,
    /// Reads of `READ_CHUNK` per connection per turn before others get their turn.
    pub reads_per_turn: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_outbound: 1024 * 1024,
            accepts_per_turn: 256,
            reads_per_turn: 16,
        }
    }
}

/// Everything a server loop needs, as plain values (the binaries build it from flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: ListenAddr,
    pub socket: SocketOptions,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// After a shutdown request, how long pending output may drain before everything closes.
    pub drain_timeout: Duration,
    /// Log a statistics line this often.
    pub stats_interval: Option<Duration>,
    /// Prefix for log lines when several loops run (`worker 1: ...`).
    pub name: Option<String>,
}

impl ServerConfig {
    pub fn new(listen: ListenAddr) -> Self {
        ServerConfig {
            listen,
            socket: SocketOptions::default(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            drain_timeout: Duration::from_secs(5),
            stats_interval: None,
            name: None,
        }
    }
}

/// Counters of one loop; `run` returns them when it ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    /// Connections accepted and closed at once because the server was full.
    pub refused: u64,
    pub closed: [u64; CloseReason::ALL.len()],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub requests: u64,
    /// `epoll_ctl(MOD)` calls: only when a connection's interest changed.
    pub reregistrations: u64,
    /// Of those, the ones that added WRITABLE (a write could not finish at once).
    pub writable_registrations: u64,
    /// The most bytes any connection had queued for its peer.
    pub peak_outbound: usize,
    /// Accept errors such as EMFILE.
    pub accept_errors: u64,
    /// Open connections at the time of the snapshot.
    pub open: usize,
}

impl Stats {
    pub fn closed_by(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }

    pub fn merge(&mut self, other: &Stats) {
        self.accepted += other.accepted;
        self.refused += other.refused;
        for (a, b) in self.closed.iter_mut().zip(other.closed) {
            *a += b;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.requests += other.requests;
        self.reregistrations += other.reregistrations;
        self.writable_registrations += other.writable_registrations;
        self.peak_outbound = self.peak_outbound.max(other.peak_outbound);
        self.accept_errors += other.accept_errors;
        self.open += other.open;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open {} accepted {} refused {} requests {} bytes in {} out {} closed",
            self.open, self.accepted, self.refused, self.requests, self.bytes_in, self.bytes_out
        )?;
        for reason in CloseReason::ALL {
            let n = self.closed_by(reason);
            if n > 0 {
                write!(f, " {}={}", reason.name(), n)?;
            }
        }
        Ok(())
    }
}

const RUNNING: u8 = 0;
const GRACEFUL: u8 = 1;
const IMMEDIATE: u8 = 2;

struct Control {
    state: AtomicU8,
    waker: Waker,
    /// Where to send a snapshot of the counters; taken by the loop when woken. The lock
    /// is touched only by a stats request and the wake it causes, never per event.
    stats_requests: Mutex<Vec<mpsc::Sender<Stats>>>,
}

/// Stops a running server, or reads its counters, from another thread (a signal handler
/// thread, a test).
#[derive(Clone)]
pub struct ServerHandle {
    control: Arc<Control>,
}

impl ServerHandle {
    /// Stop accepting, let pending output drain (up to the drain timeout), then return.
    pub fn shutdown(&self) {
        self.signal(GRACEFUL);
    }

    /// Close everything and return at once.
    pub fn stop_now(&self) {
        self.signal(IMMEDIATE);
    }

    /// A snapshot of the loop's counters, or `None` if it does not answer within `timeout`
    /// (it has stopped).
    pub fn stats(&self, timeout: Duration) -> Option<Stats> {
        let (tx, rx) = mpsc::channel();
        self.control.stats_requests.lock().ok()?.push(tx);
        self.control.waker.wake().ok()?;
        rx.recv_timeout(timeout).ok()
    }

    fn signal(&self, state: u8) {
        self.control.state.fetch_max(state, Ordering::SeqCst);
        if let Err(e) = self.control.waker.wake() {
            log::error!("cannot wake the server loop: {e}");
        }
    }
}

/// A loop running on its own thread (`Server::spawn`); joining it yields its counters.
pub type ServerThread = JoinHandle<io::Result<Stats>>;

/// A server loop: binds in `bind`, serves in `run` until shut down.
pub struct Server<P: Protocol> {
    poll: Poll,
    listener: Option<Listener>,
    local_addr: ListenAddr,
    conns: Slab<Connection<P::Session>>,
    protocol: P,
    config: ServerConfig,
    control: Arc<Control>,
    stats: Stats,
    next_id: u64,
    timers: BinaryHeap<Reverse<(Tick, usize, u64)>>,
    // Per-loop scratch, reused every turn so the hot path does not allocate.
    read_buf: Vec<u8>,
    reply: Vec<u8>,
    broadcast: Vec<Arc<[u8]>>,
    requests: u64,
    /// Connections whose read budget ran out with input possibly left: served again next
    /// turn without waiting for an event (edge-triggered epoll will not report it again).
    again: Vec<(usize, u64)>,
    again_spare: Vec<(usize, u64)>,
    accept_again: bool,
    /// Connections that got broadcast output this batch; flushed once at its end.
    dirty: Vec<usize>,
    /// Connections marked closed this batch; removed in one sweep after it.
    closing: Vec<usize>,
    accept_paused_until: Option<Tick>,
    last_accept_error_log: Option<Tick>,
    /// SIGINT/SIGTERM, when this loop takes them (the binary's first worker).
    signals: Option<SignalWatch>,
}

/// Signals delivered to the loop through a self-pipe, and the other workers a shutdown
/// is passed on to.
struct SignalWatch {
    signals: Signals,
    peers: Vec<ServerHandle>,
    caught: u32,
}

impl<P: Protocol> Server<P> {
    /// Binds the listener (port 0 picks a free port) and prepares the loop.
    pub fn bind(config: ServerConfig, protocol: P) -> io::Result<Self> {
        let mut listener = Listener::bind(&config.listen, &config.socket)?;
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            conns: Slab::new(),
            protocol,
            config,
            control: Arc::new(Control {
                state: AtomicU8::new(RUNNING),
                waker,
                stats_requests: Mutex::new(Vec::new()),
            }),
            stats: Stats::default(),
            next_id: 0,
            timers: BinaryHeap::new(),
            read_buf: vec![0; READ_CHUNK],
            reply: Vec::with_capacity(READ_CHUNK),
            broadcast: Vec::new(),
            requests: 0,
            again: Vec::new(),
            again_spare: Vec::new(),
            accept_again: false,
            dirty: Vec::new(),
            closing: Vec::new(),
            accept_paused_until: None,
            last_accept_error_log: None,
            signals: None,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local_addr
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            control: self.control.clone(),
        }
    }

    /// Like [`run`](Self::run), also taking SIGINT/SIGTERM inside the loop: the first
    /// starts a graceful shutdown here and in `peers`, a second exits the process at once
    /// with status 130.
    pub fn run_until_signalled(
        mut self,
        mut signals: Signals,
        peers: Vec<ServerHandle>,
    ) -> io::Result<Stats> {
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(SignalWatch {
            signals,
            peers,
            caught: 0,
        });
        self.run()
    }

    /// Serves until a shutdown request; returns the loop's counters. Only errors of the
    /// poll itself end it: a failing connection ends only that connection.
    pub fn run(mut self) -> io::Result<Stats> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut drain_deadline: Option<Tick> = None;
        let mut now = Tick::now();
        let mut next_stats = self.config.stats_interval.map(|i| now + i);
        loop {
            // Measured from the start of the last turn, not read again: one coarse clock
            // read per turn is enough for deadlines counted in seconds, and a busy loop
            // turns over once per message.
            let timeout = self.poll_timeout(now, drain_deadline, next_stats);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            now = Tick::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => self.answer_stats_requests(),
                    SIGNALS => self.on_signals(),
                    Token(key) => self.on_event(key, event, now),
                }
            }
            let accept_resumes = self.accept_paused_until.is_some_and(|until| now >= until);
            if std::mem::take(&mut self.accept_again) || accept_resumes {
                self.accept(now);
            }
            if !self.again.is_empty() {
                // Swapped with a spare list that keeps its capacity: serving may queue the
                // same connections for the next turn, and neither list is reallocated.
                let spare = std::mem::take(&mut self.again_spare);
                let mut batch = std::mem::replace(&mut self.again, spare);
                for &(key, id) in &batch {
                    if self.conns.get(key).is_some_and(|c| c.id == id) {
                        self.serve(key, true, false, now);
                    }
                }
                batch.clear();
                self.again_spare = batch;
            }
            match self.control.state.load(Ordering::SeqCst) {
                IMMEDIATE => break,
                GRACEFUL if drain_deadline.is_none() => {
                    drain_deadline = Some(now + self.config.drain_timeout);
                    self.begin_shutdown(now);
                }
                _ => {}
            }
            self.fire_timers(now);
            self.flush_dirty(now);
            self.sweep(now);

            if let Some(at) = next_stats {
                if now >= at {
                    self.log_stats();
                    next_stats = self.config.stats_interval.map(|i| now + i);
                }
            }
            if let Some(deadline) = drain_deadline {
                if self.conns.is_empty() || now >= deadline {
                    break;
                }
            }
        }
        for (_, conn) in self.conns.iter_mut() {
            conn.close(CloseReason::Shutdown);
        }
        self.closing.extend(self.conns.iter().map(|(key, _)| key));
        self.sweep(Tick::now());
        self.stats.open = self.conns.len();
        Ok(self.stats)
    }

    /// Runs the server on a new thread; returns its address, a handle to stop it, and the
    /// thread, which yields the final counters. Fails only if the OS refuses a thread.
    pub fn spawn(self) -> io::Result<(ListenAddr, ServerHandle, ServerThread)>
    where
        P: Send + 'static,
        P::Session: Send,
    {
        let addr = self.local_addr.clone();
        let handle = self.handle();
        let thread = std::thread::Builder::new()
            .name("multiconn-server".into())
            .spawn(move || self.run())?;
        Ok((addr, handle, thread))
    }

    fn poll_timeout(
        &self,
        now: Tick,
        drain: Option<Tick>,
        stats: Option<Tick>,
    ) -> Option<Duration> {
        if !self.again.is_empty() || self.accept_again {
            return Some(Duration::ZERO);
        }
        // Folded by hand: the iterator version cost about 60 instructions per turn.
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let nearest = earliest(
            earliest(timer, self.accept_paused_until),
            earliest(drain, stats),
        )?;
        Some(nearest.saturating_duration_since(now))
    }

    fn on_signals(&mut self) {
        let Some(watch) = &mut self.signals else {
            return;
        };
        for signal in watch.signals.pending() {
            watch.caught += 1;
            if watch.caught > 1 {
                // A second signal: the operator does not want to wait for the drain.
                log::warn!("Second signal, exiting now.");
                std::process::exit(130);
            }
            if signal == SIGINT {
                log::info!("Caught keyboard interrupt, exiting.");
            } else {
                log::info!("Caught SIGTERM, exiting.");
            }
            self.control.state.fetch_max(GRACEFUL, Ordering::SeqCst);
            for peer in &watch.peers {
                peer.shutdown();
            }
        }
    }

    fn answer_stats_requests(&mut self) {
        let requests = match self.control.stats_requests.lock() {
            Ok(mut requests) => std::mem::take(&mut *requests),
            Err(_) => return,
        };
        self.stats.open = self.conns.len();
        for tx in requests {
            let _ = tx.send(self.stats.clone());
        }
    }

    fn log_stats(&mut self) {
        self.stats.open = self.conns.len();
        match &self.config.name {
            Some(name) => log::info!("{name}: stats: {}", self.stats),
            None => log::info!("stats: {}", self.stats),
        }
    }

    fn begin_shutdown(&mut self, now: Tick) {
        if let Some(mut listener) = self.listener.take() {
            // Dropping the listener closes it: new connections are refused from now on.
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_paused_until = None;
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            if conn.outbound.is_empty() && conn.phase == Phase::Open {
                conn.close(CloseReason::Shutdown);
            } else {
                conn.finish(CloseReason::Shutdown);
            }
            self.settle(key, now);
        }
    }

    fn accept(&mut self, now: Tick) {
        if self.accept_paused_until.is_some_and(|until| now < until) {
            return;
        }
        self.accept_paused_until = None;
        for _ in 0..self.config.limits.accepts_per_turn {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    if self.conns.len() >= self.config.limits.max_connections {
                        self.refuse(stream, &peer);
                        continue;
                    }
                    if let Err(e) = configure_accepted(&stream, &self.config.socket) {
                        log::debug!("cannot set socket options for {peer}: {e}");
                    }
                    self.open(stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // EMFILE and friends: the pending connection stays queued and epoll will
                    // not report the listener again until an accept sees WouldBlock, so
                    // retry from a timer rather than spin or stall.
                    self.stats.accept_errors += 1;
                    if self.last_accept_error_log.is_none_or(|at| {
                        now.saturating_duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL
                    }) {
                        log::warn!("accept failed: {e}; pausing accepts, serving open connections");
                        self.last_accept_error_log = Some(now);
                    }
                    self.accept_paused_until = Some(now + ACCEPT_RETRY);
                    return;
                }
            }
        }
        // Budget used up with connections possibly still queued: continue next turn.
        self.accept_again = true;
    }

    fn refuse(&mut self, mut stream: crate::net::Stream, peer: &crate::net::Peer) {
        self.stats.refused += 1;
        log::debug!("refusing {peer}: {} connections open", self.conns.len());
        if let Some(refusal) = self.protocol.refusal() {
            // Best effort: a fresh socket's send buffer is empty, so this rarely blocks.
            let _ = stream.write(refusal);
            let _ = stream.shutdown_write();
        }
    }

    fn open(&mut self, mut stream: crate::net::Stream, peer: crate::net::Peer, now: Tick) {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            log::warn!("cannot register connection from {peer}: {e}");
            return;
        }
        let session = {
            let mut out = Output::new(&mut self.reply, &mut self.broadcast, &mut self.requests);
            self.protocol.open(&peer, &mut out)
        };
        self.next_id += 1;
        entry.insert(Connection::new(stream, peer, self.next_id, session, now));
        self.stats.accepted += 1;
        log::info!("Accepted connection from {peer}");
        self.send_reply(key, now);
        self.deliver_broadcast(Some(key));
        self.settle(key, now);
    }

    fn on_event(&mut self, key: usize, event: &Event, now: Tick) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase == Phase::Closed {
            return;
        }
        let write_ready = event.is_writable() || event.is_write_closed() || event.is_error();
        if write_ready && !conn.outbound.is_empty() {
            // Flush first: it frees room that may let reading resume below. On an error
            // event (a reset while we only wait to write) the write reports the error.
            self.flush(key, now);
        }
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        self.serve(key, readable, event.is_read_closed(), now);
    }

    /// Reads what the connection has, hands it to the protocol, writes the replies,
    /// delivers broadcasts, and settles interest and deadlines.
    fn serve(&mut self, key: usize, readable: bool, read_closed: bool, now: Tick) {
        if readable {
            self.read(key, read_closed, now);
        }
        self.send_reply(key, now);
        if !self.broadcast.is_empty() {
            self.deliver_broadcast(Some(key));
        }
        if P::STREAMS {
            self.stream_more(key, now);
        }
        self.settle(key, now);
    }

    fn read(&mut self, key: usize, read_closed: bool, now: Tick) {
        let Server {
            conns,
            protocol,
            read_buf,
            reply,
            broadcast,
            requests,
            stats,
            again,
            config,
            ..
        } = self;
        let conn = &mut conns[key];
        if let Phase::Lingering { .. } = conn.phase {
            linger_read(conn, read_buf);
            return;
        }
        let max_outbound = config.limits.max_outbound;
        let max_pending = protocol.max_pending_input();
        let mut reads = 0;
        while conn.wants_read() {
            let owed = conn.outbound.len() + reply.len();
            // Reading no more than the outbound room keeps an echo within its cap.
            let room = max_outbound.saturating_sub(owed).min(read_buf.len());
            if room == 0 {
                conn.read_paused = true;
                break;
            }
            let n = match conn.stream.read(&mut read_buf[..room]) {
                Ok(0) => {
                    conn.peer_closed = true;
                    let leftover = std::mem::take(&mut conn.inbound);
                    let mut out = Output::new(reply, broadcast, requests);
                    protocol.on_eof(&mut conn.session, &leftover, &mut out);
                    conn.frame_started = None;
                    conn.finish(CloseReason::PeerClosed);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    fail(conn, &e, "read");
                    break;
                }
            };
            stats.bytes_in += n as u64;
            conn.last_activity = now;
            let mut out = Output::new(reply, broadcast, requests);
            let flow = feed(protocol, conn, &read_buf[..n], &mut out, now);
            if flow == Flow::Close {
                conn.finish(CloseReason::Protocol);
                break;
            }
            if conn.inbound.len() > max_pending {
                log::info!(
                    "closing {}: unfinished frame of {} bytes exceeds {max_pending}",
                    conn.peer,
                    conn.inbound.len()
                );
                conn.close(CloseReason::InputTooLarge);
                break;
            }
            reads += 1;
            // A short read emptied the socket's receive queue. With edge-triggered epoll
            // any byte that arrives later raises a new event, so the read that would only
            // return EAGAIN is skipped. A FIN that came with this data raises no new edge,
            // hence the exception when the event already reported the peer's close.
            if n < room && !read_closed {
                break;
            }
            if reads == config.limits.reads_per_turn {
                again.push((key, conn.id));
                break;
            }
        }
    }

    /// Sends this turn's replies for `key`, written at once where the socket takes them.
    fn send_reply(&mut self, key: usize, now: Tick) {
        if self.reply.is_empty() {
            return;
        }
        let conn = &mut self.conns[key];
        if conn.phase == Phase::Closed {
            self.reply.clear();
            return;
        }
        match conn.send(&self.reply, now) {
            Ok(n) => self.stats.bytes_out += n as u64,
            Err(e) => fail(conn, &e, "write"),
        }
        self.reply.clear();
    }

    fn flush(&mut self, key: usize, now: Tick) {
        let conn = &mut self.conns[key];
        match conn.flush(now) {
            Ok(n) => self.stats.bytes_out += n as u64,
            Err(e) => fail(conn, &e, "write"),
        }
    }

    /// Lets a streaming protocol refill the outbound buffer once it has drained. This runs
    /// while `Closing` too: a client that sends its request and then shuts down its write
    /// side (`nc -N`, `shutdown(SHUT_WR)`) must still get the whole response. It runs
    /// before `settle`, which would otherwise finish a `Closing` connection the moment its
    /// queue ran empty between two chunks; `more_to_stream` keeps it alive across turns.
    fn stream_more(&mut self, key: usize, now: Tick) {
        self.conns[key].more_to_stream = false;
        for _ in 0..self.config.limits.reads_per_turn {
            let conn = &mut self.conns[key];
            let streaming = matches!(conn.phase, Phase::Open | Phase::Closing);
            if !streaming || conn.outbound.len() > LOW_WATER {
                return;
            }
            let flow = {
                let mut out = Output::new(&mut self.reply, &mut self.broadcast, &mut self.requests);
                self.protocol.on_drained(&mut conn.session, &mut out)
            };
            if flow == Flow::Close {
                conn.finish(CloseReason::Protocol);
            }
            if self.reply.is_empty() {
                return;
            }
            self.send_reply(key, now);
            if !self.conns[key].outbound.is_empty() {
                // The socket is full: WRITABLE will bring us back.
                return;
            }
        }
        // Budget used while the socket still takes everything: continue next turn.
        let conn = &mut self.conns[key];
        conn.more_to_stream = true;
        self.again.push((key, conn.id));
    }

    /// Queues this turn's broadcasts on every other open connection, shared, not copied.
    /// A recipient whose queue would pass the cap is a slow consumer and is dropped.
    fn deliver_broadcast(&mut self, from: Option<usize>) {
        if self.broadcast.is_empty() {
            return;
        }
        let max_outbound = self.config.limits.max_outbound;
        for (key, conn) in self.conns.iter_mut() {
            if Some(key) == from || conn.phase != Phase::Open {
                continue;
            }
            for line in &self.broadcast {
                if conn.outbound.len() + line.len() > max_outbound {
                    log::warn!(
                        "disconnecting slow consumer {}: {} bytes pending",
                        conn.peer,
                        conn.outbound.len()
                    );
                    conn.close(CloseReason::SlowConsumer);
                    break;
                }
                conn.outbound.push_shared(line.clone());
            }
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        self.broadcast.clear();
    }

    fn flush_dirty(&mut self, now: Tick) {
        while let Some(key) = self.dirty.pop() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.phase != Phase::Closed && !conn.outbound.is_empty() {
                self.flush(key, now);
            }
            self.settle(key, now);
        }
    }

    /// After any work on a connection: advance its phase, register the interest it now
    /// wants (only if changed), arm its deadline, and queue it for the sweep when done.
    /// The steady case, where nothing can change, is checked inline at every call site.
    #[inline(always)]
    fn settle(&mut self, key: usize, now: Tick) {
        let conn = &self.conns[key];
        if conn.is_steady() {
            debug_assert_eq!(conn.wanted_interest(), Some(conn.registered));
            return;
        }
        self.settle_changed(key, now);
    }

    fn settle_changed(&mut self, key: usize, now: Tick) {
        let conn = &mut self.conns[key];
        self.stats.peak_outbound = self.stats.peak_outbound.max(conn.outbound.len());
        if conn.phase == Phase::Closing && conn.outbound.is_empty() && !conn.more_to_stream {
            end_closing(conn, now + self.config.timeouts.linger);
        }
        if conn.read_paused && conn.outbound.len() <= self.config.limits.max_outbound / 2 {
            // Reading stopped without seeing WouldBlock, so input may be waiting that epoll
            // will not report again: read it next turn.
            conn.read_paused = false;
            self.again.push((key, conn.id));
        }
        if conn.phase != Phase::Closed {
            match conn.wanted_interest() {
                None => conn.phase = Phase::Closed,
                // The one place interest changes, and only when it really does.
                Some(wanted) if wanted != conn.registered => {
                    reregister(conn, self.poll.registry(), key, wanted, &mut self.stats);
                }
                Some(_) => {}
            }
        }
        if conn.phase == Phase::Closed {
            self.closing.push(key);
            return;
        }
        let only_idle_deadline = conn.frame_started.is_none()
            && conn.write_stalled_since.is_none()
            && !matches!(conn.phase, Phase::Lingering { .. });
        if conn.timer_at.is_some() && only_idle_deadline {
            // Activity only moves the idle deadline later, so the armed timer is not later
            // than it: nothing to do. This skips the deadline arithmetic on every message.
            return;
        }
        if let Some((at, _)) = conn.deadline(&self.config.timeouts) {
            // The queue is lazy: an entry may be earlier than the real deadline (activity
            // only moves deadlines later); a new entry is pushed only when one comes sooner.
            if conn.timer_at.is_none_or(|t| at < t) {
                conn.timer_at = Some(at);
                self.timers.push(Reverse((at, key, conn.id)));
            }
        }
    }

    fn fire_timers(&mut self, now: Tick) {
        while let Some(Reverse((at, key, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let timeouts = &self.config.timeouts;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.id != id || conn.timer_at != Some(at) {
                continue; // a stale entry: the connection is gone or re-armed sooner
            }
            conn.timer_at = None;
            let Some((deadline, kind)) = conn.deadline(timeouts) else {
                continue;
            };
            if deadline > now {
                conn.timer_at = Some(deadline);
                self.timers.push(Reverse((deadline, key, id)));
                continue;
            }
            match kind {
                DeadlineKind::Idle => {
                    log::debug!("{}: idle timeout", conn.peer);
                    conn.close(CloseReason::IdleTimeout);
                }
                DeadlineKind::Write => {
                    log::info!("{}: not reading its output, closing", conn.peer);
                    conn.close(CloseReason::WriteTimeout);
                }
                DeadlineKind::Linger => conn.phase = Phase::Closed,
                DeadlineKind::Frame => {
                    log::info!("{}: frame not completed in time, closing", conn.peer);
                    conn.frame_started = None;
                    let mut out =
                        Output::new(&mut self.reply, &mut self.broadcast, &mut self.requests);
                    self.protocol
                        .on_timeout(&mut conn.session, Timeout::Frame, &mut out);
                    conn.inbound = Vec::new();
                    conn.finish(CloseReason::FrameTimeout);
                    conn.close_reason = CloseReason::FrameTimeout;
                    self.send_reply(key, now);
                }
            }
            self.settle(key, now);
        }
    }

    /// Removes every connection marked closed this batch. A removed connection's
    /// `on_close` may broadcast (chat's "left"), which may close slow consumers in turn.
    fn sweep(&mut self, now: Tick) {
        if !self.closing.is_empty() {
            self.remove_closed(now);
        }
        self.stats.requests += std::mem::take(&mut self.requests);
    }

    #[cold]
    #[inline(never)]
    fn remove_closed(&mut self, now: Tick) {
        while !self.closing.is_empty() {
            for key in std::mem::take(&mut self.closing) {
                match self.conns.get(key) {
                    Some(conn) if conn.phase == Phase::Closed => {}
                    _ => continue, // already removed (queued twice)
                }
                let conn = self.conns.remove(key);
                self.stats.closed[conn.close_reason as usize] += 1;
                log::info!("Closing connection to {}", conn.peer);
                log::debug!("{}: closed ({})", conn.peer, conn.close_reason.name());
                // Dropping the stream closes the socket, which also removes it from epoll.
                let mut out = Output::new(&mut self.reply, &mut self.broadcast, &mut self.requests);
                self.protocol.on_close(conn.session, &conn.peer, &mut out);
                self.reply.clear();
                self.deliver_broadcast(None);
            }
            self.flush_dirty(now);
        }
    }
}

/// Hands bytes just read to the protocol, joining them to an unfinished frame if one is
/// pending. The common case (no pending frame) parses straight from the read buffer.
fn feed<P: Protocol>(
    protocol: &mut P,
    conn: &mut Connection<P::Session>,
    data: &[u8],
    out: &mut Output<'_>,
    now: Tick,
) -> Flow {
    let (used, flow, pending) = if conn.inbound.is_empty() {
        let (used, flow) = protocol.on_input(&mut conn.session, data, out);
        let rest = &data[used.min(data.len())..];
        if flow == Flow::Continue && !rest.is_empty() {
            conn.inbound.extend_from_slice(rest);
        }
        (used, flow, rest.len())
    } else {
        conn.inbound.extend_from_slice(data);
        let (used, flow) = protocol.on_input(&mut conn.session, &conn.inbound, out);
        let rest = conn.inbound.len().saturating_sub(used);
        if rest == 0 || flow == Flow::Close {
            // Free the buffer: an idle connection holds no heap memory.
            conn.inbound = Vec::new();
        } else {
            conn.inbound.drain(..used);
        }
        (used, flow, rest)
    };
    if pending == 0 || flow == Flow::Close {
        conn.frame_started = None;
    } else if used > 0 || conn.frame_started.is_none() {
        conn.frame_started = Some(now);
    }
    flow
}

fn earliest(a: Option<Tick>, b: Option<Tick>) -> Option<Tick> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Reads and discards what a peer sends after our last reply, until its FIN.
fn linger_read<S>(conn: &mut Connection<S>, buf: &mut [u8]) {
    loop {
        match conn.stream.read(buf) {
            Ok(0) => {
                conn.phase = Phase::Closed;
                return;
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.phase = Phase::Closed;
                return;
            }
        }
    }
}

/// A `Closing` connection whose output is all sent: closed if the peer already sent its
/// FIN, otherwise our side is shut so the peer sees EOF after the last reply, and we wait
/// for its FIN (until `linger_until`) instead of resetting the connection under it.
#[cold]
fn end_closing<S>(conn: &mut Connection<S>, linger_until: Tick) {
    conn.phase = if conn.peer_closed {
        Phase::Closed
    } else {
        match conn.stream.shutdown_write() {
            Ok(()) => Phase::Lingering {
                until: linger_until,
            },
            Err(_) => Phase::Closed,
        }
    };
}

/// Registers a changed interest and counts it. Out of line: an echo that keeps up with its
/// peer never changes interest, and the loop's hot path stays small.
#[cold]
fn reregister<S>(
    conn: &mut Connection<S>,
    registry: &mio::Registry,
    key: usize,
    wanted: Interest,
    stats: &mut Stats,
) {
    match conn.reregister(registry, Token(key), wanted) {
        Ok(added_writable) => {
            stats.reregistrations += 1;
            stats.writable_registrations += added_writable as u64;
        }
        Err(e) => fail(conn, &e, "reregister"),
    }
}

/// Ends one connection after a socket error; resets and broken pipes are the peer's
/// business and only logged at debug.
#[cold]
fn fail<S>(conn: &mut Connection<S>, e: &io::Error, op: &str) {
    if is_peer_error(e) {
        log::debug!("{}: {op}: {e}", conn.peer);
    } else {
        log::warn!("{}: {op}: {e}", conn.peer);
    }
    conn.close(CloseReason::Error);
}

/// Accept errors about one connection that died in the queue, not about the server.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionReset
    ) || e.raw_os_error() == Some(libc::EPROTO)
}
