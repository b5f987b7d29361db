//! The client loop: one `mio::Poll` over outgoing connections, held in a `Slab` whose key
//! is the connection's `Token`, each driven by the server's connection core and scheduled
//! with the server's [`Schedule`]. Connect → write → read → protocol → interest, like
//! the server loop but connecting instead of accepting. A client is a [`Client`]: a
//! [`Protocol`] that is also told how each of its connections ended. The caller turns
//! the loop ([`Driver::turn`]) and decides when it is done. Connections go to an
//! [`Endpoint`]: TCP or a Unix socket, either of them under TLS.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Registry, Token};
use rustls::pki_types::ServerName;
use slab::Slab;

use crate::clock::Tick;
use crate::config::{Limits, Timeouts, READ_CHUNK};
use crate::connection::{CloseReason, Connection, Ended, Failure, Phase, Readiness, Turn};
use crate::net::{describe, AnyStream, ListenAddr, Peer, Stream, Transport};
use crate::outbound::Reply;
use crate::protocol::{Produced, Protocol};
use crate::schedule::{remove_ended, ConnRef, Schedule};
use crate::stats::Stats;
use crate::tls::TlsStream;

/// Where a client connects: a TCP address or a Unix socket, and TLS over it if asked.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: ListenAddr,
    pub tls: Option<ClientTls>,
}

/// A client's TLS: its configuration (shared by every connection, so its session cache
/// lets a reconnect resume) and the name the server's certificate must carry (its SNI).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint {
            addr: ListenAddr::Tcp(addr),
            tls: None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.addr, &self.tls) {
            (ListenAddr::Tcp(addr), Some(_)) => write!(f, "{addr} (TLS)"),
            (ListenAddr::Unix(path), Some(_)) => write!(f, "unix:{} (TLS)", path.display()),
            (ListenAddr::Tcp(addr), None) => write!(f, "{addr}"),
            (ListenAddr::Unix(path), None) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A step of establishing a connection, told to the client as it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Established {
    /// The connect completed.
    Connected,
    /// The TLS handshake completed (only for TLS endpoints; `resumed`: an earlier
    /// session was resumed, without a certificate exchange).
    Secured { resumed: bool },
}

/// Events taken from one `epoll_wait`.
const EVENTS_CAPACITY: usize = 1024;

/// Tokens from here up are free for the caller's own sources (a waker, a timer): their
/// events only end the poll's wait. Slab keys never come near.
pub const FIRST_CALLER_TOKEN: usize = usize::MAX - 15;

/// A client protocol: requests and the checks of their answers, as a [`Protocol`] over
/// each connection's bytes (`open` makes the first requests, queued until the connect
/// completes), and the report of how each connection ended.
pub trait Client: Protocol {
    /// A connection is gone: the protocol closed it (done, or a wrong answer), the server
    /// closed it, a socket error, or a timeout; `ended` says which. A connect that failed
    /// at once ends here too, without ever being polled.
    fn on_ended(&mut self, ended: Ended<Self::Session>);

    /// A connection got one step further in being established.
    fn on_established(&mut self, _session: &mut Self::Session, _step: Established) {}
}

/// The timeouts of a client's connections: the connect and (an answer awaited) the frame
/// timeout as given, no idle or write timeout, and no lingering close: a client that
/// closes has read all it wanted.
pub fn client_timeouts(connect: Duration, frame: Option<Duration>) -> Timeouts {
    Timeouts {
        idle: None,
        write: None,
        frame,
        linger: Duration::ZERO,
        connect: Some(connect),
    }
}

/// A client loop and its connections.
pub struct Driver<P: Client> {
    poll: Poll,
    events: Events,
    conns: Slab<Connection<P::Session, AnyStream>>,
    protocol: P,
    limits: Limits,
    timeouts: Timeouts,
    stats: Stats,
    schedule: Schedule,
    /// Per-loop scratch, reused every turn so the hot path does not allocate.
    read_buf: Vec<u8>,
    produced: Produced,
    next_id: u64,
    /// The start of the current turn.
    now: Tick,
}

impl<P: Client> Driver<P> {
    pub fn new(protocol: P, timeouts: Timeouts) -> io::Result<Self> {
        Ok(Driver {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            conns: Slab::new(),
            protocol,
            limits: Limits {
                // A client bounds what it owes the server itself (its pipeline); pausing its
                // reads while requests wait to be written could deadlock with a server that
                // does the same.
                max_outbound: usize::MAX,
                ..Limits::default()
            },
            timeouts,
            stats: Stats::default(),
            schedule: Schedule::default(),
            read_buf: vec![0; READ_CHUNK],
            produced: Produced {
                reply: Reply::with_capacity(READ_CHUNK),
                ..Produced::default()
            },
            next_id: 0,
            now: Tick::now(),
        })
    }

    /// For the caller's own sources, with tokens from [`FIRST_CALLER_TOKEN`] up.
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    pub fn protocol_mut(&mut self) -> &mut P {
        &mut self.protocol
    }

    pub fn into_protocol(self) -> P {
        self.protocol
    }

    /// The loop's counters (bytes in and out, among others).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Connections not yet ended.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn connections(&self) -> impl Iterator<Item = &Connection<P::Session, AnyStream>> {
        self.conns.iter().map(|(_, conn)| conn)
    }

    /// Starts a connection to `endpoint`: the protocol opens its session (what it produces
    /// waits until the connect completes, and under TLS until the handshake has) and the
    /// connect timeout starts. A connect the OS refuses at once is ended like any other,
    /// through `on_ended`, and gives `None`. The error is the poll's, fatal for the loop.
    pub fn connect(&mut self, endpoint: &Endpoint) -> io::Result<Option<ConnRef>> {
        self.now = Tick::now();
        let peer = match &endpoint.addr {
            ListenAddr::Tcp(addr) => Peer::Tcp(*addr),
            ListenAddr::Unix(_) => Peer::Unix,
        };
        let session = {
            let mut out = self.produced.output_for(0, self.limits.max_outbound);
            self.protocol.open(&peer, &mut out)
        };
        let mut stream = match start_connect(endpoint) {
            Ok(stream) => stream,
            Err(e) => {
                self.produced.reply.clear();
                self.stats.closed[CloseReason::Error as usize] += 1;
                self.protocol.on_ended(Ended {
                    session,
                    peer,
                    reason: CloseReason::Error,
                    was_cut: false,
                    error: Some(Failure {
                        op: "connect",
                        error: io::Error::new(e.kind(), describe(&e)),
                    }),
                });
                return Ok(None);
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        // A non-blocking connect completes as writability (or fails as an error event).
        self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.next_id += 1;
        let id = self.next_id;
        entry.insert(Connection::connecting(stream, peer, id, session, self.now));
        let (conns, mut turn) = self.parts();
        conns[key].opened(&mut turn);
        self.settle(key);
        Ok(Some((key, id)))
    }

    /// One turn: waits for events (at most `wait`, and no longer than the nearest
    /// connection deadline), serves them, the connections deferred from the last turn and
    /// the timers due, then removes the connections that ended.
    pub fn turn(&mut self, wait: Option<Duration>) -> io::Result<()> {
        let timeout = if self.schedule.has_again() {
            Some(Duration::ZERO)
        } else {
            let timer = self
                .schedule
                .next_timer()
                .map(|at| at.saturating_duration_since(self.now));
            match (wait, timer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        // Taken out while its events are served (no allocation: a zero capacity).
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let polled = self.poll.poll(&mut events, timeout);
        self.now = Tick::now();
        if let Err(e) = polled {
            self.events = events;
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for event in events.iter() {
            self.on_event(event.token().0, Readiness::from(event));
        }
        self.events = events;
        if self.schedule.has_again() {
            self.serve_again();
        }
        self.fire_timers();
        self.sweep();
        Ok(())
    }

    /// Turns the loop until every connection has ended.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.conns.is_empty() {
            self.turn(None)?;
        }
        Ok(())
    }

    /// Serves a connection with nothing to read: a streaming protocol's `on_drained`
    /// sends what is now due (a request whose scheduled time came, the first requests of
    /// a run).
    pub fn poke(&mut self, (key, id): ConnRef) {
        let (conns, mut turn) = self.parts();
        let Some(conn) = conns.get_mut(key).filter(|c| c.id() == id) else {
            return;
        };
        let again = conn.serve(&mut turn, false, false);
        self.after_serving(key, again);
    }

    /// Everything a connection borrows from the loop for one turn.
    fn parts(&mut self) -> (&mut Slab<Connection<P::Session, AnyStream>>, Turn<'_, P>) {
        let Driver {
            conns,
            protocol,
            produced,
            read_buf,
            limits,
            timeouts,
            stats,
            now,
            ..
        } = self;
        let turn = Turn {
            protocol,
            produced,
            read_buf,
            limits,
            timeouts,
            stats,
            now: *now,
        };
        (conns, turn)
    }

    fn on_event(&mut self, key: usize, ready: Readiness) {
        let (conns, mut turn) = self.parts();
        // Not a connection (the caller's source), or one removed earlier this batch.
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let before = establishing(conn);
        let again = conn.on_event(&mut turn, ready);
        if before.is_some() {
            self.note_established(key, before);
        }
        self.after_serving(key, again);
    }

    /// Tells the client which steps of establishing connection `key` completed since
    /// `before` (from [`establishing`]).
    #[cold]
    fn note_established(&mut self, key: usize, before: Option<(bool, bool)>) {
        let conn = &mut self.conns[key];
        if conn.is_closed() {
            return;
        }
        let (was_connecting, _) = before.unwrap_or_default();
        let (connecting, handshaking) = establishing(conn).unwrap_or_default();
        let tls = conn.stream().tls().map(TlsStream::is_resumed);
        if was_connecting && !connecting {
            self.protocol
                .on_established(conn.session_mut(), Established::Connected);
        }
        if let (Some(resumed), false, false) = (tls, connecting, handshaking) {
            self.protocol
                .on_established(conn.session_mut(), Established::Secured { resumed });
            // What the client held back until the handshake was done may go out now.
            let id = conn.id();
            self.poke((key, id));
        }
    }

    fn serve_again(&mut self) {
        let batch = self.schedule.take_again();
        for &conn in &batch {
            let (conns, mut turn) = self.parts();
            let Some(c) = conns.get_mut(conn.0).filter(|c| c.id() == conn.1) else {
                continue;
            };
            let before = establishing(c);
            let again = c.serve_deferred(&mut turn);
            if before.is_some() {
                self.note_established(conn.0, before);
            }
            self.after_serving(conn.0, again);
        }
        self.schedule.done_again(batch);
    }

    #[inline]
    fn after_serving(&mut self, key: usize, again: bool) {
        if again {
            let id = self.conns[key].id();
            self.schedule.serve_next_turn(key, id);
        }
        self.settle(key);
    }

    /// The connection takes its phase step and registers its interest (only if changed);
    /// the loop schedules what it asks for.
    #[inline]
    fn settle(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if let Some(settled) = conn.settle(
            self.poll.registry(),
            Token(key),
            &self.limits,
            &self.timeouts,
            &mut self.stats,
            self.now,
        ) {
            let id = conn.id();
            self.schedule.add(key, id, settled);
        }
    }

    fn fire_timers(&mut self) {
        while let Some((at, key, id)) = self.schedule.pop_live(&self.conns, self.now) {
            let (conns, mut turn) = self.parts();
            if let Some(later) = conns[key].on_timer(at, &mut turn) {
                self.schedule.arm(later, key, id);
                continue;
            }
            self.settle(key);
        }
    }

    /// Removes the connections that ended this turn and tells the protocol how.
    fn sweep(&mut self) {
        while self.schedule.has_closing() {
            for key in self.schedule.take_closing() {
                if let Some(ended) = remove_ended(&mut self.conns, key, &mut self.stats) {
                    self.protocol.on_ended(ended);
                }
            }
        }
        self.stats.requests += std::mem::take(&mut self.produced.requests);
    }
}

/// Whether a connection is still being established: `Some((connecting, handshaking))`,
/// or `None` once it is open (and secured, under TLS).
#[inline]
fn establishing<S>(conn: &Connection<S, AnyStream>) -> Option<(bool, bool)> {
    let connecting = conn.phase() == Phase::Connecting;
    let handshaking = conn.stream().is_handshaking();
    (connecting || handshaking).then_some((connecting, handshaking))
}

/// Starts a non-blocking connect to `endpoint`, with its TLS layer on top if it has one.
fn start_connect(endpoint: &Endpoint) -> io::Result<AnyStream> {
    let plain = match &endpoint.addr {
        ListenAddr::Tcp(addr) => {
            let stream = TcpStream::connect(*addr)?;
            // Requests leave at once instead of waiting for Nagle's algorithm.
            if let Err(e) = stream.set_nodelay(true) {
                log::debug!("cannot set TCP_NODELAY: {e}");
            }
            Stream::Tcp(stream)
        }
        ListenAddr::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
    };
    match &endpoint.tls {
        None => Ok(AnyStream::Plain(plain)),
        Some(tls) => {
            let layer = TlsStream::client(plain, tls.config.clone(), tls.name.clone())?;
            Ok(AnyStream::Tls(Box::new(layer)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Flow, Output, Timeout};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Sends `ping` on opening and waits for `pong`; keeps how each connection ended.
    #[derive(Default)]
    struct Ping {
        answered: bool,
        timed_out: bool,
        ended: Vec<(CloseReason, Option<(&'static str, io::ErrorKind)>)>,
    }

    impl Protocol for Ping {
        type Session = ();
        fn open(&mut self, _: &Peer, out: &mut Output<'_>) {
            out.send(b"ping");
        }
        fn on_input(&mut self, _: &mut (), input: &[u8], _: &mut Output<'_>) -> (usize, Flow) {
            if input.len() < 4 {
                return (0, Flow::Continue);
            }
            self.answered = input == b"pong";
            (input.len(), Flow::Close)
        }
        fn mid_frame(&self, _: &()) -> bool {
            !self.answered
        }
        fn on_timeout(&mut self, _: &mut (), _: Timeout, _: &mut Output<'_>) {
            self.timed_out = true;
        }
    }

    impl Client for Ping {
        fn on_ended(&mut self, ended: Ended<()>) {
            let error = ended.error.map(|f| (f.op, f.error.kind()));
            self.ended.push((ended.reason, error));
        }
    }

    fn ping_driver() -> Driver<Ping> {
        let timeouts = client_timeouts(Duration::from_secs(5), Some(Duration::from_millis(200)));
        Driver::new(Ping::default(), timeouts).unwrap()
    }

    /// A request queued while connecting goes out once connected; the answer closes the
    /// connection, which ends as the protocol's doing.
    #[test]
    fn request_answer_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = [0u8; 4];
            conn.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ping");
            conn.write_all(b"pong").unwrap();
        });
        let mut driver = ping_driver();
        assert!(driver.connect(&addr.into()).unwrap().is_some());
        driver.run().unwrap();
        server.join().unwrap();
        let ping = driver.into_protocol();
        assert!(ping.answered);
        assert_eq!(ping.ended, [(CloseReason::Protocol, None)]);
    }

    /// A refused connect and an answer that never comes both end through `on_ended`:
    /// the first with the connect's error, the second as a frame timeout.
    #[test]
    fn refusal_and_silence() {
        let refused = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut driver = ping_driver();
        driver.connect(&refused.into()).unwrap();
        driver.run().unwrap();
        assert_eq!(
            driver.protocol().ended,
            [(
                CloseReason::Error,
                Some(("connect", io::ErrorKind::ConnectionRefused))
            )]
        );

        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut driver = ping_driver();
        let started = std::time::Instant::now();
        driver
            .connect(&silent.local_addr().unwrap().into())
            .unwrap();
        driver.run().unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        let ping = driver.into_protocol();
        assert!(ping.timed_out);
        assert_eq!(ping.ended, [(CloseReason::FrameTimeout, None)]);
    }
}
