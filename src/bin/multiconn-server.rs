//! `multiconn-server HOST PORT`: serve a protocol (echo by default) on one event loop.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use multiconn::cli::{die, init_logging};
use multiconn::launch::{serve_until_signalled, LaunchOptions, ProtocolKind, ProtocolOptions};
use multiconn::net::resolve;
use multiconn::{ListenAddr, ServerConfig};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A single-threaded, readiness-based TCP server (echo unless --protocol says otherwise)"
)]
struct Args {
    /// Address to listen on: IPv4, IPv6 (::1) or a name (localhost).
    host: String,
    /// Port to listen on (0: let the OS choose).
    port: u16,
    /// Which protocol to serve.
    #[arg(long, value_enum, default_value_t = ProtocolKind::Echo)]
    protocol: ProtocolKind,
    /// Bytes owed to one peer before the server stops reading from it.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_outbound: usize,
    /// http: serve this file's bytes instead of the default page (read once at start).
    #[arg(long, value_name = "FILE")]
    body: Option<PathBuf>,
    /// http: the largest request header section, in bytes (default 8192); larger is 431.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    max_header: Option<u64>,
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
            body: args.body,
            max_header: args
                .max_header
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        },
        workers: 1,
    };
    match serve_until_signalled(options) {
        Ok(stats) => log::info!("totals: {stats}"),
        Err(e) => die(e, 1),
    }
}
