//! What a loop schedules for its connections besides their readiness events: the timer
//! queue, the connections to serve again next turn, and those to remove in the sweep.
//! The server loop and the client loop keep one each; a connection says what it needs in
//! a [`Settled`], and this is where that is written down.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::clock::Tick;
use slab::Slab;

use crate::connection::{Connection, Ended, Settled};
use crate::net::Transport;
use crate::outbound::Sink;
use crate::stats::Stats;

/// A connection's place in the slab and its identity, for work deferred to later in the
/// turn or to the next one: the key may be reused by then, the id is not.
pub type ConnRef = (usize, u64);

/// One loop's deferred work for its connections.
#[derive(Debug, Default)]
pub struct Schedule {
    /// Lazy: an entry may be stale (its connection gone, or re-armed sooner since); the
    /// loop checks with `Connection::timer_is` when it pops one.
    timers: BinaryHeap<Reverse<(Tick, usize, u64)>>,
    /// Connections to serve next turn without waiting for an event (edge-triggered epoll
    /// will not report them again), and its spare, swapped each turn.
    again: Vec<ConnRef>,
    again_spare: Vec<ConnRef>,
    /// Connections marked closed this batch; removed in one sweep after it.
    closing: Vec<usize>,
}

impl Schedule {
    /// Writes down what settling connection `key` (`id`) asked for.
    #[cold]
    pub fn add(&mut self, key: usize, id: u64, settled: Settled) {
        if settled.finished {
            self.closing.push(key);
            return;
        }
        if settled.serve_again {
            self.again.push((key, id));
        }
        if let Some(at) = settled.timer {
            self.timers.push(Reverse((at, key, id)));
        }
    }

    pub fn serve_next_turn(&mut self, key: usize, id: u64) {
        self.again.push((key, id));
    }

    /// Whether some connection is to be served next turn (the poll must not wait).
    #[inline]
    pub fn has_again(&self) -> bool {
        !self.again.is_empty()
    }

    /// The connections deferred from the last turn. Serving them may defer them again, to
    /// a list that keeps its capacity: give this one back with [`Self::done_again`].
    pub fn take_again(&mut self) -> Vec<ConnRef> {
        let spare = std::mem::take(&mut self.again_spare);
        std::mem::replace(&mut self.again, spare)
    }

    pub fn done_again(&mut self, mut batch: Vec<ConnRef>) {
        batch.clear();
        self.again_spare = batch;
    }

    /// Arms a timer for connection `key` (`id`) at `at`.
    pub fn arm(&mut self, at: Tick, key: usize, id: u64) {
        self.timers.push(Reverse((at, key, id)));
    }

    /// The earliest timer, stale or not.
    #[inline]
    pub fn next_timer(&self) -> Option<Tick> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the next timer that is due at `now` off the queue: (when, key, id).
    pub fn pop_due(&mut self, now: Tick) -> Option<(Tick, usize, u64)> {
        let Reverse(entry) = *self.timers.peek()?;
        if entry.0 > now {
            return None;
        }
        self.timers.pop();
        Some(entry)
    }

    /// Takes the next timer that is due at `now` and still meant: its connection is
    /// there and armed it. Stale entries (gone, or re-armed sooner since) are dropped.
    pub fn pop_live<S, T: Transport + Sink>(
        &mut self,
        conns: &Slab<Connection<S, T>>,
        now: Tick,
    ) -> Option<(Tick, usize, u64)> {
        while let Some((at, key, id)) = self.pop_due(now) {
            if conns
                .get(key)
                .is_some_and(|c| c.id() == id && c.timer_is(at))
            {
                return Some((at, key, id));
            }
        }
        None
    }

    /// Marks connection `key` for the sweep.
    pub fn close(&mut self, key: usize) {
        self.closing.push(key);
    }

    pub fn has_closing(&self) -> bool {
        !self.closing.is_empty()
    }

    /// The connections marked for the sweep so far (a removal may mark more).
    pub fn take_closing(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.closing)
    }
}

/// Takes connection `key`, marked for the sweep, out of `conns` if it is closed (it may
/// have been marked twice, and removed already), counting how it ended.
pub fn remove_ended<S, T: Transport + Sink>(
    conns: &mut Slab<Connection<S, T>>,
    key: usize,
    stats: &mut Stats,
) -> Option<Ended<S>> {
    if !conns.get(key).is_some_and(Connection::is_closed) {
        return None;
    }
    let ended = conns.remove(key).into_ended();
    stats.closed[ended.reason as usize] += 1;
    stats.resets += u64::from(ended.was_cut);
    Some(ended)
}

/// The earlier of two optional instants.
pub fn earliest(a: Option<Tick>, b: Option<Tick>) -> Option<Tick> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Timers come out in order and only once due; what settling asks for lands in the
    /// right list; the again list is reused, not reallocated.
    #[test]
    fn timers_again_and_sweep() {
        let now = Tick::now();
        let mut schedule = Schedule::default();
        schedule.arm(now + Duration::from_secs(2), 1, 11);
        schedule.add(
            2,
            12,
            Settled {
                timer: Some(now),
                serve_again: true,
                finished: false,
            },
        );
        schedule.add(
            3,
            13,
            Settled {
                finished: true,
                ..Settled::default()
            },
        );
        assert_eq!(schedule.next_timer(), Some(now));
        assert_eq!(schedule.pop_due(now), Some((now, 2, 12)));
        assert_eq!(schedule.pop_due(now), None, "not due yet");
        assert_eq!(schedule.take_closing(), [3]);
        assert!(schedule.has_again());
        let batch = schedule.take_again();
        assert_eq!(batch, [(2, 12)]);
        assert!(!schedule.has_again());
        let capacity = batch.capacity();
        schedule.done_again(batch);
        schedule.serve_next_turn(4, 14);
        let _ = schedule.take_again();
        assert!(
            schedule.take_again().capacity() >= capacity,
            "the spare came back"
        );
        assert_eq!(earliest(None, Some(now)), Some(now));
    }
}
