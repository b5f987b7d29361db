//! Static files over HTTP (`--protocol http --root DIR`) on real sockets: curl downloads
//! them byte for byte (sendfile for the large ones), pipelined large responses arrive in
//! order, a client that stops reading costs the server no memory for the file, and the
//! bodies match nginx's for the same files and ranges (where curl and nginx are
//! installed; otherwise those tests say they skipped).

mod child_server;
mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use child_server::ChildServer;
use common::{connect, pseudo_random_bytes, write_all, TempDir, TestServer, IO_TIMEOUT};
use multiconn::protocol::http::{Http, HttpConfig};
use multiconn::root::Root;

const MIB: usize = 1024 * 1024;

/// A root with `small.txt` (1 KiB), `big.bin` (8 MiB), `sub/index.html`.
fn fixture(name: &str) -> (TempDir, Vec<u8>, Vec<u8>) {
    let dir = TempDir::new(name);
    let small = pseudo_random_bytes(1, 1024);
    let big = pseudo_random_bytes(2, 8 * MIB);
    fs::create_dir_all(dir.0.join("sub")).unwrap();
    fs::write(dir.0.join("small.txt"), &small).unwrap();
    fs::write(dir.0.join("big.bin"), &big).unwrap();
    fs::write(dir.0.join("sub/index.html"), b"<p>index</p>").unwrap();
    (dir, small, big)
}

fn serve(dir: &TempDir) -> TestServer {
    let config = HttpConfig {
        root: Some(Root::new(&dir.0).unwrap()),
        ..HttpConfig::default()
    };
    TestServer::start(Http::new(config), |_| {})
}

fn has(tool: &str, version_flag: &str) -> bool {
    Command::new(tool)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// curl's body for `url`, with `extra` arguments (a range).
fn curl(url: &str, extra: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {url} {extra:?}: {out:?}");
    out.stdout
}

/// Status line and body of one request on its own connection (`Connection: close`).
fn fetch(addr: SocketAddr, target: &str, headers: &str) -> (String, Vec<u8>) {
    let mut conn = connect(addr);
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    write_all(&mut conn, request.as_bytes());
    let mut all = Vec::new();
    conn.read_to_end(&mut all).expect("read the response");
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section");
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, all[end + 4..].to_vec())
}

/// curl downloads files whole and in part, byte for byte, over one server.
#[test]
fn curl_downloads_files_identically() {
    if !has("curl", "--version") {
        println!("skipped: curl is not installed");
        return;
    }
    let (dir, small, big) = fixture("curl");
    let server = serve(&dir);
    let base = format!("http://{}", server.addr);
    assert!(
        curl(&format!("{base}/big.bin"), &[]) == big,
        "big.bin whole"
    );
    assert!(
        curl(&format!("{base}/small.txt"), &[]) == small,
        "small.txt whole"
    );
    assert!(curl(&format!("{base}/big.bin"), &["-r", "1000-2000999"]) == big[1000..2001000]);
    assert!(curl(&format!("{base}/small.txt"), &["-r", "-10"]) == small[1014..]);
    assert_eq!(curl(&format!("{base}/sub/"), &[]), b"<p>index</p>");
}

/// Three large responses pipelined on one connection arrive whole and in order: each
/// waits until the file before it has been sent.
#[test]
fn pipelined_large_files_arrive_in_order() {
    let (dir, small, big) = fixture("pipelined");
    let server = serve(&dir);
    let mut conn = server.connect();
    let get = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    let request = [get("/big.bin"), get("/small.txt"), get("/big.bin")].concat();
    write_all(&mut conn, request.as_bytes());
    let mut bodies = Vec::new();
    for expected in [big.len(), small.len(), big.len()] {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            conn.read_exact(&mut byte).expect("a header byte");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {expected}\r\n")),
            "{head}"
        );
        let mut body = vec![0; expected];
        conn.read_exact(&mut body).expect("the body");
        bodies.push(body);
    }
    assert!(bodies[0] == big && bodies[1] == small && bodies[2] == big);
    assert_eq!(server.stop().requests, 3);
}

/// A client that asks for a 64 MiB file a hundred times over and reads nothing makes the
/// server hold no more than a few hundred KiB: the file goes by sendfile, from the page
/// cache, and the requests behind it wait unread. Another client is served meanwhile.
#[test]
fn a_client_that_stops_reading_costs_no_file_memory() {
    let dir = TempDir::new("non-reader");
    fs::File::create(dir.0.join("big"))
        .and_then(|f| f.set_len(64 * MIB as u64))
        .expect("sparse file");
    fs::write(dir.0.join("small"), b"hello").unwrap();
    let server = ChildServer::start(&["--protocol", "http", "--root", dir.0.to_str().unwrap()]);
    let (status, body) = fetch(server.addr, "/small", "");
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("HTTP/1.1 200 OK", &b"hello"[..])
    );
    let baseline = server.rss_kib();
    let mut hog = connect(server.addr);
    hog.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let request = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
    // The server stops reading behind the first file; the rest may stay in our buffer.
    let _ = hog.write(&request);
    // Wait until the server has filled the socket's buffers and stopped.
    let mut last = usize::MAX;
    let mut queued = 0;
    let started = Instant::now();
    while started.elapsed() < IO_TIMEOUT {
        std::thread::sleep(Duration::from_millis(200));
        queued = socket_receive_queue(&hog);
        if queued == last && queued > 0 {
            break;
        }
        last = queued;
    }
    assert!(queued > 0, "the server sent part of the file");
    let grown = server.rss_kib().saturating_sub(baseline);
    let (status, body) = fetch(server.addr, "/small", "");
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("HTTP/1.1 200 OK", &b"hello"[..])
    );
    eprintln!("server RSS grew by {grown} KiB with {queued} bytes of the file in flight");
    assert!(grown < 2048, "the server's RSS grew by {grown} KiB");
}

/// Bytes waiting in a socket's receive queue (FIONREAD).
fn socket_receive_queue(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; the socket is open.
    unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    n as usize
}

/// nginx, started with a generated configuration and stopped by its pid.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Nginx {
    fn start(root: &std::path::Path) -> Nginx {
        let dir = TempDir::new("nginx");
        // A port the OS picked and let go: nginx binds it a moment later.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let work = dir.0.display();
        let config = format!(
            "worker_processes 1; daemon off; master_process off; pid {work}/nginx.pid;\n\
             error_log {work}/error.log warn; events {{ worker_connections 64; }}\n\
             http {{ access_log off; sendfile on; default_type application/octet-stream;\n\
             client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;\n\
             fastcgi_temp_path {work}/fastcgi; uwsgi_temp_path {work}/uwsgi;\n\
             scgi_temp_path {work}/scgi;\n\
             server {{ listen {addr}; root {}; }} }}\n",
            root.display()
        );
        fs::write(dir.0.join("nginx.conf"), config).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &work.to_string(), "-e", &format!("{work}/error.log")])
            .args(["-c", &format!("{work}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < IO_TIMEOUT,
                "nginx did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// For the same files, whole and in ranges, our status and body are nginx's.
#[test]
fn bodies_match_nginx() {
    if !has("nginx", "-v") {
        println!("skipped: nginx is not installed");
        return;
    }
    let (dir, _, _) = fixture("nginx");
    let ours = serve(&dir);
    let nginx = Nginx::start(&dir.0);
    let cases = [
        ("/small.txt", ""),
        ("/big.bin", ""),
        ("/sub/", ""),
        ("/missing", ""),
        ("/small.txt", "Range: bytes=0-99\r\n"),
        ("/small.txt", "Range: bytes=-100\r\n"),
        ("/small.txt", "Range: bytes=1000-\r\n"),
        ("/small.txt", "Range: bytes=100-99999\r\n"),
        ("/big.bin", "Range: bytes=12345-4000000\r\n"),
        ("/small.txt", "Range: bytes=5000-\r\n"),
    ];
    for (target, headers) in cases {
        let (our_status, our_body) = fetch(ours.addr, target, headers);
        let (their_status, their_body) = fetch(nginx.addr, target, headers);
        assert_eq!(our_status, their_status, "{target} {headers}");
        // Error pages differ in wording; files and parts must be identical.
        if our_status.contains(" 20") {
            assert!(our_body == their_body, "{target} {headers}: bodies differ");
        }
    }
}

/// `--body` and `--root` are exclusive: a usage error (exit 2) naming both.
#[test]
fn body_and_root_are_exclusive() {
    let dir = TempDir::new("exclusive");
    fs::write(dir.0.join("page"), b"page").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_multiconn-server"))
        .args(["--protocol", "http", "--root", dir.0.to_str().unwrap()])
        .args([
            "--body",
            dir.0.join("page").to_str().unwrap(),
            "127.0.0.1",
            "0",
        ])
        .output()
        .expect("run the server");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--body and --root"), "{stderr}");
}
