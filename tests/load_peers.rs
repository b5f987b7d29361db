//! The load generator against real peers the tests start: Debian's nginx (a keep-alive
//! limit of 100, a TLS server block with a certificate made here), Python's `http.server`
//! (closes after each response), small Python servers (a close-delimited body, TLS echo),
//! our own servers on a Unix socket, and test doubles that reset, cut a response short,
//! or never answer. A test whose peer binary is missing says so and passes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, json, serve_http_requests, TempDir, IO_TIMEOUT};

/// The page every HTTP peer serves.
const PAGE: &str = "<h1>Hello,World!</h1>\n";

/// A peer process, stopped (by its pid) when dropped: SIGTERM first, so that nginx's
/// master takes its worker with it (a SIGKILLed master leaves the worker running), then
/// SIGKILL if it has not exited within a few seconds.
struct PeerProcess(Child);

impl Drop for PeerProcess {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to the child we started.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(binary: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("skipped: {binary} is not installed");
    }
    found
}

/// A self-signed certificate for localhost and 127.0.0.1 (CA:FALSE, as a server's must
/// be), written as cert.pem and key.pem into `dir`.
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A port nothing listens on now (the OS's choice for port 0, released again).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`: nginx says nothing on stdout
/// when it is ready, so readiness is its listening socket.
fn wait_listening(port: u16, child: &mut Child) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the peer exited before listening: {status}");
        }
        assert!(started.elapsed() < IO_TIMEOUT, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// nginx with one worker on a plain and a TLS port, `keepalive_requests 100`, serving
/// [`PAGE`] as index.html from its own temporary directory.
struct Nginx {
    _process: PeerProcess,
    port: u16,
    tls_port: u16,
    cert: PathBuf,
    dir: TempDir,
}

impl Nginx {
    fn start(name: &str) -> Option<Nginx> {
        if !have("nginx") && !Path::new("/usr/sbin/nginx").exists() {
            return None;
        }
        let dir = TempDir::new(name);
        let root = &dir.0;
        std::fs::write(root.join("index.html"), PAGE).unwrap();
        let (cert, key) = make_certificate(root);
        let (port, tls_port) = (free_port(), free_port());
        let temp = root.display();
        let conf = format!(
            "worker_processes 1;\n\
             error_log {temp}/error.log;\n\
             pid {temp}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};\n\
               uwsgi_temp_path {temp}; scgi_temp_path {temp};\n\
               keepalive_requests 100;\n\
               server {{ listen 127.0.0.1:{port}; root {temp}; }}\n\
               server {{ listen 127.0.0.1:{tls_port} ssl; root {temp};\n\
                 ssl_certificate {}; ssl_certificate_key {}; }}\n\
             }}\n",
            cert.display(),
            key.display()
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let binary = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_listening(port, &mut child);
        wait_listening(tls_port, &mut child);
        Some(Nginx {
            _process: PeerProcess(child),
            port,
            tls_port,
            cert,
            dir,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn tls_url(&self) -> String {
        format!("https://localhost:{}/", self.tls_port)
    }
}

/// A Python program started with `-u`, which prints its port as its first line.
fn python(script: &str, args: &[&str]) -> Option<(PeerProcess, u16)> {
    if !have("python3") {
        return None;
    }
    let mut child = Command::new("python3")
        .arg("-u")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("expected a port, got {first:?}"));
    Some((PeerProcess(child), port))
}

/// Python's `http.server` (HTTP/1.0: it closes after every response) serving `dir`.
const HTTP_SERVER: &str = r#"
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *a: None
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1])
server.serve_forever()
"#;

/// Answers each request with an HTTP/1.0 body that ends at the close (no length).
const CLOSE_DELIMITED: &str = r#"
import socket, threading
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(listener.getsockname()[1])
def serve(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return conn.close()
        data += chunk
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<h1>Hello,World!</h1>\n")
    conn.close()
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// A TLS echo server with the certificate and key given.
const TLS_ECHO: &str = r#"
import socket, ssl, sys, threading
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(listener.getsockname()[1])
def serve(conn):
    try:
        tls = context.wrap_socket(conn, server_side=True)
        while True:
            data = tls.recv(65536)
            if not data:
                break
            tls.sendall(data)
    except (ssl.SSLError, OSError):
        pass
    conn.close()
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = client(args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.stderr,
        out.stdout
    );
    json(&out)
}

/// Against nginx closing every connection after 100 requests: all 2,000 requests done,
/// no errors, and the closes counted as reconnects; the same with 4 pipelined, whose
/// requests after the 100th are issued again on the next connection. Every body is
/// checked.
#[test]
fn nginx_keepalive_limit_means_reconnects_not_errors() {
    let Some(nginx) = Nginx::start("keepalive") else {
        return;
    };
    for pipeline in ["1", "4"] {
        let report = ok_json(&[
            &nginx.url(),
            "10",
            "--requests",
            "2000",
            "--pipeline",
            pipeline,
            "--expect-body",
            PAGE,
            "--json",
        ]);
        assert_eq!(report["requests"]["completed"], 2000, "pipeline {pipeline}");
        assert_eq!(
            report["errors"]["total"], 0,
            "pipeline {pipeline}: {report}"
        );
        let reconnects = report["connections"]["reconnects"].as_u64().unwrap();
        assert!((10..=20).contains(&reconnects), "{reconnects} reconnects");
        assert_eq!(report["status"]["200"], 2000);
        assert!(report["connect_us"]["p99"].as_u64().unwrap() > 0);
    }
}

/// `--no-reconnect` keeps the old rule: a server that closes is an error, and the
/// connection is gone.
#[test]
fn nginx_without_reconnecting_counts_the_closes() {
    let Some(nginx) = Nginx::start("noreconnect") else {
        return;
    };
    let out = client(&[
        &nginx.url(),
        "2",
        "--requests",
        "1000",
        "--no-reconnect",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let report = json(&out);
    assert_eq!(report["requests"]["completed"], 200, "100 per connection");
    assert_eq!(report["errors"]["reset"], 2);
    assert_eq!(report["connections"]["reconnects"], 0);
}

/// Methods, headers and statuses: a POST to a static file is nginx's 405, a failure by
/// default and a success with `--expect-status 405`; HEAD gets no body; the distribution
/// is in the report; `--disable-keepalive` makes a connection per request.
#[test]
fn nginx_methods_statuses_and_connection_per_request() {
    let Some(nginx) = Nginx::start("methods") else {
        return;
    };
    let url = nginx.url();
    let out = client(&[&url, "2", "--requests", "50", "-d", "x=1", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    assert_eq!(report["status"]["405"], 50, "{report}");
    assert_eq!(report["errors"]["status"], 50);
    assert_eq!(report["options"]["request"], "POST /");
    let report = ok_json(&[
        &url,
        "2",
        "--requests",
        "50",
        "-m",
        "POST",
        "-H",
        "Content-Type: text/plain",
        "--body",
        "x",
        "--expect-status",
        "405",
        "--json",
    ]);
    assert_eq!(report["errors"]["total"], 0);
    let report = ok_json(&[&url, "2", "--requests", "300", "-m", "HEAD", "--json"]);
    assert_eq!(report["status"]["200"], 300);
    let report = ok_json(&[
        &url,
        "2",
        "--requests",
        "200",
        "--disable-keepalive",
        "--json",
    ]);
    assert_eq!(report["requests"]["completed"], 200);
    let reconnects = report["connections"]["reconnects"].as_u64().unwrap();
    assert!((198..=200).contains(&reconnects), "{reconnects}");
    assert_eq!(report["errors"]["total"], 0);
}

/// HTTPS against nginx with a self-signed certificate: trusted with `--cacert` (and SNI
/// localhost), or with `--insecure`; without either the handshake fails with one clear
/// line and exit 1. Reconnects after nginx's keep-alive limit resume the TLS session,
/// and handshake times are reported.
#[test]
fn nginx_over_tls() {
    let Some(nginx) = Nginx::start("tls") else {
        return;
    };
    let cert = nginx.cert.display().to_string();
    let url = nginx.tls_url();
    let report = ok_json(&[
        &url,
        "4",
        "--requests",
        "1000",
        "--cacert",
        &cert,
        "--expect-body",
        PAGE,
        "--json",
    ]);
    assert_eq!(report["requests"]["completed"], 1000);
    assert_eq!(report["errors"]["total"], 0, "{report}");
    assert!(report["options"]["tls"].as_bool().unwrap());
    let handshakes = &report["tls_handshake_us"];
    assert!(handshakes["count"].as_u64().unwrap() >= 10, "{report}");
    assert!(
        report["tls_resumed"].as_u64().unwrap() >= 4,
        "reconnects resume: {report}"
    );
    let report = ok_json(&[&url, "2", "--requests", "100", "-k", "--json"]);
    assert_eq!(report["requests"]["completed"], 100);

    let out = client(&[&url, "2", "--requests", "100"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.starts_with("error: TLS handshake with ")
            && out.stderr.contains("invalid peer certificate")
            && out.stderr.lines().count() == 1,
        "{}",
        out.stderr
    );
    let _ = &nginx.dir;
}

/// Python's http.server closes after every response (HTTP/1.0): every request is done
/// on a new connection, reconnects and not errors, the file's bytes checked.
#[test]
fn python_http_server_closing_after_each_response() {
    let dir = TempDir::new("pyhttp");
    std::fs::write(dir.0.join("index.html"), PAGE).unwrap();
    let Some((_server, port)) = python(HTTP_SERVER, &[&dir.0.display().to_string()]) else {
        return;
    };
    let url = format!("http://127.0.0.1:{port}/index.html");
    let report = ok_json(&[
        &url,
        "4",
        "--requests",
        "200",
        "--expect-body",
        PAGE,
        "--json",
    ]);
    assert_eq!(report["requests"]["completed"], 200);
    assert_eq!(report["errors"]["total"], 0, "{report}");
    let reconnects = report["connections"]["reconnects"].as_u64().unwrap();
    assert!(reconnects >= 196, "a connection per request: {reconnects}");
}

/// A body without a length ends at the close: complete, and checked.
#[test]
fn close_delimited_bodies() {
    let Some((_server, port)) = python(CLOSE_DELIMITED, &[]) else {
        return;
    };
    let url = format!("http://127.0.0.1:{port}/");
    let report = ok_json(&[
        &url,
        "2",
        "--requests",
        "50",
        "--expect-body",
        PAGE,
        "--json",
    ]);
    assert_eq!(report["requests"]["completed"], 50);
    assert_eq!(report["errors"]["total"], 0, "{report}");
    let out = client(&[&url, "1", "--requests", "5", "--expect-body", "other"]);
    assert_eq!(out.status.code(), Some(1), "a different body fails");
}

/// `--tls` with `--protocol echo`: a TLS server of another kind (Python's ssl module),
/// every echoed byte verified.
#[test]
fn echo_over_tls() {
    let dir = TempDir::new("tlsecho");
    let (cert, key) = make_certificate(&dir.0);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let Some((_server, port)) = python(TLS_ECHO, &[&cert, &key]) else {
        return;
    };
    let port = port.to_string();
    let report = ok_json(&[
        "localhost",
        &port,
        "3",
        "--requests",
        "3000",
        "--tls",
        "--cacert",
        &cert,
        "--size",
        "1000",
        "--json",
    ]);
    assert_eq!(report["requests"]["completed"], 3000);
    assert_eq!(report["bytes"]["in"], 3_000_000);
    assert_eq!(report["errors"]["total"], 0);
}

/// Our own servers on a Unix socket: echo load, the tutorial scenario, and HTTP named by
/// a URL (which gives the Host header and path).
#[test]
fn unix_sockets_for_every_protocol() {
    let dir = TempDir::new("unix");
    for (protocol, args) in [
        ("echo", vec!["5", "--requests", "1000"]),
        ("app", vec!["5", "--requests", "400", "--protocol", "app"]),
        (
            "http",
            vec![
                "http://localhost/x",
                "5",
                "--requests",
                "400",
                "--expect-body",
                "<h1>Hello,World!</h1>",
            ],
        ),
    ] {
        let path = dir.0.join(format!("{protocol}.sock"));
        let path_text = path.display().to_string();
        let mut server = common::spawn_bin(
            "multiconn-server",
            &["--protocol", protocol, "--unix", &path_text, "-q"],
        );
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(&path).is_err() {
            assert!(started.elapsed() < IO_TIMEOUT, "the server did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut full = vec!["--unix", &path_text];
        full.extend(args.iter().copied());
        full.push("--json");
        let report = ok_json(&full);
        assert_eq!(report["errors"]["total"], 0, "{protocol}: {report}");
        if protocol == "echo" {
            let out = client(&["--unix", &path_text, "2"]);
            assert!(out.status.success(), "{}", out.stderr);
            assert!(
                out.stdout.contains("Closing connection 2"),
                "{}",
                out.stdout
            );
        }
        let _ = server.kill();
        let _ = server.wait();
    }
}

/// A blocking test double on 127.0.0.1:0 serving every connection on its own thread.
fn double<F>(serve: F) -> SocketAddr
where
    F: Fn(u64, TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    let count = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let (serve, n) = (serve.clone(), count.fetch_add(1, Ordering::SeqCst));
            std::thread::spawn(move || serve(n, stream));
        }
    });
    addr
}

/// Answers HTTP requests with `PAGE` while `answer` says so for request `n` of the
/// connection; then does what `end` does with the stream.
fn http_until(
    stream: &mut TcpStream,
    mut answer: impl FnMut(u64) -> bool,
    end: impl FnOnce(&mut TcpStream),
) {
    let mut n = 0;
    let mut end = Some(end);
    serve_http_requests(stream, |stream, _| {
        if !answer(n) {
            if let Some(end) = end.take() {
                end(stream);
            }
            return Ok(false);
        }
        n += 1;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{PAGE}",
            PAGE.len()
        );
        stream.write_all(response.as_bytes()).map(|()| true)
    });
}

/// A server that resets its first connection after 50 answers, and one that cuts its
/// first connection's 50th response short with a FIN: each is one error of its kind,
/// the connection is re-established, and the run still completes every request.
#[test]
fn resets_and_short_responses_are_errors_and_the_run_goes_on() {
    let reset = double(|conn, mut stream| {
        http_until(
            &mut stream,
            |n| conn > 0 || n < 50,
            |s| {
                socket2::SockRef::from(&*s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            },
        )
    });
    let cut = double(|conn, mut stream| {
        http_until(
            &mut stream,
            |n| conn > 0 || n < 50,
            |s| {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
            },
        )
    });
    for (addr, kind) in [(reset, "reset"), (cut, "closed")] {
        let url = format!("http://{addr}/");
        let out = client(&[&url, "2", "--requests", "500", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{kind}: {}", out.stderr);
        let report = json(&out);
        assert_eq!(report["errors"][kind], 1, "{report}");
        assert_eq!(report["errors"]["total"], 1, "{report}");
        assert_eq!(report["requests"]["failed"], 1);
        assert_eq!(report["requests"]["completed"], 499);
        assert!(report["connections"]["reconnects"].as_u64().unwrap() >= 1);
    }
}

/// A server that accepts and never answers: `--duration` ends with exit 1 and says no
/// request completed, instead of a report of nothing and exit 0.
#[test]
fn a_silent_server_fails_the_run() {
    let addr = double(|_, mut stream| {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    });
    let port = addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "3",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("error: no request completed in the measured 1.00s"),
        "{}",
        out.stderr
    );
}

/// `--connect-rate` paces connects (20 at 100/s take about 0.2 s), and connect times are
/// reported.
#[test]
fn connect_rate_paces_connects() {
    let addr = double(|_, mut stream| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let port = addr.port().to_string();
    let started = Instant::now();
    let report = ok_json(&[
        "127.0.0.1",
        &port,
        "20",
        "--requests",
        "100",
        "--connect-rate",
        "100",
        "--json",
    ]);
    assert!(
        started.elapsed() >= Duration::from_millis(180),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report["connect_us"]["count"], 20);
    assert_eq!(report["options"]["connect_rate"], 100.0);
}

/// Usage errors exit 2 with one line: NUM_CONNS 0 in every mode, swapped PORT and
/// NUM_CONNS past the open-files limit (naming it), absurd rates, bad URLs and headers.
#[test]
fn usage_errors_exit_2() {
    for (args, says) in [
        (vec!["127.0.0.1", "9", "0"], "NUM_CONNS must be at least 1"),
        (
            vec!["127.0.0.1", "9", "0", "--requests", "5"],
            "NUM_CONNS must be at least 1",
        ),
        (
            vec!["127.0.0.1", "9", "0", "--protocol", "file", "--path", "x"],
            "NUM_CONNS must be at least 1",
        ),
        (vec!["127.0.0.1", "10", "54321"], "open-files limit"),
        (
            vec!["127.0.0.1", "9", "1", "--duration", "1s", "--rate", "1e9"],
            "--rate",
        ),
        (
            vec!["127.0.0.1", "9", "1", "--duration", "1s", "--rate", "0.5"],
            "schedules no request",
        ),
        (vec!["ftp://x/", "1", "--requests", "1"], "invalid URL"),
        (vec!["http://x/", "1"], "a URL is a load target"),
        (
            vec![
                "http://127.0.0.1:9/",
                "1",
                "--requests",
                "1",
                "-H",
                "nocolon",
            ],
            "Name: value",
        ),
        (
            vec!["127.0.0.1", "9", "1", "--requests", "1", "-m", "PUT"],
            "go with HTTP",
        ),
    ] {
        let out = client(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(says) && out.stderr.lines().count() == 1,
            "{args:?}: {}",
            out.stderr
        );
    }
}
