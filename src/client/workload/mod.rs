//! What the load generator says to a server and how it checks the answers: the only
//! protocol-specific part of the generator. Each connection owns one [`Exchange`] that
//! writes requests and reads their responses back, in order, without allocating per request.

pub mod app;
pub mod echo;
pub mod http;

use std::fmt;

pub use app::AppExchange;
pub use echo::EchoExchange;
pub use http::HttpExchange;

/// How far [`Exchange::read_response`] got with the bytes it was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// `used` bytes belonged to the current response, which is not finished. Bytes past
    /// `used` must be shown again, joined with what arrives next (e.g. half an HTTP header).
    NeedMore { used: usize },
    /// The current response ended after `used` bytes. `accepted` is false when it was
    /// well formed but reports a failure (an HTTP 5xx): counted, and the connection goes on.
    Done { used: usize, accepted: bool },
}

/// A response that does not match what was asked: the stream cannot be trusted any more
/// and the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseError(pub String);

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One connection's side of a request/response protocol. Responses come back in the
/// order the requests were written; the generator tracks which request is outstanding.
pub trait Exchange {
    /// Appends the next request's bytes to `out`.
    fn write_request(&mut self, out: &mut Vec<u8>);

    /// Reads (part of) the response to the oldest outstanding request from the start of
    /// `input`. Called again with the rest of `input` after `Done`.
    fn read_response(&mut self, input: &[u8]) -> Result<Progress, ResponseError>;

    /// The longest unfinished response prefix (`NeedMore { used }` with bytes left over)
    /// the generator may have to hold for this exchange; past it the response is refused.
    fn max_pending(&self) -> usize;
}

/// The protocols the generator speaks, as `--protocol` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadProtocol {
    /// Send `size` random bytes, expect them back unchanged.
    Echo,
    /// The tutorial's JSON-header protocol: `search` requests, answers checked.
    App,
    /// `GET /` with keep-alive; any 2xx or 3xx with a body length counts.
    Http,
}

impl LoadProtocol {
    pub fn name(self) -> &'static str {
        match self {
            LoadProtocol::Echo => "echo",
            LoadProtocol::App => "app",
            LoadProtocol::Http => "http",
        }
    }
}

/// What every connection of a run sends; makes each connection's [`Exchange`].
#[derive(Debug, Clone)]
pub struct Workload {
    pub protocol: LoadProtocol,
    /// Echo: bytes per message.
    pub size: usize,
    /// HTTP: the `Host` header.
    pub host: String,
    /// Mixed into every connection's payload so two runs do not send the same bytes.
    pub seed: u64,
}

impl Workload {
    /// The exchange of connection number `connection` (unique within the run).
    pub fn exchange(&self, connection: u64) -> ConnExchange {
        match self.protocol {
            LoadProtocol::Echo => ConnExchange::Echo(EchoExchange::new(
                self.size,
                self.seed ^ connection.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )),
            LoadProtocol::App => ConnExchange::App(AppExchange::new()),
            LoadProtocol::Http => ConnExchange::Http(HttpExchange::new(&self.host)),
        }
    }
}

/// One connection's exchange, as an enum so the generator's hot path calls it directly.
#[derive(Debug)]
pub enum ConnExchange {
    Echo(EchoExchange),
    App(AppExchange),
    Http(HttpExchange),
}

impl Exchange for ConnExchange {
    fn write_request(&mut self, out: &mut Vec<u8>) {
        match self {
            ConnExchange::Echo(e) => e.write_request(out),
            ConnExchange::App(e) => e.write_request(out),
            ConnExchange::Http(e) => e.write_request(out),
        }
    }

    fn read_response(&mut self, input: &[u8]) -> Result<Progress, ResponseError> {
        match self {
            ConnExchange::Echo(e) => e.read_response(input),
            ConnExchange::App(e) => e.read_response(input),
            ConnExchange::Http(e) => e.read_response(input),
        }
    }

    fn max_pending(&self) -> usize {
        match self {
            ConnExchange::Echo(e) => e.max_pending(),
            ConnExchange::App(e) => e.max_pending(),
            ConnExchange::Http(e) => e.max_pending(),
        }
    }
}
