//! How an HTTP/1.1 message body is framed, for both sides of the crate: the responder
//! skips request bodies, the load generator skips response bodies. The framing fields of
//! a head (`Content-Length` as `1*DIGIT`, `Transfer-Encoding` ending in `chunked`) decide
//! a [`Body`], and the chunked coding (RFC 9112 §7.1) is one pure decoder over bytes.

use std::fmt;

use httparse::Status;

use super::MAX_HEADERS;

/// Why a head's framing fields leave the body's length unknown. Either side has to close:
/// a server cannot tell where the next request starts, a client where the next response does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// A Content-Length element that is not `1*DIGIT` (a sign, a space, empty, too large).
    InvalidLength,
    /// Content-Length values that disagree (RFC 9110 §8.6).
    ConflictingLengths,
    /// Both Transfer-Encoding and Content-Length (RFC 9112 §6.1): how request smuggling starts.
    BothLengths,
    /// Transfer-Encoding whose final coding is not `chunked`: no length at all.
    NotChunked,
}

impl FramingError {
    pub fn as_str(self) -> &'static str {
        match self {
            FramingError::InvalidLength => "invalid Content-Length",
            FramingError::ConflictingLengths => "conflicting Content-Length values",
            FramingError::BothLengths => "both Transfer-Encoding and Content-Length",
            FramingError::NotChunked => "chunked is not the final transfer coding",
        }
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The framing fields of one head, gathered field by field.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// The last coding named by the Transfer-Encoding fields so far is `chunked`.
    chunked_last: bool,
}

impl Framing {
    /// Takes one header field; returns whether it was a framing field. A Content-Length
    /// may be a list, and may repeat, only when every value agrees.
    pub fn add(&mut self, name: &[u8], value: &[u8]) -> Result<bool, FramingError> {
        if name.eq_ignore_ascii_case(b"content-length") {
            // An empty value is one empty element, which is no number.
            for element in value.split(|&b| b == b',').map(trim_ows) {
                let n = parse_decimal(element).ok_or(FramingError::InvalidLength)?;
                if self.content_length.is_some_and(|seen| seen != n) {
                    return Err(FramingError::ConflictingLengths);
                }
                self.content_length = Some(n);
            }
            Ok(true)
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            if let Some(last) = list_elements(value).last() {
                self.chunked_last = last.eq_ignore_ascii_case(b"chunked");
            }
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Whether a Transfer-Encoding field was seen.
    pub fn has_transfer_encoding(&self) -> bool {
        self.transfer_encoding
    }

    /// The body the fields call for; `None` when they give no length (a request then has
    /// no body; a response would end only at the close).
    pub fn body(&self) -> Result<Option<Body>, FramingError> {
        match (self.transfer_encoding, self.content_length) {
            (true, Some(_)) => Err(FramingError::BothLengths),
            (true, None) if self.chunked_last => Ok(Some(Body::CHUNKED)),
            (true, None) => Err(FramingError::NotChunked),
            (false, length) => Ok(length.map(Body::length)),
        }
    }
}

/// `1*DIGIT` as a u64; anything else (sign, space, overflow, empty) is `None`.
pub fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// The comma-separated elements of a header value, trimmed of optional whitespace,
/// empty ones skipped (RFC 9110 §5.6.1).
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// `bytes` without leading and trailing spaces and tabs.
pub fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// The part of a message's body still to be read (and discarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// None: the next bytes start the next message.
    Done,
    /// `Content-Length` framing: this many bytes remain.
    Length(u64),
    Chunked(ChunkStage),
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStage {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes remain.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section up to its blank line.
    Trailers,
}

/// Broken chunked framing: the rest of the stream cannot be read as messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// A chunk-size line that is not `1*HEXDIG [ext] CRLF`.
    ChunkSize,
    ChunkSizeTooLong,
    /// Chunk data not followed by CRLF.
    DataEnd,
    TrailersTooLong,
    /// A trailer section that is not header fields and a blank line.
    Trailers,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyError::ChunkSize => "invalid chunk size line",
            BodyError::ChunkSizeTooLong => "chunk size line over the limit",
            BodyError::DataEnd => "chunk data not followed by CRLF",
            BodyError::TrailersTooLong => "trailer section over the limit",
            BodyError::Trailers => "malformed trailer section",
        })
    }
}

impl Body {
    /// The start of a chunked body.
    pub const CHUNKED: Body = Body::Chunked(ChunkStage::Size);

    /// A body of `n` bytes by Content-Length.
    pub fn length(n: u64) -> Body {
        if n == 0 {
            Body::Done
        } else {
            Body::Length(n)
        }
    }

    /// Discards body bytes from the front of `input` and returns how many it used. On
    /// return the body is `Done`, or all of `input` was used but an unfinished chunk-size
    /// line or trailer section, which is to be presented again with more bytes; that part
    /// may hold at most `max_line` bytes.
    #[inline]
    pub fn skip(&mut self, input: &[u8], max_line: usize) -> Result<usize, BodyError> {
        self.read(input, max_line, |_| {})
    }

    /// Like [`Self::skip`], handing each piece of the body's data (the content, without
    /// chunk framing) to `data` in order: how a client checks a body it knows.
    #[inline]
    pub fn read(
        &mut self,
        input: &[u8],
        max_line: usize,
        data: impl FnMut(&[u8]),
    ) -> Result<usize, BodyError> {
        if *self == Body::Done {
            return Ok(0);
        }
        self.read_some(input, max_line, data)
    }

    fn read_some(
        &mut self,
        input: &[u8],
        max_line: usize,
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, BodyError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match *self {
                Body::Done => return Ok(used),
                Body::Length(remaining) | Body::Chunked(ChunkStage::Data(remaining)) => {
                    let take = remaining.min(rest.len() as u64);
                    data(&rest[..take as usize]);
                    used += take as usize;
                    let left = remaining - take;
                    *self = match (*self, left) {
                        (Body::Length(_), 0) => Body::Done,
                        (Body::Length(_), _) => Body::Length(left),
                        (_, 0) => Body::Chunked(ChunkStage::DataEnd),
                        (_, _) => Body::Chunked(ChunkStage::Data(left)),
                    };
                    if left > 0 {
                        return Ok(used);
                    }
                }
                Body::Chunked(ChunkStage::Size) => match httparse::parse_chunk_size(rest) {
                    // httparse reads an empty size line as 0; the grammar wants a digit.
                    Ok(Status::Complete((n, size)))
                        if rest.first().is_some_and(u8::is_ascii_hexdigit) =>
                    {
                        used += n;
                        *self = Body::Chunked(if size == 0 {
                            ChunkStage::Trailers
                        } else {
                            ChunkStage::Data(size)
                        });
                    }
                    Ok(Status::Complete(_)) | Err(_) => return Err(BodyError::ChunkSize),
                    Ok(Status::Partial) if rest.len() > max_line => {
                        return Err(BodyError::ChunkSizeTooLong)
                    }
                    Ok(Status::Partial) => return Ok(used),
                },
                Body::Chunked(ChunkStage::DataEnd) => match rest {
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        *self = Body::CHUNKED;
                    }
                    [] | [b'\r'] => return Ok(used),
                    _ => return Err(BodyError::DataEnd),
                },
                Body::Chunked(ChunkStage::Trailers) => {
                    let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(rest, &mut trailers) {
                        Ok(Status::Complete((n, _))) if n <= max_line => {
                            used += n;
                            *self = Body::Done;
                        }
                        Ok(Status::Partial) if rest.len() <= max_line => return Ok(used),
                        Ok(_) => return Err(BodyError::TrailersTooLong),
                        Err(_) => return Err(BodyError::Trailers),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 64;

    /// The framing a head of these fields calls for.
    fn framing(fields: &[(&str, &str)]) -> Result<Option<Body>, FramingError> {
        let mut framing = Framing::default();
        for (name, value) in fields {
            framing.add(name.as_bytes(), value.as_bytes())?;
        }
        framing.body()
    }

    /// Content-Length is `1*DIGIT` on both sides: a sign, a space inside, hex, a fraction,
    /// an overflow or nothing are refused; a list or repeats must agree.
    #[test]
    fn content_length_is_digits_only() {
        let length = |v: &str| framing(&[("Content-Length", v)]);
        assert_eq!(length("5"), Ok(Some(Body::Length(5))));
        assert_eq!(length("0"), Ok(Some(Body::Done)));
        assert_eq!(length(" 7 "), Ok(Some(Body::Length(7))));
        assert_eq!(length("3, 3"), Ok(Some(Body::Length(3))));
        for bad in [
            "+5",
            "-1",
            "",
            " ",
            "1 2",
            "0x10",
            "1.0",
            "3,",
            "99999999999999999999999",
        ] {
            assert_eq!(length(bad), Err(FramingError::InvalidLength), "{bad:?}");
        }
        assert_eq!(length("3, 4"), Err(FramingError::ConflictingLengths));
        assert_eq!(
            framing(&[("Content-Length", "3"), ("content-length", "4")]),
            Err(FramingError::ConflictingLengths)
        );
        assert_eq!(framing(&[("Host", "x")]), Ok(None));
    }

    /// Transfer-Encoding frames a body only with `chunked` last, and never next to a
    /// Content-Length.
    #[test]
    fn transfer_encoding_must_end_in_chunked() {
        let chunked = Ok(Some(Body::CHUNKED));
        assert_eq!(framing(&[("Transfer-Encoding", "chunked")]), chunked);
        assert_eq!(framing(&[("transfer-encoding", "gzip, Chunked")]), chunked);
        assert_eq!(
            framing(&[
                ("Transfer-Encoding", "gzip"),
                ("Transfer-Encoding", "chunked")
            ]),
            chunked
        );
        for bad in ["gzip", "chunked, gzip", ""] {
            assert_eq!(
                framing(&[("Transfer-Encoding", bad)]),
                Err(FramingError::NotChunked),
                "{bad:?}"
            );
        }
        assert_eq!(
            framing(&[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]),
            Err(FramingError::BothLengths)
        );
    }

    /// Skips `pieces` one after another the way both loops do (unused bytes presented
    /// again with the next piece); returns the bytes left after the body.
    fn skip_pieces(pieces: &[&[u8]]) -> Result<Vec<u8>, BodyError> {
        let mut body = Body::CHUNKED;
        let mut held = Vec::new();
        for piece in pieces {
            held.extend_from_slice(piece);
            let used = body.skip(&held, LIMIT)?;
            held.drain(..used);
            assert!(
                body == Body::Done || held.len() <= LIMIT,
                "kept {}",
                held.len()
            );
        }
        assert_eq!(body, Body::Done, "the body did not end");
        Ok(held)
    }

    const CHUNKED: &[u8] =
        b"4\r\nWiki\r\n5;name=value\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: yes\r\n\r\nNEXT";

    /// A chunked body with extensions and trailers ends at the same byte whether it comes
    /// whole, split at any point into two, or a byte at a time.
    #[test]
    fn chunked_at_every_split_point() {
        assert_eq!(skip_pieces(&[CHUNKED]), Ok(b"NEXT".to_vec()));
        for split in 0..=CHUNKED.len() {
            let (a, b) = CHUNKED.split_at(split);
            assert_eq!(
                skip_pieces(&[a, b]),
                Ok(b"NEXT".to_vec()),
                "split at {split}"
            );
        }
        let bytes: Vec<&[u8]> = CHUNKED.chunks(1).collect();
        assert_eq!(skip_pieces(&bytes), Ok(b"NEXT".to_vec()));
    }

    /// A chunk size is `1*HEXDIG`: a sign, an empty size, a leading space or 17 digits are
    /// refused, as are chunk data without CRLF and malformed or endless trailers.
    #[test]
    fn broken_chunked_framing_is_refused() {
        let cases: [(&[u8], BodyError); 8] = [
            (b"+5\r\nhello\r\n0\r\n\r\n", BodyError::ChunkSize),
            (b"\r\n", BodyError::ChunkSize),
            (b";ext\r\n", BodyError::ChunkSize),
            (b" 5\r\n", BodyError::ChunkSize),
            (b"zz\r\n", BodyError::ChunkSize),
            (b"11111111111111111\r\n", BodyError::ChunkSize),
            (b"4\r\nWikiXY", BodyError::DataEnd),
            (b"0\r\nBad Trailer\r\n\r\n", BodyError::Trailers),
        ];
        for (input, want) in cases {
            let mut body = Body::CHUNKED;
            assert_eq!(
                body.skip(input, LIMIT),
                Err(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let long_size = [&b"5;"[..], &[b'e'; LIMIT]].concat();
        let mut body = Body::CHUNKED;
        assert_eq!(
            body.skip(&long_size, LIMIT),
            Err(BodyError::ChunkSizeTooLong)
        );
        let long_trailer = [&b"0\r\nX: "[..], &[b'e'; LIMIT]].concat();
        let mut body = Body::CHUNKED;
        assert_eq!(
            body.skip(&long_trailer, LIMIT),
            Err(BodyError::TrailersTooLong)
        );
    }

    /// A Content-Length body is skipped across calls without being held, and ends exactly.
    #[test]
    fn length_body_across_calls() {
        let mut body = Body::length(10);
        assert_eq!(body.skip(b"123", LIMIT), Ok(3));
        assert_eq!(body, Body::Length(7));
        assert_eq!(body.skip(b"4567890GET", LIMIT), Ok(7));
        assert_eq!(body, Body::Done);
        assert_eq!(body.skip(b"GET", LIMIT), Ok(0));
    }

    proptest! {
        /// Any chunking of any data, split anywhere into any pieces, ends where it should.
        #[test]
        fn random_chunked_bodies(
            sizes in prop::collection::vec(1usize..40, 0..6),
            uppercase in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut stream = Vec::new();
            for size in &sizes {
                let line = if uppercase { format!("{size:X}\r\n") } else { format!("{size:x}\r\n") };
                stream.extend_from_slice(line.as_bytes());
                stream.extend(std::iter::repeat_n(b'd', *size));
                stream.extend_from_slice(b"\r\n");
            }
            stream.extend_from_slice(b"0\r\n\r\nNEXT");
            let pieces = crate::protocol::testing::pieces(&stream, &cuts);
            prop_assert_eq!(skip_pieces(&pieces), Ok(b"NEXT".to_vec()));
        }

        /// Random bytes never panic the decoder nor make it keep more than the limit.
        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300), split in any::<prop::sample::Index>()) {
            let split = split.index(data.len() + 1);
            let mut body = Body::CHUNKED;
            if let Ok(used) = body.skip(&data[..split], LIMIT) {
                let rest = [&data[used..split], &data[split..]].concat();
                if let Ok(used) = body.skip(&rest, LIMIT) {
                    prop_assert!(body == Body::Done || rest.len() - used <= LIMIT);
                }
            }
        }

        /// Content-Length accepts exactly the decimal numbers a u64 holds.
        #[test]
        fn content_length_round_trips(n in any::<u64>(), sign in prop::sample::select(vec!["", "+", "-"])) {
            let mut framing = Framing::default();
            let result = framing.add(b"Content-Length", format!("{sign}{n}").as_bytes());
            if sign.is_empty() {
                prop_assert_eq!(result, Ok(true));
                prop_assert_eq!(framing.body(), Ok(Some(Body::length(n))));
            } else {
                prop_assert_eq!(result, Err(FramingError::InvalidLength));
            }
        }
    }
}
