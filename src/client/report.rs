//! What a load run measured: the counters and latency histograms each loop keeps
//! ([`Tally`], merged across threads), and the final [`LoadReport`] built from them, which
//! prints for people (`Display`) or serialises as one JSON object (`serde`). Also the
//! once-a-second progress line.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::duration::format_duration;
use super::hdr::text_histogram;
use super::pace::{PaceCounts, PaceSeries, PaceSummary, LATE_AFTER};
use super::series::IntervalSeries;

/// Latencies are recorded in microseconds up to this (ten minutes, well past the 60 s a
/// report must cover); longer ones are recorded as this value.
pub const MAX_LATENCY_US: u64 = 600 * 1_000_000;
/// Significant decimal digits kept by the histograms (0.1% error).
const LATENCY_SIGFIG: u8 = 3;

/// An empty latency histogram with the bounds every part of a run shares (so they merge).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, LATENCY_SIGFIG)
        .expect("constant bounds are valid: low >= 1, high >= 2 * low, sigfig <= 5")
}

/// Errors by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// All kinds added up.
    pub total: u64,
    /// Connections that could not be established (refused, unreachable, timed out).
    pub connect: u64,
    /// TLS handshakes that failed (a certificate not trusted, no common cipher).
    pub tls: u64,
    /// Connections the server reset (or, with `--no-reconnect`, closed during the run).
    pub reset: u64,
    /// Connections the server closed (FIN) in the middle of a response.
    pub closed: u64,
    /// Requests not answered within `--timeout` (their connection is then closed).
    pub timeout: u64,
    /// Responses that did not match the request (a wrong echoed byte, malformed HTTP);
    /// their connection is then closed, since the stream can no longer be trusted.
    pub mismatched: u64,
    /// Well-formed responses reporting a failure (an HTTP status outside
    /// `--expect-status`, 2xx by default; an app error reply); the connection goes on.
    pub status: u64,
}

impl ErrorCounts {
    fn merge(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.tls += other.tls;
        self.reset += other.reset;
        self.closed += other.closed;
        self.timeout += other.timeout;
        self.mismatched += other.mismatched;
        self.status += other.status;
        self.total = self.connect
            + self.tls
            + self.reset
            + self.closed
            + self.timeout
            + self.mismatched
            + self.status;
    }
}

/// HTTP status codes are three digits.
const STATUS_CODES: usize = 1000;

/// Everything one loop counted during the measured window; merged across loops.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Connections established.
    pub connected: u64,
    /// Established connections later closed by an error.
    pub lost: u64,
    /// Requests issued in the measured window.
    pub sent: u64,
    /// Of those, answered (including answers with a failure status).
    pub completed: u64,
    /// Issued but lost with their connection (reset, timeout, mismatch).
    pub failed: u64,
    /// Issued and still unanswered when the run ended.
    pub in_flight: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub errors: ErrorCounts,
    /// From each request's intended send time (the schedule, with `--rate`) to its answer.
    pub latency: Histogram<u64>,
    /// From each request's actual send to its answer (differs only with `--rate`).
    pub uncorrected: Histogram<u64>,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Answers by HTTP status code (index: the code; empty for other protocols).
    pub statuses: Vec<u64>,
    /// Connections re-established after one ended.
    pub reconnects: u64,
    /// From starting a connect to its completion, every connection of the run.
    pub connect_time: Histogram<u64>,
    /// From the connect's completion to the TLS handshake's.
    pub tls_handshake: Histogram<u64>,
    /// Of those handshakes, how many resumed an earlier session.
    pub tls_resumed: u64,
    /// `--udp`: echoes that came after their datagram's timeout (it stays lost).
    pub datagrams_late: u64,
    /// `--udp`: second echoes of a datagram already answered (ignored).
    pub datagrams_duplicate: u64,
    /// With `--rate`: intended, sent and late requests of the seconds this loop has not
    /// handed over yet (each goes into the series with its second).
    pub pace: PaceSeries,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            connected: 0,
            lost: 0,
            sent: 0,
            completed: 0,
            failed: 0,
            in_flight: 0,
            bytes_out: 0,
            bytes_in: 0,
            errors: ErrorCounts::default(),
            latency: new_histogram(),
            uncorrected: new_histogram(),
            first_error: None,
            statuses: vec![0; STATUS_CODES],
            reconnects: 0,
            connect_time: new_histogram(),
            tls_handshake: new_histogram(),
            tls_resumed: 0,
            datagrams_late: 0,
            datagrams_duplicate: 0,
            pace: PaceSeries::default(),
        }
    }
}

impl Tally {
    pub fn merge(&mut self, other: &Tally) {
        self.connected += other.connected;
        self.lost += other.lost;
        self.sent += other.sent;
        self.completed += other.completed;
        self.failed += other.failed;
        self.in_flight += other.in_flight;
        self.bytes_out += other.bytes_out;
        self.bytes_in += other.bytes_in;
        self.errors.merge(&other.errors);
        // Same bounds everywhere (new_histogram), so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.uncorrected.add(&other.uncorrected);
        let _ = self.connect_time.add(&other.connect_time);
        let _ = self.tls_handshake.add(&other.tls_handshake);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        for (mine, theirs) in self.statuses.iter_mut().zip(&other.statuses) {
            *mine += theirs;
        }
        self.reconnects += other.reconnects;
        self.tls_resumed += other.tls_resumed;
        self.datagrams_late += other.datagrams_late;
        self.datagrams_duplicate += other.datagrams_duplicate;
    }

    /// Counts an answer's HTTP status (0: a protocol without statuses, not counted).
    #[inline]
    pub fn count_status(&mut self, code: u16) {
        if code != 0 {
            if let Some(n) = self.statuses.get_mut(usize::from(code)) {
                *n += 1;
            }
        }
    }

    /// Records one answered request's latencies.
    pub fn record(&mut self, corrected: Duration, uncorrected: Duration) {
        self.latency.saturating_record(micros(corrected));
        self.uncorrected.saturating_record(micros(uncorrected));
    }

    /// Counts one error of a kind; keeps the first message.
    pub fn error(
        &mut self,
        kind: fn(&mut ErrorCounts) -> &mut u64,
        message: impl FnOnce() -> String,
    ) {
        *kind(&mut self.errors) += 1;
        self.errors.total += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }
}

/// Whole microseconds, at least 1 (the histogram's lowest value): a sub-microsecond
/// round trip is reported as 1 µs rather than dropped.
pub(crate) fn micros(d: Duration) -> u64 {
    (d.as_micros().min(u128::from(MAX_LATENCY_US)) as u64).max(1)
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let q = |quantile: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(quantile)
            }
        };
        LatencySummary {
            count: h.len(),
            min: if h.is_empty() { 0 } else { h.min() },
            mean: round2(h.mean()),
            stdev: round2(h.stdev()),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The options of the run, echoed in the JSON report so a result carries its settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportOptions {
    pub address: String,
    pub protocol: &'static str,
    /// HTTP: `METHOD path`.
    pub request: Option<String>,
    pub tls: bool,
    pub reconnect: bool,
    pub keep_alive: bool,
    /// Connections opened per second at most, if paced.
    pub connect_rate: Option<f64>,
    pub connections: usize,
    pub threads: usize,
    /// Measured duration asked for (`--duration`), if any.
    pub duration_s: Option<f64>,
    /// Requests asked for (`--requests`), if any.
    pub requests: Option<u64>,
    pub warmup_s: f64,
    /// Message size (echo).
    pub size: usize,
    pub pipeline: usize,
    /// Open-loop rate, requests per second in total, if any (a ramp's or steps' first).
    pub rate: Option<f64>,
    /// The open loop's plan in words: `1000 req/s`, `1000..20000 req/s over 30.00s`.
    pub rate_plan: Option<String>,
    pub connect_timeout_s: f64,
    pub timeout_s: f64,
    /// `--udp`: the fraction of datagrams that may be lost.
    pub max_loss: Option<f64>,
}

/// `--udp`: what became of the datagrams sent in the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DatagramCounts {
    pub sent: u64,
    /// Echoed within their timeout (each matched once).
    pub received: u64,
    /// Sent, not received, and not still in flight: `sent - received - in_flight`.
    pub lost: u64,
    /// `lost` as a percentage of `sent`.
    pub loss_percent: f64,
    /// Echoes after their datagram's timeout (the datagram stays lost).
    pub late: u64,
    /// Second echoes of one datagram (ignored).
    pub duplicates: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConnectionCounts {
    pub requested: usize,
    /// Established at the start.
    pub connected: u64,
    /// Established, then closed by an error during the run.
    pub lost: u64,
    /// Re-established after the server closed one (or after an error), or after each
    /// request with `--disable-keepalive`: not errors.
    pub reconnects: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RequestCounts {
    /// Issued during the measured window.
    pub sent: u64,
    /// Answered (including HTTP failure statuses, counted in `errors.status`).
    pub completed: u64,
    /// Lost with a connection that failed.
    pub failed: u64,
    /// Still unanswered when the run ended: neither done nor failed.
    pub in_flight: u64,
    /// Completed per second of measured time.
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ByteCounts {
    pub out: u64,
    #[serde(rename = "in")]
    pub in_: u64,
    pub out_per_second: f64,
    pub in_per_second: f64,
}

/// CPU time the generator itself used (all its threads), from `getrusage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuTime {
    pub user_s: f64,
    pub system_s: f64,
}

/// The result of a load run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    /// True when the run was interrupted (Ctrl-C): the figures cover the time measured.
    pub partial: bool,
    pub options: ReportOptions,
    /// Measured time in seconds (after warm-up; up to the last answer with `--requests`).
    pub elapsed_s: f64,
    pub connections: ConnectionCounts,
    pub requests: RequestCounts,
    pub bytes: ByteCounts,
    /// From each request's intended send time: with `--rate`, the schedule, so a stalled
    /// server shows in the percentiles (no coordinated omission); otherwise the actual send.
    pub latency_us: LatencySummary,
    /// With `--rate` only: from each request's actual send, for comparison.
    pub latency_uncorrected_us: Option<LatencySummary>,
    pub errors: ErrorCounts,
    /// HTTP: answers by status code, `{"200": n, ...}`.
    pub status: Option<BTreeMap<String, u64>>,
    /// From starting each connect to its completion (every connection of the run).
    pub connect_us: LatencySummary,
    /// TLS only: from each connect's completion to its handshake's.
    pub tls_handshake_us: Option<LatencySummary>,
    /// TLS only: handshakes that resumed an earlier session (reconnects do).
    pub tls_resumed: Option<u64>,
    /// The first error's message, if any.
    pub first_error: Option<String>,
    /// `--udp` only: datagrams sent, received, lost.
    pub datagrams: Option<DatagramCounts>,
    pub client_cpu: CpuTime,
    /// With `--rate`: how well the plan was kept (intended, sent, late sends).
    pub pace: Option<PaceSummary>,
    /// Second by second of the measured time, in the JSON as `intervals`: requests,
    /// errors and latency from [`LoadReport::intervals`], and with a rate the pace.
    #[serde(rename = "intervals")]
    pub per_second: Vec<IntervalReport>,
    /// The latency distribution as (percentile, milliseconds) points for the HTML page's
    /// curve: ten a decade of 1/(1−p), and the summary's percentiles.
    #[serde(skip)]
    pub percentile_curve: Vec<(f64, f64)>,
    /// When the measured window began, seconds since the Unix epoch (the base time of
    /// the per-second series and of `--hdr-log`).
    pub started_unix_s: f64,
    /// The path of the interval log the run wrote (`--hdr-log`), for `merge` to follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hdr_log: Option<String>,
    /// For a merged report (`merge`): the files it added up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    /// The run's latency histogram (µs), from which `latency_us` is computed.
    #[serde(skip)]
    pub latency_histogram: Histogram<u64>,
    /// The measured window second by second, every loop added up; their histograms sum
    /// to the run's latency histogram (same answers, same corrected latencies).
    #[serde(skip)]
    pub intervals: IntervalSeries,
}

/// The percentile curve goes as far as 99.9999% (1/(1−p) = 10⁶), and no further than the
/// answers can say: with n of them, to 1/(1−p) = n.
const CURVE_MAX_NINES: f64 = 6.0;
/// Points per decade of 1/(1−p).
const CURVE_STEPS_PER_DECADE: u32 = 10;

/// (percentile, ms) points of `h`, by increasing percentile; none for an empty histogram.
fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let decades = (h.len() as f64).log10().clamp(1.0, CURVE_MAX_NINES);
    let steps = (decades * f64::from(CURVE_STEPS_PER_DECADE)).floor() as u32;
    // The summary's quantiles first: where a step of the grid rounds to the same
    // percentile (1 - 10^-1 and 0.9), the point is read at exactly the summary's quantile.
    let summary = [0.5, 0.9, 0.99, 0.999, 0.9999]
        .into_iter()
        .filter(|q| 1.0 / (1.0 - q) <= 10f64.powf(decades) * 1.000_001);
    let grid =
        (0..=steps).map(|k| 1.0 - 10f64.powf(-f64::from(k) / f64::from(CURVE_STEPS_PER_DECADE)));
    let mut points: Vec<(f64, f64)> = summary
        .chain(grid)
        .map(|q| ((q * 100.0 * 1e6).round() / 1e6, q))
        .collect();
    // Stable: of equal percentiles, the summary's stays first and is kept.
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points.dedup_by(|later, kept| later.0 == kept.0);
    points
        .into_iter()
        .map(|(p, q)| (p, h.value_at_quantile(q) as f64 / 1000.0))
        .collect()
}

/// One second of the measured time, `[t, t + 1)` seconds after measuring started (the
/// last one may be cut short by the run's end).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalReport {
    pub t: u64,
    /// Answers counted in the second.
    pub requests: u64,
    pub errors: u64,
    /// The second's latency (from intended send times), milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// With `--rate`: slots the plan put in this second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intended: Option<u64>,
    /// With `--rate`: requests sent in this second (the achieved rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    /// With `--rate`: of those, sent more than `pace.late_after_ms` behind their slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late: Option<u64>,
}

/// The per-second entries: the series' seconds, with each second's pace beside them
/// when `open_loop` (a second the series lacks counts as zeros). One pass over the series.
pub fn per_second(series: &IntervalSeries, open_loop: bool) -> Vec<IntervalReport> {
    let ms = |us: u64| us as f64 / 1000.0;
    let entry = |second: usize| IntervalReport {
        t: second as u64,
        requests: 0,
        errors: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        intended: open_loop.then_some(0),
        sent: open_loop.then_some(0),
        late: open_loop.then_some(0),
    };
    let mut entries: Vec<IntervalReport> = Vec::with_capacity(series.len());
    let mut filled = Vec::with_capacity(series.len());
    for record in series.iter() {
        let second = record.start.as_secs() as usize;
        while entries.len() <= second {
            entries.push(entry(entries.len()));
            filled.push(false);
        }
        // The first record of a second counts, as a lookup by second would find it.
        if !std::mem::replace(&mut filled[second], true) {
            let e = &mut entries[second];
            e.requests = record.requests;
            e.errors = record.errors;
            e.p50_ms = ms(record.latency.p50);
            e.p99_ms = ms(record.latency.p99);
            e.max_ms = ms(record.latency.max);
            if open_loop {
                let pace = record.pace;
                (e.intended, e.sent, e.late) =
                    (Some(pace.intended), Some(pace.sent), Some(pace.late));
            }
        }
    }
    entries
}

/// [`LATE_AFTER`] as the report states it.
pub const LATE_AFTER_MS: f64 = LATE_AFTER.as_micros() as f64 / 1e3;

impl LoadReport {
    /// Builds the report from the merged tally of all loops.
    pub fn new(
        options: ReportOptions,
        tally: &Tally,
        elapsed: Duration,
        partial: bool,
        cpu: CpuTime,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let per_second = |n: u64| {
            if secs > 0.0 {
                round2(n as f64 / secs)
            } else {
                0.0
            }
        };
        let open_loop = options.rate.is_some();
        let status = (options.protocol == "http").then(|| {
            tally
                .statuses
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(code, n)| (code.to_string(), *n))
                .collect()
        });
        LoadReport {
            partial,
            elapsed_s: (secs * 1e6).round() / 1e6,
            connections: ConnectionCounts {
                requested: options.connections,
                connected: tally.connected,
                lost: tally.lost,
                reconnects: tally.reconnects,
            },
            requests: RequestCounts {
                sent: tally.sent,
                completed: tally.completed,
                failed: tally.failed,
                in_flight: tally.in_flight,
                per_second: per_second(tally.completed),
            },
            bytes: ByteCounts {
                out: tally.bytes_out,
                in_: tally.bytes_in,
                out_per_second: per_second(tally.bytes_out),
                in_per_second: per_second(tally.bytes_in),
            },
            latency_us: LatencySummary::of(&tally.latency),
            latency_uncorrected_us: open_loop.then(|| LatencySummary::of(&tally.uncorrected)),
            errors: tally.errors,
            status,
            connect_us: LatencySummary::of(&tally.connect_time),
            tls_handshake_us: options
                .tls
                .then(|| LatencySummary::of(&tally.tls_handshake)),
            tls_resumed: options.tls.then_some(tally.tls_resumed),
            first_error: tally.first_error.clone(),
            datagrams: (options.protocol == "udp").then(|| {
                let lost = tally
                    .sent
                    .saturating_sub(tally.completed)
                    .saturating_sub(tally.in_flight);
                DatagramCounts {
                    sent: tally.sent,
                    received: tally.completed,
                    lost,
                    loss_percent: if tally.sent > 0 {
                        round2(100.0 * lost as f64 / tally.sent as f64)
                    } else {
                        0.0
                    },
                    late: tally.datagrams_late,
                    duplicates: tally.datagrams_duplicate,
                }
            }),
            client_cpu: cpu,
            // Filled in from the per-second series once it is complete (`load::run`).
            pace: open_loop.then(|| PaceSummary::of(std::iter::empty(), LATE_AFTER_MS)),
            percentile_curve: percentile_curve(&tally.latency),
            per_second: Vec::new(),
            started_unix_s: 0.0,
            hdr_log: None,
            merged_from: Vec::new(),
            latency_histogram: tally.latency.clone(),
            intervals: IntervalSeries::default(),
            options,
        }
    }

    /// Whether anything failed: an error of any kind or a request lost with its connection.
    pub fn has_failures(&self) -> bool {
        self.errors.total > 0 || self.requests.failed > 0
    }

    /// `--udp`: why the loss is more than `--max-loss` allows, if it is.
    pub fn loss_exceeded(&self) -> Option<String> {
        let (d, max) = (self.datagrams.as_ref()?, self.options.max_loss?);
        let fraction = if d.sent > 0 {
            d.lost as f64 / d.sent as f64
        } else {
            0.0
        };
        (fraction > max).then(|| {
            format!(
                "lost {} of {} datagrams ({:.2}%), more than --max-loss {}%",
                thousands(d.lost),
                thousands(d.sent),
                d.loss_percent,
                round2(max * 100.0)
            )
        })
    }
}

/// `1824012` → `1,824,012`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in decimal units, as network figures are given: `116.7 MB`.
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub(crate) fn us(value: u64) -> String {
    format_duration(Duration::from_micros(value))
}

pub(crate) fn latency_line(s: &LatencySummary) -> String {
    if s.count == 0 {
        return "no answers measured".to_string();
    }
    format!(
        "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        us(s.min),
        us(s.p50),
        us(s.p90),
        us(s.p99),
        us(s.p99_9),
        us(s.max)
    )
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        if self.partial {
            writeln!(f, "INTERRUPTED: partial report for the time measured")?;
        }
        if !self.merged_from.is_empty() {
            writeln!(
                f,
                "merged     {} runs: {}",
                self.merged_from.len(),
                self.merged_from.join(", ")
            )?;
        }
        let what = match (o.protocol, &o.request) {
            ("echo", _) => format!("{}-byte messages", o.size),
            ("udp", _) => format!("{}-byte UDP datagrams", o.size),
            ("http", Some(request)) => format!("HTTP {request}"),
            (other, _) => other.to_string(),
        };
        let sockets = if o.protocol == "udp" {
            "sockets"
        } else {
            "connections"
        };
        // A merge of bare interval logs knows no connections.
        let mut header = if o.connections > 0 {
            format!("{} {sockets}, {what}", o.connections)
        } else {
            what
        };
        if o.tls {
            header += " over TLS";
        }
        if !o.keep_alive {
            header += ", a connection per request";
        }
        if o.threads > 1 {
            header += &format!(", {} threads", o.threads);
        }
        if o.pipeline > 1 {
            header += &format!(", pipeline {}", o.pipeline);
        }
        match (&o.rate_plan, o.rate) {
            (Some(plan), _) => header += &format!(", open loop at {plan}"),
            (None, Some(rate)) => {
                header += &format!(", open loop at {} req/s", thousands(rate.round() as u64))
            }
            (None, None) => {}
        }
        let elapsed = format_duration(Duration::from_secs_f64(self.elapsed_s));
        match o.requests {
            Some(n) => header += &format!(", {} requests in {elapsed}", thousands(n)),
            None => header += &format!(", {elapsed}"),
        }
        if o.warmup_s > 0.0 {
            header += &format!(
                " (after {} warm-up)",
                format_duration(Duration::from_secs_f64(o.warmup_s))
            );
        }
        writeln!(f, "{header}")?;
        if self.connections.connected < self.connections.requested as u64 {
            writeln!(
                f,
                "connected  {} of {} (the others failed: see errors)",
                self.connections.connected, self.connections.requested
            )?;
        }
        let b = &self.bytes;
        writeln!(
            f,
            "requests   {}   {}/s      bytes out {}  in {} ({}/s out, {}/s in)",
            thousands(self.requests.completed),
            thousands(self.requests.per_second.round() as u64),
            human_bytes(b.out as f64),
            human_bytes(b.in_ as f64),
            human_bytes(b.out_per_second),
            human_bytes(b.in_per_second),
        )?;
        if let Some(d) = &self.datagrams {
            writeln!(
                f,
                "datagrams  sent {}  received {}  lost {} ({:.2}%)  late {}  duplicates {}",
                thousands(d.sent),
                thousands(d.received),
                thousands(d.lost),
                d.loss_percent,
                thousands(d.late),
                thousands(d.duplicates)
            )?;
        }
        if self.requests.in_flight > 0 {
            writeln!(
                f,
                "in flight  {} sent but unanswered when the run ended (not counted as done)",
                thousands(self.requests.in_flight)
            )?;
        }
        match &self.latency_uncorrected_us {
            Some(uncorrected) => {
                writeln!(
                    f,
                    "latency    {}   (from intended send time)",
                    latency_line(&self.latency_us)
                )?;
                writeln!(
                    f,
                    "uncorrected {}  (from actual send)",
                    latency_line(uncorrected)
                )?;
            }
            None => writeln!(f, "latency    {}", latency_line(&self.latency_us))?,
        }
        let e = &self.errors;
        if o.protocol == "udp" {
            // Loss is not an error (the datagrams line counts it); a wrong echo is.
            let sockets = if e.connect > 0 {
                format!("sockets {}, ", e.connect)
            } else {
                String::new()
            };
            writeln!(
                f,
                "errors     {} ({sockets}mismatched {})",
                thousands(e.total),
                e.mismatched
            )?;
            if let Some(first) = &self.first_error {
                writeln!(f, "first error: {first}")?;
            }
            let cpu = &self.client_cpu;
            return write!(
                f,
                "client cpu {:.2}s user + {:.2}s system",
                cpu.user_s, cpu.system_s
            );
        }
        let mut errors = format!("errors     {} (connect {}", thousands(e.total), e.connect);
        if o.tls || e.tls > 0 {
            errors += &format!(", tls {}", e.tls);
        }
        errors += &format!(", reset {}", e.reset);
        if e.closed > 0 {
            errors += &format!(", closed mid-response {}", e.closed);
        }
        errors += &format!(", timeout {}, mismatched {}", e.timeout, e.mismatched);
        if o.protocol == "http" || e.status > 0 {
            errors += &format!(", status {}", e.status);
        }
        errors.push(')');
        if self.requests.failed > 0 {
            errors += &format!(
                "; {} requests lost with their connections",
                thousands(self.requests.failed)
            );
        }
        writeln!(f, "{errors}")?;
        if let Some(first) = &self.first_error {
            writeln!(f, "first error: {first}")?;
        }
        if let Some(status) = self.status.as_ref().filter(|s| !s.is_empty()) {
            let counts: Vec<String> = status
                .iter()
                .map(|(code, n)| format!("{code} {}", thousands(*n)))
                .collect();
            writeln!(f, "status     {}", counts.join("  "))?;
        }
        let c = &self.connect_us;
        if self.connections.reconnects > 0 || o.tls || o.connect_rate.is_some() {
            let mut line = format!(
                "connects   {} at the start, {} reconnects",
                thousands(self.connections.connected),
                thousands(self.connections.reconnects)
            );
            if c.count > 0 {
                line += &format!("; connect p50 {}  p99 {}", us(c.p50), us(c.p99));
            }
            writeln!(f, "{line}")?;
        }
        if let Some(tls) = &self.tls_handshake_us {
            let resumed = self.tls_resumed.unwrap_or(0);
            let mut line = format!(
                "tls        {} handshakes ({} resumed)",
                thousands(tls.count),
                thousands(resumed)
            );
            if tls.count > 0 {
                line += &format!("; handshake p50 {}  p99 {}", us(tls.p50), us(tls.p99));
            }
            writeln!(f, "{line}")?;
        }
        if let Some(pace) = &self.pace {
            let mut line = format!(
                "open loop  intended {}, sent {}, late {} (sent > {}ms after their slot)",
                thousands(pace.intended),
                thousands(pace.sent),
                thousands(pace.late),
                pace.late_after_ms
            );
            if pace.seconds_behind > 0 && !self.partial {
                let s = if pace.seconds_behind == 1 { "" } else { "s" };
                line += &format!(
                    "; behind in {} second{s} (latency counts from the schedule)",
                    pace.seconds_behind
                );
            }
            writeln!(f, "{line}")?;
        }
        let cpu = &self.client_cpu;
        write!(
            f,
            "client cpu {:.2}s user + {:.2}s system",
            cpu.user_s, cpu.system_s
        )?;
        for (i, row) in text_histogram(&self.latency_histogram).iter().enumerate() {
            let label = if i == 0 { "histogram" } else { "" };
            write!(f, "\n{label:<10} {row}")?;
        }
        Ok(())
    }
}

/// One second of the measured run as one loop counted it; the loops hand these over as
/// each second passes and [`SeriesCollector`](super::series::SeriesCollector) adds them up.
#[derive(Debug, Clone)]
pub struct SecondTally {
    /// Seconds since the start of the measured window: this covers `[index, index + 1)`.
    pub index: u64,
    /// Answers counted in the second (as in [`Tally::completed`]).
    pub requests: u64,
    /// Errors counted in the second (as in [`ErrorCounts::total`]).
    pub errors: u64,
    pub latency: Histogram<u64>,
    /// With `--rate`: the plan's counts for the second (see [`PaceSeries::take`]).
    pub pace: PaceCounts,
}

impl SecondTally {
    pub fn new(index: u64) -> Self {
        SecondTally {
            index,
            requests: 0,
            errors: 0,
            latency: new_histogram(),
            pace: PaceCounts::default(),
        }
    }

    /// A placeholder that records nothing more (a finished loop's), without the memory
    /// of a histogram.
    pub fn new_empty(index: u64) -> Self {
        SecondTally {
            index,
            requests: 0,
            errors: 0,
            latency: Histogram::new_with_bounds(1, 2, 1)
                .expect("constant bounds are valid: low >= 1, high >= 2 * low"),
            pace: PaceCounts::default(),
        }
    }

    /// Empties it for second `index`, keeping its histogram's memory.
    pub fn reset(&mut self, index: u64) {
        self.index = index;
        self.requests = 0;
        self.errors = 0;
        self.latency.reset();
        self.pace = PaceCounts::default();
    }

    /// Records one counted answer's latency (the corrected one, as the run's histogram).
    #[inline]
    pub fn record(&mut self, corrected: Duration) {
        self.requests += 1;
        self.latency.saturating_record(micros(corrected));
    }
}

/// What one second of a run did, for the progress line.
#[derive(Debug, Clone)]
pub struct Interval {
    pub completed: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
    /// With `--rate`: slots due, requests sent, and sends late (`None`: closed loop).
    pub pace: Option<(u64, u64, u64)>,
}

impl Default for Interval {
    fn default() -> Self {
        Interval {
            completed: 0,
            errors: 0,
            latency: new_histogram(),
            pace: None,
        }
    }
}

impl Interval {
    pub fn merge_from(&mut self, other: &mut Interval) {
        self.completed += other.completed;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
        if let Some((intended, sent, late)) = other.pace.as_mut() {
            let mine = self.pace.get_or_insert((0, 0, 0));
            mine.0 += std::mem::take(intended);
            mine.1 += std::mem::take(sent);
            mine.2 += std::mem::take(late);
        }
        other.completed = 0;
        other.errors = 0;
        other.latency.reset();
    }

    /// `[  3s] 182,401 req/s  p50 240µs  p99 510µs  errors 0`, with `warm-up` during it,
    /// and with a rate `  intended 2,000 sent 1,998 late 3`.
    pub fn line(&self, second: u64, span: Duration, warmup: bool) -> String {
        let secs = span.as_secs_f64().max(1e-3);
        let rate = (self.completed as f64 / secs).round() as u64;
        let phase = if warmup { " warm-up" } else { "" };
        let mut line = if self.latency.is_empty() {
            format!(
                "[{second:>3}s]{phase} {} req/s  errors {}",
                thousands(rate),
                self.errors
            )
        } else {
            format!(
                "[{second:>3}s]{phase} {} req/s  p50 {}  p99 {}  errors {}",
                thousands(rate),
                us(self.latency.value_at_quantile(0.5)),
                us(self.latency.value_at_quantile(0.99)),
                self.errors
            )
        };
        if let Some((intended, sent, late)) = self.pace {
            line += &format!(
                "  intended {} sent {} late {}",
                thousands(intended),
                thousands(sent),
                thousands(late)
            );
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::series::IntervalRecord;

    fn options() -> ReportOptions {
        ReportOptions {
            address: "127.0.0.1:54321".into(),
            protocol: "echo",
            request: None,
            tls: false,
            reconnect: true,
            keep_alive: true,
            connect_rate: None,
            connections: 50,
            threads: 1,
            duration_s: Some(10.0),
            requests: None,
            warmup_s: 1.0,
            size: 64,
            pipeline: 1,
            rate: None,
            rate_plan: None,
            connect_timeout_s: 3.0,
            timeout_s: 10.0,
            max_loss: None,
        }
    }

    /// Large counts get thousands separators.
    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_824_012), "1,824,012");
    }

    /// Byte counts use decimal units with one decimal.
    #[test]
    fn bytes_in_decimal_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(116_736_768.0), "116.7 MB");
        assert_eq!(human_bytes(11_700_000.0), "11.7 MB");
    }

    /// Merging tallies adds counters and histograms and keeps the first error.
    #[test]
    fn tallies_merge() {
        let mut a = Tally {
            sent: 3,
            completed: 2,
            ..Tally::default()
        };
        a.record(Duration::from_micros(100), Duration::from_micros(100));
        a.record(Duration::from_micros(300), Duration::from_micros(200));
        let mut b = Tally {
            completed: 1,
            ..Tally::default()
        };
        b.record(Duration::from_millis(2), Duration::from_millis(2));
        b.error(|e| &mut e.mismatched, || "bad byte".into());
        a.merge(&b);
        assert_eq!((a.sent, a.completed, a.latency.len()), (3, 3, 3));
        assert_eq!(a.errors.mismatched, 1);
        assert_eq!(a.errors.total, 1);
        assert_eq!(a.first_error.as_deref(), Some("bad byte"));
        assert!(a.latency.equivalent(a.latency.max(), 2_000));
    }

    /// The human report has the four lines and the JSON one has every documented
    /// field; the uncorrected latency appears only for open-loop runs.
    #[test]
    fn report_renders_both_ways() {
        let mut tally = Tally {
            connected: 50,
            sent: 1_824_012,
            completed: 1_824_012,
            bytes_out: 116_736_768,
            bytes_in: 116_736_768,
            ..Tally::default()
        };
        tally.record(Duration::from_micros(41), Duration::from_micros(41));
        tally.record(Duration::from_micros(243), Duration::from_micros(243));
        let report = LoadReport::new(
            options(),
            &tally,
            Duration::from_secs(10),
            false,
            CpuTime::default(),
        );
        let text = report.to_string();
        assert!(
            text.starts_with("50 connections, 64-byte messages, 10.00s (after 1.00s warm-up)\n"),
            "{text}"
        );
        assert!(
            text.contains("requests   1,824,012   182,401/s      bytes out 116.7 MB  in 116.7 MB"),
            "{text}"
        );
        assert!(text.contains("latency    min 41µs  p50 41µs"), "{text}");
        assert!(
            text.contains("errors     0 (connect 0, reset 0, timeout 0, mismatched 0)"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        for field in [
            "partial",
            "options",
            "elapsed_s",
            "connections",
            "requests",
            "bytes",
            "latency_us",
            "errors",
            "client_cpu",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["latency_uncorrected_us"], serde_json::Value::Null);
        assert_eq!(json["bytes"]["in"], 116_736_768);

        let mut open = options();
        open.rate = Some(1000.0);
        open.rate_plan = Some("1000 req/s".into());
        let report = LoadReport::new(
            open,
            &tally,
            Duration::from_secs(10),
            true,
            CpuTime::default(),
        );
        let text = report.to_string();
        assert!(text.starts_with("INTERRUPTED"), "{text}");
        assert!(
            text.contains("(from intended send time)") && text.contains("uncorrected min"),
            "{text}"
        );
        assert!(text.contains(", open loop at 1000 req/s, "), "{text}");
        assert!(
            text.contains("open loop  intended 0, sent 0, late 0 (sent > 1ms after their slot)"),
            "{text}"
        );
        assert!(serde_json::to_value(&report).unwrap()["latency_uncorrected_us"]["p99"].is_u64());
    }

    /// A UDP report counts the datagrams (lost: neither received nor in flight) and
    /// judges the loss against --max-loss.
    #[test]
    fn udp_report_counts_loss() {
        let mut tally = Tally {
            connected: 2,
            sent: 200,
            completed: 180,
            in_flight: 4,
            datagrams_late: 3,
            datagrams_duplicate: 1,
            ..Tally::default()
        };
        tally.record(Duration::from_micros(40), Duration::from_micros(40));
        let mut udp = options();
        udp.protocol = "udp";
        udp.connections = 2;
        udp.max_loss = Some(0.1);
        let report = LoadReport::new(
            udp.clone(),
            &tally,
            Duration::from_secs(10),
            false,
            CpuTime::default(),
        );
        let d = report.datagrams.expect("datagram counts");
        assert_eq!((d.sent, d.received, d.lost), (200, 180, 16));
        assert_eq!(d.loss_percent, 8.0);
        assert_eq!(report.loss_exceeded(), None, "8% is within 10%");
        let text = report.to_string();
        assert!(
            text.starts_with("2 sockets, 64-byte UDP datagrams"),
            "{text}"
        );
        assert!(
            text.contains(
                "datagrams  sent 200  received 180  lost 16 (8.00%)  late 3  duplicates 1"
            ),
            "{text}"
        );
        assert!(text.contains("errors     0 (mismatched 0)"), "{text}");
        udp.max_loss = Some(0.05);
        let report = LoadReport::new(
            udp,
            &tally,
            Duration::from_secs(10),
            false,
            CpuTime::default(),
        );
        assert_eq!(
            report.loss_exceeded().as_deref(),
            Some("lost 16 of 200 datagrams (8.00%), more than --max-loss 5%")
        );
        let tcp = LoadReport::new(
            options(),
            &tally,
            Duration::from_secs(10),
            false,
            CpuTime::default(),
        );
        assert!(tcp.datagrams.is_none() && tcp.loss_exceeded().is_none());
    }

    /// The percentile curve of 1..=1000 µs climbs with the percentile, holds the
    /// summary's percentiles exactly (the same reading of the histogram), and stops at
    /// 99.9%: a thousand answers say no more.
    #[test]
    fn percentile_curve_points() {
        let mut h = new_histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let curve = percentile_curve(&h);
        assert_eq!(curve.first(), Some(&(0.0, 0.001)));
        assert_eq!(curve.last().map(|p| p.0), Some(99.9));
        assert_eq!(
            curve.len(),
            31 + 1,
            "ten a decade over three decades, and 50%"
        );
        let summary = LatencySummary::of(&h);
        for (p, us) in [
            (50.0, summary.p50),
            (90.0, summary.p90),
            (99.0, summary.p99),
            (99.9, summary.p99_9),
        ] {
            assert!(curve.contains(&(p, us as f64 / 1000.0)), "{p}: {curve:?}");
        }
        assert!(curve.contains(&(50.0, 0.5)) && curve.contains(&(99.0, 0.99)));
        assert!(curve
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(percentile_curve(&new_histogram()).is_empty());
    }

    /// The JSON's per-second entries put each record's counts and latency (in ms) beside
    /// the pace of the same second; a second with only the plan's counts (nothing
    /// answered in it) shows zeros there, and a closed loop has no pace fields at all.
    #[test]
    fn per_second_entries_join_records_and_pace() {
        let mut h = new_histogram();
        h.record(1500).unwrap();
        let mut answered = IntervalRecord::new(Duration::ZERO, Duration::from_secs(1), 1, 0, &h);
        answered.pace = PaceCounts {
            intended: 1,
            sent: 1,
            late: 1,
        };
        let mut unanswered = IntervalRecord::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            0,
            0,
            &new_histogram(),
        );
        unanswered.pace.intended = 2;
        let records: IntervalSeries = [answered, unanswered].into_iter().collect();
        let entries = per_second(&records, true);
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].requests, entries[0].p50_ms), (1, 1.5));
        assert_eq!(
            (entries[0].intended, entries[0].sent, entries[0].late),
            (Some(1), Some(1), Some(1))
        );
        assert_eq!(
            (entries[1].t, entries[1].requests, entries[1].max_ms),
            (1, 0, 0.0)
        );
        assert_eq!(entries[1].intended, Some(2));
        let closed = per_second(&records, false);
        let json = serde_json::to_value(&closed[0]).unwrap();
        assert!(
            json.get("intended").is_none() && json["p99_ms"] == 1.5,
            "{json}"
        );
    }

    /// The progress line shows the interval's rate and percentiles.
    #[test]
    fn progress_line() {
        let mut total = Interval::default();
        let mut part = Interval {
            completed: 1_000,
            ..Interval::default()
        };
        part.latency.record(240).unwrap();
        total.merge_from(&mut part);
        assert_eq!(part.completed, 0);
        assert_eq!(
            total.line(3, Duration::from_millis(500), false),
            "[  3s] 2,000 req/s  p50 240µs  p99 240µs  errors 0"
        );
        assert_eq!(
            Interval::default().line(1, Duration::from_secs(1), true),
            "[  1s] warm-up 0 req/s  errors 0"
        );
        let mut rated = Interval {
            pace: Some((0, 0, 0)),
            ..Interval::default()
        };
        let mut part = Interval {
            pace: Some((1_000, 998, 3)),
            ..Interval::default()
        };
        rated.merge_from(&mut part);
        assert_eq!(part.pace, Some((0, 0, 0)), "taken by the merge");
        assert_eq!(
            rated.line(2, Duration::from_secs(1), false),
            "[  2s] 0 req/s  errors 0  intended 1,000 sent 998 late 3"
        );
    }
}
