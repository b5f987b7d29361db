//! Helpers shared by the integration tests: an in-process server on port 0, clients with
//! time limits, and the paths of the built binaries.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use multiconn::protocol::Protocol;
use multiconn::{ListenAddr, Server, ServerConfig, ServerHandle, Stats};

/// Every blocking socket operation in a test gives up after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A server running on its own thread, on a port the OS chose.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    thread: Option<JoinHandle<std::io::Result<Stats>>>,
}

impl TestServer {
    /// Starts `protocol` on 127.0.0.1:0, letting `tweak` adjust the configuration first.
    pub fn start<P>(protocol: P, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer
    where
        P: Protocol + Send + 'static,
        P::Session: Send,
    {
        let mut config = ServerConfig::new(ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()));
        tweak(&mut config);
        let server = Server::bind(config, protocol).expect("bind 127.0.0.1:0");
        let (addr, handle, thread) = server.spawn().unwrap();
        let ListenAddr::Tcp(addr) = addr else {
            panic!("expected a TCP address")
        };
        TestServer {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    /// Graceful shutdown; returns the loop's counters.
    pub fn stop(mut self) -> Stats {
        self.handle.shutdown();
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("server thread panicked")
            .expect("server loop failed")
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.stop_now();
            let _ = thread.join();
        }
    }
}

/// A blocking client socket whose reads and writes time out instead of hanging a test.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads exactly `n` bytes.
pub fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).expect("read_exact");
    buf
}

/// Reads until EOF.
pub fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).expect("read_to_end");
    buf
}

pub fn write_all(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("write_all");
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be reproduced.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Makes the child that `command` starts run under `limit` (soft and hard) of `resource`.
pub fn limit_child(command: &mut Command, resource: libc::__rlimit_resource_t, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A built binary of this package, started with piped stdout/stderr.
pub fn spawn_bin(name: &str, args: &[&str]) -> Child {
    let path = match name {
        "multiconn-server" => env!("CARGO_BIN_EXE_multiconn-server"),
        "multiconn-client" => env!("CARGO_BIN_EXE_multiconn-client"),
        "app-client" => env!("CARGO_BIN_EXE_app-client"),
        other => panic!("unknown binary {other}"),
    };
    Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn binary")
}

/// A child process whose stderr lines are collected on a thread, so a test can wait for a
/// line (an event) with a time limit instead of sleeping.
pub struct Transcript {
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Transcript {
    pub fn of(stream: impl Read + Send + 'static) -> Transcript {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Transcript {
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (up to `IO_TIMEOUT`) for a line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line containing {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// Collects every remaining line until the stream closes.
    pub fn rest(&mut self) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(IO_TIMEOUT) {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// A server process that is killed when dropped, so a failing test leaves nothing running.
pub struct ServerChild(pub Child);

impl std::ops::Deref for ServerChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServerChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `multiconn-server` on 127.0.0.1 port 0 with `extra` flags; returns the child,
/// its stderr transcript, and the address it reported in "Listening on ...".
pub fn start_server_bin(extra: &[&str]) -> (ServerChild, Transcript, SocketAddr) {
    let mut args = vec!["127.0.0.1", "0"];
    args.extend_from_slice(extra);
    let mut child = ServerChild(spawn_bin("multiconn-server", &args));
    let mut transcript = Transcript::of(child.stderr.take().unwrap());
    let line = transcript.wait_for("Listening on ");
    let addr = line
        .trim_start_matches("Listening on ")
        .trim()
        .parse()
        .expect("address");
    (child, transcript, addr)
}

/// Sends `signal` to a child process.
pub fn kill(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a pid we own; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0, "kill failed");
}

/// Waits for a child to exit, at most `IO_TIMEOUT`; kills it and fails the test otherwise.
pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl TestServer {
    /// Waits (up to `IO_TIMEOUT`) until the server's counters satisfy `done`; returns them.
    pub fn wait_for_stats(&self, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        loop {
            let stats = self.handle.stats(IO_TIMEOUT).expect("server answers");
            if done(&stats) {
                return stats;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never saw {what}: {stats:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A directory under the system temp dir, unique to this process and `name`, removed
/// when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("multiconn-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a finished binary printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `multiconn-client` with `args` to the end; kills it and fails if it takes longer
/// than the test timeout (so a hang is a failure, not a stuck test run).
pub fn client(args: &[&str]) -> Output {
    let started = Instant::now();
    let mut child = spawn_bin("multiconn-client", args);
    let stdout = read_all_in_background(child.stdout.take().unwrap());
    let (stderr_tx, stderr_rx) = mpsc::channel();
    let mut stderr_pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        let _ = stderr_tx.send(text);
    });
    // stderr reaches EOF when the process exits.
    let stderr = match stderr_rx.recv_timeout(IO_TIMEOUT) {
        Ok(text) => text,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("multiconn-client {args:?} did not finish within {IO_TIMEOUT:?}");
        }
    };
    let status = child.wait().expect("wait");
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr,
        elapsed: started.elapsed(),
    }
}

pub fn read_all_in_background(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", output.stdout))
}

/// Reads HTTP request heads from `stream` (bodies are not expected) and hands each to
/// `answer`, which writes the response; stops when it returns false, the peer closes,
/// or a write fails.
pub fn serve_http_requests(
    stream: &mut TcpStream,
    mut answer: impl FnMut(&mut TcpStream, &[u8]) -> std::io::Result<bool>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let request: Vec<u8> = buf.drain(..end + 4).collect();
            if !matches!(answer(stream, &request), Ok(true)) {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
