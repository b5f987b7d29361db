//! The measured run second by second: each second's counts, latency summary and encoded
//! histogram ([`IntervalRecord`]), added up across loops ([`SeriesCollector`]) and kept
//! in an unlinked temporary file rather than in memory ([`IntervalSeries`]), so the
//! generator's memory stays flat however long it runs.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::pace::PaceCounts;
use super::report::{new_histogram, LatencySummary, SecondTally};

/// One second of the measured run, every loop added up: what `--hdr-log`, `merge` and the
/// per-second outputs read. The histogram is kept V2-deflate encoded, a few hundred bytes,
/// rather than live: a live one at the run's bounds and 3 significant figures is 172 kB
/// (21,504 counters), an hour of them 620 MB; encoded, an hour stays within a few MB and
/// keeps full precision (see `benches/compare/flat_memory.sh`).
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalRecord {
    /// From the start of the measured window.
    pub start: Duration,
    /// One second, except the last one of a run, which ends with the run.
    pub length: Duration,
    pub requests: u64,
    pub errors: u64,
    /// The second's latency percentiles (µs), computed before encoding.
    pub latency: LatencySummary,
    /// With `--rate`: the plan's counts for the second.
    pub pace: PaceCounts,
    /// The histogram, V2-deflate serialised (as HdrHistogram interval logs carry it).
    encoded: Vec<u8>,
}

impl IntervalRecord {
    /// Summarises and encodes `latency`.
    pub fn new(
        start: Duration,
        length: Duration,
        requests: u64,
        errors: u64,
        latency: &Histogram<u64>,
    ) -> Self {
        use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
        let mut encoded = Vec::new();
        // Serialising into memory fails only for histograms it cannot represent, which
        // ours (bounded, u64 counts) are not; an empty encoding then decodes as empty.
        if let Err(e) = V2DeflateSerializer::new().serialize(latency, &mut encoded) {
            log::error!("cannot encode an interval histogram: {e:?}");
            encoded.clear();
        }
        // The serializer grows the buffer by doubling: keep only what the encoding takes,
        // since an hour of these stays in memory.
        encoded.shrink_to_fit();
        IntervalRecord {
            start,
            length,
            requests,
            errors,
            latency: LatencySummary::of(latency),
            pace: PaceCounts::default(),
            encoded,
        }
    }

    /// The second's latency histogram, decoded (same bounds as [`new_histogram`]).
    pub fn histogram(&self) -> Histogram<u64> {
        use hdrhistogram::serialization::Deserializer;
        let mut histogram = new_histogram();
        if let Ok(decoded) = Deserializer::new().deserialize::<u64, _>(&mut &self.encoded[..]) {
            let _ = histogram.add(&decoded);
        }
        histogram
    }

    /// Nothing answered, failed or scheduled in it.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.errors == 0 && self.pace.is_zero()
    }

    /// Bytes the encoded histogram takes.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }
}

/// Adds up the loops' seconds into the run's series: second `k` is complete once every
/// loop has handed over its `k` (or finished), and is then encoded into an
/// [`IntervalRecord`]. Holds one live histogram whatever the run's length.
pub struct SeriesCollector {
    /// The next second to complete.
    next: u64,
    sum: SecondTally,
    records: IntervalSeries,
}

impl Default for SeriesCollector {
    fn default() -> Self {
        SeriesCollector {
            next: 0,
            sum: SecondTally::new(0),
            records: IntervalSeries::default(),
        }
    }
}

impl SeriesCollector {
    /// The second each loop would hand over next, `None` for a loop that finished and
    /// has nothing more: the seconds every loop is past can be completed.
    pub fn ready(&self, heads: impl Iterator<Item = Option<u64>>) -> bool {
        let mut any = false;
        for head in heads.flatten() {
            if head != self.next {
                return false;
            }
            any = true;
        }
        any
    }

    /// The second being completed.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Adds one loop's part of the second being completed.
    pub fn add(&mut self, part: &SecondTally) {
        debug_assert_eq!(part.index, self.next);
        self.sum.requests += part.requests;
        self.sum.errors += part.errors;
        // Same bounds everywhere (new_histogram), so adding cannot fail.
        let _ = self.sum.latency.add(&part.latency);
        self.sum.pace.add(&part.pace);
    }

    /// Every loop's part is in: the second is encoded into the series.
    pub fn complete(&mut self) {
        let start = Duration::from_secs(self.next);
        let mut record = IntervalRecord::new(
            start,
            Duration::from_secs(1),
            self.sum.requests,
            self.sum.errors,
            &self.sum.latency,
        );
        record.pace = self.sum.pace;
        self.records.push(record);
        self.next += 1;
        self.sum.reset(self.next);
    }

    /// The series, its last second cut at `elapsed` (the measured time) and any seconds
    /// past it (a loop's last turn) dropped if empty.
    pub fn finish(mut self, elapsed: Duration) -> IntervalSeries {
        self.records.finish(elapsed);
        self.records
    }
}

/// Seconds an [`IntervalSeries`] keeps in memory: the newest, which the run's end may cut
/// short or drop (a loop's last turn can only reach a second or two past the end).
const TAIL: usize = 8;

/// A run's seconds in order. All but the newest [`TAIL`] are written to an unlinked
/// temporary file as they arrive (a few hundred bytes and one `pwrite` a second) and read
/// back one at a time by [`IntervalSeries::iter`], so an hour or a day of them costs no
/// memory. Where no temporary file can be made or written (a full or read-only
/// `$TMPDIR`), it warns once and keeps the rest in memory, as before.
#[derive(Debug, Default)]
pub struct IntervalSeries {
    spill: Option<Spill>,
    /// The file could not be made or written: everything from then on stays in `tail`.
    in_memory: bool,
    /// Every second after the spilled ones.
    tail: VecDeque<IntervalRecord>,
}

#[derive(Debug)]
struct Spill {
    file: File,
    /// Records written in full, and where the next one starts: a write that failed part
    /// way is overwritten, never read.
    records: usize,
    end: u64,
}

/// A spilled record's fixed part: start and length (ns), requests, errors, the ten
/// fields of its latency summary, its pace (intended, sent, late), and the encoding's
/// length.
const WORDS: usize = 17;
const HEADER: usize = 8 * WORDS + 4;

impl IntervalSeries {
    /// Appends the next second.
    pub fn push(&mut self, record: IntervalRecord) {
        self.tail.push_back(record);
        while self.tail.len() > TAIL && !self.in_memory {
            let oldest = self.tail.pop_front().expect("longer than TAIL");
            if let Err(e) = self.spill(&oldest) {
                log::warn!(
                    "cannot keep the per-second series in a temporary file ({e}); \
                     keeping it in memory"
                );
                self.in_memory = true;
                self.tail.push_front(oldest);
            }
        }
    }

    fn spill(&mut self, record: &IntervalRecord) -> io::Result<()> {
        let spill = match &mut self.spill {
            Some(spill) => spill,
            None => self.spill.insert(Spill {
                file: tempfile::tempfile()?,
                records: 0,
                end: 0,
            }),
        };
        let bytes = encode(record);
        spill.file.write_all_at(&bytes, spill.end)?;
        spill.end += bytes.len() as u64;
        spill.records += 1;
        Ok(())
    }

    /// Seconds held.
    pub fn len(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.records) + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Seconds held in memory (the rest are in the file).
    pub fn in_memory_len(&self) -> usize {
        self.tail.len()
    }

    /// Every second, oldest first. A spilled second that cannot be read back (the
    /// temporary file's disk failing) is logged and the rest of the file skipped.
    pub fn iter(&self) -> impl Iterator<Item = IntervalRecord> + '_ {
        let spilled = self.spill.as_ref().map(|spill| SpillReader {
            spill,
            next: 0,
            offset: 0,
        });
        spilled
            .into_iter()
            .flatten()
            .chain(self.tail.iter().cloned())
    }

    /// Ends the series at `elapsed`: empty seconds at or past it (a loop's last turn) are
    /// dropped, keeping at least one, and the last is cut at it.
    pub fn finish(&mut self, elapsed: Duration) {
        while self.len() > 1
            && self
                .tail
                .back()
                .is_some_and(|r| r.start >= elapsed && r.is_empty())
        {
            self.tail.pop_back();
        }
        if let Some(last) = self.tail.back_mut() {
            if last.start + last.length > elapsed {
                last.length = elapsed.saturating_sub(last.start);
            }
        }
    }
}

impl FromIterator<IntervalRecord> for IntervalSeries {
    fn from_iter<I: IntoIterator<Item = IntervalRecord>>(records: I) -> Self {
        let mut series = IntervalSeries::default();
        for record in records {
            series.push(record);
        }
        series
    }
}

/// Two series are equal when their seconds are.
impl PartialEq for IntervalSeries {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

/// A copy holds every second in memory (reports are not copied in a run).
impl Clone for IntervalSeries {
    fn clone(&self) -> Self {
        IntervalSeries {
            spill: None,
            in_memory: true,
            tail: self.iter().collect(),
        }
    }
}

struct SpillReader<'a> {
    spill: &'a Spill,
    next: usize,
    offset: u64,
}

impl Iterator for SpillReader<'_> {
    type Item = IntervalRecord;

    fn next(&mut self) -> Option<IntervalRecord> {
        if self.next >= self.spill.records {
            return None;
        }
        match decode_at(&self.spill.file, self.offset) {
            Ok((record, len)) => {
                self.next += 1;
                self.offset += len;
                Some(record)
            }
            Err(e) => {
                log::error!(
                    "cannot read back second {} of the per-second series: {e}",
                    self.next
                );
                self.next = self.spill.records;
                None
            }
        }
    }
}

fn encode(record: &IntervalRecord) -> Vec<u8> {
    let l = &record.latency;
    let mut bytes = Vec::with_capacity(HEADER + record.encoded.len());
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    for word in [
        nanos(record.start),
        nanos(record.length),
        record.requests,
        record.errors,
        l.count,
        l.min,
        l.mean.to_bits(),
        l.stdev.to_bits(),
        l.p50,
        l.p90,
        l.p99,
        l.p99_9,
        l.p99_99,
        l.max,
        record.pace.intended,
        record.pace.sent,
        record.pace.late,
    ] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let len = u32::try_from(record.encoded.len()).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&record.encoded[..len as usize]);
    bytes
}

/// The record at `offset`, and the bytes it takes.
fn decode_at(file: &File, offset: u64) -> io::Result<(IntervalRecord, u64)> {
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, offset)?;
    let word = |k: usize| u64::from_le_bytes(header[8 * k..8 * k + 8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(header[8 * WORDS..].try_into().expect("4 bytes")) as usize;
    let mut encoded = vec![0; len];
    file.read_exact_at(&mut encoded, offset + HEADER as u64)?;
    let record = IntervalRecord {
        start: Duration::from_nanos(word(0)),
        length: Duration::from_nanos(word(1)),
        requests: word(2),
        errors: word(3),
        latency: LatencySummary {
            count: word(4),
            min: word(5),
            mean: f64::from_bits(word(6)),
            stdev: f64::from_bits(word(7)),
            p50: word(8),
            p90: word(9),
            p99: word(10),
            p99_9: word(11),
            p99_99: word(12),
            max: word(13),
        },
        pace: PaceCounts {
            intended: word(14),
            sent: word(15),
            late: word(16),
        },
        encoded,
    };
    Ok((record, (HEADER + len) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second's record keeps its histogram exactly (decoded equal to what was encoded)
    /// in a few kB even with a wide spread of latencies, where the live histogram is 172 kB.
    #[test]
    fn interval_record_round_trips_compactly() {
        let mut second = SecondTally::new(4);
        let mut x: u64 = 12345;
        for _ in 0..200_000 {
            // A spread from 20 µs to about 50 ms, log-uniform-ish.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let exp = (x >> 60) as u32 % 12;
            let value = 20u64 << exp;
            second.record(Duration::from_micros(value + (x >> 40) % value));
        }
        let record = IntervalRecord::new(
            Duration::from_secs(4),
            Duration::from_secs(1),
            second.requests,
            3,
            &second.latency,
        );
        assert_eq!(record.histogram(), second.latency);
        assert_eq!(record.latency, LatencySummary::of(&second.latency));
        assert!(
            record.encoded_len() < 8 * 1024,
            "{} bytes",
            record.encoded_len()
        );
    }

    /// The collector adds loops' parts of a second and cuts the last one at the run's end.
    #[test]
    fn collector_adds_parts_and_cuts_the_last_second() {
        let mut collector = SeriesCollector::default();
        for k in 0..2 {
            for value in [100, 300] {
                let mut part = SecondTally::new(k);
                part.record(Duration::from_micros(value));
                part.errors = 1;
                collector.add(&part);
            }
            collector.complete();
        }
        let series: Vec<IntervalRecord> = collector
            .finish(Duration::from_millis(1_250))
            .iter()
            .collect();
        assert_eq!(series.len(), 2);
        assert_eq!((series[1].requests, series[1].errors), (2, 2));
        assert_eq!(series[1].start, Duration::from_secs(1));
        assert_eq!(series[1].length, Duration::from_millis(250));
        assert_eq!(series[0].latency.max, series[0].histogram().max());
        assert!(series[0].histogram().equivalent(series[0].latency.max, 300));
    }

    fn record(second: u64, value: u64) -> IntervalRecord {
        let mut h = new_histogram();
        h.record(value).unwrap();
        let mut record = IntervalRecord::new(
            Duration::from_secs(second),
            Duration::from_secs(1),
            1,
            second % 2,
            &h,
        );
        record.pace = PaceCounts {
            intended: second,
            sent: second + 1,
            late: second % 3,
        };
        record
    }

    /// A long series keeps only its newest seconds in memory and reads every second back
    /// in order, exactly as pushed, however often it is read.
    #[test]
    fn long_series_stays_out_of_memory_and_reads_back_exactly() {
        let pushed: Vec<IntervalRecord> = (0..1_000).map(|k| record(k, 100 + k)).collect();
        let series: IntervalSeries = pushed.iter().cloned().collect();
        assert_eq!(series.len(), 1_000);
        assert_eq!(series.in_memory_len(), TAIL);
        for _ in 0..2 {
            let read: Vec<IntervalRecord> = series.iter().collect();
            assert_eq!(read.len(), pushed.len());
            assert!(read == pushed, "a second read back differs");
        }
        assert_eq!(series.iter().nth(567).unwrap().histogram().max(), 667);
        assert!(series.clone() == series);
    }

    /// The end drops empty seconds past the measured time, even behind spilled ones, but
    /// keeps a run's only second; the last kept one is cut at the end.
    #[test]
    fn finish_drops_empty_seconds_past_the_end_and_cuts_the_last() {
        let mut series: IntervalSeries = (0..20).map(|k| record(k, 50)).collect();
        for k in 20..22 {
            series.push(IntervalRecord::new(
                Duration::from_secs(k),
                Duration::from_secs(1),
                0,
                0,
                &new_histogram(),
            ));
        }
        series.finish(Duration::from_millis(19_400));
        assert_eq!(series.len(), 20);
        let last = series.iter().last().unwrap();
        assert_eq!(
            (last.start, last.length),
            (Duration::from_secs(19), Duration::from_millis(400))
        );

        let mut only: IntervalSeries = [IntervalRecord::new(
            Duration::ZERO,
            Duration::from_secs(1),
            0,
            0,
            &new_histogram(),
        )]
        .into_iter()
        .collect();
        only.finish(Duration::ZERO);
        assert_eq!(only.len(), 1);
    }
}
