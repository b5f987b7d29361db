//! The server loop: one `mio::Poll` over the listener, a waker and every connection (held
//! in a `Slab` whose key is the connection's `Token`), a deadline queue for timeouts, the
//! deferred lists, and the sweep. It only schedules: what a connection does with an event
//! is the connection's business ([`crate::connection`]). Data flows one way:
//! accept → read → protocol → write → interest. A [`Relay`] may extend it with sources of
//! its own (other loops, a broker), to and from which broadcasts travel.

mod control;
mod metrics;
mod proxy;
mod relay;
mod udp;

use std::io::{self, Write};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::clock::Tick;
use crate::config::{ServerConfig, READ_CHUNK};
use crate::connection::{CloseReason, Connection, Readiness, Turn};
use crate::net::{configure_accepted, Accepted, ListenAddr, Listener, Peer, Stream, Transport};
use crate::protocol::{Broadcasts, Produced, Protocol, Receive};
use crate::schedule::{earliest, remove_ended, ConnRef, Schedule};
use crate::stats::Stats;
pub use control::ServerHandle;
use control::{Control, SignalWatch, State};
pub use relay::{relay_token, Relay, RelayIo, RELAY_TOKENS};

/// The listener's and the waker's tokens sit at the top of the range, so a connection's
/// token is simply its slab key.
const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// Tokens of the connections that await their PROXY header (the slot in `Headers` plus
/// the start): far above any slab key, below the relay's, so that an event for one misses
/// the slab and reaches them off the hot path, as the relay's do.
const HEADER_TOKENS: Range<usize> = (usize::MAX / 4)..(usize::MAX / 2);
/// Tokens of the metrics' scrape connections, likewise.
const SCRAPE_TOKENS: Range<usize> = (usize::MAX / 2)..(RELAY_TOKENS.start - 8);
/// The metrics listener (and, in the timer queue, the deadline of a scrape's collection).
const METRICS: Token = Token(RELAY_TOKENS.start - 1);
/// The UDP echo socket (and, on the serve-again list, its next turn).
const UDP: Token = Token(RELAY_TOKENS.start - 2);

/// Events taken from one `epoll_wait`.
const EVENTS_CAPACITY: usize = 1024;
/// How long a connection may take to send its PROXY header when neither the frame nor
/// the idle timeout is set: some bound is needed, or a silent peer holds its slot forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM before it is retried.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// At most one accept-error log line per this interval.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A member that holds the room (its backlog keeps broadcasting members paused) and whose
/// socket takes nothing for this long has stopped reading: it is cut, so that one stalled
/// member cannot stall the room for the whole write timeout.
const FANOUT_STALL: Duration = Duration::from_secs(1);
/// While senders are held, how often the loop looks again without an event.
const FANOUT_CHECK: Duration = Duration::from_millis(100);

/// A loop running on its own thread (`Server::spawn`); joining it yields its counters.
pub type ServerThread = JoinHandle<io::Result<Stats>>;

/// Holds spawned loops before their first turn until every worker thread exists, and
/// lets the spawner wait for each new thread to be running before making the next. When
/// the OS refuses a thread part way (an address-space or thread limit), the failure is
/// then the spawner's alone: no thread is still setting itself up (std allocates its
/// signal stack there) and no loop allocates against the same limit. `open(true)` starts
/// the loops; `open(false)` ends them unstarted.
#[derive(Clone, Default)]
pub struct StartGate(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Default)]
struct GateState {
    /// Threads running and waiting at the gate.
    arrived: usize,
    /// Whether to start, once decided.
    start: Option<bool>,
}

impl StartGate {
    pub fn open(&self, start: bool) {
        let (state, changed) = &*self.0;
        lock(state).start = Some(start);
        changed.notify_all();
    }

    /// Waits until `threads` threads have arrived at the gate.
    pub fn wait_arrived(&self, threads: usize) {
        let (state, changed) = &*self.0;
        let mut state = lock(state);
        while state.arrived < threads {
            state = changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Arrives, and waits until the gate opens; whether to start.
    fn arrive(&self) -> bool {
        let (state, changed) = &*self.0;
        let mut state = lock(state);
        state.arrived += 1;
        changed.notify_all();
        loop {
            if let Some(start) = state.start {
                return start;
            }
            state = changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Stands for the relay in the timer queue (its next turn without an event) and on the
/// held list (its arrivals are held), so the loop's checks of both cover it: no slab key
/// reaches it.
const RELAY_REF: ConnRef = (usize::MAX, 0);

/// A server loop: binds in `bind`, serves in `run` until shut down. `T` is what its
/// connections hold: the plain [`Stream`], or `net::AnyStream` for a TLS server (the loop
/// is compiled once for each, so the plain one has no TLS branch).
pub struct Server<P: Protocol, T: Accepted = Stream> {
    poll: Poll,
    listener: Option<Listener>,
    local_addr: ListenAddr,
    conns: Slab<Connection<P::Session, T>>,
    protocol: P,
    config: ServerConfig,
    control: Arc<Control>,
    stats: Stats,
    next_id: u64,
    /// Timers, connections to serve again next turn, and those to remove in the sweep.
    schedule: Schedule,
    /// Per-loop scratch, reused every turn so the hot path does not allocate.
    read_buf: Vec<u8>,
    produced: Produced,
    accept_again: bool,
    /// Connections that got broadcast output this batch; flushed once at its end.
    delivered: Vec<usize>,
    /// Members whose broadcasts left others' queues over half the cap: not read again
    /// until every reading member is back under it (a burst is paced by the members that
    /// read, so none of them is cut by it).
    held: Vec<ConnRef>,
    accept_paused_until: Option<Tick>,
    last_accept_error_log: Option<Tick>,
    /// SIGINT/SIGTERM/SIGHUP, when this loop takes them (the binary's first worker).
    signals: Option<SignalWatch>,
    /// Where broadcasts also go and come from (other loops, other servers), if anywhere.
    relay: Option<Box<dyn Relay>>,
    /// What the relay brought for this loop's members this turn.
    arrivals: Broadcasts,
    /// When the relay next needs a turn without an event: its entry in the timer queue.
    relay_deadline: Option<Tick>,
    /// The relay's arrivals are held (they left members over half the cap); `RELAY_REF`
    /// is on the held list meanwhile.
    arrivals_held: bool,
    /// A run's chunks framed for the members that take them framed (WebSocket): made
    /// once per run, shared by all of them.
    framed: Vec<Arc<[u8]>>,
    /// With `--proxy-protocol`: the connections whose header has not come yet.
    headers: Option<Box<proxy::Headers>>,
    /// With `--metrics`, on the first worker: the listener and its scrapes.
    metrics: Option<Box<metrics::Metrics>>,
    /// With `--udp`: the echo socket.
    udp: Option<Box<udp::Udp>>,
}

impl<P: Protocol> Server<P> {
    /// Binds the listener (port 0 picks a free port) and prepares the loop. A configuration
    /// that would make the loop spin or never read is refused as `InvalidInput`.
    pub fn bind(config: ServerConfig, protocol: P) -> io::Result<Self> {
        Self::bind_as(config, protocol)
    }

    /// Prepares a loop on a listener bound already, such as another worker's (shared).
    pub fn with_listener(
        config: ServerConfig,
        listener: Listener,
        protocol: P,
    ) -> io::Result<Self> {
        Self::with_listener_as(config, listener, protocol)
    }
}

impl<P: Protocol, T: Accepted> Server<P, T> {
    /// [`Server::bind`] for a loop whose connections hold `T` (`net::AnyStream` with TLS).
    pub fn bind_as(config: ServerConfig, protocol: P) -> io::Result<Self> {
        Self::validate(&config)?;
        let listener = Listener::bind(&config.listen, &config.socket)?;
        Self::with_listener_as(config, listener, protocol)
    }

    /// [`Server::with_listener`] for a loop whose connections hold `T`.
    pub fn with_listener_as(
        config: ServerConfig,
        mut listener: Listener,
        protocol: P,
    ) -> io::Result<Self> {
        Self::validate(&config)?;
        if T::TLS && config.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a TLS loop needs a TLS configuration",
            ));
        }
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
            control: Control::new(waker),
            stats: Stats::default(),
            next_id: 0,
            schedule: Schedule::default(),
            read_buf: vec![0; READ_CHUNK],
            produced: Produced {
                reply: crate::outbound::Reply::with_capacity(READ_CHUNK),
                ..Produced::default()
            },
            accept_again: false,
            delivered: Vec::new(),
            held: Vec::new(),
            accept_paused_until: None,
            last_accept_error_log: None,
            signals: None,
            relay: None,
            arrivals: Broadcasts::default(),
            relay_deadline: None,
            arrivals_held: false,
            framed: Vec::new(),
            headers: config
                .proxy_protocol
                .then(|| Box::new(proxy::Headers::default())),
            metrics: None,
            udp: None,
            config,
        })
    }

    fn validate(config: &ServerConfig) -> io::Result<()> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// A handle on this loop's listener for another worker to share, if it has one.
    pub fn share_listener(&self) -> io::Result<Listener> {
        match &self.listener {
            Some(listener) => listener.try_clone(),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "no listener")),
        }
    }

    /// The loop's registry, for sources made before it runs (another loop's waker).
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Passes this loop's broadcasts to `relay` too, and delivers what it brings.
    pub fn set_relay(&mut self, relay: Box<dyn Relay>) {
        self.relay = Some(relay);
        // Its first turn (connecting, say) comes at once, not with the first event.
        self.arm_relay(Tick::now());
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

    /// Like [`run`](Self::run), also taking signals inside the loop: the first SIGINT or
    /// SIGTERM starts a graceful shutdown here and in `peers`, a second exits the process
    /// at once with status 130; SIGHUP is logged and ignored.
    pub fn run_until_signalled(
        mut self,
        mut signals: Signals,
        peers: Vec<ServerHandle>,
    ) -> io::Result<Stats> {
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(SignalWatch::new(signals, peers));
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
            self.stats.turns += 1;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => self.answer_stats_requests(now),
                    SIGNALS => {
                        if let Some(watch) = &mut self.signals {
                            watch.on_signals(&self.control);
                        }
                    }
                    Token(key) => self.on_event(key, Readiness::from(event), now),
                }
            }
            let accept_resumes = self.accept_paused_until.is_some_and(|until| now >= until);
            if std::mem::take(&mut self.accept_again) || accept_resumes {
                self.accept(now);
            }
            if self.schedule.has_again() {
                self.serve_again(now);
            }
            match self.control.state() {
                State::Immediate => break,
                State::Graceful if drain_deadline.is_none() => {
                    drain_deadline = Some(now + self.config.drain_timeout);
                    self.begin_shutdown(now);
                }
                _ => {}
            }
            self.fire_timers(now);
            if self.relay.is_some() {
                self.relay_turn(now);
            }
            if !self.delivered.is_empty() {
                self.flush_delivered(now);
            }
            if !self.held.is_empty() {
                self.release_held(now);
            }
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
        for (key, conn) in self.conns.iter_mut() {
            conn.end_at_shutdown();
            self.schedule.close(key);
        }
        self.sweep(Tick::now());
        if let Some((relay, mut io)) = self.relay_parts(Tick::now()) {
            // The departures the sweep announced go out first, as far as they can.
            relay.turn(&mut io);
            relay.shutdown(io.registry);
        }
        self.snapshot();
        Ok(self.stats)
    }

    /// Runs the server on a new thread; returns its address, a handle to stop it, and the
    /// thread, which yields the final counters. Fails only if the OS refuses a thread.
    pub fn spawn(self) -> io::Result<(ListenAddr, ServerHandle, ServerThread)>
    where
        P: Send + 'static,
        P::Session: Send,
        T: Send + 'static,
    {
        let gate = StartGate::default();
        gate.open(true);
        self.spawn_behind(gate)
    }

    /// As [`Server::spawn`], but the loop waits for `gate` before its first turn, and
    /// ends at once (with empty counters) if the gate opens with `false`.
    pub fn spawn_behind(
        self,
        gate: StartGate,
    ) -> io::Result<(ListenAddr, ServerHandle, ServerThread)>
    where
        P: Send + 'static,
        P::Session: Send,
        T: Send + 'static,
    {
        let addr = self.local_addr.clone();
        let handle = self.handle();
        let thread = std::thread::Builder::new()
            .name("multiconn-server".into())
            .spawn(move || {
                if gate.arrive() {
                    self.run()
                } else {
                    Ok(Stats::default())
                }
            })?;
        Ok((addr, handle, thread))
    }

    fn poll_timeout(
        &self,
        now: Tick,
        drain: Option<Tick>,
        stats: Option<Tick>,
    ) -> Option<Duration> {
        if self.schedule.has_again() || self.accept_again {
            return Some(Duration::ZERO);
        }
        let held = (!self.held.is_empty()).then(|| now + FANOUT_CHECK);
        // Folded by hand: the iterator version cost about 60 instructions per turn.
        let timer = self.schedule.next_timer();
        let nearest = earliest(
            earliest(timer, self.accept_paused_until),
            earliest(earliest(drain, stats), held),
        )?;
        Some(nearest.saturating_duration_since(now))
    }

    /// Connections open, those awaiting a PROXY header included.
    fn open_count(&self) -> usize {
        self.conns.len() + self.headers.as_ref().map_or(0, |h| h.awaiting.len())
    }

    /// The loop's counters now, its open connections and CPU time included.
    fn snapshot(&mut self) -> Stats {
        self.stats.open = self.open_count();
        self.stats.cpu = crate::clock::thread_cpu_time();
        self.stats.clone()
    }

    /// Woken: answers the requests for counters, and takes the answers to this loop's
    /// own (a scrape waiting for the other workers').
    fn answer_stats_requests(&mut self, now: Tick) {
        let requests = self.control.take_stats_requests();
        if !requests.is_empty() {
            let stats = self.snapshot();
            for request in requests {
                request.answer(stats.clone());
            }
        }
        if self.metrics.is_some() {
            self.finish_collecting(now, false);
        }
    }

    fn log_stats(&mut self) {
        self.snapshot();
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
        self.close_metrics();
        self.close_udp();
        if let Some(headers) = &mut self.headers {
            // Nothing was said to them yet: there is nothing to drain.
            for awaiting in headers.awaiting.drain() {
                log::debug!(
                    "{}: closed before its PROXY header (shutdown)",
                    awaiting.via
                );
                self.stats.closed[CloseReason::Shutdown as usize] += 1;
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.conns[key].begin_shutdown();
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
                    if self.open_count() >= self.config.limits.max_connections {
                        self.refuse(stream, &peer);
                        continue;
                    }
                    if let Err(e) = configure_accepted(&stream, &self.config.socket) {
                        log::debug!("cannot set socket options for {peer}: {e}");
                    }
                    if self.headers.is_some() {
                        self.await_header(stream, peer, now);
                    } else {
                        self.open(stream, peer, now);
                    }
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

    fn refuse(&mut self, mut stream: Stream, peer: &Peer) {
        self.stats.refused += 1;
        log::debug!("refusing {peer}: {} connections open", self.conns.len());
        // Under TLS a plaintext refusal would only be garbage to the client: just close.
        if let Some(refusal) = self.protocol.refusal().filter(|_| !T::TLS) {
            // Best effort: a fresh socket's send buffer is empty, so this rarely blocks.
            let _ = stream.write(refusal);
            let _ = stream.shutdown_write();
        }
    }

    fn open(&mut self, mut stream: Stream, peer: Peer, now: Tick) {
        let key = self.conns.vacant_key();
        if !register_accepted(&self.poll, &mut stream, key, &peer) {
            return;
        }
        self.stats.accepted += 1;
        self.start(key, stream, peer, now);
    }

    /// Opens the session of a connection registered under `Token(key)`, the slab's next
    /// key: the protocol's `open`, then what it produced, written and broadcast.
    fn start(&mut self, key: usize, stream: Stream, peer: Peer, now: Tick) {
        let stream = match T::accepted(stream, self.config.tls.as_ref()) {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("cannot start TLS for {peer}: {e}");
                return;
            }
        };
        let session = {
            let mut out = self.produced.output_for(0, self.config.limits.max_outbound);
            self.protocol.open(&peer, &mut out)
        };
        self.next_id += 1;
        let entry = self.conns.vacant_entry();
        debug_assert_eq!(entry.key(), key, "registered under the slab's next key");
        let conn = entry.insert(Connection::new(stream, peer, self.next_id, session, now));
        log::info!("Accepted connection from {peer}");
        conn.send_reply(&mut self.produced.reply, &mut self.stats, now);
        self.deliver_broadcast(Some(key), now);
        self.settle(key, now);
    }

    /// `--proxy-protocol`: a connection just accepted waits, unopened, for its header,
    /// for at most the frame timeout.
    #[cold]
    fn await_header(&mut self, mut stream: Stream, via: Peer, now: Tick) {
        let Some(headers) = &mut self.headers else {
            return;
        };
        let slot = headers.awaiting.vacant_key();
        let token = HEADER_TOKENS.start + slot;
        if !register_accepted(&self.poll, &mut stream, token, &via) {
            return;
        }
        self.stats.accepted += 1;
        let timeouts = &self.config.timeouts;
        let wait = timeouts.frame.or(timeouts.idle).unwrap_or(HEADER_TIMEOUT);
        let id = headers.next_id();
        let deadline = now + wait;
        headers.awaiting.insert(proxy::Awaiting {
            stream,
            via,
            id,
            received: Vec::new(),
        });
        self.schedule.arm(deadline, token, id);
        log::debug!("{via}: accepted; awaiting its PROXY header");
    }

    /// Bytes for a connection awaiting its header: once the header is complete, the
    /// connection is opened with the client's address and what followed the header is
    /// its first input; an invalid header, or the peer leaving first, closes it.
    #[cold]
    fn header_event(&mut self, slot: usize, now: Tick) {
        let Some(headers) = &mut self.headers else {
            return;
        };
        let Some(awaiting) = headers.awaiting.get_mut(slot) else {
            return; // a stale event
        };
        let (source, len) = match awaiting.read(&mut self.read_buf) {
            proxy::Progress::Waiting => return,
            proxy::Progress::Complete(source, len) => (source, len),
            ended => {
                let awaiting = headers.awaiting.remove(slot);
                let via = awaiting.via;
                self.stats.bytes_in += awaiting.received.len() as u64;
                self.stats.closed[CloseReason::ProxyHeader as usize] += 1;
                match ended {
                    proxy::Progress::Refused(why) => {
                        log::info!("Closing connection from {via}: {why}")
                    }
                    proxy::Progress::Failed(e) => {
                        log::debug!("{via}: read before its PROXY header: {e}")
                    }
                    _ => log::debug!("{via}: closed before its PROXY header was complete"),
                }
                return;
            }
        };
        let proxy::Awaiting {
            mut stream,
            via,
            received,
            ..
        } = headers.awaiting.remove(slot);
        self.stats.bytes_in += received.len() as u64;
        let peer = match source {
            proxy::Source::Client(addr) => Peer::Tcp(addr),
            proxy::Source::Local => via,
        };
        let key = self.conns.vacant_key();
        if let Err(e) = self
            .poll
            .registry()
            .reregister(&mut stream, Token(key), Interest::READABLE)
        {
            log::warn!("cannot register connection from {peer}: {e}");
            return;
        }
        log::debug!("{peer}: PROXY header from {via}");
        self.start(key, stream, peer, now);
        let early = &received[len..];
        if early.is_empty() {
            return;
        }
        let (conns, mut turn) = self.turn(now);
        let Some(conn) = conns.get_mut(key).filter(|c| !c.is_closed()) else {
            return;
        };
        conn.present_early_input(early);
        let again = conn.serve(&mut turn, true, false);
        self.after_serving(key, again, now);
    }

    /// The header deadline of a connection awaiting its header passed.
    #[cold]
    fn header_timer(&mut self, slot: usize, id: u64) {
        let Some(headers) = &mut self.headers else {
            return;
        };
        if headers.awaiting.get(slot).is_none_or(|a| a.id != id) {
            return; // its header came, or it is gone
        }
        let awaiting = headers.awaiting.remove(slot);
        log::info!(
            "Closing connection from {}: no complete PROXY header in time",
            awaiting.via
        );
        self.stats.bytes_in += awaiting.received.len() as u64;
        self.stats.closed[CloseReason::FrameTimeout as usize] += 1;
    }

    /// Everything a connection borrows from the loop for one turn.
    fn turn(&mut self, now: Tick) -> (&mut Slab<Connection<P::Session, T>>, Turn<'_, P>) {
        let Server {
            conns,
            protocol,
            produced,
            read_buf,
            config,
            stats,
            ..
        } = self;
        let turn = Turn {
            protocol,
            produced,
            read_buf,
            limits: &config.limits,
            timeouts: &config.timeouts,
            stats,
            now,
        };
        (conns, turn)
    }

    fn on_event(&mut self, key: usize, ready: Readiness, now: Tick) {
        let (conns, mut turn) = self.turn(now);
        let Some(conn) = conns.get_mut(key) else {
            // No connection has this key: a side source's, or a stale event.
            return self.side_event(key, ready, now);
        };
        let again = conn.on_event(&mut turn, ready);
        self.after_serving(key, again, now);
    }

    /// Serves the connections deferred from the last turn.
    fn serve_again(&mut self, now: Tick) {
        // Swapped with a spare list that keeps its capacity: serving may queue the same
        // connections for the next turn, and neither list is reallocated.
        let batch = self.schedule.take_again();
        for &(key, id) in &batch {
            let (conns, mut turn) = self.turn(now);
            let Some(conn) = conns.get_mut(key).filter(|c| c.id() == id) else {
                if (key, id) == (UDP.0, 0) {
                    self.udp_echo();
                }
                continue;
            };
            let again = conn.serve_deferred(&mut turn);
            self.after_serving(key, again, now);
        }
        self.schedule.done_again(batch);
    }

    /// What follows serving a connection: its broadcasts go out, and it is settled.
    #[inline(always)]
    fn after_serving(&mut self, key: usize, again: bool, now: Tick) {
        if !self.produced.broadcast.is_empty() && self.deliver_broadcast(Some(key), now) {
            self.hold(key);
        }
        if again {
            self.serve_next_turn(key);
        }
        self.settle(key, now);
    }

    fn serve_next_turn(&mut self, key: usize) {
        let id = self.conns[key].id();
        self.schedule.serve_next_turn(key, id);
    }

    /// Queues this turn's broadcasts on the other members of their groups, shared, not
    /// copied, and passes them to the relay. Returns whether a member (or a destination
    /// of the relay) now owes more than half the cap: the room is congested.
    fn deliver_broadcast(&mut self, from: Option<usize>, now: Tick) -> bool {
        if self.produced.broadcast.is_empty() {
            return false;
        }
        // Taken out for the walk and put back, so its buffers are kept.
        let mut broadcasts = std::mem::take(&mut self.produced.broadcast);
        let mut congested = self.deliver(&broadcasts, from, now);
        if let Some(relay) = &mut self.relay {
            relay.forward(&broadcasts);
            congested |= relay.congested();
        }
        broadcasts.clear();
        self.produced.broadcast = broadcasts;
        congested
    }

    /// Queues `broadcasts` on every open connection but `from` that the protocol says
    /// takes them, run by run. Returns whether one of them now owes more than half the cap.
    fn deliver(&mut self, broadcasts: &Broadcasts, from: Option<usize>, now: Tick) -> bool {
        let max_outbound = self.config.limits.max_outbound;
        let mut congested = false;
        for (group, chunks) in broadcasts.runs() {
            self.framed.clear();
            for (key, conn) in self.conns.iter_mut() {
                if Some(key) == from {
                    continue;
                }
                let chunks = match self.protocol.receives(conn.session(), group) {
                    Receive::No => continue,
                    Receive::Bytes => chunks,
                    Receive::Framed => {
                        if self.framed.is_empty() {
                            let protocol = &self.protocol;
                            self.framed.extend(chunks.iter().map(|c| protocol.frame(c)));
                        }
                        &self.framed[..]
                    }
                };
                if conn.deliver(chunks, max_outbound, &mut self.stats, now) {
                    self.delivered.push(key);
                }
                if conn.is_closed() {
                    self.schedule.close(key);
                }
                congested |= conn.backlog_over(max_outbound / 2);
            }
        }
        self.framed.clear();
        congested
    }

    /// An event whose token is no connection's: one of the relay's sources, a
    /// connection awaiting its PROXY header, or a stale event.
    #[cold]
    fn side_event(&mut self, key: usize, ready: Readiness, now: Tick) {
        if RELAY_TOKENS.contains(&key) {
            if let Some((relay, mut io)) = self.relay_parts(now) {
                relay.on_event(&mut io, Token(key), ready);
            }
        } else if HEADER_TOKENS.contains(&key) {
            self.header_event(key - HEADER_TOKENS.start, now);
        } else if SCRAPE_TOKENS.contains(&key) {
            self.scrape_event(key - SCRAPE_TOKENS.start, ready, now);
        } else if key == METRICS.0 {
            self.metrics_accept(now);
        } else if key == UDP.0 {
            self.udp_event(ready);
        }
        // Otherwise a stale event for a connection removed in this batch.
    }

    /// The relay and what it borrows from the loop for one call, if there is one.
    fn relay_parts(&mut self, now: Tick) -> Option<(&mut dyn Relay, RelayIo<'_>)> {
        let Server {
            relay,
            poll,
            read_buf,
            arrivals,
            ..
        } = self;
        let io = RelayIo {
            registry: poll.registry(),
            read_buf,
            now,
            arrivals,
        };
        Some((relay.as_deref_mut()?, io))
    }

    /// The relay's turn: it sends what was forwarded and brings what arrived, which goes
    /// to every member of its group here. Arrivals that congest the room are held, as a
    /// local sender would be.
    #[cold]
    fn relay_turn(&mut self, now: Tick) {
        let Some((relay, mut io)) = self.relay_parts(now) else {
            return;
        };
        if let Some(at) = relay.turn(&mut io) {
            self.arm_relay(at);
        }
        if self.arrivals.is_empty() {
            return;
        }
        let mut arrivals = std::mem::take(&mut self.arrivals);
        let congested = self.deliver(&arrivals, None, now);
        arrivals.clear();
        self.arrivals = arrivals;
        if congested && !self.arrivals_held {
            self.arrivals_held = true;
            self.held.push(RELAY_REF);
            if let Some(relay) = &mut self.relay {
                relay.hold_arrivals(true);
            }
        }
    }

    /// Puts the relay's next turn in the timer queue, lazily as for a connection: only a
    /// sooner deadline than the one queued is pushed (a later one finds the loop awake
    /// anyway, since every turn is the relay's).
    #[cold]
    fn arm_relay(&mut self, at: Tick) {
        let now = Tick::now();
        if self
            .relay_deadline
            .is_none_or(|queued| at < queued || queued < now)
        {
            self.relay_deadline = Some(at);
            let (key, id) = RELAY_REF;
            self.schedule.arm(at, key, id);
        }
    }

    /// Stops reading a member whose broadcasts congested the room, until it drains.
    #[cold]
    fn hold(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.is_closed() {
            conn.hold();
            self.held.push((key, conn.id()));
        }
    }

    /// Releases the held members (and the relay's arrivals) once no member that reads owes
    /// more than half the cap, nor a destination of the relay; a member or destination that
    /// holds the room and has taken nothing for `FANOUT_STALL` is cut.
    #[cold]
    fn release_held(&mut self, now: Tick) {
        let half = self.config.limits.max_outbound / 2;
        let mut congested = false;
        for (key, conn) in self.conns.iter_mut() {
            if !conn.backlog_over(half) {
                continue;
            }
            if conn.write_stalled_for(now) >= FANOUT_STALL {
                log::warn!(
                    "disconnecting slow consumer {}: {} bytes pending, none taken for {:?}",
                    conn.peer(),
                    conn.outbound_len(),
                    FANOUT_STALL
                );
                conn.cut(CloseReason::SlowConsumer);
                self.schedule.close(key);
            } else {
                congested = true;
            }
        }
        if congested {
            return;
        }
        if let Some(relay) = &mut self.relay {
            if std::mem::take(&mut self.arrivals_held) {
                relay.hold_arrivals(false);
                self.held.retain(|&held| held != RELAY_REF);
            }
            relay.cut_stalled(now, FANOUT_STALL);
            if relay.congested() {
                // Another loop or the broker is behind: this loop's senders wait for it.
                return;
            }
        }
        for (key, id) in std::mem::take(&mut self.held) {
            if let Some(conn) = self.conns.get_mut(key).filter(|c| c.id() == id) {
                conn.release();
                self.settle(key, now);
            }
        }
    }

    #[cold]
    fn flush_delivered(&mut self, now: Tick) {
        while let Some(key) = self.delivered.pop() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.flush_delivered(&mut self.stats, now);
            self.settle(key, now);
        }
    }

    /// After any work on a connection: it takes its phase step and registers its interest
    /// (only if changed); the loop schedules what it asks for.
    #[inline(always)]
    fn settle(&mut self, key: usize, now: Tick) {
        let conn = &mut self.conns[key];
        if let Some(settled) = conn.settle(
            self.poll.registry(),
            Token(key),
            &self.config.limits,
            &self.config.timeouts,
            &mut self.stats,
            now,
        ) {
            let id = conn.id();
            self.schedule.add(key, id, settled);
        }
    }

    fn fire_timers(&mut self, now: Tick) {
        while let Some((at, key, id)) = self.schedule.pop_due(now) {
            if (key, id) == RELAY_REF {
                // The relay's turn follows in this one.
                self.relay_deadline = None;
                continue;
            }
            if !self
                .conns
                .get(key)
                .is_some_and(|c| c.id() == id && c.timer_is(at))
            {
                self.side_timer(at, key, id, now);
                continue; // a stale entry: the connection is gone or re-armed sooner
            }
            let (conns, mut turn) = self.turn(now);
            if let Some(later) = conns[key].on_timer(at, &mut turn) {
                self.schedule.arm(later, key, id);
                continue;
            }
            if self.deliver_broadcast(Some(key), now) {
                self.hold(key);
            }
            self.settle(key, now);
        }
    }

    /// A timer that is no connection's: a side source's (a PROXY header's deadline, a
    /// scrape's), or a stale entry.
    #[cold]
    fn side_timer(&mut self, at: Tick, key: usize, id: u64, now: Tick) {
        if HEADER_TOKENS.contains(&key) {
            self.header_timer(key - HEADER_TOKENS.start, id);
        } else if SCRAPE_TOKENS.contains(&key) {
            self.scrape_timer(key - SCRAPE_TOKENS.start, id, at, now);
        } else if key == METRICS.0 {
            self.finish_collecting(now, true);
        }
    }

    /// Removes every connection marked closed this batch. A removed connection's
    /// `on_close` may broadcast (chat's "left"), which may close slow consumers in turn.
    fn sweep(&mut self, now: Tick) {
        if self.schedule.has_closing() {
            self.remove_closed(now);
        }
        self.stats.requests += std::mem::take(&mut self.produced.requests);
    }

    #[cold]
    #[inline(never)]
    fn remove_closed(&mut self, now: Tick) {
        while self.schedule.has_closing() {
            for key in self.schedule.take_closing() {
                let Some(ended) = remove_ended(&mut self.conns, key, &mut self.stats) else {
                    continue; // already removed (queued twice)
                };
                let peer = ended.peer;
                log::info!("Closing connection to {peer}");
                log::debug!("{peer}: closed ({})", ended.reason.name());
                let mut out = self.produced.output_for(0, self.config.limits.max_outbound);
                self.protocol.on_close(ended.session, &peer, &mut out);
                self.produced.reply.clear();
                self.deliver_broadcast(None, now);
            }
            self.flush_delivered(now);
        }
    }
}

/// Registers a connection just accepted, READABLE, under `token`; a failure is logged and
/// the connection dropped (closed).
fn register_accepted(poll: &Poll, stream: &mut Stream, token: usize, peer: &Peer) -> bool {
    match poll
        .registry()
        .register(stream, Token(token), Interest::READABLE)
    {
        Ok(()) => true,
        Err(e) => {
            log::warn!("cannot register connection from {peer}: {e}");
            false
        }
    }
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
