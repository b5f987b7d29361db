//! Sockets below the loop: binding a listener with the operator's socket options
//! (through `socket2`), and the kinds of stream a connection can hold: TCP or Unix
//! ([`Stream`]), or either under TLS ([`AnyStream`], see [`crate::tls`]), all behind the
//! [`Transport`] the connection core needs. Nothing here knows about protocols or buffers.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol as SockProtocol, SockRef, Socket, TcpKeepalive, Type};

use crate::outbound::Sink;
use crate::tls::TlsStream;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Socket options for the listener and for every accepted connection.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Length of the kernel's queue of connections not yet accepted.
    pub backlog: i32,
    /// SO_REUSEPORT: several listeners (each worker's, other processes') share one
    /// address, the kernel balancing connections between them. Off, a second server on
    /// the address fails with "address in use", and workers share one listener.
    pub reuseport: bool,
    /// TCP_NODELAY on accepted connections: replies leave at once instead of waiting for Nagle.
    pub nodelay: bool,
    /// SO_KEEPALIVE with this idle time before the first probe.
    pub keepalive: Option<Duration>,
    /// SO_RCVBUF, in bytes (the kernel doubles it for bookkeeping).
    pub recv_buffer: Option<usize>,
    /// SO_SNDBUF, in bytes.
    pub send_buffer: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            backlog: 1024,
            reuseport: false,
            nodelay: true,
            keepalive: None,
            recv_buffer: None,
            send_buffer: None,
        }
    }
}

/// Text of an I/O error without Rust's " (os error N)" suffix, for one-line messages.
pub fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Raises the soft open-files limit to the hard one (as nginx's `worker_rlimit_nofile`
/// would; every socket is a descriptor) and returns the soft limit now in force, or
/// `None` if it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Resolves `host` and `port` (IPv4, IPv6 such as `::1`, or a name such as `localhost`)
/// to the first address the resolver returns.
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    // `::1` must not be read as "host:port"; ToSocketAddrs on a (host, port) pair handles that.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no address found for {host}"),
        )
    })
}

/// A bound, listening, non-blocking socket of either kind.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds `addr` with `options`. For a Unix path, only a stale socket file (one that
    /// nothing accepts connections on) is replaced; anything else there is an error.
    pub fn bind(addr: &ListenAddr, options: &SocketOptions) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(addr) => bind_tcp(*addr, options).map(Listener::Tcp),
            ListenAddr::Unix(path) => bind_unix(path).map(Listener::Unix),
        }
    }

    /// The address actually bound (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(l) => {
                let addr = l.local_addr()?;
                let path = addr
                    .as_pathname()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                Ok(ListenAddr::Unix(path))
            }
        }
    }

    /// Another handle on the same listening socket (`dup`), for a worker that shares it:
    /// the kernel has one accept queue, so a second server on the address still finds it
    /// in use, unlike separate SO_REUSEPORT listeners.
    pub fn try_clone(&self) -> io::Result<Listener> {
        use std::os::fd::AsFd;
        match self {
            Listener::Tcp(l) => {
                let fd = l.as_fd().try_clone_to_owned()?;
                Ok(Listener::Tcp(TcpListener::from_std(fd.into())))
            }
            Listener::Unix(l) => {
                let fd = l.as_fd().try_clone_to_owned()?;
                Ok(Listener::Unix(UnixListener::from_std(fd.into())))
            }
        }
    }

    /// Accepts one connection (WouldBlock when the queue is empty).
    pub fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => l
                .accept()
                .map(|(stream, addr)| (Stream::Tcp(stream), Peer::Tcp(addr))),
            Listener::Unix(l) => l
                .accept()
                .map(|(stream, _)| (Stream::Unix(stream), Peer::Unix)),
        }
    }
}

impl Source for Listener {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(r, t, i),
            Listener::Unix(l) => l.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(r, t, i),
            Listener::Unix(l) => l.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(r),
            Listener::Unix(l) => l.deregister(r),
        }
    }
}

fn bind_tcp(addr: SocketAddr, options: &SocketOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    // A restarted server must not wait for TIME_WAIT sockets of its previous life.
    socket.set_reuse_address(true)?;
    if options.reuseport {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // `::` means IPv6 only here; listen on 0.0.0.0 as well with a second server if needed.
        socket.set_only_v6(true)?;
    }
    // Set on the listener, buffer sizes are inherited by accepted sockets before the
    // handshake completes, which is when the window scale is chosen.
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = options.send_buffer {
        socket.set_send_buffer_size(size)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(options.backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    // symlink_metadata: a symlink at PATH is not followed to whatever it names.
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(meta) if !meta.file_type().is_socket() => {
            // A regular file, a directory, a symlink: not ours to delete.
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way (it was left untouched)",
            ));
        }
        Ok(_) => {
            // A socket file left by a crashed server is stale if nobody accepts on it;
            // a live one means the address is in use, as for TCP.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "Address already in use",
                ));
            }
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// Applies the per-connection options to an accepted TCP stream.
pub fn configure_accepted(stream: &Stream, options: &SocketOptions) -> io::Result<()> {
    if let Stream::Tcp(tcp) = stream {
        let sock = SockRef::from(tcp);
        if options.nodelay {
            sock.set_tcp_nodelay(true)?;
        }
        if let Some(idle) = options.keepalive {
            sock.set_keepalive(true)?;
            sock.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
        }
    }
    Ok(())
}

/// The other end of a connection, as logs and the chat protocol name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// Unix-domain peers are unnamed.
    Unix,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix => f.write_str("unix-peer"),
        }
    }
}

/// What the connection core needs of the stream it holds, beyond reading and writing:
/// the plain [`Stream`] of a server, or a client's [`AnyStream`], which may be under TLS.
/// A connection is generic over it, so a plain server's hot path has no TLS branch at all
/// (measured: a third `Stream` variant cost the echo round trip 26 instructions of 465).
pub trait Transport: Read + Write + Source {
    /// Whether it may be under TLS: known when the code is compiled, so that a plain
    /// server's connections carry no check for a handshake at all.
    const TLS: bool = false;

    /// Shuts the write side (under TLS, close_notify first).
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Makes closing this stream a reset (SO_LINGER with a zero timeout): the kernel drops
    /// what it still holds for the peer at once and sends RST, instead of sending it on
    /// from FIN-WAIT-1. A Unix socket has no such state; closing it frees its buffers.
    fn reset_on_close(&self) -> io::Result<()>;

    /// After a non-blocking connect reported readiness: whether it completed (`false`: a
    /// spurious event), or why it failed.
    fn connect_result(&self) -> io::Result<bool>;

    /// A TLS layer holds records for the socket (the handshake's, or encrypted output it
    /// did not take yet): the connection needs WRITABLE though its own queue is empty.
    #[inline(always)]
    fn tls_pending(&self) -> bool {
        false
    }

    /// Writes what a TLS layer holds for the socket, as far as the socket takes it.
    fn send_tls_records(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// A TLS handshake is under way.
    fn is_handshaking(&self) -> bool {
        false
    }
}

/// The stream a server's connection holds, made from a socket just accepted: the plain
/// [`Stream`] itself, or with `--tls-cert` an [`AnyStream`] under TLS (one rustls
/// `ServerConnection` per connection). The server loop is generic over it.
pub trait Accepted: Transport + Sink + Sized {
    /// Wraps an accepted socket; `tls` is the server's TLS configuration, if it has one.
    fn accepted(stream: Stream, tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Self>;

    /// Bytes that came before the connection was opened (after a PROXY header, in the
    /// same read): under TLS they are records (a ClientHello) and the layer takes them;
    /// `Ok(false)`: they are the protocol's first input.
    fn take_early_records(&mut self, _early: &[u8]) -> io::Result<bool> {
        Ok(false)
    }
}

impl Accepted for Stream {
    #[inline(always)]
    fn accepted(stream: Stream, _tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Self> {
        Ok(stream)
    }
}

impl Accepted for AnyStream {
    fn accepted(stream: Stream, tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Self> {
        match tls {
            Some(config) => Ok(AnyStream::Tls(Box::new(TlsStream::server(
                stream,
                config.clone(),
            )?))),
            None => Ok(AnyStream::Plain(stream)),
        }
    }

    fn take_early_records(&mut self, early: &[u8]) -> io::Result<bool> {
        match self {
            AnyStream::Tls(s) => s.receive_early(early).map(|()| true),
            AnyStream::Plain(_) => Ok(false),
        }
    }
}

/// A connected, non-blocking plain byte stream.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Transport for Stream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    fn reset_on_close(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => SockRef::from(s).set_linger(Some(Duration::ZERO)),
            Stream::Unix(_) => Ok(()),
        }
    }

    fn connect_result(&self) -> io::Result<bool> {
        match self {
            Stream::Tcp(tcp) => match tcp.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match tcp.peer_addr() {
                    Ok(_) => Ok(true),
                    // Not connected yet: a spurious event.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                },
            },
            Stream::Unix(_) => Ok(true),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
        }
    }
}

/// A plain stream, or one under TLS: what a client's connections hold, and a TLS
/// server's. Reading and writing it is plaintext either way.
#[derive(Debug)]
pub enum AnyStream {
    Plain(Stream),
    /// Boxed: a TLS session is large, a plain stream one word.
    Tls(Box<TlsStream<Stream>>),
}

impl AnyStream {
    /// The TLS layer, if there is one.
    pub fn tls(&self) -> Option<&TlsStream<Stream>> {
        match self {
            AnyStream::Tls(s) => Some(s),
            AnyStream::Plain(_) => None,
        }
    }

    fn plain(&self) -> &Stream {
        match self {
            AnyStream::Plain(s) => s,
            AnyStream::Tls(s) => s.transport(),
        }
    }

    fn plain_mut(&mut self) -> &mut Stream {
        match self {
            AnyStream::Plain(s) => s,
            AnyStream::Tls(s) => s.transport_mut(),
        }
    }
}

impl Transport for AnyStream {
    const TLS: bool = true;

    fn shutdown_write(&mut self) -> io::Result<()> {
        if let AnyStream::Tls(s) = self {
            s.close_notify()?;
        }
        self.plain_mut().shutdown_write()
    }

    fn reset_on_close(&self) -> io::Result<()> {
        self.plain().reset_on_close()
    }

    fn connect_result(&self) -> io::Result<bool> {
        self.plain().connect_result()
    }

    #[inline]
    fn tls_pending(&self) -> bool {
        matches!(self, AnyStream::Tls(s) if s.wants_write())
    }

    fn send_tls_records(&mut self) -> io::Result<()> {
        match self {
            AnyStream::Tls(s) => s.send_records(),
            AnyStream::Plain(_) => Ok(()),
        }
    }

    fn is_handshaking(&self) -> bool {
        matches!(self, AnyStream::Tls(s) if s.is_handshaking())
    }
}

impl Read for AnyStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            AnyStream::Plain(s) => s.read(buf),
            AnyStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for AnyStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            AnyStream::Plain(s) => s.write(buf),
            AnyStream::Tls(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            AnyStream::Plain(s) => s.write_vectored(bufs),
            AnyStream::Tls(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            AnyStream::Plain(_) => Ok(()),
            AnyStream::Tls(s) => s.flush(),
        }
    }
}

impl Source for AnyStream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.plain_mut().register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.plain_mut().reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.plain_mut().deregister(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("multiconn-net-{}-{name}", std::process::id()))
    }

    /// `--unix PATH` replaces only a socket nothing listens on: a live socket is "in use",
    /// and a regular file, a directory or a symlink at PATH is an error and left as it was.
    #[test]
    fn unix_bind_replaces_only_stale_sockets() {
        let path = temp_path("sock");
        let _ = std::fs::remove_file(&path);
        let live = bind_unix(&path).unwrap();
        assert_eq!(
            bind_unix(&path).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(live);
        bind_unix(&path).expect("a stale socket is replaced");
        std::fs::remove_file(&path).unwrap();

        let file = temp_path("file");
        std::fs::write(&file, b"precious").unwrap();
        assert_eq!(
            bind_unix(&file).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");

        let link = temp_path("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(bind_unix(&link).is_err());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_file(&file).unwrap();

        let dir = temp_path("dir");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(bind_unix(&dir).is_err());
        assert!(dir.is_dir());
        std::fs::remove_dir(&dir).unwrap();
    }
}
