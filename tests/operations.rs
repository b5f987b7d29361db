//! Server operations: timeouts, connection limits, accept errors, workers, Unix sockets,
//! IPv6, graceful shutdown and statistics.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use multiconn::connection::CloseReason;
use multiconn::launch::{start, LaunchError, LaunchOptions, ProtocolKind, ProtocolOptions};
use multiconn::net::Peer;
use multiconn::protocol::echo::Echo;
use multiconn::protocol::{Flow, Output, Protocol, Timeout};
use multiconn::{ListenAddr, Server, ServerConfig};

/// A line-echo test protocol: a frame is a line; it has a refusal and a timeout reply, so
/// the loop's handling of both can be seen on the wire.
struct Lines;

impl Protocol for Lines {
    type Session = ();
    fn open(&mut self, _: &Peer, _: &mut Output<'_>) {}
    fn on_input(&mut self, _: &mut (), input: &[u8], out: &mut Output<'_>) -> (usize, Flow) {
        let mut used = 0;
        while let Some(end) = input[used..].iter().position(|&b| b == b'\n') {
            out.send(&input[used..used + end + 1]);
            used += end + 1;
        }
        (used, Flow::Continue)
    }
    fn on_timeout(&mut self, _: &mut (), kind: Timeout, out: &mut Output<'_>) {
        assert_eq!(kind, Timeout::Frame);
        out.send(b"timeout\n");
    }
    fn refusal(&self) -> Option<&[u8]> {
        Some(b"busy\n")
    }
}

/// Echo that reports, once, when it has consumed `notify_at` bytes in total.
struct NotifyingEcho {
    consumed: usize,
    notify_at: usize,
    tx: mpsc::Sender<()>,
}

impl Protocol for NotifyingEcho {
    type Session = ();
    fn open(&mut self, _: &Peer, _: &mut Output<'_>) {}
    fn on_input(&mut self, _: &mut (), input: &[u8], out: &mut Output<'_>) -> (usize, Flow) {
        out.send(input);
        let before = self.consumed;
        self.consumed += input.len();
        if before < self.notify_at && self.consumed >= self.notify_at {
            let _ = self.tx.send(());
        }
        (input.len(), Flow::Continue)
    }
}

fn ping(conn: &mut TcpStream, message: &[u8]) {
    write_all(conn, message);
    assert_eq!(read_exact(conn, message.len()), message);
}

/// The idle timeout closes a silent client while an active one, trading messages, survives.
#[test]
fn idle_timeout_closes_silent_client_only() {
    let server = TestServer::start(Echo, |c| c.timeouts.idle = Some(Duration::from_millis(300)));
    let mut active = server.connect();
    let mut silent = server.connect();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let got = read_to_end(&mut silent);
        let _ = tx.send((got, started.elapsed()));
    });
    let (got, after) = loop {
        ping(&mut active, b"still here");
        if let Ok(result) = rx.recv_timeout(Duration::from_millis(50)) {
            break result;
        }
    };
    assert!(got.is_empty());
    assert!(
        after >= Duration::from_millis(250),
        "closed too early: {after:?}"
    );
    ping(&mut active, b"and still served");
    drop(active);
    let stats = server.stop();
    assert_eq!(stats.closed_by(CloseReason::IdleTimeout), 1);
}

/// Slowloris: a byte every 50 ms keeps the idle timer happy, but the frame deadline closes
/// the connection (with the protocol's timeout reply) while another client is served.
#[test]
fn frame_deadline_defeats_slowloris() {
    let server = TestServer::start(Lines, |c| {
        c.timeouts.idle = Some(Duration::from_secs(5));
        c.timeouts.frame = Some(Duration::from_millis(400));
    });
    let mut slow = server.connect();
    let mut reader = slow.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let got = read_to_end(&mut reader);
        let _ = tx.send((got, started.elapsed()));
    });
    let mut other = server.connect();
    let (got, after) = loop {
        // The loris: never a full line. Writes may fail once the server has closed.
        let _ = slow.write_all(b"x");
        ping(&mut other, b"served\n");
        if let Ok(result) = rx.recv_timeout(Duration::from_millis(50)) {
            break result;
        }
    };
    assert_eq!(got, b"timeout\n");
    assert!(after < Duration::from_secs(3), "took {after:?}");
    ping(&mut other, b"still served\n");
    drop((slow, other));
    let stats = server.stop();
    assert_eq!(stats.closed_by(CloseReason::FrameTimeout), 1);
}

/// A peer that stops reading while output is pending is closed after the write timeout.
#[test]
fn write_timeout_closes_a_peer_that_stopped_reading() {
    let server = TestServer::start(Echo, |c| {
        c.timeouts.write = Some(Duration::from_millis(300));
        c.limits.max_outbound = 64 * 1024;
    });
    let mut conn = server.connect();
    let chunk = vec![b'z'; 64 * 1024];
    // Never reads: eventually the server gives up and the writes fail.
    let failed = (0..1000).any(|_| conn.write_all(&chunk).is_err());
    assert!(
        failed,
        "the server kept accepting 64 MiB from a peer that never reads"
    );
    drop(conn);
    let stats = server.stop();
    assert_eq!(stats.closed_by(CloseReason::WriteTimeout), 1);
}

/// `--max-connections 10`: the 11th connection gets the refusal and EOF; the first ten
/// keep working.
#[test]
fn connections_past_the_limit_are_refused() {
    let server = TestServer::start(Lines, |c| c.limits.max_connections = 10);
    let mut first: Vec<TcpStream> = (0..10).map(|_| server.connect()).collect();
    for conn in first.iter_mut() {
        ping(conn, b"hello\n"); // proves it was accepted
    }
    let mut eleventh = server.connect();
    assert_eq!(read_to_end(&mut eleventh), b"busy\n");
    for conn in first.iter_mut() {
        ping(conn, b"still here\n");
    }
    drop(first);
    let stats = server.stop();
    assert_eq!(stats.accepted, 10);
    assert_eq!(stats.refused, 1);
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// EMFILE: with a low open-files limit, more connections than allowed neither crash nor
/// spin the server; it keeps serving the ones it has and serves again once clients leave.
#[test]
fn emfile_pauses_accepting_without_spinning() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_multiconn-server"));
    command
        .args(["127.0.0.1", "0", "--max-connections", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    limit_child(&mut command, libc::RLIMIT_NOFILE, 32);
    let mut child = ServerChild(command.spawn().unwrap());
    let mut log = Transcript::of(child.stderr.take().unwrap());
    let line = log.wait_for("Listening on ");
    let addr: std::net::SocketAddr = line.trim_start_matches("Listening on ").parse().unwrap();

    let mut clients: Vec<TcpStream> = (0..60).map(|_| connect(addr)).collect();
    let mut served = clients.remove(0);
    ping(&mut served, b"first");
    log.wait_for("accept failed");
    let cpu_before = cpu_seconds(child.id());
    let window = Instant::now();
    // Measurement window: the server must stay (nearly) idle while it cannot accept.
    while window.elapsed() < Duration::from_secs(1) {
        ping(&mut served, b"still served");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu_used = cpu_seconds(child.id()) - cpu_before;
    assert!(
        cpu_used < 0.3,
        "server used {cpu_used} s of CPU in 1 s while out of descriptors"
    );

    drop(clients);
    let mut fresh = connect(addr);
    ping(&mut fresh, b"served again");
    kill(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
    let warnings = log
        .rest()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(
        warnings <= 3,
        "accept errors logged {warnings} times in about a second"
    );
}

/// `--workers 2`: connections land on both loops (SO_REUSEPORT) and all are served.
#[test]
fn two_workers_share_the_connections() {
    let mut config = ServerConfig::new(ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()));
    config.socket.reuseport = true;
    let workers = start(LaunchOptions {
        config,
        protocol: ProtocolKind::Echo,
        protocol_options: ProtocolOptions::default(),
        workers: 2,
        derive_max_connections: false,
        metrics: None,
        udp: false,
        tls: None,
    })
    .unwrap();
    let ListenAddr::Tcp(addr) = workers.addr.clone() else {
        panic!()
    };
    let mut conns: Vec<TcpStream> = (0..64).map(|_| connect(addr)).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        ping(conn, format!("message {i}").as_bytes());
    }
    drop(conns);
    workers.shutdown();
    let per_worker = workers.join().unwrap();
    assert_eq!(per_worker.len(), 2);
    assert_eq!(per_worker.iter().map(|s| s.accepted).sum::<u64>(), 64);
    assert!(per_worker.iter().all(|s| s.accepted > 0), "{per_worker:?}");
}

/// A Unix domain socket round trip; a stale socket file is replaced, a live one refused.
#[test]
fn unix_socket_round_trip_and_stale_file() {
    let dir = std::env::temp_dir().join(format!("multiconn-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves a stale file
    let server = Server::bind(ServerConfig::new(ListenAddr::Unix(path.clone())), Echo).unwrap();
    let (_, handle, thread) = server.spawn().unwrap();

    let live = Server::bind(ServerConfig::new(ListenAddr::Unix(path.clone())), Echo);
    assert_eq!(
        live.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::AddrInUse)
    );

    let mut conn = std::os::unix::net::UnixStream::connect(&path).unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    conn.write_all(b"over a unix socket").unwrap();
    let mut buf = [0u8; 18];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"over a unix socket");
    drop(conn);
    handle.shutdown();
    let stats = thread.join().unwrap().unwrap();
    // Two: ours, and the probe the second bind made to see whether the file was live.
    assert_eq!(stats.accepted, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// IPv6 loopback round trip.
#[test]
fn ipv6_round_trip() {
    let server = Server::bind(
        ServerConfig::new(ListenAddr::Tcp("[::1]:0".parse().unwrap())),
        Echo,
    )
    .unwrap();
    let (addr, handle, thread) = server.spawn().unwrap();
    let ListenAddr::Tcp(addr) = addr else {
        panic!()
    };
    assert!(addr.is_ipv6());
    let mut conn = connect(addr);
    ping(&mut conn, b"over ipv6");
    drop(conn);
    handle.shutdown();
    assert_eq!(thread.join().unwrap().unwrap().accepted, 1);
}

/// Graceful shutdown with a large echo still owed: the peer receives all of it, then EOF.
#[test]
fn shutdown_delivers_pending_output_in_full() {
    const SIZE: usize = 512 * 1024;
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start(
        NotifyingEcho {
            consumed: 0,
            notify_at: SIZE,
            tx,
        },
        |_| {},
    );
    let mut conn = server.connect();
    let payload = pseudo_random_bytes(11, SIZE);
    let mut writer = conn.try_clone().unwrap();
    let to_send = payload.clone();
    let sender = std::thread::spawn(move || writer.write_all(&to_send).unwrap());
    // The server has read everything (and owes its echo) before it is told to stop.
    rx.recv_timeout(IO_TIMEOUT)
        .expect("server consumed the payload");
    server.handle.shutdown();
    let echoed = read_to_end(&mut conn);
    sender.join().unwrap();
    assert!(echoed == payload, "got {} of {SIZE} bytes", echoed.len());
    let stats = server.stop();
    assert_eq!(stats.closed_by(CloseReason::Shutdown), 1);
}

/// The binary: `--stats` logs a line per interval; on SIGINT with output still owed to a
/// peer that does not read, a second SIGINT exits at once with status 130.
#[test]
fn stats_lines_and_second_sigint() {
    let (mut server, mut log, addr) = start_server_bin(&[
        "--stats",
        "1",
        "--recv-buffer",
        "4096",
        "--send-buffer",
        "4096",
        "--max-outbound",
        "262144",
    ]);
    log.wait_for("stats: open 0 accepted 0");
    let conn = connect(addr);
    socket2::SockRef::from(&conn)
        .set_send_buffer_size(4096)
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let chunk = [7u8; 4096];
        let mut sent = 0usize;
        while writer.write_all(&chunk).is_ok() {
            sent += chunk.len();
            let _ = tx.send(sent);
        }
    });
    // With small buffers between us and the server, 300 KiB sent means it read most of
    // it, more than our receive buffer holds: it owes echo to a peer that never reads.
    while rx.recv_timeout(IO_TIMEOUT).expect("writer progress") < 300 * 1024 {}
    kill(&server, libc::SIGINT);
    log.wait_for("Caught keyboard interrupt, exiting.");
    kill(&server, libc::SIGINT);
    let status = wait_exit(&mut server);
    assert_eq!(status.code(), Some(130));
    drop(conn);
}

/// Combinations that cannot work are refused before anything is bound: chat's options
/// with another protocol, and SO_REUSEPORT workers on one Unix socket.
#[test]
fn impossible_worker_combinations_are_refused() {
    let options = |protocol, listen| LaunchOptions {
        config: ServerConfig::new(listen),
        protocol,
        protocol_options: ProtocolOptions::default(),
        workers: 2,
        derive_max_connections: false,
        metrics: None,
        udp: false,
        tls: None,
    };
    let tcp = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
    let mut echo_with_redis = options(ProtocolKind::Echo, tcp);
    echo_with_redis.protocol_options.redis = Some("redis://127.0.0.1:6379".into());
    let error = start(echo_with_redis).err().expect("--redis with echo");
    assert_eq!(
        error,
        LaunchError::Usage("--redis works with --protocol chat only".into())
    );
    let unix = ListenAddr::Unix(std::env::temp_dir().join("multiconn-never-bound.sock"));
    let mut unix_reuseport = options(ProtocolKind::Echo, unix);
    unix_reuseport.config.socket.reuseport = true;
    let error = start(unix_reuseport)
        .err()
        .expect("--reuseport on a unix socket with 2 workers");
    assert_eq!(
        error,
        LaunchError::Usage("--reuseport with --workers works on TCP only".into())
    );

    let out = spawn_bin(
        "multiconn-server",
        &[
            "127.0.0.1",
            "0",
            "--protocol",
            "chat",
            "--redis",
            "localhost:6379",
        ],
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr,
        "error: --redis wants redis://HOST:PORT, not \"localhost:6379\"\n"
    );
}

/// When the OS refuses a worker thread, the workers already spawned are stopped and the
/// user gets one clear line and exit code 1, not a panic. The refusal is a thread limit:
/// the child runs as `nobody` with RLIMIT_NPROC 16 against 100 workers, so `clone` fails
/// at a fixed point. (An address-space limit fails a small `malloc` about as often as the
/// thread, which aborts whatever the server does.) Needs root to change user; skipped
/// with a line otherwise.
#[test]
fn refused_worker_thread_is_a_clear_error() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: refusing threads by RLIMIT_NPROC needs root (the child runs as nobody)");
        return;
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_multiconn-server"));
    command
        .args(["-q", "127.0.0.1", "0", "--workers", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    limit_child(&mut command, libc::RLIMIT_NPROC, 16);
    // RLIMIT_NPROC counts the tasks of the child's user, and root is exempt from it.
    command.uid(65534).gid(65534);
    let mut child = ServerChild(command.spawn().unwrap());
    let mut pipe = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    // stderr ends when the process exits; a hung server is killed when `child` drops.
    let stderr = rx
        .recv_timeout(IO_TIMEOUT)
        .expect("the server exited after the refused thread");
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot start a worker thread: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

/// Runs `multiconn-server ARGS` to its exit (it must exit within the I/O timeout); returns
/// the exit code and stderr.
fn server_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = ServerChild(spawn_bin("multiconn-server", args));
    let mut pipe = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let stderr = rx
        .recv_timeout(IO_TIMEOUT)
        .unwrap_or_else(|_| panic!("multiconn-server {args:?} did not exit"));
    (wait_exit(&mut child).code(), stderr)
}

/// Every usage error exits 2 with one `error:` line, time flags included; the time flags
/// take the client's forms (`30s`, `2m`, a bare number of seconds).
#[test]
fn usage_errors_exit_2() {
    for (args, message) in [
        (
            &["--workers", "0"][..],
            "error: --workers must be at least 1",
        ),
        (
            &["--protocol", "file"],
            "error: --protocol file needs --root DIR",
        ),
        (&["--stats", "0s"], "error: --stats must be longer than 0"),
        (
            &["--keepalive", "500ms"],
            "error: --keepalive must be at least 1s",
        ),
        (
            &["--idle-timeout", "2x"],
            "error: invalid value '2x' for '--idle-timeout <D>'",
        ),
        (
            &["--metrics", "9100"],
            "error: --metrics wants HOST:PORT, not \"9100\"",
        ),
        (
            &["--udp", "--unix", "/nonexistent/multiconn.sock"],
            "error: --udp needs a TCP address, not --unix",
        ),
        (
            &[
                "--protocol",
                "chat",
                "--workers",
                "2",
                "--max-line",
                "2000000",
            ],
            "error: --max-line 2000000 needs --max-outbound",
        ),
    ] {
        let mut all = vec!["-q"];
        if !args.contains(&"--unix") {
            all.extend(["127.0.0.1", "0"]);
        }
        all.extend(args);
        let (code, stderr) = server_exit(&all);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(message), "{args:?}: {stderr}");
    }
    // The accepted forms: a unit, two units, a bare number of seconds.
    let (mut server, mut log, addr) = start_server_bin(&[
        "--idle-timeout",
        "2m",
        "--write-timeout",
        "1m30s",
        "--frame-timeout",
        "30",
        "--drain-timeout",
        "500ms",
        "--stats",
        "1s",
    ]);
    ping(&mut connect(addr), b"durations parsed");
    log.wait_for("stats: ");
    kill(&server, libc::SIGTERM);
    assert_eq!(wait_exit(&mut server).code(), Some(0));
}

/// `--body` takes a regular file only: a FIFO nobody writes to and `/dev/zero` are refused
/// at once (neither blocks in `open()` nor reads without end), exit 1.
#[test]
fn body_must_be_a_regular_file() {
    let dir = TempDir::new("body");
    let fifo = dir.0.join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    for path in [fifo.to_str().unwrap(), "/dev/zero"] {
        let (code, stderr) =
            server_exit(&["-q", "127.0.0.1", "0", "--protocol", "http", "--body", path]);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(
            stderr,
            format!("error: {path} is not a regular file; --body serves a regular file\n")
        );
    }
}

/// `--workers 2` shares one listener between its loops: a second server on the same
/// address fails with "address in use" and exit 1, and the first keeps all the traffic.
#[test]
fn a_second_server_on_the_address_is_refused() {
    let (mut first, _log, addr) = start_server_bin(&["--workers", "2"]);
    let port = addr.port().to_string();
    let (code, stderr) = server_exit(&["-q", "--workers", "2", "127.0.0.1", &port]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!("error: cannot listen on {addr}: Address already in use\n")
    );
    let mut conns: Vec<TcpStream> = (0..16).map(|_| connect(addr)).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        ping(conn, format!("message {i}").as_bytes());
    }
    drop(conns);
    kill(&first, libc::SIGTERM);
    assert_eq!(wait_exit(&mut first).code(), Some(0));
}

/// Workers share a Unix socket's one listener too: every connection is served.
#[test]
fn workers_share_a_unix_socket() {
    let dir = TempDir::new("unix-workers");
    let path = dir.0.join("echo.sock");
    let workers = start(LaunchOptions {
        config: ServerConfig::new(ListenAddr::Unix(path.clone())),
        protocol: ProtocolKind::Echo,
        protocol_options: ProtocolOptions::default(),
        workers: 2,
        derive_max_connections: false,
        metrics: None,
        udp: false,
        tls: None,
    })
    .unwrap();
    for i in 0..8 {
        let mut conn = std::os::unix::net::UnixStream::connect(&path).unwrap();
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let message = format!("unix message {i}");
        conn.write_all(message.as_bytes()).unwrap();
        let mut buf = vec![0; message.len()];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(buf, message.as_bytes());
    }
    workers.shutdown();
    let per_worker = workers.join().unwrap();
    assert_eq!(per_worker.iter().map(|s| s.accepted).sum::<u64>(), 8);
}

/// SIGHUP (an operator's reload habit) is logged and ignored: the server keeps serving
/// open and new connections, and a later SIGTERM still drains what is owed: responses
/// larger than the server's 4 KiB send buffers, unread when the signal comes, arrive whole.
#[test]
fn sighup_keeps_serving_and_sigterm_still_drains() {
    const BODY: usize = 1024 * 1024;
    let dir = TempDir::new("sighup");
    let page = dir.0.join("page.bin");
    std::fs::write(&page, pseudo_random_bytes(5, BODY)).unwrap();
    let (mut server, mut log, addr) = start_server_bin(&[
        "--protocol",
        "http",
        "--body",
        page.to_str().unwrap(),
        "--send-buffer",
        "4096",
    ]);
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut before = connect(addr);
    write_all(&mut before, request);
    let head = read_exact(&mut before, 12);
    assert_eq!(head, b"HTTP/1.1 200");
    kill(&server, libc::SIGHUP);
    log.wait_for("Caught SIGHUP: ignored");
    // Still serving: a new connection gets its answer while the first is unread.
    let mut after = connect(addr);
    write_all(&mut after, request);
    assert_eq!(read_exact(&mut after, 12), b"HTTP/1.1 200");
    kill(&server, libc::SIGTERM);
    log.wait_for("Caught SIGTERM, exiting.");
    for conn in [&mut before, &mut after] {
        let rest = read_to_end(conn);
        let text = String::from_utf8_lossy(&rest[..rest.len().min(200)]).into_owned();
        assert!(
            rest.len() > BODY && rest.ends_with(&pseudo_random_bytes(5, BODY)),
            "{} bytes after the status line: {text}",
            rest.len()
        );
    }
    assert_eq!(wait_exit(&mut server).code(), Some(0));
    assert!(
        log.rest().iter().any(|l| l.contains("totals: ")),
        "{:#?}",
        log.seen
    );
}
