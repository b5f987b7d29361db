//! `--metrics ADDR` and `--udp` on the real binary: scrapes checked by `promtool check
//! metrics` (Debian's prometheus package) and against the traffic the test sent, per
//! worker and in total; chat room sizes; UDP datagrams echoed on the TCP port.

mod chat_member;
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_member::{wait_for_line, Member};
use common::*;

/// A server started with `--metrics 127.0.0.1:0` and `extra`; its TCP address and the
/// metrics address it logged.
fn start(extra: &[&str]) -> (ServerChild, Transcript, SocketAddr, SocketAddr) {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (child, mut log, addr) = start_server_bin(&args);
    let line = log.wait_for("Serving metrics on http://");
    let metrics = line
        .trim_start_matches("Serving metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("metrics address");
    (child, log, addr, metrics)
}

/// One scrape: the response's head and body.
fn scrape(addr: SocketAddr, path: &str) -> (String, String) {
    let mut conn = connect(addr);
    write_all(
        &mut conn,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    );
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .expect("a response, then EOF");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header section");
    (head.to_string(), body.to_string())
}

/// The samples of a scrape: `name{labels}` to value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// Scrapes until `done` holds (the server counts a close when it sweeps it), at most
/// the I/O timeout; returns the last body.
fn scrape_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> String {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let (_, body) = scrape(addr, "/metrics");
        if done(&samples(&body)) {
            return body;
        }
        assert!(Instant::now() < deadline, "never saw {what}:\n{body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `promtool check metrics` on `body`, where promtool is installed.
fn promtool_accepts(body: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("skipping promtool: not installed (.ci/run installs prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

/// Two workers serving known echo traffic: the scrape passes promtool, and its totals and
/// per-worker series (which add up to them) count exactly the connections, bytes and
/// closes sent; loop turns and busy time are there, the busy fraction within [0, 1].
#[test]
fn scrape_counts_the_traffic_sent() {
    const CONNS: usize = 12;
    const SIZE: usize = 1000;
    let (mut server, _log, addr, metrics) = start(&["--workers", "2"]);
    let payload = pseudo_random_bytes(3, SIZE);
    for _ in 0..CONNS {
        let mut conn = connect(addr);
        write_all(&mut conn, &payload);
        assert_eq!(read_exact(&mut conn, SIZE), payload);
    }
    let body = scrape_until(metrics, "every close", |s| {
        s.get("multiconn_connections_closed_total{reason=\"peer-closed\"}") == Some(&(CONNS as f64))
    });
    promtool_accepts(&body);
    let s = samples(&body);
    for (series, want) in [
        ("multiconn_workers", 2.0),
        ("multiconn_connections_accepted_total", CONNS as f64),
        ("multiconn_connections_open", 0.0),
        ("multiconn_connections_refused_total", 0.0),
        ("multiconn_received_bytes_total", (CONNS * SIZE) as f64),
        ("multiconn_sent_bytes_total", (CONNS * SIZE) as f64),
        ("multiconn_accept_errors_total", 0.0),
    ] {
        assert_eq!(value(&s, series), want, "{series}");
    }
    assert!(value(&s, "multiconn_requests_total") >= CONNS as f64);
    // Per worker, adding up to the totals.
    for name in [
        "connections_accepted_total",
        "received_bytes_total",
        "sent_bytes_total",
        "loop_turns_total",
    ] {
        let per_worker: f64 = (1..=2)
            .map(|w| value(&s, &format!("multiconn_worker_{name}{{worker=\"{w}\"}}")))
            .sum();
        assert_eq!(
            per_worker,
            value(&s, &format!("multiconn_{name}")),
            "{name}"
        );
    }
    assert!(value(&s, "multiconn_loop_turns_total") > 0.0);
    assert!(value(&s, "multiconn_loop_busy_seconds_total") > 0.0);
    for w in 1..=2 {
        let busy = value(
            &s,
            &format!("multiconn_worker_loop_busy_ratio{{worker=\"{w}\"}}"),
        );
        assert!((0.0..=1.0).contains(&busy), "worker {w}: {busy}");
    }
    let (head, _) = scrape(metrics, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let (head, _) = scrape(metrics, "/");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    // Scrapes are not the server's traffic.
    let s = samples(&scrape(metrics, "/metrics").1);
    assert_eq!(
        value(&s, "multiconn_connections_accepted_total"),
        CONNS as f64
    );
    kill(&server, libc::SIGTERM);
    assert_eq!(wait_exit(&mut server).code(), Some(0));
}

/// Chat: the members in each room, on every worker.
#[test]
fn scrape_shows_chat_rooms() {
    let (mut server, _log, addr, metrics) = start(&["--protocol", "chat", "--workers", "2"]);
    let mut members: Vec<Member> = (0..3).map(|_| Member::join(addr)).collect();
    for member in &mut members[..2] {
        member.send("/join attic\n");
        wait_for_line(member, "* you are in attic\n", IO_TIMEOUT);
    }
    members[2].send("/who\n");
    let body = scrape_until(metrics, "the rooms", |s| {
        s.get("multiconn_chat_room_members{room=\"attic\"}") == Some(&2.0)
            && s.get("multiconn_chat_room_members{room=\"lobby\"}") == Some(&1.0)
    });
    promtool_accepts(&body);
    drop(members);
    kill(&server, libc::SIGTERM);
    assert_eq!(wait_exit(&mut server).code(), Some(0));
}

/// `--udp`: datagrams sent to the TCP port come back whole, to their sender, with two
/// workers sharing the socket; the scrape counts them, none dropped; TCP is served too.
#[test]
fn udp_echo_on_the_tcp_port() {
    const DATAGRAMS: usize = 200;
    let (mut server, _log, addr, metrics) = start(&["--udp", "--workers", "2"]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = vec![0; 65536];
    for i in 0..DATAGRAMS {
        // Lock-step, so no echo is lost to a full receive buffer: sizes up to 60 KB.
        let datagram = pseudo_random_bytes(i as u64, 1 + (i * 311) % 60_000);
        client.send_to(&datagram, addr).unwrap();
        let (n, from) = client.recv_from(&mut buf).expect("an echo");
        assert_eq!(from, addr);
        assert!(buf[..n] == datagram[..], "datagram {i}: {n} bytes back");
    }
    let mut tcp = connect(addr);
    write_all(&mut tcp, b"tcp too");
    assert_eq!(read_exact(&mut tcp, 7), b"tcp too");
    let body = scrape_until(metrics, "the datagrams", |s| {
        s.get("multiconn_udp_datagrams_sent_total") == Some(&(DATAGRAMS as f64))
    });
    promtool_accepts(&body);
    let s = samples(&body);
    assert_eq!(
        value(&s, "multiconn_udp_datagrams_received_total"),
        DATAGRAMS as f64
    );
    assert_eq!(value(&s, "multiconn_udp_datagrams_dropped_total"), 0.0);
    kill(&server, libc::SIGTERM);
    assert_eq!(wait_exit(&mut server).code(), Some(0));
}
