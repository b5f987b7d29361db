//! `--proxy-protocol`: raw PROXY headers (v1 and v2) against an in-process server, and a
//! real HAProxy (Debian's `haproxy`, started by the test with a generated config)
//! balancing over two chat backends, one sent v1 (`send-proxy`), one v2 (`send-proxy-v2`).

mod chat_member;
mod child_server;
mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_member::Member;
use child_server::ChildServer;
use common::*;
use multiconn::connection::CloseReason;
use multiconn::net::Peer;
use multiconn::protocol::echo::Echo;
use multiconn::protocol::{Flow, Output, Protocol};

/// Says whom the loop opened it for, then echoes: the peer a protocol is given.
struct Greeter;

impl Protocol for Greeter {
    type Session = ();
    fn open(&mut self, peer: &Peer, out: &mut Output<'_>) {
        out.send(format!("you are {peer}\n").as_bytes());
    }
    fn on_input(&mut self, _: &mut (), input: &[u8], out: &mut Output<'_>) -> (usize, Flow) {
        out.send(input);
        (input.len(), Flow::Continue)
    }
}

fn proxied<P>(protocol: P) -> TestServer
where
    P: Protocol + Send + 'static,
    P::Session: Send,
{
    TestServer::start(protocol, |c| {
        c.proxy_protocol = true;
        c.timeouts.frame = Some(Duration::from_millis(300));
    })
}

/// A v2 header for a TCP/IPv4 client `from` (to 10.0.0.1:80).
fn v2_header(from: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(from) = from else {
        panic!("IPv4 only")
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&from.ip().octets());
    header.extend_from_slice(&[10, 0, 0, 1]);
    header.extend_from_slice(&from.port().to_be_bytes());
    header.extend_from_slice(&80u16.to_be_bytes());
    header
}

/// The client address in the header is the one the protocol is opened with, for v1 and
/// v2; a header split over many reads (a byte at a time) works, and so does payload in
/// the same write as the header; no byte of the header reaches the protocol, and nothing
/// is handled before the header is complete.
#[test]
fn header_gives_the_client_address() {
    let server = proxied(Greeter);
    let mut v1 = server.connect();
    for byte in b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 80\r\n" {
        write_all(&mut v1, &[*byte]);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(read_exact(&mut v1, 23), b"you are 192.0.2.7:4242\n");
    write_all(&mut v1, b"payload");
    assert_eq!(read_exact(&mut v1, 7), b"payload");

    let mut v2 = server.connect();
    let mut bytes = v2_header("203.0.113.9:8080".parse().unwrap());
    bytes.extend_from_slice(b"with the header");
    write_all(&mut v2, &bytes);
    assert_eq!(
        read_exact(&mut v2, 25 + 15),
        b"you are 203.0.113.9:8080\nwith the header"
    );

    // v6, and `UNKNOWN`: the connection's own address.
    let mut v6 = server.connect();
    write_all(&mut v6, b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n");
    assert_eq!(read_exact(&mut v6, 27), b"you are [2001:db8::7]:4242\n");
    let mut unknown = server.connect();
    write_all(&mut unknown, b"PROXY UNKNOWN\r\n");
    let own = unknown.local_addr().unwrap().to_string();
    assert_eq!(
        read_exact(&mut unknown, 9 + own.len()),
        format!("you are {own}\n").as_bytes()
    );
    drop((v1, v2, v6, unknown));
    let stats = server.stop();
    assert_eq!(stats.accepted, 4);
    assert_eq!(stats.closed_by(CloseReason::ProxyHeader), 0);
}

/// A connection whose header is invalid, or that does not start with one, is closed
/// without a byte of answer; one whose header is not complete within the frame timeout
/// is closed then; meanwhile other connections are served.
#[test]
fn invalid_or_late_headers_close_the_connection() {
    let server = proxied(Echo);
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 1.2.3.4 10.0.0.1 99999 80\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
    ] {
        let mut conn = server.connect();
        write_all(&mut conn, bad);
        assert_eq!(
            read_to_end(&mut conn),
            b"",
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut slow = server.connect();
    write_all(&mut slow, b"PROXY TCP4 192.0.2.7");
    let started = Instant::now();
    let mut good = server.connect();
    write_all(&mut good, b"PROXY TCP4 192.0.2.8 10.0.0.1 1 2\r\nserved");
    assert_eq!(read_exact(&mut good, 6), b"served");
    assert_eq!(read_to_end(&mut slow), b"");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    drop(good);
    let stats = server.stop();
    assert_eq!(stats.closed_by(CloseReason::ProxyHeader), 3);
    assert_eq!(stats.closed_by(CloseReason::FrameTimeout), 1);
}

/// Without the flag nothing is parsed: a PROXY line is payload like any other.
#[test]
fn without_the_flag_a_header_is_payload() {
    let server = TestServer::start(Echo, |_| {});
    let mut conn = server.connect();
    let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 80\r\n";
    write_all(&mut conn, line);
    assert_eq!(read_exact(&mut conn, line.len()), line);
}

/// Members behind HAProxy: enough that round-robin gives each backend some.
const MEMBERS: usize = 6;

/// Debian's haproxy on free ports with a generated config, killed when dropped.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    /// Balances round-robin over `v1` (sent `send-proxy`) and `v2` (`send-proxy-v2`);
    /// `None`, with a line saying so, where haproxy is not installed.
    fn start(v1: SocketAddr, v2: SocketAddr) -> Option<Haproxy> {
        if Command::new("haproxy").arg("-v").output().is_err() {
            println!("skipping: haproxy is not installed (.ci/run installs it)");
            return None;
        }
        // A port the OS had free; another process could take it in between, rarely.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let dir = TempDir::new("haproxy");
        let config = dir.0.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 200\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend front\n  bind {addr}\n  default_backend chat\n\
                 backend chat\n  balance roundrobin\n  \
                 server v1 {v1} send-proxy\n  server v2 {v2} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let haproxy = Haproxy {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + IO_TIMEOUT;
        // Up once its frontend accepts; a probe connection reaches a backend as a member
        // that joins and leaves, which the test does not count on.
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(haproxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Behind a real HAProxy: members connect to HAProxy, which balances them over two chat
/// servers (one sent v1 headers, one v2); each backend names every member by the address
/// the member itself has, in the chat's prefixes and announcements and in its log.
#[test]
fn behind_haproxy_members_keep_their_addresses() {
    let mut backends = [
        ChildServer::start(&["--protocol", "chat", "--proxy-protocol"]),
        ChildServer::start(&["--protocol", "chat", "--proxy-protocol"]),
    ];
    let Some(haproxy) = Haproxy::start(backends[0].addr, backends[1].addr) else {
        return;
    };
    let mut members: Vec<Member> = (0..MEMBERS)
        .map(|_| Member::from_stream(connect(haproxy.addr)))
        .collect();
    // `/who`, answered once a member is in: its own name in the answer is the address it
    // has itself. A second round, once all are in, says who shares its backend.
    let mut peers = Vec::new();
    for round in 0..2 {
        peers.clear();
        for member in &mut members {
            member.send("/who\n");
            let who = loop {
                let line = member.line();
                if let Some(list) = line.strip_prefix("* lobby (") {
                    break list.split_once(": ").expect("a name list").1.to_string();
                }
            };
            let listed: Vec<String> = who.split_whitespace().map(str::to_string).collect();
            assert!(
                listed.contains(&member.name),
                "round {round}: {who} lacks {}",
                member.name
            );
            peers.push(listed);
        }
    }
    for (i, member) in members.iter_mut().enumerate() {
        member.send(&format!("hello from member {i}\n"));
    }
    // Each member hears every other member on its backend, prefixed with that member's
    // own address, as the backend learned it from the header.
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    for (member, listed) in members.iter_mut().zip(&peers) {
        let mut heard: Vec<String> = (1..listed.len()).map(|_| member.message()).collect();
        heard.sort();
        let mut want: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(_, name)| **name != member.name && listed.contains(name))
            .map(|(i, name)| format!("[{name}] hello from member {i}\n"))
            .collect();
        want.sort();
        assert_eq!(heard, want, "heard by {}", member.name);
    }
    // Both backends served members (so both header versions carried them), and each
    // member is logged by its own address on one of them.
    let mut logged = 0;
    for backend in &mut backends {
        let log = backend.log();
        let accepted = names
            .iter()
            .filter(|name| {
                log.iter()
                    .any(|line| line == &format!("Accepted connection from {name}"))
            })
            .count();
        assert!(accepted > 0, "{log:#?}");
        logged += accepted;
        backend.check_alive().unwrap();
    }
    assert_eq!(logged, MEMBERS);
}
