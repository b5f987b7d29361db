//! The chat fan-out load mode (`multiconn-client HOST PORT N --protocol chat --duration D`)
//! against the real `multiconn-server --protocol chat`: every line reaches every other
//! member and each delivery is timed; against a relay that drops lines, the loss is
//! counted exactly; flag mistakes are usage errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{client, json, start_server_bin, ServerChild, TempDir};

/// 20 members, 2 senders, 2 s: deliveries are lines × 19 with nothing lost, every
/// delivery and every line's last receipt has a latency.
#[test]
fn every_line_reaches_every_other_member() {
    let (_server, _log, addr) = start_server_bin(&["--protocol", "chat"]);
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let out = client(&[
        &host,
        &port,
        "20",
        "--protocol",
        "chat",
        "--duration",
        "2s",
        "--senders",
        "2",
        "--rate",
        "50",
        "--json",
    ]);
    assert!(out.status.success(), "{} {}", out.status, out.stderr);
    let report = json(&out);
    let sent = report["lines"]["sent"].as_u64().unwrap();
    // 2 senders at 50 lines/s for 2 s, give or take the schedule's edges.
    assert!((190..=200).contains(&sent), "{report}");
    let d = &report["deliveries"];
    assert_eq!(d["expected"].as_u64(), Some(sent * 19), "{report}");
    assert_eq!(d["delivered"].as_u64(), Some(sent * 19), "{report}");
    assert_eq!(d["lost"], 0, "{report}");
    assert_eq!(d["out_of_order"], 0, "{report}");
    assert_eq!(report["lines"]["complete"].as_u64(), Some(sent));
    assert_eq!(report["delivery_us"]["count"].as_u64(), Some(sent * 19));
    assert_eq!(report["to_last_member_us"]["count"].as_u64(), Some(sent));
    assert!(
        report["delivery_us"]["p99"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["to_last_member_us"]["max"].as_u64() >= report["delivery_us"]["p50"].as_u64(),
        "the last member cannot be earlier than the median one: {report}"
    );
    assert_eq!(report["members"]["connected"], 20);

    // The text report, in a room of its own, with the server echoing senders' lines
    // (which the senders ignore).
    let (_server, _log, addr) = start_server_bin(&["--protocol", "chat", "--echo-sender"]);
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let out = client(&[
        &host,
        &port,
        "5",
        "--protocol",
        "chat",
        "--duration",
        "500ms",
        "--room",
        "bench",
    ]);
    assert!(out.status.success(), "{} {}", out.status, out.stderr);
    assert!(
        out.stdout
            .starts_with("5 members in bench, 1 senders at 10 lines/s each"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("deliveries 20 of 20"), "{}", out.stdout);
    assert!(out.stdout.contains("lost 0"), "{}", out.stdout);
}

/// A relay that forwards every line but drops each sender's every fourth measured line:
/// the lost deliveries are exactly those lines times the other members, the rest arrive,
/// and the run exits 1.
#[test]
fn dropped_lines_are_counted_lost() {
    let dir = TempDir::new("chat-load-dropper");
    let script = dir.0.join("dropper.py");
    std::fs::write(&script, DROPPER).unwrap();
    let mut child = ServerChild(
        Command::new("python3")
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3"),
    );
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first.trim().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "5",
        "--protocol",
        "chat",
        "--duration",
        "1s",
        "--senders",
        "2",
        "--rate",
        "20",
        "--timeout",
        "500ms",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("deliveries lost"), "{}", out.stderr);
    let report = json(&out);
    let sent = report["lines"]["sent"].as_u64().unwrap();
    let incomplete = report["lines"]["incomplete"].as_u64().unwrap();
    let d = &report["deliveries"];
    let (expected, delivered, lost) = (
        d["expected"].as_u64().unwrap(),
        d["delivered"].as_u64().unwrap(),
        d["lost"].as_u64().unwrap(),
    );
    assert!(sent >= 36, "{report}");
    // Each sender's lines 3, 7, 11, ... (every fourth, counting from 0) reach nobody:
    // a quarter of all lines (each sender's count may be off by one at the edges).
    assert!(incomplete.abs_diff(sent / 4) <= 1, "{report}");
    assert_eq!(
        lost,
        incomplete * 4,
        "each missed all 4 other members: {report}"
    );
    assert_eq!(expected, sent * 4);
    assert_eq!(delivered + lost, expected, "{report}");
}

/// Mistakes with the chat load flags are usage errors (exit 2).
#[test]
fn chat_load_usage_errors() {
    for args in [
        &[
            "127.0.0.1",
            "9",
            "5",
            "--protocol",
            "chat",
            "--requests",
            "10",
        ][..],
        &[
            "127.0.0.1",
            "9",
            "5",
            "--protocol",
            "chat",
            "--duration",
            "1s",
            "--senders",
            "6",
        ],
        &[
            "127.0.0.1",
            "9",
            "1",
            "--protocol",
            "chat",
            "--duration",
            "1s",
        ],
        &[
            "127.0.0.1",
            "9",
            "5",
            "--protocol",
            "chat",
            "--duration",
            "1s",
            "--size",
            "10",
        ],
        &["127.0.0.1", "9", "5", "--protocol", "chat"],
        &[
            "127.0.0.1",
            "9",
            "5",
            "--protocol",
            "chat",
            "--duration",
            "1s",
            "--room",
            "a b",
        ],
    ] {
        let out = client(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.stderr
        );
    }
}

/// A line relay in the chat's format (`[HOST:PORT] text` to every other member) that
/// drops every fourth run line (`#` and hex, not probes `#p`) of each sender.
const DROPPER: &str = r##"
import selectors, socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
members = {}
while True:
    for key, _ in sel.select():
        sock = key.fileobj
        if sock is listener:
            conn, addr = listener.accept()
            members[conn] = {"name": "%s:%d" % addr, "buf": b"", "lines": 0}
            sel.register(conn, selectors.EVENT_READ)
            continue
        data = sock.recv(65536)
        if not data:
            sel.unregister(sock)
            del members[sock]
            sock.close()
            continue
        me = members[sock]
        me["buf"] += data
        *lines, me["buf"] = me["buf"].split(b"\n")
        for line in lines:
            if line.startswith(b"#") and not line.startswith(b"#p"):
                me["lines"] += 1
                if me["lines"] % 4 == 0:
                    continue
            out = b"[" + me["name"].encode() + b"] " + line + b"\n"
            for other in members:
                if other is not sock:
                    other.sendall(out)
"##;
