//! Echo requests: `size` pseudo-random bytes, expected back unchanged. Each connection
//! builds one pattern of `size + WINDOWS - 1` bytes from its own seed, and request number
//! `n` is the window starting at `n % WINDOWS`, so consecutive requests differ (a stale or
//! reordered echo is caught) while nothing is stored or allocated per request.

use super::{Answer, Exchange, Progress, ResponseError};

/// Distinct requests per connection before the windows repeat; prime, so it does not
/// line up with pipelines of power-of-two depth.
const WINDOWS: usize = 251;

/// One connection's echo payloads and how far the current response has been checked.
#[derive(Debug)]
pub struct EchoExchange {
    /// Pseudo-random bytes; request `n` is `pattern[n % WINDOWS..][..size]`.
    pattern: Box<[u8]>,
    size: usize,
    /// Window of the next request to write.
    next_request: usize,
    /// Window of the response being read, and how many of its bytes have been checked.
    response: usize,
    checked: usize,
}

impl EchoExchange {
    /// `size` must be at least 1.
    pub fn new(size: usize, seed: u64) -> Self {
        let size = size.max(1);
        let mut state = seed | 1;
        let pattern = (0..size + WINDOWS - 1)
            .map(|_| {
                // xorshift64: cheap and good enough to make every window different.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        EchoExchange {
            pattern,
            size,
            next_request: 0,
            response: 0,
            checked: 0,
        }
    }

    fn window(&self, index: usize) -> &[u8] {
        &self.pattern[index..index + self.size]
    }
}

impl Exchange for EchoExchange {
    fn write_request(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.window(self.next_request));
        self.next_request = (self.next_request + 1) % WINDOWS;
    }

    fn read_response(&mut self, input: &[u8]) -> Result<Progress, ResponseError> {
        let expected = &self.window(self.response)[self.checked..];
        let n = expected.len().min(input.len());
        if input[..n] != expected[..n] {
            let at = input
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(ResponseError(format!(
                "echo mismatch at byte {} of a {}-byte message: got {:#04x}, sent {:#04x}",
                self.checked + at,
                self.size,
                input[at],
                expected[at]
            )));
        }
        self.checked += n;
        if self.checked < self.size {
            return Ok(Progress::NeedMore { used: n });
        }
        self.checked = 0;
        self.response = (self.response + 1) % WINDOWS;
        Ok(Progress::Done {
            used: n,
            answer: Answer::plain(true),
        })
    }

    fn max_pending(&self) -> usize {
        // Every byte is checked as it arrives; nothing is ever held back.
        0
    }

    fn mid_response(&self) -> bool {
        self.checked > 0
    }

    fn reset(&mut self) {
        self.response = self.next_request;
        self.checked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(exchange: &mut EchoExchange, count: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..count {
            exchange.write_request(&mut out);
        }
        out
    }

    /// Feeds `stream` in pieces of `piece` bytes; returns how many responses completed.
    fn feed(
        exchange: &mut EchoExchange,
        stream: &[u8],
        piece: usize,
    ) -> Result<usize, ResponseError> {
        let mut done = 0;
        for chunk in stream.chunks(piece) {
            let mut rest = chunk;
            while !rest.is_empty() {
                match exchange.read_response(rest)? {
                    Progress::NeedMore { used } => {
                        assert_eq!(used, rest.len(), "echo never holds bytes back");
                        rest = &[];
                    }
                    Progress::Done { used, answer } => {
                        assert!(answer.accepted);
                        done += 1;
                        rest = &rest[used..];
                    }
                }
            }
        }
        Ok(done)
    }

    /// Requests are `size` bytes, consecutive ones differ, and the sequence repeats only
    /// after `WINDOWS` requests.
    #[test]
    fn requests_differ_and_cycle() {
        let mut exchange = EchoExchange::new(64, 7);
        let out = requests(&mut exchange, WINDOWS + 1);
        assert_eq!(out.len(), 64 * (WINDOWS + 1));
        let messages: Vec<&[u8]> = out.chunks(64).collect();
        assert_ne!(messages[0], messages[1]);
        assert_eq!(messages[0], messages[WINDOWS]);
        let other = requests(&mut EchoExchange::new(64, 8), 1);
        assert_ne!(
            &other[..],
            messages[0],
            "another seed gives another payload"
        );
    }

    /// The exact echo of pipelined requests verifies whether it arrives whole, split at
    /// any point, or a byte at a time.
    #[test]
    fn exact_echo_verifies_at_every_split() {
        let stream = requests(&mut EchoExchange::new(10, 3), 5);
        for piece in 1..=stream.len() {
            let mut exchange = EchoExchange::new(10, 3);
            assert_eq!(
                feed(&mut exchange, &stream, piece),
                Ok(5),
                "pieces of {piece}"
            );
        }
        for split in 0..=stream.len() {
            let mut exchange = EchoExchange::new(10, 3);
            let (a, b) = stream.split_at(split);
            let done = feed(&mut exchange, a, a.len().max(1)).unwrap()
                + feed(&mut exchange, b, b.len().max(1)).unwrap();
            assert_eq!(done, 5, "split at {split}");
        }
    }

    /// One corrupted byte anywhere is reported with its position in the message.
    #[test]
    fn any_corrupted_byte_is_a_mismatch() {
        let stream = requests(&mut EchoExchange::new(10, 3), 3);
        for at in 0..stream.len() {
            let mut bad = stream.clone();
            bad[at] ^= 0x01;
            let err = feed(&mut EchoExchange::new(10, 3), &bad, 4).unwrap_err();
            assert!(
                err.0
                    .contains(&format!("at byte {} of a 10-byte message", at % 10)),
                "{err}"
            );
        }
    }

    /// An echo of the previous request instead of the current one is caught.
    #[test]
    fn stale_echo_is_a_mismatch() {
        let mut writer = EchoExchange::new(16, 9);
        let first = requests(&mut writer, 1);
        let mut reader = EchoExchange::new(16, 9);
        assert_eq!(feed(&mut reader, &first, 16), Ok(1));
        assert!(feed(&mut reader, &first, 16).is_err());
    }
}
