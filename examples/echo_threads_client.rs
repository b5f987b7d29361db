//! A thread-per-connection, closed-loop echo load generator in the style of rust_echo_bench:
//! N std threads, each with one blocking socket, writing a fixed-size message and reading
//! its echo back, as often as it can for a duration. It exists as the yardstick that
//! `multiconn-client` is compared against (same server, same connections, same size):
//!
//! ```text
//! cargo run --release --example echo_threads_client -- 127.0.0.1 54321 50 --duration 5 --size 64
//! ```
//!
//! It prints round trips per second and the CPU time this process used (user, system).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A blocked read or write gives up after this, so a dead server cannot hang the run.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    size: usize,
}

fn usage() -> ! {
    eprintln!("usage: echo_threads_client HOST PORT CONNECTIONS [--duration SECS] [--size BYTES]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        usage();
    }
    let port: u16 = args[1].parse().unwrap_or_else(|_| usage());
    let addr = (args[0].as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| usage());
    let connections: usize = args[2].parse().unwrap_or_else(|_| usage());
    let mut duration = Duration::from_secs(5);
    let mut size = 64;
    let mut rest = args[3..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--duration" => {
                duration = Duration::from_secs_f64(value.parse().unwrap_or_else(|_| usage()))
            }
            "--size" => size = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    Args {
        addr,
        connections,
        duration,
        size,
    }
}

/// CPU seconds used by this process so far: (user, system).
fn cpu_time() -> (f64, f64) {
    // SAFETY: getrusage only writes the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One connection's loop: write the message, read its echo, count, until `stop`.
fn round_trips(mut stream: TcpStream, size: usize, stop: &AtomicBool) -> std::io::Result<u64> {
    let message: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut echo = vec![0u8; size];
    let mut count = 0;
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(&message)?;
        stream.read_exact(&mut echo)?;
        if echo != message {
            return Err(std::io::Error::other("echo mismatch"));
        }
        count += 1;
    }
    Ok(count)
}

fn main() {
    let args = parse_args();
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_time();
    // All connections first, so the clock runs only while every thread is at work.
    let streams: Vec<TcpStream> = (0..args.connections)
        .map(|_| {
            connect(args.addr).unwrap_or_else(|e| {
                eprintln!("error: cannot connect to {}: {e}", args.addr);
                std::process::exit(1)
            })
        })
        .collect();
    let threads: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let stop = stop.clone();
            let size = args.size;
            std::thread::spawn(move || round_trips(stream, size, &stop))
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(args.duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut errors = 0;
    for thread in threads {
        match thread.join() {
            Ok(Ok(count)) => total += count,
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_time();
    println!(
        "{} connections, {}-byte messages, {elapsed:.2}s: {total} round trips, {:.0} req/s, cpu {:.2}s user + {:.2}s system, errors {errors}",
        args.connections,
        args.size,
        total as f64 / elapsed,
        cpu_after.0 - cpu_before.0,
        cpu_after.1 - cpu_before.1,
    );
    if errors > 0 {
        std::process::exit(1);
    }
}
