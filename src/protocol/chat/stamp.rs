//! `--timestamps`: the local time as seed 004 stamps each line
//! (`datetime.now().strftime("%Y/%m/%d-%H:%M:%S")`), formatted once per second.

use std::time::{SystemTime, UNIX_EPOCH};

/// `YYYY/MM/DD-HH:MM:SS ` (with the space that follows it on a line).
pub const STAMP_LEN: usize = 20;

/// The last second formatted and its text.
#[derive(Debug, Clone, Default)]
pub struct Stamp {
    second: Option<i64>,
    text: [u8; STAMP_LEN],
}

impl Stamp {
    /// The stamp for `now`, formatted again only when the second has changed.
    pub fn at(&mut self, now: SystemTime) -> &[u8; STAMP_LEN] {
        let second = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        if self.second != Some(second) {
            self.second = Some(second);
            self.text = format_local(second);
        }
        &self.text
    }
}

/// `second` (since the epoch) as local time, the way `strftime("%Y/%m/%d-%H:%M:%S ")` does.
fn format_local(second: i64) -> [u8; STAMP_LEN] {
    // SAFETY: localtime_r only writes the struct we pass; a zeroed `tm` is a valid value.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let t = second as libc::time_t;
        if libc::localtime_r(&t, &mut tm).is_null() {
            return *b"????/??/??-??:??:?? ";
        }
        tm
    };
    let mut text = [0u8; STAMP_LEN];
    let year = i64::from(tm.tm_year) + 1900;
    let fields = [
        (year.clamp(0, 9999), 4),
        (i64::from(tm.tm_mon) + 1, 2),
        (i64::from(tm.tm_mday), 2),
        (i64::from(tm.tm_hour), 2),
        (i64::from(tm.tm_min), 2),
        (i64::from(tm.tm_sec), 2),
    ];
    let mut at = 0;
    for (i, (value, width)) in fields.into_iter().enumerate() {
        let mut v = value;
        for d in (0..width).rev() {
            text[at + d] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += width;
        text[at] = [b'/', b'/', b'-', b':', b':', b' '][i];
        at += 1;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The stamp has the seed's shape, and moves with the clock.
    #[test]
    fn shape_and_progress() {
        let mut stamp = Stamp::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = *stamp.at(t);
        let text = std::str::from_utf8(&a).unwrap();
        let shape: String = text
            .chars()
            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
            .collect();
        assert_eq!(shape, "dddd/dd/dd-dd:dd:dd ");
        assert!(text.starts_with("2023/11/1"), "{text}");
        // The same second is not formatted again; the next one differs in its seconds.
        assert_eq!(*stamp.at(t + Duration::from_millis(500)), a);
        let b = *stamp.at(t + Duration::from_secs(1));
        let sec = |s: &[u8; STAMP_LEN]| (s[17] - b'0') * 10 + (s[18] - b'0');
        assert_eq!((sec(&a) + 1) % 60, sec(&b));
    }
}
