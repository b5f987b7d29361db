//! HTTP/1.1 responder: the seed's one-shot "Hello,World!" server rebuilt as a keep-alive,
//! pipelining server. Requests are parsed with `httparse`. It serves one page (assembled
//! from bytes built once at start, with only the `Date`, cached per second, and
//! `Connection` varying), or the files beneath a root ([`files`]): GET and HEAD with
//! `Content-Length`, `Last-Modified`, `If-Modified-Since`, a single `Range`, the file's
//! bytes sent by the loop with sendfile(2). A directory is served by its `index.html`.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use httparse::Status;

pub mod body;
pub mod files;

use super::{Flow, Output, Protocol, Timeout};
use crate::net::{describe, Peer};
use crate::root::{Opened, Refusal, Root};
use body::{list_elements, trim_ows, Body, Framing, FramingError};
use files::RangeRequest;

/// The page served when no `--body` is given: the seed's.
pub const DEFAULT_BODY: &[u8] = b"<h1>Hello,World!</h1>";

/// Default cap on a request's header section (request line and header fields, up to and
/// including the blank line): 8 KiB, nginx's default for one header buffer. Larger is 431.
pub const DEFAULT_MAX_HEADER: usize = 8 * 1024;

/// Header fields one request (or one chunked body's trailer section) may carry; more is
/// answered 431. They are parsed into an array of this many on the stack, so the keep-alive
/// path allocates nothing; 64 is well above what browsers send (15-25).
pub const MAX_HEADERS: usize = 64;

/// The largest `--body` file: it is held in memory for the server's lifetime (once: every
/// response shares it), so a page larger than this belongs in a file server.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Bodies of at least this many bytes are queued by reference, not copied: copying a
/// small page is cheaper than a shared chunk's reference count and extra iovec, while a
/// large one copied per response would make pipelined requests multiply memory.
pub const SHARED_BODY_MIN: usize = 4 * 1024;

/// Static files smaller than this are read into the reply rather than sent with sendfile:
/// one pread costs what one sendfile does, and the response then leaves in one write and
/// one segment with its header, and pipelined responses share a writev; above it,
/// sendfile saves the two copies through user space that reading costs.
pub const READ_BELOW: u64 = 16 * 1024;

/// Seconds since the epoch at which `httpdate` stops formatting (year 9999); a clock set
/// that far ahead is clamped rather than allowed to panic.
const LAST_FORMATTABLE_SECOND: u64 = 253_402_300_799;

/// What the protocol needs from the command line.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Served for every GET (and its length for every HEAD).
    pub body: Arc<[u8]>,
    /// The header-section cap in bytes; see [`DEFAULT_MAX_HEADER`].
    pub max_header: usize,
    /// Serve the files beneath this root instead of `body`.
    pub root: Option<Root>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body: Arc::from(DEFAULT_BODY),
            max_header: DEFAULT_MAX_HEADER,
            root: None,
        }
    }
}

/// Reads the file `--body` names, once, at start. The error is one line for `error: ...`.
pub fn read_body(path: &Path) -> Result<Arc<[u8]>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), describe(&e)))?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(format!(
            "{} is {} bytes; --body serves at most {MAX_BODY_BYTES}",
            path.display(),
            bytes.len()
        ));
    }
    Ok(Arc::from(bytes))
}

/// A response built once: status line and fixed headers, and the body. The `Date` and
/// `Connection` headers and the blank line are added per response.
#[derive(Debug, Clone)]
struct Canned {
    head: Box<[u8]>,
    body: Arc<[u8]>,
}

impl Canned {
    fn new(status: &str, extra_headers: &str, body: Arc<[u8]>) -> Canned {
        let head = format!(
            "{}Content-Type: text/html\r\nContent-Length: {}\r\n{extra_headers}",
            status_line(status),
            body.len()
        );
        Canned {
            head: head.into_bytes().into_boxed_slice(),
            body,
        }
    }

    /// An error page: a short HTML body naming the status.
    fn error(status: &str, extra_headers: &str) -> Canned {
        let body = format!("<h1>{status}</h1>");
        Canned::new(status, extra_headers, Arc::from(body.into_bytes()))
    }
}

/// The status line and the `Server` header every response starts with.
fn status_line(status: &str) -> String {
    format!("HTTP/1.1 {status}\r\nServer: multiconn\r\n")
}

/// The `Connection` header a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionHeader {
    /// HTTP/1.1 keep-alive: the default, nothing to say.
    Omitted,
    /// An HTTP/1.0 client asked to keep the connection: confirm it.
    KeepAlive,
    Close,
}

impl ConnectionHeader {
    fn bytes(self) -> &'static [u8] {
        match self {
            ConnectionHeader::Omitted => b"",
            ConnectionHeader::KeepAlive => b"Connection: keep-alive\r\n",
            ConnectionHeader::Close => b"Connection: close\r\n",
        }
    }
}

/// `Date: <IMF-fixdate>\r\n`, formatted at most once per second and reused in between.
#[derive(Debug, Clone)]
struct DateCache {
    /// The second (since the epoch) `header` was formatted for; `None` before the first.
    second: Option<u64>,
    header: [u8; DATE_HEADER_LEN],
    /// How many times it was formatted (a test checks the once-per-second promise).
    formats: u64,
}

/// `Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n`: the IMF-fixdate is always 29 bytes.
const DATE_HEADER_LEN: usize = 6 + 29 + 2;

impl DateCache {
    fn new() -> DateCache {
        DateCache {
            second: None,
            header: [0; DATE_HEADER_LEN],
            formats: 0,
        }
    }

    /// The header for `now`, reformatted only when the second changed.
    fn header(&mut self, now: SystemTime) -> &[u8; DATE_HEADER_LEN] {
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .min(LAST_FORMATTABLE_SECOND);
        if self.second != Some(second) {
            let at = UNIX_EPOCH + std::time::Duration::from_secs(second);
            let mut cursor = &mut self.header[..];
            // Cannot fail: the buffer holds exactly the 37 bytes this writes.
            let _ = write!(cursor, "Date: {}\r\n", httpdate::HttpDate::from(at));
            self.second = Some(second);
            self.formats += 1;
        }
        &self.header
    }
}

/// The HTTP responder of one loop. Cloning is cheap (the body is shared); each clone keeps
/// its own date cache.
#[derive(Clone)]
pub struct Http {
    max_header: usize,
    ok: Canned,
    method_not_allowed: Canned,
    bad_request: Canned,
    header_too_large: Canned,
    request_timeout: Canned,
    /// Static files: where they are, the error pages that keep the connection, and a
    /// buffer for a request's decoded path.
    files: Option<Root>,
    not_found: Canned,
    forbidden: Canned,
    server_error: Canned,
    path: Vec<u8>,
    /// Complete bytes, written to a connection refused because the server is full.
    refusal: Box<[u8]>,
    date: DateCache,
    /// Where the `Date` comes from; tests substitute a fixed clock to assert exact bytes.
    clock: fn() -> SystemTime,
}

impl Default for Http {
    fn default() -> Self {
        Http::new(HttpConfig::default())
    }
}

/// Per-connection state: what remains of the current request's body. Header sections are
/// never stored here: an unfinished one stays in the loop's input buffer.
#[derive(Debug)]
pub struct HttpSession {
    peer: Peer,
    body: Body,
}

/// What one request asks for, once its header section has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RequestHead<'a> {
    method: Method,
    target: &'a str,
    /// The conditions of a static file request.
    range: Option<&'a [u8]>,
    if_range: Option<&'a [u8]>,
    if_modified_since: Option<&'a [u8]>,
    /// `Some(0)`: HTTP/1.0; `Some(1)`: HTTP/1.1 (the only versions `httparse` accepts).
    minor_version: u8,
    keep_alive: bool,
    body: Body,
    /// `Expect: 100-continue`: the client may hold its body back until told to send it.
    expects_continue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Other,
}

/// The error responses that end a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorPage {
    BadRequest,
    HeaderTooLarge,
    RequestTimeout,
}

/// Why a header section is refused with 400: for the debug log.
type BadRequest = &'static str;

impl Http {
    pub fn new(config: HttpConfig) -> Http {
        let refusal = {
            let canned = Canned::error("503 Service Unavailable", "Retry-After: 1\r\n");
            let mut bytes = canned.head.to_vec();
            bytes.extend_from_slice(b"Connection: close\r\n\r\n");
            bytes.extend_from_slice(&canned.body);
            bytes.into_boxed_slice()
        };
        Http {
            // A zero cap would refuse every request; one byte is the least that means anything.
            max_header: config.max_header.max(1),
            ok: Canned::new("200 OK", "", config.body),
            method_not_allowed: Canned::error("405 Method Not Allowed", "Allow: GET, HEAD\r\n"),
            bad_request: Canned::error("400 Bad Request", ""),
            header_too_large: Canned::error("431 Request Header Fields Too Large", ""),
            request_timeout: Canned::error("408 Request Timeout", ""),
            files: config.root,
            not_found: Canned::error("404 Not Found", ""),
            forbidden: Canned::error("403 Forbidden", ""),
            server_error: Canned::error("500 Internal Server Error", ""),
            path: Vec::new(),
            refusal,
            date: DateCache::new(),
            clock: SystemTime::now,
        }
    }

    /// Appends one response: fixed head, the cached `Date`, `Connection`, blank line, body
    /// (shared, not copied, when it is large). No allocation while the reply buffer has
    /// room, which the loop's reused one usually has.
    fn respond(
        canned: &Canned,
        date: &[u8],
        connection: ConnectionHeader,
        with_body: bool,
        out: &mut Output<'_>,
    ) {
        let reply = out.reply_buf();
        reply.extend_from_slice(&canned.head);
        reply.extend_from_slice(date);
        reply.extend_from_slice(connection.bytes());
        reply.extend_from_slice(b"\r\n");
        if !with_body {
        } else if canned.body.len() >= SHARED_BODY_MIN {
            out.send_shared(canned.body.clone());
        } else {
            reply.extend_from_slice(&canned.body);
        }
    }

    /// Answers an error that ends the connection: its page with `Connection: close`.
    fn refuse(&mut self, page: ErrorPage, out: &mut Output<'_>) {
        // A copy of the 37 bytes, so the cache and the page can be borrowed together.
        let date = *self.date.header((self.clock)());
        let canned = match page {
            ErrorPage::BadRequest => &self.bad_request,
            ErrorPage::HeaderTooLarge => &self.header_too_large,
            ErrorPage::RequestTimeout => &self.request_timeout,
        };
        Http::respond(canned, &date, ConnectionHeader::Close, true, out);
        out.count_request();
    }
}

impl Http {
    /// Answers a GET or HEAD for a static file: the file (or its `index.html` for a
    /// directory), a part of it, 304, 416, or an error page that keeps the connection.
    /// Returns false when the response came out short (the file shrank as it was read):
    /// the connection must close, as after a short sendfile.
    fn serve_file(
        &mut self,
        head: &RequestHead<'_>,
        connection: ConnectionHeader,
        out: &mut Output<'_>,
        peer: &Peer,
    ) -> bool {
        let date = *self.date.header((self.clock)());
        let Some(root) = &self.files else {
            return true;
        };
        let opened = files::target_path(head.target, &mut self.path).and_then(|()| {
            match root.open(&self.path) {
                Err(Refusal::Directory) => {
                    self.path.extend_from_slice(b"/index.html");
                    root.open(&self.path)
                }
                other => other,
            }
        });
        let opened = match opened {
            Ok(opened) => opened,
            Err(refusal) => {
                log::debug!("{peer}: {} refused: {refusal}", head.target);
                let canned = match refusal {
                    Refusal::OutsideRoot | Refusal::PermissionDenied => &self.forbidden,
                    Refusal::InvalidPath => &self.bad_request,
                    Refusal::CannotOpen => &self.server_error,
                    Refusal::NotFound | Refusal::Directory | Refusal::NotRegularFile => {
                        &self.not_found
                    }
                };
                Http::respond(canned, &date, connection, true, out);
                return true;
            }
        };
        let Opened {
            file,
            size,
            modified,
        } = opened;
        if head
            .if_modified_since
            .is_some_and(|since| files::not_modified_since(since, modified))
        {
            let reply = out.reply_buf();
            reply.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nServer: multiconn\r\n");
            last_modified(reply, modified);
            finish_head(reply, &date, connection);
            return true;
        }
        let range = match (head.range, head.if_range) {
            (Some(range), None) => files::parse_range(range, size),
            (Some(range), Some(v)) if files::if_range_matches(v, modified) => {
                files::parse_range(range, size)
            }
            _ => RangeRequest::Whole,
        };
        let reply = out.reply_buf();
        let (first, len) = match range {
            RangeRequest::Whole => {
                reply.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
                (0, size)
            }
            RangeRequest::Part { first, last } => {
                reply.extend_from_slice(b"HTTP/1.1 206 Partial Content\r\n");
                let _ = write!(reply, "Content-Range: bytes {first}-{last}/{size}\r\n");
                (first, last - first + 1)
            }
            RangeRequest::Unsatisfiable => {
                let _ = write!(
                    reply,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\n"
                );
                (0, 0)
            }
        };
        let _ = write!(
            reply,
            "Server: multiconn\r\nContent-Type: {}\r\nContent-Length: {len}\r\n\
             Accept-Ranges: bytes\r\n",
            files::content_type(&self.path)
        );
        last_modified(reply, modified);
        finish_head(reply, &date, connection);
        if head.method == Method::Head || len == 0 {
            return true;
        }
        if len < READ_BELOW {
            let whole = read_into(reply, &file, first, len as usize);
            if !whole {
                log::warn!("{peer}: {} shrank while it was read; closing", head.target);
            }
            whole
        } else {
            // A file that shrinks while it is sent closes the connection short.
            out.send_file(Arc::new(file), first, len);
            true
        }
    }
}

/// `Last-Modified: <date>\r\n`, when the file system gave a time.
fn last_modified(reply: &mut Vec<u8>, modified: Option<std::time::SystemTime>) {
    if let Some(modified) = modified {
        let _ = write!(
            reply,
            "Last-Modified: {}\r\n",
            httpdate::HttpDate::from(modified)
        );
    }
}

/// The end of a response's header section: `Date`, `Connection`, the blank line.
fn finish_head(reply: &mut Vec<u8>, date: &[u8], connection: ConnectionHeader) {
    reply.extend_from_slice(date);
    reply.extend_from_slice(connection.bytes());
    reply.extend_from_slice(b"\r\n");
}

/// Appends `len` bytes of `file` from `first`; false if the file ended first (what it had
/// is appended).
fn read_into(reply: &mut Vec<u8>, file: &std::fs::File, first: u64, len: usize) -> bool {
    use std::os::unix::fs::FileExt;
    let start = reply.len();
    reply.resize(start + len, 0);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut reply[start + filled..], first + filled as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    reply.truncate(start + filled);
    filled == len
}

/// Checks a complete header section and decides the response and the connection's fate.
fn examine<'a>(request: &httparse::Request<'_, 'a>) -> Result<RequestHead<'a>, BadRequest> {
    let minor_version = request.version.unwrap_or(1);
    let method = match request.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => Method::Other,
    };
    let mut close = false;
    let mut keep_alive_token = false;
    let mut hosts = 0;
    let mut framing = Framing::default();
    let mut expects_continue = false;
    let (mut range, mut if_range, mut if_modified_since) = (None, None, None);
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            for token in list_elements(header.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if framing
            .add(name, header.value)
            .map_err(FramingError::as_str)?
        {
            // Content-Length or Transfer-Encoding: checked together below.
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"expect") {
            expects_continue |= trim_ows(header.value).eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"range") {
            range = Some(header.value);
        } else if name.eq_ignore_ascii_case(b"if-range") {
            if_range = Some(header.value);
        } else if name.eq_ignore_ascii_case(b"if-modified-since") {
            if_modified_since = Some(header.value);
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with two, is a 400.
    if hosts > 1 || (minor_version == 1 && hosts == 0) {
        return Err("missing or repeated Host");
    }
    // RFC 9112 §6.1: Transfer-Encoding cannot frame an HTTP/1.0 request's body.
    if framing.has_transfer_encoding() && minor_version == 0 {
        return Err("Transfer-Encoding in an HTTP/1.0 request");
    }
    // RFC 9112 §6.1-6.3: with both framings, or without chunked as the final coding, the
    // body's length cannot be trusted: 400 and close. No framing field: no body.
    let body = framing
        .body()
        .map_err(FramingError::as_str)?
        .unwrap_or(Body::Done);
    let keep_alive = !close && (minor_version == 1 || keep_alive_token);
    Ok(RequestHead {
        method,
        target: request.path.unwrap_or("/"),
        range,
        if_range,
        if_modified_since,
        minor_version,
        keep_alive,
        body,
        expects_continue,
    })
}

impl Protocol for Http {
    type Session = HttpSession;

    fn open(&mut self, peer: &Peer, _out: &mut Output<'_>) -> HttpSession {
        HttpSession {
            peer: *peer,
            body: Body::Done,
        }
    }

    fn on_input(
        &mut self,
        session: &mut HttpSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match session.body.skip(rest, self.max_header) {
                Ok(n) => used += n,
                Err(why) => {
                    log::debug!("{}: closing: {why}", session.peer);
                    return (input.len(), Flow::Close);
                }
            }
            let rest = input.get(used..).unwrap_or_default();
            if session.body != Body::Done || rest.is_empty() {
                return (used, Flow::Continue);
            }
            if out.is_full() || out.file_pending() {
                // The responses so far fill the connection's queue, or a file is still
                // being sent (one at a time): the rest of the pipeline waits, unread,
                // until the client has taken them.
                return (used, Flow::Pause);
            }
            // On the stack and reused for each request of the pipeline: no allocation.
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut fields);
            let head_len = match request.parse(rest) {
                Ok(Status::Complete(n)) if n <= self.max_header => n,
                Ok(Status::Partial) if rest.len() <= self.max_header => {
                    return (used, Flow::Continue)
                }
                Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                    log::debug!(
                        "{}: header section over {} bytes or {MAX_HEADERS} fields",
                        session.peer,
                        self.max_header
                    );
                    self.refuse(ErrorPage::HeaderTooLarge, out);
                    return (input.len(), Flow::Close);
                }
                Err(e) => {
                    log::debug!("{}: malformed request: {e}", session.peer);
                    self.refuse(ErrorPage::BadRequest, out);
                    return (input.len(), Flow::Close);
                }
            };
            let head = match examine(&request) {
                Ok(head) => head,
                Err(why) => {
                    log::debug!("{}: bad request: {why}", session.peer);
                    self.refuse(ErrorPage::BadRequest, out);
                    return (input.len(), Flow::Close);
                }
            };
            used += head_len;
            session.body = head.body;
            // A client that sent `Expect: 100-continue` may never send the body we would
            // skip; rather than guess, answer and close (it then knows not to send it).
            let body_withheld = head.expects_continue && head.body != Body::Done;
            let keep_alive = head.keep_alive && !body_withheld;
            let connection = match (keep_alive, head.minor_version) {
                (false, _) => ConnectionHeader::Close,
                (true, 0) => ConnectionHeader::KeepAlive,
                (true, _) => ConnectionHeader::Omitted,
            };
            if self.files.is_some() && head.method != Method::Other {
                let whole = self.serve_file(&head, connection, out, &session.peer);
                out.count_request();
                if !keep_alive || !whole {
                    return (input.len(), Flow::Close);
                }
                continue;
            }
            let date = self.date.header((self.clock)());
            let (canned, with_body) = match head.method {
                Method::Get => (&self.ok, true),
                Method::Head => (&self.ok, false),
                Method::Other => (&self.method_not_allowed, true),
            };
            Http::respond(canned, date, connection, with_body, out);
            out.count_request();
            if !keep_alive {
                return (input.len(), Flow::Close);
            }
        }
    }

    fn on_timeout(&mut self, session: &mut HttpSession, kind: Timeout, out: &mut Output<'_>) {
        match kind {
            // An unfinished header section: tell the client why it is being closed. In
            // the middle of a body the response was already sent, so close silently.
            Timeout::Frame if session.body == Body::Done => {
                self.refuse(ErrorPage::RequestTimeout, out)
            }
            Timeout::Frame => {}
        }
    }

    fn mid_frame(&self, session: &HttpSession) -> bool {
        // A body being skipped: its request was answered, but the body must still arrive
        // within the frame timeout.
        session.body != Body::Done
    }

    fn refusal(&self) -> Option<&[u8]> {
        Some(&self.refusal)
    }

    fn max_pending_input(&self) -> usize {
        // The only input ever kept is an unfinished header section, chunk-size line or
        // trailer section, each refused by `on_input` past `max_header`.
        self.max_header
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Produced;
    use proptest::prelude::*;
    use std::time::Duration;

    /// RFC 9110's example date, so responses can be compared byte for byte.
    fn fixed_clock() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }
    const DATE: &str = "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    fn responder_with(body: &[u8], max_header: usize) -> Http {
        let mut http = Http::new(HttpConfig {
            body: Arc::from(body),
            max_header,
            root: None,
        });
        http.clock = fixed_clock;
        http
    }

    fn responder() -> Http {
        responder_with(DEFAULT_BODY, DEFAULT_MAX_HEADER)
    }

    /// What feeding a connection produced.
    #[derive(Debug)]
    struct Run {
        reply: Vec<u8>,
        closed: bool,
        requests: u64,
        /// Bytes left unconsumed, as the loop would keep them.
        pending: Vec<u8>,
        /// Responses produced by each `on_input` call.
        replies_per_call: Vec<usize>,
    }

    /// Feeds `chunks` the way the event loop does: unconsumed bytes are kept and
    /// presented again, with the next chunk appended. Stops at `Flow::Close`.
    fn feed<'a>(http: &mut Http, chunks: impl IntoIterator<Item = &'a [u8]>) -> Run {
        feed_capped(http, chunks, usize::MAX)
    }

    /// Like `feed`, with the connection's queue full at `high_water`: after a pause the
    /// reply is taken (the peer read it) and what was kept is presented again.
    fn feed_capped<'a>(
        http: &mut Http,
        chunks: impl IntoIterator<Item = &'a [u8]>,
        high_water: usize,
    ) -> Run {
        let mut produced = Produced::default();
        let mut reply = Vec::new();
        let mut pending = Vec::new();
        let mut closed = false;
        let mut replies_per_call = Vec::new();
        let mut session = http.open(&Peer::Unix, &mut produced.output());
        'chunks: for chunk in chunks {
            pending.extend_from_slice(chunk);
            loop {
                let before = produced.requests;
                let mut out = produced.output_for(0, high_water);
                let (used, flow) = http.on_input(&mut session, &pending, &mut out);
                assert!(used <= pending.len(), "used {used} of {}", pending.len());
                replies_per_call.push((produced.requests - before) as usize);
                pending.drain(..used);
                reply.extend_from_slice(&produced.reply.to_vec());
                produced.reply.clear();
                match flow {
                    Flow::Close => {
                        closed = true;
                        break 'chunks;
                    }
                    Flow::Pause => continue,
                    Flow::Continue => {}
                }
                assert!(
                    pending.len() <= http.max_pending_input(),
                    "kept {} bytes",
                    pending.len()
                );
                break;
            }
        }
        assert!(produced.broadcast.is_empty());
        Run {
            reply,
            closed,
            requests: produced.requests,
            pending,
            replies_per_call,
        }
    }

    fn feed_whole(http: &mut Http, input: &[u8]) -> Run {
        feed(http, [input])
    }

    fn response(
        status: &str,
        extra: &str,
        body: &str,
        connection: &str,
        with_body: bool,
    ) -> String {
        format!(
            "HTTP/1.1 {status}\r\nServer: multiconn\r\nContent-Type: text/html\r\n\
             Content-Length: {}\r\n{extra}{DATE}{connection}\r\n{}",
            body.len(),
            if with_body { body } else { "" }
        )
    }

    const KEEP: &str = "";
    const CLOSE: &str = "Connection: close\r\n";
    const KEEP_ALIVE: &str = "Connection: keep-alive\r\n";

    fn ok(connection: &str) -> String {
        response("200 OK", "", "<h1>Hello,World!</h1>", connection, true)
    }
    fn ok_head(connection: &str) -> String {
        response("200 OK", "", "<h1>Hello,World!</h1>", connection, false)
    }
    fn not_allowed(connection: &str) -> String {
        let status = "405 Method Not Allowed";
        response(
            status,
            "Allow: GET, HEAD\r\n",
            &format!("<h1>{status}</h1>"),
            connection,
            true,
        )
    }
    fn error_page(status: &str) -> String {
        response(status, "", &format!("<h1>{status}</h1>"), CLOSE, true)
    }
    fn bad_request() -> String {
        error_page("400 Bad Request")
    }
    fn too_large() -> String {
        error_page("431 Request Header Fields Too Large")
    }

    fn text(run: &Run) -> String {
        String::from_utf8_lossy(&run.reply).into_owned()
    }

    /// A GET of any path is answered with the page, the connection kept and input used up.
    #[test]
    fn get_answers_the_page() {
        for path in ["/", "/some/where?q=1", "/index.html", "*"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            let run = feed_whole(&mut responder(), request.as_bytes());
            assert_eq!(text(&run), ok(KEEP), "{path}");
            assert!(!run.closed);
            assert!(run.pending.is_empty());
            assert_eq!(run.requests, 1);
        }
    }

    /// HEAD gets the GET's headers, Content-Length included, and no body.
    #[test]
    fn head_has_no_body() {
        let run = feed_whole(&mut responder(), b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(text(&run), ok_head(KEEP));
    }

    /// `--body` bytes are served as they are, with their own length.
    #[test]
    fn serves_the_configured_body() {
        let body = b"\x00binary\xffpage";
        let run = feed_whole(&mut responder_with(body, DEFAULT_MAX_HEADER), GET);
        let mut expected = b"HTTP/1.1 200 OK\r\nServer: multiconn\r\nContent-Type: text/html\r\nContent-Length: 12\r\n".to_vec();
        expected.extend_from_slice(DATE.as_bytes());
        expected.extend_from_slice(b"\r\n");
        expected.extend_from_slice(body);
        assert_eq!(run.reply, expected);
    }

    /// Ten pipelined requests in one input are all answered, in order, by one call.
    #[test]
    fn pipelined_requests_answered_in_one_call() {
        let mut input = Vec::new();
        for i in 0..10 {
            let method = if i % 3 == 1 { "HEAD" } else { "GET" };
            input
                .extend_from_slice(format!("{method} /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
        let run = feed_whole(&mut responder(), &input);
        let expected: String = (0..10)
            .map(|i| if i % 3 == 1 { ok_head(KEEP) } else { ok(KEEP) })
            .collect();
        assert_eq!(text(&run), expected);
        assert_eq!(run.replies_per_call, vec![10]);
        assert!(run.pending.is_empty());
    }

    /// The keep-alive decision for each version and `Connection` header, tokens
    /// compared without regard to case, in lists, and across repeated fields.
    #[test]
    fn keep_alive_decisions() {
        let cases: &[(&str, &str, &str, bool)] = &[
            // (version, extra header lines, expected Connection header, closes)
            ("1.1", "", KEEP, false),
            ("1.1", "Connection: close\r\n", CLOSE, true),
            ("1.1", "Connection: CLOSE\r\n", CLOSE, true),
            ("1.1", "Connection: keep-alive\r\n", KEEP, false),
            ("1.1", "Connection: Keep-Alive, Close\r\n", CLOSE, true),
            (
                "1.1",
                "Connection: upgrade\r\nConnection: close\r\n",
                CLOSE,
                true,
            ),
            ("1.1", "Connection: closed\r\n", KEEP, false),
            ("1.0", "", CLOSE, true),
            ("1.0", "Connection: keep-alive\r\n", KEEP_ALIVE, false),
            ("1.0", "Connection:  Keep-Alive \r\n", KEEP_ALIVE, false),
            ("1.0", "Connection: te, keep-alive\r\n", KEEP_ALIVE, false),
            ("1.0", "Connection: keep-alive, close\r\n", CLOSE, true),
        ];
        for &(version, extra, connection, closes) in cases {
            let request = format!("GET / HTTP/{version}\r\nHost: x\r\n{extra}\r\n");
            let run = feed_whole(&mut responder(), request.as_bytes());
            assert_eq!(text(&run), ok(connection), "{version} {extra:?}");
            assert_eq!(run.closed, closes, "{version} {extra:?}");
        }
    }

    /// Requests after one that closes the connection are not answered.
    #[test]
    fn close_ends_the_pipeline() {
        let mut input = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
        input.extend_from_slice(GET);
        let run = feed_whole(&mut responder(), &input);
        assert_eq!(text(&run), ok(CLOSE));
        assert!(run.closed);
        assert_eq!(run.requests, 1);
    }

    /// HTTP/1.0 needs no Host; HTTP/1.1 needs exactly one.
    #[test]
    fn host_rules() {
        let run = feed_whole(&mut responder(), b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(text(&run), ok(CLOSE));
        for request in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
        ] {
            let run = feed_whole(&mut responder(), request);
            assert_eq!(
                text(&run),
                bad_request(),
                "{}",
                String::from_utf8_lossy(request)
            );
            assert!(run.closed);
        }
    }

    /// Malformed request lines and header fields get 400 and the connection closes;
    /// nothing after them is answered.
    #[test]
    fn malformed_requests_get_400() {
        let cases: &[&[u8]] = &[
            b"GARBAGE\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"GET / FTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n",
            b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        for &request in cases {
            let mut input = request.to_vec();
            input.extend_from_slice(GET);
            let run = feed_whole(&mut responder(), &input);
            assert_eq!(
                text(&run),
                bad_request(),
                "{}",
                String::from_utf8_lossy(request)
            );
            assert!(run.closed);
            assert_eq!(run.requests, 1);
        }
    }

    /// Invalid or conflicting Content-Length is 400; agreeing duplicates are one length.
    #[test]
    fn content_length_validation() {
        for value in [
            "abc",
            "-1",
            "+1",
            "",
            " ",
            "1 2",
            "0x10",
            "1.0",
            "3, 4",
            "3,",
            "99999999999999999999999",
        ] {
            let request = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n");
            let run = feed_whole(&mut responder(), request.as_bytes());
            assert_eq!(text(&run), bad_request(), "{value:?}");
        }
        let two =
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(text(&feed_whole(&mut responder(), two)), bad_request());
        let agreeing =
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\ncontent-length: 3\r\n\r\nabc";
        let mut input = agreeing.to_vec();
        input.extend_from_slice(GET);
        let run = feed_whole(&mut responder(), &input);
        assert_eq!(text(&run), not_allowed(KEEP) + &ok(KEEP));
    }

    /// Transfer-Encoding that cannot frame the body reliably is 400 and close.
    #[test]
    fn transfer_encoding_validation() {
        for headers in [
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding:\r\n",
        ] {
            let request = format!("POST / HTTP/1.1\r\nHost: x\r\n{headers}\r\n0\r\n\r\n");
            let run = feed_whole(&mut responder(), request.as_bytes());
            assert_eq!(text(&run), bad_request(), "{headers:?}");
            assert!(run.closed);
        }
        let old = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(text(&feed_whole(&mut responder(), old)), bad_request());
    }

    /// Other methods get 405 with Allow; the connection stays open and a body is skipped.
    #[test]
    fn other_methods_get_405() {
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "get", "PATCH"] {
            let mut input =
                format!("{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /")
                    .into_bytes();
            input.extend_from_slice(GET);
            let run = feed_whole(&mut responder(), &input);
            assert_eq!(text(&run), not_allowed(KEEP) + &ok(KEEP), "{method}");
            assert!(!run.closed);
        }
    }

    /// A header section over the limit is 431 and close, whether it arrived whole or not,
    /// and so are too many header fields.
    #[test]
    fn oversized_header_sections_get_431() {
        let max = 100;
        let long = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
            "a".repeat(80)
        );
        assert!(long.len() > max);
        let run = feed_whole(&mut responder_with(DEFAULT_BODY, max), long.as_bytes());
        assert_eq!(text(&run), too_large());
        assert!(run.closed);
        // Arriving in pieces: refused as soon as the unfinished part passes the limit.
        let run = feed(
            &mut responder_with(DEFAULT_BODY, max),
            long.as_bytes().chunks(7),
        );
        assert_eq!(text(&run), too_large());
        assert_eq!(run.replies_per_call.len(), max / 7 + 1);
        // Exactly at the limit is fine.
        let exact = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(max - 32)
        );
        assert_eq!(exact.len(), max);
        let run = feed_whole(&mut responder_with(DEFAULT_BODY, max), exact.as_bytes());
        assert_eq!(text(&run), ok(KEEP));
        // One field more than the array holds.
        let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        let run = feed_whole(&mut responder(), many.as_bytes());
        assert_eq!(text(&run), too_large());
    }

    /// A Content-Length body is skipped across calls without being kept, and the request
    /// after it is answered.
    #[test]
    fn content_length_body_is_discarded_across_calls() {
        let chunks: [&[u8]; 4] = [
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n123",
            b"45",
            b"67890GET / HTTP/1.1\r",
            b"\nHost: x\r\n\r\n",
        ];
        let run = feed(&mut responder(), chunks);
        assert_eq!(text(&run), not_allowed(KEEP) + &ok(KEEP));
        assert_eq!(run.replies_per_call, vec![1, 0, 0, 1]);
        assert!(run.pending.is_empty());
    }

    /// A GET may carry a body; it is skipped, not read as the next request.
    #[test]
    fn get_with_body_is_answered_and_body_skipped() {
        let mut input =
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\nGET /x HTTP/1.1".to_vec();
        input.extend_from_slice(GET);
        let run = feed_whole(&mut responder(), &input);
        assert_eq!(text(&run), ok(KEEP) + &ok(KEEP));
        assert_eq!(run.requests, 2);
    }

    const CHUNKED_POST: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n\
        4\r\nWiki\r\n5;name=value\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: yes\r\n\r\n";

    /// A chunked body (extensions, trailers) is decoded and skipped; the next request
    /// is answered.
    #[test]
    fn chunked_body_is_discarded() {
        let mut input = CHUNKED_POST.to_vec();
        input.extend_from_slice(GET);
        let run = feed_whole(&mut responder(), &input);
        assert_eq!(text(&run), not_allowed(KEEP) + &ok(KEEP));
        assert!(!run.closed);
        assert!(run.pending.is_empty());
        // Chunk data that looks like a request is data, not a request.
        let sneaky = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            1b\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n";
        let run = feed_whole(&mut responder(), sneaky);
        assert_eq!(text(&run), not_allowed(KEEP));
        assert_eq!(run.requests, 1);
    }

    /// Broken chunked framing closes the connection; the response was already sent, so
    /// nothing more is written.
    #[test]
    fn broken_chunked_body_closes() {
        for body in [
            &b"zz\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b"4\r\nWikiXY",
            b"4\r\nWiki\n",
            b"11111111111111111\r\n",
            b"0\r\nBad Trailer\r\n\r\n",
        ] {
            let mut input =
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            input.extend_from_slice(body);
            input.extend_from_slice(GET);
            let run = feed_whole(&mut responder(), &input);
            assert_eq!(
                text(&run),
                not_allowed(KEEP),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(run.closed, "{}", String::from_utf8_lossy(body));
        }
    }

    /// An unfinished chunk-size line or trailer section is capped like a header section.
    #[test]
    fn chunk_lines_are_capped() {
        let max = 64;
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let size_line = [&head[..], b"5;", &[b'e'; 80]].concat();
        let run = feed(
            &mut responder_with(DEFAULT_BODY, max),
            [&head[..], &size_line[head.len()..]],
        );
        assert_eq!(text(&run), not_allowed(KEEP));
        assert!(run.closed);
        let trailers = [&head[..], b"0\r\nX: ", &[b'e'; 80]].concat();
        let run = feed(
            &mut responder_with(DEFAULT_BODY, max),
            [&head[..], &trailers[head.len()..]],
        );
        assert!(run.closed);
    }

    /// With `Expect: 100-continue` and a body, the client may hold the body back, so the
    /// response closes the connection rather than guess where the next request starts.
    #[test]
    fn expect_continue_with_body_closes() {
        let request =
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        let run = feed_whole(&mut responder(), request);
        assert_eq!(text(&run), not_allowed(CLOSE));
        assert!(run.closed);
        let no_body = b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n";
        let run = feed_whole(&mut responder(), no_body);
        assert_eq!(text(&run), ok(KEEP));
    }

    /// A pipeline whose responses fill the connection's queue pauses there, and the rest
    /// is answered, keep-alive, once it has drained; a large body is shared by every
    /// response, not copied.
    #[test]
    fn pipeline_pauses_at_the_cap() {
        let body = vec![b'x'; 300 * 1024];
        let mut http = responder_with(&body, DEFAULT_MAX_HEADER);
        let input = GET.repeat(8);
        let run = feed_capped(&mut http, [&input[..]], 1024 * 1024);
        assert!(!run.closed);
        assert_eq!(run.requests, 8);
        // 3 × 300 KiB stay under 1 MiB, the fourth passes it: then the pipeline waits.
        assert_eq!(run.replies_per_call, [4, 4]);
        let body_text = String::from_utf8(body).unwrap();
        let keep = response("200 OK", "", &body_text, KEEP, true);
        assert_eq!(text(&run), keep.repeat(8));

        let mut produced = Produced::default();
        let mut session = http.open(&Peer::Unix, &mut produced.output());
        let (used, flow) = http.on_input(&mut session, &input, &mut produced.output());
        assert_eq!((used, flow), (input.len(), Flow::Continue));
        let references = Arc::strong_count(&http.ok.body);
        assert_eq!(references, 1 + 8, "every response shares the body");
        assert!(
            produced.reply.bytes_mut().len() < 8 * 1024,
            "no body was copied"
        );
    }

    /// Every split of a mixed pipeline into two reads gives the same responses as one read.
    #[test]
    fn every_split_point_gives_the_same_responses() {
        let input = [
            GET,
            b"HEAD /h HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            CHUNKED_POST,
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ]
        .concat();
        let whole = feed_whole(&mut responder(), &input);
        let expected =
            ok(KEEP) + &ok_head(KEEP) + &not_allowed(KEEP) + &ok(KEEP_ALIVE) + &ok(CLOSE);
        assert_eq!(text(&whole), expected);
        assert!(whole.closed);
        for split in 0..=input.len() {
            let run = feed(&mut responder(), [&input[..split], &input[split..]]);
            assert_eq!(run.reply, whole.reply, "split at {split}");
            assert!(run.closed && run.pending.is_empty(), "split at {split}");
            assert_eq!(run.requests, 5, "split at {split}");
        }
        let bytewise = feed(&mut responder(), input.chunks(1));
        assert_eq!(text(&bytewise), expected);
        assert!(bytewise.closed);
    }

    /// Errors are found wherever the bad request is split.
    #[test]
    fn errors_found_at_every_split_point() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n";
        for split in 0..=input.len() {
            let run = feed(&mut responder(), [&input[..split], &input[split..]]);
            assert_eq!(text(&run), bad_request(), "split at {split}");
        }
        let run = feed(&mut responder(), input.chunks(1));
        assert_eq!(text(&run), bad_request());
    }

    /// A frame timeout in a header section answers 408 and closes; in a body, silence.
    #[test]
    fn frame_timeout() {
        let mut http = responder();
        let mut produced = Produced::default();
        let mut out = produced.output();
        let mut session = http.open(&Peer::Unix, &mut out);
        assert_eq!(
            http.on_input(&mut session, b"GET / HT", &mut out),
            (0, Flow::Continue)
        );
        http.on_timeout(&mut session, Timeout::Frame, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&produced.reply.to_vec()),
            error_page("408 Request Timeout")
        );

        let mut produced = Produced::default();
        let mut out = produced.output();
        let mut session = http.open(&Peer::Unix, &mut out);
        let post = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r";
        assert_eq!(
            http.on_input(&mut session, post, &mut out),
            (post.len() - 2, Flow::Continue)
        );
        assert!(
            http.mid_frame(&session),
            "a body being skipped is a frame in progress"
        );
        out.reply_buf().clear();
        http.on_timeout(&mut session, Timeout::Frame, &mut out);
        assert!(produced.reply.is_empty());
    }

    /// A refused connection gets a complete 503 that closes.
    #[test]
    fn refusal_is_a_503() {
        let http = responder();
        let expected = "HTTP/1.1 503 Service Unavailable\r\nServer: multiconn\r\nContent-Type: text/html\r\n\
            Content-Length: 32\r\nRetry-After: 1\r\nConnection: close\r\n\r\n<h1>503 Service Unavailable</h1>";
        assert_eq!(
            http.refusal().map(String::from_utf8_lossy).as_deref(),
            Some(expected)
        );
    }

    /// The loop's cap on kept input is the header limit.
    #[test]
    fn max_pending_input_is_the_header_limit() {
        assert_eq!(responder_with(DEFAULT_BODY, 1234).max_pending_input(), 1234);
        assert_eq!(responder().max_pending_input(), DEFAULT_MAX_HEADER);
    }

    /// The Date header is formatted once per second and reused within it.
    #[test]
    fn date_is_formatted_once_per_second() {
        let mut cache = DateCache::new();
        let t = fixed_clock();
        assert_eq!(cache.header(t), DATE.as_bytes());
        assert_eq!(
            cache.header(t + Duration::from_millis(999)),
            DATE.as_bytes()
        );
        assert_eq!(cache.formats, 1);
        assert_eq!(
            cache.header(t + Duration::from_secs(1)),
            b"Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"
        );
        assert_eq!(cache.formats, 2);
        // A clock outside what HTTP dates can say is clamped, not a panic.
        assert_eq!(
            cache.header(UNIX_EPOCH - Duration::from_secs(5)),
            b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        );
        assert_eq!(
            cache.header(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)),
            b"Date: Fri, 31 Dec 9999 23:59:59 GMT\r\n"
        );
    }

    /// The responder reformats the date only when the second changes, across requests.
    #[test]
    fn responder_reuses_the_date() {
        let mut http = responder();
        let run = feed_whole(&mut http, &GET.repeat(50));
        assert_eq!(run.requests, 50);
        assert_eq!(http.date.formats, 1);
    }

    /// `--body` reads the file once; a missing or oversized file is a one-line error.
    #[test]
    fn body_file_loading() {
        let dir = std::env::temp_dir().join(format!("multiconn-http-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let page = dir.join("page.html");
        std::fs::write(&page, b"<p>mine</p>").unwrap();
        assert_eq!(&*read_body(&page).unwrap(), b"<p>mine</p>");
        let missing = dir.join("missing.html");
        let err = read_body(&missing).unwrap_err();
        assert_eq!(
            err,
            format!(
                "cannot read {}: No such file or directory",
                missing.display()
            )
        );
        let big = dir.join("big.html");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_BODY_BYTES as u64 + 1)
            .unwrap();
        let err = read_body(&big).unwrap_err();
        assert!(err.contains("--body serves at most"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A request as the property tests generate it.
    #[derive(Debug, Clone)]
    struct TestRequest {
        method: &'static str,
        http10: bool,
        body: Option<(bool, Vec<usize>)>,
        extra_headers: usize,
    }

    impl TestRequest {
        fn bytes(&self) -> Vec<u8> {
            let version = if self.http10 { "1.0" } else { "1.1" };
            let mut text = format!("{} /p HTTP/{version}\r\nHost: x\r\n", self.method);
            if self.http10 {
                text.push_str("Connection: keep-alive\r\n");
            }
            for i in 0..self.extra_headers {
                text.push_str(&format!("X-Filler-{i}: {}\r\n", "v".repeat(i)));
            }
            let mut body = Vec::new();
            match &self.body {
                None => {}
                Some((false, sizes)) => {
                    let len: usize = sizes.iter().sum();
                    text.push_str(&format!("Content-Length: {len}\r\n"));
                    body = vec![b'b'; len];
                }
                Some((true, sizes)) => {
                    text.push_str("Transfer-Encoding: chunked\r\n");
                    for &size in sizes.iter().filter(|&&s| s > 0) {
                        body.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                        body.resize(body.len() + size, b'c');
                        body.extend_from_slice(b"\r\n");
                    }
                    body.extend_from_slice(b"0\r\n\r\n");
                }
            }
            text.push_str("\r\n");
            [text.into_bytes(), body].concat()
        }

        fn expected(&self) -> String {
            let connection = if self.http10 { KEEP_ALIVE } else { KEEP };
            match self.method {
                "GET" => ok(connection),
                "HEAD" => ok_head(connection),
                _ => not_allowed(connection),
            }
        }
    }

    fn test_request() -> impl Strategy<Value = TestRequest> {
        (
            prop::sample::select(vec!["GET", "HEAD", "POST", "PUT"]),
            any::<bool>(),
            prop::option::of((any::<bool>(), prop::collection::vec(0usize..40, 0..4))),
            0usize..4,
        )
            .prop_map(|(method, http10, body, extra_headers)| TestRequest {
                method,
                // HTTP/1.0 cannot carry a chunked body.
                http10: http10 && !matches!(body, Some((true, _))),
                body,
                extra_headers,
            })
    }

    proptest! {
        /// Arbitrary bytes, in arbitrary pieces, never panic and never leave more than
        /// the cap pending (`feed` checks both).
        #[test]
        fn random_input_never_panics(
            data in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(0usize..600, 0..8),
            max_header in 1usize..300,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                pieces.push(&data[start..cut]);
                start = cut;
            }
            feed(&mut responder_with(DEFAULT_BODY, max_header), pieces);
        }

        /// Request-shaped noise: a valid request with bytes changed or cut still never
        /// panics, wherever it is split.
        #[test]
        fn mutated_requests_never_panic(
            request in test_request(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            split in any::<prop::sample::Index>(),
        ) {
            let mut bytes = request.bytes();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let split = split.index(bytes.len() + 1);
            feed(&mut responder_with(DEFAULT_BODY, 128), [&bytes[..split], &bytes[split..]]);
        }

        /// A pipeline of valid requests, split anywhere into any pieces, is answered with
        /// exactly the responses the requests call for, in order.
        #[test]
        fn valid_pipelines_split_anywhere(
            requests in prop::collection::vec(test_request(), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let input: Vec<u8> = requests.iter().flat_map(|r| r.bytes()).collect();
            let expected: String = requests.iter().map(|r| r.expected()).collect();
            let pieces = crate::protocol::testing::pieces(&input, &cuts);
            let run = feed(&mut responder(), pieces);
            prop_assert_eq!(text(&run), expected);
            prop_assert!(!run.closed);
            prop_assert!(run.pending.is_empty());
            prop_assert_eq!(run.requests, requests.len() as u64);
        }
    }

    // ---- static files ----

    use crate::root::testing::TempDir;
    use std::fs;

    /// The modification time every fixture file gets: RFC 9110's example date.
    const MTIME: &str = "Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n";

    /// A root with `a.txt` (10 bytes), `big.bin` (`READ_BELOW` * 3, sent with sendfile),
    /// `empty`, `sub/index.html`, `bare/` (no index), and `secret` beside the root.
    fn files_fixture(name: &str) -> (TempDir, Http, Vec<u8>) {
        let dir = TempDir::new(name);
        let root = dir.0.join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(root.join("bare")).unwrap();
        let big: Vec<u8> = (0..READ_BELOW * 3).map(|i| (i % 251) as u8).collect();
        for (name, content) in [
            ("a.txt", &b"0123456789"[..]),
            ("big.bin", &big),
            ("empty", b""),
            ("sub/index.html", b"<p>sub</p>"),
        ] {
            let path = root.join(name);
            fs::write(&path, content).unwrap();
            let file = fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(fixed_clock()).unwrap();
        }
        fs::write(dir.0.join("secret"), b"secret").unwrap();
        let mut http = Http::new(HttpConfig {
            root: Some(Root::new(&root).unwrap()),
            ..HttpConfig::default()
        });
        http.clock = fixed_clock;
        (dir, http, big)
    }

    fn file_response(status: &str, extra: &str, kind: &str, body: &[u8]) -> Vec<u8> {
        let head = format!(
            "HTTP/1.1 {status}\r\n{extra}Server: multiconn\r\nContent-Type: {kind}\r\n\
             Content-Length: {}\r\nAccept-Ranges: bytes\r\n{MTIME}{DATE}\r\n",
            body.len()
        );
        [head.as_bytes(), body].concat()
    }

    fn get(target: &str, extra: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
    }

    /// A HEAD's head: a GET's, with the body's length but not the body.
    trait ReplaceLen {
        fn replace_len(self, len: usize) -> Vec<u8>;
    }

    impl ReplaceLen for Vec<u8> {
        fn replace_len(self, len: usize) -> Vec<u8> {
            String::from_utf8(self)
                .unwrap()
                .replace(
                    "Content-Length: 0\r\n",
                    &format!("Content-Length: {len}\r\n"),
                )
                .into_bytes()
        }
    }

    /// Every answer a static file request can get, byte for byte; none closes the
    /// connection.
    #[test]
    fn static_files_every_status() {
        let (_dir, mut http, big) = files_fixture("statuses");
        let txt = "text/plain";
        let bin = "application/octet-stream";
        let page = |status: &str| response(status, "", &format!("<h1>{status}</h1>"), "", true);
        let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (
                get("/a.txt", ""),
                file_response("200 OK", "", txt, b"0123456789"),
            ),
            (get("/big.bin", ""), file_response("200 OK", "", bin, &big)),
            (get("/empty", ""), file_response("200 OK", "", bin, b"")),
            (
                get("/sub/", ""),
                file_response("200 OK", "", "text/html", b"<p>sub</p>"),
            ),
            (
                get("/sub", ""),
                file_response("200 OK", "", "text/html", b"<p>sub</p>"),
            ),
            (
                get("/a.txt", "Range: bytes=2-4\r\n"),
                file_response(
                    "206 Partial Content",
                    "Content-Range: bytes 2-4/10\r\n",
                    txt,
                    b"234",
                ),
            ),
            (
                get("/a.txt", "Range: bytes=-3\r\n"),
                file_response(
                    "206 Partial Content",
                    "Content-Range: bytes 7-9/10\r\n",
                    txt,
                    b"789",
                ),
            ),
            (
                get("/a.txt", "Range: bytes=8-\r\n"),
                file_response(
                    "206 Partial Content",
                    "Content-Range: bytes 8-9/10\r\n",
                    txt,
                    b"89",
                ),
            ),
            (
                get("/big.bin", "Range: bytes=1000-40000\r\n"),
                file_response(
                    "206 Partial Content",
                    &format!("Content-Range: bytes 1000-40000/{}\r\n", big.len()),
                    bin,
                    &big[1000..=40000],
                ),
            ),
            (
                get("/a.txt", "Range: bytes=10-\r\n"),
                file_response(
                    "416 Range Not Satisfiable",
                    "Content-Range: bytes */10\r\n",
                    txt,
                    b"",
                ),
            ),
            // A range under an If-Range that does not match is ignored: the whole file.
            (
                get("/a.txt", "Range: bytes=2-4\r\nIf-Range: \"tag\"\r\n"),
                file_response("200 OK", "", txt, b"0123456789"),
            ),
            (
                get(
                    "/a.txt",
                    "Range: bytes=2-4\r\nIf-Range: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
                ),
                file_response(
                    "206 Partial Content",
                    "Content-Range: bytes 2-4/10\r\n",
                    txt,
                    b"234",
                ),
            ),
            (
                get(
                    "/a.txt",
                    "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
                ),
                format!("HTTP/1.1 304 Not Modified\r\nServer: multiconn\r\n{MTIME}{DATE}\r\n")
                    .into_bytes(),
            ),
            (
                get(
                    "/a.txt",
                    "If-Modified-Since: Sat, 05 Nov 1994 08:49:37 GMT\r\n",
                ),
                file_response("200 OK", "", txt, b"0123456789"),
            ),
            (
                b"HEAD /a.txt HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                file_response("200 OK", "", txt, b"").replace_len(10),
            ),
            (get("/missing", ""), page("404 Not Found").into_bytes()),
            (get("/bare/", ""), page("404 Not Found").into_bytes()),
            (get("/../secret", ""), page("403 Forbidden").into_bytes()),
            (
                get("/%2e%2e/secret", ""),
                page("403 Forbidden").into_bytes(),
            ),
            (
                b"POST /a.txt HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                not_allowed("").into_bytes(),
            ),
        ];
        for (request, expected) in &cases {
            let run = feed_whole(&mut http, request);
            assert_eq!(
                String::from_utf8_lossy(&run.reply),
                String::from_utf8_lossy(expected),
                "{}",
                String::from_utf8_lossy(request)
            );
            assert!(!run.closed, "{}", String::from_utf8_lossy(request));
        }
        // A target that names no path is a 400; the request was well framed, so the
        // connection stays.
        let run = feed_whole(&mut http, &get("/a%zz", ""));
        assert_eq!(text(&run), page("400 Bad Request"));
        assert!(!run.closed);
    }

    /// A pipeline of file requests, split at every point, gets the same bytes; a request
    /// behind a file being sent waits (the protocol pauses) until the file has gone.
    #[test]
    fn static_files_pipelined_at_every_split() {
        let (_dir, mut http, big) = files_fixture("pipeline");
        let input = [
            get("/big.bin", "Range: bytes=5-\r\n"),
            get("/a.txt", "Range: bytes=0-0\r\n"),
            get("/big.bin", ""),
            get("/nope", ""),
        ]
        .concat();
        let whole = feed_whole(&mut http, &input);
        let expected = [
            file_response(
                "206 Partial Content",
                &format!("Content-Range: bytes 5-{}/{}\r\n", big.len() - 1, big.len()),
                "application/octet-stream",
                &big[5..],
            ),
            file_response(
                "206 Partial Content",
                "Content-Range: bytes 0-0/10\r\n",
                "text/plain",
                b"0",
            ),
            file_response("200 OK", "", "application/octet-stream", &big),
            response("404 Not Found", "", "<h1>404 Not Found</h1>", "", true).into_bytes(),
        ]
        .concat();
        assert!(whole.reply == expected, "the pipeline's answers");
        assert_eq!(whole.requests, 4);
        assert_eq!(
            whole.replies_per_call,
            [1, 2, 1],
            "a request behind a file waits for the next call"
        );
        for split in 0..=input.len() {
            let run = feed(&mut http, [&input[..split], &input[split..]]);
            assert!(run.reply == expected, "split at {split}");
        }
    }
}
