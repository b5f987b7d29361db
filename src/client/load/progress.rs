//! The once-a-second progress line: each loop publishes its figures for the second into
//! its slot of [`Shared`], and the calling thread merges the slots and prints the line a
//! little after each second, until every loop is done.

use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{collect_seconds, Shared};
use crate::client::report::Interval;
use crate::client::series::SeriesCollector;

/// Progress lines come this often.
pub(super) const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// The printer waits this long past each second for the loops to publish it.
const PROGRESS_GRACE: Duration = Duration::from_millis(30);
/// How often the printer looks whether the loops are done when it has nothing to print.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Prints a line a second to `out` (if any) until `done` says every loop has finished.
pub(super) fn print_until_done(
    shared: &Shared<'_>,
    done: &Receiver<()>,
    mut out: Option<&mut dyn Write>,
    collector: &mut SeriesCollector,
) {
    let mut second = 1u32;
    loop {
        let wait = match (&out, shared.start.get()) {
            (Some(_), Some(start)) => (*start + PROGRESS_INTERVAL * second + PROGRESS_GRACE)
                .saturating_duration_since(Instant::now()),
            _ => IDLE_CHECK,
        };
        match done.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // The series is completed as the run goes, so finished seconds are encoded and
        // their live histograms reused: memory stays flat however long it runs.
        collect_seconds(shared, collector);
        if let (Some(out), Some(slots), Some(start)) =
            (out.as_mut(), &shared.progress, shared.start.get())
        {
            if Instant::now() >= *start + PROGRESS_INTERVAL * second {
                let mut total = Interval::default();
                for slot in slots {
                    total.merge_from(&mut slot.lock().unwrap_or_else(|p| p.into_inner()));
                }
                let warmup = PROGRESS_INTERVAL * second <= shared.config.warmup;
                let _ = writeln!(
                    out,
                    "{}",
                    total.line(u64::from(second), PROGRESS_INTERVAL, warmup)
                );
                second += 1;
            }
        }
    }
}

/// Hands loop `thread`'s figures of this second to the printer.
pub(super) fn publish(shared: &Shared<'_>, thread: usize, interval: &mut Interval) {
    if let Some(slot) = shared.progress.as_ref().and_then(|slots| slots.get(thread)) {
        slot.lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge_from(interval);
    }
}
