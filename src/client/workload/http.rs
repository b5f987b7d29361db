//! HTTP/1.1 requests: `GET /` with `Host` and keep-alive. Responses are parsed with
//! `httparse` (status line and headers); the body is skipped by `Content-Length` or by
//! chunked framing, never buffered. A 4xx/5xx status is a counted failure, not a broken
//! stream; a malformed or unframed response ends the connection.

use super::{Exchange, Progress, ResponseError};
use crate::protocol::http::body::{Body, Framing, FramingError};
use crate::protocol::http::MAX_HEADERS;

/// Largest response head (status line and headers) held while it arrives: real servers
/// send well under 8 KiB; more is a broken or hostile server.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest chunk-size line or trailer section held while it arrives.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Where the response being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Status line and headers.
    Head,
    /// The body, skipped by the decoder the responder uses for request bodies.
    Body { body: Body, accepted: bool },
}

/// One connection's requests and the framing state of the response being read.
#[derive(Debug)]
pub struct HttpExchange {
    /// The request, built once per connection.
    request: Box<[u8]>,
    stage: Stage,
}

impl HttpExchange {
    pub fn new(host: &str) -> Self {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n");
        HttpExchange {
            request: request.into_bytes().into_boxed_slice(),
            stage: Stage::Head,
        }
    }

    fn read_head(&mut self, input: &[u8]) -> Result<Progress, ResponseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let used = match response.parse(input) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => {
                if input.len() > MAX_RESPONSE_HEAD {
                    return Err(ResponseError(format!(
                        "HTTP response head longer than {MAX_RESPONSE_HEAD} bytes"
                    )));
                }
                return Ok(Progress::NeedMore { used: 0 });
            }
            Err(e) => return Err(ResponseError(format!("malformed HTTP response: {e}"))),
        };
        let code = response.code.unwrap_or(0);
        if (100..200).contains(&code) {
            // An interim response (100 Continue): the real one follows.
            return Ok(Progress::NeedMore { used });
        }
        let accepted = code < 400;
        let mut framing = Framing::default();
        for header in response.headers.iter() {
            framing
                .add(header.name.as_bytes(), header.value)
                .map_err(framing_error)?;
        }
        let body = if code == 204 || code == 304 {
            Body::Done
        } else {
            framing.body().map_err(framing_error)?.ok_or_else(|| {
                ResponseError(
                    "HTTP response without Content-Length or chunked encoding (its end is the \
                     close, which keep-alive load cannot use)"
                        .into(),
                )
            })?
        };
        if body == Body::Done {
            return Ok(Progress::Done { used, accepted });
        }
        self.stage = Stage::Body { body, accepted };
        Ok(Progress::NeedMore { used })
    }
}

fn framing_error(e: FramingError) -> ResponseError {
    ResponseError(format!("HTTP response: {e}"))
}

impl Exchange for HttpExchange {
    fn write_request(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.request);
    }

    fn read_response(&mut self, input: &[u8]) -> Result<Progress, ResponseError> {
        let mut used = 0;
        // One response may span several stages; walk them while the bytes last.
        loop {
            let rest = &input[used..];
            match self.stage {
                Stage::Head => match self.read_head(rest)? {
                    // Nothing of the head is usable yet: keep it all for the next read.
                    Progress::NeedMore { used: 0 } => return Ok(Progress::NeedMore { used }),
                    // A head whose body follows, or an interim (1xx) response.
                    Progress::NeedMore { used: n } => used += n,
                    Progress::Done { used: n, accepted } => {
                        return Ok(Progress::Done {
                            used: used + n,
                            accepted,
                        })
                    }
                },
                Stage::Body { mut body, accepted } => {
                    used += body
                        .skip(rest, MAX_CHUNK_LINE)
                        .map_err(|e| ResponseError(format!("malformed HTTP response body: {e}")))?;
                    if body == Body::Done {
                        self.stage = Stage::Head;
                        return Ok(Progress::Done { used, accepted });
                    }
                    self.stage = Stage::Body { body, accepted };
                    return Ok(Progress::NeedMore { used });
                }
            }
            if used == input.len() {
                return Ok(Progress::NeedMore { used });
            }
        }
    }

    fn max_pending(&self) -> usize {
        MAX_RESPONSE_HEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXED: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n";
    const EMPTY: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    const CONTINUE_THEN_OK: &[u8] =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop";

    /// Feeds `stream` in the given pieces the way the generator does (keeping what was not
    /// used and showing it again with the next piece); returns each response's verdict.
    fn feed(exchange: &mut HttpExchange, pieces: &[&[u8]]) -> Result<Vec<bool>, ResponseError> {
        let mut verdicts = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in pieces {
            pending.extend_from_slice(piece);
            let mut at = 0;
            while at < pending.len() {
                match exchange.read_response(&pending[at..])? {
                    Progress::NeedMore { used } => {
                        at += used;
                        break;
                    }
                    Progress::Done { used, accepted } => {
                        verdicts.push(accepted);
                        at += used;
                    }
                }
            }
            assert!(pending.len() - at <= MAX_RESPONSE_HEAD);
            pending.drain(..at);
        }
        assert!(pending.is_empty(), "{} bytes left over", pending.len());
        Ok(verdicts)
    }

    fn all_responses() -> Vec<u8> {
        [FIXED, CHUNKED, EMPTY, CONTINUE_THEN_OK, NOT_FOUND, FIXED].concat()
    }

    const VERDICTS: [bool; 6] = [true, true, true, true, false, true];

    /// The request is a keep-alive `GET /` naming the host.
    #[test]
    fn request_is_get_with_host() {
        let mut out = Vec::new();
        HttpExchange::new("example.test:8080").write_request(&mut out);
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nHost: example.test:8080\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    /// Fixed-length, chunked, bodiless and interim responses back to back are all framed
    /// right when they arrive in one piece; a 404 is a failed but well-framed response.
    #[test]
    fn frames_every_kind_of_response() {
        let stream = all_responses();
        assert_eq!(
            feed(&mut HttpExchange::new("h"), &[&stream]),
            Ok(VERDICTS.to_vec())
        );
    }

    /// The same stream split at every point into two reads gives the same responses.
    #[test]
    fn every_split_point() {
        let stream = all_responses();
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(
                feed(&mut HttpExchange::new("h"), &[a, b]),
                Ok(VERDICTS.to_vec()),
                "split at {split}"
            );
        }
    }

    /// The same stream a byte at a time gives the same responses.
    #[test]
    fn byte_at_a_time() {
        let stream = all_responses();
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            feed(&mut HttpExchange::new("h"), &pieces),
            Ok(VERDICTS.to_vec())
        );
    }

    /// Responses whose end cannot be found, or that are not HTTP, end the connection.
    #[test]
    fn refuses_unframed_and_malformed() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\n\r\nbody until close"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            // The responder's rules: 1*DIGIT lengths, 1*HEXDIG chunk sizes.
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                feed(&mut HttpExchange::new("h"), &[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A head that never ends is refused once it passes the cap instead of growing.
    #[test]
    fn endless_head_is_capped() {
        let mut exchange = HttpExchange::new("h");
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() <= MAX_RESPONSE_HEAD {
            head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(exchange.read_response(&head).is_err());
    }

    proptest! {
        /// Random bytes never panic the parser, whatever the pieces.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), split in 0usize..512) {
            let split = split.min(bytes.len());
            let mut exchange = HttpExchange::new("h");
            let _ = exchange.read_response(&bytes[..split]);
            let _ = exchange.read_response(&bytes);
        }

        /// Any body length and chunking round-trips: one accepted response per message.
        #[test]
        fn random_bodies_frame(lengths in proptest::collection::vec(0usize..300, 1..6), chunk in 1usize..50) {
            let mut stream = Vec::new();
            for (i, len) in lengths.iter().enumerate() {
                if i % 2 == 0 {
                    stream.extend_from_slice(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes());
                    stream.extend_from_slice(&vec![b'x'; *len]);
                } else {
                    stream.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                    for part in vec![b'y'; *len].chunks(chunk) {
                        stream.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                        stream.extend_from_slice(part);
                        stream.extend_from_slice(b"\r\n");
                    }
                    stream.extend_from_slice(b"0\r\n\r\n");
                }
            }
            let pieces: Vec<&[u8]> = stream.chunks(chunk).collect();
            prop_assert_eq!(feed(&mut HttpExchange::new("h"), &pieces), Ok(vec![true; lengths.len()]));
        }
    }
}
