//! The tutorial's `app-client.py`: one connection, one request (a JSON search or opaque
//! bytes), one response, printed the way the tutorial prints it. The same client loop and
//! connection core as every other client, with one deadline over the whole exchange: the
//! connect and frame timeouts, both counted from the start.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::driver::{client_timeouts, Client, Driver};
use crate::connection::{Ended, Failure};
use crate::launch::describe;
use crate::net::Peer;
use crate::protocol::app::{
    encode, encode_json_fields, header_text, Content, Decoder, EncodeError, Frame, BINARY_ENCODING,
    CLIENT_BINARY_TYPE, DEFAULT_MAX_CONTENT_LENGTH, MAX_HEADER_LEN, PREFIX_LEN,
};
use crate::protocol::{ByteStr, Flow, Output, Protocol, Timeout};

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
    let exchange = OneRequest {
        config,
        request,
        decoder: Decoder::new(config.max_content_length),
        held: 0,
        outcome: None,
    };
    // Both counted from the start (the frame clock starts with the request): the whole
    // exchange, connect included, ends within the one timeout.
    let timeouts = client_timeouts(config.timeout, Some(config.timeout));
    let io_error = |e| AppClientError::Io("running the event loop", e);
    let mut driver = Driver::new(exchange, timeouts).map_err(io_error)?;
    driver.connect(&config.addr.into()).map_err(io_error)?;
    driver.run().map_err(io_error)?;
    driver.into_protocol().outcome.unwrap_or_else(|| {
        Err(AppClientError::Malformed(
            "the connection ended without an outcome".into(),
        ))
    })
}

/// The exchange as a client protocol of one connection.
struct OneRequest<'a> {
    config: &'a AppClientConfig,
    request: Vec<u8>,
    decoder: Decoder,
    /// Bytes of the response that arrived before the last call (held by the connection
    /// until the whole frame is in), so each read is logged once.
    held: usize,
    outcome: Option<Result<AppResponse, AppClientError>>,
}

impl Protocol for OneRequest<'_> {
    type Session = ();

    fn open(&mut self, _: &Peer, out: &mut Output<'_>) {
        let addr = self.config.addr;
        log::debug!("Starting connection to {addr}");
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "Request header: {}",
                header_text(&self.request).unwrap_or("?")
            );
            log::debug!("Sending {} to {addr}", ByteStr(&self.request));
        }
        out.send(&self.request);
    }

    fn on_input(&mut self, _: &mut (), input: &[u8], _: &mut Output<'_>) -> (usize, Flow) {
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "Received {}",
                ByteStr(input.get(self.held..).unwrap_or_default())
            );
        }
        // The decoder has checked the declared length against the limit, so what the
        // connection holds meanwhile is bounded.
        let outcome = match self.decoder.decode(input) {
            Ok(Some((frame, _))) => {
                if log::log_enabled!(log::Level::Debug) {
                    log::debug!("Response header: {}", header_text(input).unwrap_or("?"));
                }
                interpret(&frame)
            }
            Ok(None) => {
                self.held = input.len();
                return (0, Flow::Continue);
            }
            Err(e) => Err(AppClientError::Malformed(e.to_string())),
        };
        if outcome.is_ok() {
            log::debug!("Closing connection to {}", self.config.addr);
        }
        self.outcome = Some(outcome);
        (input.len(), Flow::Close)
    }

    fn mid_frame(&self, _: &()) -> bool {
        self.outcome.is_none()
    }

    fn on_eof(&mut self, _: &mut (), leftover: &[u8], _: &mut Output<'_>) {
        self.outcome
            .get_or_insert(Err(AppClientError::EarlyClose(leftover.len())));
    }

    fn on_timeout(&mut self, _: &mut (), _: Timeout, out: &mut Output<'_>) {
        // What is still owed is the unsent part of the request.
        let doing = if out.owed() > 0 {
            "sending the request"
        } else {
            "waiting for the response"
        };
        self.outcome
            .get_or_insert(Err(AppClientError::Timeout(self.config.timeout, doing)));
    }

    fn max_pending_input(&self) -> usize {
        PREFIX_LEN + MAX_HEADER_LEN + self.config.max_content_length
    }
}

impl Client for OneRequest<'_> {
    fn on_ended(&mut self, ended: Ended<()>) {
        if self.outcome.is_some() {
            return;
        }
        let config = self.config;
        self.outcome = Some(Err(match ended.error {
            Some(Failure {
                op: "connect",
                error,
            }) if error.kind() == io::ErrorKind::TimedOut => {
                AppClientError::Timeout(config.timeout, "connecting")
            }
            Some(Failure {
                op: "connect",
                error,
            }) => AppClientError::Connect(config.addr, error),
            Some(Failure { op: "read", error }) => {
                AppClientError::Io("reading the response", error)
            }
            Some(Failure { op: "write", error }) => {
                AppClientError::Io("sending the request", error)
            }
            Some(Failure { op, error }) => AppClientError::Io(op, error),
            None => AppClientError::Malformed(format!("closed ({})", ended.reason.name())),
        }));
    }
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
