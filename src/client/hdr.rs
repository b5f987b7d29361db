//! HdrHistogram's formats for the load generator's latencies: the `.hgrm` percentile
//! distribution (`--histogram`, as Java's `outputPercentileDistribution` prints it), the
//! report's compact text histogram, and interval logs (`--hdr-log`), written with the
//! hdrhistogram crate's interval-log writer and V2-deflate serializer and read back by
//! [`read_interval_log`] for `merge`.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use super::duration::format_duration;
use super::report::{new_histogram, thousands};
use super::series::IntervalSeries;

/// Latencies are recorded in µs; HdrHistogram's tools show milliseconds.
const US_PER_MS: f64 = 1000.0;
/// Percentile ticks per half distance to 100%, as `outputPercentileDistribution`'s default.
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// The widest bar of the text histogram, in characters.
const BAR_WIDTH: u64 = 30;
/// The log's first comment, naming the writer.
const LOG_WRITER: &str = concat!(
    "[Logged with multiconn-client ",
    env!("CARGO_PKG_VERSION"),
    "]"
);
/// The interval log format version this writes (Java's `HistogramLogWriter` today).
const LOG_FORMAT: &str = "[Histogram log format version 1.3]";

/// Writes `h` (µs) as HdrHistogram's percentile distribution in milliseconds: the format
/// of Java's `outputPercentileDistribution(out, 5, 1000.0)`, which HdrHistogram's plotter
/// and wrk2 users' scripts read.
pub fn write_percentile_distribution(h: &Histogram<u64>, out: &mut dyn Write) -> io::Result<()> {
    let digits = usize::from(h.sigfig());
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !h.is_empty() {
        for step in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64 / US_PER_MS;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                writeln!(
                    out,
                    "{value:>12.digits$} {quantile:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - quantile)
                )?;
            } else {
                writeln!(out, "{value:>12.digits$} {quantile:>2.12} {total:>10}")?;
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / US_PER_MS,
            h.stdev() / US_PER_MS,
            h.max() as f64 / US_PER_MS,
        )
    };
    writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets(h)
    )
}

/// Sub-buckets per bucket: the power of two that resolves `2 × 10^sigfig` units, as
/// HdrHistogram sizes them (the crate keeps the figure private).
fn sub_buckets(h: &Histogram<u64>) -> u64 {
    (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
}

/// The report's text histogram of `h` (µs): log-spaced buckets (1-2-5 steps) from the
/// fastest answer to the slowest, each with its count, share and a bar. Empty if `h` is.
pub fn text_histogram(h: &Histogram<u64>) -> Vec<String> {
    if h.is_empty() {
        return Vec::new();
    }
    let (min, max) = (h.min(), h.max());
    // Upper bounds 1, 2, 5, 10, 20, 50... µs; the first at or above the fastest answer.
    let mut bounds = Vec::new();
    let mut bound = 1u64;
    let mut step = 0;
    while bound < max {
        if bound >= min {
            bounds.push(bound);
        }
        bound = next_125(bound, &mut step);
    }
    bounds.push(bound);
    // Too many rows for a glance: every other bound (1, 5, 20, 100...) is plenty.
    while bounds.len() > 10 {
        let last = *bounds.last().unwrap_or(&max);
        bounds = bounds.iter().copied().step_by(2).collect();
        if bounds.last() != Some(&last) {
            bounds.push(last);
        }
    }
    let mut counts = Vec::with_capacity(bounds.len());
    let mut below = 0u64;
    for &upper in &bounds {
        // Values are counted at the histogram's resolution; the bucket of `upper` holds
        // values up to its highest equivalent, so compare counts up to `upper`'s bucket.
        let upto = h.count_between(0, upper);
        counts.push(upto.saturating_sub(below));
        below = upto;
    }
    let widest = counts.iter().copied().max().unwrap_or(1).max(1);
    let total = h.len().max(1) as f64;
    bounds
        .iter()
        .zip(&counts)
        .map(|(&upper, &count)| {
            let bar = (count * BAR_WIDTH).div_ceil(widest) as usize;
            let mut line = format!(
                "<= {:>7} {:>12} {:>6.2}% ",
                format_duration(Duration::from_micros(upper)),
                thousands(count),
                count as f64 * 100.0 / total
            );
            let _ = write!(line, "{}", "█".repeat(bar));
            line.trim_end().to_string()
        })
        .collect()
}

/// The 1-2-5 series: 1, 2, 5, 10, 20, 50, ...
fn next_125(value: u64, step: &mut u8) -> u64 {
    *step = (*step + 1) % 3;
    match *step {
        1 => value * 2,
        2 => value / 2 * 5,
        _ => value * 2,
    }
}

/// Writes `intervals` as an HdrHistogram interval log: the writer's and format's
/// comments, StartTime and BaseTime (the measured window's start, `started_unix_s`), then
/// a line per second with its start (since BaseTime), length, max (ms) and V2-deflate
/// histogram. Each interval is decoded and written in turn: one live histogram at a time.
pub fn write_interval_log<W: Write>(
    out: &mut W,
    started_unix_s: f64,
    intervals: &IntervalSeries,
) -> io::Result<()> {
    let base = UNIX_EPOCH + Duration::from_secs_f64(started_unix_s.max(0.0));
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment(LOG_WRITER)
        .add_comment(LOG_FORMAT)
        .with_start_time(base)
        .with_base_time(base)
        .with_max_value_divisor(US_PER_MS)
        .begin_log_with(out, &mut serializer)?;
    for interval in intervals.iter() {
        log.write_histogram(&interval.histogram(), interval.start, interval.length, None)
            .map_err(|e| io::Error::other(format!("{e}")))?;
    }
    Ok(())
}

/// One interval read from a log, with its start as wall-clock time. Its histogram stays
/// encoded (as in the log) until asked for, so a long log costs little memory.
#[derive(Debug, Clone)]
pub struct LoggedInterval {
    /// When it began, seconds since the Unix epoch (BaseTime plus its timestamp).
    pub start_unix_s: f64,
    pub length: Duration,
    /// Values in its histogram.
    pub count: u64,
    /// The V2 (deflate) encoding, checked when read.
    encoded: Vec<u8>,
}

impl LoggedInterval {
    /// Its histogram, at the bounds of [`new_histogram`].
    pub fn histogram(&self) -> Result<Histogram<u64>, String> {
        decode(&self.encoded, &mut Deserializer::new())
    }
}

/// Decodes a V2 histogram into one at the run's bounds (values beyond are refused).
fn decode(encoded: &[u8], deserializer: &mut Deserializer) -> Result<Histogram<u64>, String> {
    let decoded: Histogram<u64> = deserializer
        .deserialize(&mut &encoded[..])
        .map_err(|e| format!("{e:?}"))?;
    let mut histogram = new_histogram();
    histogram.add(&decoded).map_err(|_| {
        format!(
            "values beyond {} (logs of microseconds expected)",
            format_duration(Duration::from_micros(histogram.high()))
        )
    })?;
    Ok(histogram)
}

/// Reads an interval log (`name` for messages): every interval's start, length and
/// histogram, at the bounds of [`new_histogram`] (a histogram with values beyond them,
/// such as a log of nanoseconds, is refused rather than clipped).
pub fn read_interval_log(bytes: &[u8], name: &str) -> Result<Vec<LoggedInterval>, String> {
    let mut base: Option<f64> = None;
    let mut start: Option<f64> = None;
    let mut intervals = Vec::new();
    let mut deserializer = Deserializer::new();
    for (number, entry) in IntervalLogIterator::new(bytes).enumerate() {
        let entry = entry.map_err(|e| match e {
            hdrhistogram::serialization::interval_log::LogIteratorError::ParseError { offset } => {
                format!("{name}: not an HdrHistogram interval log (at byte {offset})")
            }
        })?;
        match entry {
            LogEntry::BaseTime(t) => base = Some(t.as_secs_f64()),
            LogEntry::StartTime(t) => start = Some(t.as_secs_f64()),
            LogEntry::Interval(interval) => {
                let encoded = base64::engine::general_purpose::STANDARD
                    .decode(interval.encoded_histogram())
                    .map_err(|e| format!("{name}: interval {}: bad base64: {e}", number + 1))?;
                let count = decode(&encoded, &mut deserializer)
                    .map_err(|e| format!("{name}: interval {}: {e}", number + 1))?
                    .len();
                // As Java's reader: timestamps count from BaseTime; without it, from
                // StartTime when they are small (deltas), else they are Unix times.
                let timestamp = interval.start_timestamp().as_secs_f64();
                let offset = match (base, start) {
                    (Some(base), _) => base,
                    (None, Some(start)) if timestamp < start - 365.0 * 86_400.0 => start,
                    _ => 0.0,
                };
                intervals.push(LoggedInterval {
                    start_unix_s: offset + timestamp,
                    length: interval.duration(),
                    count,
                    encoded,
                });
            }
        }
    }
    if intervals.is_empty() {
        return Err(format!("{name}: no intervals in this HdrHistogram log"));
    }
    Ok(intervals)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::series::IntervalRecord;

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        h
    }

    /// The distribution has Java's header, lines and footer, values in ms.
    #[test]
    fn percentile_distribution_is_in_hgrm_format() {
        let mut out = Vec::new();
        write_percentile_distribution(&sample(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       0.010 0.000000000000          1           1.00"
        );
        assert!(
            lines.contains(&"      50.015 0.500000000000       5001           2.00"),
            "{text}"
        );
        let last = lines[lines.len() - 4];
        assert!(
            last.starts_with("     100.031 1.000000000000      10000"),
            "{text}"
        );
        assert_eq!(
            lines[lines.len() - 3],
            "#[Mean    =       50.006, StdDeviation   =       28.868]"
        );
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =      100.031, Total count    =        10000]"
        );
        assert_eq!(
            lines[lines.len() - 1],
            "#[Buckets =           20, SubBuckets     =         2048]"
        );
    }

    /// The text histogram's buckets cover every answer once, in 1-2-5 steps.
    #[test]
    fn text_histogram_buckets_add_up() {
        let lines = text_histogram(&sample());
        assert!(lines.len() <= 10 && lines.len() >= 3, "{lines:?}");
        assert!(lines[0].starts_with("<=    10µs"), "{lines:?}");
        let total: u64 = lines
            .iter()
            .map(|l| {
                l.split_whitespace()
                    .nth(2)
                    .unwrap()
                    .replace(',', "")
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(total, 10_000);
        assert!(text_histogram(&new_histogram()).is_empty());
    }

    /// An interval log written here reads back with the same histograms and times.
    #[test]
    fn interval_log_round_trips() {
        let h = sample();
        let intervals: IntervalSeries = [
            IntervalRecord::new(Duration::ZERO, Duration::from_secs(1), h.len(), 0, &h),
            IntervalRecord::new(
                Duration::from_secs(1),
                Duration::from_millis(500),
                0,
                0,
                &new_histogram(),
            ),
        ]
        .into_iter()
        .collect();
        let mut log = Vec::new();
        write_interval_log(&mut log, 1_700_000_000.5, &intervals).unwrap();
        let text = String::from_utf8(log.clone()).unwrap();
        assert!(text.starts_with("#[Logged with multiconn-client"), "{text}");
        assert!(
            text.contains("#[BaseTime: 1700000000.500 (seconds since epoch)]"),
            "{text}"
        );
        assert!(text.contains("\n0.000,1.000,100.031,HIST"), "{text}");
        let read = read_interval_log(&log, "t.hlog").unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].histogram().unwrap(), h);
        assert_eq!((read[0].count, read[1].count), (10_000, 0));
        assert!((read[1].start_unix_s - 1_700_000_001.5).abs() < 1e-6);
        assert_eq!(read[1].length, Duration::from_millis(500));
        assert!(read_interval_log(b"garbage\n", "g")
            .unwrap_err()
            .contains("not an HdrHistogram"));
    }
}
