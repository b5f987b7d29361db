//! Non-blocking connects, as every client loop makes them: start one and register it,
//! then learn from its first writable (or error) event whether it succeeded.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::launch::describe;

/// Starts a connect to `addr` registered under `token` for READABLE and WRITABLE (the
/// outcome of a non-blocking connect is reported as writability). The outer error is the
/// poll's (fatal for the loop); the inner one is this connection's (a failed connect).
pub fn start(
    registry: &Registry,
    addr: SocketAddr,
    token: Token,
) -> io::Result<Result<TcpStream, io::Error>> {
    let mut stream = match TcpStream::connect(addr) {
        Ok(stream) => stream,
        Err(e) => return Ok(Err(e)),
    };
    registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
    Ok(Ok(stream))
}

/// Starts connection `number` like `start`; a failed connect is noted in `failures` (the
/// run goes on with the other connections) and gives `None`.
pub fn start_noting_failure(
    registry: &Registry,
    addr: SocketAddr,
    token: Token,
    number: usize,
    failures: &mut Vec<(usize, String)>,
) -> io::Result<Option<TcpStream>> {
    Ok(match start(registry, addr, token)? {
        Ok(stream) => Some(stream),
        Err(e) => {
            failures.push((number, format!("cannot connect: {}", describe(&e))));
            None
        }
    })
}

/// Whether a started connect has completed: `Ok(true)` connected, `Ok(false)` still in
/// progress (a spurious event), `Err` why it failed.
pub fn finished(stream: &TcpStream) -> io::Result<bool> {
    if let Ok(Some(e)) | Err(e) = stream.take_error() {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}
