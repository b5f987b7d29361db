//! multiconn: the Python `selectors` tutorial's servers and clients, done for real on one
//! single-threaded, readiness-based event loop.
//!
//! Map of the crate, in the order data flows:
//! - [`net`]: binding listeners with socket options; the TCP/Unix stream a connection holds.
//! - [`event_loop`]: the `mio::Poll`, the listener, the `Slab` of connections, timers and
//!   shutdown. Accept → read → protocol → write → interest.
//! - [`clock`]: the loop's coarse clock, read once per turn.
//! - [`connection`]: one connection's socket, buffers, phase, deadlines and the one
//!   function that decides its interest.
//! - [`outbound`]: the queue of bytes owed to a peer, written with one `writev`.
//! - [`protocol`]: state machines over bytes that never touch a socket: echo, the
//!   tutorial's JSON-header app protocol, chat, file transfer and an HTTP/1.1 responder.
//! - [`client`]: the tutorial's multi-connection client, the app client, the file
//!   downloader and the load generator.
//! - [`launch`]: protocol choice, worker loops and signals, as `multiconn-server` runs them.
//! - [`cli`]: what the binaries share (logging setup, error exit).

pub mod cli;
pub mod client;
pub mod clock;
pub mod connection;
pub mod event_loop;
pub mod launch;
pub mod net;
pub mod outbound;
pub mod protocol;

pub use event_loop::{Limits, Server, ServerConfig, ServerHandle, Stats};
pub use net::{ListenAddr, Peer, SocketOptions};
