//! The pure parts of serving static files over HTTP: the request target as a path beneath
//! the root, a single byte range (RFC 9110 §14), validators (`If-Modified-Since`,
//! `If-Range`) and the media type from the extension. No I/O: the responder opens files
//! through [`crate::root::Root`] and queues them for sendfile.

use std::time::{SystemTime, UNIX_EPOCH};

use super::body::{parse_decimal, trim_ows};
use crate::root::{Refusal, MAX_PATH};

/// What a `Range` header asks of a representation of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range (absent, malformed, several ranges, another unit): the whole
    /// representation, 200. RFC 9110 §14.2 lets a server ignore a Range it will not serve.
    Whole,
    /// Bytes `first..=last`, 206.
    Part { first: u64, last: u64 },
    /// A well-formed range that selects nothing of this size: 416.
    Unsatisfiable,
}

/// Parses a `Range` value (`bytes=a-b`, `bytes=a-`, `bytes=-n`) against `size`.
pub fn parse_range(value: &[u8], size: u64) -> RangeRequest {
    let value = trim_ows(value);
    let Some(eq) = value.iter().position(|&b| b == b'=') else {
        return RangeRequest::Whole;
    };
    let (unit, set) = (trim_ows(&value[..eq]), &value[eq + 1..]);
    // Only one range: several would need a multipart/byteranges body.
    if !unit.eq_ignore_ascii_case(b"bytes") || set.contains(&b',') {
        return RangeRequest::Whole;
    }
    let spec = trim_ows(set);
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (trim_ows(&spec[..dash]), trim_ows(&spec[dash + 1..]));
    match (parse_decimal(first), parse_decimal(last)) {
        // `-n`: the last n bytes; a suffix of zero selects nothing.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    first: size - n.min(size),
                    last: size - 1,
                }
            }
        }
        // `a-`: from a to the end.
        (Some(a), None) if last.is_empty() => part_from(a, size.saturating_sub(1), size),
        // `a-b`: b before a makes the header invalid (ignored), a past the end 416.
        (Some(a), Some(b)) if a <= b => part_from(a, b.min(size.saturating_sub(1)), size),
        _ => RangeRequest::Whole,
    }
}

fn part_from(first: u64, last: u64, size: u64) -> RangeRequest {
    if first >= size {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Part { first, last }
    }
}

/// Seconds since the epoch of a modification time, as HTTP dates carry them.
pub fn http_seconds(time: SystemTime) -> Option<u64> {
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Whether a file modified at `modified` is unchanged since the `If-Modified-Since` date
/// (an unparsable date is no condition, RFC 9110 §13.1.3).
pub fn not_modified_since(value: &[u8], modified: Option<SystemTime>) -> bool {
    match (parse_date(value), modified.and_then(http_seconds)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Whether an `If-Range` value lets the range apply: only a date equal to the file's
/// modification time (we send no entity tags, so any tag is a mismatch).
pub fn if_range_matches(value: &[u8], modified: Option<SystemTime>) -> bool {
    match (parse_date(value), modified.and_then(http_seconds)) {
        (Some(date), Some(modified)) => date == modified,
        _ => false,
    }
}

fn parse_date(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(trim_ows(value)).ok()?;
    httpdate::parse_http_date(text).ok().and_then(http_seconds)
}

/// Puts the path a request target names, relative to the root, into `path`: the query and
/// fragment dropped, percent-escapes decoded, the leading `/` removed (`.` for the root
/// itself). Absolute-form (`http://host/p`) is taken by its path.
pub fn target_path(target: &str, path: &mut Vec<u8>) -> Result<(), Refusal> {
    path.clear();
    let mut target = target.as_bytes();
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            target = rest
                .iter()
                .position(|&b| b == b'/')
                .map_or(&b"/"[..], |at| &rest[at..]);
        }
    }
    let end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let Some((b'/', target)) = target[..end].split_first() else {
        return Err(Refusal::InvalidPath);
    };
    let mut bytes = target.iter();
    while let Some(&b) = bytes.next() {
        let byte = if b == b'%' {
            let hi = bytes.next().and_then(|&h| (h as char).to_digit(16));
            let lo = bytes.next().and_then(|&l| (l as char).to_digit(16));
            match (hi, lo) {
                (Some(hi), Some(lo)) => (hi * 16 + lo) as u8,
                _ => return Err(Refusal::InvalidPath),
            }
        } else {
            b
        };
        if byte == 0 || path.len() == MAX_PATH {
            return Err(Refusal::InvalidPath);
        }
        path.push(byte);
    }
    if path.is_empty() {
        path.push(b'.');
    }
    Ok(())
}

/// The `Content-Type` for a file name, from its extension; unknown types are bytes.
pub fn content_type(path: &[u8]) -> &'static str {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    let Some(dot) = name.iter().rposition(|&b| b == b'.') else {
        return "application/octet-stream";
    };
    let ext = &name[dot + 1..];
    let mut lower = [0u8; 8];
    if ext.len() > lower.len() {
        return "application/octet-stream";
    }
    for (l, e) in lower.iter_mut().zip(ext) {
        *l = e.to_ascii_lowercase();
    }
    match &lower[..ext.len()] {
        b"html" | b"htm" => "text/html",
        b"css" => "text/css",
        b"js" | b"mjs" => "application/javascript",
        b"json" => "application/json",
        b"txt" => "text/plain",
        b"xml" => "text/xml",
        b"csv" => "text/csv",
        b"md" => "text/markdown",
        b"svg" => "image/svg+xml",
        b"png" => "image/png",
        b"jpg" | b"jpeg" => "image/jpeg",
        b"gif" => "image/gif",
        b"webp" => "image/webp",
        b"ico" => "image/x-icon",
        b"pdf" => "application/pdf",
        b"wasm" => "application/wasm",
        b"woff" => "font/woff",
        b"woff2" => "font/woff2",
        b"mp4" => "video/mp4",
        b"mp3" => "audio/mpeg",
        b"zip" => "application/zip",
        b"gz" => "application/gzip",
        b"tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    use RangeRequest::{Part, Unsatisfiable, Whole};

    /// Every form of a single range, at the edges of a 100-byte file.
    #[test]
    fn single_ranges() {
        let cases: [(&[u8], RangeRequest); 20] = [
            (b"bytes=0-0", Part { first: 0, last: 0 }),
            (b"bytes=0-99", Part { first: 0, last: 99 }),
            (b"bytes=0-1000", Part { first: 0, last: 99 }),
            (
                b"bytes=10-19",
                Part {
                    first: 10,
                    last: 19,
                },
            ),
            (
                b"bytes=99-",
                Part {
                    first: 99,
                    last: 99,
                },
            ),
            (b"bytes=0-", Part { first: 0, last: 99 }),
            (
                b"bytes=-1",
                Part {
                    first: 99,
                    last: 99,
                },
            ),
            (b"bytes=-100", Part { first: 0, last: 99 }),
            (b"bytes=-1000", Part { first: 0, last: 99 }),
            (b"BYTES = 5 - 6 ", Part { first: 5, last: 6 }),
            (b"bytes=100-", Unsatisfiable),
            (b"bytes=100-200", Unsatisfiable),
            (b"bytes=-0", Unsatisfiable),
            (b"bytes=20-10", Whole),
            (b"bytes=0-1,5-6", Whole),
            (b"items=0-1", Whole),
            (b"bytes=a-b", Whole),
            (b"bytes=-", Whole),
            (b"bytes=1", Whole),
            (b"bytes=+1-2", Whole),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_range(value, 100),
                expected,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        assert_eq!(parse_range(b"bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-5", 0), Unsatisfiable);
        assert_eq!(
            parse_range(b"bytes=18446744073709551616-", 100),
            Whole,
            "overflow"
        );
    }

    proptest! {
        /// Whatever the header, a part lies inside the file and is not empty.
        #[test]
        fn parts_lie_inside(value in "[ -~]{0,24}", size in 0u64..1000) {
            if let Part { first, last } = parse_range(value.as_bytes(), size) {
                prop_assert!(first <= last && last < size);
            }
        }
    }

    /// The target's path: query dropped, escapes decoded, the root as `.`; escapes that
    /// are not two hex digits, NUL and targets that are not paths are refused.
    #[test]
    fn target_paths() {
        let mut path = Vec::new();
        let cases: [(&str, Result<&[u8], Refusal>); 11] = [
            ("/", Ok(b".")),
            ("/a/b.txt", Ok(b"a/b.txt")),
            ("/a%20b?x=1", Ok(b"a b")),
            ("/sub/#frag", Ok(b"sub/")),
            ("/%2e%2E/secret", Ok(b"../secret")),
            ("http://example.com/x", Ok(b"x")),
            ("HTTP://example.com", Ok(b".")),
            ("/a%2", Err(Refusal::InvalidPath)),
            ("/a%zz", Err(Refusal::InvalidPath)),
            ("/a%00b", Err(Refusal::InvalidPath)),
            ("*", Err(Refusal::InvalidPath)),
        ];
        for (target, expected) in cases {
            let got = target_path(target, &mut path).map(|()| path.as_slice());
            assert_eq!(got, expected, "{target}");
        }
    }

    /// Dates compare by the second; anything unparsable is no condition.
    #[test]
    fn validators() {
        let modified = UNIX_EPOCH + Duration::from_millis(784_111_777_500);
        let same = b"Sun, 06 Nov 1994 08:49:37 GMT";
        let later = b"Sun, 06 Nov 1994 08:49:38 GMT";
        let earlier = b"Sun, 06 Nov 1994 08:49:36 GMT";
        assert!(not_modified_since(same, Some(modified)));
        assert!(not_modified_since(later, Some(modified)));
        assert!(!not_modified_since(earlier, Some(modified)));
        assert!(!not_modified_since(b"yesterday", Some(modified)));
        assert!(!not_modified_since(same, None));
        assert!(if_range_matches(same, Some(modified)));
        assert!(!if_range_matches(later, Some(modified)));
        assert!(!if_range_matches(b"\"etag\"", Some(modified)));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(b"index.html"), "text/html");
        assert_eq!(content_type(b"a/B.JPG"), "image/jpeg");
        assert_eq!(content_type(b"a.tar.gz"), "application/gzip");
        assert_eq!(content_type(b"dir.d/README"), "application/octet-stream");
        assert_eq!(content_type(b"x.verylongext"), "application/octet-stream");
    }
}
