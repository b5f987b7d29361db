//! How a run's work is divided and, with `--rate`, scheduled: each loop takes an even
//! share of the connections and requests, and its share of the rate plan (constant, a
//! linear ramp, or steps) is a sequence of slots, slot `s` due when the plan's integral
//! reaches `s` and belonging to connection `s % connections`.

use std::fmt;
use std::time::{Duration, Instant};

use super::config::MAX_RATE;
use crate::duration::format_duration;

/// Requests per second over the measured time, as `--rate` (with `--ramp` or `--step`)
/// asks. The plan's clock starts when measuring does; a warm-up runs at the first rate.
#[derive(Debug, Clone, PartialEq)]
pub enum RatePlan {
    /// `--rate R`.
    Constant(f64),
    /// `--rate A..B --ramp D`: from `from` to `to` linearly over `over`, then `to`.
    Ramp { from: f64, to: f64, over: Duration },
    /// `--rate A,B,C --step D`: each rate for `each`, then the last one.
    Steps { rates: Vec<f64>, each: Duration },
}

impl RatePlan {
    /// Reads `--rate` with its `--ramp` or `--step`: `R` alone, `A..B` with a ramp, `A,B,C`
    /// with a step; any other combination, or a rate that is not a positive number, is a
    /// usage error whose message says which.
    pub fn parse(
        rate: &str,
        ramp: Option<Duration>,
        step: Option<Duration>,
    ) -> Result<RatePlan, String> {
        let number = |text: &str| -> Result<f64, String> {
            match text.trim().parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
                _ => Err(format!(
                    "--rate {rate}: {:?} is not a positive number of requests per second",
                    text.trim()
                )),
            }
        };
        let plan = if let Some((from, to)) = rate.split_once("..") {
            let (from, to) = (number(from)?, number(to)?);
            match (ramp, step) {
                (_, Some(_)) => {
                    return Err(format!(
                        "--rate {rate} is a ramp: it goes with --ramp D, not --step"
                    ))
                }
                (None, None) => {
                    return Err(format!(
                        "--rate {rate} is a ramp: say over how long with --ramp D"
                    ))
                }
                (Some(over), None) if over.is_zero() => {
                    return Err("--ramp must be longer than 0".into())
                }
                (Some(over), None) => RatePlan::Ramp { from, to, over },
            }
        } else if rate.contains(',') {
            let rates = rate.split(',').map(number).collect::<Result<Vec<_>, _>>()?;
            match (ramp, step) {
                (Some(_), _) => {
                    return Err(format!(
                        "--rate {rate} is a list of steps: it goes with --step D, not --ramp \
                         (a ramp is --rate A..B)"
                    ))
                }
                (None, None) => {
                    return Err(format!(
                        "--rate {rate} is a list of steps: say how long each lasts with --step D"
                    ))
                }
                (None, Some(each)) if each.is_zero() => {
                    return Err("--step must be longer than 0".into())
                }
                (None, Some(each)) => RatePlan::Steps { rates, each },
            }
        } else {
            let r = number(rate)?;
            match (ramp, step) {
                (Some(_), _) => {
                    return Err(format!(
                        "--ramp goes with a rate range: --rate A..B, not {rate}"
                    ))
                }
                (_, Some(_)) => {
                    return Err(format!(
                        "--step goes with a list of rates: --rate A,B,C, not {rate}"
                    ))
                }
                (None, None) => RatePlan::Constant(r),
            }
        };
        Ok(plan)
    }

    /// The rates the plan names, in order.
    pub fn rates(&self) -> Vec<f64> {
        match self {
            RatePlan::Constant(r) => vec![*r],
            RatePlan::Ramp { from, to, .. } => vec![*from, *to],
            RatePlan::Steps { rates, .. } => rates.clone(),
        }
    }

    /// The rate at the start (and during a warm-up).
    pub fn first_rate(&self) -> f64 {
        match self {
            RatePlan::Constant(r) => *r,
            RatePlan::Ramp { from, .. } => *from,
            RatePlan::Steps { rates, .. } => rates.first().copied().unwrap_or(0.0),
        }
    }

    /// Checks every rate is positive and at most `MAX_RATE`.
    pub fn validate(&self) -> Result<(), String> {
        for rate in self.rates() {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of requests per second".into());
            }
            if rate > MAX_RATE {
                return Err(format!(
                    "--rate {rate} is more than {} requests per second, which no schedule here \
                     can keep: leave --rate out to send as fast as the server answers",
                    MAX_RATE as u64
                ));
            }
        }
        if let RatePlan::Steps { rates, .. } = self {
            if rates.is_empty() {
                return Err("--rate needs at least one rate".into());
            }
        }
        Ok(())
    }

    /// The same plan at `factor` times every rate (one loop's share).
    fn scaled(&self, factor: f64) -> RatePlan {
        match self {
            RatePlan::Constant(r) => RatePlan::Constant(r * factor),
            RatePlan::Ramp { from, to, over } => RatePlan::Ramp {
                from: from * factor,
                to: to * factor,
                over: *over,
            },
            RatePlan::Steps { rates, each } => RatePlan::Steps {
                rates: rates.iter().map(|r| r * factor).collect(),
                each: *each,
            },
        }
    }

    /// Requests the plan intends in its first `t` seconds: the integral of its rate.
    pub fn count_at(&self, t: f64) -> f64 {
        let t = t.max(0.0);
        match self {
            RatePlan::Constant(r) => r * t,
            RatePlan::Ramp { from, to, over } => {
                let span = over.as_secs_f64();
                if t <= span {
                    from * t + (to - from) * t * t / (2.0 * span)
                } else {
                    (from + to) * span / 2.0 + to * (t - span)
                }
            }
            RatePlan::Steps { rates, each } => {
                let span = each.as_secs_f64();
                let mut total = 0.0;
                for (i, rate) in rates.iter().enumerate() {
                    let begin = i as f64 * span;
                    let last = i + 1 == rates.len();
                    let end = if last { t } else { t.min(begin + span) };
                    if end <= begin {
                        break;
                    }
                    total += rate * (end - begin);
                }
                total
            }
        }
    }

    /// When the plan's count reaches `n`: the inverse of [`RatePlan::count_at`].
    pub fn time_of(&self, n: f64) -> f64 {
        let n = n.max(0.0);
        match self {
            RatePlan::Constant(r) => n / r,
            RatePlan::Ramp { from, to, over } => {
                let span = over.as_secs_f64();
                let ramped = (from + to) * span / 2.0;
                if n > ramped {
                    return span + (n - ramped) / to;
                }
                // n = a t + k t², k = (b - a) / 2T, solved as 2n / (a + √(a² + 4kn)): no
                // cancellation when k is small, and right for ramps down (k < 0) too,
                // since the rate stays positive on the ramp.
                let k = (to - from) / (2.0 * span);
                let root = (from * from + 4.0 * k * n).max(0.0).sqrt();
                2.0 * n / (from + root)
            }
            RatePlan::Steps { rates, each } => {
                let span = each.as_secs_f64();
                let mut before = 0.0;
                for (i, rate) in rates.iter().enumerate() {
                    let in_step = rate * span;
                    if n < before + in_step || i + 1 == rates.len() {
                        return i as f64 * span + (n - before) / rate;
                    }
                    before += in_step;
                }
                0.0
            }
        }
    }
}

impl fmt::Display for RatePlan {
    /// `1000 req/s`, `1000..20000 req/s over 30.00s`, `1000,5000,10000 req/s, 10.00s each`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |rates: &[f64], sep: &str| {
            rates
                .iter()
                .map(|r| format!("{r}"))
                .collect::<Vec<_>>()
                .join(sep)
        };
        match self {
            RatePlan::Constant(r) => write!(f, "{r} req/s"),
            RatePlan::Ramp { from, to, over } => write!(
                f,
                "{} req/s over {}",
                list(&[*from, *to], ".."),
                format_duration(*over)
            ),
            RatePlan::Steps { rates, each } => write!(
                f,
                "{} req/s, {} each",
                list(rates, ","),
                format_duration(*each)
            ),
        }
    }
}

/// One loop's open-loop schedule: its share of the plan, after a lead-in (the warm-up) at
/// the first rate.
#[derive(Debug, Clone)]
pub(super) struct Rate {
    /// This loop's connections' part of the plan.
    plan: RatePlan,
    /// Seconds before the plan's clock starts (the warm-up), run at its first rate.
    lead_in: f64,
    /// Connections this loop started with: slot `s` is connection `s % per_round`'s.
    pub per_round: u64,
}

impl Rate {
    /// This loop's share (`share` of the whole, 0 to 1) of `plan`, starting `lead_in` in.
    pub fn new(plan: &RatePlan, share: f64, lead_in: Duration, per_round: u64) -> Self {
        Rate {
            plan: plan.scaled(share),
            lead_in: lead_in.as_secs_f64(),
            per_round,
        }
    }

    /// Slots intended in the first `t` seconds from the start (lead-in included).
    fn count_at(&self, t: f64) -> f64 {
        let lead_rate = self.plan.first_rate();
        if t <= self.lead_in {
            lead_rate * t.max(0.0)
        } else {
            lead_rate * self.lead_in + self.plan.count_at(t - self.lead_in)
        }
    }

    /// Seconds from the start at which slot `slot` is due.
    pub fn offset_of(&self, slot: u64) -> f64 {
        let n = slot as f64;
        let lead = self.plan.first_rate() * self.lead_in;
        if n < lead {
            n / self.plan.first_rate()
        } else {
            self.lead_in + self.plan.time_of(n - lead)
        }
    }

    /// When slot `slot` is due, counting from `start`.
    pub fn slot_time(&self, start: Instant, slot: u64) -> Option<Instant> {
        start.checked_add(Duration::from_secs_f64(self.offset_of(slot)))
    }

    /// The first slot due at or after `t` seconds from the start.
    pub fn first_slot_from(&self, t: f64) -> u64 {
        let mut slot = self.count_at(t).ceil().max(0.0) as u64;
        // The float inverse may disagree by one at a boundary: settle on the times.
        while slot > 0 && self.offset_of(slot - 1) >= t {
            slot -= 1;
        }
        while self.offset_of(slot) < t {
            slot += 1;
        }
        slot
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
        let rate = Rate::new(&RatePlan::Constant(2000.0), 0.5, Duration::ZERO, 4);
        assert_eq!(rate.slot_time(start, 0), Some(start));
        assert_eq!(
            rate.slot_time(start, 250),
            Some(start + Duration::from_millis(250))
        );
        assert_eq!(rate.slot_of(1, 0), 1);
        assert_eq!(rate.slot_of(1, 2), 9);
    }

    fn ramp(from: f64, to: f64, secs: u64) -> RatePlan {
        RatePlan::Ramp {
            from,
            to,
            over: Duration::from_secs(secs),
        }
    }

    /// Slots due before `t` seconds, counted by walking the slot times themselves.
    fn slots_before(rate: &Rate, t: f64) -> u64 {
        (0..).take_while(|&s| rate.offset_of(s) < t).count() as u64
    }

    /// The slots of a ramp, up and down, and of steps, counted after T seconds, equal the
    /// plan's integral to within one, at every whole second and past the ramp's end.
    #[test]
    fn slots_follow_the_integral() {
        let plans = [
            RatePlan::Constant(750.0),
            ramp(1000.0, 20_000.0, 3),
            ramp(5000.0, 100.0, 2),
            RatePlan::Steps {
                rates: vec![1000.0, 5000.0, 10_000.0],
                each: Duration::from_millis(1500),
            },
        ];
        for plan in &plans {
            let rate = Rate::new(plan, 1.0, Duration::ZERO, 1);
            for t in [0.25, 1.0, 1.5, 2.0, 3.0, 4.0, 5.5] {
                let integral = plan.count_at(t);
                let slots = slots_before(&rate, t) as f64;
                assert!(
                    (slots - integral).abs() <= 1.0,
                    "{plan}: {slots} slots before {t}s, integral {integral}"
                );
                assert_eq!(rate.first_slot_from(t), slots as u64, "{plan} at {t}s");
            }
        }
    }

    /// The closed forms: a ramp from a to b over T intends (a + b) T / 2, then b a second;
    /// steps intend each rate times the step, then hold the last; time_of inverts count_at.
    #[test]
    fn plan_integrals_in_closed_form() {
        let up = ramp(1000.0, 20_000.0, 30);
        assert_eq!(up.count_at(30.0), 315_000.0);
        assert_eq!(up.count_at(31.0), 335_000.0);
        assert_eq!(up.count_at(1.0), 1000.0 + 19_000.0 / 60.0);
        let steps = RatePlan::Steps {
            rates: vec![1000.0, 5000.0, 10_000.0],
            each: Duration::from_secs(10),
        };
        assert_eq!(steps.count_at(10.0), 10_000.0);
        assert_eq!(steps.count_at(15.0), 35_000.0);
        assert_eq!(
            steps.count_at(40.0),
            260_000.0,
            "10,000 + 50,000 + 20 s at 10,000"
        );
        for plan in [up, ramp(900.0, 10.0, 4), steps] {
            for n in [0.0, 1.0, 17.5, 999.0, 12_345.0, 200_000.0] {
                let t = plan.time_of(n);
                let back = plan.count_at(t);
                assert!(
                    (back - n).abs() < 1e-6 * n.max(1.0),
                    "{plan}: {n} -> {t}s -> {back}"
                );
            }
        }
    }

    /// A warm-up runs at the first rate, and the plan's clock starts after it: with 2 s of
    /// warm-up at 100/s, 200 slots come first, then the ramp from 100.
    #[test]
    fn warmup_runs_at_the_first_rate() {
        let rate = Rate::new(&ramp(100.0, 300.0, 2), 1.0, Duration::from_secs(2), 1);
        assert_eq!(rate.first_slot_from(2.0), 200);
        assert_eq!(rate.offset_of(100), 1.0);
        // The ramp intends (100 + 300) * 2 / 2 = 400 in its 2 s.
        assert_eq!(rate.first_slot_from(4.0) - rate.first_slot_from(2.0), 400);
    }

    /// Loops' shares of a plan add up to the plan: three loops of 1, 1 and 2 connections.
    #[test]
    fn shares_of_a_plan_add_up() {
        let plan = ramp(100.0, 1100.0, 3);
        let total: u64 = [0.25, 0.25, 0.5]
            .iter()
            .map(|&share| {
                let rate = Rate::new(&plan, share, Duration::ZERO, 1);
                rate.first_slot_from(3.0)
            })
            .sum();
        // (100 + 1100) * 3 / 2 = 1800, each share rounded up at most once.
        assert!((1800..=1802).contains(&total), "{total}");
    }

    /// What --rate, --ramp and --step accept, and the mismatches refused with a message
    /// that names the flag to add or drop.
    #[test]
    fn parses_rate_plans() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            RatePlan::parse("1000", None, None),
            Ok(RatePlan::Constant(1000.0))
        );
        assert_eq!(
            RatePlan::parse("1000..20000", secs(30), None),
            Ok(ramp(1000.0, 20_000.0, 30))
        );
        assert_eq!(
            RatePlan::parse("1000,5000,10000", None, secs(10)),
            Ok(RatePlan::Steps {
                rates: vec![1000.0, 5000.0, 10_000.0],
                each: Duration::from_secs(10)
            })
        );
        for (rate, ramp, step, says) in [
            ("1000..20000", None, None, "--ramp"),
            ("1000..20000", None, secs(1), "not --step"),
            ("1,2,3", None, None, "--step"),
            ("1,2,3", secs(1), None, "not --ramp"),
            ("1000", secs(1), None, "--ramp goes with"),
            ("1000", None, secs(1), "--step goes with"),
            ("0", None, None, "positive"),
            ("-5", None, None, "positive"),
            ("fast", None, None, "positive"),
            ("10..x", secs(1), None, "positive"),
            ("1,,3", None, secs(1), "positive"),
            ("NaN", None, None, "positive"),
            ("1..2", Some(Duration::ZERO), None, "longer than 0"),
        ] {
            let error = RatePlan::parse(rate, ramp, step).unwrap_err();
            assert!(error.contains(says), "{rate}: {error}");
        }
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
