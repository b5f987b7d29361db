//! The load generator against the in-process echo server, against small test doubles
//! (a server that corrupts a byte, one that stalls, one that never answers, an HTTP one),
//! and through the real `multiconn-client` binary for its flags, JSON, exit codes and Ctrl-C.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    client, json, limit_child, read_all_in_background, serve_http_requests, spawn_bin, TestServer,
    IO_TIMEOUT,
};
use multiconn::client::{
    run_load, HttpRequest, HttpWorkload, LoadConfig, LoadControl, LoadReport, RatePlan, StopAt,
    Workload,
};
use multiconn::protocol::echo::Echo;

fn config(addr: SocketAddr, connections: usize, stop: StopAt) -> LoadConfig {
    LoadConfig::new(addr, connections, stop, Workload::echo(64, 42))
}

fn run(config: &LoadConfig) -> LoadReport {
    run_load(config, &LoadControl::new(), None).expect("load run")
}

/// A blocking test double on 127.0.0.1:0 that serves `connections` connections, each on
/// its own thread with `serve`, then stops accepting.
fn double<F>(connections: usize, serve: F) -> SocketAddr
where
    F: Fn(usize, TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for number in 0..connections {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            stream.set_nodelay(true).unwrap();
            let serve = serve.clone();
            std::thread::spawn(move || serve(number, stream));
        }
    });
    addr
}

/// Echoes everything, passing each chunk through `mangle` (which may sleep or flip bits)
/// with the count of bytes this connection echoed before it.
fn echo_with(mut stream: TcpStream, mut mangle: impl FnMut(u64, &mut [u8])) {
    let mut buf = [0u8; 4096];
    let mut offset = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        mangle(offset, &mut buf[..n]);
        offset += n as u64;
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// `--requests 10000` completes exactly 10,000 verified requests, and the server saw
/// exactly that many messages' bytes (nothing sent twice, nothing skipped).
#[test]
fn requests_mode_completes_exactly_n_verified() {
    let server = TestServer::start(Echo, |_| {});
    let report = run(&config(server.addr, 10, StopAt::Requests(10_000)));
    assert_eq!(report.requests.sent, 10_000);
    assert_eq!(report.requests.completed, 10_000);
    assert_eq!(report.latency_us.count, 10_000);
    assert_eq!(
        (
            report.requests.failed,
            report.requests.in_flight,
            report.errors.total
        ),
        (0, 0, 0)
    );
    assert_eq!(report.bytes.out, 10_000 * 64);
    assert_eq!(report.bytes.in_, 10_000 * 64);
    assert!(!report.partial && !report.has_failures());
    let stats = server.stop();
    assert_eq!(stats.bytes_in, 10_000 * 64);
}

/// Several threads and a pipeline still complete exactly the requested count.
#[test]
fn threads_and_pipeline_complete_exactly_n() {
    let server = TestServer::start(Echo, |_| {});
    let mut config = config(server.addr, 7, StopAt::Requests(10_001));
    config.threads = 2;
    config.pipeline = 8;
    config.workload.size = 1000;
    let report = run(&config);
    assert_eq!(report.requests.completed, 10_001);
    assert_eq!(report.connections.connected, 7);
    assert_eq!(report.options.threads, 2);
    assert_eq!(report.errors.total, 0);
    assert_eq!(server.stop().bytes_in, 10_001 * 1000);
}

/// The per-second series covers the measured window second by second, every loop added
/// up: its counts sum to the run's, and its histograms, added, are the run's histogram
/// (same count, min, p50, p99, max), so outputs built on it are exact.
#[test]
fn per_second_series_adds_up_to_the_run() {
    let server = TestServer::start(Echo, |_| {});
    let mut config = config(
        server.addr,
        8,
        StopAt::Duration(Duration::from_millis(2_500)),
    );
    config.threads = 2;
    config.warmup = Duration::from_millis(300);
    let report = run(&config);
    let series: Vec<_> = report.intervals.iter().collect();
    assert_eq!(series.len(), 3, "{series:?}");
    for (k, second) in series.iter().enumerate() {
        assert_eq!(second.start, Duration::from_secs(k as u64));
        assert!(second.requests > 0, "second {k} empty");
        assert_eq!(second.requests, second.latency.count);
    }
    assert_eq!(series[0].length, Duration::from_secs(1));
    assert_eq!(series[2].length, Duration::from_millis(500));
    let requests: u64 = series.iter().map(|s| s.requests).sum();
    assert_eq!(requests, report.requests.completed);
    let errors: u64 = series.iter().map(|s| s.errors).sum();
    assert_eq!(errors, report.errors.total);
    let mut sum = series[0].histogram();
    for second in &series[1..] {
        sum.add(second.histogram()).unwrap();
    }
    let run = report.latency_us;
    assert_eq!(sum.len(), run.count);
    assert_eq!(
        (
            sum.min(),
            sum.value_at_quantile(0.5),
            sum.value_at_quantile(0.99),
            sum.max()
        ),
        (run.min, run.p50, run.p99, run.max)
    );
    assert!(report.started_unix_s > 1.7e9, "{}", report.started_unix_s);
}

/// `--duration 2s` measures 2 s after the default 1 s warm-up and then stops: the binary
/// exits about 3 s after it started, reporting exactly 2 s of measured time.
#[test]
fn duration_mode_stops_near_the_duration() {
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let out = client(&["127.0.0.1", &port, "4", "--duration", "2s", "--json"]);
    assert!(out.status.success(), "{}", out.stderr);
    let report = json(&out);
    assert_eq!(report["elapsed_s"], 2.0);
    assert_eq!(report["options"]["warmup_s"], 1.0);
    let requests = &report["requests"];
    assert!(requests["completed"].as_u64().unwrap() > 100);
    // Closed loop: each connection had its next request out when the time was up.
    assert_eq!(requests["in_flight"], 4);
    assert_eq!(
        requests["sent"].as_u64(),
        requests["completed"].as_u64().map(|n| n + 4)
    );
    assert!(
        out.elapsed >= Duration::from_millis(2900) && out.elapsed < Duration::from_millis(4500),
        "took {:?}",
        out.elapsed
    );
}

/// `--json` prints one JSON object with every documented field, latencies in µs as integers.
#[test]
fn json_report_has_the_documented_fields() {
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "5",
        "--requests",
        "2000",
        "--size",
        "100",
        "--json",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "one line: {}", out.stdout);
    let report = json(&out);
    assert_eq!(report["partial"], false);
    let options = &report["options"];
    assert_eq!(options["address"], format!("127.0.0.1:{port}"));
    assert_eq!(options["protocol"], "echo");
    assert_eq!(options["connections"], 5);
    assert_eq!(options["requests"], 2000);
    assert_eq!(options["duration_s"], serde_json::Value::Null);
    assert_eq!(options["size"], 100);
    assert_eq!(options["pipeline"], 1);
    for key in [
        "threads",
        "warmup_s",
        "rate",
        "connect_timeout_s",
        "timeout_s",
    ] {
        assert!(options.get(key).is_some(), "options.{key}");
    }
    assert!(report["elapsed_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["connections"]["connected"], 5);
    assert_eq!(report["requests"]["sent"], 2000);
    assert_eq!(report["requests"]["completed"], 2000);
    for key in ["failed", "in_flight"] {
        assert_eq!(report["requests"][key], 0, "requests.{key}");
    }
    assert!(report["requests"]["per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(report["bytes"]["out"], 200_000);
    assert_eq!(report["bytes"]["in"], 200_000);
    let latency = &report["latency_us"];
    assert_eq!(latency["count"], 2000);
    for key in ["min", "p50", "p90", "p99", "p99_9", "p99_99", "max"] {
        assert!(
            latency[key].as_u64().is_some_and(|v| v >= 1),
            "latency_us.{key}: {}",
            latency[key]
        );
    }
    assert!(latency["p50"].as_u64() <= latency["p99"].as_u64());
    assert_eq!(
        report["latency_uncorrected_us"],
        serde_json::Value::Null,
        "closed loop"
    );
    for key in [
        "total",
        "connect",
        "reset",
        "timeout",
        "mismatched",
        "status",
    ] {
        assert_eq!(report["errors"][key], 0, "errors.{key}");
    }
    assert!(report["client_cpu"]["user_s"].is_f64());
}

/// The human report (the default) has the lines.
#[test]
fn human_report_by_default() {
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let out = client(&["127.0.0.1", &port, "3", "--requests", "300"]);
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("3 connections, 64-byte messages, 300 requests in "),
        "{}",
        out.stdout
    );
    assert!(lines[1].starts_with("requests   300   "), "{}", out.stdout);
    assert!(lines[2].starts_with("latency    min "), "{}", out.stdout);
    assert_eq!(
        lines[3],
        "errors     0 (connect 0, reset 0, timeout 0, mismatched 0)"
    );
    assert!(
        out.stderr.is_empty(),
        "no progress unless asked or a terminal: {}",
        out.stderr
    );
}

/// `--rate 1000 --duration 2s` sends about 2000 requests (within 10%), and reports both
/// the corrected and the uncorrected latency.
#[test]
fn rate_sends_rate_times_duration() {
    let server = TestServer::start(Echo, |_| {});
    let mut config = config(server.addr, 10, StopAt::Duration(Duration::from_secs(2)));
    config.rate = Some(RatePlan::Constant(1000.0));
    let report = run(&config);
    let sent = report.requests.sent;
    assert!((1800..=2200).contains(&sent), "sent {sent}");
    assert!(report.requests.completed + report.requests.in_flight == sent);
    let uncorrected = report
        .latency_uncorrected_us
        .expect("open loop reports both");
    assert_eq!(uncorrected.count, report.latency_us.count);
    assert!(
        uncorrected.min <= report.latency_us.min,
        "the schedule can only add time"
    );
    assert_eq!(report.errors.total, 0);
}

/// A linear ramp from 100 to 500 req/s over a 3 s run: each second intends exactly the
/// plan's integral over it (ceil(N(t+1)) - ceil(N(t)), N(t) = 100 t + 400 t² / 6: 167, 300
/// and 433), everything intended is sent, and the achieved per-second counts climb with
/// the ramp (the last second sends far more than the first).
#[test]
fn ramp_sends_follow_the_plan_second_by_second() {
    let server = TestServer::start(Echo, |_| {});
    let mut config = config(server.addr, 4, StopAt::Duration(Duration::from_secs(3)));
    config.warmup = Duration::ZERO;
    config.rate = Some(RatePlan::Ramp {
        from: 100.0,
        to: 500.0,
        over: Duration::from_secs(3),
    });
    let report = run(&config);
    let integral = |t: f64| 100.0 * t + 400.0 * t * t / 6.0;
    let expected: Vec<u64> = (0..3)
        .map(|s| (integral(s as f64 + 1.0).ceil() - integral(s as f64).ceil()) as u64)
        .collect();
    assert_eq!(expected, [167, 300, 433]);
    let intended: Vec<u64> = report
        .per_second
        .iter()
        .map(|i| i.intended.unwrap())
        .collect();
    assert_eq!(intended, expected, "{:?}", report.per_second);
    let sent: Vec<u64> = report.per_second.iter().map(|i| i.sent.unwrap()).collect();
    assert_eq!(sent.iter().sum::<u64>(), report.requests.sent);
    assert!(sent[2] > sent[0] * 2, "sends climb with the ramp: {sent:?}");
    let answered: Vec<u64> = report.per_second.iter().map(|i| i.requests).collect();
    assert_eq!(answered.iter().sum::<u64>(), report.requests.completed);
    assert!(
        answered[2] > answered[0] * 2,
        "answers climb too: {answered:?}"
    );
    let pace = report.pace.expect("a rated run reports its pace");
    assert_eq!((pace.intended, pace.sent), (900, 900), "{pace:?}");
    assert!(pace.late <= pace.sent);
    assert_eq!(report.errors.total, 0);
    assert_eq!(
        report.options.rate_plan.as_deref(),
        Some("100..500 req/s over 3.00s")
    );
}

/// `--json`'s `intervals`: one entry per measured second, `t` from 0, answers and errors
/// that add up to the run's, latency p50 ≤ p99 ≤ max in ms; no pace fields without a rate.
#[test]
fn json_intervals_per_second() {
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "3",
        "--duration",
        "2s",
        "--warmup",
        "0",
        "--json",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let report = json(&out);
    let intervals = report["intervals"].as_array().expect("intervals");
    let t: Vec<u64> = intervals.iter().map(|i| i["t"].as_u64().unwrap()).collect();
    assert_eq!(t, [0, 1]);
    let sum = |key: &str| {
        intervals
            .iter()
            .map(|i| i[key].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        sum("requests"),
        report["requests"]["completed"].as_u64().unwrap()
    );
    assert_eq!(sum("errors"), 0);
    for interval in intervals {
        let ms = |key: &str| interval[key].as_f64().unwrap();
        assert!(interval["requests"].as_u64().unwrap() > 0, "{interval}");
        assert!(
            0.0 < ms("p50_ms") && ms("p50_ms") <= ms("p99_ms") && ms("p99_ms") <= ms("max_ms"),
            "{interval}"
        );
        for key in ["intended", "sent", "late"] {
            assert!(interval.get(key).is_none(), "closed loop has no {key}");
        }
    }
    let max_ms = intervals
        .iter()
        .map(|i| i["max_ms"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let run_max_ms = report["latency_us"]["max"].as_f64().unwrap() / 1000.0;
    assert!(
        (max_ms - run_max_ms).abs() < 1e-9,
        "{max_ms} vs {run_max_ms}"
    );
}

/// Steps through the binary: --rate A,B --step D shows intended, sent and late per second
/// in --json's intervals; the plan's flags that do not fit each other are usage errors.
#[test]
fn rate_plans_through_the_binary() {
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "2",
        "--duration",
        "2s",
        "--warmup",
        "0",
        "--rate",
        "50,200",
        "--step",
        "1s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let report = json(&out);
    let intervals = report["intervals"].as_array().expect("intervals");
    let intended: Vec<u64> = intervals
        .iter()
        .map(|i| i["intended"].as_u64().unwrap())
        .collect();
    assert_eq!(intended, [50, 200]);
    assert!(intervals
        .iter()
        .all(|i| i["late"].is_u64() && i["sent"].is_u64()));
    assert_eq!(report["pace"]["late_after_ms"], 1.0);
    assert_eq!(report["options"]["rate_plan"], "50,200 req/s, 1.00s each");
    for (args, says) in [
        (&["--rate", "100..200"][..], "--ramp D"),
        (&["--rate", "1,2", "--ramp", "1s"][..], "not --ramp"),
        (&["--rate", "100..200", "--step", "1s"][..], "not --step"),
        (&["--rate", "100", "--step", "1s"][..], "--step goes with"),
        (&["--rate", "0"][..], "positive"),
        (&["--rate=-5"][..], "positive"),
        (&["--rate", "many"][..], "positive"),
    ] {
        let mut all = vec!["127.0.0.1", &port, "1", "--duration", "1s"];
        all.extend_from_slice(args);
        let out = client(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains(says),
            "{args:?}: {}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
}

/// A server that corrupts one byte is caught: one mismatch (that connection is closed
/// and its request counted as failed), exit code 1; `--allow-errors` exits 0 with the
/// same counts.
#[test]
fn corrupted_byte_is_a_mismatch_and_fails_the_run() {
    for allow_errors in [false, true] {
        // Byte 1000 of one connection's stream (whichever gets there first, so a connection
        // that starts late on a busy machine cannot dodge it) is flipped, once.
        let corrupted = Arc::new(AtomicBool::new(false));
        let addr = double(4, move |_, stream| {
            let corrupted = corrupted.clone();
            echo_with(stream, move |offset, chunk| {
                if offset <= 1000
                    && 1000 < offset + chunk.len() as u64
                    && !corrupted.swap(true, Ordering::SeqCst)
                {
                    chunk[(1000 - offset) as usize] ^= 0x20;
                }
            })
        });
        let port = addr.port().to_string();
        let mut args = vec!["127.0.0.1", &port, "4", "--requests", "400", "--json"];
        if allow_errors {
            args.push("--allow-errors");
        }
        let out = client(&args);
        let report = json(&out);
        assert_eq!(report["errors"]["mismatched"], 1, "{report}");
        assert_eq!(report["errors"]["total"], 1);
        assert_eq!(report["connections"]["lost"], 1);
        assert_eq!(report["requests"]["failed"], 1);
        assert_eq!(
            report["requests"]["completed"], 399,
            "the other connections finish the run"
        );
        assert!(report["first_error"]
            .as_str()
            .unwrap()
            .contains("echo mismatch at byte 40 of a 64-byte message"));
        if allow_errors {
            assert!(out.status.success(), "{}", out.stderr);
        } else {
            assert_eq!(out.status.code(), Some(1));
            assert!(
                out.stderr.contains("error: 1 errors, 1 requests failed"),
                "{}",
                out.stderr
            );
        }
    }
}

/// Open loop against a server that stalls for 500 ms mid-run: the corrected p99 shows the
/// stall (≥ 400 ms) while the uncorrected one, which coordinated omission would report,
/// stays far lower.
#[test]
fn stall_shows_in_the_corrected_p99() {
    let stall_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let echoed = Arc::new(AtomicU64::new(0));
    let addr = double(2, move |_, stream| {
        let (stall_until, echoed) = (stall_until.clone(), echoed.clone());
        echo_with(stream, move |_, chunk| {
            // After 200 messages (about 0.5 s at 400/s) the whole server stops for 500 ms.
            let before = echoed.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            let until = {
                let mut stall = stall_until.lock().unwrap();
                if stall.is_none() && before >= 200 * 64 {
                    *stall = Some(Instant::now() + Duration::from_millis(500));
                }
                *stall
            };
            if let Some(until) = until {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
        })
    });
    let mut config = config(addr, 2, StopAt::Duration(Duration::from_secs(2)));
    config.rate = Some(RatePlan::Constant(400.0));
    let report = run(&config);
    let uncorrected = report.latency_uncorrected_us.expect("open loop");
    assert!(
        report.latency_us.p99 >= 400_000,
        "corrected p99 {} µs",
        report.latency_us.p99
    );
    assert!(
        uncorrected.max >= 400_000,
        "the stalled requests themselves"
    );
    assert!(
        uncorrected.p99 < 100_000,
        "uncorrected p99 {} µs",
        uncorrected.p99
    );
    assert!(
        report.requests.sent >= 700,
        "the schedule catches up after the stall: {}",
        report.requests.sent
    );
    assert_eq!(report.errors.total, 0);
}

/// A server that never answers: each connection's request times out after `--timeout`,
/// counted as timeouts and failed requests, and the run ends instead of hanging.
#[test]
fn unanswered_requests_time_out() {
    let addr = double(3, |_, mut stream| {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    });
    let mut config = config(addr, 3, StopAt::Requests(100));
    config.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let report = run(&config);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(report.errors.timeout, 3);
    assert_eq!(report.requests.failed, 3);
    assert_eq!(report.requests.completed, 0);
    assert!(report.has_failures());
    assert!(report
        .first_error
        .unwrap()
        .contains("no answer within 300ms"));
}

/// A refused port: one clear line on stderr, exit code 1, and no hang.
#[test]
fn refused_port_is_a_clear_error() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again: nothing listens there now
    let port = port.to_string();
    let out = client(&["127.0.0.1", &port, "5", "--requests", "100"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr,
        format!("error: cannot connect to 127.0.0.1:{port}: Connection refused\n")
    );
    assert!(out.stdout.is_empty());
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
}

/// When the OS refuses a thread (here: a 64 MiB address-space limit against 100 loops of
/// 2 MiB stacks), the loops already started are called off and the user gets one clear
/// line and exit code 1, not a panic or a hang at the start barrier.
#[test]
fn refused_thread_is_a_clear_error() {
    use std::process::{Command, Stdio};
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_multiconn-client"));
    command
        .args([
            "127.0.0.1",
            &port,
            "100",
            "--threads",
            "100",
            "--requests",
            "1000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    limit_child(&mut command, libc::RLIMIT_AS, 64 << 20);
    let child = command.spawn().expect("spawn multiconn-client");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(IO_TIMEOUT) else {
        // SAFETY: kill only sends a signal to the child we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("multiconn-client hung after a refused thread");
    };
    let output = output.expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot start a load thread: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// Without load flags the binary still runs the tutorial's scenario with its transcript.
#[test]
fn tutorial_scenario_still_works() {
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let out = client(&["127.0.0.1", &port, "2"]);
    assert!(out.status.success(), "{}", out.stderr);
    let addr = server.addr;
    for line in [
        format!("Starting connection 1 to {addr}"),
        format!("Starting connection 2 to {addr}"),
        "Sending b\"Message 1 from client.\" to connection 1".to_string(),
        "Sending b\"Message 2 from client.\" to connection 2".to_string(),
        "Closing connection 1".to_string(),
        "Closing connection 2".to_string(),
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            out.stdout
        );
    }
    let received: String = out
        .stdout
        .lines()
        .filter(|l| l.ends_with("from connection 1") && l.starts_with("Received "))
        .collect();
    assert!(
        received.contains("Message 1 from client."),
        "{}",
        out.stdout
    );
}

/// Load flags without a load mode are a usage error (exit 2): said clearly, not silently
/// ignored.
#[test]
fn unavailable_or_misplaced_options_are_refused() {
    let out = client(&["127.0.0.1", "9", "1", "--rate", "10"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("--duration") || out.stderr.contains("--requests"),
        "{}",
        out.stderr
    );
    let out = client(&["127.0.0.1", "9", "1", "--duration", "10q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("invalid duration"), "{}", out.stderr);
    let out = client(&["127.0.0.1", "9", "1", "--requests", "5", "--pipeline", "0"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert_eq!(out.stderr, "error: --pipeline must be between 1 and 1024\n");
}

/// Ctrl-C during a run: the report still comes, marked partial, with exit code 130.
#[test]
fn ctrl_c_gives_a_partial_report_and_exit_130() {
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let mut child: Child = spawn_bin(
        "multiconn-client",
        &[
            "127.0.0.1",
            &port,
            "2",
            "--duration",
            "30s",
            "--warmup",
            "0",
            "--json",
            "--progress",
        ],
    );
    let stdout = read_all_in_background(child.stdout.take().unwrap());
    let (line_tx, line_rx) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    // The first progress line says the run is under way.
    let first = line_rx.recv_timeout(IO_TIMEOUT);
    if first.is_err() {
        let _ = child.kill();
    }
    let first = first.expect("a progress line");
    assert!(
        first.starts_with("[  1s] ") && first.contains(" req/s"),
        "{first}"
    );
    // SAFETY: kill only sends a signal to the child we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let stdout = stdout.join().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(report["partial"], true);
    let elapsed = report["elapsed_s"].as_f64().unwrap();
    assert!((1.0..10.0).contains(&elapsed), "measured {elapsed} s");
    assert!(report["requests"]["completed"].as_u64().unwrap() > 0);
}

/// An HTTP/1.1 test double answering in turn with Content-Length, chunked and 503
/// responses; requests are counted across its connections.
fn http_double(connections: usize, requests_seen: Arc<AtomicU64>) -> SocketAddr {
    double(connections, move |_, mut stream| {
        serve_http_requests(&mut stream, |stream, request| {
            assert!(
                request.starts_with(b"GET / HTTP/1.1\r\nHost: "),
                "{request:?}"
            );
            // Counted across connections, so exactly one answer in ten is a 503.
            let response: &[u8] = match requests_seen.fetch_add(1, Ordering::SeqCst) % 10 {
                9 => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
                n if n % 2 == 0 => b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!",
                _ => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nHello, \r\n6\r\nWorld!\r\n0\r\n\r\n",
            };
            stream.write_all(response).map(|()| true)
        })
    })
}

/// `--protocol http`: keep-alive GETs, responses framed by Content-Length or chunked;
/// 5xx answers are counted as status errors while the connections carry on.
#[test]
fn http_protocol_against_a_test_double() {
    let seen = Arc::new(AtomicU64::new(0));
    let addr = http_double(4, seen.clone());
    let mut config = config(addr, 4, StopAt::Requests(400));
    config.workload = Workload::http(HttpWorkload::new(&HttpRequest::get("h", "/")));
    config.pipeline = 4;
    let report = run(&config);
    assert_eq!(report.requests.completed, 400);
    assert_eq!(seen.load(Ordering::SeqCst), 400);
    assert_eq!(report.errors.status, 40, "every tenth answer is a 503");
    assert_eq!(report.errors.total, 40);
    assert_eq!(
        (
            report.errors.mismatched,
            report.requests.failed,
            report.connections.lost
        ),
        (0, 0, 0)
    );
    assert!(report.has_failures());
}

/// Runs `--requests 4000 --pipeline 4` with `protocol` over 20 connections against
/// `server`; checks every request completed without error and the server saw each one.
fn every_request_answered(server: TestServer, protocol: &str) -> multiconn::Stats {
    let port = server.addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "20",
        "--requests",
        "4000",
        "--pipeline",
        "4",
        "--protocol",
        protocol,
        "--json",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let report = json(&out);
    assert_eq!(report["options"]["protocol"], protocol);
    assert_eq!(report["requests"]["completed"], 4000);
    assert_eq!(report["errors"]["total"], 0);
    let stats = server.stop();
    assert_eq!(stats.requests, 4000);
    stats
}

/// `--protocol app` against the real app server: every search answered and verified.
#[test]
fn app_protocol_against_the_app_server() {
    let server = TestServer::start(multiconn::protocol::app::App::default(), |_| {});
    every_request_answered(server, "app");
}

/// `--protocol http` against the real HTTP responder: keep-alive, every response framed.
#[test]
fn http_protocol_against_the_http_server() {
    let server = TestServer::start(multiconn::protocol::http::Http::default(), |_| {});
    let stats = every_request_answered(server, "http");
    assert_eq!(stats.accepted, 20, "keep-alive: one connection each");
}

/// A server whose accept queue is full never completes a handshake: `--connect-timeout`
/// turns that into one clear error and a non-zero exit instead of a hang.
#[test]
fn connect_timeout_is_a_clear_error() {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).unwrap();
    // Backlog 0: the accept queue holds one connection; later SYNs are dropped, unanswered.
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let fillers: Vec<TcpStream> = (0..3)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok())
        .collect();
    assert!(!fillers.is_empty(), "the queue should take one connection");
    let port = addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "3",
        "--requests",
        "10",
        "--connect-timeout",
        "300ms",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("timed out after 300ms"),
        "{}",
        out.stderr
    );
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
    drop((listener, fillers));
}
