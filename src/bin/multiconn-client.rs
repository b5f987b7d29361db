//! `multiconn-client HOST PORT NUM_CONNS`: the tutorial's multi-connection echo client; with
//! `--duration` or `--requests` a load generator; with `--protocol file --path PATH` a file
//! downloader (the loops live in `multiconn::client`).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use multiconn::cli::{die, init_client_logging};
use multiconn::client::file::{download, run_file_load, FileLoadConfig};
use multiconn::client::{
    parse_duration, run_load, run_scenario, LoadConfig, LoadControl, LoadError, LoadProtocol,
    ScenarioConfig, StopAt, Workload,
};
use multiconn::launch::describe;
use multiconn::net::resolve;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Exit code of a run stopped by Ctrl-C, as shells report a SIGINT death.
const EXIT_INTERRUPTED: i32 = 130;

/// The protocols `--protocol` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProtocolArg {
    /// Random bytes, expected back unchanged.
    Echo,
    /// The tutorial's JSON-header protocol: search requests, answers checked.
    App,
    /// `GET /` over HTTP/1.1 with keep-alive.
    Http,
    /// Download --path from a `--protocol file` server on every connection (not a load mode:
    /// each connection downloads once; size and rate are reported, the byte count checked).
    File,
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The tutorial's multi-connection client; with --duration or --requests, a load generator",
    long_about = "Without load flags, each of NUM_CONNS connections sends the tutorial's two messages and \
                  waits for their echo, printing the tutorial's transcript.\n\n\
                  With --duration or --requests, NUM_CONNS connections send requests as fast as the server \
                  answers (or at --rate), verify every answer, and print a report: throughput, latency \
                  percentiles and errors by kind. Exit code 1 when any request failed (unless \
                  --allow-errors), 130 when interrupted by Ctrl-C (the report is then partial; a second \
                  Ctrl-C exits at once)."
)]
struct Args {
    /// Server address: IPv4, IPv6 (::1) or a name (localhost).
    host: String,
    /// Server port.
    port: u16,
    /// How many connections to open.
    num_conns: usize,

    /// Load mode: measure for this long (e.g. 10s, 1m, 500ms), after the warm-up.
    #[arg(long, value_name = "D", value_parser = parse_duration, group = "load")]
    duration: Option<Duration>,
    /// Load mode: send this many requests in total (after any warm-up), then stop.
    #[arg(long, value_name = "N", group = "load", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Run this long before measuring; nothing in it is counted [default: 1s with --duration, 0 with --requests].
    #[arg(long, value_name = "D", value_parser = parse_duration, requires = "load")]
    warmup: Option<Duration>,
    /// Message size in bytes (echo): random content, different per request, every byte verified.
    #[arg(long, value_name = "BYTES", default_value_t = 64, requires = "load")]
    size: usize,
    /// Requests outstanding per connection (1 = closed loop: the next one when the answer is back).
    #[arg(long, value_name = "K", default_value_t = 1, requires = "load")]
    pipeline: usize,
    /// Open loop: requests per second in total, spread evenly over the connections. Latency then
    /// counts from each request's scheduled send time, so a stall shows (no coordinated omission).
    #[arg(long, value_name = "R", requires = "load")]
    rate: Option<f64>,
    /// What to send (echo, app and http with --duration/--requests; file with --path).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Echo)]
    protocol: ProtocolArg,
    /// file: the path to download, relative to the server's root.
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
    /// file: write the downloaded bytes to OUT (one connection only).
    #[arg(short, long, value_name = "OUT", requires = "path")]
    output: Option<std::path::PathBuf>,
    /// Give up on a connection that is not established within this.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "3s", requires = "load")]
    connect_timeout: Duration,
    /// Load mode: a request unanswered this long is a timeout error. Tutorial mode: the whole
    /// run must finish within this. A bare number means seconds.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Write the final report as one JSON object on stdout (latencies in microseconds).
    #[arg(long, requires = "load")]
    json: bool,
    /// Print a progress line on stderr every second (the default when stderr is a terminal).
    #[arg(long, requires = "load")]
    progress: bool,
    /// Independent event loops (threads), the connections split between them.
    #[arg(long, value_name = "T", default_value_t = 1, requires = "load")]
    threads: usize,
    /// Exit 0 even when requests failed (the report still counts them).
    #[arg(long, requires = "load")]
    allow_errors: bool,

    /// More log output.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only (no transcript).
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
}

fn main() {
    let args = Args::parse();
    init_client_logging(args.verbose, args.quiet);
    let addr = resolve(&args.host, args.port)
        .unwrap_or_else(|e| die(format!("cannot resolve {}: {e}", args.host), 1));
    let load_mode = args.duration.is_some() || args.requests.is_some();
    match (args.protocol, load_mode) {
        (ProtocolArg::File, true) => die(
            "--protocol file downloads once per connection: drop --duration/--requests",
            2,
        ),
        (ProtocolArg::File, false) => files(&args, addr),
        (_, _) if args.path.is_some() => die("--path goes with --protocol file", 2),
        (ProtocolArg::Echo, false) => tutorial(&args, addr),
        (other, false) => die(
            format!(
                "--protocol {} is a load mode: add --duration or --requests",
                other.name()
            ),
            2,
        ),
        (_, true) => match (args.duration, args.requests) {
            (Some(d), _) => load(&args, addr, StopAt::Duration(d)),
            (None, Some(n)) => load(&args, addr, StopAt::Requests(n)),
            (None, None) => die("load mode needs --duration or --requests", 2),
        },
    }
}

impl ProtocolArg {
    fn name(self) -> &'static str {
        match self {
            ProtocolArg::Echo => "echo",
            ProtocolArg::App => "app",
            ProtocolArg::Http => "http",
            ProtocolArg::File => "file",
        }
    }
}

/// `--protocol file`: every connection downloads `--path`; with `-o`, one download to a file.
fn files(args: &Args, addr: std::net::SocketAddr) {
    let Some(path) = &args.path else {
        die("--protocol file needs --path PATH", 2)
    };
    if let Some(out) = &args.output {
        if args.num_conns != 1 {
            die("-o writes one download: use NUM_CONNS 1", 2);
        }
        let mut file = std::fs::File::create(out).unwrap_or_else(|e| {
            die(
                format!("cannot create {}: {}", out.display(), describe(&e)),
                1,
            )
        });
        match download(addr, path.as_bytes(), &mut file, args.timeout) {
            Ok(done) => println!(
                "{path}: {} bytes in {:.3} s ({:.1} MiB/s) -> {}",
                done.size,
                done.elapsed.as_secs_f64(),
                done.rate() / (1024.0 * 1024.0),
                out.display()
            ),
            Err(e) => die(format!("{path}: {e}"), 1),
        }
        return;
    }
    let config = FileLoadConfig {
        addr,
        connections: args.num_conns,
        path: path.as_bytes().to_vec(),
        timeout: args.timeout,
    };
    let report = run_file_load(&config).unwrap_or_else(|e| die(describe(&e), 1));
    println!("{path}: {report}");
    if !report.is_success() {
        let failed = report.connections - report.completed;
        fail_connections(&report.failures, failed, report.connections, "downloads");
    }
}

fn tutorial(args: &Args, addr: std::net::SocketAddr) {
    let mut config = ScenarioConfig::tutorial(addr, args.num_conns);
    config.timeout = args.timeout;
    let mut transcript: Box<dyn std::io::Write> = if args.quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stdout().lock())
    };
    let report = run_scenario(&config, &mut transcript).unwrap_or_else(|e| die(e, 1));
    if !report.failures.is_empty() {
        let failed = report.failures.len();
        fail_connections(&report.failures, failed, args.num_conns, "connections");
    }
}

/// One line per failed connection, a total, and exit 1.
fn fail_connections(failures: &[(usize, String)], failed: usize, total: usize, what: &str) -> ! {
    for (number, reason) in failures {
        eprintln!("error: connection {number}: {reason}");
    }
    eprintln!("error: {failed} of {total} {what} failed");
    std::process::exit(1);
}

fn load(args: &Args, addr: std::net::SocketAddr, stop: StopAt) {
    let protocol = match args.protocol {
        ProtocolArg::Echo => LoadProtocol::Echo,
        ProtocolArg::Http => LoadProtocol::Http,
        ProtocolArg::App => LoadProtocol::App,
        ProtocolArg::File => die("--protocol file is not a load mode", 2),
    };
    let host = if args.port == 80 {
        args.host.clone()
    } else {
        format!("{}:{}", args.host, args.port)
    };
    let config = LoadConfig {
        addr,
        connections: args.num_conns,
        stop,
        warmup: args.warmup.unwrap_or(match stop {
            StopAt::Duration(_) => Duration::from_secs(1),
            StopAt::Requests(_) => Duration::ZERO,
        }),
        pipeline: args.pipeline,
        rate: args.rate,
        workload: Workload {
            protocol,
            size: args.size,
            host,
            seed: seed(),
        },
        connect_timeout: args.connect_timeout,
        timeout: args.timeout,
        threads: args.threads,
    };
    if let Err(message) = config.validate() {
        die(message, 1);
    }
    let control = LoadControl::new();
    watch_signals(control.clone());
    let show_progress = args.progress || std::io::stderr().is_terminal();
    let mut stderr = std::io::stderr();
    let progress: Option<&mut dyn std::io::Write> = if show_progress {
        Some(&mut stderr)
    } else {
        None
    };
    let report = run_load(&config, &control, progress).unwrap_or_else(|e: LoadError| die(e, 1));
    let text = if args.json {
        serde_json::to_string(&report)
            .unwrap_or_else(|e| die(format!("cannot write the report: {e}"), 1))
    } else {
        report.to_string()
    };
    if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
        // A reader that went away (`| head`) is not worth a second message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            die(format!("cannot write the report: {e}"), 1);
        }
    }
    if report.partial {
        std::process::exit(EXIT_INTERRUPTED);
    }
    if report.has_failures() && !args.allow_errors {
        eprintln!(
            "error: {} errors, {} requests failed{}",
            report.errors.total,
            report.requests.failed,
            report
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        std::process::exit(1);
    }
}

/// First Ctrl-C (or SIGTERM): stop and report what was measured. Second: exit at once.
fn watch_signals(control: Arc<LoadControl>) {
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .unwrap_or_else(|e| die(format!("cannot install signal handlers: {e}"), 1));
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for (count, _) in signals.forever().enumerate() {
                if count > 0 {
                    std::process::exit(EXIT_INTERRUPTED);
                }
                control.stop();
            }
        })
        .unwrap_or_else(|e| die(format!("cannot start the signal thread: {e}"), 1));
}

/// A seed for the payloads that differs between runs (time and process id).
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}
