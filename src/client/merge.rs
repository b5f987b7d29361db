//! `multiconn-client merge FILE...`: adds up runs, from several hosts or several runs, into
//! one [`LoadReport`], exactly: the interval logs' histograms are added second by second
//! (aligned on wall-clock seconds), and every percentile comes from the sum, never an
//! average of percentiles. A run's JSON report points to its log (`hdr_log`) and brings
//! the counters a log lacks (errors by kind, statuses, bytes, connections), summed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::Value;

use super::hdr::{read_interval_log, LoggedInterval};
use super::report::{new_histogram, per_second, CpuTime, LoadReport, ReportOptions, Tally};
use super::series::{IntervalRecord, IntervalSeries};

/// Largest file `merge` reads: a day of per-second intervals is a few tens of MB.
const MAX_INPUT: u64 = 1 << 30;

/// One input, read: its log's intervals and, from a JSON report, the run's figures.
struct Input {
    name: String,
    intervals: Vec<LoggedInterval>,
    report: Option<Value>,
}

/// Merges the runs in `paths` (interval logs, or JSON reports with `hdr_log`).
pub fn merge_files(paths: &[PathBuf]) -> Result<LoadReport, String> {
    if paths.is_empty() {
        return Err("merge needs at least one file".into());
    }
    let inputs = paths
        .iter()
        .map(|p| read_input(p))
        .collect::<Result<Vec<_>, _>>()?;
    merge(&inputs)
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let name = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {name}: {}", crate::net::describe(&e)))?
        .len();
    if size > MAX_INPUT {
        return Err(format!("{name}: {size} bytes, more than merge reads"));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {name}: {}", crate::net::describe(&e)))
}

fn read_input(path: &Path) -> Result<Input, String> {
    let bytes = read_file(path)?;
    let name = path.display().to_string();
    let is_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    if !is_json {
        return Ok(Input {
            intervals: read_interval_log(&bytes, &name)?,
            name,
            report: None,
        });
    }
    let report: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{name}: not a JSON report: {e}"))?;
    let Some(log) = report.get("hdr_log").and_then(Value::as_str) else {
        return Err(format!(
            "{name}: this report has no hdr_log (run with --hdr-log FILE): its percentiles \
             alone cannot be merged exactly"
        ));
    };
    // As recorded; failing that, a file of that name beside the report (copied together).
    let recorded = PathBuf::from(log);
    let beside = path
        .parent()
        .zip(recorded.file_name())
        .map(|(dir, file)| dir.join(file));
    let log_path = match beside {
        Some(beside) if !recorded.exists() && beside.exists() => beside,
        _ => recorded,
    };
    let log_name = log_path.display().to_string();
    let intervals = read_interval_log(&read_file(&log_path)?, &log_name)?;
    let logged: u64 = intervals.iter().map(|i| i.count).sum();
    let completed = number(&report, &["requests", "completed"]);
    if completed != logged {
        return Err(format!(
            "{name} counts {completed} answers but its log {log_name} has {logged}: not the \
             log of this run"
        ));
    }
    Ok(Input {
        name,
        intervals,
        report: Some(report),
    })
}

/// The unsigned integer at `path` in `v`, 0 if absent.
fn number(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn float(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_f64)
}

/// The protocol names a report may carry, as the report's `&'static str`.
fn protocol_name(name: Option<&str>) -> &'static str {
    match name {
        Some("echo") => "echo",
        Some("app") => "app",
        Some("http") => "http",
        _ => "interval logs",
    }
}

fn merge(inputs: &[Input]) -> Result<LoadReport, String> {
    // Every interval, placed on the second (from the earliest start) nearest its start.
    let base = inputs
        .iter()
        .flat_map(|i| &i.intervals)
        .map(|i| i.start_unix_s)
        .fold(f64::INFINITY, f64::min);
    let mut placed: Vec<(u64, &LoggedInterval)> = inputs
        .iter()
        .flat_map(|i| &i.intervals)
        .map(|i| (((i.start_unix_s - base).max(0.0) + 0.5).floor() as u64, i))
        .collect();
    placed.sort_by_key(|(second, _)| *second);
    let mut total = new_histogram();
    let mut sum = new_histogram();
    let mut series = IntervalSeries::default();
    let mut group = placed.iter().peekable();
    while let Some(&(second, first)) = group.next() {
        sum.reset();
        let mut length = first.length;
        add(&mut sum, first)?;
        while let Some(&&(next, interval)) = group.peek() {
            if next != second {
                break;
            }
            length = length.max(interval.length);
            add(&mut sum, interval)?;
            group.next();
        }
        let _ = total.add(&sum);
        series.push(IntervalRecord::new(
            Duration::from_secs(second),
            length,
            sum.len(),
            0,
            &sum,
        ));
    }

    let reports: Vec<&Value> = inputs.iter().filter_map(|i| i.report.as_ref()).collect();
    let mut tally = Tally {
        completed: total.len(),
        latency: total,
        ..Tally::default()
    };
    let mut cpu = CpuTime::default();
    let mut elapsed: f64 = 0.0;
    let mut partial = false;
    for input in inputs {
        // A log's own span; a report's measured time, which it states.
        let span = input
            .intervals
            .iter()
            .map(|i| i.start_unix_s + i.length.as_secs_f64())
            .fold(f64::NEG_INFINITY, f64::max)
            - input
                .intervals
                .iter()
                .map(|i| i.start_unix_s)
                .fold(f64::INFINITY, f64::min);
        let stated = input.report.as_ref().and_then(|r| float(r, &["elapsed_s"]));
        elapsed = elapsed.max(stated.unwrap_or(span));
    }
    for r in &reports {
        tally.connected += number(r, &["connections", "connected"]);
        tally.lost += number(r, &["connections", "lost"]);
        tally.reconnects += number(r, &["connections", "reconnects"]);
        tally.sent += number(r, &["requests", "sent"]);
        tally.failed += number(r, &["requests", "failed"]);
        tally.in_flight += number(r, &["requests", "in_flight"]);
        tally.bytes_out += number(r, &["bytes", "out"]);
        tally.bytes_in += number(r, &["bytes", "in"]);
        let e = &mut tally.errors;
        e.connect += number(r, &["errors", "connect"]);
        e.tls += number(r, &["errors", "tls"]);
        e.reset += number(r, &["errors", "reset"]);
        e.closed += number(r, &["errors", "closed"]);
        e.timeout += number(r, &["errors", "timeout"]);
        e.mismatched += number(r, &["errors", "mismatched"]);
        e.status += number(r, &["errors", "status"]);
        e.total += number(r, &["errors", "total"]);
        if let Some(statuses) = r.get("status").and_then(Value::as_object) {
            for (code, n) in statuses {
                if let (Ok(code), Some(n)) = (code.parse::<u16>(), n.as_u64()) {
                    if let Some(slot) = tally.statuses.get_mut(usize::from(code)) {
                        *slot += n;
                    }
                }
            }
        }
        if tally.first_error.is_none() {
            tally.first_error = r
                .get("first_error")
                .and_then(Value::as_str)
                .map(String::from);
        }
        tally.tls_resumed += number(r, &["tls_resumed"]);
        cpu.user_s += float(r, &["client_cpu", "user_s"]).unwrap_or(0.0);
        cpu.system_s += float(r, &["client_cpu", "system_s"]).unwrap_or(0.0);
        partial |= r.get("partial").and_then(Value::as_bool).unwrap_or(false);
    }
    cpu.user_s = (cpu.user_s * 1000.0).round() / 1000.0;
    cpu.system_s = (cpu.system_s * 1000.0).round() / 1000.0;

    let options = merged_options(&reports);
    let mut report = LoadReport::new(
        options,
        &tally,
        Duration::from_secs_f64(elapsed.max(0.0)),
        partial,
        cpu,
    );
    // Only the logged latency merges exactly; the uncorrected latency, connect and
    // handshake times were kept as percentiles only, so they are left out.
    report.latency_uncorrected_us = None;
    report.tls_handshake_us = None;
    report.started_unix_s = (base * 1e3).round() / 1e3;
    report.merged_from = inputs
        .iter()
        .map(|i| match i.report {
            Some(_) => i.name.clone(),
            // Bare logs carry latencies only: say that their errors are not counted.
            None => format!("{} (latencies only)", i.name),
        })
        .collect();
    report.intervals = series;
    // The logs carry no schedule: each run's pace (intended, sent, late) stays in its
    // own report, and the merged intervals have the latencies and counts only.
    report.pace = None;
    report.per_second = per_second(&report.intervals, false);
    Ok(report)
}

fn add(sum: &mut Histogram<u64>, interval: &LoggedInterval) -> Result<(), String> {
    sum.add(interval.histogram()?)
        .map_err(|e| format!("cannot add an interval: {e:?}"))
}

/// The options of the merged runs: the first report's, with the connections, threads and
/// rates of all added up (the runs together made the load); for bare logs, little is known.
fn merged_options(reports: &[&Value]) -> ReportOptions {
    let first = reports.first().map(|r| &r["options"]);
    let get = |key: &str| first.and_then(|o| o.get(key));
    let text = |key: &str| get(key).and_then(Value::as_str).map(String::from);
    let flag = |key: &str| get(key).and_then(Value::as_bool).unwrap_or(false);
    let f = |key: &str| get(key).and_then(Value::as_f64);
    let sum = |key: &str| {
        reports
            .iter()
            .map(|r| number(r, &["options", key]))
            .sum::<u64>()
    };
    let rates: Option<Vec<f64>> = reports
        .iter()
        .map(|r| float(r, &["options", "rate"]))
        .collect();
    let mut addresses: Vec<String> = reports
        .iter()
        .filter_map(|r| r["options"]["address"].as_str().map(String::from))
        .collect();
    addresses.dedup();
    ReportOptions {
        address: addresses.join(", "),
        protocol: protocol_name(get("protocol").and_then(Value::as_str)),
        request: text("request"),
        tls: flag("tls"),
        reconnect: flag("reconnect"),
        keep_alive: first.is_none() || flag("keep_alive"),
        connect_rate: f("connect_rate"),
        connections: sum("connections") as usize,
        threads: sum("threads") as usize,
        duration_s: f("duration_s"),
        requests: get("requests")
            .and_then(Value::as_u64)
            .map(|_| sum("requests")),
        warmup_s: f("warmup_s").unwrap_or(0.0),
        size: get("size").and_then(Value::as_u64).unwrap_or(0) as usize,
        pipeline: get("pipeline").and_then(Value::as_u64).unwrap_or(1) as usize,
        rate: rates.filter(|r| !r.is_empty()).map(|r| r.iter().sum()),
        // Plans (ramps, steps) of several runs do not add up to one in words.
        rate_plan: None,
        connect_timeout_s: f("connect_timeout_s").unwrap_or(0.0),
        timeout_s: f("timeout_s").unwrap_or(0.0),
        // UDP runs merge as their latencies; their datagram counts are not added up.
        max_loss: None,
    }
}
