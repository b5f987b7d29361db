//! A one-shot timer with nanosecond resolution that wakes a mio `Poll`: `epoll_wait` only
//! takes whole milliseconds (mio rounds up), which would make an open-loop schedule of
//! 1000 req/s send each request up to a millisecond late and blame the server for it.
//! Linux only (timerfd); elsewhere [`SlotTimer::new`] returns `None` and the poll timeout
//! is used instead.

use std::io;
use std::time::{Duration, Instant};

use mio::{Registry, Token};

/// A registered timerfd, armed for one instant at a time.
pub struct SlotTimer {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
    armed: Option<Instant>,
}

impl SlotTimer {
    /// Creates the timer and registers it with `token`; `None` where there is no timerfd.
    #[cfg(target_os = "linux")]
    pub fn new(registry: &Registry, token: Token) -> io::Result<Option<SlotTimer>> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd we own.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        registry.register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            token,
            mio::Interest::READABLE,
        )?;
        // Wake-ups may come this much late by default (50 µs); the schedule wants them on time.
        // SAFETY: PR_SET_TIMERSLACK takes an integer and affects only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        Ok(Some(SlotTimer { fd, armed: None }))
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(_registry: &Registry, _token: Token) -> io::Result<Option<SlotTimer>> {
        Ok(None)
    }

    /// Makes the poll wake at `at` (an earlier setting is replaced). Re-arming also clears
    /// a past expiry, so the timer never needs to be read.
    pub fn arm(&mut self, at: Instant, now: Instant) -> io::Result<()> {
        if self.armed == Some(at) {
            return Ok(());
        }
        // A zero it_value would disarm the timer: a due instant fires as soon as possible.
        let after = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        self.set(after)?;
        self.armed = Some(at);
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn set(&self, after: Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for (null).
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn set(&self, _after: Duration) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    /// An armed timer ends the poll's wait (with its token), not before the instant asked.
    #[test]
    fn wakes_the_poll_on_time() {
        let mut poll = Poll::new().unwrap();
        let mut timer = SlotTimer::new(poll.registry(), Token(7)).unwrap().unwrap();
        let mut events = Events::with_capacity(4);
        let now = Instant::now();
        let at = now + Duration::from_micros(300);
        timer.arm(at, now).unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        let woke = Instant::now();
        assert_eq!(
            events.iter().map(|e| e.token()).collect::<Vec<_>>(),
            vec![Token(7)]
        );
        assert!(woke >= at, "woke before the instant");
        assert!(
            woke - at < Duration::from_secs(1),
            "the 5 s poll timeout did not decide"
        );
    }
}
