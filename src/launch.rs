//! Starting servers the way the binary does: pick the protocol, bind one loop per worker,
//! turn SIGINT/SIGTERM into a graceful shutdown, and collect the counters at the end.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::clock::Tick;
use crate::config::ServerConfig;
pub use crate::net::describe;
use crate::net::{resolve, Accepted, AnyStream, ListenAddr, Stream};
use crate::protocol::app::{App, DEFAULT_MAX_CONTENT_LENGTH};
use crate::protocol::chat::{self, Chat, ChatConfig, Roster};
use crate::protocol::echo::Echo;
use crate::protocol::file::FileServer;
use crate::protocol::http::{self, Http, HttpConfig};
use crate::protocol::Protocol;
use crate::relay::redis::{Redis, RedisConfig};
use crate::relay::{mesh, mesh_token, redis_tokens, Links};
use crate::root::Root;
use crate::server::{Server, ServerHandle, ServerThread, StartGate};
use crate::stats::Stats;

/// The protocols `multiconn-server --protocol` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolKind {
    /// Send every byte back (the tutorial's multiconn-server).
    Echo,
    /// A keep-alive HTTP/1.1 server answering GET and HEAD with one page, or the files
    /// beneath --root.
    Http,
    /// The tutorial's application protocol (app-server.py): JSON search and binary requests.
    App,
    /// Group chat: each line goes to the others in its room as `[HOST:PORT] text`.
    Chat,
    /// File transfer from --root: `PATH` line → `OK <size>` and the bytes, or `ERR <reason>`.
    File,
}

/// Settings that only some protocols read; each protocol takes what it needs.
#[derive(Debug, Clone, Default)]
pub struct ProtocolOptions {
    /// http: the file served instead of the default page (read once at start).
    pub body: Option<PathBuf>,
    /// http: the header-section cap in bytes (default `http::DEFAULT_MAX_HEADER`).
    pub max_header: Option<usize>,
    /// app: the largest `content-length` accepted, in bytes (default `app::DEFAULT_MAX_CONTENT_LENGTH`).
    pub max_content_length: Option<usize>,
    /// chat: the longest line accepted, in bytes (default `chat::DEFAULT_MAX_LINE`).
    pub max_line: Option<usize>,
    /// chat: stamp lines with the local time (seed 004).
    pub timestamps: bool,
    /// chat: send members their own lines too (seed 004).
    pub echo_sender: bool,
    /// chat: serve the page and WebSocket members on the chat port.
    pub web: bool,
    /// chat: `redis://HOST:PORT` of the Redis whose pub/sub carries lines between servers.
    pub redis: Option<String>,
    /// file, http: the directory served; `--protocol file` requires it; for http it is
    /// exclusive with `body`.
    pub root: Option<PathBuf>,
}

/// How to run: the loop's configuration, the protocol, and how many loops.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub config: ServerConfig,
    pub protocol: ProtocolKind,
    pub protocol_options: ProtocolOptions,
    /// Threads, each its own loop; they share one listener (each has its own SO_REUSEPORT
    /// one with `config.socket.reuseport`).
    pub workers: usize,
    /// Serve the Prometheus metrics here, from the first worker's loop.
    pub metrics: Option<SocketAddr>,
    /// Echo UDP datagrams on the TCP address too.
    pub udp: bool,
    /// Derive `config.limits.max_connections` from the open-files limit (raised to its
    /// hard maximum) instead of taking it as given, and say so at startup.
    pub derive_max_connections: bool,
    /// Serve every connection under TLS with this certificate and key.
    pub tls: Option<TlsFiles>,
}

/// `--tls-cert FILE --tls-key FILE`: a PEM certificate chain (the server's first) and its
/// private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why servers could not be started: the operator's mistake in what was asked (exit 2,
/// like any usage error) or a failure of what was tried (exit 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchError {
    Usage(String),
    Failed(String),
}

impl LaunchError {
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Usage(_) => 2,
            LaunchError::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::Usage(message) | LaunchError::Failed(message) => f.write_str(message),
        }
    }
}

impl From<String> for LaunchError {
    fn from(message: String) -> Self {
        LaunchError::Failed(message)
    }
}

impl From<&str> for LaunchError {
    fn from(message: &str) -> Self {
        LaunchError::Failed(message.to_owned())
    }
}

/// Running server loops: handles to stop them and the threads that yield their counters.
pub struct Workers {
    pub addr: ListenAddr,
    pub handles: Vec<ServerHandle>,
    threads: Vec<ServerThread>,
}

impl Workers {
    /// Asks every loop for a graceful shutdown.
    pub fn shutdown(&self) {
        for handle in &self.handles {
            handle.shutdown();
        }
    }

    /// Waits for every loop; returns each loop's counters, in worker order.
    pub fn join(self) -> Result<Vec<Stats>, String> {
        let mut all = Vec::with_capacity(self.threads.len());
        for thread in self.threads {
            let stats = thread
                .join()
                .map_err(|_| "a server thread panicked".to_string())?
                .map_err(|e| format!("server loop failed: {}", describe(&e)))?;
            all.push(stats);
        }
        Ok(all)
    }
}

/// Descriptors kept free of connections: listener, epoll, waker, files served, logs.
const FD_HEADROOM: u64 = 100;

/// Raises the soft open-files limit to the hard one (as nginx's `worker_rlimit_nofile`
/// would) and derives a per-worker connection limit from it. Returns the limit and a
/// sentence saying how it was derived.
pub fn raise_open_files_limit(workers: usize) -> (usize, String) {
    let Some(soft) = crate::net::raise_open_files_limit() else {
        return (10_000, "open-files limit unknown; default".into());
    };
    let usable = soft.saturating_sub(FD_HEADROOM).max(1);
    let per_worker = (usable / workers.max(1) as u64).max(1) as usize;
    (
        per_worker,
        format!("open-files limit {soft}, less {FD_HEADROOM} kept for the server itself"),
    )
}

/// Binds every worker, then serves until SIGINT or SIGTERM; returns the merged counters.
/// The first worker runs on this thread and takes the signals inside its own loop, so a
/// one-worker server is a single-threaded process (which also spares every recv and send
/// glibc's thread-cancellation bookkeeping).
pub fn serve_until_signalled(options: LaunchOptions) -> Result<Stats, LaunchError> {
    // Installed before binding, so an early Ctrl-C is handled too rather than killing us.
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let per_worker = dispatch(options, Foreground { signals })?;
    let mut total = Stats::default();
    for (i, stats) in per_worker.iter().enumerate() {
        if per_worker.len() > 1 {
            log::info!("worker {}: totals: {stats}", i + 1);
        }
        total.merge(stats);
    }
    Ok(total)
}

/// Binds every worker and starts each loop on a thread of its own.
pub fn start(options: LaunchOptions) -> Result<Workers, LaunchError> {
    dispatch(options, Spawn)
}

/// Values and combinations that cannot work, refused before anything is bound.
fn validate(options: &LaunchOptions) -> Result<(), String> {
    options.config.validate()?;
    if options.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    if options.udp && options.tls.is_some() {
        return Err("--udp cannot go with TLS (--tls-cert): UDP echo has no DTLS".into());
    }
    if options.udp && matches!(options.config.listen, ListenAddr::Unix(_)) {
        return Err("--udp needs a TCP address, not --unix".into());
    }
    if options.workers > 1 && options.config.socket.reuseport {
        if let ListenAddr::Unix(_) = options.config.listen {
            // SO_REUSEPORT balances TCP only; one Unix path has one listener, which the
            // workers share without it.
            return Err("--reuseport with --workers works on TCP only".into());
        }
    }
    let chat_only = [
        ("--timestamps", options.protocol_options.timestamps),
        ("--echo-sender", options.protocol_options.echo_sender),
        ("--web", options.protocol_options.web),
        ("--redis", options.protocol_options.redis.is_some()),
    ];
    if options.protocol != ProtocolKind::Chat {
        if let Some((flag, _)) = chat_only.iter().find(|(_, set)| *set) {
            return Err(format!("{flag} works with --protocol chat only"));
        }
    }
    Ok(())
}

/// What to do with the bound servers of one protocol.
trait Launcher {
    type Output;
    fn launch<P, T>(self, servers: Vec<Server<P, T>>) -> Result<Self::Output, LaunchError>
    where
        P: Protocol + Send + 'static,
        P::Session: Send,
        T: Accepted + Send + 'static;
}

/// Every loop on a thread of its own.
struct Spawn;

impl Launcher for Spawn {
    type Output = Workers;
    fn launch<P, T>(self, servers: Vec<Server<P, T>>) -> Result<Workers, LaunchError>
    where
        P: Protocol + Send + 'static,
        P::Session: Send,
        T: Accepted + Send + 'static,
    {
        let addr = servers
            .first()
            .map(|server| server.local_addr().clone())
            .ok_or("no worker to start")?;
        let mut workers = Workers {
            addr,
            handles: Vec::new(),
            threads: Vec::new(),
        };
        // One thread at a time, each running before the next is made, and no loop turns
        // until all exist: a thread the OS refuses then fails here alone, and leaves the
        // others unstarted, with nothing of theirs allocating against the same limit.
        let gate = StartGate::default();
        for server in servers {
            match server.spawn_behind(gate.clone()) {
                Ok((_, handle, thread)) => {
                    workers.handles.push(handle);
                    workers.threads.push(thread);
                    gate.wait_arrived(workers.threads.len());
                }
                Err(e) => {
                    // The workers already spawned would otherwise serve on, unowned.
                    gate.open(false);
                    let _ = workers.join();
                    return Err(format!("cannot start a worker thread: {e}").into());
                }
            }
        }
        gate.open(true);
        Ok(workers)
    }
}

/// The first loop on this thread, taking the signals; the others on threads.
struct Foreground {
    signals: Signals,
}

impl Launcher for Foreground {
    type Output = Vec<Stats>;
    fn launch<P, T>(self, mut servers: Vec<Server<P, T>>) -> Result<Vec<Stats>, LaunchError>
    where
        P: Protocol + Send + 'static,
        P::Session: Send,
        T: Accepted + Send + 'static,
    {
        if servers.is_empty() {
            return Err("no worker to start".into());
        }
        let first = servers.remove(0);
        let others = if servers.is_empty() {
            None
        } else {
            Some(Spawn.launch(servers)?)
        };
        let peers = others
            .as_ref()
            .map(|w| w.handles.clone())
            .unwrap_or_default();
        let mut all = vec![first
            .run_until_signalled(self.signals, peers)
            .map_err(|e| format!("server loop failed: {}", describe(&e)))?];
        if let Some(others) = others {
            all.extend(others.join()?);
        }
        Ok(all)
    }
}

/// Loads the TLS configuration if one is asked for, and launches loops whose connections
/// hold plain streams, or streams under TLS.
fn dispatch<L: Launcher>(
    mut options: LaunchOptions,
    launcher: L,
) -> Result<L::Output, LaunchError> {
    validate(&options).map_err(LaunchError::Usage)?;
    let Some(files) = &options.tls else {
        return dispatch_protocol::<L, Stream>(options, launcher);
    };
    // HTTP, and chat's page and WebSocket, say so in ALPN (browsers and curl offer h2
    // first); the other protocols are not registered names, and a client offering
    // none is served whatever is configured.
    let http = options.protocol == ProtocolKind::Http || options.protocol_options.web;
    let alpn: &[&[u8]] = if http { &[b"http/1.1"] } else { &[] };
    let config = crate::tls::server_config(&files.cert, &files.key, alpn)?;
    log::info!(
        "TLS 1.2 and 1.3 with the certificate in {}",
        files.cert.display()
    );
    options.config.tls = Some(config);
    dispatch_protocol::<L, AnyStream>(options, launcher)
}

/// Builds the chosen protocol, binds every worker with it, and launches them.
fn dispatch_protocol<L, T>(options: LaunchOptions, launcher: L) -> Result<L::Output, LaunchError>
where
    L: Launcher,
    T: Accepted + Send + 'static,
{
    match options.protocol {
        ProtocolKind::Echo => launcher.launch(bind_all::<_, T, _>(options, |_| Echo)?),
        ProtocolKind::Http => {
            let responder = Http::new(http_config(&options.protocol_options)?);
            launcher.launch(bind_all::<_, T, _>(options, move |_| responder.clone())?)
        }
        ProtocolKind::App => {
            let max = options.protocol_options.max_content_length;
            let max = max.unwrap_or(DEFAULT_MAX_CONTENT_LENGTH);
            launcher.launch(bind_all::<_, T, _>(options, |_| App::new(max))?)
        }
        ProtocolKind::Chat => {
            let chosen = &options.protocol_options;
            let config = ChatConfig {
                max_line: chosen.max_line.unwrap_or(chat::DEFAULT_MAX_LINE),
                timestamps: chosen.timestamps,
                echo_sender: chosen.echo_sender,
                web: chosen.web,
            };
            let needed = config.max_line.saturating_add(config.line_overhead());
            if needed > options.config.limits.max_outbound {
                // One maximal line would cut every recipient as a slow consumer.
                return Err(LaunchError::Usage(format!(
                    "--max-line {} needs --max-outbound of at least {needed} for chat",
                    config.max_line
                )));
            }
            let redis = chosen.redis.as_deref().map(redis_address).transpose()?;
            // The largest chunk a broadcast can be: a batch of lines, or one long line.
            let max_chunk = needed.max(16 * 1024);
            let max_outbound = options.config.limits.max_outbound;
            let roster = Arc::new(Roster::default());
            let mut servers = bind_all(options, move |_| {
                Chat::with_config(config.clone(), roster.clone())
            })?;
            attach_relays::<T>(&mut servers, redis, max_chunk, max_outbound)?;
            launcher.launch(servers)
        }
        ProtocolKind::File => {
            let Some(root) = options.protocol_options.root.clone() else {
                return Err(LaunchError::Usage(
                    "--protocol file needs --root DIR".into(),
                ));
            };
            let server = FileServer::new(&root).map_err(|e| cannot_serve(&root, &e))?;
            log::info!("Serving files from {}", server.root().display());
            launcher.launch(bind_all::<_, T, _>(options, move |_| server.clone())?)
        }
    }
}

fn cannot_serve(root: &std::path::Path, e: &std::io::Error) -> String {
    format!(
        "cannot serve files from {}: {}",
        root.display(),
        describe(e)
    )
}

/// Binds one server per worker, all on the same address: one listener shared by every
/// worker, or with `--reuseport` one SO_REUSEPORT listener each.
fn bind_all<P, T, F>(options: LaunchOptions, make: F) -> Result<Vec<Server<P, T>>, LaunchError>
where
    P: Protocol,
    T: Accepted,
    F: Fn(usize) -> P,
{
    let workers = options.workers.max(1);
    let mut servers: Vec<Server<P, T>> = Vec::with_capacity(workers);
    let mut config = options.config;
    let derived = options.derive_max_connections.then(|| {
        let (limit, why) = raise_open_files_limit(workers);
        config.limits.max_connections = limit;
        why
    });
    for worker in 0..workers {
        let mut worker_config = config.clone();
        if workers > 1 {
            worker_config.name = Some(format!("worker {}", worker + 1));
        }
        let shared = servers.first().filter(|_| !config.socket.reuseport);
        let mut server = match shared {
            // Without SO_REUSEPORT the others take a handle on the first's listener: one
            // accept queue, woken in every loop, taken by whichever accepts first.
            Some(first) => first.share_listener().and_then(|listener| {
                Server::with_listener_as(worker_config, listener, make(worker))
            }),
            None => Server::bind_as(worker_config, make(worker)),
        }
        .map_err(|e| format!("cannot listen on {}: {}", config.listen, describe(&e)))?;
        if options.udp {
            let socket = match shared.and_then(Server::share_udp) {
                Some(socket) => socket,
                None => bind_udp(server.local_addr(), &config.socket),
            };
            socket
                .and_then(|socket| server.serve_udp(socket))
                .map_err(|e| {
                    format!(
                        "cannot listen for UDP on {}: {}",
                        server.local_addr(),
                        describe(&e)
                    )
                })?;
        }
        if worker == 0 {
            log::info!("Listening on {}", server.local_addr());
            if options.udp {
                log::info!("Echoing UDP datagrams on {}", server.local_addr());
            }
            if let Some(why) = &derived {
                log::info!(
                    "Accepting up to {} connections per worker ({why})",
                    config.limits.max_connections
                );
            }
            // With port 0 the first worker's port is the OS's choice; the others share it.
            config.listen = server.local_addr().clone();
        }
        servers.push(server);
    }
    if let Some(addr) = options.metrics {
        let cannot =
            |e: std::io::Error| format!("cannot serve metrics on {addr}: {}", describe(&e));
        let listener = std::net::TcpListener::bind(addr).map_err(cannot)?;
        let bound = listener.local_addr().map_err(cannot)?;
        let peers = servers.iter().skip(1).map(Server::handle).collect();
        let first = &mut servers[0];
        first.serve_metrics(listener).map_err(cannot)?;
        first.add_metric_peers(peers);
        log::info!("Serving metrics on http://{bound}/metrics");
    }
    Ok(servers)
}

/// A UDP socket on the TCP listener's address (SO_REUSEPORT as the listener has it).
fn bind_udp(
    addr: &ListenAddr,
    options: &crate::net::SocketOptions,
) -> std::io::Result<std::net::UdpSocket> {
    let ListenAddr::Tcp(addr) = addr else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(*addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if options.reuseport {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&(*addr).into())?;
    Ok(socket.into())
}

/// The Redis address in `redis://HOST[:PORT][/]` (port 6379 by default), resolved.
fn redis_address(url: &str) -> Result<SocketAddr, LaunchError> {
    let usage = || LaunchError::Usage(format!("--redis wants redis://HOST:PORT, not {url:?}"));
    let rest = url.strip_prefix("redis://").ok_or_else(usage)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '@']) {
        return Err(usage());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => {
            (host, port.parse::<u16>().map_err(|_| usage())?)
        }
        _ => (rest, 6379),
    };
    resolve(host, port)
        .map_err(|e| LaunchError::Failed(format!("cannot resolve {host}: {}", describe(&e))))
}

/// Gives every chat loop its relay: a mesh between the loops when there are several, and
/// links to Redis with `--redis`. A server's loops share one id, so each drops what any
/// of them published (the mesh brought it already).
fn attach_relays<T: Accepted>(
    servers: &mut [Server<Chat, T>],
    redis: Option<SocketAddr>,
    max_chunk: usize,
    max_outbound: usize,
) -> Result<(), LaunchError> {
    let mut meshes = if servers.len() > 1 {
        let registries: Vec<_> = servers.iter().map(Server::registry).collect();
        mesh::build(&registries, mesh_token(), max_outbound)
            .map_err(|e| format!("cannot link the workers: {}", describe(&e)))?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None]
    };
    if redis.is_none() && servers.len() == 1 {
        return Ok(());
    }
    let server_id = RandomState::new().build_hasher().finish();
    if let Some(addr) = redis {
        log::info!("Relaying lines through redis://{addr} (server id {server_id:016x})");
    }
    for (server, mesh) in servers.iter_mut().zip(meshes.iter_mut()) {
        let redis = redis.map(|addr| {
            let config = RedisConfig {
                addr,
                server_id,
                max_chunk,
                max_outbound,
            };
            Redis::new(config, redis_tokens(), Tick::now())
        });
        server.set_relay(Box::new(Links {
            mesh: mesh.take(),
            redis,
        }));
    }
    Ok(())
}

/// The HTTP responder's configuration from the server's flags: reads the `--body` file
/// (once, here) if one is named.
fn http_config(options: &ProtocolOptions) -> Result<HttpConfig, LaunchError> {
    let mut config = HttpConfig::default();
    if let Some(root) = &options.root {
        if options.body.is_some() {
            return Err(LaunchError::Usage(
                "--body and --root are exclusive: one page, or the files beneath a root".into(),
            ));
        }
        let root = Root::new(root).map_err(|e| cannot_serve(root, &e))?;
        log::info!("Serving files from {}", root.path().display());
        config.root = Some(root);
    }
    if let Some(path) = &options.body {
        config.body = http::read_body(path)?;
    }
    if let Some(max_header) = options.max_header {
        config.max_header = max_header;
    }
    Ok(config)
}
