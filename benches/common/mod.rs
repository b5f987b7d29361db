//! Pieces the benches share: a closed-loop echo driver on one mio `Poll` that allocates
//! nothing per message, and a child process holding idle connections (the process fd limit
//! would not fit 10,000 idle connections' both ends in one process).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// The environment variable that turns the bench binary into an idle-connection holder:
/// `ADDR COUNT`.
pub const IDLE_HOLDER_ENV: &str = "MULTICONN_BENCH_IDLE_HOLDER";

/// One driver connection: where it stands in its current batch.
struct DriverConn {
    stream: TcpStream,
    /// Bytes of the current batch written so far.
    written: usize,
    /// Bytes of the current batch echoed back so far.
    received: usize,
    /// A batch is in flight on this connection.
    busy: bool,
}

/// N connections, each repeatedly writing `depth` messages at once and waiting for all of
/// them to come back (a closed loop). Buffers are allocated once, in `connect`.
pub struct EchoDriver {
    poll: Poll,
    events: Events,
    conns: Vec<DriverConn>,
    /// `depth` messages back to back; the same bytes every batch.
    batch: Vec<u8>,
    scratch: Vec<u8>,
}

impl EchoDriver {
    /// Opens `conns` connections to `addr` carrying batches of `depth` messages of `size` bytes.
    pub fn connect(addr: SocketAddr, conns: usize, size: usize, depth: usize) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut streams = Vec::with_capacity(conns);
        for i in 0..conns {
            // A blocking connect: the connection is established when the driver starts.
            let std_stream = std::net::TcpStream::connect(addr)?;
            std_stream.set_nodelay(true)?;
            std_stream.set_nonblocking(true)?;
            let mut stream = TcpStream::from_std(std_stream);
            // Edge-triggered: WRITABLE costs nothing until a write has filled the socket.
            poll.registry().register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            streams.push(DriverConn {
                stream,
                written: 0,
                received: 0,
                busy: false,
            });
        }
        Ok(EchoDriver {
            poll,
            events: Events::with_capacity(1024),
            conns: streams,
            batch: (0..size * depth).map(|i| i as u8).collect(),
            scratch: vec![0; 64 * 1024],
        })
    }

    /// Completes `batches` batches in total across all connections (each connection starts
    /// a new batch as soon as its previous one is back) and returns the time taken.
    pub fn run(&mut self, batches: u64) -> io::Result<Duration> {
        let started = Instant::now();
        let mut begun = 0u64;
        let mut done = 0u64;
        for conn in &mut self.conns {
            if begun == batches {
                break;
            }
            begun += 1;
            start_batch(conn, &self.batch)?;
        }
        while done < batches {
            self.poll
                .poll(&mut self.events, Some(Duration::from_secs(20)))?;
            if self.events.is_empty() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no echo for 20 s"));
            }
            for event in self.events.iter() {
                let conn = &mut self.conns[event.token().0];
                if !conn.busy {
                    continue;
                }
                if event.is_writable() && conn.written < self.batch.len() {
                    write_some(conn, &self.batch)?;
                }
                if !read_some(conn, &mut self.scratch, self.batch.len())? {
                    continue;
                }
                // The whole batch is back.
                conn.busy = false;
                done += 1;
                if begun < batches {
                    begun += 1;
                    start_batch(conn, &self.batch)?;
                }
            }
        }
        Ok(started.elapsed())
    }
}

fn start_batch(conn: &mut DriverConn, batch: &[u8]) -> io::Result<()> {
    conn.busy = true;
    conn.written = 0;
    conn.received = 0;
    write_some(conn, batch)
}

/// Writes what the socket takes of the rest of the batch; WRITABLE brings us back if not all.
fn write_some(conn: &mut DriverConn, batch: &[u8]) -> io::Result<()> {
    while conn.written < batch.len() {
        match conn.stream.write(&batch[conn.written..]) {
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until WouldBlock; returns whether the whole batch has come back.
fn read_some(conn: &mut DriverConn, scratch: &mut [u8], batch_len: usize) -> io::Result<bool> {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                conn.received += n;
                if conn.received > batch_len {
                    return Err(io::Error::other("more bytes echoed than sent"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(conn.received == batch_len)
}

/// A child process (this same bench binary) holding idle connections to a server.
pub struct IdleHolder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl IdleHolder {
    /// Starts the holder and waits until all `count` connections are established.
    pub fn start(addr: SocketAddr, count: usize) -> io::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(IDLE_HOLDER_ENV, format!("{addr} {count}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout was piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != format!("ready {count}") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!("idle holder said {line:?}")));
        }
        Ok(IdleHolder { child, stdin })
    }
}

impl Drop for IdleHolder {
    fn drop(&mut self) {
        // Closing its stdin tells the holder to exit, closing its connections.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The holder's side, run when `IDLE_HOLDER_ENV` is set: connect, say `ready N`, wait for
/// stdin to close.
pub fn hold_idle_connections(spec: &str) -> io::Result<()> {
    let mut parts = spec.split_whitespace();
    let (Some(addr), Some(count)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other(format!("bad {IDLE_HOLDER_ENV}: {spec:?}")));
    };
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let count: usize = count.parse().map_err(io::Error::other)?;
    let held = (0..count)
        .map(|_| std::net::TcpStream::connect(addr))
        .collect::<io::Result<Vec<_>>>()?;
    let mut stdout = io::stdout();
    writeln!(stdout, "ready {}", held.len())?;
    stdout.flush()?;
    let mut sink = [0u8; 64];
    while io::stdin().read(&mut sink)? > 0 {}
    Ok(())
}
