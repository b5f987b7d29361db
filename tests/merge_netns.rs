//! `merge` across hosts: two load generators, each in its own network namespace (a host
//! of its own, made here with `ip netns` and veth pairs), load one echo server in a third;
//! their JSON reports and interval logs merge into one report whose count is the sum and
//! whose percentiles are those of the two histograms added. Needs root (CI runs as root);
//! without the privilege the test says so on one line and passes nothing off as checked.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{json, ServerChild, TempDir, Transcript};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

const SERVER: &str = env!("CARGO_BIN_EXE_multiconn-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_multiconn-client");

/// Runs `ip ARGS`; Err with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Three namespaces, server `s` and generators `a` and `b`, with a veth pair from each
/// generator to the server: a on 10.201.1.0/24, b on 10.201.2.0/24, the server .1 on
/// both. Dropping it deletes the namespaces, which deletes their veth ends too.
struct Hosts {
    names: Vec<String>,
}

impl Hosts {
    fn new() -> Result<Hosts, String> {
        let id = std::process::id() % 100_000;
        let name = |role: &str| format!("mc{id}{role}");
        let mut hosts = Hosts { names: Vec::new() };
        for role in ["s", "a", "b"] {
            ip(&["netns", "add", &name(role)])?;
            hosts.names.push(name(role));
            ip(&["-n", &name(role), "link", "set", "lo", "up"])?;
        }
        for (role, subnet) in [("a", 1), ("b", 2)] {
            let (outer, inner) = (format!("mc{id}{role}g"), format!("mc{id}{role}s"));
            ip(&[
                "link",
                "add",
                &outer,
                "netns",
                &name(role),
                "type",
                "veth",
                "peer",
                "name",
                &inner,
                "netns",
                &name("s"),
            ])?;
            let generator = format!("10.201.{subnet}.2/24");
            let server = format!("10.201.{subnet}.1/24");
            ip(&["-n", &name(role), "addr", "add", &generator, "dev", &outer])?;
            ip(&["-n", &name(role), "link", "set", &outer, "up"])?;
            ip(&["-n", &name("s"), "addr", "add", &server, "dev", &inner])?;
            ip(&["-n", &name("s"), "link", "set", &inner, "up"])?;
        }
        Ok(hosts)
    }

    fn exec(&self, role: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.names[role], program]);
        command
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Every interval of a log added up by the test itself.
fn read_log(path: &Path) -> Histogram<u64> {
    use base64::Engine as _;
    let bytes = std::fs::read(path).expect("the log");
    let mut sum = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    for entry in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(interval) = entry.expect("a well-formed log") {
            let encoded = base64::engine::general_purpose::STANDARD
                .decode(interval.encoded_histogram())
                .unwrap();
            let h: Histogram<u64> = Deserializer::new().deserialize(&mut &encoded[..]).unwrap();
            sum.add(&h).unwrap();
        }
    }
    sum
}

#[test]
fn runs_from_two_hosts_merge_exactly() {
    let hosts = match Hosts::new() {
        Ok(hosts) => hosts,
        Err(e) => {
            println!("skipped: cannot make network namespaces here (needs root): {e}");
            return;
        }
    };
    let mut server = hosts.exec(0, SERVER);
    server
        .args(["0.0.0.0", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = ServerChild(server.spawn().expect("start the server"));
    // "Listening on 0.0.0.0:PORT": the event that says it listens, and where.
    let mut transcript = Transcript::of(server.stderr.take().unwrap());
    let line = transcript.wait_for("Listening on ");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));

    let dir = TempDir::new("merge-netns");
    let mut runs = Vec::new();
    let mut reports = Vec::new();
    for (role, address) in [(1, "10.201.1.1"), (2, "10.201.2.1")] {
        let log = dir.0.join(format!("host{role}.hlog"));
        let report = dir.0.join(format!("host{role}.json"));
        let mut generator = hosts.exec(role, CLIENT);
        generator
            .args([
                address,
                &port.to_string(),
                "8",
                "--requests",
                "5000",
                "--json",
            ])
            .args(["--hdr-log", log.to_str().unwrap()])
            .stdout(std::fs::File::create(&report).unwrap())
            .stderr(Stdio::piped());
        runs.push((generator.spawn().expect("start a generator"), log));
        reports.push(report);
    }
    // Both run at once, as two hosts would.
    let mut combined = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    let mut completed = 0;
    for ((child, log), report) in runs.into_iter().zip(&reports) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
        // Each went over its own link to the server's address on that link.
        assert!(
            report["options"]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.201.")),
            "{}",
            report["options"]
        );
        completed += report["requests"]["completed"].as_u64().unwrap();
        combined.add(read_log(&log)).unwrap();
    }
    assert_eq!(completed, 10_000);

    let out = common::client(&[
        "merge",
        reports[0].to_str().unwrap(),
        reports[1].to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let merged = json(&out);
    assert_eq!(merged["requests"]["completed"], completed);
    assert_eq!(merged["latency_us"]["count"], combined.len());
    assert_eq!(
        merged["latency_us"]["p99"],
        combined.value_at_quantile(0.99)
    );
    assert_eq!(merged["latency_us"]["p50"], combined.value_at_quantile(0.5));
    assert_eq!(merged["latency_us"]["max"], combined.max());
    assert_eq!(merged["connections"]["connected"], 16);
    println!(
        "merged {} requests from two namespaces: p50 {} us, p99 {} us",
        completed,
        combined.value_at_quantile(0.5),
        combined.value_at_quantile(0.99)
    );
}
