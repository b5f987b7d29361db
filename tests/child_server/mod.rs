//! The real `multiconn-server` binary as a child process: started on 127.0.0.1:0 (its
//! address read from its "Listening on" line), its resident memory readable from /proc,
//! its log kept to check that it never panicked, and killed when dropped so no test leaves
//! a server behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::{spawn_bin, IO_TIMEOUT};

/// Log lines kept after the address: enough to show what happened, bounded so a chatty
/// server cannot fill the test's memory. Lines that report a panic are always kept.
const KEPT_LOG_LINES: usize = 1000;

pub struct ChildServer {
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `multiconn-server ARGS 127.0.0.1 0` and waits (up to the I/O timeout) for it
    /// to log its address, so ARGS must leave info logging on.
    pub fn start(args: &[&str]) -> ChildServer {
        let mut all = args.to_vec();
        all.extend(["127.0.0.1", "0"]);
        let mut child = spawn_bin("multiconn-server", &all);
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        // A thread reads the log, so the server never blocks on a full pipe and this
        // function can give up waiting instead of hanging.
        let (lines, log) = mpsc::channel();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&kept);
        std::thread::spawn(move || {
            let mut address_sent = false;
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if !address_sent {
                    address_sent = line.starts_with("Listening on ");
                    // Nobody listens once the address is known.
                    let _ = lines.send(line);
                    continue;
                }
                let mut keep = keep.lock().unwrap();
                if keep.len() < KEPT_LOG_LINES || line.contains("panicked") {
                    keep.push(line);
                }
            }
        });
        let addr = loop {
            match log.recv_timeout(IO_TIMEOUT) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("Listening on ") {
                        break addr.parse().expect("listening address");
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait().expect("wait for server");
                    panic!("server did not report its address ({e}); it exited with {status}");
                }
            }
        };
        ChildServer {
            addr,
            child,
            log: kept,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).expect("VmRSS of the server")
    }

    /// `Err` says how the server is not well: it exited, or it logged a panic (a panic on
    /// a thread other than main would leave the process running).
    pub fn check_alive(&mut self) -> Result<(), String> {
        let log = self.log.lock().unwrap().clone();
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            let tail = &log[log.len().saturating_sub(10)..];
            return Err(format!(
                "the server exited ({status}); its last lines: {tail:#?}"
            ));
        }
        match log.iter().find(|line| line.contains("panicked")) {
            Some(line) => Err(format!("the server panicked: {line}")),
            None => Ok(()),
        }
    }

    /// The log lines after the address (up to `KEPT_LOG_LINES`).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to `timeout` until at least `count` log lines contain `needle`.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen = self.log().iter().filter(|l| l.contains(needle)).count();
            if seen >= count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{seen} of {count} log lines with {needle:?} in {timeout:?}; log: {:#?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGTERM (a graceful shutdown) and waits for it.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for server")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of process `pid` in KiB; `None` once it has exited (a zombie has no VmRSS line).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// How often `RssWatch` samples: short, so a buffer that lives for a few milliseconds is
/// still seen; reading /proc/PID/status costs tens of microseconds.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// A thread sampling a process's VmRSS until stopped, keeping the peak. Once the peak
/// passes a ceiling it raises `over`, so an attack can stop early: the bound has already
/// failed, and going on would only spend the machine's memory and the test's time.
pub struct RssWatch {
    pub over: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    thread: JoinHandle<(u64, usize)>,
}

impl RssWatch {
    pub fn start(pid: u32, ceiling_kib: u64) -> RssWatch {
        let over = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (raise, stop) = (Arc::clone(&over), Arc::clone(&done));
        // The first sample is taken before this returns and the last after `finish` is
        // called, so even an attack shorter than the sampling period is covered.
        let first = rss_kib(pid).unwrap_or(0);
        let thread = std::thread::spawn(move || {
            let (mut peak, mut samples) = (first, 1);
            loop {
                let finishing = stop.load(Ordering::Relaxed);
                let Some(rss) = rss_kib(pid) else { break };
                peak = rss.max(peak);
                samples += 1;
                if peak > ceiling_kib {
                    raise.store(true, Ordering::Relaxed);
                }
                if finishing {
                    break;
                }
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
            (peak, samples)
        });
        RssWatch { over, done, thread }
    }

    /// Stops sampling; returns the peak VmRSS in KiB and the number of samples.
    pub fn finish(self) -> (u64, usize) {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().expect("RSS sampler")
    }
}
