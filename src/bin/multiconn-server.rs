//! `multiconn-server HOST PORT`: serve a protocol (echo by default) on one event loop.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use multiconn::cli::{die, init_logging};
use multiconn::launch::{serve_until_signalled, LaunchOptions, ProtocolKind, ProtocolOptions};
use multiconn::net::resolve;
use multiconn::protocol::chat::DEFAULT_MAX_LINE;
use multiconn::{ListenAddr, ServerConfig};

#[derive(Parser, Debug)]
#[command(version, about = "A single-threaded, readiness-based TCP server (echo unless --protocol says otherwise)")]
struct Args {
    /// Address to listen on: IPv4, IPv6 (::1) or a name (localhost).
    host: String,
    /// Port to listen on (0: let the OS choose).
    port: u16,
    /// Which protocol to serve.
    #[arg(long, value_enum, default_value_t = ProtocolKind::Echo)]
    protocol: ProtocolKind,
    /// Bytes owed to one peer: past it the server stops reading from it, and a chat
    /// client that falls this far behind is disconnected as a slow consumer.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    max_outbound: usize,
    /// Chat: the longest line accepted; a longer one gets `! line too long` and is disconnected.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_LINE)]
    max_line: usize,
    /// File: the directory whose files are served (required by --protocol file).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Log a statistics line every SECS seconds.
    #[arg(long, value_name = "SECS")]
    stats: Option<u64>,
    /// More output: -v shows every message, -vv everything.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
}

fn main() {
    let args = Args::parse();
    init_logging(args.verbose, args.quiet);
    let addr = resolve(&args.host, args.port)
        .unwrap_or_else(|e| die(format!("cannot resolve {}: {e}", args.host), 1));
    let mut config = ServerConfig::new(ListenAddr::Tcp(addr));
    config.limits.max_outbound = args.max_outbound;
    config.stats_interval = args.stats.map(Duration::from_secs);
    let options = LaunchOptions {
        config,
        protocol: args.protocol,
        protocol_options: ProtocolOptions {
            max_line: Some(args.max_line),
            root: args.root,
        },
        workers: 1,
    };
    match serve_until_signalled(options) {
        Ok(stats) => log::info!("totals: {stats}"),
        Err(e) => die(e, 1),
    }
}
