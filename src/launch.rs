//! Starting servers the way the binary does: pick the protocol, bind one loop per worker,
//! turn SIGINT/SIGTERM into a graceful shutdown, and collect the counters at the end.

use std::io;
use std::path::PathBuf;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::event_loop::{Server, ServerConfig, ServerHandle, Stats};
use crate::net::ListenAddr;
use crate::protocol::echo::Echo;
use crate::protocol::http::{Http, HttpConfig};
use crate::protocol::Protocol;

/// The protocols `multiconn-server --protocol` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolKind {
    /// Send every byte back (the tutorial's multiconn-server).
    Echo,
    /// A keep-alive HTTP/1.1 server answering GET and HEAD with one page.
    Http,
}

/// Settings that only some protocols read; each protocol takes what it needs.
#[derive(Debug, Clone, Default)]
pub struct ProtocolOptions {
    /// http: the file served instead of the default page (read once at start).
    pub body: Option<PathBuf>,
    /// http: the header-section cap in bytes (default `http::DEFAULT_MAX_HEADER`).
    pub max_header: Option<usize>,
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

/// Running server loops: handles to stop them and the threads that yield their counters.
pub struct Workers {
    pub addr: ListenAddr,
    pub handles: Vec<ServerHandle>,
    threads: Vec<JoinHandle<io::Result<Stats>>>,
}

impl Workers {
    /// Asks every loop for a graceful shutdown.
    pub fn shutdown(&self) {
        for handle in &self.handles {
            handle.shutdown();
        }
    }

    /// Waits for every loop and merges their counters.
    pub fn join(self) -> Result<Stats, String> {
        let mut total = Stats::default();
        for thread in self.threads {
            let stats = thread
                .join()
                .map_err(|_| "a server thread panicked".to_string())?
                .map_err(|e| format!("server loop failed: {}", describe(&e)))?;
            total.merge(&stats);
        }
        Ok(total)
    }
}

/// Binds every worker, then serves until SIGINT or SIGTERM; returns the merged counters.
pub fn serve_until_signalled(options: LaunchOptions) -> Result<Stats, String> {
    let workers = start(options)?;
    let handles = workers.handles.clone();
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
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
                for handle in &handles {
                    handle.shutdown();
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    workers.join()
}

/// Binds every worker and starts its loop on a thread.
pub fn start(options: LaunchOptions) -> Result<Workers, String> {
    match options.protocol {
        ProtocolKind::Echo => start_with(options, |_| Echo),
        ProtocolKind::Http => {
            let responder = Http::new(HttpConfig::from_options(&options.protocol_options)?);
            start_with(options, move |_| responder.clone())
        }
    }
}

fn start_with<P, F>(options: LaunchOptions, make: F) -> Result<Workers, String>
where
    P: Protocol + Send + 'static,
    P::Session: Send,
    F: Fn(usize) -> P,
{
    let workers = options.workers.max(1);
    let mut handles = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    let mut addr = None;
    let mut config = options.config;
    let listen_addr = config.listen.clone();
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
        let (bound, handle, thread) = server.spawn();
        addr.get_or_insert(bound);
        handles.push(handle);
        threads.push(thread);
    }
    Ok(Workers {
        addr: addr.unwrap_or(listen_addr),
        handles,
        threads,
    })
}
