//! The tutorial's application protocol (`libserver.py` / `libclient.py`'s `Message`): a
//! 2-byte big-endian header length, a UTF-8 JSON header, then `content-length` bytes of
//! content. Pure pieces only: the frame head reader both sides share, the clients'
//! whole-frame decoder, an encoder, the search handler, and an incremental decoder of
//! JSON requests ([`request`]).

mod request;

use std::fmt;

use serde_json::{Map, Value};

pub use request::{Field, Request, RequestDecoder, MAX_DEPTH};

use super::{ByteStr, Flow, Output, Protocol, Timeout};
use crate::net::Peer;

/// Bytes of the length prefix in front of the JSON header.
pub const PREFIX_LEN: usize = 2;
/// The longest JSON header: all the 2-byte prefix can say. A frame's header is therefore
/// bounded before a byte of it is buffered, at 64 KiB per connection.
pub const MAX_HEADER_LEN: usize = u16::MAX as usize;
/// Default cap on a frame's `content-length`, in bytes: generous for JSON and the
/// tutorial's binary requests, while bounding what one connection can make us buffer.
pub const DEFAULT_MAX_CONTENT_LENGTH: usize = 16 * 1024 * 1024;

/// The content type whose content is JSON text.
pub const JSON_TYPE: &str = "text/json";
/// The only text encoding accepted for JSON content.
pub const UTF8: &str = "utf-8";
/// The encoding the tutorial names for opaque bytes.
pub const BINARY_ENCODING: &str = "binary";
/// What the server's binary responses are labelled.
pub const SERVER_BINARY_TYPE: &str = "binary/custom-server-binary-type";
/// What the tutorial's client labels a request that is not a search.
pub const CLIENT_BINARY_TYPE: &str = "binary/custom-client-binary-type";

/// Opens every binary response, followed by the request's first bytes.
const BINARY_REPLY_PREFIX: &[u8] = b"First 10 bytes of request: ";
/// How many bytes of a binary request its response repeats.
const BINARY_REPLY_ECHOED: usize = 10;
/// Peer-supplied text quoted in an error reply is cut to this many characters, so a
/// 64 KiB header value does not come back as a 64 KiB error.
const MAX_QUOTED_CHARS: usize = 40;

/// The tutorial's search table: query → answer.
pub const SEARCH_TABLE: [(&str, &str); 3] = [
    ("morpheus", "Follow the white rabbit. \u{1f430}"),
    (
        "ring",
        "In the caves beneath the Misty Mountains. \u{1f48d}",
    ),
    ("\u{1f436}", "\u{1f43e} Playing ball! \u{1f3d0}"),
];

/// The sender's byte order, as the header's `byteorder` names it (Python's `sys.byteorder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    /// This machine's byte order: what our frames announce.
    pub const NATIVE: ByteOrder = if cfg!(target_endian = "big") {
        ByteOrder::Big
    } else {
        ByteOrder::Little
    };

    pub fn as_str(self) -> &'static str {
        match self {
            ByteOrder::Little => "little",
            ByteOrder::Big => "big",
        }
    }

    fn parse(text: &str) -> Option<ByteOrder> {
        match text {
            "little" => Some(ByteOrder::Little),
            "big" => Some(ByteOrder::Big),
            _ => None,
        }
    }
}

/// A decoded JSON header: the four required keys (any others are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub byteorder: ByteOrder,
    pub content_type: String,
    pub content_encoding: String,
    pub content_length: usize,
}

/// A frame's content, decoded as its header says.
#[derive(Debug, Clone, PartialEq)]
pub enum Content<'a> {
    /// `text/json` in UTF-8: always a JSON object.
    Json(Map<String, Value>),
    /// Any other content type: opaque bytes, borrowed from the input.
    Bytes(&'a [u8]),
}

/// One whole frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<'a> {
    pub header: Header,
    pub content: Content<'a>,
}

/// Why bytes are not a frame. Every variant is understood well enough to answer with an
/// error reply; its `Display` is the text of that reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    EmptyHeader,
    HeaderNotUtf8,
    HeaderNotJson(String),
    /// The header is valid JSON of this kind ("an array", "a number", ...), not an object.
    HeaderNotObject(&'static str),
    MissingKey(&'static str),
    /// This key's value is not a JSON string.
    NotAString(&'static str),
    BadByteOrder(String),
    ContentLengthNotNumber,
    ContentLengthNegative,
    ContentLengthNotInteger,
    /// `content-length` (as the peer wrote it) is over the limit (bytes).
    ContentTooLarge {
        declared: String,
        max: usize,
    },
    /// `text/json` in an encoding other than UTF-8.
    UnsupportedEncoding(String),
    ContentNotUtf8,
    ContentNotJson(String),
    /// The `text/json` content is valid JSON of this kind, not an object.
    ContentNotObject(&'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::EmptyHeader => f.write_str("header length is 0"),
            FrameError::HeaderNotUtf8 => f.write_str("header is not valid UTF-8"),
            FrameError::HeaderNotJson(e) => write!(f, "header is not valid JSON: {e}"),
            FrameError::HeaderNotObject(kind) => {
                write!(f, "header must be a JSON object, not {kind}")
            }
            FrameError::MissingKey(key) => {
                write!(f, "header is missing the required key \"{key}\"")
            }
            FrameError::NotAString(key) => write!(f, "header key \"{key}\" must be a string"),
            FrameError::BadByteOrder(value) => {
                write!(
                    f,
                    "byteorder must be \"little\" or \"big\", not \"{value}\""
                )
            }
            FrameError::ContentLengthNotNumber => f.write_str("content-length must be a number"),
            FrameError::ContentLengthNegative => f.write_str("content-length must not be negative"),
            FrameError::ContentLengthNotInteger => f.write_str("content-length must be an integer"),
            FrameError::ContentTooLarge { declared, max } => {
                write!(
                    f,
                    "content-length {declared} exceeds the limit of {max} bytes"
                )
            }
            FrameError::UnsupportedEncoding(encoding) => write!(
                f,
                "unsupported content-encoding \"{encoding}\" for text/json (only utf-8)"
            ),
            FrameError::ContentNotUtf8 => f.write_str("text/json content is not valid UTF-8"),
            FrameError::ContentNotJson(e) => write!(f, "text/json content is not valid JSON: {e}"),
            FrameError::ContentNotObject(kind) => {
                write!(f, "text/json content must be a JSON object, not {kind}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Where a [`FrameHead`] is: the stages are waited for in order, the header's length
/// remembered once the prefix is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadStage {
    /// Waiting for the 2-byte header length.
    Prefix,
    /// The header is this long; waiting for all of it.
    Header { header_len: usize },
}

/// Reads a frame's prefix and JSON header: the framing both the server and the clients
/// use. Every call is given the bytes from the start of the frame, plus whatever arrived
/// since; the header is parsed and checked once, as soon as all of it is in.
#[derive(Debug, Clone)]
pub struct FrameHead {
    stage: HeadStage,
    max_content_length: usize,
}

impl FrameHead {
    pub fn new(max_content_length: usize) -> Self {
        FrameHead {
            stage: HeadStage::Prefix,
            max_content_length,
        }
    }

    /// Forgets a partly read head (its bytes were discarded).
    pub fn reset(&mut self) {
        self.stage = HeadStage::Prefix;
    }

    /// Reads the head at the start of `buf`: `Ok(None)` means more bytes are needed,
    /// `Ok(Some((header, n)))` that prefix and header are the first `n` bytes. Limits are
    /// checked as soon as the prefix and the header are in, before any content. After a
    /// head or an error it is ready for the next frame.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Header, usize)>, FrameError> {
        let header_len = match self.stage {
            HeadStage::Header { header_len } => header_len,
            HeadStage::Prefix => {
                let Some(&[high, low]) = buf.get(..PREFIX_LEN) else {
                    return Ok(None);
                };
                let header_len = usize::from(u16::from_be_bytes([high, low]));
                if header_len == 0 {
                    return Err(FrameError::EmptyHeader);
                }
                header_len
            }
        };
        let head_len = PREFIX_LEN + header_len;
        let Some(bytes) = buf.get(PREFIX_LEN..head_len) else {
            self.stage = HeadStage::Header { header_len };
            return Ok(None);
        };
        self.stage = HeadStage::Prefix;
        let header = parse_header(bytes, self.max_content_length)?;
        Ok(Some((header, head_len)))
    }
}

/// The clients' frame decoder: the head, then all of the (small) content, decoded whole
/// into a [`Frame`]. Like [`FrameHead`] it is given the bytes from the start of the
/// current frame on every call, and remembers the header while the content arrives.
#[derive(Debug, Clone)]
pub struct Decoder {
    head: FrameHead,
    /// The current frame's header and where its content starts.
    header: Option<(Header, usize)>,
}

impl Decoder {
    pub fn new(max_content_length: usize) -> Self {
        Decoder {
            head: FrameHead::new(max_content_length),
            header: None,
        }
    }

    /// Forgets a partly decoded frame (its bytes were discarded).
    pub fn reset(&mut self) {
        self.head.reset();
        self.header = None;
    }

    /// Decodes the frame at the start of `buf`: `Ok(None)` means more bytes are needed,
    /// `Ok(Some((frame, n)))` that the frame is the first `n` bytes. Limits are checked
    /// as soon as the prefix and the header are in, before any content is waited for.
    /// After an error the stream is out of step and the decoder starts afresh.
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
        let (header, start) = match self.header.take() {
            Some(known) => known,
            None => match self.head.decode(buf)? {
                Some(head) => head,
                None => return Ok(None),
            },
        };
        let end = start.saturating_add(header.content_length);
        let Some(bytes) = buf.get(start..end) else {
            self.header = Some((header, start));
            return Ok(None);
        };
        let content = parse_content(&header, bytes)?;
        Ok(Some((Frame { header, content }, end)))
    }
}

/// Decodes the frame at the start of `buf` from scratch (see [`Decoder::decode`]).
pub fn decode(
    buf: &[u8],
    max_content_length: usize,
) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    Decoder::new(max_content_length).decode(buf)
}

/// The JSON header text of the frame at the start of `bytes`, if all of it is there and
/// it is UTF-8 (for logs that show what was sent or received).
pub fn header_text(bytes: &[u8]) -> Option<&str> {
    let (&[high, low], rest) = bytes.split_first_chunk::<PREFIX_LEN>()?;
    let header = rest.get(..usize::from(u16::from_be_bytes([high, low])))?;
    std::str::from_utf8(header).ok()
}

/// Checks a complete JSON header: an object with the four required keys of the right
/// types, a `content-length` within `max_content_length`, and for JSON content an
/// encoding we can read (refused now rather than after buffering the content).
fn parse_header(bytes: &[u8], max_content_length: usize) -> Result<Header, FrameError> {
    let text = std::str::from_utf8(bytes).map_err(|_| FrameError::HeaderNotUtf8)?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| FrameError::HeaderNotJson(e.to_string()))?;
    // Checked on the parsed value: a serde-derived struct would accept an array positionally.
    let Value::Object(map) = value else {
        return Err(FrameError::HeaderNotObject(json_kind(&value)));
    };
    for key in [
        "byteorder",
        "content-type",
        "content-encoding",
        "content-length",
    ] {
        if !map.contains_key(key) {
            return Err(FrameError::MissingKey(key));
        }
    }
    let byteorder_text = string_key(&map, "byteorder")?;
    let byteorder = ByteOrder::parse(byteorder_text)
        .ok_or_else(|| FrameError::BadByteOrder(quoted(byteorder_text)))?;
    let content_type = string_key(&map, "content-type")?;
    let content_encoding = string_key(&map, "content-encoding")?;
    let content_length = match map.get("content-length") {
        Some(Value::Number(n)) => {
            if let Some(length) = n.as_u64() {
                match usize::try_from(length) {
                    Ok(length) if length <= max_content_length => length,
                    _ => {
                        return Err(FrameError::ContentTooLarge {
                            declared: length.to_string(),
                            max: max_content_length,
                        })
                    }
                }
            } else if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f < 0.0) {
                return Err(FrameError::ContentLengthNegative);
            } else {
                // 1.5, but also 1.0 and 1e30: a float is not a byte count.
                return Err(FrameError::ContentLengthNotInteger);
            }
        }
        _ => return Err(FrameError::ContentLengthNotNumber),
    };
    if content_type == JSON_TYPE && !is_utf8_name(content_encoding) {
        return Err(FrameError::UnsupportedEncoding(quoted(content_encoding)));
    }
    Ok(Header {
        byteorder,
        content_type: content_type.to_owned(),
        content_encoding: content_encoding.to_owned(),
        content_length,
    })
}

/// Decodes content as its header says: JSON text must be an object; anything else is bytes.
fn parse_content<'a>(header: &Header, bytes: &'a [u8]) -> Result<Content<'a>, FrameError> {
    if header.content_type != JSON_TYPE {
        return Ok(Content::Bytes(bytes));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| FrameError::ContentNotUtf8)?;
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(Content::Json(map)),
        Ok(other) => Err(FrameError::ContentNotObject(json_kind(&other))),
        Err(e) => Err(FrameError::ContentNotJson(e.to_string())),
    }
}

fn string_key<'m>(map: &'m Map<String, Value>, key: &'static str) -> Result<&'m str, FrameError> {
    match map.get(key) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(FrameError::NotAString(key)),
        None => Err(FrameError::MissingKey(key)),
    }
}

/// Python's codec names for UTF-8 that a peer may plausibly send.
fn is_utf8_name(encoding: &str) -> bool {
    encoding.eq_ignore_ascii_case("utf-8") || encoding.eq_ignore_ascii_case("utf8")
}

/// A JSON value's kind, for error messages ("an array").
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Peer text cut to `MAX_QUOTED_CHARS` characters for an error message.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A frame that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The JSON header would be this many bytes, more than the prefix can express.
    HeaderTooLong(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::HeaderTooLong(len) => {
                write!(f, "JSON header of {len} bytes exceeds {MAX_HEADER_LEN}")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// Appends one frame whose content is `parts` joined, with a header written the way
/// Python's `json.dumps(..., ensure_ascii=False)` writes the tutorial's dict. On error
/// `out` is left as it was.
pub fn encode(
    out: &mut Vec<u8>,
    content_type: &str,
    content_encoding: &str,
    parts: &[&[u8]],
) -> Result<(), EncodeError> {
    let content_length = parts.iter().map(|part| part.len()).sum();
    push_header(out, content_type, content_encoding, content_length)?;
    for part in parts {
        out.extend_from_slice(part);
    }
    Ok(())
}

/// Appends a `text/json` frame whose content is a JSON object of string fields, in
/// order, written like Python's `json.dumps(obj, ensure_ascii=False)`. Builds no
/// intermediate buffer: the content's length is computed first.
pub fn encode_json_fields(out: &mut Vec<u8>, fields: &[(&str, &str)]) -> Result<(), EncodeError> {
    let separators = 2 * fields.len().saturating_sub(1); // ", " between fields
    let content_length = 2 // the braces
        + separators
        + fields
            .iter()
            .map(|(key, value)| json_str_len(key) + 2 + json_str_len(value)) // key ": " value
            .sum::<usize>();
    push_header(out, JSON_TYPE, UTF8, content_length)?;
    out.push(b'{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        push_json_str(out, key);
        out.extend_from_slice(b": ");
        push_json_str(out, value);
    }
    out.push(b'}');
    Ok(())
}

/// Appends the error reply `{"error": message}`.
pub fn encode_error(out: &mut Vec<u8>, message: &str) -> Result<(), EncodeError> {
    encode_json_fields(out, &[("error", message)])
}

/// Appends the prefix and the JSON header.
fn push_header(
    out: &mut Vec<u8>,
    content_type: &str,
    content_encoding: &str,
    content_length: usize,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(b"{\"byteorder\": \"");
    out.extend_from_slice(ByteOrder::NATIVE.as_str().as_bytes());
    out.extend_from_slice(b"\", \"content-type\": ");
    push_json_str(out, content_type);
    out.extend_from_slice(b", \"content-encoding\": ");
    push_json_str(out, content_encoding);
    out.extend_from_slice(b", \"content-length\": ");
    push_decimal(out, content_length);
    out.push(b'}');
    let header_len = out.len() - start - PREFIX_LEN;
    let Ok(prefix) = u16::try_from(header_len) else {
        out.truncate(start);
        return Err(EncodeError::HeaderTooLong(header_len));
    };
    out[start..start + PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(())
}

/// The escape JSON needs for one byte of a string, if any (as Python writes it: control
/// characters, the quote and the backslash; other non-ASCII text is kept as UTF-8).
fn json_escape(byte: u8) -> Option<&'static str> {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
        "\\b", "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011",
        "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019",
        "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
    ];
    match byte {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        _ => CONTROL.get(usize::from(byte)).copied(),
    }
}

/// Bytes `push_json_str` writes for `text`.
fn json_str_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| json_escape(b).map_or(1, str::len))
        .sum::<usize>()
}

fn push_json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        // Bytes of multi-byte UTF-8 characters are all >= 0x80 and never need escaping.
        if let Some(escape) = json_escape(byte) {
            out.extend_from_slice(&bytes[plain_from..i]);
            out.extend_from_slice(escape.as_bytes());
            plain_from = i + 1;
        }
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The tutorial's answer to a search for `query`.
pub fn search(query: &str) -> String {
    SEARCH_TABLE
        .iter()
        .find(|(key, _)| *key == query)
        .map_or_else(
            || format!("No match for '{query}'."),
            |(_, answer)| (*answer).to_owned(),
        )
}

/// A request field as the answer quotes it: a string as is, anything else as JSON text
/// (`null` when absent, where Python would print `None`).
fn field_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => "null".to_owned(),
    }
}

/// The answer to a JSON request: a search, or the tutorial's invalid-action message.
pub fn json_answer(request: &Map<String, Value>) -> String {
    match request.get("action") {
        Some(Value::String(action)) if action == "search" => match request.get("value") {
            Some(Value::String(query)) => search(query),
            other => format!("No match for '{}'.", field_text(other)),
        },
        other => format!("Error: invalid action '{}'.", field_text(other)),
    }
}

/// Appends the response to one request: `{"result": ...}` for JSON, the first bytes of
/// the request for anything else.
pub fn respond(frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match &frame.content {
        Content::Json(request) => encode_json_fields(out, &[("result", &json_answer(request))]),
        Content::Bytes(bytes) => {
            let echoed = bytes.get(..BINARY_REPLY_ECHOED).unwrap_or(bytes);
            encode(
                out,
                SERVER_BINARY_TYPE,
                BINARY_ENCODING,
                &[BINARY_REPLY_PREFIX, echoed],
            )
        }
    }
}

/// The app protocol server: answers every request on a connection, in order, and keeps
/// the connection open for more; a bad frame gets an error reply, then the close.
#[derive(Debug, Clone)]
pub struct App {
    max_content_length: usize,
    /// The `{"error": "server busy"}` frame, encoded once.
    refusal: Vec<u8>,
}

impl App {
    /// A server refusing content longer than `max_content_length` bytes.
    pub fn new(max_content_length: usize) -> Self {
        let mut refusal = Vec::new();
        if let Err(e) = encode_error(&mut refusal, "server busy") {
            // A fixed JSON header is about 100 bytes: this cannot happen.
            log::error!("cannot encode the refusal frame: {e}");
        }
        App {
            max_content_length,
            refusal,
        }
    }

    pub fn max_content_length(&self) -> usize {
        self.max_content_length
    }
}

impl Default for App {
    fn default() -> Self {
        App::new(DEFAULT_MAX_CONTENT_LENGTH)
    }
}

/// One connection's state: where it is within the current request.
#[derive(Debug, Clone)]
pub struct AppSession {
    decoder: Decoder,
    peer: Peer,
}

impl Protocol for App {
    type Session = AppSession;

    fn open(&mut self, peer: &Peer, _out: &mut Output<'_>) -> AppSession {
        AppSession {
            decoder: Decoder::new(self.max_content_length),
            peer: *peer,
        }
    }

    fn on_input(
        &mut self,
        session: &mut AppSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match session.decoder.decode(rest) {
                Ok(Some((frame, len))) => {
                    used += len;
                    if log::log_enabled!(log::Level::Debug) {
                        log_request(&session.peer, &frame);
                    }
                    if let Err(e) = respond(&frame, out.reply_buf()) {
                        log::error!("{}: cannot encode a response: {e}", session.peer);
                        return (used, Flow::Close);
                    }
                    out.count_request();
                }
                Ok(None) => return (used, Flow::Continue),
                Err(e) => {
                    log::debug!("{}: bad request: {e}; closing", session.peer);
                    reply_error(out, &session.peer, &e.to_string());
                    return (used, Flow::Close);
                }
            }
        }
    }

    fn on_timeout(&mut self, session: &mut AppSession, kind: Timeout, out: &mut Output<'_>) {
        if kind == Timeout::Frame {
            session.decoder.reset();
            reply_error(out, &session.peer, "request not completed in time");
        }
    }

    fn refusal(&self) -> Option<&[u8]> {
        Some(&self.refusal)
    }

    /// The largest frame allowed, so the loop's own limit never fires before the
    /// decoder has refused an oversized `content-length` with an error reply.
    fn max_pending_input(&self) -> usize {
        PREFIX_LEN
            .saturating_add(MAX_HEADER_LEN)
            .saturating_add(self.max_content_length)
    }
}

fn reply_error(out: &mut Output<'_>, peer: &Peer, message: &str) {
    if let Err(e) = encode_error(out.reply_buf(), message) {
        log::error!("{peer}: cannot encode an error reply: {e}");
    }
}

fn log_request(peer: &Peer, frame: &Frame<'_>) {
    match &frame.content {
        Content::Json(request) => {
            log::debug!("{peer}: request {}", Value::Object(request.clone()))
        }
        Content::Bytes(bytes) => log::debug!(
            "{peer}: {} request {}",
            frame.header.content_type,
            ByteStr(bytes.get(..64).unwrap_or(bytes))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    const MAX: usize = DEFAULT_MAX_CONTENT_LENGTH;

    /// A frame with a hand-written header (independent of the encoder).
    fn raw_frame(header: &str, content: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(content);
        bytes
    }

    fn header_json(content_type: &str, encoding: &str, length: usize) -> String {
        format!(
            "{{\"byteorder\": \"{}\", \"content-type\": \"{content_type}\", \
             \"content-encoding\": \"{encoding}\", \"content-length\": {length}}}",
            ByteOrder::NATIVE.as_str()
        )
    }

    fn json_request(content: &str) -> Vec<u8> {
        raw_frame(
            &header_json("text/json", "utf-8", content.len()),
            content.as_bytes(),
        )
    }

    fn search_request(query: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_json_fields(&mut bytes, &[("action", "search"), ("value", query)]).unwrap();
        bytes
    }

    fn binary_request(content: &[u8]) -> Vec<u8> {
        raw_frame(
            &header_json(CLIENT_BINARY_TYPE, "binary", content.len()),
            content,
        )
    }

    fn json_map(text: &str) -> Map<String, Value> {
        match serde_json::from_str(text).unwrap() {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    /// Decodes every frame of `bytes`, presented the way the loop presents them: the
    /// unconsumed rest plus each new chunk, with one decoder kept across calls.
    fn decode_chunks(chunks: &[&[u8]]) -> Result<Vec<Frame<'static>>, FrameError> {
        let mut decoder = Decoder::new(MAX);
        let mut pending: Vec<u8> = Vec::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            let mut used = 0;
            while let Some((frame, len)) = decoder.decode(&pending[used..])? {
                frames.push(owned(frame));
                used += len;
            }
            pending.drain(..used);
        }
        assert!(pending.is_empty(), "{} bytes left undecoded", pending.len());
        Ok(frames)
    }

    fn owned(frame: Frame<'_>) -> Frame<'static> {
        let content = match frame.content {
            Content::Json(map) => Content::Json(map),
            Content::Bytes(bytes) => Content::Bytes(Vec::leak(bytes.to_vec())),
        };
        Frame {
            header: frame.header,
            content,
        }
    }

    fn decode_error(bytes: &[u8]) -> FrameError {
        decode(bytes, MAX).expect_err("should be refused")
    }

    /// The encoder writes the header exactly as Python's json.dumps writes the tutorial's dict.
    #[test]
    fn encoder_writes_python_style_frames() {
        let mut out = Vec::new();
        encode_json_fields(
            &mut out,
            &[("result", "Follow the white rabbit. \u{1f430}")],
        )
        .unwrap();
        let content = "{\"result\": \"Follow the white rabbit. \u{1f430}\"}";
        assert_eq!(
            out,
            raw_frame(
                &header_json("text/json", "utf-8", content.len()),
                content.as_bytes()
            )
        );

        let mut out = Vec::new();
        encode(&mut out, SERVER_BINARY_TYPE, "binary", &[b"ab", b"c"]).unwrap();
        assert_eq!(
            out,
            raw_frame(&header_json(SERVER_BINARY_TYPE, "binary", 3), b"abc")
        );
    }

    /// Strings are escaped like Python's json.dumps(ensure_ascii=False), and the computed
    /// content length matches what is written.
    #[test]
    fn encoder_escapes_like_python() {
        let mut out = Vec::new();
        encode_json_fields(&mut out, &[("k\"", "a\\b\n\t\u{1}\u{7f}é")]).unwrap();
        let content = "{\"k\\\"\": \"a\\\\b\\n\\t\\u0001\u{7f}é\"}";
        assert_eq!(
            out,
            raw_frame(
                &header_json("text/json", "utf-8", content.len()),
                content.as_bytes()
            )
        );
        let mut out = Vec::new();
        encode_json_fields(&mut out, &[]).unwrap();
        assert_eq!(out, raw_frame(&header_json("text/json", "utf-8", 2), b"{}"));
    }

    /// A header longer than the prefix can express is refused and leaves the buffer as it was.
    #[test]
    fn encoder_refuses_oversized_header() {
        let mut out = b"keep".to_vec();
        let huge = "x".repeat(MAX_HEADER_LEN);
        assert!(matches!(
            encode(&mut out, &huge, "binary", &[b"abc"]),
            Err(EncodeError::HeaderTooLong(_))
        ));
        assert_eq!(out, b"keep");
    }

    /// What the encoder writes, the decoder reads back.
    #[test]
    fn round_trip() {
        let bytes = search_request("morpheus");
        let (frame, used) = decode(&bytes, MAX).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.header.byteorder, ByteOrder::NATIVE);
        assert_eq!(frame.header.content_type, "text/json");
        assert_eq!(frame.header.content_encoding, "utf-8");
        assert_eq!(
            frame.content,
            Content::Json(json_map(r#"{"action": "search", "value": "morpheus"}"#))
        );

        let mut bytes = Vec::new();
        encode(
            &mut bytes,
            CLIENT_BINARY_TYPE,
            "binary",
            &[b"\x00\xffbytes"],
        )
        .unwrap();
        let (frame, used) = decode(&bytes, MAX).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.header.content_type, CLIENT_BINARY_TYPE);
        assert_eq!(frame.content, Content::Bytes(b"\x00\xffbytes"));
    }

    /// Extra header keys are ignored; `big` is accepted; "UTF-8" names UTF-8.
    #[test]
    fn header_tolerates_extra_keys() {
        let content = r#"{"action": "search"}"#;
        let header = format!(
            r#"{{"extra": [1, 2], "byteorder": "big", "content-type": "text/json", "content-encoding": "UTF-8", "content-length": {}}}"#,
            content.len()
        );
        let bytes = raw_frame(&header, content.as_bytes());
        let (frame, used) = decode(&bytes, MAX).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.header.byteorder, ByteOrder::Big);
        assert_eq!(frame.content, Content::Json(json_map(content)));
    }

    /// Every split of a request into two reads decodes to the same frame.
    #[test]
    fn every_split_decodes_the_same() {
        for bytes in [
            search_request("\u{1f436}"),
            binary_request(b"0123456789abcdef"),
            binary_request(b""),
        ] {
            let whole = decode_chunks(&[&bytes]).unwrap();
            assert_eq!(whole.len(), 1);
            for split in 0..=bytes.len() {
                let (a, b) = bytes.split_at(split);
                assert_eq!(decode_chunks(&[a, b]).unwrap(), whole, "split at {split}");
            }
        }
    }

    /// Bytes arriving one at a time decode to the same frames, each as soon as its last byte is in.
    #[test]
    fn byte_at_a_time() {
        let mut bytes = search_request("ring");
        bytes.extend(binary_request(b"xyz"));
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            decode_chunks(&chunks).unwrap(),
            decode_chunks(&[&bytes]).unwrap()
        );
        assert_eq!(decode_chunks(&chunks).unwrap().len(), 2);
    }

    /// Several frames in one buffer decode one after another, each reporting its length.
    #[test]
    fn several_frames_in_one_buffer() {
        let first = search_request("a");
        let second = binary_request(b"bb");
        let third = search_request("ccc");
        let all = [first.clone(), second.clone(), third.clone()].concat();
        let mut decoder = Decoder::new(MAX);
        let mut at = 0;
        for expected in [&first, &second, &third] {
            let (frame, len) = decoder.decode(&all[at..]).unwrap().unwrap();
            assert_eq!(len, expected.len());
            assert_eq!(frame, decode(expected, MAX).unwrap().unwrap().0);
            at += len;
        }
        assert_eq!(decoder.decode(&all[at..]), Ok(None));
    }

    /// An incomplete frame asks for more bytes at every stage.
    #[test]
    fn incomplete_frames_ask_for_more() {
        let bytes = search_request("morpheus");
        for end in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..end], MAX),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
    }

    /// Each malformed header is refused with its own message.
    #[test]
    fn bad_headers_are_refused() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![0, 0, b'{', b'}'], FrameError::EmptyHeader),
            (raw_frame_bytes(b"\xff\xfe{}"), FrameError::HeaderNotUtf8),
            (
                raw_frame("[1, 2, 3]", b""),
                FrameError::HeaderNotObject("an array"),
            ),
            (
                raw_frame("42", b""),
                FrameError::HeaderNotObject("a number"),
            ),
            (
                raw_frame("\"text\"", b""),
                FrameError::HeaderNotObject("a string"),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode_error(&bytes), expected);
        }
        assert!(matches!(
            decode_error(&raw_frame("{not json", b"")),
            FrameError::HeaderNotJson(_)
        ));
    }

    fn raw_frame_bytes(header: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes
    }

    /// Each required key, when missing, is named in the error.
    #[test]
    fn missing_keys_are_named() {
        let keys = [
            ("byteorder", "\"little\""),
            ("content-type", "\"text/json\""),
            ("content-encoding", "\"utf-8\""),
            ("content-length", "2"),
        ];
        for (missing, _) in keys {
            let header = keys
                .iter()
                .filter(|(key, _)| *key != missing)
                .map(|(key, value)| format!("\"{key}\": {value}"))
                .collect::<Vec<_>>()
                .join(", ");
            let bytes = raw_frame(&format!("{{{header}}}"), b"{}");
            let error = decode_error(&bytes);
            assert_eq!(
                error.to_string(),
                format!("header is missing the required key \"{missing}\"")
            );
        }
    }

    fn with_length(length: &str) -> Vec<u8> {
        raw_frame(
            &format!(
                r#"{{"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": {length}}}"#
            ),
            b"",
        )
    }

    /// content-length must be a non-negative integer within the limit, refused before any content.
    #[test]
    fn bad_content_lengths_are_refused() {
        assert_eq!(
            decode_error(&with_length("-1")),
            FrameError::ContentLengthNegative
        );
        assert_eq!(
            decode_error(&with_length("-1.5")),
            FrameError::ContentLengthNegative
        );
        assert_eq!(
            decode_error(&with_length("1.5")),
            FrameError::ContentLengthNotInteger
        );
        assert_eq!(
            decode_error(&with_length("1.0")),
            FrameError::ContentLengthNotInteger
        );
        assert_eq!(
            decode_error(&with_length("\"12\"")),
            FrameError::ContentLengthNotNumber
        );
        assert_eq!(
            decode_error(&with_length("null")),
            FrameError::ContentLengthNotNumber
        );
        // Refused from the header alone: none of the content is present.
        assert_eq!(
            decode_error(&with_length(&(MAX + 1).to_string())),
            FrameError::ContentTooLarge {
                declared: (MAX + 1).to_string(),
                max: MAX
            }
        );
        assert_eq!(
            decode_error(&with_length("18446744073709551615")).to_string(),
            format!("content-length 18446744073709551615 exceeds the limit of {MAX} bytes")
        );
        // Exactly the limit is allowed: the decoder waits for the content.
        assert_eq!(decode(&with_length(&MAX.to_string()), MAX), Ok(None));
    }

    /// Wrongly typed keys and an unknown byte order are refused.
    #[test]
    fn wrongly_typed_keys_are_refused() {
        let header = r#"{"byteorder": "middle", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 0}"#;
        assert_eq!(
            decode_error(&raw_frame(header, b"")),
            FrameError::BadByteOrder("middle".into())
        );
        let header = r#"{"byteorder": "little", "content-type": 7, "content-encoding": "utf-8", "content-length": 0}"#;
        assert_eq!(
            decode_error(&raw_frame(header, b"")),
            FrameError::NotAString("content-type")
        );
        let header = r#"{"byteorder": "little", "content-type": "a", "content-encoding": null, "content-length": 0}"#;
        assert_eq!(
            decode_error(&raw_frame(header, b"")),
            FrameError::NotAString("content-encoding")
        );
        // Quoted peer text is cut short.
        let long = "x".repeat(1000);
        let header = format!(
            r#"{{"byteorder": "{long}", "content-type": "a", "content-encoding": "b", "content-length": 0}}"#
        );
        assert_eq!(
            decode_error(&raw_frame(&header, b"")).to_string(),
            format!(
                "byteorder must be \"little\" or \"big\", not \"{}...\"",
                "x".repeat(MAX_QUOTED_CHARS)
            )
        );
    }

    /// JSON content must be UTF-8 JSON text holding an object; an unknown encoding is
    /// refused from the header, before the content arrives.
    #[test]
    fn bad_json_content_is_refused() {
        assert!(matches!(
            decode_error(&json_request("{oops")),
            FrameError::ContentNotJson(_)
        ));
        assert_eq!(
            decode_error(&json_request("[1]")),
            FrameError::ContentNotObject("an array")
        );
        assert_eq!(
            decode_error(&json_request("\"s\"")),
            FrameError::ContentNotObject("a string")
        );
        let bytes = raw_frame(&header_json("text/json", "utf-8", 2), b"\xff}");
        assert_eq!(decode_error(&bytes), FrameError::ContentNotUtf8);
        let bytes = raw_frame(&header_json("text/json", "latin-1", 100), b"");
        assert_eq!(
            decode_error(&bytes),
            FrameError::UnsupportedEncoding("latin-1".into())
        );
        assert_eq!(
            FrameError::UnsupportedEncoding("latin-1".into()).to_string(),
            "unsupported content-encoding \"latin-1\" for text/json (only utf-8)"
        );
    }

    /// The search table and the invalid-action message are the tutorial's, byte for byte
    /// (`libserver.py` quotes with single quotes).
    #[test]
    fn answers_follow_the_tutorial() {
        assert_eq!(search("morpheus"), "Follow the white rabbit. 🐰");
        assert_eq!(
            search("ring"),
            "In the caves beneath the Misty Mountains. 💍"
        );
        assert_eq!(search("🐶"), "🐾 Playing ball! 🏐");
        assert_eq!(search("neo"), "No match for 'neo'.");
        assert_eq!(
            json_answer(&json_map(r#"{"action": "find", "value": "x"}"#)),
            "Error: invalid action 'find'."
        );
        assert_eq!(
            json_answer(&json_map(r#"{"value": "x"}"#)),
            "Error: invalid action 'null'."
        );
        assert_eq!(
            json_answer(&json_map(r#"{"action": "search", "value": 5}"#)),
            "No match for '5'."
        );
    }

    /// A binary request is answered with its first 10 bytes (or all of a shorter one).
    #[test]
    fn binary_response_repeats_first_ten_bytes() {
        for (request, echoed) in [
            (&b"0123456789abc"[..], &b"0123456789"[..]),
            (b"abc", b"abc"),
        ] {
            let bytes = binary_request(request);
            let (frame, _) = decode(&bytes, MAX).unwrap().unwrap();
            let mut out = Vec::new();
            respond(&frame, &mut out).unwrap();
            let content = [&b"First 10 bytes of request: "[..], echoed].concat();
            assert_eq!(
                out,
                raw_frame(
                    &header_json(SERVER_BINARY_TYPE, "binary", content.len()),
                    &content
                )
            );
        }
    }

    struct Harness {
        app: App,
        session: AppSession,
        reply: Vec<u8>,
        broadcast: Vec<Arc<[u8]>>,
        requests: u64,
    }

    impl Harness {
        fn new(app: App) -> Self {
            let (mut reply, mut broadcast, mut requests) = (Vec::new(), Vec::new(), 0);
            let mut app = app;
            let session = app.open(
                &Peer::Unix,
                &mut Output::new(&mut reply, &mut broadcast, &mut requests),
            );
            Harness {
                app,
                session,
                reply,
                broadcast,
                requests,
            }
        }

        fn feed(&mut self, input: &[u8]) -> (usize, Flow) {
            let mut out = Output::new(&mut self.reply, &mut self.broadcast, &mut self.requests);
            self.app.on_input(&mut self.session, input, &mut out)
        }
    }

    fn expected_result(answer: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_json_fields(&mut out, &[("result", answer)]).unwrap();
        out
    }

    fn expected_error(message: &str) -> Vec<u8> {
        let content = format!("{{\"error\": \"{message}\"}}");
        raw_frame(
            &header_json("text/json", "utf-8", content.len()),
            content.as_bytes(),
        )
    }

    /// on_input answers every complete frame present, in order, and leaves a partial one.
    #[test]
    fn on_input_answers_every_complete_frame() {
        let mut harness = Harness::new(App::default());
        let partial = search_request("ring");
        let input = [
            search_request("morpheus"),
            search_request("🐶"),
            partial[..5].to_vec(),
        ]
        .concat();
        let (used, flow) = harness.feed(&input);
        assert_eq!((used, flow), (input.len() - 5, Flow::Continue));
        assert_eq!(
            harness.reply,
            [
                expected_result("Follow the white rabbit. 🐰"),
                expected_result("🐾 Playing ball! 🏐")
            ]
            .concat()
        );
        assert_eq!(harness.requests, 2);
        // The loop presents the partial frame again with the rest of it.
        harness.reply.clear();
        assert_eq!(harness.feed(&partial), (partial.len(), Flow::Continue));
        assert_eq!(
            harness.reply,
            expected_result("In the caves beneath the Misty Mountains. 💍")
        );
        assert!(harness.broadcast.is_empty());
    }

    /// A bad frame after good ones: the good ones are answered, then the error, then Close.
    #[test]
    fn on_input_answers_then_refuses_a_bad_frame() {
        let mut harness = Harness::new(App::default());
        let good = search_request("neo");
        let input = [good.clone(), json_request("[1]"), search_request("ring")].concat();
        assert_eq!(harness.feed(&input), (good.len(), Flow::Close));
        assert_eq!(
            harness.reply,
            [
                expected_result("No match for 'neo'."),
                expected_error("text/json content must be a JSON object, not an array")
            ]
            .concat()
        );
    }

    /// content-length over the configured limit is answered at once, from the header alone.
    #[test]
    fn configured_limit_is_enforced() {
        let mut harness = Harness::new(App::new(10));
        assert_eq!(
            harness.app.max_pending_input(),
            PREFIX_LEN + MAX_HEADER_LEN + 10
        );
        let input = raw_frame(&header_json("binary/x", "binary", 11), b"");
        assert_eq!(harness.feed(&input), (0, Flow::Close));
        assert_eq!(
            harness.reply,
            expected_error("content-length 11 exceeds the limit of 10 bytes")
        );
    }

    /// The largest acceptable unfinished frame stays within `max_pending_input`, so the
    /// loop's limit never closes a connection the protocol would have served.
    #[test]
    fn pending_limit_covers_the_largest_frame() {
        let app = App::new(1000);
        let header = header_json("binary/x", "binary", 1000);
        let header = format!("{header:<width$}", width = MAX_HEADER_LEN); // padded with spaces
        let mut frame = raw_frame(&header, &[7; 1000]);
        assert_eq!(frame.len(), app.max_pending_input());
        frame.pop();
        let mut harness = Harness::new(app);
        assert_eq!(harness.feed(&frame), (0, Flow::Continue));
        assert!(frame.len() <= harness.app.max_pending_input());
    }

    /// A frame timeout is answered with an error frame; a full server refuses with one.
    #[test]
    fn timeout_and_refusal_frames() {
        let mut harness = Harness::new(App::default());
        assert_eq!(
            harness.feed(&search_request("ring")[..7]),
            (0, Flow::Continue)
        );
        let mut out = Output::new(
            &mut harness.reply,
            &mut harness.broadcast,
            &mut harness.requests,
        );
        harness
            .app
            .on_timeout(&mut harness.session, Timeout::Frame, &mut out);
        assert_eq!(
            harness.reply,
            expected_error("request not completed in time")
        );
        assert_eq!(
            harness.app.refusal(),
            Some(&expected_error("server busy")[..])
        );
    }

    fn arb_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..40)
            .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        /// Random binary frames round-trip through encoder and decoder, whatever the split.
        #[test]
        fn binary_frames_round_trip(
            content_type in arb_text().prop_filter("not JSON", |t| t != JSON_TYPE),
            encoding in arb_text(),
            content in proptest::collection::vec(any::<u8>(), 0..300),
            split in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            encode(&mut bytes, &content_type, &encoding, &[&content]).unwrap();
            let split = split.index(bytes.len() + 1);
            let frames = decode_chunks(&[&bytes[..split], &bytes[split..]]).unwrap();
            prop_assert_eq!(frames, vec![Frame {
                header: Header {
                    byteorder: ByteOrder::NATIVE,
                    content_type,
                    content_encoding: encoding,
                    content_length: content.len(),
                },
                content: Content::Bytes(Vec::leak(content.clone())),
            }]);
        }

        /// Random JSON objects of strings round-trip.
        #[test]
        fn json_frames_round_trip(fields in proptest::collection::btree_map(arb_text(), arb_text(), 0..8)) {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut bytes = Vec::new();
            encode_json_fields(&mut bytes, &pairs).unwrap();
            let (frame, used) = decode(&bytes, MAX).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            let expected: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            prop_assert_eq!(frame.content, Content::Json(expected));
        }

        /// Random bytes never panic the decoder, whole or in pieces, and a decoded frame
        /// never claims more bytes than it was given.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), step in 1usize..64) {
            if let Ok(Some((_, used))) = decode(&bytes, MAX) {
                prop_assert!(used <= bytes.len());
            }
            let mut decoder = Decoder::new(64);
            for end in (0..=bytes.len()).step_by(step) {
                if let Ok(Some((_, used))) = decoder.decode(&bytes[..end]) {
                    prop_assert!(used <= end);
                    break;
                }
            }
        }

        /// Random bytes behind a valid prefix and a plausible header never panic either.
        #[test]
        fn random_headers_never_panic(header in proptest::collection::vec(any::<u8>(), 1..200), tail in proptest::collection::vec(any::<u8>(), 0..50)) {
            let mut bytes = (header.len() as u16).to_be_bytes().to_vec();
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(&tail);
            let _ = decode(&bytes, MAX);
            let mut harness = Harness::new(App::default());
            let (used, _) = harness.feed(&bytes);
            prop_assert!(used <= bytes.len());
        }
    }
}
