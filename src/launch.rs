//! Starting servers the way the binary does: pick the protocol, bind one loop per worker,
//! turn SIGINT/SIGTERM into a graceful shutdown, and collect the counters at the end.

use std::io;
use std::path::PathBuf;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::event_loop::{Server, ServerConfig, ServerHandle, Stats};
use crate::protocol::chat::{self, Chat};
use crate::protocol::echo::Echo;
use crate::protocol::file::FileServer;
use crate::protocol::Protocol;

/// The protocols `multiconn-server --protocol` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolKind {
    /// Send every byte back (the tutorial's multiconn-server).
    Echo,
    /// Group chat: each line goes to every other client as `[HOST:PORT] text`.
    Chat,
    /// File transfer from --root: `PATH` line → `OK <size>` and the bytes, or `ERR <reason>`.
    File,
}

/// Settings that only some protocols read; each protocol takes what it needs.
#[derive(Debug, Clone, Default)]
pub struct ProtocolOptions {
    /// chat: the longest line accepted, in bytes (default `chat::DEFAULT_MAX_LINE`).
    pub max_line: Option<usize>,
    /// file: the directory served; `--protocol file` requires it.
    pub root: Option<PathBuf>,
}

/// How to run: the loop's configuration, the protocol, and how many loops.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub config: ServerConfig,
    pub protocol: ProtocolKind,
    pub protocol_options: ProtocolOptions,
    /// Threads, each its own loop with its own SO_REUSEPORT listener.
    pub workers: usize,
}

/// Text of an I/O error without Rust's " (os error N)" suffix, for one-line messages.
pub fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Binds every worker, then serves until SIGINT or SIGTERM; returns the merged counters.
pub fn serve_until_signalled(options: LaunchOptions) -> Result<Stats, String> {
    let (handles, threads) = start(options)?;
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let signal_handles = handles.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut caught = 0;
            for signal in signals.forever() {
                caught += 1;
                if caught > 1 {
                    // A second signal: the operator does not want to wait for the drain.
                    log::warn!("Second signal, exiting now.");
                    std::process::exit(130);
                }
                if signal == SIGINT {
                    log::info!("Caught keyboard interrupt, exiting.");
                } else {
                    log::info!("Caught SIGTERM, exiting.");
                }
                for handle in &signal_handles {
                    handle.shutdown();
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    join(threads)
}

/// Binds every worker and starts its loop on a thread.
pub fn start(
    options: LaunchOptions,
) -> Result<(Vec<ServerHandle>, Vec<JoinHandle<io::Result<Stats>>>), String> {
    match options.protocol {
        ProtocolKind::Echo => start_with(options, |_| Echo),
        ProtocolKind::Chat => {
            let max_line = options.protocol_options.max_line;
            let max_line = max_line.unwrap_or(chat::DEFAULT_MAX_LINE);
            let needed = max_line.saturating_add(chat::LINE_OVERHEAD);
            if needed > options.config.limits.max_outbound {
                // One maximal line would cut every recipient as a slow consumer.
                return Err(format!(
                    "--max-line {max_line} needs --max-outbound of at least {needed} for chat"
                ));
            }
            start_with(options, move |_| Chat::new(max_line))
        }
        ProtocolKind::File => {
            let Some(root) = options.protocol_options.root.clone() else {
                return Err("--protocol file needs --root DIR".to_string());
            };
            let server = FileServer::new(&root).map_err(|e| {
                let reason = describe(&e);
                format!("cannot serve files from {}: {reason}", root.display())
            })?;
            log::info!("Serving files from {}", server.root().display());
            start_with(options, move |_| server.clone())
        }
    }
}

fn start_with<P, F>(
    options: LaunchOptions,
    make: F,
) -> Result<(Vec<ServerHandle>, Vec<JoinHandle<io::Result<Stats>>>), String>
where
    P: Protocol + Send + 'static,
    P::Session: Send,
    F: Fn(usize) -> P,
{
    let workers = options.workers.max(1);
    let mut handles = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    let mut config = options.config;
    if workers > 1 {
        config.socket.reuseport = true;
    }
    for worker in 0..workers {
        let mut config = config.clone();
        if workers > 1 {
            config.name = Some(format!("worker {}", worker + 1));
        }
        let listen = config.listen.clone();
        let server = Server::bind(config, make(worker))
            .map_err(|e| format!("cannot listen on {listen}: {}", describe(&e)))?;
        if worker == 0 {
            log::info!("Listening on {}", server.local_addr());
        }
        let (_, handle, thread) = server.spawn();
        handles.push(handle);
        threads.push(thread);
    }
    Ok((handles, threads))
}

/// Waits for every worker and merges their counters.
pub fn join(threads: Vec<JoinHandle<io::Result<Stats>>>) -> Result<Stats, String> {
    let mut total = Stats::default();
    for thread in threads {
        let stats = thread
            .join()
            .map_err(|_| "a server thread panicked".to_string())?
            .map_err(|e| format!("server loop failed: {}", describe(&e)))?;
        total.merge(&stats);
    }
    Ok(total)
}
