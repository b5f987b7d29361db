//! The real `multiconn-server` under TLS (`--tls-cert/--tls-key`) against real clients:
//! openssl s_client (TLS 1.2 and 1.3), curl (ALPN, a static file), Python's ssl (app and
//! chat), multiconn-client's https mode, a PROXY header before the handshake, hostile
//! peers (garbage, plaintext, a stalled handshake) beside good connections, and the
//! startup errors for bad certificate files. The certificate is made by openssl per test.

mod child_server;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use child_server::ChildServer;
use common::{pseudo_random_bytes, spawn_bin, wait_exit, TempDir, IO_TIMEOUT};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// A self-signed certificate for localhost and 127.0.0.1 (CA:FALSE, as rustls clients
/// require of a server's own certificate) and its key, in a temp dir.
struct Certs {
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }
    fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }

    /// The server's flags for this certificate, then `more`.
    fn server(&self, more: &[&str]) -> ChildServer {
        let mut args = vec!["--tls-cert", self.cert(), "--tls-key", self.key()];
        args.extend_from_slice(more);
        ChildServer::start(&args)
    }

    /// A client configuration that trusts this certificate.
    fn client_config(&self) -> Arc<ClientConfig> {
        multiconn::tls::client_config(&multiconn::tls::ClientTlsOptions {
            cacert: Some(self.cert.clone()),
            insecure: false,
        })
        .expect("client configuration")
    }
}

/// A key pair and certificate made by openssl; `None` (and a printed line) without it.
fn certs(name: &str) -> Option<Certs> {
    let dir = TempDir::new(&format!("tls-{name}"));
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match made {
        Ok(status) if status.success() => Some(Certs {
            _dir: dir,
            cert,
            key,
        }),
        other => {
            println!("skipped: openssl cannot make a certificate ({other:?})");
            None
        }
    }
}

/// Whether `tool` runs; prints a skip line if not.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        println!("skipped: {tool} is not installed");
    }
    found
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection with the handshake complete, verified against `certs`.
fn tls_connect(addr: SocketAddr, certs: &Certs) -> Tls {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(certs.client_config(), name).unwrap();
    handshake(StreamOwned::new(conn, common::connect(addr)))
}

fn handshake(mut tls: Tls) -> Tls {
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    tls
}

/// Echo over `tls`: what is sent comes back.
fn echoes(tls: &mut Tls, message: &[u8]) {
    tls.write_all(message).expect("write over TLS");
    let mut got = vec![0; message.len()];
    tls.read_exact(&mut got).expect("read the echo over TLS");
    assert_eq!(got, message);
}

/// Reads until the server closes `socket` (EOF or reset); returns what came first.
/// Fails if it is still open after the test timeout.
fn read_until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

fn port(server: &ChildServer) -> String {
    server.addr.port().to_string()
}

// ---- real clients ------------------------------------------------------------------

/// openssl s_client with only TLS 1.2, then only TLS 1.3, verifying the certificate:
/// each handshake completes and a line comes back.
#[test]
fn echo_with_openssl_on_tls12_and_tls13() {
    let Some(certs) = certs("openssl") else {
        return;
    };
    let server = certs.server(&[]);
    for version in ["-tls1_2", "-tls1_3"] {
        let mut client = Command::new("openssl")
            .args(["s_client", "-quiet", "-verify_return_error", version])
            .args(["-CAfile", certs.cert()])
            .args(["-connect", &server.addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client");
        let line = format!("echoed over {version}\n");
        client
            .stdin
            .as_mut()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = client.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let got = rx.recv_timeout(IO_TIMEOUT);
        let _ = client.kill();
        let _ = client.wait();
        assert_eq!(got.as_deref(), Ok(line.as_str()), "{version}");
    }
}

/// curl verifies the certificate, negotiates http/1.1 by ALPN (it offers h2 first), and
/// gets the page, twice on one keep-alive connection.
#[test]
fn http_with_curl_negotiates_http11() {
    let Some(certs) = certs("curl") else {
        return;
    };
    if !have("curl") {
        return;
    }
    let server = certs.server(&["--protocol", "http"]);
    let url = format!("https://127.0.0.1:{}/", port(&server));
    let out = Command::new("curl")
        .args(["-sv", "--max-time", "20", "--cacert", certs.cert()])
        .args([&url, &url])
        .output()
        .expect("curl");
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(out.status.success(), "curl failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "<h1>Hello,World!</h1>".repeat(2)
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("alpn") && l.contains("accepted") && l.contains("http/1.1")),
        "ALPN http/1.1 not accepted: {stderr}"
    );
    assert!(
        stderr.contains("re-using") || stderr.contains("reusing"),
        "{stderr}"
    );
}

/// A static file beneath --root comes whole over TLS (no sendfile there: read into the
/// TLS writer piece by piece), at full speed and to a client reading slowly, with a
/// small --max-outbound.
#[test]
fn static_file_over_tls_with_curl() {
    let Some(certs) = certs("root") else {
        return;
    };
    if !have("curl") {
        return;
    }
    let root = TempDir::new("tls-root-files-dir");
    let content = pseudo_random_bytes(17, 1_500_000);
    std::fs::write(root.0.join("big.bin"), &content).unwrap();
    let server = certs.server(&[
        "--protocol",
        "http",
        "--root",
        root.0.to_str().unwrap(),
        "--max-outbound",
        "65536",
    ]);
    let url = format!("https://127.0.0.1:{}/big.bin", port(&server));
    for rate in [None, Some("3M")] {
        let mut curl = Command::new("curl");
        curl.args(["-s", "--fail", "--max-time", "20", "--cacert", certs.cert()]);
        if let Some(rate) = rate {
            curl.args(["--limit-rate", rate]);
        }
        let out = curl.arg(&url).output().expect("curl");
        assert!(out.status.success(), "curl at {rate:?}: {:?}", out.status);
        assert!(out.stdout == content, "content differs at {rate:?}");
    }
}

/// A page of 2 MB from memory (--body), more than rustls takes in one write: it comes
/// whole, twice on one connection (a write that rustls cut short while the socket had
/// room once left the rest waiting for a WRITABLE edge that never came).
#[test]
fn large_page_over_tls_with_curl() {
    let Some(certs) = certs("body") else {
        return;
    };
    if !have("curl") {
        return;
    }
    let dir = TempDir::new("tls-body-page");
    let page = pseudo_random_bytes(23, 2_000_000);
    let body = dir.0.join("page.bin");
    std::fs::write(&body, &page).unwrap();
    let server = certs.server(&["--protocol", "http", "--body", body.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/", port(&server));
    let out = Command::new("curl")
        .args(["-s", "--fail", "--max-time", "20", "--cacert", certs.cert()])
        .args([&url, &url])
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {:?}", out.status);
    assert_eq!(out.stdout.len(), 2 * page.len());
    assert!(
        out.stdout == [&page[..], &page[..]].concat(),
        "content differs"
    );
}

/// Runs an inline Python script with `args`; returns its stdout; fails on a non-zero exit.
fn python(script: &str, args: &[&str]) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let stdout = common::read_all_in_background(child.stdout.take().unwrap());
    let stderr = common::read_all_in_background(child.stderr.take().unwrap());
    let status = wait_exit(&mut child);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(status.success(), "python3 failed: {stderr}");
    stdout
}

const PYTHON_APP: &str = r#"
import json, socket, ssl, struct, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
raw = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=20)
s = ctx.wrap_socket(raw, server_hostname="localhost")
def recv(n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            sys.exit("closed early")
        data += chunk
    return data
for query in ("morpheus", "ring"):
    content = json.dumps({"action": "search", "value": query}).encode()
    header = json.dumps({"byteorder": sys.byteorder, "content-type": "text/json",
                         "content-encoding": "utf-8", "content-length": len(content)}).encode()
    s.sendall(struct.pack(">H", len(header)) + header + content)
    header = json.loads(recv(struct.unpack(">H", recv(2))[0]))
    answer = json.loads(recv(header["content-length"]).decode(header["content-encoding"]))
    print(s.version(), answer["result"])
"#;

/// The tutorial's app protocol from Python's ssl: two requests on one connection.
#[test]
fn app_with_python_ssl() {
    let Some(certs) = certs("app") else {
        return;
    };
    let server = certs.server(&["--protocol", "app"]);
    let out = python(PYTHON_APP, &[certs.cert(), &port(&server)]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with("Follow the white rabbit. \u{1f430}"),
        "{out}"
    );
    assert!(lines[0].starts_with("TLSv1."), "{out}");
    assert!(lines[1].contains("Misty Mountains"), "{out}");
}

const PYTHON_CHAT: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
def member():
    raw = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=20)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    return s, s.makefile("rb"), "%s:%d" % s.getsockname()[:2]
def wait_for(reader, want):
    while True:
        line = reader.readline()
        if not line:
            sys.exit("closed before %r" % want)
        if line.decode().rstrip("\n") == want:
            return
a, a_lines, a_name = member()
b, b_lines, b_name = member()
wait_for(a_lines, "* %s joined" % b_name)
b.sendall(b"hello over tls\n")
wait_for(a_lines, "[%s] hello over tls" % b_name)
a.sendall(b"and back\n")
wait_for(b_lines, "[%s] and back" % a_name)
print("ok")
"#;

/// Chat from Python's ssl: two members see each other's lines.
#[test]
fn chat_with_python_ssl() {
    let Some(certs) = certs("chat") else {
        return;
    };
    let server = certs.server(&["--protocol", "chat"]);
    assert_eq!(python(PYTHON_CHAT, &[certs.cert(), &port(&server)]), "ok\n");
}

/// multiconn-client's https mode (rustls on the client too) against the http protocol:
/// every request completes and it exits 0.
#[test]
fn multiconn_client_https() {
    let Some(certs) = certs("client") else {
        return;
    };
    let server = certs.server(&["--protocol", "http"]);
    let url = format!("https://127.0.0.1:{}/", port(&server));
    let out = common::client(&[
        &url,
        "4",
        "--requests",
        "400",
        "--cacert",
        certs.cert(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let report = common::json(&out);
    assert_eq!(report["requests"]["completed"], 400, "{}", out.stdout);
    assert_eq!(report["requests"]["failed"], 0, "{}", out.stdout);
}

/// Chat's `--web` under TLS is `wss://`: a WebSocket member over TLS (tungstenite over a
/// rustls client stream) and a line member over TLS see each other's lines.
#[test]
fn chat_web_over_tls_is_wss() {
    let Some(certs) = certs("wss") else {
        return;
    };
    let server = certs.server(&["--protocol", "chat", "--web"]);
    let mut line = BufReader::new(tls_connect(server.addr, &certs));
    let send = |line: &mut BufReader<Tls>, text: &str| {
        line.get_mut().write_all(text.as_bytes()).unwrap();
    };
    let wait_for = |line: &mut BufReader<Tls>, want: &dyn Fn(&str) -> bool| loop {
        let mut got = String::new();
        assert!(line.read_line(&mut got).expect("a line") > 0, "closed");
        if want(&got) {
            return;
        }
    };
    send(&mut line, "/nick tls\n");
    wait_for(&mut line, &|l| l == "* you are tls\n");
    let (mut ws, response) =
        tungstenite::client::client("wss://localhost/ws", tls_connect(server.addr, &certs))
            .expect("WebSocket handshake over TLS");
    assert_eq!(response.status(), 101);
    wait_for(&mut line, &|l| l.ends_with(" joined\n"));
    send(&mut line, "hello wss\n");
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        seen = match ws.read().expect("a message") {
            tungstenite::Message::Binary(bytes) => {
                String::from_utf8_lossy(&bytes).contains("[tls] hello wss")
            }
            tungstenite::Message::Text(text) => text.contains("[tls] hello wss"),
            _ => false,
        };
    }
    assert!(seen, "the WebSocket member got the line");
    ws.send(tungstenite::Message::Text("from the page".into()))
        .unwrap();
    wait_for(&mut line, &|l| l.ends_with("] from the page\n"));
}

// ---- a PROXY header, then TLS ------------------------------------------------------

/// One chat member over a PROXY header and TLS, reading lines.
struct ProxiedMember {
    lines: BufReader<Tls>,
}

impl ProxiedMember {
    /// Sends `header`, then the TLS handshake. With `together`, the header and the
    /// ClientHello leave in one write, so the server reads them in one piece and hands
    /// the bytes after the header to the TLS layer.
    fn join(addr: SocketAddr, certs: &Certs, header: &str, together: bool) -> ProxiedMember {
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConnection::new(certs.client_config(), name).unwrap();
        let mut socket = common::connect(addr);
        let mut first = header.as_bytes().to_vec();
        if together {
            conn.write_tls(&mut first).unwrap();
        } else {
            socket.write_all(&first).unwrap();
            first.clear();
        }
        socket.write_all(&first).unwrap();
        ProxiedMember {
            lines: BufReader::new(handshake(StreamOwned::new(conn, socket))),
        }
    }

    fn send(&mut self, line: &str) {
        let tls = self.lines.get_mut();
        tls.write_all(line.as_bytes()).unwrap();
        tls.flush().unwrap();
    }

    fn wait_for(&mut self, want: &str) {
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).expect("read a line");
            assert!(n > 0, "closed before {want:?}");
            if line == want {
                return;
            }
        }
    }
}

/// With --proxy-protocol the header comes first, then the handshake: the members are
/// named by the addresses their headers give, whether the ClientHello came in the same
/// segment as the header or after it.
#[test]
fn proxy_header_then_tls() {
    let Some(certs) = certs("proxy") else {
        return;
    };
    let server = certs.server(&["--protocol", "chat", "--proxy-protocol"]);
    let header = |ip: &str, port: u16| format!("PROXY TCP4 {ip} 127.0.0.1 {port} 5000\r\n");
    let mut a = ProxiedMember::join(server.addr, &certs, &header("192.0.2.7", 4242), true);
    let mut b = ProxiedMember::join(server.addr, &certs, &header("192.0.2.8", 4343), false);
    a.wait_for("* 192.0.2.8:4343 joined\n");
    b.send("hi from b\n");
    a.wait_for("[192.0.2.8:4343] hi from b\n");
    a.send("hi from a\n");
    b.wait_for("[192.0.2.7:4242] hi from a\n");
}

// ---- hostile peers, each beside a good connection ----------------------------------

/// A server with `--frame-timeout 1s` and a good connection that echoes.
fn server_with_a_good_connection(certs: &Certs) -> (ChildServer, Tls) {
    let server = certs.server(&["--frame-timeout", "1s"]);
    let mut good = tls_connect(server.addr, certs);
    echoes(&mut good, b"before");
    (server, good)
}

/// Random bytes instead of a ClientHello: answered with a TLS alert and closed; the
/// good connection goes on, and the server logs why.
#[test]
fn garbage_handshake_closes_that_connection_only() {
    let Some(certs) = certs("garbage") else {
        return;
    };
    let (mut server, mut good) = server_with_a_good_connection(&certs);
    let mut bad = common::connect(server.addr);
    let mut garbage = pseudo_random_bytes(5, 300);
    garbage[0] = 0x42; // not a handshake record's type
    bad.write_all(&garbage).unwrap();
    let answer = read_until_closed(&mut bad);
    assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:?}");
    echoes(&mut good, b"after garbage");
    server.wait_for_log("TLS handshake failed", 1, IO_TIMEOUT);
    server.check_alive().unwrap();
}

/// A plaintext HTTP request to a TLS port: an alert, closed; the good connection goes on.
#[test]
fn plaintext_to_a_tls_port_closes_that_connection_only() {
    let Some(certs) = certs("plaintext") else {
        return;
    };
    let (mut server, mut good) = server_with_a_good_connection(&certs);
    let mut bad = common::connect(server.addr);
    bad.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut bad);
    assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:?}");
    assert!(!answer.starts_with(b"HTTP"), "no plaintext answer");
    echoes(&mut good, b"after plaintext");
    server.check_alive().unwrap();
}

/// Handshakes that stall (nothing sent; half a ClientHello) are closed at the frame
/// timeout, not before; a connection that completed its handshake and then sent nothing
/// for longer is not closed by it, and the good connection goes on.
#[test]
fn stalled_handshakes_end_at_the_frame_timeout() {
    let Some(certs) = certs("stall") else {
        return;
    };
    let (mut server, mut good) = server_with_a_good_connection(&certs);
    let mut quiet_after_handshake = tls_connect(server.addr, &certs);
    let started = Instant::now();
    let mut silent = common::connect(server.addr);
    let mut half = common::connect(server.addr);
    let name = ServerName::try_from("localhost").unwrap();
    let mut hello = Vec::new();
    ClientConnection::new(certs.client_config(), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    half.write_all(&hello[..hello.len() / 2]).unwrap();
    for (what, socket) in [("silent", &mut silent), ("half", &mut half)] {
        let answer = read_until_closed(socket);
        assert!(answer.is_empty(), "{what}: {answer:?}");
        let after = started.elapsed();
        assert!(
            after >= Duration::from_millis(900),
            "{what}: closed after {after:?}"
        );
    }
    server.wait_for_log("TLS handshake not completed in time", 2, IO_TIMEOUT);
    echoes(&mut quiet_after_handshake, b"still here");
    echoes(&mut good, b"after the stalls");
    server.check_alive().unwrap();
}

// ---- startup errors ----------------------------------------------------------------

/// Runs the server with `args` on 127.0.0.1:0 and expects it to exit with `code` and
/// one `error:` line that contains `says`.
fn refused(args: &[&str], code: i32, says: &str) {
    let mut all = args.to_vec();
    all.extend(["127.0.0.1", "0"]);
    let mut child = spawn_bin("multiconn-server", &all);
    let stderr = common::read_all_in_background(child.stderr.take().unwrap());
    let status = wait_exit(&mut child);
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(code), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    assert!(errors[0].contains(says), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Half of the pair, or --udp with TLS, is a usage error (2); a missing file, one that
/// is not PEM, and a key that is not the certificate's are failures (1) that name the file.
#[test]
fn bad_certificate_files_are_refused_at_startup() {
    let (Some(certs), Some(other)) = (certs("bad"), certs("bad-other")) else {
        return;
    };
    let (cert, key) = (certs.cert(), certs.key());
    refused(&["--tls-cert", cert], 2, "--tls-key");
    refused(&["--tls-key", key], 2, "--tls-cert");
    refused(&["--tls-cert", cert, "--tls-key", key, "--udp"], 2, "--udp");
    let missing = certs._dir.0.join("missing.pem");
    let missing = missing.to_str().unwrap();
    refused(&["--tls-cert", missing, "--tls-key", key], 1, missing);
    refused(&["--tls-cert", cert, "--tls-key", missing], 1, missing);
    let junk = certs._dir.0.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.to_str().unwrap();
    refused(&["--tls-cert", junk, "--tls-key", key], 1, junk);
    refused(&["--tls-cert", cert, "--tls-key", junk], 1, junk);
    refused(
        &["--tls-cert", cert, "--tls-key", other.key()],
        1,
        "does not match",
    );
}
