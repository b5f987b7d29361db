//! `multiconn-server HOST PORT`: serve a protocol (echo by default) on one event loop per
//! worker. Parses flags into a `LaunchOptions` and hands over to the library.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use multiconn::cli::{die, init_logging};
use multiconn::launch::{serve_until_signalled, LaunchOptions, ProtocolKind, ProtocolOptions};
use multiconn::net::resolve;
use multiconn::protocol::app::DEFAULT_MAX_CONTENT_LENGTH;
use multiconn::protocol::chat::DEFAULT_MAX_LINE;
use multiconn::{ListenAddr, ServerConfig};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A single-threaded, readiness-based TCP server (echo unless --protocol says otherwise)"
)]
struct Args {
    /// Address to listen on: IPv4, IPv6 (::1, ::) or a name (localhost).
    #[arg(required_unless_present = "unix")]
    host: Option<String>,
    /// Port to listen on (0: let the OS choose).
    #[arg(required_unless_present = "unix")]
    port: Option<u16>,
    /// Listen on this Unix domain socket instead of TCP (a stale socket file is replaced
    /// only if nothing listens on it).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["host", "port"])]
    unix: Option<PathBuf>,
    /// Which protocol to serve.
    #[arg(long, value_enum, default_value_t = ProtocolKind::Echo)]
    protocol: ProtocolKind,
    /// http: serve this file's bytes instead of the default page (read once at start).
    #[arg(long, value_name = "FILE")]
    body: Option<PathBuf>,
    /// http: the largest request header section, in bytes (default 8192); larger is 431.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    max_header: Option<u64>,
    /// app: the largest request content accepted, in bytes; larger is refused from the header.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_CONTENT_LENGTH)]
    max_content_length: usize,
    /// chat: the longest line accepted; a longer one gets `! line too long` and is disconnected.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_LINE)]
    max_line: usize,
    /// chat: stamp each line with the local time, as %Y/%m/%d-%H:%M:%S (seed 004).
    #[arg(long)]
    timestamps: bool,
    /// chat: send a member its own lines too (seed 004); by default they go to the others.
    #[arg(long)]
    echo_sender: bool,
    /// chat: serve a chat page at GET / and WebSocket members at /ws on the chat port.
    #[arg(long)]
    web: bool,
    /// chat: share rooms with other servers through this Redis's pub/sub (redis://HOST:PORT).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// file, http: the directory whose files are served (required by --protocol file;
    /// for http, instead of the one page).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,

    /// Event loops (threads), each with its own SO_REUSEPORT listener on the address.
    #[arg(long, default_value_t = 1, value_name = "N")]
    workers: usize,
    /// Length of the kernel's queue of connections waiting to be accepted.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    backlog: i32,
    /// Set SO_REUSEPORT, so other processes can listen on the same address.
    #[arg(long)]
    reuseport: bool,
    /// Leave Nagle's algorithm on (TCP_NODELAY is set by default).
    #[arg(long)]
    no_nodelay: bool,
    /// Enable TCP keepalive probes after SECS idle seconds.
    #[arg(long, value_name = "SECS")]
    keepalive: Option<u64>,
    /// Kernel receive buffer per connection (SO_RCVBUF), in bytes.
    #[arg(long, value_name = "BYTES")]
    recv_buffer: Option<usize>,
    /// Kernel send buffer per connection (SO_SNDBUF), in bytes.
    #[arg(long, value_name = "BYTES")]
    send_buffer: Option<usize>,

    /// Close a connection with no traffic in either direction for SECS (0: never).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    idle_timeout: u64,
    /// Close a peer that reads none of its pending output for SECS (0: never).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    write_timeout: u64,
    /// A request that has started must be complete within SECS (0: no limit).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    frame_timeout: u64,
    /// On SIGINT/SIGTERM, let pending output drain for up to SECS before closing.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    drain_timeout: u64,
    /// Connections past N are accepted and closed at once [default: from the open-files limit].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Bytes owed to one peer: past it the server stops reading from it, and a chat
    /// client that falls this far behind is disconnected as a slow consumer.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    max_outbound: usize,
    /// Log a statistics line every SECS seconds (totals are logged at exit regardless).
    #[arg(long, value_name = "SECS")]
    stats: Option<u64>,

    /// More output: -v shows every message, -vv everything.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
}

/// 0 on the command line means "no timeout".
fn timeout(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
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
    let mut config = ServerConfig::new(listen);
    config.socket.backlog = args.backlog;
    config.socket.reuseport = args.reuseport;
    config.socket.nodelay = !args.no_nodelay;
    config.socket.keepalive = args.keepalive.map(Duration::from_secs);
    config.socket.recv_buffer = args.recv_buffer;
    config.socket.send_buffer = args.send_buffer;
    config.timeouts.idle = timeout(args.idle_timeout);
    config.timeouts.write = timeout(args.write_timeout);
    config.timeouts.frame = timeout(args.frame_timeout);
    config.drain_timeout = Duration::from_secs(args.drain_timeout);
    config.limits.max_outbound = args.max_outbound;
    if let Some(n) = args.max_connections {
        config.limits.max_connections = n;
    }
    config.stats_interval = args.stats.map(Duration::from_secs);
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
    };
    match serve_until_signalled(options) {
        Ok(stats) => log::info!("totals: {stats}"),
        Err(e) => die(&e, e.exit_code()),
    }
}
