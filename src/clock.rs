//! The loop's clock: `CLOCK_MONOTONIC_COARSE`, read once per turn and expressed as an
//! `Instant` so deadlines keep their std type. Coarse time is a memory read in the vDSO
//! (about 5 ns here) where the precise clock also reads the TSC (about 22 ns), and the loop
//! reads it once per message when busy; its resolution (one kernel tick, 4 ms here) is ample
//! for deadlines counted in seconds.

use std::time::{Duration, Instant};

/// Maps the coarse clock onto `Instant`. The instants it hands out never run ahead of
/// `Instant::now()` and lag it by less than two coarse ticks (more only if the kernel's
/// tick itself is late), so a deadline fires a few milliseconds late at worst, never early.
#[derive(Debug, Clone, Copy)]
pub struct CoarseClock {
    base: Instant,
    coarse_base: Duration,
}

impl CoarseClock {
    pub fn new() -> Self {
        let coarse_base = coarse_now();
        let precise = Instant::now();
        // Coarse time trails precise time by up to one tick; backing the base off by one
        // tick keeps `now()` at or behind the precise clock (see the type's doc).
        let base = precise.checked_sub(coarse_resolution()).unwrap_or(precise);
        CoarseClock { base, coarse_base }
    }

    pub fn now(&self) -> Instant {
        self.base + coarse_now().saturating_sub(self.coarse_base)
    }
}

impl Default for CoarseClock {
    fn default() -> Self {
        Self::new()
    }
}

fn coarse_now() -> Duration {
    read_clock(libc::CLOCK_MONOTONIC_COARSE, libc::clock_gettime)
}

fn coarse_resolution() -> Duration {
    read_clock(libc::CLOCK_MONOTONIC_COARSE, libc::clock_getres)
}

fn read_clock(
    clock: libc::clockid_t,
    read: unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int,
) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec. Both calls can fail only with EINVAL for
    // an unknown clock, and CLOCK_MONOTONIC_COARSE exists on every Linux since 2.6.32.
    let rc = unsafe { read(clock, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guarantee deadlines rely on: never ahead of the precise clock, and behind it by
    /// a few ticks at most (the slack covers a tick delayed on a loaded machine).
    #[test]
    fn coarse_instants_trail_the_precise_clock_and_never_lead_it() {
        const SLACK: Duration = Duration::from_millis(50);
        let clock = CoarseClock::new();
        let tick = coarse_resolution();
        assert!(tick > Duration::ZERO && tick <= Duration::from_millis(100));
        let first = clock.now();
        let mut previous = first;
        let started = Instant::now();
        while started.elapsed() < tick * 5 {
            // Precise readings on both sides, so a preemption between reads cannot fail it.
            let before = Instant::now();
            let coarse = clock.now();
            let after = Instant::now();
            assert!(
                coarse <= after,
                "coarse time ran ahead of the precise clock"
            );
            assert!(
                coarse + tick * 2 + SLACK > before,
                "lag {:?}",
                before - coarse
            );
            assert!(coarse >= previous, "coarse time went backwards");
            previous = coarse;
        }
        assert!(previous > first, "coarse time never advanced in five ticks");
    }
}
