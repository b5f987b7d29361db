//! `app-client HOST PORT ACTION VALUE`: the tutorial's app-client.py. Sends one request
//! (a JSON search, or ACTION+VALUE as bytes), prints the response, exits 0; any failure is
//! one `error:` line on stderr and exit 1.

use std::time::Duration;

use clap::Parser;
use multiconn::cli::{die, init_client_logging};
use multiconn::client::{run_app_client, AppClientConfig};
use multiconn::net::resolve;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The tutorial's app client: `search VALUE` sends a JSON search, any other ACTION sends ACTION+VALUE as binary"
)]
struct Args {
    /// Server address: IPv4, IPv6 (::1) or a name (localhost).
    host: String,
    /// Server port.
    port: u16,
    /// `search`, or anything else for a binary request.
    action: String,
    /// The search query, or the rest of the binary request.
    value: String,
    /// Give up after this many seconds (connecting, sending and receiving together).
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_seconds)]
    timeout: Duration,
    /// Show the headers and the bytes sent and received.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("not a number: {text}"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("not a usable number of seconds: {text}"))
}

fn main() {
    let args = Args::parse();
    init_client_logging(args.verbose, false);
    let addr = resolve(&args.host, args.port)
        .unwrap_or_else(|e| die(format!("cannot resolve {}: {e}", args.host), 1));
    let mut config = AppClientConfig::new(addr, &args.action, &args.value);
    config.timeout = args.timeout;
    match run_app_client(&config) {
        Ok(response) => println!("{response}"),
        Err(e) => die(e, 1),
    }
}
