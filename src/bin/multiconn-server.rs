//! `multiconn-server HOST PORT`: serve a protocol (echo by default) on one event loop per
//! worker. Parses flags into a `LaunchOptions` and hands over to the library.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use multiconn::cli::{die, init_logging};
use multiconn::duration::parse_duration;
use multiconn::launch::{
    serve_until_signalled, LaunchOptions, ProtocolKind, ProtocolOptions, TlsFiles,
};
use multiconn::net::resolve;
use multiconn::protocol::app::DEFAULT_MAX_CONTENT_LENGTH;
use multiconn::protocol::chat::DEFAULT_MAX_LINE;
use multiconn::{ListenAddr, ServerConfig};

const EXAMPLES: &str = "\
Examples:
  multiconn-server 127.0.0.1 54321                   echo, as in the tutorial
  multiconn-server --protocol app 127.0.0.1 65432    the tutorial's app server (app-client)
  multiconn-server --protocol chat --web 0.0.0.0 5000
  multiconn-server --protocol http --workers 2 --metrics 127.0.0.1:9100 0.0.0.0 8080
  multiconn-server --protocol file --root /srv/files --idle-timeout 2m 127.0.0.1 54321
  multiconn-server --protocol http --tls-cert cert.pem --tls-key key.pem 0.0.0.0 8443

Time flags take 30s, 2m, 500ms, 1m30s, or a bare number of seconds. SIGINT or SIGTERM
drains and exits 0 (a second one exits at once, 130); SIGHUP is logged and ignored.
Usage errors exit 2, other failures 1.";

#[derive(Parser, Debug)]
#[command(
    name = "multiconn-server",
    version,
    about = "A single-threaded, readiness-based TCP server (echo unless --protocol says otherwise)",
    after_help = EXAMPLES,
    max_term_width = 100
)]
struct Args {
    /// Address to listen on: IPv4, IPv6 (::1, ::) or a name (localhost).
    #[arg(required_unless_present = "unix")]
    host: Option<String>,
    /// Port to listen on (0: let the OS choose).
    #[arg(required_unless_present = "unix")]
    port: Option<u16>,
    /// Listen on this Unix domain socket instead of TCP (a stale socket file is replaced
    /// only if nothing listens on it; anything else at PATH is an error, left untouched).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["host", "port"])]
    unix: Option<PathBuf>,
    /// Which protocol to serve.
    #[arg(long, value_enum, default_value_t = ProtocolKind::Echo)]
    protocol: ProtocolKind,

    /// http: serve this regular file's bytes instead of the default page (read once at start).
    #[arg(long, value_name = "FILE", help_heading = "Protocol options")]
    body: Option<PathBuf>,
    /// http: the largest request header section, in bytes (default 8192); larger is 431.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Protocol options")]
    max_header: Option<u64>,
    /// app: the largest request content accepted, in bytes; larger is refused from the header.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_CONTENT_LENGTH, help_heading = "Protocol options")]
    max_content_length: usize,
    /// chat: the longest line accepted; a longer one gets `! line too long` and is disconnected.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_LINE, help_heading = "Protocol options")]
    max_line: usize,
    /// chat: stamp each line with the local time, as %Y/%m/%d-%H:%M:%S (seed 004).
    #[arg(long, help_heading = "Protocol options")]
    timestamps: bool,
    /// chat: send a member its own lines too (seed 004); by default they go to the others.
    #[arg(long, help_heading = "Protocol options")]
    echo_sender: bool,
    /// chat: serve a chat page at GET / and WebSocket members at /ws on the chat port.
    #[arg(long, help_heading = "Protocol options")]
    web: bool,
    /// chat: share rooms with other servers through this Redis's pub/sub (redis://HOST:PORT).
    #[arg(long, value_name = "URL", help_heading = "Protocol options")]
    redis: Option<String>,
    /// file, http: the directory whose files are served (required by --protocol file;
    /// for http, instead of the one page).
    #[arg(long, value_name = "DIR", help_heading = "Protocol options")]
    root: Option<PathBuf>,

    /// Event loops (threads) sharing one listener (each its own SO_REUSEPORT listener
    /// with --reuseport).
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        help_heading = "Operations"
    )]
    workers: usize,
    /// Log a statistics line this often (totals are logged at exit regardless).
    #[arg(long, value_name = "D", value_parser = parse_duration, help_heading = "Operations")]
    stats: Option<Duration>,
    /// Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy's
    /// send-proxy sends): the client address it names is the one logs and chat show. An
    /// invalid header, or none within the frame timeout, closes the connection.
    #[arg(long, help_heading = "Operations")]
    proxy_protocol: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT), from the first
    /// worker's loop: connections, requests, bytes, closes by reason, loop turns and busy
    /// fraction, per worker and in total.
    #[arg(long, value_name = "ADDR", help_heading = "Operations")]
    metrics: Option<String>,
    /// Also echo UDP datagrams, on the same address and port as TCP.
    #[arg(long, help_heading = "Operations")]
    udp: bool,
    /// On SIGINT/SIGTERM, let pending output drain for up to this long before closing.
    #[arg(long, default_value = "5s", value_name = "D", value_parser = parse_duration, help_heading = "Operations")]
    drain_timeout: Duration,

    /// Serve every connection under TLS (1.2 and 1.3) with this PEM certificate chain,
    /// the server's own first (needs --tls-key). Any protocol; http offers ALPN http/1.1.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    tls_key: Option<PathBuf>,

    /// Length of the kernel's queue of connections waiting to be accepted.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "N",
        help_heading = "Socket options"
    )]
    backlog: i32,
    /// Set SO_REUSEPORT: each worker gets its own listener, and other processes may
    /// listen on the same address and share its connections.
    #[arg(long, help_heading = "Socket options")]
    reuseport: bool,
    /// Leave Nagle's algorithm on (TCP_NODELAY is set by default).
    #[arg(long, help_heading = "Socket options")]
    no_nodelay: bool,
    /// Enable TCP keepalive probes after this long idle (whole seconds).
    #[arg(long, value_name = "D", value_parser = parse_duration, help_heading = "Socket options")]
    keepalive: Option<Duration>,
    /// Kernel receive buffer per connection (SO_RCVBUF), in bytes.
    #[arg(long, value_name = "BYTES", help_heading = "Socket options")]
    recv_buffer: Option<usize>,
    /// Kernel send buffer per connection (SO_SNDBUF), in bytes.
    #[arg(long, value_name = "BYTES", help_heading = "Socket options")]
    send_buffer: Option<usize>,

    /// Close a connection with no traffic in either direction for this long (0: never).
    #[arg(long, default_value = "300s", value_name = "D", value_parser = parse_duration, help_heading = "Limits and timeouts")]
    idle_timeout: Duration,
    /// Close a peer that reads none of its pending output for this long (0: never).
    #[arg(long, default_value = "30s", value_name = "D", value_parser = parse_duration, help_heading = "Limits and timeouts")]
    write_timeout: Duration,
    /// A request that has started must be complete within this (0: no limit).
    #[arg(long, default_value = "30s", value_name = "D", value_parser = parse_duration, help_heading = "Limits and timeouts")]
    frame_timeout: Duration,
    /// Connections past N are accepted and closed at once [default: from the open-files limit].
    #[arg(long, value_name = "N", help_heading = "Limits and timeouts")]
    max_connections: Option<usize>,
    /// Bytes owed to one peer: past it the server stops reading from it, and a chat
    /// client that falls this far behind is disconnected as a slow consumer.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024, help_heading = "Limits and timeouts")]
    max_outbound: usize,

    /// More output: -v shows every message, -vv everything.
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Logging")]
    verbose: u8,
    /// Errors only.
    #[arg(short, long, conflicts_with = "verbose", help_heading = "Logging")]
    quiet: bool,
}

/// A zero duration on the command line means "no timeout".
fn timeout(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// `--metrics HOST:PORT`, resolved (a name such as localhost too); a usage error if not.
fn metrics_address(text: &str) -> std::net::SocketAddr {
    let parsed = text
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
    let Some((host, port)) = parsed else {
        die(format!("--metrics wants HOST:PORT, not {text:?}"), 2)
    };
    resolve(host, port).unwrap_or_else(|e| die(format!("cannot resolve {host}: {e}"), 1))
}

fn main() {
    let args = Args::parse();
    init_logging(args.verbose, args.quiet);
    let listen = match (&args.unix, &args.host, args.port) {
        (Some(path), _, _) => ListenAddr::Unix(path.clone()),
        (None, Some(host), Some(port)) => ListenAddr::Tcp(
            resolve(host, port).unwrap_or_else(|e| die(format!("cannot resolve {host}: {e}"), 1)),
        ),
        _ => die("HOST and PORT, or --unix PATH, are required", 2),
    };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => die("--tls-cert needs --tls-key FILE", 2),
        (None, Some(_)) => die("--tls-key needs --tls-cert FILE", 2),
    };
    let mut config = ServerConfig::new(listen);
    config.socket.backlog = args.backlog;
    config.socket.reuseport = args.reuseport;
    config.socket.nodelay = !args.no_nodelay;
    config.socket.keepalive = args.keepalive;
    config.socket.recv_buffer = args.recv_buffer;
    config.socket.send_buffer = args.send_buffer;
    config.timeouts.idle = timeout(args.idle_timeout);
    config.timeouts.write = timeout(args.write_timeout);
    config.timeouts.frame = timeout(args.frame_timeout);
    config.drain_timeout = args.drain_timeout;
    config.limits.max_outbound = args.max_outbound;
    if let Some(n) = args.max_connections {
        config.limits.max_connections = n;
    }
    config.stats_interval = args.stats;
    config.proxy_protocol = args.proxy_protocol;
    let options = LaunchOptions {
        config,
        protocol: args.protocol,
        protocol_options: ProtocolOptions {
            body: args.body,
            max_header: args
                .max_header
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_content_length: Some(args.max_content_length),
            max_line: Some(args.max_line),
            timestamps: args.timestamps,
            echo_sender: args.echo_sender,
            web: args.web,
            redis: args.redis,
            root: args.root,
        },
        workers: args.workers,
        derive_max_connections: args.max_connections.is_none(),
        metrics: args.metrics.as_deref().map(metrics_address),
        udp: args.udp,
        tls,
    };
    match serve_until_signalled(options) {
        Ok(stats) => log::info!("totals: {stats}"),
        Err(e) => die(&e, e.exit_code()),
    }
}
