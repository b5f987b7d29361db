//! The chat room over real sockets: delivery to exactly the others in order, notices,
//! `quit`, over-long lines, 200 clients at once, and a slow consumer cut off at the cap
//! while everybody else receives everything.

mod chat_member;
mod child_server;
mod common;

use std::io::Read;
use std::net::TcpStream;

use chat_member::{Member, PerSenderOrder};
use child_server::ChildServer;
use common::{spawn_bin, TestServer, IO_TIMEOUT};
use multiconn::connection::CloseReason;
use multiconn::protocol::chat::{Chat, TOO_LONG};

/// Three members a, b, c, joined in that order, once each has seen the later ones join.
fn three_members(addr: std::net::SocketAddr) -> (Member, Member, Member) {
    let mut a = Member::join(addr);
    let mut b = Member::join(addr);
    a.expect(&format!("* {} joined\n", b.name));
    let c = Member::join(addr);
    a.expect(&format!("* {} joined\n", c.name));
    b.expect(&format!("* {} joined\n", c.name));
    (a, b, c)
}

/// Three members: each line reaches exactly the two others, in order, byte for byte.
#[test]
fn each_line_reaches_exactly_the_others_in_order() {
    let server = TestServer::start(Chat::default(), |_| {});
    let (mut a, mut b, mut c) = three_members(server.addr);

    a.send("hello from a\n");
    b.expect(&format!("[{}] hello from a\n", a.name));
    c.expect(&format!("[{}] hello from a\n", a.name));
    b.send("one\ntwo\r\n");
    c.send("three\n");
    // The first thing `a` receives after its own line is `b`'s: its own never came back.
    a.expect(&format!("[{}] one\n", b.name));
    a.expect(&format!("[{}] two\n", b.name));
    a.expect(&format!("[{}] three\n", c.name));
    c.expect(&format!("[{}] one\n", b.name));
    c.expect(&format!("[{}] two\n", b.name));
    b.expect(&format!("[{}] three\n", c.name));
    drop((a, b, c));
    assert_eq!(server.stop().requests, 4);
}

/// Arrivals and departures are announced to everyone else.
#[test]
fn join_and_leave_notices() {
    let server = TestServer::start(Chat::default(), |_| {});
    let (mut a, b, mut c) = three_members(server.addr);
    let b_name = b.name.clone();
    drop(b);
    a.expect(&format!("* {b_name} left\n"));
    c.expect(&format!("* {b_name} left\n"));
    a.send("still here\n");
    c.expect(&format!("[{}] still here\n", a.name));
}

/// `quit` ends the session: the quitter sees EOF, nothing after `quit` is relayed, and the
/// others see it leave.
#[test]
fn quit_leaves() {
    let server = TestServer::start(Chat::default(), |_| {});
    let mut a = Member::join(server.addr);
    let mut b = Member::join(server.addr);
    a.expect(&format!("* {} joined\n", b.name));
    b.send("bye\nquit\r\nnever relayed\n");
    a.expect(&format!("[{}] bye\n", b.name));
    a.expect(&format!("* {} left\n", b.name));
    assert_eq!(b.rest(), b"", "the quitter gets nothing, then EOF");
    // Like ncat, close on EOF (else the server lingers up to 2 s for this FIN).
    drop(b);
    let mut c = Member::join(server.addr);
    a.expect(&format!("* {} joined\n", c.name));
    c.send("after\n");
    a.expect(&format!("[{}] after\n", c.name));
    // Closed sockets wake the loop's graceful stop at once; idle ones would not.
    drop((a, c));
    let stats = server.stop();
    assert_eq!(stats.closed_by(CloseReason::Protocol), 1);
}

/// A line of exactly `max_line` bytes is relayed; a longer one, ended or not, gets
/// `! line too long` and the connection closes; the others see only the departure.
#[test]
fn too_long_line_is_refused() {
    let server = TestServer::start(Chat::new(16), |_| {});
    let mut a = Member::join(server.addr);
    let mut b = Member::join(server.addr);
    a.expect(&format!("* {} joined\n", b.name));
    b.send("sixteen bytes!!!\r\n");
    a.expect(&format!("[{}] sixteen bytes!!!\n", b.name));
    b.send("seventeen bytes!!\n");
    assert_eq!(b.rest(), TOO_LONG);
    a.expect(&format!("* {} left\n", b.name));
    drop(b);

    // Without a line end: refused as soon as it cannot fit, not at its end.
    let mut c = Member::join(server.addr);
    a.expect(&format!("* {} joined\n", c.name));
    c.send("eighteen bytes, no");
    assert_eq!(c.rest(), TOO_LONG);
    a.expect(&format!("* {} left\n", c.name));
    drop((a, c));
    assert_eq!(server.stop().requests, 1);
}

/// 200 members each send 50 lines: every member receives every other member's 50 lines,
/// in each sender's order, and none of its own.
#[test]
fn two_hundred_members_fifty_lines_each() {
    const MEMBERS: usize = 200;
    const LINES: usize = 50;
    let server = TestServer::start(Chat::default(), |_| {});
    let mut members: Vec<Member> = (0..MEMBERS).map(|_| Member::join(server.addr)).collect();
    // Once the first member has seen everyone join, everyone is in the room.
    for other in 1..MEMBERS {
        let name = members[other].name.clone();
        members[0].expect(&format!("* {name} joined\n"));
    }
    let results = chat_member::everyone_talks(members, LINES, "m");
    for (member, counts) in &results {
        assert_eq!(
            counts.len(),
            MEMBERS - 1,
            "{} heard from every other member",
            member.name
        );
        assert!(
            counts.values().all(|&n| n == LINES),
            "{}: {counts:?}",
            member.name
        );
    }
    drop(results);
    let stats = server.stop();
    assert_eq!(stats.requests, (MEMBERS * LINES) as u64);
    assert_eq!(stats.closed_by(CloseReason::SlowConsumer), 0);
}

/// A member that never reads is cut off with a reset once its unwritten output passes the
/// cap (with a warn log); those who read receive every line, and no connection ever had
/// more than the cap queued, so the server's memory stays bounded.
#[test]
fn slow_consumer_is_cut_and_others_get_everything() {
    const CAP: usize = 64 * 1024;
    const ROUNDS: usize = 250;
    const BATCH: usize = 20;
    let server = TestServer::start(Chat::new(1024), |config| {
        config.limits.max_outbound = CAP;
        // Small kernel buffers, so the cap is reached after ~100 KB rather than megabytes.
        config.socket.send_buffer = Some(16 * 1024);
    });
    let mut talkers = [Member::join(server.addr), Member::join(server.addr)];
    let mut listener = Member::join(server.addr);
    let slow = {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&server.addr.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Member::from_stream(stream)
    };
    // The talkers and the listener see the slow member join; then everyone is in.
    for member in talkers.iter_mut().chain([&mut listener]) {
        while !member.line().contains(&slow.name) {}
    }
    let padding = "x".repeat(100);
    let mut orders = [
        PerSenderOrder::new(),
        PerSenderOrder::new(),
        PerSenderOrder::new(),
    ];
    let mut slow_left = [0; 3];
    for round in 0..ROUNDS {
        for talker in talkers.iter_mut() {
            let lines: String = (0..BATCH)
                .map(|i| format!("t{} {padding}\n", round * BATCH + i))
                .collect();
            talker.send(&lines);
        }
        // Lockstep: readers take each round before the next is sent, so they are never
        // more than a round (~5 KB) behind and cannot be mistaken for slow consumers.
        let readers = [(0, BATCH), (1, BATCH), (2, 2 * BATCH)];
        for (who, count) in readers {
            let member = if who < 2 {
                &mut talkers[who]
            } else {
                &mut listener
            };
            let mut got = 0;
            while got < count {
                let line = member.line();
                if line == format!("* {} left\n", slow.name) {
                    slow_left[who] += 1;
                    continue;
                }
                orders[who].check(&member.name, &line, "t");
                got += 1;
            }
        }
    }
    let total = ROUNDS * BATCH;
    assert_eq!(orders[0].next.get(&talkers[1].name), Some(&total));
    assert_eq!(orders[1].next.get(&talkers[0].name), Some(&total));
    assert_eq!(orders[2].next.get(&talkers[0].name), Some(&total));
    assert_eq!(orders[2].next.get(&talkers[1].name), Some(&total));
    assert_eq!(
        slow_left,
        [1, 1, 1],
        "everyone saw the slow member leave, once"
    );

    // The slow member is reset, not closed gracefully: it may read some of what it had
    // already received, in order, but the server's queue for it is dropped at once, and
    // its read ends with ECONNRESET rather than a clean EOF.
    let mut slow = slow;
    let mut received = Vec::new();
    let error = slow
        .reader
        .read_to_end(&mut received)
        .expect_err("a cut member is reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    let rest = String::from_utf8_lossy(&received).into_owned();
    let mut order = PerSenderOrder::new();
    let mut lines: Vec<&str> = rest
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("* "))
        .collect();
    if lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.pop();
    }
    for line in &lines {
        order.check(&slow.name, line, "t");
    }
    assert!(
        lines.len() < 2 * total,
        "cut before the end: got {} lines",
        lines.len()
    );

    drop((talkers, listener));
    let stats = server.stop();
    assert_eq!(stats.closed_by(CloseReason::SlowConsumer), 1);
    assert_eq!(stats.resets, 1);
    assert!(
        stats.peak_outbound <= CAP,
        "peak {} over the cap",
        stats.peak_outbound
    );
    assert!(
        stats.peak_outbound > CAP / 2,
        "the cap was approached: {}",
        stats.peak_outbound
    );
}

/// The binary's `--max-line` reaches the protocol, and a limit that no `--max-outbound`
/// could deliver is a clear startup error.
#[test]
fn server_binary_max_line_flag() {
    let mut bad = spawn_bin(
        "multiconn-server",
        &[
            "--protocol",
            "chat",
            "--max-line",
            "2000000",
            "127.0.0.1",
            "0",
        ],
    );
    let status = bad.wait().unwrap();
    let mut err = String::new();
    bad.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(2));
    assert_eq!(
        err,
        "error: --max-line 2000000 needs --max-outbound of at least 2000064 for chat\n"
    );

    let server = ChildServer::start(&["--protocol", "chat", "--max-line", "8"]);
    let mut a = Member::join(server.addr);
    let mut b = Member::join(server.addr);
    a.expect(&format!("* {} joined\n", b.name));
    b.send("12345678\n123456789\n");
    a.expect(&format!("[{}] 12345678\n", b.name));
    assert_eq!(b.rest(), TOO_LONG);
}

// ---- rooms, names, and the options of seed 004 ----

/// Rooms over real sockets: a line reaches the members of its room only; `/join`,
/// `/nick` and `/who` answer the member and tell the room.
#[test]
fn rooms_keep_their_lines_apart() {
    let server = TestServer::start(Chat::default(), |_| {});
    let (mut a, mut b, mut c) = three_members(server.addr);

    a.send("/join dev\n");
    a.expect("* you are in dev\n");
    b.expect(&format!("* {} left\n", a.name));
    c.expect(&format!("* {} left\n", a.name));
    b.send("/nick bee\n/join dev\n");
    b.expect("* you are bee\n");
    b.expect("* you are in dev\n");
    c.expect(&format!("* {} is now bee\n", b.name));
    c.expect("* bee left\n");
    a.expect("* bee joined\n");

    a.send("in dev\n/who\n");
    b.expect(&format!("[{}] in dev\n", a.name));
    a.expect(&format!("* dev (2): {} bee\n", a.name));
    c.send("in the lobby\n/who\n");
    c.expect(&format!("* lobby (1): {}\n", c.name));
    // Nothing of the lobby reached dev: the next thing there is bee's line.
    b.send("bee here\n");
    a.expect("[bee] bee here\n");
    c.send("/join dev\n");
    c.expect("* you are in dev\n");
    a.expect(&format!("* {} joined\n", c.name));
    b.expect(&format!("* {} joined\n", c.name));
}

/// `--echo-sender` and `--timestamps` on the binary: the sender gets its own line, and
/// every line carries the seed's `%Y/%m/%d-%H:%M:%S` after the name.
#[test]
fn server_binary_echo_sender_and_timestamps() {
    let server = ChildServer::start(&["--protocol", "chat", "--echo-sender", "--timestamps"]);
    let mut a = Member::join(server.addr);
    let mut b = Member::join(server.addr);
    a.expect(&format!("* {} joined\n", b.name));
    a.send("stamped\n");
    let a_name = a.name.clone();
    for member in [&mut a, &mut b] {
        let line = member.line();
        let (sender, text) = chat_member::attribute(&line);
        assert_eq!(sender, a_name);
        let (stamp, said) = text.split_once(' ').expect("a stamp and the text");
        let shape: String = stamp
            .chars()
            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
            .collect();
        assert_eq!(shape, "dddd/dd/dd-dd:dd:dd", "{line:?}");
        assert_eq!(said, "stamped");
    }
}

/// `--workers 3`: members land on several loops and every line reaches every other
/// member, on whatever loop, in each sender's order.
#[test]
fn a_room_spans_the_workers() {
    use multiconn::launch::{start, LaunchOptions, ProtocolKind, ProtocolOptions};
    use multiconn::{ListenAddr, ServerConfig};
    const MEMBERS: usize = 24;
    const LINES: usize = 20;
    let mut config = ServerConfig::new(ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()));
    // SO_REUSEPORT: the kernel spreads the members over the loops; on one shared listener
    // whichever loop wakes first may take them all.
    config.socket.reuseport = true;
    let workers = start(LaunchOptions {
        config,
        protocol: ProtocolKind::Chat,
        protocol_options: ProtocolOptions::default(),
        workers: 3,
        derive_max_connections: false,
        metrics: None,
        udp: false,
        tls: None,
    })
    .expect("chat on 3 workers");
    let ListenAddr::Tcp(addr) = workers.addr.clone() else {
        panic!("TCP")
    };
    let mut members: Vec<Member> = (0..MEMBERS).map(|_| Member::join(addr)).collect();
    // Everyone is in once the last member's greeting has reached everyone else.
    let last = MEMBERS - 1;
    members[last].send("hello\n");
    let hello = format!("[{}] hello\n", members[last].name);
    for member in &mut members[..last] {
        chat_member::wait_for_line(member, &hello, IO_TIMEOUT);
    }
    let per_worker: Vec<u64> = workers
        .handles
        .iter()
        .map(|h| h.stats(IO_TIMEOUT).expect("stats").accepted)
        .collect();
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() >= 2,
        "members on one loop only: {per_worker:?}"
    );
    for (member, counts) in chat_member::everyone_talks(members, LINES, "w") {
        assert_eq!(counts.len(), MEMBERS - 1, "{}", member.name);
        assert!(counts.values().all(|&n| n == LINES), "{counts:?}");
    }
    workers.shutdown();
    let total: u64 = workers.join().unwrap().iter().map(|s| s.requests).sum();
    assert_eq!(total, (MEMBERS * LINES + 1) as u64);
}
