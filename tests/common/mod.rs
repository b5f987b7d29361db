//! Helpers shared by the integration tests: an in-process server on port 0, clients with
//! time limits, and the paths of the built binaries.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

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
        let (addr, handle, thread) = server.spawn();
        let ListenAddr::Tcp(addr) = addr else { panic!("expected a TCP address") };
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

/// A built binary of this package, started with piped stdout/stderr.
pub fn spawn_bin(name: &str, args: &[&str]) -> Child {
    let path = match name {
        "multiconn-server" => env!("CARGO_BIN_EXE_multiconn-server"),
        "multiconn-client" => env!("CARGO_BIN_EXE_multiconn-client"),
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
