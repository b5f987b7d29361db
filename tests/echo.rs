//! The echo server end to end: the tutorial scenario through the real binaries, many
//! concurrent connections, backpressure, half-close, resets, interest discipline, signals
//! and user errors.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use multiconn::connection::CloseReason;
use multiconn::protocol::echo::Echo;

/// The tutorial's transcript: the client's lines, the server's accept/close lines, exit 0,
/// and SIGINT ends the server with "Caught keyboard interrupt, exiting." and status 0.
#[test]
fn tutorial_scenario_through_the_binaries() {
    let (mut server, mut server_log, addr) = start_server_bin(&[]);
    let port = addr.port().to_string();
    let client = spawn_bin("multiconn-client", &["127.0.0.1", &port, "3"]);
    let output = client.wait_with_output().expect("client output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for n in 1..=3 {
        for line in [
            format!("Starting connection {n} to {addr}"),
            format!("Sending b\"Message 1 from client.\" to connection {n}"),
            format!("Sending b\"Message 2 from client.\" to connection {n}"),
            format!("Closing connection {n}"),
        ] {
            assert!(
                stdout.lines().any(|l| l == line),
                "missing {line:?} in:\n{stdout}"
            );
        }
        // The echo may arrive in one read or several; together it is both messages.
        let received: String = stdout
            .lines()
            .filter(|l| {
                l.starts_with("Received b\"") && l.ends_with(&format!("\" from connection {n}"))
            })
            .map(|l| {
                l.trim_start_matches("Received b\"")
                    .trim_end_matches(&format!("\" from connection {n}"))
            })
            .collect();
        assert_eq!(received, "Message 1 from client.Message 2 from client.");
    }
    for _ in 0..3 {
        server_log.wait_for("Accepted connection from 127.0.0.1:");
    }
    let closing = (0..3)
        .map(|_| server_log.wait_for("Closing connection to 127.0.0.1:"))
        .count();
    assert_eq!(closing, 3);
    kill(&server, libc::SIGINT);
    server_log.wait_for("Caught keyboard interrupt, exiting.");
    let status = wait_exit(&mut server);
    assert!(status.success(), "server exit status {status}");
    let accepted = server_log
        .rest()
        .iter()
        .filter(|l| l.starts_with("Accepted connection from"))
        .count();
    assert_eq!(accepted, 3);
}

/// 1,000 connections open at once, each echoing several messages of its own random
/// content: every byte comes back, in order, on the right connection.
#[test]
fn thousand_concurrent_connections_echo_every_byte() {
    let server = TestServer::start(Echo, |_| {});
    let mut conns: Vec<TcpStream> = (0..1000).map(|_| server.connect()).collect();
    for round in 0..3u64 {
        let messages: Vec<Vec<u8>> = (0..conns.len() as u64)
            .map(|i| pseudo_random_bytes(round * 10_000 + i, 100 + (i as usize % 400)))
            .collect();
        for (conn, message) in conns.iter_mut().zip(&messages) {
            write_all(conn, message);
        }
        for (conn, message) in conns.iter_mut().zip(&messages) {
            assert_eq!(&read_exact(conn, message.len()), message);
        }
    }
    drop(conns);
    let stats = server.stop();
    assert_eq!(stats.accepted, 1000);
}

/// 16 MiB through one connection whose reader is slow: the echo is complete and correct,
/// and the server stopped reading instead of queueing past its outbound cap.
#[test]
fn large_payload_with_slow_reader_stays_within_the_cap() {
    const CAP: usize = 256 * 1024;
    const TOTAL: usize = 16 * 1024 * 1024;
    let server = TestServer::start(Echo, |c| c.limits.max_outbound = CAP);
    let mut reader = server.connect();
    let mut writer = reader.try_clone().unwrap();
    let payload = pseudo_random_bytes(7, TOTAL);
    let expected = payload.clone();
    let sender = std::thread::spawn(move || writer.write_all(&payload).map(|_| writer));
    let mut received = Vec::with_capacity(TOTAL);
    let mut buf = vec![0; 16 * 1024];
    while received.len() < TOTAL {
        let n = reader.read(&mut buf).expect("read");
        assert!(n > 0, "EOF after {} bytes", received.len());
        received.extend_from_slice(&buf[..n]);
        // Pacing, not synchronisation: a reader slower than the writer.
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(received == expected, "echo differs from what was sent");
    drop(sender.join().unwrap().expect("writer"));
    drop(reader);
    let stats = server.stop();
    assert!(
        stats.peak_outbound <= CAP,
        "peak outbound {} > cap {CAP}",
        stats.peak_outbound
    );
    assert!(
        stats.writable_registrations >= 1,
        "the slow reader never filled the socket"
    );
}

/// A client that half-closes after sending still gets its whole echo, then EOF.
#[test]
fn half_close_gets_full_echo_then_eof() {
    let server = TestServer::start(Echo, |_| {});
    let mut conn = server.connect();
    let payload = pseudo_random_bytes(3, 300_000);
    let mut writer = conn.try_clone().unwrap();
    let to_send = payload.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let echoed = read_to_end(&mut conn);
    sender.join().unwrap();
    assert!(
        echoed == payload,
        "got {} bytes of {}",
        echoed.len(),
        payload.len()
    );
    drop(conn);
    let stats = server.stop();
    assert_eq!(stats.closed_by(CloseReason::PeerClosed), 1);
}

/// A client that resets mid-transfer ends only its own connection; others carry on.
#[test]
fn reset_mid_transfer_does_not_disturb_others() {
    let server = TestServer::start(Echo, |_| {});
    let mut other = server.connect();
    write_all(&mut other, b"before");
    assert_eq!(read_exact(&mut other, 6), b"before");

    let mut victim = server.connect();
    write_all(&mut victim, &pseudo_random_bytes(9, 2 * 1024 * 1024));
    // SO_LINGER 0: close sends RST instead of FIN.
    socket2::SockRef::from(&victim)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(victim);

    server.wait_for_stats("the reset connection closed", |s| {
        s.closed_by(CloseReason::Error) == 1
    });
    write_all(&mut other, b"after");
    assert_eq!(read_exact(&mut other, 5), b"after");
    drop(other);
    let stats = server.stop();
    assert_eq!(stats.accepted, 2);
}

/// Interest discipline: messages echoed in lock step are written at once, so WRITABLE is
/// never registered and no connection is ever reregistered.
#[test]
fn lock_step_echo_never_registers_writable() {
    let server = TestServer::start(Echo, |_| {});
    let mut conns: Vec<TcpStream> = (0..10).map(|_| server.connect()).collect();
    for i in 0..500u32 {
        for conn in conns.iter_mut() {
            let message = i.to_be_bytes();
            write_all(conn, &message);
            assert_eq!(read_exact(conn, 4), message);
        }
    }
    drop(conns);
    let stats = server.stop();
    assert_eq!(stats.requests, 5000);
    assert_eq!(stats.reregistrations, 0);
    assert_eq!(stats.writable_registrations, 0);
}

/// The server listens on IPv6 loopback and on a name.
#[test]
fn listens_on_ipv6_and_names() {
    for host in ["::1", "localhost"] {
        let mut child = ServerChild(spawn_bin("multiconn-server", &[host, "0"]));
        let mut log = Transcript::of(child.stderr.take().unwrap());
        let line = log.wait_for("Listening on ");
        let addr: std::net::SocketAddr = line.trim_start_matches("Listening on ").parse().unwrap();
        let mut conn = connect(addr);
        write_all(&mut conn, b"hello");
        assert_eq!(read_exact(&mut conn, 5), b"hello");
        kill(&child, libc::SIGTERM);
        assert!(wait_exit(&mut child).success());
    }
}

/// User mistakes: bad arguments give clap's usage and exit 2; a port in use gives one
/// clear line and exit 1, with no panic.
#[test]
fn user_errors_are_one_line_and_nonzero() {
    let out = spawn_bin("multiconn-server", &["127.0.0.1", "notaport"])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'notaport'"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = spawn_bin("multiconn-server", &["127.0.0.1", &port])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!("error: cannot listen on 127.0.0.1:{port}: Address already in use")
    );

    let out = spawn_bin("multiconn-server", &["no.such.host.invalid", "0"])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot resolve no.such.host.invalid"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
    assert!(!stderr.contains("panicked"));
}

/// A refused connection is reported per connection and the client exits non-zero.
#[test]
fn client_reports_refused_connections() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let out = spawn_bin("multiconn-client", &["127.0.0.1", &port, "2"])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connection 1: cannot connect to"),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(stderr.contains("2 of 2 connections failed"), "{stderr}");
}

/// A server that answers with different bytes is caught: the client says so and fails.
#[test]
fn client_detects_corrupted_echo() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 44];
        s.read_exact(&mut buf).unwrap();
        buf[5] ^= 1;
        s.write_all(&buf).unwrap();
        let _ = done_rx.recv_timeout(IO_TIMEOUT);
    });
    let out = spawn_bin("multiconn-client", &["127.0.0.1", &port, "1"])
        .wait_with_output()
        .unwrap();
    let _ = done_tx.send(());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("echo mismatch"));
}
