//! How a run's work is divided and, with `--rate`, scheduled: each loop takes an even
//! share of the connections and requests, and its share of the rate is a sequence of
//! evenly spaced slots, slot `s` belonging to connection `s % connections`.

use std::time::{Duration, Instant};

/// One loop's open-loop schedule.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rate {
    /// Requests per second for this loop's connections together.
    pub per_second: f64,
    /// Connections this loop started with: slot `s` is connection `s % per_round`'s.
    pub per_round: u64,
}

impl Rate {
    /// When slot `slot` is due: slots are evenly spaced from `start`.
    pub fn slot_time(&self, start: Instant, slot: u64) -> Option<Instant> {
        start.checked_add(Duration::from_secs_f64(slot as f64 / self.per_second))
    }

    /// The slot of connection `index`'s request number `issued`.
    pub fn slot_of(&self, index: usize, issued: u64) -> u64 {
        issued * self.per_round + index as u64
    }
}

/// Paces connects at a rate: one every `1 / per_second`, never a burst to catch up.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(per_second: f64) -> Self {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / per_second.max(1e-9)),
            next: None,
        }
    }

    /// Takes the next slot if it has come (`None`), or says how long until it does.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        match self.next {
            Some(at) if at > now => Some(at - now),
            _ => {
                // Late slots are not made up for: the pace counts from now.
                self.next = Some(now + self.interval);
                None
            }
        }
    }
}

/// The part of `total` that goes to `index` of `parts`: (first item, count), as even as
/// possible, the first ones taking the remainder.
pub(super) fn share(total: usize, parts: usize, index: usize) -> (usize, usize) {
    let base = total / parts;
    let extra = total % parts;
    let count = base + usize::from(index < extra);
    let first = index * base + index.min(extra);
    (first, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections and requests split across threads add up exactly and differ by at most one.
    #[test]
    fn shares_add_up() {
        for total in [0, 1, 7, 50, 10_000] {
            for parts in 1..=5 {
                let shares: Vec<(usize, usize)> =
                    (0..parts).map(|i| share(total, parts, i)).collect();
                assert_eq!(shares.iter().map(|s| s.1).sum::<usize>(), total);
                for pair in shares.windows(2) {
                    assert_eq!(pair[0].0 + pair[0].1, pair[1].0, "contiguous");
                }
                let (min, max) = (
                    shares.iter().map(|s| s.1).min(),
                    shares.iter().map(|s| s.1).max(),
                );
                assert!(max.unwrap() - min.unwrap() <= 1);
            }
        }
    }

    /// Schedule slots are evenly spaced at the rate, and each connection's requests take
    /// every `per_round`-th slot.
    #[test]
    fn schedule_is_even() {
        let start = Instant::now();
        let rate = Rate {
            per_second: 1000.0,
            per_round: 4,
        };
        assert_eq!(rate.slot_time(start, 0), Some(start));
        assert_eq!(
            rate.slot_time(start, 250),
            Some(start + Duration::from_millis(250))
        );
        assert_eq!(rate.slot_of(1, 0), 1);
        assert_eq!(rate.slot_of(1, 2), 9);
    }

    /// The pacer gives one slot per interval and asks to wait in between.
    #[test]
    fn pacer_spaces_connects() {
        let mut pacer = Pacer::new(100.0);
        let now = Instant::now();
        assert_eq!(pacer.take(now), None, "the first goes at once");
        assert_eq!(pacer.take(now), Some(Duration::from_millis(10)));
        let later = now + Duration::from_millis(10);
        assert_eq!(pacer.take(later), None);
        assert!(pacer.take(later).is_some());
    }
}
