//! The real `multiconn-server` binary as a child process: started on 127.0.0.1:0 (its
//! address read from its "Listening on" line), its resident memory readable from /proc,
//! and killed when dropped so no test leaves a server behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;
use std::sync::mpsc;

use crate::common::{spawn_bin, IO_TIMEOUT};

pub struct ChildServer {
    pub addr: SocketAddr,
    child: Child,
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
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                // Nobody listens once the address is known: the rest is only drained.
                let _ = lines.send(line);
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
        ChildServer { addr, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("VmRSS line")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
