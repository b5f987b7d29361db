//! The loop's clock: `CLOCK_MONOTONIC_COARSE`, read once per turn, as a plain count of
//! nanoseconds. A busy loop turns over once per message, so this sits on the hot path:
//! the coarse clock is a memory read in the vDSO (about 5 ns here, against 22 ns for the
//! precise clock, which also reads the TSC), and a `Tick` compares and adds in one
//! instruction where `Instant` normalises a timespec each time (callgrind counted about
//! 100 instructions per turn for the `Instant` version).

use std::num::NonZeroU64;
use std::ops::Add;
use std::time::Duration;

/// A point on the loop's clock, in nanoseconds of `CLOCK_MONOTONIC_COARSE`. Its resolution
/// is the kernel's tick (4 ms here): ample for deadlines counted in seconds, and a deadline
/// fires within one tick of its time. Never zero, so an `Option<Tick>` (a deadline that
/// may be unset; a connection keeps four) takes 8 bytes, not 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(NonZeroU64);

impl Tick {
    /// The current time.
    pub fn now() -> Tick {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec. The call fails only with EINVAL for an
        // unknown clock, and CLOCK_MONOTONIC_COARSE exists on every Linux since 2.6.32.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if rc != 0 {
            return Tick(NonZeroU64::MIN);
        }
        let nanos = (ts.tv_sec as u64).saturating_mul(NANOS_PER_SEC) + ts.tv_nsec as u64;
        Tick(NonZeroU64::new(nanos).unwrap_or(NonZeroU64::MIN))
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.0.get().saturating_sub(earlier.0.get()))
    }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// CPU time (user and system) the calling thread has used. A loop sleeps in `epoll_wait`
/// when it has nothing to do, so its thread's CPU time is its busy time, to the
/// nanosecond, at no cost per turn: it is read when counters are asked for, not kept.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `Tick::now`; CLOCK_THREAD_CPUTIME_ID exists since Linux 2.6.12.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Add<Duration> for Tick {
    type Output = Tick;

    /// Saturates: a deadline 584 years away is as good as never.
    fn add(self, duration: Duration) -> Tick {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Tick(self.0.saturating_add(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The loop's clock advances with real time, to within a few ticks, and never backwards.
    #[test]
    fn ticks_follow_the_precise_clock() {
        // A kernel tick is at most 10 ms (HZ=100); the slack covers a tick delayed on a
        // loaded machine.
        const SLACK: Duration = Duration::from_millis(60);
        let (first, started) = (Tick::now(), Instant::now());
        let mut previous = first;
        while started.elapsed() < Duration::from_millis(50) {
            let tick = Tick::now();
            assert!(tick >= previous, "the coarse clock went backwards");
            previous = tick;
        }
        let (last, elapsed) = (Tick::now(), started.elapsed());
        let advanced = last.saturating_duration_since(first);
        assert!(advanced > Duration::ZERO, "the coarse clock never advanced");
        assert!(
            advanced <= elapsed + SLACK && elapsed <= advanced + SLACK,
            "coarse {advanced:?} against precise {elapsed:?}"
        );
    }

    #[test]
    fn adding_durations_saturates_and_differences_do_not_go_negative() {
        let tick = |nanos: u64| Tick(NonZeroU64::new(nanos).unwrap());
        let t = tick(5 * NANOS_PER_SEC);
        assert_eq!(t + Duration::from_millis(1500), tick(6_500_000_000));
        assert_eq!(t + Duration::MAX, tick(u64::MAX));
        assert_eq!(std::mem::size_of::<Option<Tick>>(), 8);
        assert_eq!(
            (t + Duration::from_secs(2)).saturating_duration_since(t),
            Duration::from_secs(2)
        );
        assert_eq!(
            t.saturating_duration_since(t + Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
