//! The tutorial's `app-client.py`: one connection, one request (a JSON search or opaque
//! bytes), one response, printed the way the tutorial prints it. Blocking `std::net` with
//! one deadline over the whole exchange: a one-shot client needs no event loop.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::launch::describe;
use crate::protocol::app::{
    encode, encode_json_fields, header_text, Content, Decoder, EncodeError, Frame, BINARY_ENCODING,
    CLIENT_BINARY_TYPE, DEFAULT_MAX_CONTENT_LENGTH,
};
use crate::protocol::ByteStr;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// One request to make, as plain values (the binary builds it from its arguments).
#[derive(Debug, Clone)]
pub struct AppClientConfig {
    pub addr: SocketAddr,
    /// `search` sends a JSON request; anything else sends ACTION+VALUE as bytes.
    pub action: String,
    pub value: String,
    /// Connecting, sending and receiving must all be done within this.
    pub timeout: Duration,
    /// The largest response content accepted, in bytes.
    pub max_content_length: usize,
}

impl AppClientConfig {
    pub fn new(addr: SocketAddr, action: &str, value: &str) -> Self {
        AppClientConfig {
            addr,
            action: action.to_owned(),
            value: value.to_owned(),
            timeout: Duration::from_secs(10),
            max_content_length: DEFAULT_MAX_CONTENT_LENGTH,
        }
    }
}

/// What the server answered. `Display` is the tutorial's output line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppResponse {
    /// The `result` of a JSON response (a string as is, other JSON as text).
    Result(String),
    /// The content of a binary response.
    Binary(Vec<u8>),
}

impl fmt::Display for AppResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppResponse::Result(result) => write!(f, "Got result: {result}"),
            AppResponse::Binary(bytes) => write!(f, "Got response: {}", ByteStr(bytes)),
        }
    }
}

/// Why the exchange failed; `Display` is the one line the binary prints.
#[derive(Debug)]
pub enum AppClientError {
    Request(EncodeError),
    Connect(SocketAddr, io::Error),
    /// The deadline passed while doing this ("connecting", "sending the request", ...).
    Timeout(Duration, &'static str),
    Io(&'static str, io::Error),
    /// The server closed before a whole response; this many bytes had come.
    EarlyClose(usize),
    Malformed(String),
    /// The server answered `{"error": ...}`.
    Server(String),
}

impl fmt::Display for AppClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppClientError::Request(e) => write!(f, "cannot encode the request: {e}"),
            AppClientError::Connect(addr, e) => {
                write!(f, "cannot connect to {addr}: {}", describe(e))
            }
            AppClientError::Timeout(after, doing) => {
                write!(f, "timed out after {}s {doing}", after.as_secs_f64())
            }
            AppClientError::Io(doing, e) => write!(f, "{doing} failed: {}", describe(e)),
            AppClientError::EarlyClose(0) => {
                f.write_str("the server closed the connection without a response")
            }
            AppClientError::EarlyClose(n) => write!(
                f,
                "the server closed the connection in the middle of a response ({n} bytes received)"
            ),
            AppClientError::Malformed(why) => write!(f, "malformed response: {why}"),
            AppClientError::Server(message) => {
                write!(f, "the server refused the request: {message}")
            }
        }
    }
}

impl std::error::Error for AppClientError {}

/// The request frame `app-client.py` sends for ACTION and VALUE.
pub fn encode_request(action: &str, value: &str) -> Result<Vec<u8>, EncodeError> {
    let mut bytes = Vec::new();
    if action == "search" {
        encode_json_fields(&mut bytes, &[("action", action), ("value", value)])?;
    } else {
        let content = [action.as_bytes(), value.as_bytes()];
        encode(&mut bytes, CLIENT_BINARY_TYPE, BINARY_ENCODING, &content)?;
    }
    Ok(bytes)
}

/// What a decoded response means: a result, opaque bytes, or the server's refusal.
pub fn interpret(frame: &Frame<'_>) -> Result<AppResponse, AppClientError> {
    match &frame.content {
        Content::Bytes(bytes) => Ok(AppResponse::Binary(bytes.to_vec())),
        Content::Json(object) => match (object.get("result"), object.get("error")) {
            (Some(Value::String(result)), _) => Ok(AppResponse::Result(result.clone())),
            (Some(result), _) => Ok(AppResponse::Result(result.to_string())),
            (None, Some(Value::String(message))) => Err(AppClientError::Server(message.clone())),
            (None, Some(other)) => Err(AppClientError::Server(other.to_string())),
            (None, None) => Err(AppClientError::Malformed(
                "JSON response has neither \"result\" nor \"error\"".into(),
            )),
        },
    }
}

/// Connects, sends the request, reads one whole response and closes, all within the
/// configured timeout. With debug logging (`-v`) it shows the headers and the bytes.
pub fn run_app_client(config: &AppClientConfig) -> Result<AppResponse, AppClientError> {
    let request = encode_request(&config.action, &config.value).map_err(AppClientError::Request)?;
    let deadline = Deadline::new(config.timeout);

    log::debug!("Starting connection to {}", config.addr);
    let connect_time = deadline.left("connecting")?;
    let mut stream = TcpStream::connect_timeout(&config.addr, connect_time).map_err(|e| {
        if is_timeout(&e) {
            deadline.expired("connecting")
        } else {
            AppClientError::Connect(config.addr, e)
        }
    })?;
    // One small request: send it at once rather than wait for Nagle.
    let _ = stream.set_nodelay(true);

    if log::log_enabled!(log::Level::Debug) {
        log::debug!("Request header: {}", header_text(&request).unwrap_or("?"));
        log::debug!("Sending {} to {}", ByteStr(&request), config.addr);
    }
    let doing = "sending the request";
    stream
        .set_write_timeout(Some(deadline.left(doing)?))
        .map_err(|e| AppClientError::Io(doing, e))?;
    stream.write_all(&request).map_err(|e| {
        if is_timeout(&e) {
            deadline.expired(doing)
        } else {
            AppClientError::Io(doing, e)
        }
    })?;

    let response = read_response(&mut stream, &deadline, config.max_content_length)?;
    log::debug!("Closing connection to {}", config.addr);
    let _ = stream.shutdown(Shutdown::Both);
    Ok(response)
}

/// Reads until one whole frame has arrived, then interprets it.
fn read_response(
    stream: &mut TcpStream,
    deadline: &Deadline,
    max_content_length: usize,
) -> Result<AppResponse, AppClientError> {
    let doing = "waiting for the response";
    let mut decoder = Decoder::new(max_content_length);
    let mut received = Vec::new();
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        match decoder.decode(&received) {
            Ok(Some((frame, _))) => {
                if log::log_enabled!(log::Level::Debug) {
                    log::debug!("Response header: {}", header_text(&received).unwrap_or("?"));
                }
                return interpret(&frame);
            }
            Ok(None) => {}
            Err(e) => return Err(AppClientError::Malformed(e.to_string())),
        }
        stream
            .set_read_timeout(Some(deadline.left(doing)?))
            .map_err(|e| AppClientError::Io(doing, e))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(AppClientError::EarlyClose(received.len())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(deadline.expired(doing)),
            Err(e) => return Err(AppClientError::Io("reading the response", e)),
        };
        let bytes = chunk.get(..n).unwrap_or_default();
        if log::log_enabled!(log::Level::Debug) {
            log::debug!("Received {}", ByteStr(bytes));
        }
        // The decoder has checked the declared length against the limit, so this is bounded.
        received.extend_from_slice(bytes);
    }
}

/// The end of the whole exchange.
struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    fn new(total: Duration) -> Self {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    /// Time left for the next step; an error once none is (a zero socket timeout would
    /// mean "block forever").
    fn left(&self, doing: &'static str) -> Result<Duration, AppClientError> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.expired(doing))
        } else {
            Ok(left)
        }
    }

    fn expired(&self, doing: &'static str) -> AppClientError {
        AppClientError::Timeout(self.total, doing)
    }
}

/// A blocking socket's timeout shows as WouldBlock (EAGAIN) or TimedOut.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::app::{decode, Header, SERVER_BINARY_TYPE};
    use serde_json::Map;

    /// A search is sent as the tutorial's JSON request; anything else as ACTION+VALUE bytes.
    #[test]
    fn requests_are_the_tutorials() {
        let bytes = encode_request("search", "ring").unwrap();
        let (frame, used) = decode(&bytes, DEFAULT_MAX_CONTENT_LENGTH).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.header.content_type, "text/json");
        assert!(bytes.ends_with(br#"{"action": "search", "value": "ring"}"#));

        let bytes = encode_request("get", "stuff").unwrap();
        let (frame, _) = decode(&bytes, DEFAULT_MAX_CONTENT_LENGTH).unwrap().unwrap();
        assert_eq!(frame.header.content_type, CLIENT_BINARY_TYPE);
        assert_eq!(frame.header.content_encoding, "binary");
        assert_eq!(frame.content, Content::Bytes(b"getstuff"));
    }

    fn json_frame(text: &str) -> Frame<'static> {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
            panic!("not an object: {text}")
        };
        frame_with(Content::Json(map))
    }

    fn frame_with(content: Content<'static>) -> Frame<'static> {
        Frame {
            header: Header {
                byteorder: crate::protocol::app::ByteOrder::NATIVE,
                content_type: SERVER_BINARY_TYPE.into(),
                content_encoding: "binary".into(),
                content_length: 0,
            },
            content,
        }
    }

    /// Responses print as the tutorial's client prints them; error replies and JSON
    /// without a result are failures.
    #[test]
    fn responses_are_interpreted() {
        let result = interpret(&json_frame(r#"{"result": "Follow the white rabbit. 🐰"}"#));
        assert_eq!(
            result.unwrap().to_string(),
            "Got result: Follow the white rabbit. 🐰"
        );
        let result = interpret(&json_frame(r#"{"result": 5}"#)).unwrap();
        assert_eq!(result.to_string(), "Got result: 5");
        let binary = interpret(&frame_with(Content::Bytes(b"First \"10\"\n"))).unwrap();
        assert_eq!(binary.to_string(), "Got response: b\"First \\\"10\\\"\\n\"");
        let error = interpret(&json_frame(r#"{"error": "server busy"}"#)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the server refused the request: server busy"
        );
        let error = interpret(&frame_with(Content::Json(Map::new()))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed response: JSON response has neither \"result\" nor \"error\""
        );
    }
}
