//! `--web`: the chat's browser side, as pure functions over bytes. A connection whose
//! first bytes are `GET ` is HTTP: `GET /` gets the page (one self-contained HTML file),
//! `GET /ws` with the RFC 6455 headers is upgraded to a WebSocket, whose messages are
//! chat lines. Frame headers are parsed and written by `tungstenite`'s
//! [`FrameHeader`], which works on byte slices and never owns a socket; the accept key is
//! its `derive_accept_key`. The rest (unmasking, reassembly, the caps, control frames)
//! is here.

use std::io::Cursor;

use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The page served at `GET /`.
pub const PAGE: &str = include_str!("page.html");

/// The longest request head (request line and headers) read before answering 431: a
/// browser's is under 2 KiB.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Headers parsed in a request; a browser sends about 15.
const MAX_HEADERS: usize = 32;

/// The largest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_FRAME_HEADER: usize = 14;

/// Close codes (RFC 6455, 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// What the first bytes of a connection say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Too few bytes to tell (a prefix of `GET `).
    NeedMore,
    Http,
    Line,
}

pub fn sniff(input: &[u8]) -> Sniff {
    const GET: &[u8] = b"GET ";
    let n = input.len().min(GET.len());
    if input[..n] != GET[..n] {
        Sniff::Line
    } else if n < GET.len() {
        Sniff::NeedMore
    } else {
        Sniff::Http
    }
}

/// What an HTTP request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The page.
    Page,
    /// A WebSocket upgrade, with the `Sec-WebSocket-Accept` value to answer.
    Upgrade { accept: String },
    /// Answered with this status line and closed.
    Refused(&'static str),
}

/// Parses a request head: `Ok(None)` while it is incomplete, else what it asks for and the
/// bytes it took.
pub fn parse_request(input: &[u8]) -> Result<Option<(Request, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let used = match request.parse(input) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if input.len() > MAX_REQUEST_HEAD => {
            return Err("431 Request Header Fields Too Large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("431 Request Header Fields Too Large"),
        Err(_) => return Err("400 Bad Request"),
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    let path = request.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let answer = match path {
        "/" | "/index.html" => Request::Page,
        "/ws" => {
            let key = header("sec-websocket-key");
            let upgrade = has_token("upgrade", "websocket") && has_token("connection", "upgrade");
            match key {
                Some(key) if upgrade && header("sec-websocket-version") == Some(b"13") => {
                    Request::Upgrade {
                        accept: derive_accept_key(key),
                    }
                }
                _ => Request::Refused("426 Upgrade Required"),
            }
        }
        _ => Request::Refused("404 Not Found"),
    };
    Ok(Some((answer, used)))
}

/// The page with its response head, ready to be shared by every response.
pub fn page_response() -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        PAGE.len()
    )
    .into_bytes();
    response.extend_from_slice(PAGE.as_bytes());
    response
}

pub fn upgrade_response(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A refusal: the status, an empty body, and the connection closes.
pub fn status_response(status: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Appends an unmasked frame (the server's) holding `payload`.
pub fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask: None,
        ..FrameHeader::default()
    };
    // Writing to a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Chat lines as a binary message: lines relayed from line members may be any bytes, and
/// a text frame that is not UTF-8 would make the browser drop the connection; the page
/// decodes them leniently.
pub fn push_binary(out: &mut Vec<u8>, payload: &[u8]) {
    push_frame(out, OpCode::Data(Data::Binary), payload);
}

pub fn binary_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + MAX_FRAME_HEADER);
    push_binary(&mut frame, payload);
    frame
}

/// A close frame with `code` (and no reason).
pub fn push_close(out: &mut Vec<u8>, code: u16) {
    push_frame(out, OpCode::Control(Control::Close), &code.to_be_bytes());
}

/// What one frame from the browser amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole message arrived: take it with [`Decoder::take_message`].
    Message,
    /// A fragment of a message; more follow.
    Fragment,
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    Pong,
    /// The browser closes, with this code if it gave one.
    Close(Option<u16>),
}

/// Why the connection is failed, with the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
}

fn refuse(code: u16, reason: &'static str) -> Refusal {
    Refusal { code, reason }
}

/// A browser connection's frames: the message being reassembled from its fragments.
#[derive(Debug, Default)]
pub struct Decoder {
    message: Vec<u8>,
    /// A fragmented message has begun.
    in_message: bool,
}

impl Decoder {
    /// Decodes the first frame of `input`: `Ok(None)` while it is incomplete, else what it
    /// was and the bytes it took. A message longer than `max_message` bytes is refused as
    /// soon as a frame header announces it.
    pub fn next(
        &mut self,
        input: &[u8],
        max_message: usize,
    ) -> Result<Option<(Event, usize)>, Refusal> {
        let mut cursor = Cursor::new(input);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(_) => return Err(refuse(CLOSE_PROTOCOL_ERROR, "bad frame")),
        };
        let start = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(refuse(CLOSE_PROTOCOL_ERROR, "no extension was agreed"));
        }
        let Some(mask) = header.mask else {
            return Err(refuse(
                CLOSE_PROTOCOL_ERROR,
                "a browser's frames are masked",
            ));
        };
        let control = matches!(header.opcode, OpCode::Control(_));
        if control && (len > 125 || !header.is_final) {
            return Err(refuse(CLOSE_PROTOCOL_ERROR, "bad control frame"));
        }
        let room = max_message.saturating_sub(self.message.len());
        if !control && len > room as u64 {
            return Err(refuse(CLOSE_TOO_BIG, "message too long"));
        }
        let len = len as usize;
        let Some(payload) = input.get(start..start + len) else {
            return Ok(None);
        };
        let used = start + len;
        let unmasked = payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]);
        let event = match header.opcode {
            OpCode::Data(data) => {
                match (data, self.in_message) {
                    (Data::Continue, true) | (Data::Text | Data::Binary, false) => {}
                    _ => return Err(refuse(CLOSE_PROTOCOL_ERROR, "unexpected fragment")),
                }
                self.message.extend(unmasked);
                self.in_message = !header.is_final;
                if header.is_final {
                    Event::Message
                } else {
                    Event::Fragment
                }
            }
            OpCode::Control(Control::Ping) => Event::Ping(unmasked.collect()),
            OpCode::Control(Control::Pong) => Event::Pong,
            OpCode::Control(Control::Close) => {
                let body: Vec<u8> = unmasked.collect();
                Event::Close(body.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])))
            }
            OpCode::Control(Control::Reserved(_)) => {
                return Err(refuse(CLOSE_PROTOCOL_ERROR, "reserved opcode"))
            }
        };
        Ok(Some((event, used)))
    }

    /// The message that [`Event::Message`] announced; the decoder is ready for the next.
    /// Give the buffer back with [`restore`](Self::restore) to reuse it.
    pub fn take_message(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.message)
    }

    pub fn restore(&mut self, mut buffer: Vec<u8>) {
        buffer.clear();
        if buffer.capacity() <= 4096 {
            self.message = buffer;
        }
    }

    /// A fragmented message is being reassembled.
    pub fn mid_message(&self) -> bool {
        self.in_message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A browser's frame: masked with `mask`.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// The first bytes tell HTTP from a line member, waiting while they cannot.
    #[test]
    fn sniffing() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"GE"), Sniff::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1"), Sniff::Http);
        assert_eq!(sniff(b"GEX"), Sniff::Line);
        assert_eq!(sniff(b"hello\n"), Sniff::Line);
        assert_eq!(sniff(b"GET\n"), Sniff::Line);
    }

    /// The page, an upgrade (with RFC 6455's sample key), and refusals.
    #[test]
    fn requests() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        assert_eq!(parse_request(get), Ok(Some((Request::Page, get.len() - 4))));
        assert_eq!(parse_request(&get[..10]), Ok(None));
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(
            parse_request(upgrade),
            Ok(Some((
                Request::Upgrade {
                    accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
                },
                upgrade.len()
            )))
        );
        let plain = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_request(plain).unwrap().unwrap().0,
            Request::Refused("426 Upgrade Required")
        );
        let other = b"GET /favicon.ico HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse_request(other).unwrap().unwrap().0,
            Request::Refused("404 Not Found")
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nBad\r\n\r\n"),
            Err("400 Bad Request")
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST_HEAD + 1, b'a');
        assert_eq!(
            parse_request(&huge),
            Err("431 Request Header Fields Too Large")
        );
    }

    /// Frames are unmasked and reassembled, at every split point.
    #[test]
    fn frames_at_every_split() {
        let mut input = client_frame(0x1, false, b"hel", [1, 2, 3, 4]);
        input.extend(client_frame(0x9, true, b"p", [9, 9, 9, 9]));
        input.extend(client_frame(0x0, true, b"lo", [5, 6, 7, 8]));
        input.extend(client_frame(
            0x8,
            true,
            &1000u16.to_be_bytes(),
            [0, 1, 0, 1],
        ));
        for split in 0..=input.len() {
            let mut decoder = Decoder::default();
            let mut events = Vec::new();
            let mut pending = Vec::new();
            for piece in [&input[..split], &input[split..]] {
                pending.extend_from_slice(piece);
                while let Some((event, used)) = decoder.next(&pending, 100).unwrap() {
                    if event == Event::Message {
                        events.push(format!("{:?}", String::from_utf8(decoder.take_message())));
                    } else {
                        events.push(format!("{event:?}"));
                    }
                    pending.drain(..used);
                }
            }
            assert_eq!(
                events,
                [
                    "Fragment",
                    "Ping([112])",
                    "Ok(\"hello\")",
                    "Close(Some(1000))"
                ],
                "split at {split}"
            );
        }
    }

    /// Unmasked frames, long messages (refused from the header alone), bad control frames
    /// and stray continuations fail the connection with the right code.
    #[test]
    fn refusals() {
        let mut d = Decoder::default();
        assert_eq!(
            d.next(&[0x81, 0x01, b'a'], 10).unwrap_err().code,
            CLOSE_PROTOCOL_ERROR
        );
        let long = client_frame(0x1, true, &[b'x'; 11], [1, 1, 1, 1]);
        assert_eq!(d.next(&long[..8], 10).unwrap_err().code, CLOSE_TOO_BIG);
        let ping = client_frame(0x9, true, &[0; 126], [1, 1, 1, 1]);
        assert_eq!(d.next(&ping, 10).unwrap_err().code, CLOSE_PROTOCOL_ERROR);
        let stray = client_frame(0x0, true, b"x", [1, 1, 1, 1]);
        assert_eq!(d.next(&stray, 10).unwrap_err().code, CLOSE_PROTOCOL_ERROR);
        // Fragments count towards the cap together.
        let first = client_frame(0x1, false, &[b'x'; 6], [1, 1, 1, 1]);
        assert_eq!(d.next(&first, 10).unwrap().unwrap().0, Event::Fragment);
        let second = client_frame(0x0, true, &[b'x'; 6], [1, 1, 1, 1]);
        assert_eq!(d.next(&second, 10).unwrap_err().code, CLOSE_TOO_BIG);
    }

    /// What the server sends: unmasked frames with the length in the right width.
    #[test]
    fn server_frames() {
        assert_eq!(binary_frame(b"hi"), [0x82, 2, b'h', b'i']);
        let long = binary_frame(&[0; 300]);
        assert_eq!(&long[..4], &[0x82, 126, 1, 44]);
        assert_eq!(long.len(), 304);
        let mut close = Vec::new();
        push_close(&mut close, CLOSE_TOO_BIG);
        assert_eq!(close, [0x88, 2, 0x03, 0xf1]);
    }
}
