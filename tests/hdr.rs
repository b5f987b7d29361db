//! The load generator's HdrHistogram outputs through the real `multiconn-client` binary:
//! `--hdr-log` (read back here with the hdrhistogram crate's own log reader), `--histogram`
//! (.hgrm), the report's text histogram, and `merge` over logs and JSON reports, with its
//! usage and input errors.

mod common;

use std::path::Path;

use common::{client, json, TempDir, TestServer};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use multiconn::protocol::echo::Echo;

/// Every interval of a log, added up by the test itself: (intervals, histogram).
fn read_log(path: &Path) -> (usize, Histogram<u64>) {
    let bytes = std::fs::read(path).expect("the log");
    let mut sum = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    let mut intervals = 0;
    let mut base_time = false;
    for entry in IntervalLogIterator::new(&bytes) {
        match entry.expect("a well-formed log") {
            LogEntry::BaseTime(_) => base_time = true,
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(interval) => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD
                    .decode(interval.encoded_histogram())
                    .unwrap();
                let h: Histogram<u64> = Deserializer::new().deserialize(&mut &encoded[..]).unwrap();
                sum.add(&h).unwrap();
                intervals += 1;
            }
        }
    }
    assert!(base_time, "the log has a BaseTime");
    (intervals, sum)
}

/// Runs a load with `extra` flags against `port`, writing its JSON report to `json_out`.
fn run_to_json(port: &str, extra: &[&str], json_out: &Path) -> serde_json::Value {
    let mut args = vec!["127.0.0.1", port, "4", "--json"];
    args.extend_from_slice(extra);
    let out = client(&args);
    assert!(out.status.success(), "{}", out.stderr);
    std::fs::write(json_out, &out.stdout).unwrap();
    json(&out)
}

/// `--hdr-log` writes an interval log that the crate's reader parses: a histogram per
/// second whose sum has the report's count, p99 and max; the JSON names the log.
#[test]
fn hdr_log_is_an_interval_log_of_the_run() {
    let server = TestServer::start(Echo, |_| {});
    let dir = TempDir::new("hdr-log");
    let log = dir.0.join("run.hlog");
    let report = run_to_json(
        &server.addr.port().to_string(),
        &[
            "--duration",
            "2200ms",
            "--warmup",
            "200ms",
            "--hdr-log",
            log.to_str().unwrap(),
        ],
        &dir.0.join("run.json"),
    );
    let (intervals, sum) = read_log(&log);
    assert_eq!(intervals, 3, "seconds 0, 1 and the last 0.2 s");
    assert_eq!(sum.len(), report["requests"]["completed"].as_u64().unwrap());
    assert_eq!(sum.value_at_quantile(0.99), report["latency_us"]["p99"]);
    assert_eq!(sum.max(), report["latency_us"]["max"]);
    let named = report["hdr_log"].as_str().expect("hdr_log in the JSON");
    assert_eq!(Path::new(named), log.canonicalize().unwrap());
}

/// `--histogram` prints the .hgrm distribution on stdout (header, rows up to 100%,
/// footer with the total count) and the report on stderr; the default report ends with
/// the text histogram, whose rows add up to the requests.
#[test]
fn histogram_prints_hgrm_and_the_report_a_text_histogram() {
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let out = client(&["127.0.0.1", &port, "3", "--requests", "2000", "--histogram"]);
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "       Value     Percentile TotalCount 1/(1-Percentile)"
    );
    assert_eq!(lines[1], "");
    let n = lines.len();
    assert!(
        lines[n - 4].contains(" 1.000000000000       2000"),
        "{}",
        out.stdout
    );
    assert!(lines[n - 3].starts_with("#[Mean    = "), "{}", out.stdout);
    assert!(
        lines[n - 2].starts_with("#[Max     = ")
            && lines[n - 2].ends_with("Total count    =         2000]"),
        "{}",
        out.stdout
    );
    assert_eq!(
        lines[n - 1],
        "#[Buckets =           20, SubBuckets     =         2048]"
    );
    assert!(out.stderr.contains("requests   2,000   "), "{}", out.stderr);

    let out = client(&["127.0.0.1", &port, "3", "--requests", "2000"]);
    assert!(out.status.success(), "{}", out.stderr);
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("histogram  <= "))
        .collect();
    assert!(!rows.is_empty(), "{}", out.stdout);
    let counted: u64 = rows
        .iter()
        .map(|row| {
            // `<= 200µs  1,234  61.70% ███`: the count precedes the share.
            let words: Vec<&str> = row.split_whitespace().collect();
            let share = words
                .iter()
                .position(|w| w.ends_with('%'))
                .unwrap_or_else(|| panic!("no share in {row:?}"));
            words[share - 1].replace(',', "").parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(counted, 2000, "{}", out.stdout);
}

/// `merge` of two runs' JSON reports (following their logs) sums the counts and takes
/// percentiles from the added histograms; bare logs merge the same latencies.
#[test]
fn merge_adds_two_runs_exactly() {
    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let dir = TempDir::new("merge");
    let mut reports = Vec::new();
    for name in ["a", "b"] {
        let log = dir.0.join(format!("{name}.hlog"));
        reports.push(run_to_json(
            &port,
            &["--requests", "3000", "--hdr-log", log.to_str().unwrap()],
            &dir.0.join(format!("{name}.json")),
        ));
    }
    let (_, mut combined) = read_log(&dir.0.join("a.hlog"));
    combined.add(read_log(&dir.0.join("b.hlog")).1).unwrap();

    let a_json = dir.0.join("a.json");
    let b_json = dir.0.join("b.json");
    let out = client(&[
        "merge",
        a_json.to_str().unwrap(),
        b_json.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let merged = json(&out);
    assert_eq!(merged["requests"]["completed"], 6000);
    assert_eq!(merged["requests"]["sent"], 6000);
    assert_eq!(merged["connections"]["connected"], 8);
    assert_eq!(merged["latency_us"]["count"], 6000);
    assert_eq!(
        merged["latency_us"]["p99"],
        combined.value_at_quantile(0.99)
    );
    assert_eq!(merged["latency_us"]["p50"], combined.value_at_quantile(0.5));
    assert_eq!(merged["latency_us"]["max"], combined.max());
    let bytes_out: u64 = reports
        .iter()
        .map(|r| r["bytes"]["out"].as_u64().unwrap())
        .sum();
    assert_eq!(merged["bytes"]["out"], bytes_out);
    assert_eq!(merged["merged_from"].as_array().unwrap().len(), 2);

    let a_log = dir.0.join("a.hlog");
    let b_log = dir.0.join("b.hlog");
    let out = client(&["merge", a_log.to_str().unwrap(), b_log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("merged     2 runs: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("\nrequests   6,000   "),
        "{}",
        out.stdout
    );
}

/// Mistakes are one `error:` line: a missing, garbled or log-less input exits 1; no
/// file, or --json with --histogram, is a usage error (2); an --hdr-log that cannot be
/// created fails before the run.
#[test]
fn merge_and_hdr_log_mistakes_are_errors() {
    let dir = TempDir::new("merge-errors");
    let missing = dir.0.join("missing.hlog");
    let garbled = dir.0.join("garbled.hlog");
    std::fs::write(&garbled, "this is not a log\n").unwrap();
    let plain = dir.0.join("plain.json");
    std::fs::write(&plain, r#"{"requests": {"completed": 3}}"#).unwrap();
    for (file, says) in [
        (&missing, "cannot read"),
        (&garbled, "not an HdrHistogram interval log"),
        (&plain, "has no hdr_log"),
    ] {
        let out = client(&["merge", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
        assert!(
            out.stderr.starts_with("error: ")
                && out.stderr.contains(says)
                && out.stderr.lines().count() == 1,
            "{}",
            out.stderr
        );
        assert!(out.stdout.is_empty());
    }
    let out = client(&["merge"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);

    let server = TestServer::start(Echo, |_| {});
    let port = server.addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "1",
        "--requests",
        "10",
        "--json",
        "--histogram",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let nowhere = dir.0.join("no-such-dir").join("x.hlog");
    let out = client(&[
        "127.0.0.1",
        &port,
        "1",
        "--requests",
        "10",
        "--hdr-log",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: cannot create ") && out.stdout.is_empty(),
        "{}",
        out.stderr
    );
}
