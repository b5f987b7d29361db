//! A thread-per-connection, closed-loop echo load generator in the style of rust_echo_bench,
//! the reference `benches/compare/run.sh` drives both servers with. Each of CONNS threads
//! owns one blocking connection and repeats: write PIPELINE messages of SIZE bytes in one
//! `write`, read the same number of bytes back, check them, until SECS have passed.
//! Prints one line: `round_trips=N elapsed_secs=S req_per_sec=R conns=C size=B pipeline=P`.
//!
//! `cargo run --release --example echo_threads_client -- 127.0.0.1 54321 50 10 64`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;

/// A server that stops answering for this long fails the run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(about = "Thread-per-connection closed-loop echo load generator")]
struct Args {
    /// Server address.
    host: String,
    /// Server port.
    port: u16,
    /// Connections, one thread each.
    conns: usize,
    /// How long to run, in seconds.
    secs: f64,
    /// Bytes per message.
    size: usize,
    /// Messages in flight per connection, written together and awaited together.
    #[arg(default_value_t = 1)]
    pipeline: usize,
}

fn main() {
    let args = Args::parse();
    let run_for = match Duration::try_from_secs_f64(args.secs) {
        Ok(d) if !d.is_zero() => d,
        _ => fail("SECS must be a positive number of seconds"),
    };
    if args.conns == 0 || args.size == 0 || args.pipeline == 0 {
        fail("CONNS, SIZE and PIPELINE must be positive");
    }
    let addr = multiconn::net::resolve(&args.host, args.port)
        .unwrap_or_else(|e| fail(format!("cannot resolve {}: {e}", args.host)));
    let stop = Arc::new(AtomicBool::new(false));
    // Every thread connects first; the clock starts when all are connected.
    let start_line = Arc::new(Barrier::new(args.conns + 1));
    let workers: Vec<_> = (0..args.conns)
        .map(|i| {
            let (stop, start_line) = (stop.clone(), start_line.clone());
            let (size, pipeline) = (args.size, args.pipeline);
            std::thread::spawn(move || {
                let connected = connect(addr);
                start_line.wait();
                let mut stream = connected?;
                drive(&mut stream, i, size, pipeline, &stop)
            })
        })
        .collect();
    start_line.wait();
    let started = Instant::now();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    let mut round_trips = 0u64;
    let mut failures = Vec::new();
    for (i, worker) in workers.into_iter().enumerate() {
        match worker.join() {
            Ok(Ok(n)) => round_trips += n,
            Ok(Err(e)) => failures.push(format!("connection {}: {e}", i + 1)),
            Err(_) => failures.push(format!("connection {}: thread panicked", i + 1)),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        fail(failures.join("; "));
    }
    println!(
        "round_trips={round_trips} elapsed_secs={elapsed:.3} req_per_sec={:.0} conns={} size={} pipeline={}",
        round_trips as f64 / elapsed,
        args.conns,
        args.size,
        args.pipeline
    );
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    let setup = || -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))
    };
    setup().map_err(|e| format!("socket options: {e}"))?;
    Ok(stream)
}

/// The closed loop of one connection; returns the messages echoed.
fn drive(
    stream: &mut TcpStream,
    conn: usize,
    size: usize,
    pipeline: usize,
    stop: &AtomicBool,
) -> Result<u64, String> {
    // Content differs per connection, so bytes delivered to the wrong peer would be noticed.
    let batch: Vec<u8> = (0..size * pipeline)
        .map(|j| (j.wrapping_mul(31) ^ conn) as u8)
        .collect();
    let mut echo = vec![0u8; batch.len()];
    let mut messages = 0u64;
    while !stop.load(Ordering::Relaxed) {
        stream
            .write_all(&batch)
            .map_err(|e| format!("write: {e}"))?;
        stream
            .read_exact(&mut echo)
            .map_err(|e| format!("read: {e}"))?;
        if echo != batch {
            return Err("the echo differs from what was sent".into());
        }
        messages += pipeline as u64;
    }
    Ok(messages)
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1)
}
