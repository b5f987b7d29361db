//! Line framing, as the line-based protocols on both sides use it: chat and the file
//! server read request lines, the file client reads the server's header line. A line ends
//! at `\n`, with an optional `\r` before it; its length is bounded by the caller's limit.

/// What the front of some input holds, line-wise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line: its text without the line end, and the bytes it takes with it.
    Complete(&'a [u8], usize),
    /// No line end yet, and what has come can still become a line within the limit.
    Incomplete,
    /// Longer than the limit: the text of a whole line, or what has come of an unfinished
    /// one, is at least this many bytes.
    TooLong(usize),
}

/// The first line of `input`, refused when its text (line end excluded) passes `max`.
/// An unfinished line may hold `max + 1` bytes: its text and a `\r` waiting for its `\n`.
#[inline]
pub fn next_line(input: &[u8], max: usize) -> Line<'_> {
    let Some(end) = input.iter().position(|&b| b == b'\n') else {
        return if input.len() > max.saturating_add(1) {
            Line::TooLong(input.len())
        } else {
            Line::Incomplete
        };
    };
    let text = &input[..end];
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.len() > max {
        return Line::TooLong(text.len());
    }
    Line::Complete(text, end + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Both line ends are taken; the text excludes them; what follows is left alone.
    #[test]
    fn lines_and_their_ends() {
        assert_eq!(next_line(b"abc\nrest", 10), Line::Complete(b"abc", 4));
        assert_eq!(next_line(b"abc\r\nrest", 10), Line::Complete(b"abc", 5));
        assert_eq!(next_line(b"\n", 0), Line::Complete(b"", 1));
        // A lone `\r` inside a line is text.
        assert_eq!(next_line(b"a\rb\n", 10), Line::Complete(b"a\rb", 4));
        assert_eq!(next_line(b"", 10), Line::Incomplete);
        assert_eq!(next_line(b"abc", 10), Line::Incomplete);
    }

    /// The limit is on the text: exactly `max` is a line, one more is refused, whether the
    /// line is whole or still arriving (where a trailing `\r` is allowed for).
    #[test]
    fn the_limit_is_on_the_text() {
        assert_eq!(next_line(b"abcd\r\n", 4), Line::Complete(b"abcd", 6));
        assert_eq!(next_line(b"abcde\n", 4), Line::TooLong(5));
        assert_eq!(next_line(b"abcd\r", 4), Line::Incomplete);
        assert_eq!(next_line(b"abcde\r", 4), Line::TooLong(6));
        assert_eq!(next_line(b"abcdef", usize::MAX), Line::Incomplete);
    }

    proptest! {
        /// Whatever the bytes, a complete line's length points just past its `\n`, and its
        /// text is the input before it, less one `\r`.
        #[test]
        fn complete_lines_are_exact(input in prop::collection::vec(any::<u8>(), 0..64), max in 0usize..80) {
            match next_line(&input, max) {
                Line::Complete(text, len) => {
                    prop_assert_eq!(input[len - 1], b'\n');
                    prop_assert!(!input[..len - 1].contains(&b'\n'));
                    prop_assert!(text.len() <= max);
                    prop_assert!(input[..len - 1].starts_with(text));
                }
                Line::Incomplete => prop_assert!(!input.contains(&b'\n') && input.len() <= max + 1),
                Line::TooLong(len) => prop_assert!(len > max),
            }
        }
    }
}
