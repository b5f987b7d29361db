//! Hostile clients against the real server binary, per protocol: inputs whose cost to the
//! server is far above their size (a download that is never read while requests pile up
//! behind it, empty lines that each cost a reply, a chat line copied to every member, a
//! 16 MiB page asked for twice by clients that never read, a JSON document of millions of
//! tiny values). Each case asserts three things:
//!
//! 1. the server's resident memory (VmRSS, sampled every few milliseconds from before the
//!    attack until after it) grows by no more than a bound computed from its configured
//!    caps, written next to each case with where each term comes from;
//! 2. a canary connection opened before the attack is answered within `CANARY_BOUND`
//!    while the attack goes on and after it;
//! 3. the server neither exited nor logged a panic.
//!
//! A failing case prints every figure it measured and every check that failed, not only
//! the first. Volumes are the same in debug and release builds except where marked
//! `SCALE`: what is asserted is a memory bound, not throughput.

mod child_server;
mod common;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use child_server::{ChildServer, RssWatch};
use common::{connect, spawn_bin, TempDir, IO_TIMEOUT};
use multiconn::config::READ_CHUNK;
use multiconn::protocol::app::{ByteOrder, MAX_HEADER_LEN, PREFIX_LEN};
use multiconn::protocol::chat::DEFAULT_MAX_LINE;
use multiconn::protocol::file::{CHUNK, MAX_QUEUED_BYTES, MAX_REQUEST_LINE};
use multiconn::protocol::http::{DEFAULT_MAX_HEADER, MAX_BODY_BYTES};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// `--max-outbound` in every case, given explicitly so the bounds know it.
const MAX_OUTBOUND: u64 = MIB;
const MAX_OUTBOUND_FLAG: &str = "1048576";

/// What the loop reads with one `read` (`READ_CHUNK` in src/event_loop.rs). The replies
/// to one read are produced before any of them is written, so they are a term of a bound.
const READ_SIZE: u64 = 64 * KIB;

/// The constant of every bound: allocator slack and rounding, the loop's read and reply
/// buffers, a few pages of bookkeeping per connection, and what the first requests after
/// the baseline allocate once. Small next to what an unbounded server grows by here
/// (hundreds of MiB per attack).
const SLACK: u64 = 8 * MIB;

/// The canary must be answered within this, during the attack and after it: generous,
/// so this is no timing test, but a loop that one client can stall for seconds fails.
const CANARY_BOUND: Duration = Duration::from_secs(2);

/// How long a canary waits for its answer before calling it lost: past `CANARY_BOUND`,
/// so that a late answer is measured rather than reported as a timeout.
const CANARY_TIMEOUT: Duration = Duration::from_secs(10);

/// A flood whose write makes no progress for this long has been stopped by the server
/// (its receive buffer and our send buffer are full): the server stopped reading.
const STALL: Duration = Duration::from_secs(1);

// ---- what every case measures and checks ----

/// The figures of one attack and every check that failed, printed whole and then
/// asserted, so a failing case shows all its numbers and all its reasons.
struct Report {
    case: &'static str,
    failures: Vec<String>,
}

impl Report {
    fn new(case: &'static str) -> Report {
        Report {
            case,
            failures: Vec::new(),
        }
    }

    fn note(&self, line: impl std::fmt::Display) {
        eprintln!("{}: {line}", self.case);
    }

    fn check(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            let failure = failure();
            self.note(format_args!("FAILED: {failure}"));
            self.failures.push(failure);
        }
    }

    /// The peak VmRSS over the baseline must be within `bound` (bytes).
    fn memory(&mut self, baseline_kib: u64, (peak_kib, samples): (u64, usize), bound: u64) {
        let growth_kib = peak_kib.saturating_sub(baseline_kib);
        let bound_kib = bound / KIB;
        self.note(format_args!(
            "VmRSS {baseline_kib} KiB before, peak {peak_kib} KiB over {samples} samples: \
             +{growth_kib} KiB ({:.1} MiB), bound {bound_kib} KiB ({:.1} MiB)",
            growth_kib as f64 / 1024.0,
            bound_kib as f64 / 1024.0,
        ));
        self.check(growth_kib <= bound_kib, || {
            format!("server RSS grew by {growth_kib} KiB, over the bound of {bound_kib} KiB")
        });
    }

    /// Every canary exchange must have completed, the slowest within `CANARY_BOUND`.
    fn canary(&mut self, when: &str, result: Result<Latencies, String>) {
        match result {
            Ok(Latencies { slowest, count }) => {
                self.note(format_args!(
                    "canary {when}: {count} exchange(s), the slowest answered in {slowest:.1?}"
                ));
                self.check(slowest <= CANARY_BOUND, || {
                    format!("canary {when}: answered in {slowest:.1?}, over {CANARY_BOUND:?}")
                });
            }
            Err(e) => self.check(false, || format!("canary {when}: {e}")),
        }
    }

    /// Checks that the server is still running and never panicked, then fails the test
    /// with every failure seen.
    fn finish(mut self, server: &mut ChildServer) {
        let alive = server.check_alive();
        self.check(alive.is_ok(), || alive.unwrap_err());
        assert!(
            self.failures.is_empty(),
            "{}: {} check(s) failed:\n  {}",
            self.case,
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

/// How long canary exchanges took.
struct Latencies {
    slowest: Duration,
    count: usize,
}

/// Times one exchange with the canary.
fn timed(exchange: impl FnOnce() -> Result<(), String>) -> Result<Latencies, String> {
    let start = Instant::now();
    exchange()?;
    Ok(Latencies {
        slowest: start.elapsed(),
        count: 1,
    })
}

/// A pause between canary exchanges during an attack: they sample the server's
/// responsiveness, they are not a second attack.
const CANARY_PAUSE: Duration = Duration::from_millis(10);

/// Times exchanges with the canary, one after another, until `over()` says the attack
/// ended (at least one), so that every phase of it is sampled; the first failure ends it.
fn timed_while(
    over: impl Fn() -> bool,
    mut exchange: impl FnMut() -> Result<(), String>,
) -> Result<Latencies, String> {
    let mut times = Latencies {
        slowest: Duration::ZERO,
        count: 0,
    };
    loop {
        let start = Instant::now();
        exchange().map_err(|e| format!("exchange {}: {e}", times.count + 1))?;
        times.slowest = times.slowest.max(start.elapsed());
        times.count += 1;
        if over() {
            return Ok(times);
        }
        std::thread::sleep(CANARY_PAUSE);
    }
}

/// A connection whose reads give up after `CANARY_TIMEOUT`.
fn canary(addr: SocketAddr) -> TcpStream {
    let stream = connect(addr);
    stream.set_read_timeout(Some(CANARY_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(CANARY_TIMEOUT)).unwrap();
    stream
}

/// Sends `request` and expects exactly `answer` back.
fn exchange(stream: &mut TcpStream, request: &[u8], answer: &[u8]) -> Result<(), String> {
    stream
        .write_all(request)
        .map_err(|e| format!("sending: {e}"))?;
    let mut got = vec![0; answer.len()];
    stream
        .read_exact(&mut got)
        .map_err(|e| format!("waiting for the answer: {e}"))?;
    if got != answer {
        return Err(format!(
            "wrong answer {:?}, expected {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(answer)
        ));
    }
    Ok(())
}

/// Waits (with the stream's read timeout) until the server has sent something, without
/// reading it: a client that "never reads" can still know its request was processed.
fn wait_for_data(stream: &TcpStream) -> Result<(), String> {
    match stream.peek(&mut [0]) {
        Ok(1) => Ok(()),
        Ok(_) => Err("the server closed the connection".into()),
        Err(e) => Err(format!("no answer: {e}")),
    }
}

// ---- a client writing as fast as the server takes it ----

/// How a flood ended.
#[derive(Debug, PartialEq, Eq)]
enum FloodEnd {
    /// Everything was written.
    Sent,
    /// A write made no progress for the stall time: the server stopped reading.
    Stalled,
    /// The memory bound was passed already; going on would only spend time and memory.
    Stopped,
    /// The connection failed: the server closed or reset it.
    Failed(io::ErrorKind),
}

/// A client writing `total` bytes of `pattern`, repeated, on a thread. A write that ends
/// inside the pattern is continued where it stopped, so requests are never cut.
struct Flood {
    progress: mpsc::Receiver<()>,
    thread: JoinHandle<(TcpStream, u64, FloodEnd)>,
}

impl Flood {
    fn start(
        mut stream: TcpStream,
        pattern: Vec<u8>,
        total: u64,
        stall: Duration,
        stop: Arc<AtomicBool>,
    ) -> Flood {
        let (tell, progress) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            stream.set_write_timeout(Some(stall)).unwrap();
            let (mut sent, mut told) = (0u64, false);
            let end = loop {
                if sent >= total {
                    break FloodEnd::Sent;
                }
                if stop.load(Ordering::Relaxed) {
                    break FloodEnd::Stopped;
                }
                let at = (sent % pattern.len() as u64) as usize;
                let len = (total - sent).min((pattern.len() - at) as u64) as usize;
                match stream.write(&pattern[at..at + len]) {
                    Ok(0) => break FloodEnd::Failed(io::ErrorKind::WriteZero),
                    Ok(n) => sent += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break FloodEnd::Stalled
                    }
                    Err(e) => break FloodEnd::Failed(e.kind()),
                }
                if !told && sent >= total / 4 {
                    told = true;
                    let _ = tell.send(());
                }
            };
            // Dropping the sender also wakes `under_way` if the quarter was never reached.
            drop(tell);
            (stream, sent, end)
        });
        Flood { progress, thread }
    }

    /// Waits until a quarter of the flood is written, or the flood ended.
    fn under_way(&self) {
        let _ = self.progress.recv_timeout(IO_TIMEOUT);
    }

    /// Whether the flood has ended.
    fn over(&self) -> bool {
        self.thread.is_finished()
    }

    /// The connection (still open), the bytes written and how it ended.
    fn join(self) -> (TcpStream, u64, FloodEnd) {
        self.thread.join().expect("flood thread")
    }
}

fn describe_flood(sent: u64, total: u64, end: &FloodEnd) -> String {
    let how = match end {
        FloodEnd::Sent => "all of it".to_string(),
        FloodEnd::Stalled => "then the server stopped reading".to_string(),
        FloodEnd::Stopped => {
            "then stopped, the memory bound being passed (so the growth shown is less than \
             the whole attack would cause)"
                .to_string()
        }
        FloodEnd::Failed(kind) => format!("then the connection failed: {kind:?}"),
    };
    format!(
        "flood: {:.1} of {:.1} MiB written, {how}",
        sent as f64 / MIB as f64,
        total as f64 / MIB as f64
    )
}

/// Starts a memory watch whose ceiling is the bound over `baseline_kib`.
fn watch(server: &ChildServer, baseline_kib: u64, bound: u64) -> RssWatch {
    RssWatch::start(server.pid(), baseline_kib + bound / KIB)
}

// ---- echo ----

/// A client that writes 100 MiB and never reads what comes back makes the server stop
/// reading it once `--max-outbound` is owed: memory stays within the cap, and a canary is
/// still echoed.
#[test]
fn echo_client_that_never_reads() {
    const TOTAL: u64 = 100 * MIB;
    let mut report = Report::new("echo, never reading");
    let mut server = ChildServer::start(&["--max-outbound", MAX_OUTBOUND_FLAG]);
    let mut canary = canary(server.addr);
    exchange(&mut canary, b"warm-up\n", b"warm-up\n").expect("warm-up");
    let baseline = server.rss_kib();
    // Per connection (the attacker and the canary): what it is owed, at most the cap,
    // plus the echo of one read, produced before it is written.
    let bound = 2 * (MAX_OUTBOUND + READ_SIZE) + SLACK;
    let watch = watch(&server, baseline, bound);

    let flood = Flood::start(
        connect(server.addr),
        vec![b'x'; READ_SIZE as usize],
        TOTAL,
        STALL,
        watch.over.clone(),
    );
    report.canary(
        "during",
        timed_while(
            || flood.over(),
            || exchange(&mut canary, b"ping\n", b"ping\n"),
        ),
    );
    let (attacker, sent, end) = flood.join();
    report.canary(
        "after",
        timed(|| exchange(&mut canary, b"pong\n", b"pong\n")),
    );
    report.memory(baseline, watch.finish(), bound);
    report.note(describe_flood(sent, TOTAL, &end));
    report.check(end != FloodEnd::Sent, || {
        "the server read all 100 MiB from a client that reads nothing".into()
    });
    drop(attacker);
    report.finish(&mut server);
}

// ---- file ----

/// `ERR invalid path\n`: the answer to an empty request line, 17 bytes for 1.
const INVALID_PATH: &[u8] = b"ERR invalid path\n";

/// A root holding `big` (64 MiB, sparse: no disk or page cache spent) and `small`.
fn file_root(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    File::create(dir.0.join("big"))
        .and_then(|f| f.set_len(64 * MIB))
        .expect("sparse file");
    fs::write(dir.0.join("small"), b"hello file\n").unwrap();
    dir
}

fn file_server(dir: &TempDir) -> ChildServer {
    let root = dir.0.to_str().unwrap();
    ChildServer::start(&[
        "--protocol",
        "file",
        "--root",
        root,
        "--max-outbound",
        MAX_OUTBOUND_FLAG,
    ])
}

/// What the file server may hold for `connections` connections.
fn file_bound(connections: u64) -> u64 {
    let per_connection = MAX_OUTBOUND // output owed to the peer: the cap
        + 2 * CHUNK as u64 // a transfer holds about two chunks of the file
        // the replies to one read, produced before any is written: one `ERR invalid path`
        // per byte for a read of empty lines
        + READ_SIZE * INVALID_PATH.len() as u64
        + MAX_QUEUED_BYTES as u64 // request lines queued behind a transfer
        + MAX_REQUEST_LINE as u64 + 1; // an unfinished request line and its `\r`
    connections * per_connection + SLACK
}

/// A client asks for a 64 MiB file, never reads it, and sends 100 MiB of empty lines
/// behind it: the requests queued behind the transfer are capped (today each costs a
/// queue entry that nothing counts: +1.6 GiB), so the server stops reading and memory
/// stays within the caps; a canary still gets its file.
#[test]
fn file_requests_queued_behind_an_unread_download() {
    const TOTAL: u64 = 100 * MIB;
    let mut report = Report::new("file, lines behind an unread download");
    let dir = file_root("hostile-file-unread");
    let mut server = file_server(&dir);
    let mut canary = canary(server.addr);
    let small = b"OK 11\nhello file\n";
    exchange(&mut canary, b"small\n", small).expect("warm-up");
    let mut attacker = connect(server.addr);
    attacker.write_all(b"big\n").unwrap();
    // The transfer has started (its first chunks are in our receive buffer, unread).
    wait_for_data(&attacker).expect("the download starts");
    let baseline = server.rss_kib();
    // The attacker and the canary.
    let bound = file_bound(2);
    let watch = watch(&server, baseline, bound);

    let flood = Flood::start(
        attacker,
        vec![b'\n'; READ_SIZE as usize],
        TOTAL,
        STALL,
        watch.over.clone(),
    );
    report.canary(
        "during",
        timed_while(|| flood.over(), || exchange(&mut canary, b"small\n", small)),
    );
    let (attacker, sent, end) = flood.join();
    report.canary("after", timed(|| exchange(&mut canary, b"small\n", small)));
    report.memory(baseline, watch.finish(), bound);
    report.note(describe_flood(sent, TOTAL, &end));
    report.check(end != FloodEnd::Sent, || {
        "the server read all 100 MiB of requests queued behind a download nobody reads".into()
    });
    drop(attacker);
    report.finish(&mut server);
}

/// A client sends 50 MiB of empty lines and reads the answers as fast as it can: it
/// receives exactly one `ERR invalid path` per line, while the server's memory stays
/// within the caps (requests read faster than they are answered must not pile up: today
/// +800 MiB) and a canary is answered.
#[test]
fn file_empty_lines_answered_as_fast_as_read() {
    // SCALE: 50 Mi requests and 850 MiB of answers, each byte checked, are seconds of
    // work in release and far too many in a debug build. The bound does not depend on
    // the volume, and 4 Mi requests are still 64 MiB of queue entries today.
    const TOTAL: u64 = if cfg!(debug_assertions) { 4 } else { 50 } * MIB;
    let mut report = Report::new("file, empty lines read back");
    let dir = file_root("hostile-file-reader");
    let mut server = file_server(&dir);
    let mut canary = canary(server.addr);
    let small = b"OK 11\nhello file\n";
    exchange(&mut canary, b"small\n", small).expect("warm-up");
    let baseline = server.rss_kib();
    let bound = file_bound(2);
    let watch = watch(&server, baseline, bound);

    let attacker = connect(server.addr);
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let reader = read_repeated(
        attacker.try_clone().unwrap(),
        INVALID_PATH,
        expected.clone(),
    );
    let flood = Flood::start(
        attacker,
        vec![b'\n'; READ_SIZE as usize],
        TOTAL,
        STALL,
        watch.over.clone(),
    );
    report.canary(
        "during",
        timed_while(|| flood.over(), || exchange(&mut canary, b"small\n", small)),
    );
    let (attacker, sent, end) = flood.join();
    // One answer per line sent. Unless the memory bound failed already: then today's
    // server still owes millions of queued answers, which it sends at 16 per turn of its
    // loop (some 20 s); counting them would prove nothing more.
    let count_answers = end != FloodEnd::Stopped;
    let owed = if count_answers { sent } else { 0 };
    expected.store(owed * INVALID_PATH.len() as u64, Ordering::Relaxed);
    let received = reader.join().expect("reader thread");
    report.canary("after", timed(|| exchange(&mut canary, b"small\n", small)));
    report.memory(baseline, watch.finish(), bound);
    report.note(describe_flood(sent, TOTAL, &end));
    // `Stopped` is the memory bound failing, reported above.
    report.check(matches!(end, FloodEnd::Sent | FloodEnd::Stopped), || {
        format!("the flood did not complete: {end:?} (the server stopped reading a client that reads every answer)")
    });
    match received {
        _ if !count_answers => report.note("answers not counted: the memory bound failed"),
        Ok(bytes) => report.note(format_args!(
            "received {bytes} bytes: {} answers, all `ERR invalid path`",
            bytes / INVALID_PATH.len() as u64
        )),
        Err(e) => report.check(false, || format!("answers: {e}")),
    }
    drop(attacker);
    report.finish(&mut server);
}

/// Reads `unit` repeated until `expected` bytes (set when known) have arrived, checking
/// every byte; returns how many arrived. Gives up after `CANARY_TIMEOUT` without a byte.
fn read_repeated(
    mut stream: TcpStream,
    unit: &'static [u8],
    expected: Arc<AtomicU64>,
) -> JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        // The unit repeated to a buffer's length, so each check is one slice comparison.
        let pattern = unit.repeat((64 * 1024) / unit.len() + 1);
        let mut buf = vec![0; 64 * 1024];
        let mut received = 0u64;
        // Short, so that a target set while this waits is seen.
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut last_byte = Instant::now();
        while received < expected.load(Ordering::Relaxed) {
            let n = match stream.read(&mut buf) {
                Ok(0) => return Err(format!("EOF after {received} bytes")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && last_byte.elapsed() < CANARY_TIMEOUT =>
                {
                    continue
                }
                Err(e) => return Err(format!("{e} after {received} bytes")),
            };
            last_byte = Instant::now();
            let at = (received % unit.len() as u64) as usize;
            if buf[..n] != pattern[at..at + n] {
                return Err(format!("wrong bytes at offset {received}"));
            }
            received += n as u64;
        }
        let expected = expected.load(Ordering::Relaxed);
        if received != expected {
            return Err(format!("{received} bytes, expected {expected}"));
        }
        Ok(received)
    })
}

// ---- chat ----

/// A chat member: a line reader and a writer on one socket.
struct Member {
    /// Its address, as the server names it in `[HOST:PORT] ` and notices.
    name: String,
    /// Its part in the case and its address ("B (127.0.0.1:4000)"), for messages.
    label: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Member {
    fn join(addr: SocketAddr, who: &str) -> Member {
        Member::from_stream(connect(addr), who)
    }

    fn from_stream(stream: TcpStream, who: &str) -> Member {
        stream.set_read_timeout(Some(CANARY_TIMEOUT)).unwrap();
        let name = stream.local_addr().unwrap().to_string();
        Member {
            label: format!("{who} ({name})"),
            name,
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, text: &str) -> Result<(), String> {
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| format!("{} sending: {e}", self.label))
    }

    /// Reads lines until `want`; join and leave notices are skipped, copies of `flood`
    /// counted, anything else is an error.
    fn wait_for(&mut self, want: &str, flood: &[u8]) -> Result<usize, String> {
        let mut line = Vec::new();
        let mut flood_lines = 0;
        loop {
            line.clear();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => return Err(format!("{}: EOF before {want:?}", self.label)),
                Ok(_) => {}
                Err(e) => return Err(format!("{}: {e} before {want:?}", self.label)),
            }
            if line == want.as_bytes() {
                return Ok(flood_lines);
            } else if line == flood {
                flood_lines += 1;
            } else if !line.starts_with(b"* ") {
                return Err(format!(
                    "{}: unexpected {:?} before {want:?}",
                    self.label,
                    String::from_utf8_lossy(&line)
                ));
            }
        }
    }
}

/// What a member heard while reading as fast as it could, on a thread.
struct Heard {
    label: String,
    /// Copies of the flood's line, counted up to the number sent.
    flood_lines: usize,
    /// When the canary's line arrived.
    marker_at: Option<Instant>,
    /// Lines that are neither the flood, the marker nor a notice (the first few).
    stray: Vec<String>,
    /// How reading ended early: EOF or an error, if it did.
    cut: Option<String>,
}

/// Reads `member`'s lines on a thread until `expected` copies of `flood` and (if given)
/// `marker` have arrived, or the connection ends; gives the member back (with what its
/// reader buffered past the last line counted).
fn listen(
    mut member: Member,
    flood: Vec<u8>,
    expected: usize,
    marker: Option<Vec<u8>>,
) -> JoinHandle<(Heard, Member)> {
    std::thread::spawn(move || {
        let (mut flood_lines, mut marker_at, mut stray, mut cut) = (0, None, Vec::new(), None);
        let mut line = Vec::new();
        while flood_lines < expected || (marker.is_some() && marker_at.is_none()) {
            line.clear();
            match member.reader.read_until(b'\n', &mut line) {
                Ok(0) => {
                    cut = Some("EOF".to_string());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    cut = Some(e.to_string());
                    break;
                }
            }
            if line == flood {
                flood_lines += 1;
            } else if marker.as_ref() == Some(&line) {
                marker_at = Some(Instant::now());
            } else if !line.starts_with(b"* ") && stray.len() < 5 {
                stray.push(String::from_utf8_lossy(&line).into_owned());
            }
        }
        let heard = Heard {
            label: member.label.clone(),
            flood_lines,
            marker_at,
            stray,
            cut,
        };
        (heard, member)
    })
}

/// A member whose receive buffer is small, so it cannot hide much of the flood in it.
fn small_window_member(addr: SocketAddr, who: &str) -> Member {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    Member::from_stream(socket.into(), who)
}

/// Member A sends `writes` writes of 65,536 empty lines; B, C, D and the canary K read as
/// fast as they can; with `non_reader`, E also joins and never reads.
fn chat_flood(case: &'static str, writes: usize, non_reader: bool) {
    const LINES_PER_WRITE: usize = 64 * 1024;
    let mut report = Report::new(case);
    let mut args = vec!["--protocol", "chat", "--max-outbound", MAX_OUTBOUND_FLAG];
    if non_reader {
        // A member that reads nothing is cut at the latest when it has read nothing for
        // this long, whatever else the server does about it, so the case stays short.
        args.extend(["--write-timeout", "2"]);
    }
    let mut server = ChildServer::start(&args);
    let addr = server.addr;
    let mut a = Member::join(addr, "A");
    let mut readers: Vec<Member> = ["B", "C", "D"]
        .into_iter()
        .map(|who| Member::join(addr, who))
        .collect();
    let mut k = Member::join(addr, "K");
    let e = non_reader.then(|| small_window_member(addr, "E"));
    // The server accepts in order: once A has seen the last member join, all are in.
    let last = e.as_ref().unwrap_or(&k).name.clone();
    let flood_line = format!("[{}] \n", a.name).into_bytes();
    a.wait_for(&format!("* {last} joined\n"), &flood_line)
        .expect("everyone joined");
    // Warm-up: a line from K reaches B, C and D.
    k.send("warm-up\n").unwrap();
    let warm = format!("[{}] warm-up\n", k.name);
    for member in &mut readers {
        member.wait_for(&warm, &flood_line).expect("warm-up");
    }
    let baseline = server.rss_kib();
    let members = 5 + u64::from(non_reader);
    // Per member: the broadcast queued for it, at most the cap (chunks are shared, so
    // this counts them once per member: an upper bound), plus an unfinished line.
    let bound = members * (MAX_OUTBOUND + DEFAULT_MAX_LINE as u64 + 1) + SLACK;
    let watch = watch(&server, baseline, bound);

    let expected = writes * LINES_PER_WRITE;
    let marker = format!("[{}] during\n", k.name).into_bytes();
    let listeners: Vec<_> = readers
        .into_iter()
        .map(|m| listen(m, flood_line.clone(), expected, Some(marker.clone())))
        .collect();
    let k_reader = Member {
        name: k.name.clone(),
        label: k.label.clone(),
        reader: BufReader::new(k.writer.try_clone().unwrap()),
        writer: k.writer.try_clone().unwrap(),
    };
    let k_listener = listen(k_reader, flood_line.clone(), expected, None);
    let total = (writes * LINES_PER_WRITE) as u64;
    // Never given up on for a stall: a server may hold A back while the others catch up.
    let flood = Flood::start(
        a.writer.try_clone().unwrap(),
        vec![b'\n'; LINES_PER_WRITE],
        total,
        IO_TIMEOUT,
        watch.over.clone(),
    );
    flood.under_way();
    let during_sent = Instant::now();
    let during_sent_ok = k.send("during\n");
    let (_, sent, end) = flood.join();
    let (heard, mut readers): (Vec<Heard>, Vec<Member>) = listeners
        .into_iter()
        .map(|l| l.join().expect("listener thread"))
        .unzip();
    let (k_heard, _) = k_listener.join().expect("listener thread");

    report.canary(
        "during",
        during_sent_ok.and_then(|()| {
            heard
                .iter()
                .map(|h| {
                    h.marker_at
                        .map(|at| at - during_sent)
                        .ok_or_else(|| format!("{} never heard K's line", h.label))
                })
                .try_fold(Duration::ZERO, |max, latency| Ok(latency?.max(max)))
                .map(|slowest| Latencies { slowest, count: 1 })
        }),
    );
    let after = format!("[{}] after\n", k.name);
    report.canary(
        "after",
        timed(|| {
            k.send("after\n")?;
            for member in &mut readers {
                let extra = member.wait_for(&after, &flood_line)?;
                if extra > 0 {
                    return Err(format!(
                        "{} received {extra} more flood lines than were sent",
                        member.label
                    ));
                }
            }
            Ok(())
        }),
    );
    let e_end = e.map(|mut e| {
        let mut bytes = 0;
        let mut buf = [0; 64 * 1024];
        loop {
            match e.reader.read(&mut buf) {
                Ok(0) => break Err(format!("a clean EOF after {bytes} bytes")),
                Ok(n) => bytes += n,
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break Ok(bytes),
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break Err(format!(
                        "no reset: still connected after {bytes} bytes, then nothing for \
                         {CANARY_TIMEOUT:?}"
                    ))
                }
                Err(err) => break Err(format!("{err} after {bytes} bytes")),
            }
        }
    });
    report.memory(baseline, watch.finish(), bound);
    report.note(describe_flood(sent, total, &end));
    report.check(end == FloodEnd::Sent, || {
        format!("A could not send its lines: {end:?}")
    });
    for h in heard.iter().chain([&k_heard]) {
        report.note(format_args!(
            "{} heard {} of {expected} lines{}",
            h.label,
            h.flood_lines,
            h.cut
                .as_ref()
                .map_or(String::new(), |c| format!(", then {c}"))
        ));
        report.check(h.flood_lines == expected && h.cut.is_none(), || {
            format!(
                "{} was cut ({}) after {} of {expected} lines",
                h.label,
                h.cut.as_deref().unwrap_or("?"),
                h.flood_lines
            )
        });
        report.check(h.stray.is_empty(), || {
            format!("{} received {:?}", h.label, h.stray)
        });
    }
    if let Some(e_end) = e_end {
        match e_end {
            Ok(bytes) => report.note(format_args!("E read {bytes} bytes, then a reset")),
            Err(how) => report.check(false, || {
                format!("E, which never read, should have been cut with a reset; it saw {how}")
            }),
        }
    }
    report.finish(&mut server);
}

/// One 64 KiB write of empty lines becomes 65,536 lines of `[HOST:PORT] ` for each of
/// three members (over a MiB each, more than `--max-outbound` at once): members who read
/// as fast as they can are not cut as slow consumers and each gets every line, and the
/// canary's line is delivered promptly.
#[test]
fn chat_one_write_of_empty_lines() {
    chat_flood("chat, one write of empty lines", 1, false);
}

/// Sixteen such writes back to back (a million lines, some 19 MiB per member): still
/// nobody who reads is cut, each gets every line, and memory stays within the caps.
#[test]
fn chat_sixteen_writes_of_empty_lines() {
    chat_flood("chat, sixteen writes of empty lines", 16, false);
}

/// The same flood with a member E that never reads: E is cut, with a reset rather than
/// a graceful close (the spec for a connection the server cuts off), and the members who
/// read are not cut and get every line.
#[test]
fn chat_member_that_never_reads_is_reset_and_only_it() {
    chat_flood("chat, one member never reading", 16, true);
}

// ---- http ----

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const HEAD: &[u8] = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n";

/// A HEAD request on the canary: the status line and the page's Content-Length.
fn http_head(stream: &mut TcpStream, content_length: usize) -> Result<(), String> {
    stream
        .write_all(HEAD)
        .map_err(|e| format!("sending: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err("EOF in the response".into()),
            Err(e) => return Err(format!("waiting for the response: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let length = format!("\r\nContent-Length: {content_length}\r\n");
    if !head.starts_with("HTTP/1.1 200 OK\r\n") || !head.contains(&length) {
        return Err(format!("unexpected response {head:?}"));
    }
    Ok(())
}

/// Twenty clients each pipeline two GETs for a 16 MiB page and never read: the page is
/// held once, not copied into every response (today 40 copies, +613 MiB), and a canary's
/// HEAD is answered while they wait and after they leave.
#[test]
fn http_big_page_asked_twice_by_clients_that_never_read() {
    const CLIENTS: u64 = 20;
    let mut report = Report::new("http, 16 MiB page, clients never reading");
    let dir = TempDir::new("hostile-http-body");
    let body = dir.0.join("body");
    fs::write(&body, vec![b'x'; MAX_BODY_BYTES]).unwrap();
    let mut server = ChildServer::start(&[
        "--protocol",
        "http",
        "--body",
        body.to_str().unwrap(),
        "--max-outbound",
        MAX_OUTBOUND_FLAG,
    ]);
    let mut canary = canary(server.addr);
    http_head(&mut canary, MAX_BODY_BYTES).expect("warm-up");
    let baseline = server.rss_kib();
    // The page, read once at start (it is in the baseline already; counted once more for
    // a server that copies it once, e.g. into a reply buffer it keeps), plus per
    // connection (the clients and the canary) what it is owed, at most the cap, and an
    // unfinished header section, at most --max-header.
    let bound =
        MAX_BODY_BYTES as u64 + (CLIENTS + 1) * (MAX_OUTBOUND + DEFAULT_MAX_HEADER as u64) + SLACK;
    let watch = watch(&server, baseline, bound);

    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut client = connect(server.addr);
            client.write_all(&[GET, GET].concat()).unwrap();
            client
        })
        .collect();
    // Every client's requests were taken up: the start of its answer is waiting, unread.
    for client in &clients {
        if let Err(e) = wait_for_data(client) {
            report.check(false, || format!("a client got no answer: {e}"));
        }
    }
    report.canary("during", timed(|| http_head(&mut canary, MAX_BODY_BYTES)));
    drop(clients);
    report.canary("after", timed(|| http_head(&mut canary, MAX_BODY_BYTES)));
    report.memory(baseline, watch.finish(), bound);
    report.finish(&mut server);
}

/// One client pipelines tiny GETs, 64 KiB of them per write, 8 MiB in all, and never
/// reads the answers (five times larger than the requests): the server stops reading it
/// near `--max-outbound`, and a canary is answered.
#[test]
fn http_tiny_gets_pipelined_never_read() {
    const TOTAL: u64 = 8 * MIB;
    let mut report = Report::new("http, tiny GETs pipelined, never read");
    let mut server =
        ChildServer::start(&["--protocol", "http", "--max-outbound", MAX_OUTBOUND_FLAG]);
    let mut canary = canary(server.addr);
    let page_len = multiconn::protocol::http::DEFAULT_BODY.len();
    http_head(&mut canary, page_len).expect("warm-up");
    let baseline = server.rss_kib();
    // Per connection (the attacker and the canary): what it is owed, at most the cap;
    // the pipeline kept unread at a pause, one read; an unfinished header section, at
    // most --max-header.
    let bound = 2 * (MAX_OUTBOUND + READ_CHUNK as u64 + DEFAULT_MAX_HEADER as u64) + SLACK;
    let watch = watch(&server, baseline, bound);

    let pattern = GET.repeat(READ_SIZE as usize / GET.len());
    let flood = Flood::start(
        connect(server.addr),
        pattern,
        TOTAL,
        STALL,
        watch.over.clone(),
    );
    report.canary(
        "during",
        timed_while(|| flood.over(), || http_head(&mut canary, page_len)),
    );
    let (attacker, sent, end) = flood.join();
    report.canary("after", timed(|| http_head(&mut canary, page_len)));
    report.memory(baseline, watch.finish(), bound);
    report.note(describe_flood(sent, TOTAL, &end));
    report.check(end != FloodEnd::Sent, || {
        "the server read 8 MiB of requests from a client that reads no answer".into()
    });
    drop(attacker);
    report.finish(&mut server);
}

// ---- app ----

/// A frame as the protocol defines it: the 2-byte big-endian length of the JSON header,
/// the header, the content.
fn app_frame(content_type: &str, encoding: &str, content: &[u8]) -> Vec<u8> {
    let header = format!(
        "{{\"byteorder\": \"{}\", \"content-type\": \"{content_type}\", \
         \"content-encoding\": \"{encoding}\", \"content-length\": {}}}",
        ByteOrder::NATIVE.as_str(),
        content.len()
    );
    let mut frame = (header.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(content);
    frame
}

fn app_search(query: &str) -> Vec<u8> {
    let content = format!("{{\"action\": \"search\", \"value\": \"{query}\"}}");
    app_frame("text/json", "utf-8", content.as_bytes())
}

fn app_result(answer: &str) -> Vec<u8> {
    let content = format!("{{\"result\": \"{answer}\"}}");
    app_frame("text/json", "utf-8", content.as_bytes())
}

const MORPHEUS: &str = "Follow the white rabbit. \u{1f430}";

fn app_server(max_content_length: u64) -> ChildServer {
    ChildServer::start(&[
        "--protocol",
        "app",
        "--max-content-length",
        &max_content_length.to_string(),
        "--max-outbound",
        MAX_OUTBOUND_FLAG,
    ])
}

/// The canary's exchange: a search and its answer.
fn app_canary(stream: &mut TcpStream) -> Result<(), String> {
    exchange(stream, &app_search("morpheus"), &app_result(MORPHEUS))
}

/// One request of `--max-content-length` (16 MiB) whose JSON holds millions of zeros in
/// a field nobody asked for: decoding it costs at most about two copies of it (today a
/// tree of 32-byte values, +272 MiB), the request gets its answer, and a canary's search
/// sent while it is being sent and parsed is answered.
#[test]
fn app_json_of_millions_of_zeros() {
    // SCALE: a debug server decodes this JSON about 6 times slower (2 MiB in 0.45 s,
    // against 16 MiB in 0.56 s in release): 16 MiB would keep it some 3.6 s, and the
    // canary queued behind it would fail for the build, not the server. The bound scales
    // with the request, which is as large as the cap in both builds.
    const MAX_CONTENT_LENGTH: u64 = if cfg!(debug_assertions) { 2 } else { 16 } * MIB;
    let mut report = Report::new("app, JSON of millions of zeros");
    let mut server = app_server(MAX_CONTENT_LENGTH);
    let mut canary = canary(server.addr);
    app_canary(&mut canary).expect("warm-up");
    let mut attacker = connect(server.addr);
    app_canary(&mut attacker).expect("warm-up");
    let baseline = server.rss_kib();
    // The frame, buffered whole (the protocol answers complete frames only), plus one
    // copy of its size while it is decoded; per connection (the attacker and the
    // canary) what it is owed, at most the cap.
    let frame_max = (PREFIX_LEN + MAX_HEADER_LEN) as u64 + MAX_CONTENT_LENGTH;
    let bound = 2 * frame_max + 2 * MAX_OUTBOUND + SLACK;
    let watch = watch(&server, baseline, bound);

    let head = b"{\"action\": \"search\", \"value\": \"morpheus\", \"junk\": [0";
    let tail = b"]}";
    let zeros = (MAX_CONTENT_LENGTH as usize - head.len() - tail.len()) / 2;
    let mut content = head.to_vec();
    content.extend_from_slice(&b",0".repeat(zeros));
    content.extend_from_slice(tail);
    // Spaces up to exactly the cap: JSON allows them, and the cap is what is tested.
    content.resize(MAX_CONTENT_LENGTH as usize, b' ');
    let frame = app_frame("text/json", "utf-8", &content);
    report.note(format_args!(
        "one request of {} bytes, {} zeros",
        frame.len(),
        zeros + 1
    ));
    // The attacker sends its request and waits for the answer on a thread, while the
    // canary's searches go on: during the sending, the reading and the decoding.
    let big = std::thread::spawn(move || -> Result<(Duration, Duration), String> {
        let start = Instant::now();
        attacker
            .write_all(&frame)
            .map_err(|e| format!("sending: {e}"))?;
        let sent = start.elapsed();
        let want = app_result(MORPHEUS);
        let mut got = vec![0; want.len()];
        attacker
            .read_exact(&mut got)
            .map_err(|e| format!("no answer: {e}"))?;
        if got != want {
            return Err(format!("answer {:?}", String::from_utf8_lossy(&got)));
        }
        Ok((sent, start.elapsed()))
    });
    report.canary(
        "during",
        timed_while(|| big.is_finished(), || app_canary(&mut canary)),
    );
    let answered = big.join().expect("attacker thread");
    report.canary("after", timed(|| app_canary(&mut canary)));
    report.memory(baseline, watch.finish(), bound);
    match answered {
        Ok((sent, answered)) => report.note(format_args!(
            "the big request was written in {sent:.1?} and answered after {answered:.1?}"
        )),
        Err(e) => report.check(false, || format!("the big request: {e}")),
    }
    report.finish(&mut server);
}

/// Binary requests with no content, pipelined 50 MiB without reading a single answer
/// (each answer is about twice its request): the server stops reading near
/// `--max-outbound`, and a canary is answered.
#[test]
fn app_tiny_binary_requests_never_read() {
    const TOTAL: u64 = 50 * MIB;
    let mut report = Report::new("app, tiny binary requests, never read");
    let mut server = app_server(16 * MIB);
    let mut canary = canary(server.addr);
    app_canary(&mut canary).expect("warm-up");
    // The shortest header the protocol accepts: the four keys, no spaces.
    let header =
        br#"{"byteorder":"little","content-type":"b","content-encoding":"b","content-length":0}"#;
    let mut request = (header.len() as u16).to_be_bytes().to_vec();
    request.extend_from_slice(header);
    let answer = app_frame(
        "binary/custom-server-binary-type",
        "binary",
        b"First 10 bytes of request: ",
    );
    exchange(&mut canary, &request, &answer).expect("a tiny request is answered");
    let amplification = answer.len().div_ceil(request.len()) as u64;
    let baseline = server.rss_kib();
    // Per connection (the attacker and the canary): what it is owed, at most the cap,
    // plus the answers to one read, produced before any is written.
    let bound = 2 * (MAX_OUTBOUND + READ_SIZE * amplification) + SLACK;
    let watch = watch(&server, baseline, bound);

    let pattern = request.repeat(READ_SIZE as usize / request.len());
    let flood = Flood::start(
        connect(server.addr),
        pattern,
        TOTAL,
        STALL,
        watch.over.clone(),
    );
    report.canary(
        "during",
        timed_while(|| flood.over(), || app_canary(&mut canary)),
    );
    let (attacker, sent, end) = flood.join();
    report.canary("after", timed(|| app_canary(&mut canary)));
    report.memory(baseline, watch.finish(), bound);
    report.note(format_args!(
        "{} bytes per request, {} per answer",
        request.len(),
        answer.len()
    ));
    report.note(describe_flood(sent, TOTAL, &end));
    report.check(end != FloodEnd::Sent, || {
        "the server read 50 MiB of requests from a client that reads no answer".into()
    });
    drop(attacker);
    report.finish(&mut server);
}

// ---- flags ----

/// Starts the server with `flag value` and expects a startup refusal: one `error:` line
/// naming the flag, first on stderr, and exit code 2 (a usage error), within a deadline
/// (an error is immediate; a server still running after it is serving, or spinning).
fn refused_at_startup(flag: &str, value: &str) {
    const DEADLINE: Duration = Duration::from_secs(5);
    let mut child = spawn_bin("multiconn-server", &[flag, value, "127.0.0.1", "0"]);
    // Read on a thread: a server that logs in a loop must not block on a full pipe.
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.len() < 20 {
                lines.push(line);
            }
        }
        lines
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let lines = log.join().unwrap();
    eprintln!("{flag} {value}: exit {status:?}, stderr {lines:#?}");
    let status = status.unwrap_or_else(|| {
        panic!("{flag} {value}: still running after {DEADLINE:?}; it logged {lines:#?}")
    });
    let errors: Vec<_> = lines.iter().filter(|l| l.starts_with("error:")).collect();
    assert!(
        errors.len() == 1 && lines[0].starts_with("error:") && errors[0].contains(flag),
        "{flag} {value}: expected one `error:` line naming the flag, first; got {lines:#?}"
    );
    assert_eq!(status.code(), Some(2), "{flag} {value}: {lines:#?}");
}

/// `--max-outbound 0` leaves no room to read anything (today the loop spins at 100% CPU
/// once a client connects): refused at startup.
#[test]
fn max_outbound_zero_is_refused() {
    refused_at_startup("--max-outbound", "0");
}

/// `--stats 0` would log a statistics line on every turn of the loop, which then never
/// sleeps: refused at startup.
#[test]
fn stats_zero_is_refused() {
    refused_at_startup("--stats", "0");
}
