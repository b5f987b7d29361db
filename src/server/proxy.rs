//! The PROXY protocol (v1 text and v2 binary, parsed by `ppp`), as a stage before a
//! connection is opened: with `--proxy-protocol`, an accepted connection waits here,
//! unknown to the protocol, until its header has come; the loop then opens it with the
//! client address the header names, and the bytes after the header are its first input.
//! A header that is invalid, or not complete within the frame timeout, closes it. Without
//! the flag nothing here runs.

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;

use ppp::v2::Command;
use ppp::{v1, v2, HeaderResult, PartialResult};
use slab::Slab;

use crate::net::{Peer, Stream};

/// The longest header accepted, in bytes. A v1 header is at most 107; HAProxy's v2 with
/// every TLV it sends (SSL details, unique id) is a few hundred: more is not a proxy.
pub const MAX_HEADER_LEN: usize = 4096;

const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line the spec allows, CRLF included.
const V1_MAX_LEN: usize = 107;
/// A v2 header's fixed part: signature, version and command, family, length.
const V2_FIXED_LEN: usize = 16;

/// Whom a complete header says the connection is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's address, as the proxy saw it.
    Client(SocketAddr),
    /// No client address: a v2 `LOCAL` command (the proxy's own health check), a v1
    /// `UNKNOWN`, or a family that has none (Unix): the connection is the proxy's own.
    Local,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The first bytes are neither signature: no proxy sent this.
    NotProxy,
    /// Longer than [`MAX_HEADER_LEN`].
    TooLong,
    /// A signature, then something `ppp` cannot parse.
    Invalid(String),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::NotProxy => f.write_str("no PROXY protocol signature"),
            HeaderError::TooLong => write!(f, "PROXY header over {MAX_HEADER_LEN} bytes"),
            HeaderError::Invalid(why) => write!(f, "invalid PROXY header: {why}"),
        }
    }
}

/// Parses the header at the start of `input`: `Ok(None)` means it is incomplete so far,
/// `Ok(Some((source, len)))` that its `len` bytes are complete (what follows is payload).
pub fn decode(input: &[u8]) -> Result<Option<(Source, usize)>, HeaderError> {
    let starts =
        |signature: &[u8]| signature.starts_with(&input[..input.len().min(signature.len())]);
    if !starts(V1_SIGNATURE) && !starts(V2_SIGNATURE) {
        return Err(HeaderError::NotProxy);
    }
    if input.len() >= V2_FIXED_LEN && input.starts_with(V2_SIGNATURE) {
        // The length is known from the fixed part: refuse at once rather than buffer it.
        let len = u16::from_be_bytes([input[14], input[15]]) as usize;
        if V2_FIXED_LEN + len > MAX_HEADER_LEN {
            return Err(HeaderError::TooLong);
        }
    }
    if starts(V1_SIGNATURE) {
        // A v1 header is one line: ppp's partial results are not reliable mid-line (a
        // port cut short reads as an invalid one), so it sees only whole lines.
        match input.windows(2).position(|w| w == b"\r\n") {
            Some(end) => return decode_whole(&input[..end + 2]).map(Some),
            None if input.len() >= V1_MAX_LEN => return Err(HeaderError::TooLong),
            None => return Ok(None),
        }
    }
    let parsed = HeaderResult::parse(input);
    if parsed.is_incomplete() {
        return if input.len() >= MAX_HEADER_LEN {
            Err(HeaderError::TooLong)
        } else {
            Ok(None)
        };
    }
    from_parsed(parsed).map(Some)
}

/// A whole v1 line, CRLF included.
fn decode_whole(line: &[u8]) -> Result<(Source, usize), HeaderError> {
    from_parsed(HeaderResult::parse(line))
}

fn from_parsed(parsed: HeaderResult<'_>) -> Result<(Source, usize), HeaderError> {
    let ip = |address: std::net::IpAddr, port| Source::Client(SocketAddr::new(address, port));
    let invalid = |e: &dyn fmt::Display| HeaderError::Invalid(e.to_string());
    match parsed {
        HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => ip(a.source_address.into(), a.source_port),
                v1::Addresses::Tcp6(a) => ip(a.source_address.into(), a.source_port),
                v1::Addresses::Unknown => Source::Local,
            };
            Ok((source, header.header.len()))
        }
        HeaderResult::V2(Ok(header)) => {
            let source = match (header.command, header.addresses) {
                (Command::Local, _) => Source::Local,
                (_, v2::Addresses::IPv4(a)) => ip(a.source_address.into(), a.source_port),
                (_, v2::Addresses::IPv6(a)) => ip(a.source_address.into(), a.source_port),
                (_, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => Source::Local,
            };
            Ok((source, header.len()))
        }
        HeaderResult::V1(Err(e)) => Err(invalid(&e)),
        HeaderResult::V2(Err(e)) => Err(invalid(&e)),
    }
}

/// A connection accepted behind a proxy whose header has not come yet.
#[derive(Debug)]
pub struct Awaiting {
    pub stream: Stream,
    /// The proxy's end: the address the connection came from.
    pub via: Peer,
    /// Told apart from a successor in the same slot by stale timers.
    pub id: u64,
    /// What has arrived: the header so far, and perhaps payload after it.
    pub received: Vec<u8>,
}

/// What reading an awaiting connection came to.
#[derive(Debug)]
pub enum Progress {
    /// The header is incomplete and the socket has nothing more now.
    Waiting,
    /// The header is complete: `received[len..]` is the connection's first input.
    Complete(Source, usize),
    /// The peer closed before its header was complete.
    Closed,
    Failed(io::Error),
    Refused(HeaderError),
}

impl Awaiting {
    /// Reads until the header is complete, the socket is drained, or the connection
    /// failed. Reads at most the header's cap beyond what it has: past it, `decode`
    /// refuses whatever it is.
    pub fn read(&mut self, buf: &mut [u8]) -> Progress {
        loop {
            let room = buf.len().min(MAX_HEADER_LEN);
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => return Progress::Closed,
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Progress::Failed(e),
            }
            match decode(&self.received) {
                Ok(None) => continue,
                Ok(Some((source, len))) => return Progress::Complete(source, len),
                Err(e) => return Progress::Refused(e),
            }
        }
    }
}

/// The connections of one loop that await their header.
#[derive(Debug, Default)]
pub struct Headers {
    pub awaiting: Slab<Awaiting>,
    next_id: u64,
}

impl Headers {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn v2_header(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(addresses);
        header.extend_from_slice(tlvs);
        header
    }

    fn v2_ipv4() -> Vec<u8> {
        // 192.0.2.7:4242 -> 10.0.0.1:80, with a NOOP TLV of 3 bytes.
        v2_header(
            1,
            0x11,
            &[192, 0, 2, 7, 10, 0, 0, 1, 0x10, 0x92, 0, 80],
            &[0x04, 0, 3, 1, 2, 3],
        )
    }

    fn client(ip: IpAddr, port: u16) -> Source {
        Source::Client(SocketAddr::new(ip, port))
    }

    /// Complete headers of both versions give the client's address and their length;
    /// every shorter prefix of each is "incomplete", never an error or a wrong answer.
    #[test]
    fn complete_at_every_split_point() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 80\r\n".to_vec();
        let v1_six = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n".to_vec();
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let four = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let cases = [
            (v1, client(four, 4242)),
            (v1_six, client(IpAddr::V6(v6), 4242)),
            (v2_ipv4(), client(four, 4242)),
            (b"PROXY UNKNOWN\r\n".to_vec(), Source::Local),
            (v2_header(0, 0x00, &[], &[]), Source::Local),
        ];
        for (header, source) in cases {
            for cut in 0..header.len() {
                assert_eq!(decode(&header[..cut]), Ok(None), "{header:?} cut at {cut}");
            }
            let mut with_payload = header.clone();
            with_payload.extend_from_slice(b"GET / HTTP/1.1\r\n\xff\x00");
            for input in [&header, &with_payload] {
                assert_eq!(decode(input), Ok(Some((source, header.len()))), "{input:?}");
            }
        }
    }

    /// Anything else is refused as soon as it cannot be a header: a request without one
    /// at its first byte, garbage after a signature, a header longer than the cap.
    #[test]
    fn refusals() {
        assert_eq!(decode(b"G"), Err(HeaderError::NotProxy));
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(HeaderError::NotProxy));
        assert_eq!(decode(b"PROXZ"), Err(HeaderError::NotProxy));
        assert!(matches!(
            decode(b"PROXY TCP4 1.2.3.400 10.0.0.1 1 2\r\n"),
            Err(HeaderError::Invalid(_))
        ));
        assert!(matches!(
            decode(b"PROXY SCTP 1.2.3.4 10.0.0.1 1 2\r\n"),
            Err(HeaderError::Invalid(_))
        ));
        let mut bad_version = v2_ipv4();
        bad_version[12] = 0x31;
        assert!(matches!(decode(&bad_version), Err(HeaderError::Invalid(_))));
        let long = v2_header(1, 0x11, &[0; 12], &vec![0; MAX_HEADER_LEN]);
        assert_eq!(decode(&long[..V2_FIXED_LEN]), Err(HeaderError::TooLong));
        let mut endless = b"PROXY TCP4 ".to_vec();
        endless.resize(200, b'1');
        assert!(decode(&endless).is_err(), "a v1 line past 107 bytes");
    }
}
