//! `multiconn-client HOST PORT NUM_CONNS`: the tutorial's multi-connection echo client.

use std::time::Duration;

use clap::Parser;
use multiconn::cli::{die, init_logging};
use multiconn::client::{run_scenario, ScenarioConfig};
use multiconn::net::resolve;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The tutorial's multi-connection client: each connection sends two messages and waits for their echo"
)]
struct Args {
    /// Server address: IPv4, IPv6 (::1) or a name (localhost).
    host: String,
    /// Server port.
    port: u16,
    /// How many connections to open.
    num_conns: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
    /// More log output.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only (no transcript).
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
}

fn main() {
    let args = Args::parse();
    init_logging(args.verbose, args.quiet);
    let addr = resolve(&args.host, args.port)
        .unwrap_or_else(|e| die(format!("cannot resolve {}: {e}", args.host), 1));
    let mut config = ScenarioConfig::tutorial(addr, args.num_conns);
    config.timeout = Duration::from_secs_f64(args.timeout.max(0.0));
    let mut transcript: Box<dyn std::io::Write> = if args.quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stdout().lock())
    };
    let report = run_scenario(&config, &mut transcript).unwrap_or_else(|e| die(e, 1));
    if !report.failures.is_empty() {
        for (number, reason) in &report.failures {
            eprintln!("error: connection {number}: {reason}");
        }
        eprintln!(
            "error: {} of {} connections failed",
            report.failures.len(),
            args.num_conns
        );
        std::process::exit(1);
    }
}
