//! multiconn: the Python `selectors` tutorial's servers and clients, done for real on one
//! single-threaded, readiness-based event loop.
//!
//! Map of the crate, lowest layer first (each imports only from those above it):
//! - [`config`]: a loop's configuration as plain values: limits, timeouts, the listen address.
//! - [`clock`]: the loop's coarse clock, read once per turn.
//! - [`duration`]: durations as the time flags take them (`30s`, `2m`, a bare number of
//!   seconds), for the server's flags and the clients' alike.
//! - [`tls`]: TLS (rustls) as a layer over any byte stream, so connections read and write
//!   plaintext; client configurations and the server's from `--tls-cert/--tls-key`.
//! - [`net`]: binding listeners with socket options; the stream a connection holds (TCP,
//!   Unix, or either under TLS), and what a server loop makes of an accepted socket
//!   (`Accepted`: the plain stream, or the stream under TLS).
//! - [`outbound`]: bytes on their way to a peer: a turn's reply, and the queue of what is
//!   still owed, written with one `writev`, file ranges with sendfile(2).
//! - [`stats`]: a loop's counters and the reasons a connection ends.
//! - [`root`]: a directory served to peers, as a security boundary: regular files opened
//!   beneath it with openat2(2) (the file protocol and HTTP's static files).
//! - [`protocol`]: state machines over bytes that never touch a socket: echo, the
//!   tutorial's JSON-header app protocol, chat, file transfer and an HTTP/1.1 responder.
//!   They say what they need (more input, pause, close) as return values.
//! - [`connection`]: one connection's life: socket, buffers, phase, deadlines, and the one
//!   function that decides its interest.
//! - [`schedule`]: what a loop defers for its connections: the timer queue, the
//!   connections to serve again next turn, and the sweep list. Server and client loops share it.
//! - [`server`]: the loop that schedules connections: the `mio::Poll`, the listener, the
//!   `Slab`, timers, deferred lists and the sweep. Accept → read → protocol → write → interest.
//!   A `Relay` extends it with sources of its own.
//! - [`relay`]: broadcasts beyond one loop: to the other worker loops (a channel and a
//!   waker each) and to other servers through Redis pub/sub.
//! - [`client`]: the client loop (the same connection core and schedule, connecting
//!   instead of accepting) and, as client protocols on it, the tutorial's multi-connection
//!   client, the app client, the file downloader, the chat client, the chat fan-out load
//!   mode and the load generator (with `--udp`, its own small loop over UDP sockets
//!   sharing the load's schedule and report).
//! - [`launch`]: protocol choice, worker loops and signals, as `multiconn-server` runs them.
//! - [`cli`]: what the binaries share (logging setup, error exit, the Ctrl-C line).

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod connection;
pub mod duration;
pub mod launch;
pub mod net;
pub mod outbound;
pub mod protocol;
pub mod relay;
pub mod root;
pub mod schedule;
pub mod server;
pub mod stats;
pub mod tls;

pub use config::{Limits, ServerConfig, Timeouts};
pub use net::{ListenAddr, Peer, SocketOptions};
pub use server::{Server, ServerHandle};
pub use stats::Stats;
