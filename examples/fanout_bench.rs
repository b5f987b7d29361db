//! The generator of `benches/compare/chat_vs_redis.sh`: one sender and N members, against
//! multiconn's chat (lines) or Redis pub/sub (PUBLISH to N subscribers of one channel).
//!
//! ```text
//! fanout_bench chat|redis MEMBERS LINES SIZE WINDOW [--pid PID]... ADDR [ADDR...]
//! ```
//!
//! Members connect to the addresses in turn (several: servers sharing a room through
//! Redis), the sender to the first; they meet in a room (a channel) of this run's own, so
//! that nothing of an earlier run (its departures) is counted. A probe line makes sure
//! every member is in before anything is counted. The sender then sends LINES lines of SIZE bytes, keeping at most
//! WINDOW lines in flight on average (sent × members − delivered ≤ WINDOW × members), so
//! neither server is made to buffer without bound; one thread reads every member on one
//! mio loop and counts whole deliveries by their exact framed length. The CPU time of
//! each PID (the servers) is read from /proc around the measured part. Prints one line:
//! `deliveries=D secs=S ticks=T1,T2,... user=U1,U2,...` (all CPU, and user CPU, in ticks).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

/// Every wait gives up after this.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Lines per write of the sender (fewer when the window is smaller).
const LINES_PER_WRITE: usize = 16;

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Chat,
    Redis,
}

struct Args {
    target: Target,
    members: usize,
    lines: usize,
    size: usize,
    window: usize,
    pids: Vec<u32>,
    addrs: Vec<SocketAddr>,
}

fn parse() -> Args {
    let usage = "usage: fanout_bench chat|redis MEMBERS LINES SIZE WINDOW [--pid PID]... ADDR...";
    let mut args = std::env::args().skip(1);
    let mut next = || args.next().unwrap_or_else(|| panic!("{usage}"));
    let target = match next().as_str() {
        "chat" => Target::Chat,
        "redis" => Target::Redis,
        _ => panic!("{usage}"),
    };
    let number = |s: String| s.parse::<usize>().unwrap_or_else(|_| panic!("{usage}"));
    let (members, lines, size, window) = (
        number(next()),
        number(next()),
        number(next()),
        number(next()),
    );
    let (mut pids, mut addrs) = (Vec::new(), Vec::new());
    let rest: Vec<String> = std::iter::from_fn(|| args.next()).collect();
    let mut rest = rest.into_iter();
    while let Some(arg) = rest.next() {
        if arg == "--pid" {
            pids.push(rest.next().and_then(|p| p.parse().ok()).expect("--pid PID"));
        } else {
            addrs.push(arg.parse().expect("ADDR as HOST:PORT"));
        }
    }
    assert!(!addrs.is_empty(), "{usage}");
    Args {
        target,
        members,
        lines,
        size,
        window,
        pids,
        addrs,
    }
}

/// (utime + stime, utime) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let user = fields[11].parse::<u64>().unwrap();
    (user + fields[12].parse::<u64>().unwrap(), user)
}

/// What one message looks like on the sender's side and on a member's.
struct Wire {
    /// One line or one PUBLISH, as the sender writes it.
    command: Vec<u8>,
    /// One delivery, as a member reads it.
    delivery_len: usize,
}

fn wire(target: Target, size: usize, sender: &TcpStream, room: &str) -> Wire {
    let text = vec![b'x'; size];
    match target {
        Target::Chat => {
            let mut command = text.clone();
            command.push(b'\n');
            let prefix = format!("[{}] ", sender.local_addr().unwrap()).len();
            Wire {
                command,
                delivery_len: prefix + size + 1,
            }
        }
        Target::Redis => {
            let channel = format!("${}\r\n{room}\r\n", room.len());
            let mut command = format!("*3\r\n$7\r\nPUBLISH\r\n{channel}${size}\r\n").into_bytes();
            command.extend_from_slice(&text);
            command.extend_from_slice(b"\r\n");
            let head = format!("*3\r\n$7\r\nmessage\r\n{channel}${size}\r\n");
            Wire {
                command,
                delivery_len: head.len() + size + 2,
            }
        }
    }
}

fn probe_command(target: Target, marker: &str, room: &str) -> Vec<u8> {
    match target {
        Target::Chat => format!("{marker}\n").into_bytes(),
        Target::Redis => format!(
            "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{room}\r\n${}\r\n{marker}\r\n",
            room.len(),
            marker.len()
        )
        .into_bytes(),
    }
}

/// Puts a member (or the sender) in this run's room or channel.
fn enter(target: Target, stream: &mut TcpStream, room: &str) {
    match target {
        Target::Chat => stream.write_all(format!("/join {room}\n").as_bytes()),
        Target::Redis => stream.write_all(
            format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{room}\r\n", room.len()).as_bytes(),
        ),
    }
    .expect("join");
}

/// Reads `stream` until `marker` (and the line end after it) has arrived.
fn read_past(stream: &mut TcpStream, marker: &[u8]) -> io::Result<()> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
        if let Some(at) = seen.windows(marker.len()).position(|w| w == marker) {
            if seen[at..].contains(&b'\n') {
                // Nothing follows the probe until every member has seen it.
                return Ok(());
            }
        }
    }
}

/// Reads every member on one loop until `stop`, adding whole deliveries to `delivered`.
fn receive(
    members: Vec<TcpStream>,
    delivery_len: usize,
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut poll = Poll::new().unwrap();
    let mut sockets: Vec<(mio::net::TcpStream, usize)> = members
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.set_nonblocking(true).unwrap();
            let mut s = mio::net::TcpStream::from_std(s);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)
                .unwrap();
            (s, 0)
        })
        .collect();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    // Every socket may hold bytes already: read them all once before waiting.
    let mut ready: Vec<usize> = (0..sockets.len()).collect();
    while !stop.load(Ordering::Relaxed) {
        for &i in &ready {
            let (socket, partial) = &mut sockets[i];
            loop {
                match socket.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let bytes = *partial + n;
                        delivered.fetch_add((bytes / delivery_len) as u64, Ordering::Relaxed);
                        *partial = bytes % delivery_len;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("member {i}: {e}"),
                }
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        ready.clear();
        ready.extend(events.iter().map(|e| e.token().0));
    }
}

fn main() {
    let args = parse();
    let connect = |addr: &SocketAddr| {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    };
    let room = format!("bench-{}", std::process::id());
    let mut members: Vec<TcpStream> = (0..args.members)
        .map(|i| connect(&args.addrs[i % args.addrs.len()]))
        .collect();
    let entered: &[u8] = match args.target {
        Target::Chat => b"* you are in",
        Target::Redis => b"subscribe",
    };
    for m in &mut members {
        enter(args.target, m, &room);
    }
    for m in &mut members {
        read_past(m, entered).expect("in the room");
    }
    let mut sender = connect(&args.addrs[0]);
    if args.target == Target::Chat {
        enter(args.target, &mut sender, &room);
    }
    let wire = wire(args.target, args.size, &sender, &room);
    // The sender's replies (PUBLISH counts, notices) are drained and ignored.
    let mut drain = sender.try_clone().unwrap();
    drain.set_read_timeout(None).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
    });

    // Probes until every member has seen one: members on another server hear the sender
    // only once that server has subscribed.
    let deadline = Instant::now() + TIMEOUT;
    let mut round = 0;
    'probing: loop {
        round += 1;
        let marker = format!("probe-{round}-{}", std::process::id());
        sender
            .write_all(&probe_command(args.target, &marker, &room))
            .unwrap();
        for m in &mut members {
            m.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            if read_past(m, marker.as_bytes()).is_err() {
                assert!(Instant::now() < deadline, "members never heard the probe");
                // Later probes catch up with a member still reading an earlier one.
                continue 'probing;
            }
        }
        break;
    }
    std::thread::sleep(Duration::from_millis(200));

    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (delivered, stop) = (delivered.clone(), stop.clone());
        let len = wire.delivery_len;
        std::thread::spawn(move || receive(members, len, delivered, stop))
    };
    let per_write = LINES_PER_WRITE.min(args.window.max(1));
    let batch = wire.command.repeat(per_write);
    let n = args.members as u64;
    let window = (args.window as u64) * n;
    let before: Vec<(u64, u64)> = args.pids.iter().map(|&p| cpu_ticks(p)).collect();
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < args.lines {
        while (sent as u64) * n > delivered.load(Ordering::Relaxed) + window {
            assert!(start.elapsed() < TIMEOUT, "deliveries stalled");
            std::hint::spin_loop();
            std::thread::yield_now();
        }
        let k = per_write.min(args.lines - sent);
        sender
            .write_all(&batch[..k * wire.command.len()])
            .expect("send");
        sent += k;
    }
    let total = (args.lines as u64) * n;
    while delivered.load(Ordering::Relaxed) < total {
        assert!(
            start.elapsed() < TIMEOUT,
            "only {} of {total} deliveries",
            delivered.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = start.elapsed().as_secs_f64();
    let after: Vec<(u64, u64)> = args.pids.iter().map(|&p| cpu_ticks(p)).collect();
    let spent = |part: fn(&(u64, u64)) -> u64| {
        let ticks: Vec<String> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| (part(a) - part(b)).to_string())
            .collect();
        ticks.join(",")
    };
    stop.store(true, Ordering::Relaxed);
    receiver.join().unwrap();
    println!(
        "deliveries={} secs={secs:.3} ticks={} user={}",
        delivered.load(Ordering::Relaxed),
        spent(|t| t.0),
        spent(|t| t.1)
    );
}
