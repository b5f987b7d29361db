//! `multiconn-client --udp`: the UDP echo load generator against `multiconn-server --udp`
//! (every datagram back), and against small in-test UDP doubles that drop, delay or
//! repeat echoes by sequence number (the datagram's first 8 bytes, big-endian), for the
//! loss, late and duplicate counts and the `--max-loss` exit code.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{client, json, start_server_bin, Output, IO_TIMEOUT};

/// A UDP double on 127.0.0.1:0: for every datagram, `answer` gets its sequence number
/// and says which datagrams (whole, as received earlier or now) go back to its sender.
fn double<F>(mut answer: F) -> SocketAddr
where
    F: FnMut(u64, Vec<u8>) -> Vec<Vec<u8>> + Send + 'static,
{
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        // Ends when the test's client is long gone (a read timeout).
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
            for reply in answer(seq, buf[..n].to_vec()) {
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    addr
}

fn datagrams(out: &Output) -> serde_json::Value {
    json(out)["datagrams"].clone()
}

/// Against the real server, every datagram comes back: received == sent, nothing lost,
/// each round trip in the latency histogram, exit 0; in closed loop and at a rate.
#[test]
fn every_datagram_echoed_by_the_server() {
    let (_server, _log, addr) = start_server_bin(&["--udp"]);
    let port = addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "4",
        "--udp",
        "--requests",
        "2000",
        "--size",
        "100",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let report = json(&out);
    let d = &report["datagrams"];
    assert_eq!(d["sent"], 2000, "{d}");
    assert_eq!(d["received"], 2000, "{d}");
    assert_eq!(d["lost"], 0, "{d}");
    assert_eq!(report["latency_us"]["count"], 2000);
    assert_eq!(report["bytes"]["out"], 200_000);
    assert_eq!(report["bytes"]["in"], 200_000);
    assert_eq!(report["options"]["protocol"], "udp");

    let out = client(&[
        "127.0.0.1",
        &port,
        "2",
        "--udp",
        "--duration",
        "1s",
        "--warmup",
        "0",
        "--rate",
        "200",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("datagrams "))
        .unwrap_or_else(|| panic!("no datagrams line:\n{}", out.stdout));
    let sent: u64 = field(line, "sent");
    assert!((150..=201).contains(&sent), "{line}");
    assert_eq!(field(line, "received"), sent, "{line}");
    assert_eq!(field(line, "lost"), 0, "{line}");
    assert!(out.stdout.contains("UDP datagrams"), "{}", out.stdout);
}

/// A UDP run keeps the per-second series and a rate plan's pace as a TCP run does: the
/// seconds add up to the datagrams received, and every intended slot is sent.
#[test]
fn udp_series_and_pace_follow_the_plan() {
    let (_server, _log, addr) = start_server_bin(&["--udp"]);
    let port = addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "2",
        "--udp",
        "--duration",
        "2s",
        "--warmup",
        "0",
        "--rate",
        "100..300",
        "--ramp",
        "2s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let report = json(&out);
    let received = report["datagrams"]["received"].as_u64().unwrap();
    let intervals = report["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), 2, "{intervals:?}");
    let sum: u64 = intervals
        .iter()
        .map(|i| i["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, received, "{intervals:?}");
    // 100..300 over 2 s: 150 slots in the first second, 250 in the second.
    let intended: Vec<u64> = intervals
        .iter()
        .map(|i| i["intended"].as_u64().unwrap())
        .collect();
    assert_eq!(intended, [150, 250], "{intervals:?}");
    assert_eq!(report["pace"]["intended"], 400, "{}", report["pace"]);
    assert_eq!(report["pace"]["sent"], 400, "{}", report["pace"]);
}

/// The number after `name ` in a report line.
fn field(line: &str, name: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == name).expect(name);
    words[at + 1].replace(',', "").parse().expect("a count")
}

/// A double that echoes only even sequence numbers: half the datagrams are lost, counted
/// as such; above --max-loss the run fails with one `error:` line, below it passes.
#[test]
fn loss_is_counted_and_judged_against_max_loss() {
    let addr = double(
        |seq, datagram| {
            if seq % 2 == 0 {
                vec![datagram]
            } else {
                vec![]
            }
        },
    );
    let port = addr.port().to_string();
    let run = |max_loss: &str| {
        client(&[
            "127.0.0.1",
            &port,
            "2",
            "--udp",
            "--requests",
            "20",
            "--timeout",
            "100ms",
            "--max-loss",
            max_loss,
            "--json",
        ])
    };
    let out = run("10%");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let d = datagrams(&out);
    let (sent, received, lost) = (
        d["sent"].as_u64().unwrap(),
        d["received"].as_u64().unwrap(),
        d["lost"].as_u64().unwrap(),
    );
    assert_eq!(sent, 20, "{d}");
    assert_eq!(received + lost, sent, "{d}");
    // Each socket's own numbers alternate, so at most one more kept per socket.
    assert!((9..=11).contains(&lost), "{d}");
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].starts_with(&format!("error: lost {lost} of 20 datagrams (")),
        "{}",
        out.stderr
    );
    assert!(
        errors[0].ends_with("more than --max-loss 10%"),
        "{}",
        out.stderr
    );

    let out = run("60%");
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let d = datagrams(&out);
    assert_eq!(d["sent"], 20, "{d}");
    assert!(d["lost"].as_u64().unwrap() >= 9, "{d}");

    // A fraction works as well as a percentage.
    let out = run("0.6");
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
}

/// A reply after its datagram's timeout is late and stays lost; a second reply to one
/// datagram is a duplicate; neither is matched twice. The double holds each odd datagram
/// and sends it back only after the next one (which the client sends once the odd one
/// has timed out), and echoes every even one twice.
#[test]
fn late_and_duplicate_replies_are_not_matched_again() {
    let mut held: Option<Vec<u8>> = None;
    let addr = double(move |seq, datagram| {
        if seq % 2 == 1 {
            held = Some(datagram);
            return vec![];
        }
        let mut replies: Vec<Vec<u8>> = held.take().into_iter().collect();
        replies.push(datagram.clone());
        replies.push(datagram);
        replies
    });
    let port = addr.port().to_string();
    let out = client(&[
        "127.0.0.1",
        &port,
        "1",
        "--udp",
        "--requests",
        "10",
        "--timeout",
        "100ms",
        "--json",
    ]);
    // Half lost, far above the default --max-loss of 1%.
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("more than --max-loss 1%"),
        "{}",
        out.stderr
    );
    let report = json(&out);
    let d = &report["datagrams"];
    assert_eq!(d["sent"], 10, "{d}");
    assert_eq!(d["received"], 5, "{d}");
    assert_eq!(d["lost"], 5, "{d}");
    // Odd 1, 3, 5 and 7 come back late (9 is never released); every even one twice.
    assert_eq!(d["late"], 4, "{d}");
    assert_eq!(d["duplicates"], 5, "{d}");
    assert_eq!(report["latency_us"]["count"], 5);
    assert_eq!(report["errors"]["total"], 0);
}

/// Flags that make no sense with --udp, or values out of range, are usage errors: exit 2,
/// one `error:` line.
#[test]
fn udp_usage_errors() {
    for args in [
        &["127.0.0.1", "9", "1", "--udp"][..],
        &["http://127.0.0.1:9/", "1", "--udp", "--requests", "1"],
        &[
            "127.0.0.1",
            "9",
            "1",
            "--udp",
            "--requests",
            "1",
            "--max-loss",
            "150%",
        ],
        &[
            "127.0.0.1",
            "9",
            "1",
            "--udp",
            "--requests",
            "1",
            "--max-loss",
            "2",
        ],
        &["127.0.0.1", "9", "1", "--requests", "1", "--max-loss", "5%"],
        &[
            "127.0.0.1",
            "9",
            "1",
            "--udp",
            "--requests",
            "1",
            "--size",
            "4",
        ],
        &[
            "127.0.0.1",
            "9",
            "1",
            "--udp",
            "--requests",
            "1",
            "--protocol",
            "http",
        ],
        &["127.0.0.1", "9", "1", "--udp", "--requests", "1", "--tls"],
    ] {
        let out = client(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("error:"), "{args:?}: {}", out.stderr);
        assert!(out.elapsed < Duration::from_secs(5));
    }
}
