//! What a fan-out run measured, for people (`Display`) or as one JSON object (`serde`),
//! with the load report's latency summaries and number formats.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::{Accounts, FanoutConfig};
use crate::client::duration::format_duration;
use crate::client::report::{
    human_bytes, latency_line, round2, thousands, CpuTime, LatencySummary,
};

/// The run's settings, echoed so a result carries them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutOptions {
    pub address: String,
    pub protocol: &'static str,
    pub members: usize,
    pub senders: usize,
    /// Lines per second per sender.
    pub rate: f64,
    pub duration_s: f64,
    /// Text bytes per line.
    pub size: usize,
    pub room: Option<String>,
    /// A delivery later than this after its line's scheduled time is lost.
    pub timeout_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LineCounts {
    /// Sent by the senders while sending.
    pub sent: u64,
    /// Reached every member it should.
    pub complete: u64,
    /// Missed at least one member.
    pub incomplete: u64,
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeliveryCounts {
    /// Lines sent times the other members connected at the time, added up.
    pub expected: u64,
    pub delivered: u64,
    /// Expected, and not delivered within the timeout.
    pub lost: u64,
    /// Came after the timeout (already counted lost).
    pub late: u64,
    /// A sender's line after a later one of the same sender, or twice (not delivered).
    pub out_of_order: u64,
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemberCounts {
    pub requested: usize,
    /// Connected and in the room when the lines began.
    pub connected: u64,
    /// Whose connection ended during the run.
    pub lost: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bytes {
    pub out: u64,
    #[serde(rename = "in")]
    pub in_: u64,
}

/// The result of a fan-out run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutReport {
    /// Interrupted (Ctrl-C): the figures cover the time measured.
    pub partial: bool,
    pub options: FanoutOptions,
    /// Time lines were sent, in seconds.
    pub elapsed_s: f64,
    pub members: MemberCounts,
    pub lines: LineCounts,
    pub deliveries: DeliveryCounts,
    /// Per delivery, from the line's scheduled send time to the member's receipt.
    pub delivery_us: LatencySummary,
    /// Per delivery, from the line's actual send.
    pub delivery_uncorrected_us: LatencySummary,
    /// Per complete line, from its scheduled send time to its last member's receipt.
    pub to_last_member_us: LatencySummary,
    /// Lines that did not read back, and `! ...` errors from the server.
    pub garbled: u64,
    pub server_errors: u64,
    /// The whole run's, probes included.
    pub bytes: Bytes,
    pub first_error: Option<String>,
    pub client_cpu: CpuTime,
}

impl FanoutReport {
    pub(super) fn new(
        config: &FanoutConfig,
        accounts: &Accounts,
        connected: u64,
        elapsed: Duration,
        partial: bool,
        (bytes_in, bytes_out): (u64, u64),
        cpu: CpuTime,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let per_second = |n: u64| {
            if secs > 0.0 {
                round2(n as f64 / secs)
            } else {
                0.0
            }
        };
        FanoutReport {
            partial,
            options: FanoutOptions {
                address: config.target.clone(),
                protocol: "chat",
                members: config.members,
                senders: config.senders,
                rate: config.rate,
                duration_s: config.duration.as_secs_f64(),
                size: config.size,
                room: config.room.clone(),
                timeout_s: config.timeout.as_secs_f64(),
            },
            elapsed_s: (secs * 1e6).round() / 1e6,
            members: MemberCounts {
                requested: config.members,
                connected,
                lost: accounts.members_lost,
            },
            lines: LineCounts {
                sent: accounts.lines_sent,
                complete: accounts.lines_complete,
                incomplete: accounts.lines_incomplete,
                per_second: per_second(accounts.lines_sent),
            },
            deliveries: DeliveryCounts {
                expected: accounts.expected,
                delivered: accounts.delivered,
                lost: accounts.lost,
                late: accounts.late,
                out_of_order: accounts.out_of_order,
                per_second: per_second(accounts.delivered),
            },
            delivery_us: LatencySummary::of(&accounts.delivery),
            delivery_uncorrected_us: LatencySummary::of(&accounts.delivery_uncorrected),
            to_last_member_us: LatencySummary::of(&accounts.to_last),
            garbled: accounts.garbled,
            server_errors: accounts.server_errors,
            bytes: Bytes {
                out: bytes_out,
                in_: bytes_in,
            },
            first_error: accounts.first_error.clone(),
            client_cpu: CpuTime {
                user_s: round3(cpu.user_s),
                system_s: round3(cpu.system_s),
            },
        }
    }

    /// Whether anything went wrong: a lost or disordered delivery, a garbled line, an
    /// error from the server, a member gone.
    pub fn has_failures(&self) -> bool {
        let d = &self.deliveries;
        d.lost > 0
            || d.out_of_order > 0
            || self.garbled > 0
            || self.server_errors > 0
            || self.members.lost > 0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn latencies(s: &LatencySummary) -> String {
    if s.count == 0 {
        "none measured".to_string()
    } else {
        latency_line(s)
    }
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        if self.partial {
            writeln!(f, "INTERRUPTED: partial report for the time measured")?;
        }
        let room = o
            .room
            .as_deref()
            .map(|r| format!(" in {r}"))
            .unwrap_or_default();
        writeln!(
            f,
            "{} members{room}, {} senders at {} lines/s each, {}-byte lines, {}",
            o.members,
            o.senders,
            o.rate,
            o.size,
            format_duration(Duration::from_secs_f64(self.elapsed_s))
        )?;
        if self.members.connected < self.members.requested as u64 {
            writeln!(
                f,
                "members    {} of {} connected",
                self.members.connected, self.members.requested
            )?;
        }
        let l = &self.lines;
        writeln!(
            f,
            "lines      {} sent ({}/s), {} reached every member, {} did not",
            thousands(l.sent),
            thousands(l.per_second.round() as u64),
            thousands(l.complete),
            thousands(l.incomplete)
        )?;
        let d = &self.deliveries;
        writeln!(
            f,
            "deliveries {} of {}   {}/s   lost {}  (late {}, out of order {})",
            thousands(d.delivered),
            thousands(d.expected),
            thousands(d.per_second.round() as u64),
            thousands(d.lost),
            thousands(d.late),
            thousands(d.out_of_order)
        )?;
        writeln!(
            f,
            "delivery   {}   (from due time)",
            latencies(&self.delivery_us)
        )?;
        writeln!(
            f,
            "uncorrected {}  (from actual send)",
            latencies(&self.delivery_uncorrected_us)
        )?;
        writeln!(
            f,
            "to last    {}   (per line)",
            latencies(&self.to_last_member_us)
        )?;
        if self.garbled > 0 || self.server_errors > 0 || self.members.lost > 0 {
            writeln!(
                f,
                "errors     garbled {}, from the server {}, members lost {}",
                self.garbled, self.server_errors, self.members.lost
            )?;
        }
        if let Some(first) = &self.first_error {
            writeln!(f, "first error: {first}")?;
        }
        writeln!(
            f,
            "bytes      out {}  in {}",
            human_bytes(self.bytes.out as f64),
            human_bytes(self.bytes.in_ as f64)
        )?;
        write!(
            f,
            "client cpu {:.2}s user + {:.2}s system",
            self.client_cpu.user_s, self.client_cpu.system_s
        )
    }
}
