//! `app-client HOST PORT ACTION VALUE`: the tutorial's app-client.py. Sends one request
//! (a JSON search, or ACTION+VALUE as bytes), prints the response, exits 0; any failure is
//! one `error:` line on stderr and exit 1, a usage error exit 2, and Ctrl-C prints the
//! tutorial's `Caught keyboard interrupt, exiting` and exits 130.

use std::time::Duration;

use clap::Parser;
use multiconn::cli::{die, exit_on_ctrl_c, init_client_logging};
use multiconn::client::{run_app_client, AppClientConfig};
use multiconn::duration::parse_duration;
use multiconn::net::resolve;

const EXAMPLES: &str = r#"Examples (against `multiconn-server --protocol app 127.0.0.1 65432`):
  app-client 127.0.0.1 65432 search morpheus    Got result: Follow the white rabbit. 🐰
  app-client 127.0.0.1 65432 get stuff          Got response: b"First 10 bytes of request: getstuff"
  app-client -v --timeout 2s localhost 65432 search ring"#;

#[derive(Parser, Debug)]
#[command(
    name = "app-client",
    version,
    about = "The tutorial's app client: `search VALUE` sends a JSON search, any other ACTION sends ACTION+VALUE as binary",
    after_help = EXAMPLES,
    max_term_width = 100
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
    /// Give up after this long (connecting, sending and receiving together): 10s, 500ms,
    /// or a bare number of seconds.
    #[arg(long, default_value = "10s", value_name = "D", value_parser = parse_duration)]
    timeout: Duration,
    /// Show the headers and the bytes sent and received.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() {
    let args = Args::parse();
    init_client_logging(args.verbose, false);
    if args.timeout.is_zero() {
        die("--timeout must be longer than 0", 2);
    }
    exit_on_ctrl_c();
    let addr = resolve(&args.host, args.port)
        .unwrap_or_else(|e| die(format!("cannot resolve {}: {e}", args.host), 1));
    let mut config = AppClientConfig::new(addr, &args.action, &args.value);
    config.timeout = args.timeout;
    match run_app_client(&config) {
        Ok(response) => println!("{response}"),
        Err(e) => die(e, 1),
    }
}
