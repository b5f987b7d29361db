//! Holds N idle connections open against a server, for the idle-connection measurements of
//! `benches/compare/`: connects them one after another (blocking), prints `ready N` once all
//! are connected, then sends nothing until stdin closes or the process is killed.
//!
//! `cargo run --release --example idle_conns -- 127.0.0.1 54321 10000`

use std::io::{Read, Write};
use std::net::TcpStream;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Open N idle connections and keep them until stdin closes")]
struct Args {
    /// Server address.
    host: String,
    /// Server port.
    port: u16,
    /// How many connections to hold.
    count: usize,
}

fn main() {
    let args = Args::parse();
    let addr = multiconn::net::resolve(&args.host, args.port)
        .unwrap_or_else(|e| fail(format!("cannot resolve {}: {e}", args.host)));
    let mut held = Vec::with_capacity(args.count);
    for i in 0..args.count {
        match TcpStream::connect(addr) {
            Ok(stream) => held.push(stream),
            Err(e) => fail(format!(
                "connection {} of {} to {addr}: {e}",
                i + 1,
                args.count
            )),
        }
    }
    println!("ready {}", held.len());
    let _ = std::io::stdout().flush();
    // Block until stdin reaches EOF (the caller closed it) or fails; a kill also ends us.
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin();
    while let Ok(n) = stdin.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    drop(held);
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1)
}
