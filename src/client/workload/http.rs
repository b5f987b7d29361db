//! HTTP/1.1 requests: any method, path, headers and body, built once per run and shared
//! by every connection. Responses are parsed with `httparse` (status line and headers);
//! bodies are framed by `Content-Length`, chunked coding or the close, and skipped, or
//! compared with `--expect-body` as they arrive, never buffered. 1xx answers are
//! interim; 204, 304 and answers to HEAD have no body. A status outside `--expect-status`
//! is a counted failure, not a broken stream; a malformed response ends the connection.

use std::fmt;
use std::sync::Arc;

use super::{Answer, Exchange, Progress, ResponseError};
use crate::protocol::http::body::{list_elements, Body, Framing, FramingError};
use crate::protocol::http::MAX_HEADERS;

/// Largest response head (status line and headers) held while it arrives: real servers
/// send well under 8 KiB; more is a broken or hostile server.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest chunk-size line or trailer section held while it arrives.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// An HTTP request as the user describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// The request target: a path and query (`/`, `/search?q=1`).
    pub path: String,
    /// The `Host` header: the URL's authority.
    pub host: String,
    /// Extra header fields, in order; one named Host, Connection or Content-Length
    /// replaces the generator's own.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Ask the server to keep the connection (false: `Connection: close`, one request per
    /// connection).
    pub keep_alive: bool,
}

impl HttpRequest {
    /// `GET path` with keep-alive.
    pub fn get(host: &str, path: &str) -> Self {
        HttpRequest {
            method: "GET".into(),
            path: path.into(),
            host: host.into(),
            headers: Vec::new(),
            body: Vec::new(),
            keep_alive: true,
        }
    }

    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !has("host") {
            out += &format!("Host: {}\r\n", self.host);
        }
        for (name, value) in &self.headers {
            out += &format!("{name}: {value}\r\n");
        }
        if !has("connection") {
            out += if self.keep_alive {
                "Connection: keep-alive\r\n"
            } else {
                "Connection: close\r\n"
            };
        }
        let sends_body = !self.body.is_empty()
            || ["POST", "PUT", "PATCH"]
                .iter()
                .any(|m| self.method.eq_ignore_ascii_case(m));
        if sends_body && !has("content-length") && !has("transfer-encoding") {
            out += &format!("Content-Length: {}\r\n", self.body.len());
        }
        out += "\r\n";
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A set of status codes: `200`, `200-299`, `2xx`, comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl Default for StatusSet {
    /// Success is 2xx.
    fn default() -> Self {
        StatusSet(vec![(200, 299)])
    }
}

impl StatusSet {
    pub fn contains(&self, code: u16) -> bool {
        self.0
            .iter()
            .any(|&(low, high)| (low..=high).contains(&code))
    }
}

impl std::str::FromStr for StatusSet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let code = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(c) if (100..=999).contains(&c) => Ok(c),
                _ => Err(format!("{t:?} is not a status code (100-999)")),
            }
        };
        let mut ranges = Vec::new();
        for item in text.split(',').map(str::trim) {
            let range = match item.split_once('-') {
                Some((low, high)) => (code(low)?, code(high)?),
                None if item.len() == 3 && item[1..].eq_ignore_ascii_case("xx") => {
                    let class = code(&format!("{}00", &item[..1]))?;
                    (class, class + 99)
                }
                None => (code(item)?, code(item)?),
            };
            if range.0 > range.1 {
                return Err(format!("{item:?}: the range is empty"));
            }
            ranges.push(range);
        }
        Ok(StatusSet(ranges))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (low, high)) in self.0.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            if low == high {
                write!(f, "{sep}{low}")?;
            } else {
                write!(f, "{sep}{low}-{high}")?;
            }
        }
        Ok(())
    }
}

/// What every connection of an HTTP run sends and how it judges the answers.
#[derive(Debug, Clone)]
pub struct HttpWorkload {
    request: Box<[u8]>,
    /// `METHOD path`, for the report.
    pub label: String,
    /// HEAD: responses carry no body, whatever their framing fields say.
    head: bool,
    pub expect_status: StatusSet,
    /// Each response's body must be exactly this.
    pub expect_body: Option<Arc<[u8]>>,
}

impl HttpWorkload {
    /// Accepting 2xx answers with any body.
    pub fn new(request: &HttpRequest) -> Self {
        HttpWorkload {
            request: request.encode().into_boxed_slice(),
            label: format!("{} {}", request.method, request.path),
            head: request.method.eq_ignore_ascii_case("HEAD"),
            expect_status: StatusSet::default(),
            expect_body: None,
        }
    }
}

/// Where the response being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Status line and headers.
    Head,
    /// The body, skipped by the decoder the responder uses for request bodies; `checked`
    /// bytes of it matched `--expect-body` so far.
    Body {
        body: Body,
        answer: Answer,
        checked: usize,
    },
    /// A body without a length: everything until the server closes.
    UntilClose { answer: Answer, checked: usize },
}

/// One connection's requests and the framing state of the response being read.
#[derive(Debug)]
pub struct HttpExchange {
    workload: Arc<HttpWorkload>,
    stage: Stage,
}

impl HttpExchange {
    pub fn new(workload: Arc<HttpWorkload>) -> Self {
        HttpExchange {
            workload,
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
        if code == 101 {
            return Err(ResponseError(
                "the server switched protocols (101), which a load of HTTP requests cannot follow"
                    .into(),
            ));
        }
        if (100..200).contains(&code) {
            // An interim response (100 Continue, 103 Early Hints): the real one follows.
            return Ok(Progress::NeedMore { used });
        }
        let mut framing = Framing::default();
        // HTTP/1.1 keeps the connection unless it says close; HTTP/1.0 closes unless it
        // says keep-alive (RFC 9112 §9.3).
        let mut last = response.version == Some(0);
        for header in response.headers.iter() {
            if framing
                .add(header.name.as_bytes(), header.value)
                .map_err(framing_error)?
            {
                continue;
            }
            if header.name.eq_ignore_ascii_case("connection") {
                for option in list_elements(header.value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        last = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        last = false;
                    }
                }
            }
        }
        let workload = &*self.workload;
        let mut answer = Answer {
            accepted: workload.expect_status.contains(code),
            status: code,
            last,
        };
        let body = if workload.head || code == 204 || code == 304 {
            Body::Done
        } else {
            match framing.body().map_err(framing_error)? {
                Some(body) => body,
                None => {
                    // The body is everything until the close.
                    answer.last = true;
                    self.stage = Stage::UntilClose { answer, checked: 0 };
                    return Ok(Progress::NeedMore { used });
                }
            }
        };
        if body == Body::Done {
            self.check_body_end(0)?;
            return Ok(Progress::Done { used, answer });
        }
        self.stage = Stage::Body {
            body,
            answer,
            checked: 0,
        };
        Ok(Progress::NeedMore { used })
    }

    /// Compares a piece of body data, the `checked` bytes before it having matched.
    fn check_body(&self, checked: &mut usize, data: &[u8]) -> Result<(), ResponseError> {
        if let Some(expected) = &self.workload.expect_body {
            let end = *checked + data.len();
            if expected.get(*checked..end) != Some(data) {
                return Err(ResponseError(format!(
                    "HTTP response body differs from --expect-body ({} bytes) at byte {}",
                    expected.len(),
                    *checked
                        + data
                            .iter()
                            .zip(&expected[(*checked).min(expected.len())..])
                            .take_while(|(a, b)| a == b)
                            .count()
                )));
            }
        }
        *checked += data.len();
        Ok(())
    }

    /// The body ended after `checked` matching bytes: it must not be short.
    fn check_body_end(&self, checked: usize) -> Result<(), ResponseError> {
        match &self.workload.expect_body {
            Some(expected) if expected.len() != checked => Err(ResponseError(format!(
                "HTTP response body of {checked} bytes where --expect-body has {}",
                expected.len()
            ))),
            _ => Ok(()),
        }
    }
}

fn framing_error(e: FramingError) -> ResponseError {
    ResponseError(format!("HTTP response: {e}"))
}

impl Exchange for HttpExchange {
    fn write_request(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.workload.request);
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
                    Progress::Done { used: n, answer } => {
                        return Ok(Progress::Done {
                            used: used + n,
                            answer,
                        })
                    }
                },
                Stage::Body {
                    mut body,
                    answer,
                    mut checked,
                } => {
                    let mut mismatch = Ok(());
                    used += body
                        .read(rest, MAX_CHUNK_LINE, |data| {
                            if mismatch.is_ok() {
                                mismatch = self.check_body(&mut checked, data);
                            }
                        })
                        .map_err(|e| ResponseError(format!("malformed HTTP response body: {e}")))?;
                    mismatch?;
                    if body == Body::Done {
                        self.stage = Stage::Head;
                        self.check_body_end(checked)?;
                        return Ok(Progress::Done { used, answer });
                    }
                    self.stage = Stage::Body {
                        body,
                        answer,
                        checked,
                    };
                    return Ok(Progress::NeedMore { used });
                }
                Stage::UntilClose {
                    answer,
                    mut checked,
                } => {
                    self.check_body(&mut checked, rest)?;
                    self.stage = Stage::UntilClose { answer, checked };
                    return Ok(Progress::NeedMore { used: input.len() });
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

    fn mid_response(&self) -> bool {
        self.stage != Stage::Head
    }

    fn finish_at_eof(&mut self) -> Option<Answer> {
        match self.stage {
            Stage::UntilClose { answer, checked } => {
                self.stage = Stage::Head;
                // A body cut short by the close is not the one expected either.
                let complete = self.check_body_end(checked).is_ok();
                Some(Answer {
                    accepted: answer.accepted && complete,
                    ..answer
                })
            }
            _ => None,
        }
    }

    fn reset(&mut self) {
        self.stage = Stage::Head;
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

    fn exchange_for(workload: HttpWorkload) -> HttpExchange {
        HttpExchange::new(Arc::new(workload))
    }

    fn get() -> HttpExchange {
        exchange_for(HttpWorkload::new(&HttpRequest::get("h", "/")))
    }

    /// Feeds `stream` in the given pieces the way the generator does (keeping what was not
    /// used and showing it again with the next piece); returns each response's verdict.
    fn feed(exchange: &mut HttpExchange, pieces: &[&[u8]]) -> Result<Vec<bool>, ResponseError> {
        Ok(answers(exchange, pieces)?
            .into_iter()
            .map(|a| a.accepted)
            .collect())
    }

    /// Like [`feed`], with each response's whole answer.
    fn answers(
        exchange: &mut HttpExchange,
        pieces: &[&[u8]],
    ) -> Result<Vec<Answer>, ResponseError> {
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
                    Progress::Done { used, answer } => {
                        verdicts.push(answer);
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

    /// The default request is a keep-alive `GET /` naming the host; method, path,
    /// headers and a body are sent as given, a user's Host or Connection replacing ours.
    #[test]
    fn requests_are_built_as_described() {
        let mut out = Vec::new();
        exchange_for(HttpWorkload::new(&HttpRequest::get(
            "example.test:8080",
            "/",
        )))
        .write_request(&mut out);
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nHost: example.test:8080\r\nConnection: keep-alive\r\n\r\n"
        );
        let post = HttpRequest {
            method: "POST".into(),
            path: "/api?x=1".into(),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("host".into(), "other".into()),
            ],
            body: b"{}".to_vec(),
            keep_alive: false,
            ..HttpRequest::get("h", "/")
        };
        assert_eq!(
            String::from_utf8(post.encode()).unwrap(),
            "POST /api?x=1 HTTP/1.1\r\nContent-Type: application/json\r\nhost: other\r\n\
             Connection: close\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    /// Status sets: single codes, ranges and classes; 2xx by default.
    #[test]
    fn status_sets() {
        let set: StatusSet = "200,301-302,4xx".parse().unwrap();
        for (code, inside) in [
            (200, true),
            (201, false),
            (302, true),
            (404, true),
            (500, false),
        ] {
            assert_eq!(set.contains(code), inside, "{code}");
        }
        assert_eq!(set.to_string(), "200,301-302,400-499");
        assert!(StatusSet::default().contains(204) && !StatusSet::default().contains(304));
        for bad in ["", "99", "abc", "300-200", "1000"] {
            assert!(bad.parse::<StatusSet>().is_err(), "{bad:?}");
        }
    }

    /// The answers' statuses, and whether the server closes after them: `Connection:
    /// close`, HTTP/1.0 without keep-alive, or a body that ends at the close (complete
    /// only at EOF).
    #[test]
    fn statuses_and_last_answers() {
        let stream = [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"[..],
            b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
        ]
        .concat();
        let got: Vec<(u16, bool, bool)> = answers(&mut get(), &[&stream])
            .unwrap()
            .into_iter()
            .map(|a| (a.status, a.accepted, a.last))
            .collect();
        assert_eq!(
            got,
            [
                (200, true, false),
                (503, false, true),
                (200, true, true),
                (200, true, false)
            ]
        );
        let mut exchange = get();
        assert_eq!(
            answers(&mut exchange, &[b"HTTP/1.0 200 OK\r\n\r\nuntil the close"]).unwrap(),
            []
        );
        assert!(exchange.mid_response());
        let answer = exchange.finish_at_eof().expect("complete at the close");
        assert!(answer.accepted && answer.last);
        assert!(!exchange.mid_response());
    }

    /// HEAD answers carry no body whatever their Content-Length says.
    #[test]
    fn head_answers_have_no_body() {
        let head = HttpRequest {
            method: "HEAD".into(),
            ..HttpRequest::get("h", "/")
        };
        let mut exchange = exchange_for(HttpWorkload::new(&head));
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\n";
        assert_eq!(feed(&mut exchange, &[stream]), Ok(vec![true, true]));
    }

    /// With `--expect-body`, bodies are compared as they arrive, chunked or not, at every
    /// split point; a different or short body is a mismatch.
    #[test]
    fn expected_bodies_are_checked() {
        let mut workload = HttpWorkload::new(&HttpRequest::get("h", "/"));
        workload.expect_body = Some(Arc::from(&b"Hello, World!"[..]));
        let good = [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nHello, \r\n6\r\nWorld!\r\n0\r\n\r\n",
        ]
        .concat();
        for split in 0..=good.len() {
            let (a, b) = good.split_at(split);
            let mut exchange = exchange_for(workload.clone());
            assert_eq!(
                feed(&mut exchange, &[a, b]),
                Ok(vec![true, true]),
                "split at {split}"
            );
        }
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nHello, World!!",
        ] {
            let err = feed(&mut exchange_for(workload.clone()), &[bad]).unwrap_err();
            assert!(err.0.contains("--expect-body"), "{err}");
        }
    }

    /// Fixed-length, chunked, bodiless and interim responses back to back are all framed
    /// right when they arrive in one piece; a 404 is a failed but well-framed response.
    #[test]
    fn frames_every_kind_of_response() {
        let stream = all_responses();
        assert_eq!(feed(&mut get(), &[&stream]), Ok(VERDICTS.to_vec()));
    }

    /// The same stream split at every point into two reads gives the same responses.
    #[test]
    fn every_split_point() {
        let stream = all_responses();
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(
                feed(&mut get(), &[a, b]),
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
        assert_eq!(feed(&mut get(), &pieces), Ok(VERDICTS.to_vec()));
    }

    /// Responses whose framing is broken, or that are not HTTP, end the connection.
    #[test]
    fn refuses_unframed_and_malformed() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
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
                feed(&mut get(), &[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A head that never ends is refused once it passes the cap instead of growing.
    #[test]
    fn endless_head_is_capped() {
        let mut exchange = get();
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
            let mut exchange = get();
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
            prop_assert_eq!(feed(&mut get(), &pieces), Ok(vec![true; lengths.len()]));
        }
    }
}
