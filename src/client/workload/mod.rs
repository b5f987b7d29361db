//! What the load generator says to a server and how it checks the answers: the only
//! protocol-specific part of the generator. Each connection owns one [`Exchange`] that
//! writes requests and reads their responses back, in order, without allocating per request.

pub mod app;
pub mod echo;
pub mod http;

use std::fmt;
use std::sync::Arc;

pub use app::AppExchange;
pub use echo::EchoExchange;
pub use http::{HttpExchange, HttpRequest, HttpWorkload, StatusSet};

/// How far [`Exchange::read_response`] got with the bytes it was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// `used` bytes belonged to the current response, which is not finished. Bytes past
    /// `used` must be shown again, joined with what arrives next (e.g. half an HTTP header).
    NeedMore { used: usize },
    /// The current response ended after `used` bytes.
    Done { used: usize, answer: Answer },
}

/// What a complete response said, beyond its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// False when it was well formed but reports a failure (an HTTP status not expected,
    /// an app error reply): counted, and the connection goes on.
    pub accepted: bool,
    /// The HTTP status code (0 for protocols without one).
    pub status: u16,
    /// The server closes the connection after this response (`Connection: close`, an
    /// HTTP/1.0 answer, a body that ends at the close): nothing after it gets an answer.
    pub last: bool,
}

impl Answer {
    /// A response of a protocol without statuses, judged `accepted`.
    pub fn plain(accepted: bool) -> Self {
        Answer {
            accepted,
            status: 0,
            last: false,
        }
    }
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

    /// Whether part of the current response was consumed (bytes held back unconsumed are
    /// the caller's to know): a close now cuts a response short.
    fn mid_response(&self) -> bool;

    /// The server closed the connection: a response whose end is the close is complete.
    fn finish_at_eof(&mut self) -> Option<Answer> {
        None
    }

    /// The connection was re-established: what was in flight is gone, and the next
    /// response answers the next request written.
    fn reset(&mut self);
}

/// The protocols the generator speaks, as `--protocol` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadProtocol {
    /// Send `size` random bytes, expect them back unchanged.
    Echo,
    /// The tutorial's JSON-header protocol: `search` requests, answers checked.
    App,
    /// Any HTTP/1.1 request; responses framed, statuses counted.
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
    /// HTTP: the request and what its responses must be, built once and shared.
    pub http: Arc<HttpWorkload>,
    /// Mixed into every connection's payload so two runs do not send the same bytes.
    pub seed: u64,
}

impl Workload {
    /// Echo messages of `size` bytes.
    pub fn echo(size: usize, seed: u64) -> Self {
        Workload {
            protocol: LoadProtocol::Echo,
            size,
            http: Arc::new(HttpWorkload::new(&HttpRequest::get("localhost", "/"))),
            seed,
        }
    }

    /// The app protocol's search requests.
    pub fn app() -> Self {
        Workload {
            protocol: LoadProtocol::App,
            ..Workload::echo(64, 0)
        }
    }

    /// HTTP requests as `http` describes them.
    pub fn http(http: HttpWorkload) -> Self {
        Workload {
            protocol: LoadProtocol::Http,
            http: Arc::new(http),
            ..Workload::echo(64, 0)
        }
    }

    /// The exchange of connection number `connection` (unique within the run).
    pub fn exchange(&self, connection: u64) -> ConnExchange {
        match self.protocol {
            LoadProtocol::Echo => ConnExchange::Echo(EchoExchange::new(
                self.size,
                self.seed ^ connection.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )),
            LoadProtocol::App => ConnExchange::App(AppExchange::new()),
            LoadProtocol::Http => ConnExchange::Http(HttpExchange::new(self.http.clone())),
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

    fn mid_response(&self) -> bool {
        match self {
            ConnExchange::Echo(e) => e.mid_response(),
            ConnExchange::App(e) => e.mid_response(),
            ConnExchange::Http(e) => e.mid_response(),
        }
    }

    fn finish_at_eof(&mut self) -> Option<Answer> {
        match self {
            ConnExchange::Echo(e) => e.finish_at_eof(),
            ConnExchange::App(e) => e.finish_at_eof(),
            ConnExchange::Http(e) => e.finish_at_eof(),
        }
    }

    fn reset(&mut self) {
        match self {
            ConnExchange::Echo(e) => e.reset(),
            ConnExchange::App(e) => e.reset(),
            ConnExchange::Http(e) => e.reset(),
        }
    }
}
