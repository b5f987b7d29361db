//! What an open-loop schedule did, second by second of the measured time: requests the
//! rate plan intended, requests sent, and sends that were late (more than [`LATE_AFTER`]
//! behind their slot). Each loop keeps one; the run's is their sum.

use std::time::Duration;

use serde::Serialize;

/// A send this long after its slot's time counts as late. Past the slot timer's and the
/// loop's ordinary jitter (tens of microseconds), so what it counts is a connection still
/// busy with its previous request, or a loop that cannot keep up with the plan.
pub const LATE_AFTER: Duration = Duration::from_millis(1);

/// Per-second counts, index 0 the first second of the measured time. Grows by one entry a
/// second of run time (three integers), so its size is bounded by the run's length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaceSeries {
    pub intended: Vec<u64>,
    pub sent: Vec<u64>,
    pub late: Vec<u64>,
}

impl PaceSeries {
    /// A slot of second `second` came due.
    pub fn intend(&mut self, second: usize) {
        bump(&mut self.intended, second);
    }

    /// A request went out in second `second`, `late` or on time.
    pub fn send(&mut self, second: usize, late: bool) {
        bump(&mut self.sent, second);
        if late {
            bump(&mut self.late, second);
        }
    }

    pub fn merge(&mut self, other: &PaceSeries) {
        add(&mut self.intended, &other.intended);
        add(&mut self.sent, &other.sent);
        add(&mut self.late, &other.late);
    }

    /// Seconds covered.
    pub fn len(&self) -> usize {
        self.intended
            .len()
            .max(self.sent.len())
            .max(self.late.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Second `second`'s (intended, sent, late), zeros past the end.
    pub fn at(&self, second: usize) -> (u64, u64, u64) {
        let get = |v: &Vec<u64>| v.get(second).copied().unwrap_or(0);
        (get(&self.intended), get(&self.sent), get(&self.late))
    }

    /// The totals, for the report.
    pub fn summary(&self, late_after_ms: f64) -> PaceSummary {
        let seconds_behind = (0..self.len())
            .filter(|&s| {
                let (intended, sent, late) = self.at(s);
                late > 0 || sent < intended
            })
            .count();
        PaceSummary {
            intended: self.intended.iter().sum(),
            sent: self.sent.iter().sum(),
            late: self.late.iter().sum(),
            late_after_ms,
            seconds_behind,
        }
    }
}

fn bump(counts: &mut Vec<u64>, index: usize) {
    if counts.len() <= index {
        counts.resize(index + 1, 0);
    }
    counts[index] += 1;
}

fn add(mine: &mut Vec<u64>, theirs: &[u64]) {
    if mine.len() < theirs.len() {
        mine.resize(theirs.len(), 0);
    }
    for (m, t) in mine.iter_mut().zip(theirs) {
        *m += t;
    }
}

/// How well the generator kept the rate plan, over the measured time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PaceSummary {
    /// Slots the plan put in the measured time (its integral, rounded per loop).
    pub intended: u64,
    /// Requests sent in the measured time.
    pub sent: u64,
    /// Of those, sent more than `late_after_ms` after their slot: the connection was
    /// still busy or the loop behind (latency still counts from the slot).
    pub late: u64,
    pub late_after_ms: f64,
    /// Seconds with a late send, or fewer sends than intended.
    pub seconds_behind: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts land in their second, series of different lengths merge by second, and
    /// the summary adds them up and counts the seconds that fell behind.
    #[test]
    fn series_count_and_merge_by_second() {
        let mut a = PaceSeries::default();
        a.intend(0);
        a.send(0, false);
        a.intend(2);
        a.send(2, true);
        let mut b = PaceSeries::default();
        b.intend(0);
        b.intend(1);
        b.send(1, false);
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.at(0), (2, 1, 0));
        assert_eq!(a.at(1), (1, 1, 0));
        assert_eq!(a.at(2), (1, 1, 1));
        assert_eq!(a.at(9), (0, 0, 0));
        let summary = a.summary(1.0);
        assert_eq!((summary.intended, summary.sent, summary.late), (4, 3, 1));
        assert_eq!(
            summary.seconds_behind, 2,
            "second 0 sent too few, second 2 late"
        );
    }
}
