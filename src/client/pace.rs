//! What an open-loop schedule did, second by second of the measured time: requests the
//! rate plan intended, requests sent, and sends that were late (more than [`LATE_AFTER`]
//! behind their slot). Each loop counts its own and hands each second over with the
//! second's answers, so the counts travel in the run's per-second series.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

/// A send this long after its slot's time counts as late. Past the slot timer's and the
/// loop's ordinary jitter (tens of microseconds), so what it counts is a connection still
/// busy with its previous request, or a loop that cannot keep up with the plan.
pub const LATE_AFTER: Duration = Duration::from_millis(1);

/// One second's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PaceCounts {
    /// Slots of the plan that came due.
    pub intended: u64,
    /// Requests sent.
    pub sent: u64,
    /// Of those, sent more than [`LATE_AFTER`] behind their slot.
    pub late: u64,
}

impl PaceCounts {
    pub fn add(&mut self, other: &PaceCounts) {
        self.intended += other.intended;
        self.sent += other.sent;
        self.late += other.late;
    }

    pub fn is_zero(&self) -> bool {
        *self == PaceCounts::default()
    }

    /// A late send, or fewer sends than intended.
    pub fn behind(&self) -> bool {
        self.late > 0 || self.sent < self.intended
    }
}

/// One loop's counts for the seconds of the measured time it has not handed over yet.
/// Handing a second over ([`PaceSeries::take`], with the second's answers) drops it, so
/// this holds a second or two however long the run. A count for a second already handed
/// over (a slot taken in the turn after its second ended, or a UDP send behind its
/// slot) goes to the oldest second still held: totals stay exact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaceSeries {
    /// The second `counts[0]` is.
    base: usize,
    counts: VecDeque<PaceCounts>,
}

impl PaceSeries {
    fn second(&mut self, second: usize) -> &mut PaceCounts {
        let index = second.saturating_sub(self.base);
        if self.counts.len() <= index {
            self.counts.resize(index + 1, PaceCounts::default());
        }
        &mut self.counts[index]
    }

    /// A slot of second `second` came due.
    pub fn intend(&mut self, second: usize) {
        self.second(second).intended += 1;
    }

    /// A request went out in second `second`, `late` or on time.
    pub fn send(&mut self, second: usize, late: bool) {
        let counts = self.second(second);
        counts.sent += 1;
        counts.late += u64::from(late);
    }

    /// Hands over second `second` (with any before it still held), or with `last`
    /// everything held.
    pub fn take(&mut self, second: usize, last: bool) -> PaceCounts {
        let mut sum = PaceCounts::default();
        while last || self.base <= second {
            let Some(counts) = self.counts.pop_front() else {
                break;
            };
            sum.add(&counts);
            self.base += 1;
        }
        self.base = self.base.max(second + 1);
        sum
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

impl PaceSummary {
    /// The totals of a run's seconds.
    pub fn of(seconds: impl Iterator<Item = PaceCounts>, late_after_ms: f64) -> Self {
        let mut total = PaceCounts::default();
        let mut seconds_behind = 0;
        for second in seconds {
            total.add(&second);
            seconds_behind += usize::from(second.behind());
        }
        PaceSummary {
            intended: total.intended,
            sent: total.sent,
            late: total.late,
            late_after_ms,
            seconds_behind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts land in their second and are handed over once; a count for a second
    /// already handed over goes to the oldest one held, and the last hand-over takes
    /// everything, so the seconds add up to every count.
    #[test]
    fn seconds_are_handed_over_once_and_late_counts_kept() {
        let mut pace = PaceSeries::default();
        pace.intend(0);
        pace.send(0, false);
        pace.intend(1);
        pace.send(1, true);
        let first = pace.take(0, false);
        assert_eq!((first.intended, first.sent, first.late), (1, 1, 0));
        // Second 0 is gone: a slot of it taken now counts in second 1.
        pace.intend(0);
        let second = pace.take(1, false);
        assert_eq!((second.intended, second.sent, second.late), (2, 1, 1));
        assert!(pace.take(2, false).is_zero(), "nothing counted in second 2");
        pace.send(5, false);
        pace.intend(4);
        let rest = pace.take(3, true);
        assert_eq!((rest.intended, rest.sent), (1, 1));
        assert!(pace.counts.is_empty());
    }

    /// The summary adds the seconds up and counts those that fell behind.
    #[test]
    fn summary_counts_seconds_behind() {
        let seconds = [
            PaceCounts {
                intended: 2,
                sent: 1,
                late: 0,
            },
            PaceCounts {
                intended: 1,
                sent: 1,
                late: 0,
            },
            PaceCounts {
                intended: 1,
                sent: 1,
                late: 1,
            },
        ];
        let summary = PaceSummary::of(seconds.into_iter(), 1.0);
        assert_eq!((summary.intended, summary.sent, summary.late), (4, 3, 1));
        assert_eq!(
            summary.seconds_behind, 2,
            "second 0 sent too few, second 2 late"
        );
    }
}
