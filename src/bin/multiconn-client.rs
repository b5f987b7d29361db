//! `multiconn-client HOST PORT NUM_CONNS`: the tutorial's multi-connection echo client; with
//! `--duration` or `--requests` a load generator (also `multiconn-client URL NUM_CONNS`);
//! with `--protocol file --path PATH` a file downloader (the loops live in
//! `multiconn::client`); with `--udp` a UDP echo load generator; `multiconn-client merge
//! FILE...` adds up runs' interval logs. Usage errors exit 2, failures 1, Ctrl-C 130.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use multiconn::cli::{die, exit_on_ctrl_c, init_client_logging, EXIT_INTERRUPTED};
use multiconn::client::chat::{run_chat_client, ChatEnd};
use multiconn::client::driver::{ClientTls, Endpoint};
use multiconn::client::fanout::{run_fanout, FanoutConfig};
use multiconn::client::file::{download, run_file_load, FileLoadConfig};
use multiconn::client::hdr::{write_interval_log, write_percentile_distribution};
use multiconn::client::html::{render, PageData};
use multiconn::client::load::DEFAULT_MAX_LOSS;
use multiconn::client::merge::merge_files;
use multiconn::client::url::Url;
use multiconn::client::{
    check_open_files, parse_duration, run_load, run_scenario, HttpRequest, HttpWorkload,
    LoadConfig, LoadControl, LoadError, LoadProtocol, LoadReport, RatePlan, ScenarioConfig,
    StatusSet, StopAt, Workload,
};
use multiconn::launch::describe;
use multiconn::net::{resolve, ListenAddr};
use multiconn::tls::{client_config, server_name, ClientTlsOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Exit code of a usage error (clap's too).
const EXIT_USAGE: i32 = 2;
/// Failed connections listed one per line before the rest are summed up.
const FAILURES_LISTED: usize = 10;

/// The protocols `--protocol` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProtocolArg {
    /// Random bytes, expected back unchanged.
    Echo,
    /// The tutorial's JSON-header protocol: search requests, answers checked.
    App,
    /// HTTP/1.1 requests (GET / unless -m, a URL's path, -H, -d say otherwise).
    Http,
    /// Download --path from a `--protocol file` server on every connection (not a load mode:
    /// each connection downloads once; size and rate are reported, the byte count checked).
    File,
    /// The seeds' chat: with NUM_CONNS 1, an interactive client (stdin to the room, the
    /// room to stdout); with --duration, the fan-out load mode (delivery latency to every
    /// member, lost lines).
    Chat,
}

const EXAMPLES: &str = "\
Examples:
  multiconn-client 127.0.0.1 54321 3
      the tutorial: 3 connections send its two messages and print its transcript
  multiconn-client 127.0.0.1 54321 50 --duration 10s
      echo load: 50 connections for 10 s, a report of throughput and latency
  multiconn-client http://127.0.0.1:8080/ 100 --duration 30s --threads 2
      HTTP load against a URL (https:// with TLS; -k for a self-signed server)
  multiconn-client 127.0.0.1 54321 10 --duration 10s --rate 5000
      open loop: 5000 requests/s in total, latency from each one's scheduled time
  multiconn-client 127.0.0.1 54321 4 --udp --requests 10000 --max-loss 0.5%
      UDP echo (multiconn-server --udp): 4 sockets, loss counted, exit 1 above 0.5%

Time flags take 10s, 500ms, 1m30s, or a bare number of seconds.";

#[derive(Parser, Debug)]
#[command(
    name = "multiconn-client",
    version,
    after_help = EXAMPLES,
    max_term_width = 100,
    about = "The tutorial's multi-connection client; with --duration or --requests, a load generator",
    override_usage = "multiconn-client [OPTIONS] HOST PORT NUM_CONNS\n       \
                      multiconn-client [OPTIONS] URL NUM_CONNS\n       \
                      multiconn-client [OPTIONS] --unix PATH [URL] NUM_CONNS\n       \
                      multiconn-client --udp [OPTIONS] HOST PORT NUM_SOCKETS\n       \
                      multiconn-client merge [--json|--histogram] FILE...",
    long_about = "Without load flags, each of NUM_CONNS connections sends the tutorial's two messages and \
                  waits for their echo, printing the tutorial's transcript.\n\n\
                  With --duration or --requests, NUM_CONNS connections send requests as fast as the server \
                  answers (or at --rate), verify every answer, and print a report: throughput, latency \
                  percentiles, connect times, statuses and errors by kind. A URL target means HTTP (https: \
                  with TLS). A connection the server closes is opened again and the run goes on \
                  (--no-reconnect: it is not). With --udp, NUM_CONNS UDP sockets echo datagrams: loss is \
                  counted, and fails the run only above --max-loss. Exit code 1 when any request failed (unless --allow-errors) \
                  or none completed, 2 for a usage error, 130 when interrupted by Ctrl-C (the report is \
                  then partial; a second Ctrl-C exits at once)."
)]
struct Args {
    /// HOST PORT NUM_CONNS, or URL NUM_CONNS, or with --unix [URL] NUM_CONNS.
    #[arg(value_name = "TARGET", num_args = 1..=3, required = true)]
    target: Vec<String>,

    /// Connect to this Unix socket instead of TCP (any protocol; with a URL, the URL gives
    /// the Host header and path).
    #[arg(long, value_name = "PATH", help_heading = "Target")]
    unix: Option<PathBuf>,

    /// Load mode: measure for this long (e.g. 10s, 1m, 500ms), after the warm-up.
    #[arg(long, value_name = "D", value_parser = parse_duration, group = "load", help_heading = "Load")]
    duration: Option<Duration>,
    /// Load mode: send this many requests in total (after any warm-up), then stop.
    #[arg(long, value_name = "N", group = "load", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Load")]
    requests: Option<u64>,
    /// Run this long before measuring; nothing in it is counted [default: 1s with --duration, 0 with --requests].
    #[arg(long, value_name = "D", value_parser = parse_duration, requires = "load", help_heading = "Load")]
    warmup: Option<Duration>,
    /// Message size in bytes (echo): random content, different per request, every byte verified.
    /// chat: each line's length (at least 49, its header).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 64,
        requires = "load",
        help_heading = "Load"
    )]
    size: usize,
    /// Requests outstanding per connection (1 = closed loop: the next one when the answer is back).
    #[arg(
        long,
        value_name = "K",
        default_value_t = 1,
        requires = "load",
        help_heading = "Load"
    )]
    pipeline: usize,
    /// Open loop: requests per second in total, spread evenly over the connections. Latency then
    /// counts from each request's scheduled send time, so a stall shows (no coordinated omission).
    /// A..B ramps linearly from A to B over --ramp, A,B,C steps through the rates, each for
    /// --step; both then hold the last rate. A send more than 1ms behind its slot counts as late.
    /// chat: lines per second per sender [default: 10].
    #[arg(
        long,
        value_name = "R|A..B|A,B,C",
        requires = "load",
        help_heading = "Load"
    )]
    rate: Option<String>,
    /// With --rate A..B: how long the ramp from A to B takes (measured time, after the warm-up).
    #[arg(long, value_name = "D", value_parser = parse_duration, requires = "rate", help_heading = "Load")]
    ramp: Option<Duration>,
    /// With --rate A,B,C: how long each rate lasts.
    #[arg(long, value_name = "D", value_parser = parse_duration, requires = "rate", help_heading = "Load")]
    step: Option<Duration>,
    /// What to send (echo, app and http with --duration/--requests; file with --path)
    /// [default: http for a URL, echo otherwise].
    #[arg(long, value_enum, help_heading = "Load")]
    protocol: Option<ProtocolArg>,
    /// chat: join this room first (/join ROOM) [default: the server's lobby].
    #[arg(long, value_name = "ROOM", help_heading = "Chat")]
    room: Option<String>,
    /// chat load: how many of the NUM_CONNS members send lines (the others only receive).
    #[arg(
        long,
        value_name = "K",
        default_value_t = 1,
        requires = "load",
        help_heading = "Chat"
    )]
    senders: usize,

    /// file: the path to download, relative to the server's root.
    #[arg(long, value_name = "PATH", help_heading = "File")]
    path: Option<String>,
    /// file: write the downloaded bytes to OUT (one connection only).
    #[arg(
        short,
        long,
        value_name = "OUT",
        requires = "path",
        help_heading = "File"
    )]
    output: Option<PathBuf>,

    /// http: the request method.
    #[arg(
        short,
        long,
        value_name = "METHOD",
        requires = "load",
        help_heading = "HTTP"
    )]
    method: Option<String>,
    /// http: a header field to send, "Name: value" (repeatable).
    #[arg(
        short = 'H',
        long = "header",
        value_name = "HEADER",
        requires = "load",
        help_heading = "HTTP"
    )]
    headers: Vec<String>,
    /// http: the request body.
    #[arg(
        short = 'd',
        long,
        value_name = "STRING",
        requires = "load",
        conflicts_with = "body_file",
        help_heading = "HTTP"
    )]
    body: Option<String>,
    /// http: the request body, read from FILE once.
    #[arg(long, value_name = "FILE", requires = "load", help_heading = "HTTP")]
    body_file: Option<PathBuf>,
    /// http: statuses that count as success, e.g. 200,301-302,4xx [default: 2xx].
    #[arg(long, value_name = "CODES", requires = "load", help_heading = "HTTP")]
    expect_status: Option<StatusSet>,
    /// http: every response body must be exactly this.
    #[arg(long, value_name = "STRING", requires = "load", help_heading = "HTTP")]
    expect_body: Option<String>,

    /// TLS over TCP or --unix for any protocol (implied by https:// URLs).
    #[arg(long, help_heading = "TLS")]
    tls: bool,
    /// TLS: also trust the certificates in this PEM file.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    cacert: Option<PathBuf>,
    /// TLS: accept any certificate (self-signed test servers).
    #[arg(long, short = 'k', help_heading = "TLS")]
    insecure: bool,

    /// Load mode: a connection the server closes, or that fails, is not opened again.
    #[arg(long, requires = "load", help_heading = "Load")]
    no_reconnect: bool,
    /// Load mode: a new connection for every request (http asks with Connection: close).
    #[arg(
        long,
        requires = "load",
        conflicts_with = "no_reconnect",
        help_heading = "Load"
    )]
    disable_keepalive: bool,
    /// Load mode: open at most N connections per second (at the start and when reconnecting).
    #[arg(long, value_name = "N", requires = "load", help_heading = "Load")]
    connect_rate: Option<f64>,

    /// Give up on a connection that is not established within this.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "3s", requires = "load", help_heading = "Load")]
    connect_timeout: Duration,
    /// Load mode: a request unanswered this long is a timeout error; --udp: a datagram
    /// unanswered this long is lost. Tutorial mode: the whole run must finish within this.
    /// chat: a delivery later than this is lost; after quit, the server has this long to
    /// close [default: 10s; 1s with --udp].
    #[arg(long, value_name = "D", value_parser = parse_duration, help_heading = "Load")]
    timeout: Option<Duration>,

    /// Echo UDP datagrams instead of TCP (the server's --udp): NUM_CONNS sockets, each
    /// datagram a sequence number and --size bytes in all, lost past --timeout.
    #[arg(long, requires = "load", help_heading = "UDP")]
    udp: bool,
    /// --udp: the run fails (exit 1) when more datagrams than this are lost: 1%, 0.5%, or
    /// a fraction (0.01) [default: 1%].
    #[arg(long, value_name = "LOSS", value_parser = parse_loss, requires = "udp", help_heading = "UDP")]
    max_loss: Option<f64>,
    /// Write the final report as one JSON object on stdout (latencies in microseconds).
    #[arg(long, requires = "load", help_heading = "Output")]
    json: bool,
    /// Print the latency distribution in HdrHistogram's .hgrm format on stdout (values in
    /// ms; `> run.hgrm` for HdrHistogram's plotter); the report then goes to stderr.
    #[arg(long, requires = "load", conflicts_with = "json")]
    histogram: bool,
    /// Write an HdrHistogram interval log to FILE: a latency histogram per second of the
    /// measured window (for HdrHistogram's tools and `multiconn-client merge`).
    #[arg(long, value_name = "FILE", requires = "load")]
    hdr_log: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page (inline SVG charts: throughput
    /// and latency per second, the percentile curve, statuses, errors, options).
    #[arg(long, value_name = "FILE.html", requires = "load")]
    report: Option<PathBuf>,
    /// Print a progress line on stderr every second (the default when stderr is a terminal).
    #[arg(long, requires = "load", help_heading = "Output")]
    progress: bool,
    /// Independent event loops (threads), the connections split between them.
    #[arg(
        long,
        value_name = "T",
        default_value_t = 1,
        requires = "load",
        help_heading = "Load"
    )]
    threads: usize,
    /// Exit 0 even when requests failed (the report still counts them).
    #[arg(long, requires = "load", help_heading = "Load")]
    allow_errors: bool,

    /// More log output.
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Output")]
    verbose: u8,
    /// Errors only (no transcript).
    #[arg(short, long, conflicts_with = "verbose", help_heading = "Output")]
    quiet: bool,
}

/// What the positional arguments named.
struct Target {
    endpoint: Endpoint,
    /// The target as the report names it.
    name: String,
    /// From a URL: the request's host header and path.
    url: Option<Url>,
    /// HOST as given, and PORT, for the Host header of HOST PORT targets.
    host_port: Option<(String, u16)>,
    connections: usize,
}

/// `--max-loss`: `1%`, `0.5%`, or a fraction from 0 to 1.
fn parse_loss(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.trim().strip_suffix('%') {
        Some(percent) => (percent.trim(), 100.0),
        None => (text.trim(), 1.0),
    };
    let value = number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(|v| v / scale)
        .ok_or_else(|| format!("expected a percentage (1%) or a fraction (0.01), not {text:?}"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!(
            "{text:?} is not between 0 and 100% (a fraction is at most 1: write 10% for ten percent)"
        ));
    }
    Ok(value)
}

/// The default `--timeout`: a UDP datagram is given up on sooner than a TCP request.
fn timeout(args: &Args) -> Duration {
    args.timeout.unwrap_or(if args.udp {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    })
}

/// `multiconn-client merge FILE...`: its own arguments (no target, no load flags).
#[derive(Parser, Debug)]
#[command(
    name = "multiconn-client merge",
    version,
    about = "Merge runs (interval logs from --hdr-log, or the JSON reports of runs made with \
             --hdr-log) into one report: histograms added, percentiles from the sum",
    long_about = "Merge runs (interval logs from --hdr-log, or the JSON reports of runs made with \
                  --hdr-log, which name their log) into one report, exactly: the latency \
                  histograms are added second by second (aligned on wall-clock seconds) and \
                  every percentile comes from the sum. From JSON reports, counters (errors by \
                  kind, statuses, bytes, connections) are summed too; a bare log has latencies \
                  only. Exit 1 when a file cannot be read or is not a log or report."
)]
struct MergeArgs {
    /// Interval logs (--hdr-log) or JSON reports (--json with --hdr-log).
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// Write the merged report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Print the merged latency distribution in .hgrm format on stdout (report on stderr).
    #[arg(long, conflicts_with = "json")]
    histogram: bool,
    /// Also write the merged series as an interval log to FILE.
    #[arg(long, value_name = "FILE")]
    hdr_log: Option<PathBuf>,
}

fn main() {
    // `merge` as the first argument is the merge command, parsed on its own; anything else
    // is the load form (a host named "merge" is then given by its address or full name).
    let mut raw = std::env::args_os();
    let program = raw.next();
    let rest: Vec<std::ffi::OsString> = raw.collect();
    if rest.first().is_some_and(|first| first == "merge") {
        let args = MergeArgs::parse_from(
            std::iter::once(std::ffi::OsString::from("multiconn-client merge"))
                .chain(rest.into_iter().skip(1)),
        );
        init_client_logging(0, false);
        merge(&args);
        return;
    }
    let args = Args::parse_from(program.into_iter().chain(rest));
    if args.timeout.is_some_and(|t| t.is_zero()) {
        die("--timeout must be longer than 0", EXIT_USAGE);
    }
    init_client_logging(args.verbose, args.quiet);
    let load_mode = args.duration.is_some() || args.requests.is_some();
    if !load_mode && args.target.iter().any(|t| Url::looks_like(t)) {
        die(
            "a URL is a load target: add --duration or --requests",
            EXIT_USAGE,
        );
    }
    let target = target(&args);
    if load_mode {
        check_open_files(target.connections, args.threads.min(target.connections))
            .unwrap_or_else(|e| die(e, EXIT_USAGE));
    } else {
        check_open_files(target.connections, 1).unwrap_or_else(|e| die(e, EXIT_USAGE));
    }
    let protocol = match (args.protocol, &target.url) {
        (Some(p), _) => p,
        (None, Some(_)) => ProtocolArg::Http,
        (None, None) => ProtocolArg::Echo,
    };
    match (protocol, load_mode) {
        (ProtocolArg::File, true) => die(
            "--protocol file downloads once per connection: drop --duration/--requests",
            EXIT_USAGE,
        ),
        (ProtocolArg::File, false) => files(&args, &target),
        (_, _) if args.path.is_some() => die("--path goes with --protocol file", EXIT_USAGE),
        (_, _) if args.room.is_some() && protocol != ProtocolArg::Chat => {
            die("--room goes with --protocol chat", EXIT_USAGE)
        }
        (ProtocolArg::Chat, _) if args.udp => die(
            "--udp echoes datagrams: not with --protocol chat",
            EXIT_USAGE,
        ),
        (ProtocolArg::Chat, false) if target.connections == 1 => chat(&args, &target),
        (ProtocolArg::Chat, false) => die(
            "--protocol chat with NUM_CONNS above 1 is the fan-out load mode: add --duration",
            EXIT_USAGE,
        ),
        (ProtocolArg::Chat, true) => fanout(&args, target),
        (ProtocolArg::Echo, false) => tutorial(&args, &target),
        (other, false) => die(
            format!(
                "--protocol {} is a load mode: add --duration or --requests",
                other.name()
            ),
            EXIT_USAGE,
        ),
        (protocol, true) => match (args.duration, args.requests) {
            (Some(d), _) => load(&args, target, protocol, StopAt::Duration(d)),
            (None, Some(n)) => load(&args, target, protocol, StopAt::Requests(n)),
            (None, None) => die("load mode needs --duration or --requests", EXIT_USAGE),
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
            ProtocolArg::Chat => "chat",
        }
    }
}

/// Reads HOST PORT NUM_CONNS, URL NUM_CONNS, or (with --unix) [URL] NUM_CONNS, and sets
/// up where to connect. A mistake is a usage error.
fn target(args: &Args) -> Target {
    let usage = |message: String| -> ! { die(message, EXIT_USAGE) };
    let positional: Vec<&str> = args.target.iter().map(String::as_str).collect();
    let (url, host_port, count) = match (&args.unix, positional.as_slice()) {
        (_, [url, count]) if Url::looks_like(url) => (
            Some(Url::parse(url).unwrap_or_else(|e| usage(e))),
            None,
            *count,
        ),
        (None, [host, port, count]) => {
            let port = port.parse::<u16>().unwrap_or_else(|_| {
                usage(format!(
                    "PORT must be a number from 0 to 65535, not {port:?}"
                ))
            });
            (None, Some((host.to_string(), port)), *count)
        }
        (Some(_), [count]) => (None, None, *count),
        (Some(_), _) => usage("with --unix PATH, give [URL] NUM_CONNS".into()),
        (None, [first, ..]) if Url::looks_like(first) => usage("give URL NUM_CONNS".into()),
        (None, _) => usage("give HOST PORT NUM_CONNS, or URL NUM_CONNS".into()),
    };
    let connections = match count.parse::<usize>() {
        Ok(0) => usage("NUM_CONNS must be at least 1".into()),
        Ok(n) => n,
        Err(_) => usage(format!("NUM_CONNS must be a number, not {count:?}")),
    };
    let tls_wanted = args.tls || url.as_ref().is_some_and(|u| u.tls);
    if !tls_wanted && (args.insecure || args.cacert.is_some()) {
        usage("--insecure and --cacert go with TLS: an https:// URL or --tls".into());
    }
    let (addr, mut name) = match (&args.unix, &url, &host_port) {
        (Some(path), _, _) => (
            ListenAddr::Unix(path.clone()),
            format!("unix:{}", path.display()),
        ),
        (None, Some(url), _) => {
            let addr = resolve(&url.host, url.port)
                .unwrap_or_else(|e| die(format!("cannot resolve {}: {e}", url.host), 1));
            (ListenAddr::Tcp(addr), addr.to_string())
        }
        (None, None, Some((host, port))) => {
            let addr = resolve(host, *port)
                .unwrap_or_else(|e| die(format!("cannot resolve {host}: {e}"), 1));
            (ListenAddr::Tcp(addr), addr.to_string())
        }
        (None, None, None) => unreachable!("a target without an address was refused above"),
    };
    if let Some(url) = &url {
        name = if args.unix.is_some() {
            format!("{} via {name}", url_text(url))
        } else {
            url_text(url)
        };
    }
    let tls = tls_wanted.then(|| {
        let host = match (&url, &host_port) {
            (Some(url), _) => url.host.clone(),
            (None, Some((host, _))) => host.clone(),
            (None, None) => "localhost".to_string(),
        };
        let options = ClientTlsOptions {
            cacert: args.cacert.clone(),
            insecure: args.insecure,
        };
        ClientTls {
            config: client_config(&options).unwrap_or_else(|e| die(e, 1)),
            name: server_name(&host).unwrap_or_else(|e| usage(e)),
        }
    });
    Target {
        endpoint: Endpoint { addr, tls },
        name,
        url,
        host_port,
        connections,
    }
}

fn url_text(url: &Url) -> String {
    let scheme = if url.tls { "https" } else { "http" };
    format!("{scheme}://{}{}", url.authority, url.path)
}

/// `--protocol file`: every connection downloads `--path`; with `-o`, one download to a file.
fn files(args: &Args, target: &Target) {
    let Some(path) = &args.path else {
        die("--protocol file needs --path PATH", EXIT_USAGE)
    };
    if let Some(out) = &args.output {
        if target.connections != 1 {
            die("-o writes one download: use NUM_CONNS 1", EXIT_USAGE);
        }
        let mut file = std::fs::File::create(out).unwrap_or_else(|e| {
            die(
                format!("cannot create {}: {}", out.display(), describe(&e)),
                1,
            )
        });
        match download(&target.endpoint, path.as_bytes(), &mut file, timeout(args)) {
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
        addr: target.endpoint.clone(),
        connections: target.connections,
        path: path.as_bytes().to_vec(),
        timeout: timeout(args),
    };
    let report = run_file_load(&config).unwrap_or_else(|e| die(describe(&e), 1));
    println!("{path}: {report}");
    if !report.is_success() {
        let failed = report.connections - report.completed;
        fail_connections(&report.failures, failed, report.connections, "downloads");
    }
}

fn tutorial(args: &Args, target: &Target) {
    let mut config = ScenarioConfig::tutorial(target.endpoint.clone(), target.connections);
    config.timeout = timeout(args);
    exit_on_ctrl_c();
    // Not `stdout().lock()`: the Ctrl-C thread prints its line on stdout too.
    let mut transcript: Box<dyn std::io::Write> = if args.quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stdout())
    };
    let report = run_scenario(&config, &mut transcript).unwrap_or_else(|e| die(e, 1));
    if !report.failures.is_empty() {
        let failed = report.failures.len();
        fail_connections(&report.failures, failed, target.connections, "connections");
    }
}

/// `--protocol chat` with one connection: the interactive client on stdin and stdout.
fn chat(args: &Args, target: &Target) {
    if let Some(room) = &args.room {
        if !multiconn::protocol::chat::valid_name(room) {
            die(
                format!("--room {room:?}: a room is 1 to 32 letters, digits, '-', '_' or '.'"),
                EXIT_USAGE,
            );
        }
    }
    let stdout = std::io::stdout();
    match run_chat_client(
        &target.endpoint,
        args.room.as_deref(),
        0,
        stdout.lock(),
        args.connect_timeout,
        timeout(args),
    ) {
        Ok(ChatEnd::Left) => {}
        Ok(ChatEnd::ServerClosed) => eprintln!("{}: the server closed the connection", target.name),
        Ok(ChatEnd::Failed(why)) => die(format!("{}: {why}", target.name), 1),
        Err(e) => die(describe(&e), 1),
    }
}

/// A line per failed connection (the first few), a total, and exit 1.
fn fail_connections(failures: &[(usize, String)], failed: usize, total: usize, what: &str) -> ! {
    for (number, reason) in failures.iter().take(FAILURES_LISTED) {
        eprintln!("error: connection {number}: {reason}");
    }
    if failures.len() > FAILURES_LISTED {
        eprintln!(
            "error: ... and {} more connections failed",
            failures.len() - FAILURES_LISTED
        );
    }
    eprintln!("error: {failed} of {total} {what} failed");
    std::process::exit(1);
}

/// The HTTP request the flags describe.
fn http_workload(args: &Args, target: &Target) -> HttpWorkload {
    let usage = |message: String| -> ! { die(message, EXIT_USAGE) };
    let (host, path) = match (&target.url, &target.host_port) {
        (Some(url), _) => (url.authority.clone(), url.path.clone()),
        (None, Some((host, 80))) => (host.clone(), "/".to_string()),
        (None, Some((host, port))) => (format!("{host}:{port}"), "/".to_string()),
        (None, None) => ("localhost".to_string(), "/".to_string()),
    };
    let mut headers = Vec::with_capacity(args.headers.len());
    for header in &args.headers {
        match header.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() && !name.contains(' ') => {
                headers.push((name.trim().to_string(), value.trim().to_string()))
            }
            _ => usage(format!("-H {header:?}: expected \"Name: value\"")),
        }
    }
    let body = match (&args.body, &args.body_file) {
        (Some(body), _) => body.clone().into_bytes(),
        (None, Some(file)) => std::fs::read(file).unwrap_or_else(|e| {
            die(
                format!("cannot read {}: {}", file.display(), describe(&e)),
                1,
            )
        }),
        (None, None) => Vec::new(),
    };
    let method = args
        .method
        .clone()
        .unwrap_or_else(|| if body.is_empty() { "GET" } else { "POST" }.to_string());
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        usage(format!("-m {method:?} is not an HTTP method"));
    }
    let request = HttpRequest {
        method,
        path,
        host,
        headers,
        body,
        keep_alive: !args.disable_keepalive,
    };
    let mut workload = HttpWorkload::new(&request);
    if let Some(statuses) = &args.expect_status {
        workload.expect_status = statuses.clone();
    }
    workload.expect_body = args.expect_body.as_ref().map(|b| Arc::from(b.as_bytes()));
    workload
}

fn load(args: &Args, target: Target, protocol: ProtocolArg, stop: StopAt) {
    let http_only = !args.headers.is_empty()
        || args.method.is_some()
        || args.body.is_some()
        || args.body_file.is_some()
        || args.expect_status.is_some()
        || args.expect_body.is_some();
    if http_only && protocol != ProtocolArg::Http {
        die(
            "-m, -H, -d, --body-file, --expect-status and --expect-body go with HTTP",
            EXIT_USAGE,
        );
    }
    if args.udp {
        udp_conflicts(args, &target, protocol);
    }
    let workload = match protocol {
        ProtocolArg::Echo => Workload::echo(args.size, seed()),
        ProtocolArg::App => Workload::app(),
        ProtocolArg::Http => Workload::http(http_workload(args, &target)),
        ProtocolArg::File => die("--protocol file is not a load mode", EXIT_USAGE),
        ProtocolArg::Chat => unreachable!("chat load runs in fanout()"),
    };
    debug_assert!(matches!(
        workload.protocol,
        LoadProtocol::Echo | LoadProtocol::App | LoadProtocol::Http
    ));
    let mut config = LoadConfig::new(target.endpoint, target.connections, stop, workload);
    config.target = target.name;
    config.warmup = args.warmup.unwrap_or(match stop {
        StopAt::Duration(_) => Duration::from_secs(1),
        StopAt::Requests(_) => Duration::ZERO,
    });
    config.pipeline = args.pipeline;
    config.rate = args.rate.as_deref().map(|rate| {
        RatePlan::parse(rate, args.ramp, args.step).unwrap_or_else(|e| die(e, EXIT_USAGE))
    });
    config.connect_timeout = args.connect_timeout;
    config.timeout = timeout(args);
    config.threads = args.threads;
    config.reconnect = !args.no_reconnect;
    config.keep_alive = !args.disable_keepalive;
    config.connect_rate = args.connect_rate;
    config.udp = args.udp;
    config.max_loss = args.max_loss.unwrap_or(DEFAULT_MAX_LOSS);
    if let Err(message) = config.validate() {
        die(message, EXIT_USAGE);
    }
    // Created before the run, so a path that cannot be written fails at once.
    let hdr_log = args.hdr_log.as_ref().map(|path| create(path));
    let page_file = args.report.as_ref().map(|path| (path, create(path)));
    let control = LoadControl::new();
    watch_signals(control.clone());
    let show_progress = args.progress || std::io::stderr().is_terminal();
    let mut stderr = std::io::stderr();
    let progress: Option<&mut dyn std::io::Write> = if show_progress {
        Some(&mut stderr)
    } else {
        None
    };
    let mut report = run_load(&config, &control, progress).unwrap_or_else(|e: LoadError| {
        let code = if matches!(e, LoadError::Config(_)) {
            EXIT_USAGE
        } else {
            1
        };
        die(e, code)
    });
    report.hdr_log = args.hdr_log.as_ref().map(|path| {
        std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string()
    });
    if let (Some(path), Some(file)) = (&args.hdr_log, hdr_log) {
        write_hdr_log(path, file, &report);
    }
    output(&report, args.json, args.histogram);
    if let Some((path, mut file)) = page_file {
        let page = render(&PageData::from_report(&report));
        if let Err(e) = file.write_all(page.as_bytes()) {
            die(
                format!("cannot write {}: {}", path.display(), describe(&e)),
                1,
            );
        }
    }
    if report.partial {
        std::process::exit(EXIT_INTERRUPTED);
    }
    if report.requests.completed == 0 {
        die(nothing_completed(&report), 1);
    }
    if let Some(exceeded) = report.loss_exceeded() {
        die(exceeded, 1);
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

/// Creates FILE for writing, or exits with an error.
fn create(path: &std::path::Path) -> std::fs::File {
    std::fs::File::create(path).unwrap_or_else(|e| {
        die(
            format!("cannot create {}: {}", path.display(), describe(&e)),
            1,
        )
    })
}

/// Writes the report's per-second series as an HdrHistogram interval log.
fn write_hdr_log(path: &std::path::Path, file: std::fs::File, report: &LoadReport) {
    let mut out = std::io::BufWriter::new(file);
    let written = write_interval_log(&mut out, report.started_unix_s, &report.intervals)
        .and_then(|()| out.flush());
    if let Err(e) = written {
        die(
            format!("cannot write {}: {}", path.display(), describe(&e)),
            1,
        );
    }
}

/// Prints the report: text or JSON on stdout; with `histogram`, the .hgrm distribution on
/// stdout and the text report on stderr.
fn output(report: &LoadReport, json: bool, histogram: bool) {
    let mut stdout = std::io::stdout().lock();
    let written = if json {
        let text = serde_json::to_string(report)
            .unwrap_or_else(|e| die(format!("cannot write the report: {e}"), 1));
        writeln!(stdout, "{text}")
    } else if histogram {
        eprintln!("{report}");
        write_percentile_distribution(&report.latency_histogram, &mut stdout)
    } else {
        writeln!(stdout, "{report}")
    };
    if let Err(e) = written.and_then(|()| stdout.flush()) {
        // A reader that went away (`| head`) is not worth a second message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            die(format!("cannot write the report: {e}"), 1);
        }
    }
}

/// `merge FILE...`: one report from several runs' logs or JSON reports.
fn merge(args: &MergeArgs) {
    let hdr_log = args.hdr_log.as_ref().map(|path| create(path));
    let report = merge_files(&args.files).unwrap_or_else(|e| die(e, 1));
    if let (Some(path), Some(file)) = (&args.hdr_log, hdr_log) {
        write_hdr_log(path, file, &report);
    }
    output(&report, args.json, args.histogram);
}

/// The flags that mean nothing for UDP datagrams are refused rather than ignored.
fn udp_conflicts(args: &Args, target: &Target, protocol: ProtocolArg) {
    let refuse = |what: &str| -> ! { die(format!("--udp echoes datagrams: {what}"), EXIT_USAGE) };
    if target.url.is_some() || args.unix.is_some() || args.tls {
        refuse("give HOST PORT NUM_SOCKETS, without a URL, --unix or --tls");
    }
    if args.protocol.is_some() && protocol != ProtocolArg::Echo {
        refuse("no --protocol");
    }
    if args.no_reconnect || args.disable_keepalive || args.connect_rate.is_some() {
        refuse(
            "there are no connections for --no-reconnect, --disable-keepalive or --connect-rate",
        );
    }
}

/// Why a run completed no request in its measured window, in one sentence.
fn nothing_completed(report: &LoadReport) -> String {
    let window = match report.options.duration_s {
        Some(_) => format!(
            "in the measured {}",
            multiconn::client::format_duration(Duration::from_secs_f64(report.elapsed_s))
        ),
        None => "at all".to_string(),
    };
    let why = match (
        &report.first_error,
        report.requests.in_flight,
        report.requests.sent,
    ) {
        (Some(first), _, _) => format!("first error: {first}"),
        (None, n, _) if n > 0 => format!(
            "{n} requests were sent and never answered (the server took the connections but \
             did not answer within the run; --timeout is {})",
            multiconn::client::format_duration(Duration::from_secs_f64(report.options.timeout_s))
        ),
        (None, _, 0) if report.options.warmup_s > 0.0 => format!(
            "nothing was sent in it because the requests of the warm-up were never answered \
             (the server took {} connections and did not answer on any)",
            report.connections.connected
        ),
        (None, _, 0) => "no request was sent".to_string(),
        (None, _, _) => "no answer came".to_string(),
    };
    format!("no request completed {window}: {why}")
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

/// `--protocol chat --duration D`: the fan-out load mode.
fn fanout(args: &Args, target: Target) {
    let usage = |message: &str| -> ! { die(message, EXIT_USAGE) };
    let Some(duration) = args.duration else {
        usage("the chat load mode sends lines for --duration D (not --requests)")
    };
    if args.pipeline != 1 || args.threads != 1 || args.warmup.is_some() {
        usage("--pipeline, --threads and --warmup do not go with --protocol chat");
    }
    if args.no_reconnect || args.disable_keepalive || args.connect_rate.is_some() || args.progress {
        usage(
            "--no-reconnect, --disable-keepalive, --connect-rate and --progress do not go with \
             --protocol chat",
        );
    }
    // Chat senders keep one rate: a ramp or steps is a plan for requests, not lines.
    let rate = match (&args.rate, args.ramp, args.step) {
        (_, Some(_), _) | (_, _, Some(_)) => {
            usage("--ramp and --step do not go with --protocol chat")
        }
        (None, _, _) => multiconn::client::fanout::DEFAULT_RATE,
        (Some(text), _, _) => match RatePlan::parse(text, None, None) {
            Ok(RatePlan::Constant(r)) => r,
            Ok(_) => usage("--protocol chat takes one --rate: lines per second per sender"),
            Err(e) => usage(&e),
        },
    };
    let config = FanoutConfig {
        endpoint: target.endpoint,
        target: target.name,
        members: target.connections,
        senders: args.senders,
        rate,
        duration,
        size: args.size,
        room: args.room.clone(),
        connect_timeout: args.connect_timeout,
        timeout: timeout(args),
    };
    if let Err(message) = config.validate() {
        usage(&message);
    }
    let control = LoadControl::new();
    watch_signals(control.clone());
    let report = run_fanout(&config, &control).unwrap_or_else(|e| die(describe(&e), 1));
    let text = if args.json {
        serde_json::to_string(&report)
            .unwrap_or_else(|e| die(format!("cannot write the report: {e}"), 1))
    } else {
        report.to_string()
    };
    if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            die(format!("cannot write the report: {e}"), 1);
        }
    }
    if report.partial {
        std::process::exit(EXIT_INTERRUPTED);
    }
    if report.deliveries.delivered == 0 {
        die(
            format!(
                "no line was delivered ({} sent){}",
                report.lines.sent,
                report
                    .first_error
                    .as_deref()
                    .map(|e| format!("; first error: {e}"))
                    .unwrap_or_default()
            ),
            1,
        );
    }
    if report.has_failures() && !args.allow_errors {
        let d = &report.deliveries;
        eprintln!(
            "error: {} of {} deliveries lost, {} out of order, {} garbled lines, {} members lost{}",
            d.lost,
            d.expected,
            d.out_of_order,
            report.garbled,
            report.members.lost,
            report
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        std::process::exit(1);
    }
}
