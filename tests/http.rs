//! The HTTP responder end to end: real clients (curl, Python's http.client), keep-alive,
//! pipelining, the HTTP/1.0 rules, every error status, chunked bodies, headers dribbled in
//! small writes, timeouts, a full server, and the server binary's --body and --max-header.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use multiconn::protocol::http::{Http, HttpConfig, DEFAULT_BODY};

const PAGE: &str = "<h1>Hello,World!</h1>";
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

/// The bytes of a response as the server sends them, with `Date: <date>` standing for
/// the real (checked) date.
fn expected(status: &str, extra: &str, body: &str, connection: &str, with_body: bool) -> String {
    format!(
        "HTTP/1.1 {status}\r\nServer: multiconn\r\nContent-Type: text/html\r\n\
         Content-Length: {}\r\n{extra}Date: <date>\r\n{connection}\r\n{}",
        body.len(),
        if with_body { body } else { "" }
    )
}

fn ok() -> String {
    expected("200 OK", "", PAGE, "", true)
}

fn error_page(status: &str) -> String {
    expected(
        status,
        "",
        &format!("<h1>{status}</h1>"),
        "Connection: close\r\n",
        true,
    )
}

fn not_allowed() -> String {
    let status = "405 Method Not Allowed";
    expected(
        status,
        "Allow: GET, HEAD\r\n",
        &format!("<h1>{status}</h1>"),
        "",
        true,
    )
}

/// Replaces the Date header's value with `<date>` after checking it is an IMF-fixdate
/// within a minute of now.
fn normalize_date(response: &str) -> String {
    let Some(start) = response.find("Date: ") else {
        return response.to_string();
    };
    let value_start = start + "Date: ".len();
    let value_end = value_start + response[value_start..].find("\r\n").expect("Date line end");
    let value = &response[value_start..value_end];
    let when = httpdate::parse_http_date(value).expect("Date is an HTTP date");
    let skew = match when.duration_since(SystemTime::now()) {
        Ok(ahead) => ahead,
        Err(behind) => behind.duration(),
    };
    assert!(
        skew < Duration::from_secs(60),
        "Date {value} is off by {skew:?}"
    );
    format!(
        "{}<date>{}",
        &response[..value_start],
        &response[value_end..]
    )
}

/// Reads whole HTTP responses off a blocking connection.
struct Responses {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Responses {
    fn new(stream: TcpStream) -> Responses {
        Responses {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        write_all(&mut self.stream, bytes);
    }

    /// Reads more; false at EOF.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response, date normalised. `head_request`: it has no body whatever its
    /// Content-Length says.
    fn next(&mut self, head_request: bool) -> String {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill(),
                "EOF inside a response head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("ASCII head");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("Content-Length")
            .parse()
            .expect("a number");
        let total = head_end + if head_request { 0 } else { length };
        while self.buf.len() < total {
            assert!(self.fill(), "EOF inside a response body");
        }
        let response: Vec<u8> = self.buf.drain(..total).collect();
        normalize_date(&String::from_utf8(response).expect("UTF-8 response"))
    }

    /// Asserts that nothing follows: the server closed the connection.
    fn expect_eof(&mut self) {
        assert!(
            !self.fill() && self.buf.is_empty(),
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

fn start() -> TestServer {
    TestServer::start(Http::default(), |_| {})
}

fn connect_to(server: &TestServer) -> Responses {
    Responses::new(server.connect())
}

/// curl (or, where curl is missing, Python's http.client) gets the page with the
/// expected headers, and its second URL reuses the connection.
#[test]
fn standard_client_gets_the_page() {
    let server = start();
    let url = format!("http://{}/", server.addr);
    let has_curl = Command::new("curl").arg("--version").output().is_ok();
    if has_curl {
        let out = Command::new("curl")
            .args(["-s", "-i", "--max-time", "20", &url, &format!("{url}again")])
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let (first, second) = text.split_at(text.len() / 2);
        assert_eq!(normalize_date(first), ok());
        assert_eq!(normalize_date(second), ok());
    } else {
        let out = python(&format!(
            "import http.client\n\
             c = http.client.HTTPConnection('127.0.0.1', {}, timeout=20)\n\
             for path in ['/', '/again']:\n\
             \x20   c.request('GET', path)\n\
             \x20   r = c.getresponse()\n\
             \x20   print(r.status, r.getheader('Content-Type'), r.read().decode())\n",
            server.addr.port()
        ));
        assert_eq!(out, format!("200 text/html {PAGE}\n").repeat(2));
    }
    let stats = server.stop();
    assert_eq!(stats.accepted, 1, "the second URL reused the connection");
    assert_eq!(stats.requests, 2);
}

/// Runs a Python 3 script; returns its stdout, failing the test on a non-zero exit.
fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 is needed for this test (CI installs it)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Python's http.client keeps one connection for GETs and a HEAD, and reads the HEAD's
/// Content-Length without expecting a body.
#[test]
fn python_http_client_keeps_the_connection() {
    let server = start();
    let out = python(&format!(
        "import http.client\n\
         c = http.client.HTTPConnection('127.0.0.1', {}, timeout=20)\n\
         for i in range(5):\n\
         \x20   c.request('GET', '/page/%d' % i)\n\
         \x20   r = c.getresponse()\n\
         \x20   print(r.status, r.reason, r.getheader('Content-Length'), r.read().decode(), r.will_close)\n\
         c.request('HEAD', '/')\n\
         r = c.getresponse()\n\
         print(r.status, r.getheader('Content-Length'), r.read())\n\
         c.request('POST', '/', body=b'abc')\n\
         r = c.getresponse()\n\
         print(r.status, r.getheader('Allow'), r.read().decode())\n",
        server.addr.port()
    ));
    let expected = format!("200 OK 21 {PAGE} False\n").repeat(5)
        + "200 21 b''\n"
        + "405 GET, HEAD <h1>405 Method Not Allowed</h1>\n";
    assert_eq!(out, expected);
    let stats = server.stop();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.requests, 7);
}

/// HEAD gets the GET's headers and no body: the next bytes are the next response.
#[test]
fn head_has_no_body() {
    let server = start();
    let mut conn = connect_to(&server);
    conn.send(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.send(GET);
    assert_eq!(conn.next(true), expected("200 OK", "", PAGE, "", false));
    assert_eq!(conn.next(false), ok());
}

/// 100 requests, one after the other, over one keep-alive connection.
#[test]
fn hundred_requests_over_one_connection() {
    let server = start();
    let mut conn = connect_to(&server);
    for i in 0..100 {
        conn.send(format!("GET /{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        assert_eq!(conn.next(false), ok(), "request {i}");
    }
    drop(conn);
    let stats = server.stop();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.requests, 100);
}

/// Ten pipelined requests in one write are answered in order (HEADs among GETs make
/// the order visible), each response complete, written at once without WRITABLE.
#[test]
fn ten_pipelined_requests_answered_in_order() {
    let server = start();
    let mut conn = connect_to(&server);
    let is_head = |i: usize| i % 4 == 1;
    let mut batch = Vec::new();
    for i in 0..10 {
        let method = if is_head(i) { "HEAD" } else { "GET" };
        batch.extend_from_slice(format!("{method} /{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    }
    conn.send(&batch);
    for i in 0..10 {
        let want = expected("200 OK", "", PAGE, "", !is_head(i));
        assert_eq!(conn.next(is_head(i)), want, "response {i}");
    }
    drop(conn);
    let stats = server.stop();
    assert_eq!(stats.requests, 10);
    assert_eq!(stats.writable_registrations, 0);
}

/// `Connection: close` is honoured: the response says so and EOF follows it.
#[test]
fn connection_close_is_honoured() {
    let server = start();
    let mut conn = connect_to(&server);
    let mut request = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_vec();
    request.extend_from_slice(GET); // never answered
    conn.send(&request);
    assert_eq!(
        conn.next(false),
        expected("200 OK", "", PAGE, "Connection: close\r\n", true)
    );
    conn.expect_eof();
}

/// HTTP/1.0 closes after the response; with `Connection: keep-alive` it stays open.
#[test]
fn http10_closes_unless_keep_alive() {
    let server = start();
    let mut conn = connect_to(&server);
    conn.send(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(
        conn.next(false),
        expected("200 OK", "", PAGE, "Connection: close\r\n", true)
    );
    conn.expect_eof();

    let mut conn = connect_to(&server);
    for _ in 0..3 {
        conn.send(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert_eq!(
            conn.next(false),
            expected("200 OK", "", PAGE, "Connection: keep-alive\r\n", true)
        );
    }
    conn.send(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(
        conn.next(false),
        expected("200 OK", "", PAGE, "Connection: close\r\n", true)
    );
    conn.expect_eof();
}

/// Malformed requests get 400 and the connection closes, after good ones are answered.
#[test]
fn malformed_requests_get_400_and_close() {
    let server = start();
    for bad in [
        &b"HELLO\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    ] {
        let mut conn = connect_to(&server);
        conn.send(GET);
        conn.send(bad);
        assert_eq!(conn.next(false), ok());
        assert_eq!(
            conn.next(false),
            error_page("400 Bad Request"),
            "{}",
            String::from_utf8_lossy(bad)
        );
        conn.expect_eof();
    }
}

/// Other methods get 405 with Allow; the body is skipped and the connection goes on.
#[test]
fn other_methods_get_405() {
    let server = start();
    let mut conn = connect_to(&server);
    conn.send(b"DELETE /x HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(conn.next(false), not_allowed());
    conn.send(b"POST /form HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhello");
    assert_eq!(conn.next(false), not_allowed());
    conn.send(b" world");
    conn.send(GET);
    assert_eq!(conn.next(false), ok());
}

/// A header section over --max-header gets 431 and close, even arriving in pieces.
#[test]
fn oversized_header_gets_431_and_close() {
    let config = HttpConfig {
        body: Arc::from(DEFAULT_BODY),
        max_header: 256,
        root: None,
    };
    let server = TestServer::start(Http::new(config), |_| {});
    let mut conn = connect_to(&server);
    conn.send(GET);
    assert_eq!(conn.next(false), ok());
    conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n");
    for _ in 0..10 {
        conn.send(format!("X-Padding: {}\r\n", "p".repeat(40)).as_bytes());
    }
    assert_eq!(
        conn.next(false),
        error_page("431 Request Header Fields Too Large")
    );
    conn.expect_eof();
}

/// A chunked body sent in pieces is decoded and skipped; the next request is answered.
#[test]
fn chunked_body_is_skipped() {
    let server = start();
    let mut conn = connect_to(&server);
    conn.send(b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(conn.next(false), not_allowed());
    for piece in [
        &b"5\r\nhel"[..],
        b"lo\r\n1B;ext=1\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n\r",
        b"\n0\r\n",
        b"Trailer: yes\r\n\r\n",
    ] {
        conn.send(piece);
    }
    conn.send(GET);
    assert_eq!(conn.next(false), ok());
    drop(conn);
    assert_eq!(server.stop().requests, 2);
}

/// A transfer coding other than chunked last cannot be framed: 400 and close.
#[test]
fn unframeable_transfer_coding_gets_400() {
    let server = start();
    let mut conn = connect_to(&server);
    conn.send(b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\nxxxx");
    assert_eq!(conn.next(false), error_page("400 Bad Request"));
    conn.expect_eof();
}

/// A request dribbled in one-byte writes (Nagle off: separate segments) is answered
/// once, when its last byte arrives.
#[test]
fn header_split_across_many_small_writes() {
    let server = start();
    let mut conn = connect_to(&server);
    let request =
        b"GET /slow HTTP/1.1\r\nHost: test\r\nUser-Agent: dribbler\r\nAccept: */*\r\n\r\n";
    for byte in request.chunks(1) {
        conn.send(byte);
    }
    assert_eq!(conn.next(false), ok());
    conn.send(GET);
    assert_eq!(conn.next(false), ok());
}

/// A client that starts a header section and stalls gets 408 and is closed.
#[test]
fn stalled_header_gets_408() {
    let server = TestServer::start(Http::default(), |config| {
        config.timeouts.frame = Some(Duration::from_millis(200));
    });
    let mut conn = connect_to(&server);
    conn.send(b"GET / HTTP/1.1\r\nHo");
    assert_eq!(conn.next(false), error_page("408 Request Timeout"));
    conn.expect_eof();
}

/// A client that connects and sends nothing is closed by the idle timeout, silently.
#[test]
fn silent_client_closed_by_idle_timeout() {
    let server = TestServer::start(Http::default(), |config| {
        config.timeouts.idle = Some(Duration::from_millis(200));
    });
    let mut conn = connect_to(&server);
    conn.expect_eof();
}

/// A connection past --max-connections gets a complete 503 and EOF.
#[test]
fn full_server_answers_503() {
    let server = TestServer::start(Http::default(), |config| {
        config.limits.max_connections = 1;
    });
    let mut first = connect_to(&server);
    first.send(GET);
    assert_eq!(first.next(false), ok()); // now surely accepted
    let mut second = server.connect();
    let refusal = read_to_end(&mut second);
    assert_eq!(
        String::from_utf8(refusal).unwrap(),
        "HTTP/1.1 503 Service Unavailable\r\nServer: multiconn\r\nContent-Type: text/html\r\n\
         Content-Length: 32\r\nRetry-After: 1\r\nConnection: close\r\n\r\n\
         <h1>503 Service Unavailable</h1>"
    );
    first.send(GET);
    assert_eq!(first.next(false), ok());
}

/// The binary: `--protocol http --body FILE --max-header N` serves the file and applies
/// the limit; an unreadable --body is one `error:` line and exit 1.
#[test]
fn server_binary_flags() {
    let dir = std::env::temp_dir().join(format!("multiconn-http-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("page.html");
    std::fs::write(&page, "<p>from a file</p>\n").unwrap();
    let page_arg = page.to_str().unwrap();
    let (mut server, _log, addr): (_, _, SocketAddr) = start_server_bin(&[
        "--protocol",
        "http",
        "--body",
        page_arg,
        "--max-header",
        "100",
    ]);
    let mut conn = Responses::new(connect(addr));
    conn.send(GET);
    assert_eq!(
        conn.next(false),
        expected("200 OK", "", "<p>from a file</p>\n", "", true)
    );
    conn.send(
        format!(
            "GET / HTTP/1.1\r\nHost: test\r\nX: {}\r\n\r\n",
            "y".repeat(80)
        )
        .as_bytes(),
    );
    assert_eq!(
        conn.next(false),
        error_page("431 Request Header Fields Too Large")
    );
    conn.expect_eof();
    // Signals are the echo tests' business; SIGKILL cannot race the handler's installation.
    server.kill().unwrap();
    server.wait().unwrap();

    let missing = dir.join("missing.html");
    let out = spawn_bin(
        "multiconn-server",
        &[
            "127.0.0.1",
            "0",
            "--protocol",
            "http",
            "--body",
            missing.to_str().unwrap(),
        ],
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: cannot read {}: No such file or directory\n",
            missing.display()
        )
    );
    let out = spawn_bin(
        "multiconn-server",
        &["127.0.0.1", "0", "--protocol", "http", "--max-header", "0"],
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
