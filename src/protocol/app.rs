//! The tutorial's application protocol (`libserver.py` / `libclient.py`'s `Message`): a
//! 2-byte big-endian header length, a UTF-8 JSON header, then `content-length` bytes of
//! content. Pure pieces only: the frame head reader both sides share, the clients'
//! whole-frame decoder, an encoder, and the server, which consumes content as it arrives
//! (its JSON decoder is in [`request`]).

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

/// Decodes a whole (client-side, small) content as its header says: JSON text must be an
/// object; anything else is bytes. The server decodes its requests with [`RequestDecoder`].
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

/// Appends the response to a binary request: the tutorial's prefix and its first bytes.
fn respond_binary(first_bytes: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    encode(
        out,
        SERVER_BINARY_TYPE,
        BINARY_ENCODING,
        &[BINARY_REPLY_PREFIX, first_bytes],
    )
}

/// A JSON decoder whose content was at most this long is kept for the next request: the
/// parser's buffers, which grow to the longest string or number passed to it, then hold
/// no more than this.
const RECYCLE_MAX_CONTENT: usize = 4096;
/// A JSON content at most this long that is all in the input with its head is decoded
/// in one go (`request::decode_whole`): the search requests of the tutorial are ~40 bytes,
/// and a content this small costs nothing to parse from the input where it lies.
const WHOLE_MAX_CONTENT: usize = 4096;

/// The app protocol server: answers every request on a connection, in order, and keeps
/// the connection open for more; a bad frame gets an error reply, then the close.
#[derive(Debug)]
pub struct App {
    max_content_length: usize,
    /// The `{"error": "server busy"}` frame, encoded once.
    refusal: Vec<u8>,
    /// A JSON decoder left by a finished small request, for the next one: a request that
    /// comes whole in one read then allocates no parser.
    spare: Option<Box<RequestDecoder>>,
}

impl Clone for App {
    fn clone(&self) -> Self {
        App {
            max_content_length: self.max_content_length,
            refusal: self.refusal.clone(),
            spare: None,
        }
    }
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
            spare: None,
        }
    }

    pub fn max_content_length(&self) -> usize {
        self.max_content_length
    }

    /// The stage after a header: its content, consumed as it arrives.
    fn content_stage(&mut self, header: &Header) -> Stage {
        let left = header.content_length;
        if header.content_type == JSON_TYPE {
            Stage::Json {
                left,
                recycle: left <= RECYCLE_MAX_CONTENT,
                decoder: self.spare.take().unwrap_or_default(),
            }
        } else {
            Stage::Binary {
                left,
                first: [0; BINARY_REPLY_ECHOED],
                first_len: 0,
            }
        }
    }

    /// Ends the session's frame (done, refused or abandoned): back to waiting for a prefix.
    fn end_frame(&mut self, session: &mut AppSession) {
        let idle = Stage::Head(FrameHead::new(self.max_content_length));
        if let Stage::Json {
            mut decoder,
            recycle: true,
            ..
        } = std::mem::replace(&mut session.stage, idle)
        {
            // Only after a small content: the parser's buffers are as small as that.
            decoder.reset();
            self.spare = Some(decoder);
        }
        session.holding = false;
    }

    /// Consumes what `input` holds of the session's frames; see `on_input`.
    fn serve(
        &mut self,
        session: &mut AppSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            if out.is_full() && !rest.is_empty() && matches!(session.stage, Stage::Head(_)) {
                // The answers so far fill the connection's queue: the next request waits,
                // unread, until the client has taken them.
                return (used, Flow::Pause);
            }
            match &mut session.stage {
                // The head is parsed whole, so its bytes stay with the loop until all are in.
                Stage::Head(head) => match head.decode(rest) {
                    Ok(None) => return (used, Flow::Continue),
                    Ok(Some((header, len))) => {
                        used += len;
                        log::debug!(
                            "{}: {} request with {} bytes of content",
                            session.peer,
                            header.content_type,
                            header.content_length
                        );
                        // The common case: a small request whose content came with its
                        // head is read in one go from the input (see `decode_whole`).
                        let whole = (header.content_type == JSON_TYPE
                            && header.content_length <= WHOLE_MAX_CONTENT)
                            .then(|| input.get(used..used + header.content_length))
                            .flatten()
                            .and_then(request::decode_whole);
                        match whole {
                            Some(request) => {
                                used += header.content_length;
                                if let Err(flow) = answer_json(session, &request, out) {
                                    return (used, flow);
                                }
                            }
                            None => session.stage = self.content_stage(&header),
                        }
                    }
                    Err(e) => return (used, self.refuse(session, &e, out)),
                },
                // Content is consumed as it arrives; only what the answer needs is kept.
                Stage::Binary {
                    left,
                    first,
                    first_len,
                } => {
                    let take = (*left).min(rest.len());
                    let chunk = rest.get(..take).unwrap_or_default();
                    let room = first.get_mut(usize::from(*first_len)..).unwrap_or_default();
                    let keep = room.len().min(chunk.len());
                    room[..keep].copy_from_slice(&chunk[..keep]);
                    *first_len += keep as u8; // at most BINARY_REPLY_ECHOED
                    *left -= take;
                    used += take;
                    if *left > 0 {
                        return (used, Flow::Continue);
                    }
                    let (first, first_len) = (*first, *first_len);
                    self.end_frame(session);
                    let first_bytes = first.get(..usize::from(first_len)).unwrap_or_default();
                    log::debug!("{}: binary request {}", session.peer, ByteStr(first_bytes));
                    if let Err(e) = respond_binary(first_bytes, out.reply_buf()) {
                        log::error!("{}: cannot encode a response: {e}", session.peer);
                        return (used, Flow::Close);
                    }
                    out.count_request();
                }
                Stage::Json { left, decoder, .. } => {
                    let chunk = rest.get(..(*left).min(rest.len())).unwrap_or_default();
                    let is_end = chunk.len() == *left;
                    match decoder.feed(chunk, is_end) {
                        Ok(n) => {
                            used += n;
                            *left -= n;
                        }
                        Err(e) => return (used, self.refuse(session, &e, out)),
                    }
                    if *left > 0 {
                        return (used, Flow::Continue);
                    }
                    let request = decoder.finish();
                    self.end_frame(session);
                    let request = match request {
                        Ok(request) => request,
                        Err(e) => return (used, self.refuse(session, &e, out)),
                    };
                    if let Err(flow) = answer_json(session, &request, out) {
                        return (used, flow);
                    }
                }
            }
        }
    }

    /// Answers a bad frame with its error; the connection then closes.
    fn refuse(&mut self, session: &mut AppSession, e: &FrameError, out: &mut Output<'_>) -> Flow {
        log::debug!("{}: bad request: {e}; closing", session.peer);
        self.end_frame(session);
        reply_error(out, &session.peer, &e.to_string());
        Flow::Close
    }
}

impl Default for App {
    fn default() -> Self {
        App::new(DEFAULT_MAX_CONTENT_LENGTH)
    }
}

/// Where a connection is within its current frame.
#[derive(Debug)]
enum Stage {
    /// Waiting for all of a prefix and header; their bytes stay unconsumed until then.
    Head(FrameHead),
    /// In the content of a `text/json` request: `left` bytes to go.
    Json {
        left: usize,
        /// The content is small enough for the decoder to be kept for another request.
        recycle: bool,
        decoder: Box<RequestDecoder>,
    },
    /// In the content of any other request: `left` bytes to go, the first ones kept.
    Binary {
        left: usize,
        first: [u8; BINARY_REPLY_ECHOED],
        first_len: u8,
    },
}

/// One connection's state: where it is within the current request. The content is
/// consumed as it arrives, so it is never held whole, here or in the loop's buffer.
#[derive(Debug)]
pub struct AppSession {
    stage: Stage,
    /// The last call left bytes unconsumed: part of a head, or of a UTF-8 character.
    holding: bool,
    peer: Peer,
}

impl AppSession {
    /// Whether a frame has started and is not finished: a head partly received or content
    /// partly consumed. The loop's frame timeout needs this, because consumed content
    /// leaves no unconsumed bytes behind for it to see.
    pub fn mid_frame(&self) -> bool {
        self.holding || !matches!(self.stage, Stage::Head(_))
    }
}

impl Protocol for App {
    type Session = AppSession;

    fn open(&mut self, peer: &Peer, _out: &mut Output<'_>) -> AppSession {
        AppSession {
            stage: Stage::Head(FrameHead::new(self.max_content_length)),
            holding: false,
            peer: *peer,
        }
    }

    fn on_input(
        &mut self,
        session: &mut AppSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        let (used, flow) = self.serve(session, input, out);
        session.holding = flow == Flow::Continue && used < input.len();
        (used, flow)
    }

    fn on_eof(&mut self, session: &mut AppSession, leftover: &[u8], _out: &mut Output<'_>) {
        if session.mid_frame() {
            log::debug!(
                "{}: peer closed in the middle of a frame ({} bytes unused)",
                session.peer,
                leftover.len()
            );
        }
        self.end_frame(session);
    }

    fn on_timeout(&mut self, session: &mut AppSession, kind: Timeout, out: &mut Output<'_>) {
        if kind == Timeout::Frame {
            self.end_frame(session);
            reply_error(out, &session.peer, "request not completed in time");
        }
    }

    fn on_close(&mut self, mut session: AppSession, _peer: &Peer, _out: &mut Output<'_>) {
        self.end_frame(&mut session);
    }

    fn mid_frame(&self, session: &AppSession) -> bool {
        session.mid_frame()
    }

    fn refusal(&self) -> Option<&[u8]> {
        Some(&self.refusal)
    }

    /// The longest head: content is consumed as it arrives, so an unfinished frame never
    /// leaves more than its head (or a UTF-8 character's first bytes) unconsumed.
    fn max_pending_input(&self) -> usize {
        PREFIX_LEN + MAX_HEADER_LEN
    }
}

/// Answers a JSON request: `{"result": ...}`. `Err` carries the flow when it cannot.
fn answer_json(session: &AppSession, request: &Request, out: &mut Output<'_>) -> Result<(), Flow> {
    log::debug!("{}: request {request}", session.peer);
    let answer = request.answer();
    if let Err(e) = encode_json_fields(out.reply_buf(), &[("result", &answer)]) {
        log::error!("{}: cannot encode a response: {e}", session.peer);
        return Err(Flow::Close);
    }
    out.count_request();
    Ok(())
}

fn reply_error(out: &mut Output<'_>, peer: &Peer, message: &str) {
    if let Err(e) = encode_error(out.reply_buf(), message) {
        log::error!("{peer}: cannot encode an error reply: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Broadcasts, Produced};
    use proptest::prelude::*;

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

    struct Harness {
        app: App,
        session: AppSession,
        reply: Vec<u8>,
        broadcast: Broadcasts,
        requests: u64,
    }

    impl Harness {
        fn new(app: App) -> Self {
            let mut app = app;
            let session = app.open(&Peer::Unix, &mut Produced::default().output());
            Harness {
                app,
                session,
                reply: Vec::new(),
                broadcast: Broadcasts::default(),
                requests: 0,
            }
        }

        /// Runs `call` with an output, then gathers what it produced.
        fn with_output<T>(&mut self, call: impl FnOnce(&mut Self, &mut Output<'_>) -> T) -> T {
            let mut produced = Produced::default();
            let result = call(self, &mut produced.output());
            self.reply.extend_from_slice(&produced.reply.to_vec());
            self.broadcast.append(&mut produced.broadcast);
            self.requests += produced.requests;
            result
        }

        fn feed(&mut self, input: &[u8]) -> (usize, Flow) {
            let (used, flow) =
                self.with_output(|h, out| h.app.on_input(&mut h.session, input, out));
            assert!(used <= input.len(), "used {used} of {} bytes", input.len());
            (used, flow)
        }

        /// Presents `chunks` the way the loop does: the unconsumed rest plus each new
        /// chunk, until a Close. Returns the last flow and the most bytes left unconsumed.
        fn feed_chunks<'c>(&mut self, chunks: impl IntoIterator<Item = &'c [u8]>) -> (Flow, usize) {
            let mut pending = Vec::new();
            let mut most = 0;
            for chunk in chunks {
                pending.extend_from_slice(chunk);
                let (used, flow) = self.feed(&pending);
                pending.drain(..used);
                most = most.max(pending.len());
                assert_eq!(
                    self.session.mid_frame(),
                    flow == Flow::Continue
                        && (!pending.is_empty() || !matches!(self.session.stage, Stage::Head(_))),
                );
                if flow == Flow::Close {
                    return (flow, most);
                }
            }
            (Flow::Continue, most)
        }

        fn timeout(&mut self) {
            self.with_output(|h, out| h.app.on_timeout(&mut h.session, Timeout::Frame, out))
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

    /// What the server answers to `bytes` given whole, and whether it closes.
    fn serve(bytes: &[u8]) -> (Vec<u8>, Flow) {
        let mut harness = Harness::new(App::default());
        let (flow, _) = harness.feed_chunks([bytes]);
        (harness.reply, flow)
    }

    /// The `result` the server answers to a JSON request with this content.
    fn answer_to(content: &str) -> String {
        let (reply, flow) = serve(&json_request(content));
        assert_eq!(
            flow,
            Flow::Continue,
            "{content}: {}",
            String::from_utf8_lossy(&reply)
        );
        match decode(&reply, MAX) {
            Ok(Some((
                Frame {
                    content: Content::Json(map),
                    ..
                },
                _,
            ))) => match map.get("result") {
                Some(Value::String(result)) => result.clone(),
                other => panic!("{content}: no result: {other:?}"),
            },
            other => panic!("{content}: not a JSON reply: {other:?}"),
        }
    }

    /// The error the server answers to a JSON request with this content (then closing).
    fn error_to(content: &[u8]) -> String {
        let (reply, flow) = serve(&raw_frame(
            &header_json("text/json", "utf-8", content.len()),
            content,
        ));
        assert_eq!(flow, Flow::Close, "{}", String::from_utf8_lossy(&reply));
        match decode(&reply, MAX) {
            Ok(Some((
                Frame {
                    content: Content::Json(map),
                    ..
                },
                _,
            ))) => match map.get("error") {
                Some(Value::String(error)) => error.clone(),
                other => panic!("no error: {other:?}"),
            },
            other => panic!("not a JSON reply: {other:?}"),
        }
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
            answer_to(r#"{"action": "search", "value": "morpheus"}"#),
            "Follow the white rabbit. 🐰"
        );
        assert_eq!(
            answer_to(r#"{"action": "search", "value": "neo"}"#),
            "No match for 'neo'."
        );
        assert_eq!(
            answer_to(r#"{"action": "find", "value": "x"}"#),
            "Error: invalid action 'find'."
        );
        assert_eq!(
            answer_to(r#"{"value": "x"}"#),
            "Error: invalid action 'null'."
        );
        assert_eq!(answer_to(r#"{"action": "search"}"#), "No match for 'null'.");
        // Escapes are decoded before the lookup, and the query is quoted in full.
        assert_eq!(
            answer_to(r#"{"value": "\ud83d\udc36", "action": "se\u0061rch"}"#),
            "🐾 Playing ball! 🏐"
        );
        let long = "q".repeat(5000);
        assert_eq!(
            answer_to(&format!(r#"{{"action": "search", "value": "{long}"}}"#)),
            format!("No match for '{long}'.")
        );
    }

    /// A non-string action or value is quoted as compact JSON text, cut after
    /// MAX_QUOTED_CHARS characters, however large the value is.
    #[test]
    fn non_string_fields_are_quoted_and_cut() {
        let cases = [
            (r#"{"action": 5}"#, "Error: invalid action '5'."),
            (r#"{"action": null}"#, "Error: invalid action 'null'."),
            (
                r#"{"action": [1, 2.5e3, true]}"#,
                "Error: invalid action '[1,2.5e3,true]'.",
            ),
            (
                r#"{"action": {"a": [false, null, "x\"\u00e9"], "b": {}}}"#,
                r#"Error: invalid action '{"a":[false,null,"x\"é"],"b":{}}'."#,
            ),
            (
                r#"{"action": "search", "value": -0.5}"#,
                "No match for '-0.5'.",
            ),
            (
                r#"{"action": "search", "value": [[], {}]}"#,
                "No match for '[[],{}]'.",
            ),
        ];
        for (content, answer) in cases {
            assert_eq!(answer_to(content), answer, "{content}");
        }
        let full = format!("[{}]", vec!["0"; 10_000].join(", "));
        let compact = full.replace(' ', "");
        assert_eq!(
            answer_to(&format!(r#"{{"action": {full}}}"#)),
            format!(
                "Error: invalid action '{}...'.",
                &compact[..MAX_QUOTED_CHARS]
            )
        );
        // Exactly MAX_QUOTED_CHARS characters are not cut.
        let exact = format!("[{}]", "7".repeat(MAX_QUOTED_CHARS - 2));
        assert_eq!(
            answer_to(&format!(r#"{{"action": {exact}}}"#)),
            format!("Error: invalid action '{exact}'.")
        );
        let digits = "9".repeat(1000);
        assert_eq!(
            answer_to(&format!(r#"{{"action": "search", "value": {digits}}}"#)),
            format!("No match for '{}...'.", &digits[..MAX_QUOTED_CHARS])
        );
        let text = "é".repeat(1000);
        assert_eq!(
            answer_to(&format!(r#"{{"action": ["{text}"]}}"#)),
            format!(
                "Error: invalid action '[\"{}...'.",
                &text[..2 * (MAX_QUOTED_CHARS - 2)]
            )
        );
    }

    /// Duplicate keys: the last one wins, as serde_json decided before.
    #[test]
    fn duplicate_keys_last_wins() {
        assert_eq!(
            answer_to(
                r#"{"action": "find", "value": "ring", "action": "search", "value": "morpheus"}"#
            ),
            "Follow the white rabbit. 🐰"
        );
        assert_eq!(
            answer_to(r#"{"action": "search", "action": [1]}"#),
            "Error: invalid action '[1]'."
        );
    }

    /// Members other than action and value, nested values, and look-alike keys deeper
    /// down are skipped, whatever they hold.
    #[test]
    fn other_members_are_skipped() {
        let long = "x".repeat(100_000);
        let content = format!(
            r#"{{"pad": "{long}", "{long}": 1, "deep": {{"action": "find", "value": [{{"value": 1}}]}}, "n": {}, "action": "search", "value": "ring", "z": [[["value"]]]}}"#,
            "1".repeat(100_000)
        );
        assert_eq!(
            answer_to(&content),
            "In the caves beneath the Misty Mountains. 💍"
        );
    }

    /// A long string the request does not need is passed to the parser only in part:
    /// wherever the cut falls near an escape, a surrogate pair or a multi-byte character,
    /// the request means what serde_json says, and bad text after the cut is still refused.
    #[test]
    fn cuts_fall_between_characters_and_escapes() {
        for pad in 245..265 {
            let a = "a".repeat(pad);
            for x in [
                r"\ud83d\udc36",
                "é",
                "🐶",
                r"\n",
                r#"\""#,
                r"\u00e9",
                r"\\",
                "€x",
            ] {
                let content =
                    format!(r#"{{"p{a}{x}": ["{a}{x}{a}"], "action": "search", "value": "ring"}}"#);
                assert_agrees_with_serde(content.as_bytes(), &[]).unwrap();
                assert_eq!(
                    answer_to(&content),
                    "In the caves beneath the Misty Mountains. 💍",
                    "pad {pad} {x}"
                );
                let quoted = format!(r#"{{"action": ["{a}{x}"]}}"#);
                assert_eq!(
                    answer_to(&quoted),
                    format!(
                        "Error: invalid action '[\"{}...'.",
                        &a[..MAX_QUOTED_CHARS - 2]
                    )
                );
            }
            for x in [r"\ud83d", r"\udc36", "\u{1}", r"\q", r"\u12x4", r"\ud83d\n"] {
                let content =
                    format!(r#"{{"p": "{a}{x}{a}", "action": "search", "value": "ring"}}"#);
                let error = error_to(content.as_bytes());
                assert!(
                    error.starts_with("text/json content is not valid JSON: "),
                    "pad {pad} {x}: {error}"
                );
            }
            let mut content = format!(r#"{{"p": "{a}"#).into_bytes();
            content.extend_from_slice(b"\xe2\x82\"}");
            assert_eq!(error_to(&content), "text/json content is not valid UTF-8");
        }
    }

    /// Bad JSON content gets the replies it got before: not UTF-8, not JSON (with a
    /// position), not an object (with the kind).
    #[test]
    fn bad_json_content_is_answered_as_before() {
        for (content, kind) in [
            ("[1]", "an array"),
            ("\"s\"", "a string"),
            (" 5 ", "a number"),
            ("-1.5e3", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            assert_eq!(
                error_to(content.as_bytes()),
                format!("text/json content must be a JSON object, not {kind}"),
                "{content}"
            );
        }
        for content in [
            &b"{oops"[..],
            b"",
            b"{",
            b"{} x",
            b"{}{}",
            b"[1",
            b"{\"a\": 01}",
            b"{\"a\": \"\x01\"}",
            b"{\"a\": \"\\x\"}",
            b"{\"a\": \"\\u12g4\"}",
            b"{\"a\": \"\\udc36\"}",
            b"{\"a\": \"\\ud83d\"}",
            b"{\"a\": \"\\ud83dx\"}",
            b"{\"a\": \"\\ud83d\\n\"}",
            b"{\"a\": \"\\ud83d\\ud83d\"}",
            b"{\"a\" 1}",
            b"{\"a\": tru}",
            b"tru",
            b"fals",
            b"nul",
            b" 1e",
            b"1e+",
            b"-",
            b"\xef\xbb\xbf{}",
        ] {
            let error = error_to(content);
            assert!(
                error.starts_with("text/json content is not valid JSON: "),
                "{}: {error}",
                String::from_utf8_lossy(content)
            );
        }
        assert_eq!(
            error_to(b"{oops"),
            "text/json content is not valid JSON: syntax error at byte 1"
        );
        for content in [
            &b"\xff}"[..],
            b"{\"a\": \"\xff\"}",
            b"{\"a\": \"\xf0\x9f\x90\"}",
            b"{\"\xc3",
        ] {
            assert_eq!(error_to(content), "text/json content is not valid UTF-8");
        }
        // Valid JSON around the object is fine.
        assert_eq!(answer_to(" \r\n\t{ } \n"), "Error: invalid action 'null'.");
    }

    /// Nesting is limited as serde_json limited it.
    #[test]
    fn nesting_is_limited_like_serde() {
        for depth in [MAX_DEPTH - 1, MAX_DEPTH] {
            let nested = format!(
                "{{\"a\": {}{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            );
            assert!(
                serde_json::from_str::<Value>(&nested).is_ok(),
                "serde at {depth}"
            );
            assert_eq!(answer_to(&nested), "Error: invalid action 'null'.");
        }
        let depth = MAX_DEPTH + 1;
        let nested = format!(
            "{{\"a\": {}{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        );
        assert!(serde_json::from_str::<Value>(&nested).is_err());
        assert_eq!(
            error_to(nested.as_bytes()),
            format!(
                "text/json content is not valid JSON: nested more than {MAX_DEPTH} deep at byte {}",
                6 + MAX_DEPTH - 1
            )
        );
    }

    /// A binary request is answered with its first 10 bytes (or all of a shorter one).
    #[test]
    fn binary_response_repeats_first_ten_bytes() {
        for (request, echoed) in [
            (&b"0123456789abc"[..], &b"0123456789"[..]),
            (b"abc", b"abc"),
            (b"", b""),
        ] {
            let (reply, flow) = serve(&binary_request(request));
            assert_eq!(flow, Flow::Continue);
            let content = [&b"First 10 bytes of request: "[..], echoed].concat();
            assert_eq!(
                reply,
                raw_frame(
                    &header_json(SERVER_BINARY_TYPE, "binary", content.len()),
                    &content
                )
            );
        }
    }

    /// Requests of every kind, then a bad one: the stream the split tests cut up.
    fn mixed_stream() -> Vec<u8> {
        [
            search_request("morpheus"),
            binary_request(b"0123456789abcdef"),
            json_request(
                r#"{"x": [1, {"y": "\u00e9\ud83d\udc36 é🐶"}], "action": "search", "value": "🐶"}"#,
            ),
            binary_request(b""),
            json_request(r#"{"action": {"k": [true, -1.5e+3]}, "value": "ring"}"#),
            json_request("{}"),
            search_request("ring"),
            json_request(r#"{"action": "search", "value": "x"} ["trailing"]"#),
            search_request("never answered"),
        ]
        .concat()
    }

    /// The same requests split at every byte boundary get the same replies, and the
    /// bytes left unconsumed never exceed a head or a UTF-8 character's first bytes.
    #[test]
    fn every_split_gives_the_same_replies() {
        let stream = mixed_stream();
        let (whole, flow) = serve(&stream);
        assert_eq!(flow, Flow::Close);
        assert_eq!(
            decode_chunks_lossy(&whole),
            8,
            "seven answers and the error"
        );
        for split in 0..=stream.len() {
            let mut harness = Harness::new(App::default());
            let (flow, _) = harness.feed_chunks([&stream[..split], &stream[split..]]);
            assert_eq!(
                (harness.reply.as_slice(), flow),
                (whole.as_slice(), Flow::Close),
                "split at {split}"
            );
        }
    }

    /// Byte by byte: the same replies; during content at most a UTF-8 character's first
    /// bytes are left unconsumed.
    #[test]
    fn byte_at_a_time_gives_the_same_replies() {
        let stream = mixed_stream();
        let (whole, _) = serve(&stream);
        let mut harness = Harness::new(App::default());
        let (flow, _) = harness.feed_chunks(stream.chunks(1));
        assert_eq!((harness.reply, flow), (whole, Flow::Close));

        let request = json_request(&format!(
            r#"{{"pad": "{}", "action": "search", "value": "ring"}}"#,
            "é🐶".repeat(100)
        ));
        let head_len =
            request.len() - (request.len() - 2 - header_json("text/json", "utf-8", 0).len() - 2);
        let mut harness = Harness::new(App::default());
        let (flow, most) = harness.feed_chunks(
            request[..head_len + 1]
                .chunks(head_len + 1)
                .chain(request[head_len + 1..].chunks(1)),
        );
        assert_eq!(flow, Flow::Continue);
        assert!(most <= 3, "{most} bytes of content left unconsumed");
        assert_eq!(
            harness.reply,
            expected_result("In the caves beneath the Misty Mountains. 💍")
        );
    }

    /// Counts the frames in `bytes` (all complete).
    fn decode_chunks_lossy(bytes: &[u8]) -> usize {
        let mut at = 0;
        let mut frames = 0;
        while let Ok(Some((_, used))) = decode(&bytes[at..], MAX) {
            at += used;
            frames += 1;
        }
        assert_eq!(at, bytes.len());
        frames
    }

    /// A 16 MiB request of zeros in 64 KiB reads: each read is consumed at once, nothing
    /// is left with the loop, and the answer is the usual one.
    #[test]
    fn large_json_request_is_consumed_as_it_arrives() {
        let mut content = b"{\"action\": \"search\", \"value\": \"ring\", \"zeros\": [0".to_vec();
        while content.len() + 4 <= DEFAULT_MAX_CONTENT_LENGTH {
            content.extend_from_slice(b",0");
        }
        content.extend_from_slice(b"]}");
        let request = raw_frame(&header_json("text/json", "utf-8", content.len()), &content);
        drop(content);
        let mut harness = Harness::new(App::default());
        let (flow, most) = harness.feed_chunks(request.chunks(64 * 1024));
        assert_eq!(
            flow,
            Flow::Continue,
            "{}",
            String::from_utf8_lossy(&harness.reply)
        );
        assert_eq!(most, 0, "a read was not consumed whole");
        assert_eq!(
            harness.reply,
            expected_result("In the caves beneath the Misty Mountains. 💍")
        );
        assert!(!harness.session.mid_frame());
        // Smaller than before (112 bytes, with the header kept in the session).
        assert!(
            std::mem::size_of::<AppSession>() <= 72,
            "{}",
            std::mem::size_of::<AppSession>()
        );
    }

    /// on_input answers every complete frame present, in order, and consumes what it can
    /// of a partial one.
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
        assert!(harness.session.mid_frame());
        // The loop presents the partial head again with the rest of it.
        harness.reply.clear();
        assert_eq!(harness.feed(&partial), (partial.len(), Flow::Continue));
        assert_eq!(
            harness.reply,
            expected_result("In the caves beneath the Misty Mountains. 💍")
        );
        assert!(harness.broadcast.is_empty());
        assert!(!harness.session.mid_frame());
    }

    /// A bad frame after good ones: the good ones are answered, then the error, then Close.
    #[test]
    fn on_input_answers_then_refuses_a_bad_frame() {
        let mut harness = Harness::new(App::default());
        let good = search_request("neo");
        let bad = json_request("[1]");
        let input = [good.clone(), bad.clone(), search_request("ring")].concat();
        assert_eq!(harness.feed(&input), (good.len() + bad.len(), Flow::Close));
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
        assert_eq!(harness.app.max_pending_input(), PREFIX_LEN + MAX_HEADER_LEN);
        let input = raw_frame(&header_json("binary/x", "binary", 11), b"");
        assert_eq!(harness.feed(&input), (0, Flow::Close));
        assert_eq!(
            harness.reply,
            expected_error("content-length 11 exceeds the limit of 10 bytes")
        );
    }

    /// The longest unfinished head stays within `max_pending_input`, so the loop's limit
    /// never closes a connection the protocol would have served; content is never kept.
    #[test]
    fn pending_limit_covers_the_longest_head() {
        let app = App::new(1000);
        let header = header_json("binary/x", "binary", 1000);
        let header = format!("{header:<width$}", width = MAX_HEADER_LEN); // padded with spaces
        let frame = raw_frame(&header, &[7; 1000]);
        let head_len = PREFIX_LEN + MAX_HEADER_LEN;
        assert_eq!(head_len, app.max_pending_input());
        let mut harness = Harness::new(app);
        assert_eq!(harness.feed(&frame[..head_len - 1]), (0, Flow::Continue));
        assert_eq!(
            harness.feed(&frame[..head_len + 500]),
            (head_len + 500, Flow::Continue)
        );
        assert!(harness.session.mid_frame());
        assert_eq!(
            harness.feed(&frame[head_len + 500..]),
            (500, Flow::Continue)
        );
        assert_eq!(harness.requests, 1);
    }

    /// Pipelined requests stop at a full queue with a pause, at a frame boundary, and the
    /// rest is answered when presented again.
    #[test]
    fn pipeline_pauses_when_the_queue_is_full() {
        let mut app = App::default();
        let mut produced = Produced::default();
        let mut session = app.open(&Peer::Unix, &mut produced.output());
        let one = search_request("ring");
        let input = one.repeat(10);
        let answer = expected_result("In the caves beneath the Misty Mountains. 💍");
        let cap = 3 * answer.len();
        let (used, flow) = app.on_input(&mut session, &input, &mut produced.output_for(0, cap));
        assert_eq!((used, flow), (3 * one.len(), Flow::Pause));
        assert_eq!(produced.reply.to_vec(), answer.repeat(3));
        produced.reply.clear();
        let (used, flow) = app.on_input(&mut session, &input[used..], &mut produced.output());
        assert_eq!((used, flow), (7 * one.len(), Flow::Continue));
        assert_eq!(produced.reply.to_vec(), answer.repeat(7));
    }

    /// mid_frame covers a partial head and partly consumed content; a frame timeout
    /// answers with an error frame and forgets the partial frame; a full server refuses
    /// with an error frame.
    #[test]
    fn timeout_and_refusal_frames() {
        let request = search_request("ring");
        let head_len = request.len() - 36;
        for cut in [1, 7, head_len, head_len + 10] {
            let mut harness = Harness::new(App::default());
            assert!(!harness.session.mid_frame());
            let (used, flow) = harness.feed(&request[..cut]);
            assert_eq!(flow, Flow::Continue);
            assert_eq!(used, if cut < head_len { 0 } else { cut });
            assert!(harness.session.mid_frame(), "cut at {cut}");
            harness.timeout();
            assert_eq!(
                harness.reply,
                expected_error("request not completed in time")
            );
            assert!(!harness.session.mid_frame());
            // The state was reset: a new frame from its first byte is served.
            harness.reply.clear();
            assert_eq!(harness.feed(&request), (request.len(), Flow::Continue));
            assert_eq!(
                harness.reply,
                expected_result("In the caves beneath the Misty Mountains. 💍")
            );
        }
        let harness = Harness::new(App::default());
        assert_eq!(
            harness.app.refusal(),
            Some(&expected_error("server busy")[..])
        );
    }

    /// What a JSON content means, by the server's reply.
    #[derive(Debug, Clone, PartialEq)]
    enum Outcome {
        Answer(Option<String>),
        NotUtf8,
        NotJson,
        NotObject(String),
    }

    fn server_outcome(content: &[u8], chunks: &[usize]) -> Outcome {
        let request = raw_frame(&header_json("text/json", "utf-8", content.len()), content);
        let mut pieces = Vec::new();
        let mut at = 0;
        for &len in chunks {
            let end = (at + len).min(request.len());
            pieces.push(&request[at..end]);
            at = end;
        }
        pieces.push(&request[at..]);
        let mut harness = Harness::new(App::default());
        let (flow, _) = harness.feed_chunks(pieces);
        let Ok(Some((
            Frame {
                content: Content::Json(map),
                ..
            },
            _,
        ))) = decode(&harness.reply, MAX)
        else {
            panic!("no reply: {:?}", harness.reply);
        };
        match (map.get("result"), map.get("error"), flow) {
            (Some(Value::String(result)), None, Flow::Continue) => {
                Outcome::Answer(Some(result.clone()))
            }
            (None, Some(Value::String(error)), Flow::Close) => {
                if error == "text/json content is not valid UTF-8" {
                    Outcome::NotUtf8
                } else if error.starts_with("text/json content is not valid JSON: ") {
                    Outcome::NotJson
                } else if let Some(kind) =
                    error.strip_prefix("text/json content must be a JSON object, not ")
                {
                    Outcome::NotObject(kind.to_owned())
                } else {
                    panic!("unexpected error {error}")
                }
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// What the serde_json decoder the server used before made of a content; the answer
    /// only when action and value are strings or absent (quotes of other values differ
    /// in key order and number format). `None`: serde_json refuses a number out of range.
    fn serde_outcome(content: &[u8]) -> Option<Outcome> {
        let header = Header {
            byteorder: ByteOrder::NATIVE,
            content_type: JSON_TYPE.into(),
            content_encoding: UTF8.into(),
            content_length: content.len(),
        };
        Some(match parse_content(&header, content) {
            Ok(Content::Json(map)) => {
                let text = |key: &str| match map.get(key) {
                    Some(Value::String(text)) => Some(text.clone()),
                    None => Some("null".to_owned()),
                    Some(_) => None,
                };
                let answer = match (text("action"), text("value")) {
                    (Some(action), Some(query))
                        if action == "search" && map.contains_key("action") =>
                    {
                        Some(search(&query))
                    }
                    (Some(action), _) if !(action == "search" && map.contains_key("action")) => {
                        Some(format!("Error: invalid action '{action}'."))
                    }
                    _ => None,
                };
                Outcome::Answer(answer)
            }
            Ok(Content::Bytes(_)) => unreachable!("JSON content"),
            Err(FrameError::ContentNotUtf8) => Outcome::NotUtf8,
            Err(FrameError::ContentNotJson(e)) if e.contains("out of range") => return None,
            Err(FrameError::ContentNotJson(_)) => Outcome::NotJson,
            Err(FrameError::ContentNotObject(kind)) => Outcome::NotObject(kind.to_owned()),
            Err(e) => panic!("unexpected {e}"),
        })
    }

    /// The server agrees with serde_json on `content`, however it is split.
    fn assert_agrees_with_serde(content: &[u8], chunks: &[usize]) -> Result<(), TestCaseError> {
        let Some(expected) = serde_outcome(content) else {
            return Ok(());
        };
        let got = server_outcome(content, chunks);
        match (&expected, &got) {
            (Outcome::Answer(Some(_)), _) => prop_assert_eq!(&got, &expected),
            (Outcome::Answer(None), Outcome::Answer(_)) => {}
            // UTF-8 was checked first over the whole content before; now the first error
            // in the content wins.
            (Outcome::NotUtf8, Outcome::NotUtf8 | Outcome::NotJson) => {}
            _ => prop_assert_eq!(&got, &expected, "{}", String::from_utf8_lossy(content)),
        }
        Ok(())
    }

    /// JSON-ish pieces, so random sequences are often valid or nearly so.
    const PIECES: [&str; 34] = [
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\\",
        "u",
        "d83d",
        "dc36",
        "00e9",
        "0",
        "1",
        "-",
        ".",
        "e",
        "E",
        "+",
        "true",
        "false",
        "null",
        " ",
        "\n",
        "a",
        "é",
        "🐶",
        "\u{1}",
        "\"action\"",
        "\"value\"",
        "\"search\"",
        "\"ring\"",
        "\\\"",
        "\u{7f}",
    ];

    fn arb_jsonish() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((0..PIECES.len() + 1, any::<bool>()), 0..40).prop_map(|picks| {
            let mut bytes = Vec::new();
            for (pick, cut) in picks {
                match PIECES.get(pick) {
                    // A piece cut short now and then: broken UTF-8 and escapes.
                    Some(piece) if cut && piece.len() > 1 => {
                        bytes.extend_from_slice(&piece.as_bytes()[..piece.len() - 1])
                    }
                    Some(piece) => bytes.extend_from_slice(piece.as_bytes()),
                    None => bytes.push(0xff),
                }
            }
            bytes
        })
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            prop_oneof![
                Just("search".to_owned()),
                Just("ring".to_owned()),
                arb_text()
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("action".to_owned()),
                            Just("value".to_owned()),
                            arb_text()
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
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

        /// Random JSON-ish content, split at random: the server never panics and agrees
        /// with serde_json on what the content is.
        #[test]
        fn jsonish_content_agrees_with_serde(content in arb_jsonish(), chunks in proptest::collection::vec(1usize..40, 0..8)) {
            assert_agrees_with_serde(&content, &chunks)?;
            let wrapped = [&b"{\"value\": "[..], &content, b", \"action\": \"search\"}"].concat();
            assert_agrees_with_serde(&wrapped, &chunks)?;
        }

        /// Random JSON values, compact or pretty, as content or as members of a request,
        /// split at random: the same meaning as serde_json gives them.
        #[test]
        fn json_values_agree_with_serde(value in arb_value(), pretty in any::<bool>(), chunks in proptest::collection::vec(1usize..200, 0..8)) {
            let text = |v: &Value| if pretty { serde_json::to_string_pretty(v).unwrap() } else { serde_json::to_string(v).unwrap() };
            assert_agrees_with_serde(text(&value).as_bytes(), &chunks)?;
            let request = serde_json::json!({"pad": value.clone(), "action": "search", "value": value});
            assert_agrees_with_serde(text(&request).as_bytes(), &chunks)?;
        }

        /// Where the one-go decoder takes a small whole content, it makes the same
        /// request of it as the incremental decoder; random JSON-ish bytes and values.
        #[test]
        fn whole_and_incremental_decoders_agree(content in arb_jsonish(), value in arb_value(), key in arb_text()) {
            let wrapped = [&b"{\"value\": "[..], &content, b", \"action\": \"search\"}"].concat();
            let request = serde_json::to_vec(&serde_json::json!({"action": value.clone(), key: value.clone(), "value": value})).unwrap();
            for content in [content, wrapped, request] {
                if let Some(whole) = request::decode_whole(&content) {
                    let mut decoder = RequestDecoder::new();
                    let incremental = decoder.feed(&content, true).and_then(|_| decoder.finish());
                    prop_assert_eq!(Ok(whole), incremental, "{}", String::from_utf8_lossy(&content));
                }
            }
        }

        /// Random bytes as JSON or binary content, in random pieces, never panic the server.
        #[test]
        fn random_content_never_panics(content in proptest::collection::vec(any::<u8>(), 0..300), json in any::<bool>(), chunks in proptest::collection::vec(1usize..64, 0..8)) {
            let content_type = if json { JSON_TYPE } else { CLIENT_BINARY_TYPE };
            let request = raw_frame(&header_json(content_type, "utf-8", content.len()), &content);
            let mut pieces = Vec::new();
            let mut at = 0;
            for len in chunks {
                let end = (at + len).min(request.len());
                pieces.push(&request[at..end]);
                at = end;
            }
            pieces.push(&request[at..]);
            let mut harness = Harness::new(App::default());
            let (_, most) = harness.feed_chunks(pieces);
            prop_assert!(most <= PREFIX_LEN + MAX_HEADER_LEN);
            prop_assert!(!harness.reply.is_empty());
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
