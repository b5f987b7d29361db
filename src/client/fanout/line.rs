//! The text of a fan-out line, as a sender writes it and as a member finds it inside the
//! server's `[NAME] text` (or `[NAME] STAMP text` with `--timestamps`): a header of fixed
//! width carrying the sender, its sequence number and the send times, then padding up to
//! `--size`. The server relays the text unchanged, so a member needs nothing but the line
//! to say who sent it, which of that sender's lines it is, and how long it took.

/// `#`, then in lowercase hex: the sender (8 digits), `.`, the sequence number (12), `.`,
/// the intended send time (12), `.`, the actual send time (12), both in nanoseconds since
/// the run's epoch (12 hex digits last 78 hours).
pub const HEADER_LEN: usize = 1 + 8 + 1 + 12 + 1 + 12 + 1 + 12;

/// A probe: `#p` and the sender (8 hex digits). Senders send them until every member has
/// heard one, so that nothing is counted before the whole room is listening.
pub const PROBE_LEN: usize = 2 + 8;

/// The marker that starts the text: no nick, address, room name or timestamp has it, so
/// the first one in a relayed line is ours.
const MARK: u8 = b'#';

/// What a line's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sender: u32,
    pub seq: u64,
    /// When the line was due (the schedule with `--rate`; otherwise when it was sent).
    pub intended_ns: u64,
    /// When it was handed to the sender's socket.
    pub sent_ns: u64,
}

/// What a line received from the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// One of the run's lines.
    Line(Header),
    /// A sender's probe.
    Probe(u32),
    /// A notice (`* ...`): joins, leaves, answers to commands.
    Notice,
    /// An error the server reported (`! ...`).
    Error,
    /// Somebody else's line (no marker): not part of the run.
    Foreign,
    /// Marked, but not a header of ours, or not `size` bytes long: corrupted on the way.
    Garbled,
}

/// Appends the text of a line (`size` bytes, at least [`HEADER_LEN`]) and its `\n`.
pub fn encode(header: &Header, size: usize, buf: &mut Vec<u8>) {
    debug_assert!(size >= HEADER_LEN);
    buf.push(MARK);
    put_hex(buf, u64::from(header.sender), 8);
    buf.push(b'.');
    put_hex(buf, header.seq, 12);
    buf.push(b'.');
    put_hex(buf, header.intended_ns, 12);
    buf.push(b'.');
    put_hex(buf, header.sent_ns, 12);
    buf.resize(buf.len() + (size - HEADER_LEN), b'x');
    buf.push(b'\n');
}

/// Appends a probe line of `sender` and its `\n`.
pub fn encode_probe(sender: u32, buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"#p");
    put_hex(buf, u64::from(sender), 8);
    buf.push(b'\n');
}

/// Reads one line as the server relays it (without its line end); `size` is the text's
/// length every line of the run has.
pub fn parse(line: &[u8], size: usize) -> Received {
    match line.first() {
        Some(b'*') => return Received::Notice,
        Some(b'!') => return Received::Error,
        _ => {}
    }
    let Some(at) = line.iter().position(|&b| b == MARK) else {
        return Received::Foreign;
    };
    let text = &line[at..];
    if let Some(sender) = text.strip_prefix(b"#p") {
        return match (sender.len() == PROBE_LEN - 2, get_hex(sender)) {
            (true, Some(sender)) => Received::Probe(sender as u32),
            _ => Received::Garbled,
        };
    }
    if text.len() != size || size < HEADER_LEN {
        return Received::Garbled;
    }
    let field = |from: usize, len: usize| get_hex(&text[from..from + len]);
    let dots = text[9] == b'.' && text[22] == b'.' && text[35] == b'.';
    match (
        dots,
        field(1, 8),
        field(10, 12),
        field(23, 12),
        field(36, 12),
    ) {
        (true, Some(sender), Some(seq), Some(intended_ns), Some(sent_ns)) => {
            Received::Line(Header {
                sender: sender as u32,
                seq,
                intended_ns,
                sent_ns,
            })
        }
        _ => Received::Garbled,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `value` in `width` lowercase hex digits (its low bits, if it is wider).
fn put_hex(buf: &mut Vec<u8>, value: u64, width: usize) {
    for i in (0..width).rev() {
        buf.push(HEX[((value >> (4 * i)) & 0xf) as usize]);
    }
}

/// Lowercase hex digits as a number; `None` for anything else or more than 16 digits.
fn get_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header {
            sender: 3,
            seq: 41,
            intended_ns: 1_000_000,
            sent_ns: 1_000_250,
        }
    }

    /// A line is `size` bytes of text and a line end, and reads back as what was written
    /// under any name the server puts before it, stamped or not.
    #[test]
    fn round_trip_under_every_prefix() {
        let mut buf = Vec::new();
        encode(&header(), 64, &mut buf);
        assert_eq!(buf.len(), 65);
        assert_eq!(
            &buf[..HEADER_LEN],
            b"#00000003.000000000029.0000000f4240.0000000f433a"
        );
        let text = &buf[..64];
        for prefix in [
            "[127.0.0.1:4000] ",
            "[[::1]:4000] ",
            "[bee] ",
            "[bee] 2026/12/02-18:30:05 ",
        ] {
            let line = [prefix.as_bytes(), text].concat();
            assert_eq!(parse(&line, 64), Received::Line(header()), "{prefix}");
        }
    }

    /// Probes, notices, errors and other people's lines are told apart; a marked line of
    /// the wrong length or with a bad digit is garbled, not miscounted.
    #[test]
    fn everything_else_is_told_apart() {
        let mut probe = b"[a] ".to_vec();
        encode_probe(7, &mut probe);
        probe.pop();
        assert_eq!(parse(&probe, 64), Received::Probe(7));
        assert_eq!(parse(b"* a joined", 64), Received::Notice);
        assert_eq!(parse(b"! line too long", 64), Received::Error);
        assert_eq!(parse(b"[a] hello", 64), Received::Foreign);
        let mut line = b"[a] ".to_vec();
        encode(&header(), 64, &mut line);
        line.pop();
        assert_eq!(parse(&line[..line.len() - 1], 64), Received::Garbled);
        assert_eq!(parse(&line, 65), Received::Garbled);
        let mut bad = line.clone();
        bad[4 + 12] = b'g';
        assert_eq!(parse(&bad, 64), Received::Garbled);
        assert_eq!(parse(b"[a] #pzz", 64), Received::Garbled);
    }

    proptest! {
        /// Whatever the header's values (within their widths) and the size, it reads back.
        #[test]
        fn any_header_reads_back(
            sender in any::<u32>(),
            seq in 0u64..1 << 48,
            intended_ns in 0u64..1 << 48,
            sent_ns in 0u64..1 << 48,
            size in HEADER_LEN..400,
        ) {
            let header = Header { sender, seq, intended_ns, sent_ns };
            let mut buf = b"[x] ".to_vec();
            encode(&header, size, &mut buf);
            prop_assert_eq!(buf.pop(), Some(b'\n'));
            prop_assert_eq!(buf.len(), 4 + size);
            prop_assert_eq!(parse(&buf, size), Received::Line(header));
        }

        /// No input makes the parser panic.
        #[test]
        fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..120), size in 0usize..120) {
            let _ = parse(&line, size);
        }
    }
}
