//! Durations as the binaries' time flags take them: `10s`, `1m`, `500ms`, `1.5s`,
//! `1m30s`, `250us` (or `µs`); a bare number means seconds, so `--timeout 10` and
//! `--idle-timeout 300` keep working. Also the inverse, for reports. Below the server and
//! the clients, which both parse their flags with it.

use std::time::Duration;

/// The longest duration accepted: a load run or a timeout longer than a year is a typo.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Parses `10s`, `1m`, `500ms`, `1.5s`, `1h`, `250us`/`250µs`, `1m30s`, or a bare number
/// of seconds. Units: `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    let invalid = || format!("invalid duration {text:?} (examples: 10s, 1m, 500ms, 1.5s)");
    if let Ok(seconds) = text.parse::<f64>() {
        return from_seconds(seconds).ok_or_else(invalid);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += value * scale;
        rest = after;
    }
    from_seconds(total).ok_or_else(invalid)
}

fn from_seconds(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && (0.0..=MAX_SECONDS).contains(&seconds))
        .then(|| Duration::from_secs_f64(seconds))
}

/// Shows a duration the way a person reads a report: `850ns`, `41µs`, `1.1ms`, `4.20s`, `2m05s`.
pub fn format_duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros == 0 {
        format!("{}ns", d.as_nanos())
    } else if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 10_000 {
        format!("{:.2}ms", micros as f64 / 1e3)
    } else if micros < 1_000_000 {
        format!("{:.1}ms", micros as f64 / 1e3)
    } else if d.as_secs() < 60 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every unit the help text promises parses to the right value.
    #[test]
    fn parses_units() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("10s"), Ok(ms(10_000)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration(" 3 "), Ok(ms(3_000)));
        assert_eq!(parse_duration("0.25"), Ok(ms(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    /// Malformed, negative, unitless-in-the-middle and absurd inputs are refused with a
    /// message, never a panic.
    #[test]
    fn refuses_nonsense() {
        for bad in [
            "",
            "s",
            "10x",
            "-1s",
            "-3",
            "1.2.3s",
            "10 s",
            "ms10",
            "1e400",
            "NaN",
            "inf",
            "2y",
            "999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration("10x").unwrap_err().contains("10x"));
    }

    /// Reports show short durations in µs and long ones in seconds or minutes.
    #[test]
    fn formats_for_people() {
        assert_eq!(format_duration(Duration::from_nanos(850)), "850ns");
        assert_eq!(format_duration(Duration::from_micros(41)), "41µs");
        assert_eq!(format_duration(Duration::from_micros(1_100)), "1.10ms");
        assert_eq!(format_duration(Duration::from_micros(24_200)), "24.2ms");
        assert_eq!(format_duration(Duration::from_millis(4_200)), "4.20s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }

    proptest! {
        /// Random text never panics the parser.
        #[test]
        fn never_panics(text in "\\PC{0,12}") {
            let _ = parse_duration(&text);
        }

        /// Milliseconds written with the `ms` unit read back exactly.
        #[test]
        fn millis_round_trip(n in 0u64..10_000_000) {
            prop_assert_eq!(parse_duration(&format!("{n}ms")), Ok(Duration::from_millis(n)));
        }
    }
}
