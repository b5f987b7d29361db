//! The baseline of `benches/compare/run.sh`: the usual tokio echo server, written the way
//! most people would write it, on a current_thread runtime (one core, like multiconn's loop).
//! Each connection is a task with a 4 KiB buffer: `read`, then `write_all` what was read.
//!
//! `cargo run --release --example echo_tokio -- 127.0.0.1 54322`

use std::net::SocketAddr;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Per-connection read buffer, as in the common tokio echo examples.
const BUFFER_SIZE: usize = 4096;

#[derive(Parser, Debug)]
#[command(about = "A tokio echo server (current_thread runtime), the comparison baseline")]
struct Args {
    /// Address to listen on.
    host: String,
    /// Port to listen on.
    port: u16,
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(format!("cannot start the tokio runtime: {e}")),
    };
    if let Err(e) = runtime.block_on(serve(&args.host, args.port)) {
        fail(e);
    }
}

async fn serve(host: &str, port: u16) -> Result<(), String> {
    let addr: SocketAddr =
        multiconn::net::resolve(host, port).map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    loop {
        let (mut socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // EMFILE and friends: keep serving the connections already open.
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        // multiconn sets TCP_NODELAY on every connection; so does the baseline, for fairness.
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; BUFFER_SIZE];
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1)
}
