//! TLS as a transport layer under the connection core: a [`TlsStream`] wraps a
//! `rustls::Connection` (client or server) around a plain stream, and is reached through
//! `net::AnyStream::Tls`, so a connection reads and writes plaintext as before. Also the
//! client configuration the load generator builds (roots from the OS store and
//! `--cacert`, or `--insecure`) and a server configuration from PEM files.
//!
//! What the core relies on:
//! - `read` fills the buffer from decrypted records and returns less than asked only when
//!   the socket said WouldBlock or closed, so the core's rule "a short read drained the
//!   socket" (edge-triggered epoll) holds for TLS too.
//! - `write` takes plaintext only while no ciphertext waits for the socket (WouldBlock
//!   otherwise); what is encrypted but not yet sent is [`TlsStream::wants_write`], and the
//!   core keeps WRITABLE registered while it is true (the handshake's records too).

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConnection};

/// A TLS session over a plain stream `IO` (a socket).
pub struct TlsStream<IO> {
    io: IO,
    conn: rustls::Connection,
}

impl<IO: fmt::Debug> fmt::Debug for TlsStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("io", &self.io)
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

/// A TLS failure as the I/O error the core reports: the peer sent something we refuse
/// (a certificate we do not trust, a bad record), which is the peer's business.
fn tls_error(e: rustls::Error) -> io::Error {
    let text = e.to_string();
    let text = if text.contains("CaUsedAsEndEntity") {
        // What `openssl req -x509` makes by default (basicConstraints CA:TRUE).
        "invalid peer certificate: a CA certificate used as the server's own (a self-signed \
         one made with CA:TRUE: make it with basicConstraints=CA:FALSE, or use --insecure)"
            .to_string()
    } else {
        text
    };
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {text}"))
}

impl<IO: Read + Write> TlsStream<IO> {
    /// The client side of a connection to `name` (its SNI, and the name the certificate
    /// must carry); its ClientHello is ready to go as soon as the connect completes.
    pub fn client(
        io: IO,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let conn = ClientConnection::new(config, name).map_err(tls_error)?;
        Ok(TlsStream {
            io,
            conn: conn.into(),
        })
    }

    /// The server side of an accepted connection; it waits for the ClientHello.
    pub fn server(io: IO, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let conn = ServerConnection::new(config).map_err(tls_error)?;
        Ok(TlsStream {
            io,
            conn: conn.into(),
        })
    }

    /// Takes records that arrived before the layer existed (read while a PROXY header was
    /// awaited) as if just read from the socket; what they call for goes out at once.
    pub fn receive_early(&mut self, mut early: &[u8]) -> io::Result<()> {
        while !early.is_empty() {
            if self.conn.read_tls(&mut early)? == 0 {
                break;
            }
            let processed = self.conn.process_new_packets();
            let sent = self.send_records();
            processed.map_err(tls_error)?;
            sent?;
        }
        Ok(())
    }

    /// The application protocol the handshake agreed on (ALPN), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The TLS version the handshake agreed on.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The stream under the TLS layer.
    pub fn transport(&self) -> &IO {
        &self.io
    }

    pub fn transport_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Records (handshake, alerts, encrypted output) wait for the socket.
    #[inline]
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the handshake resumed an earlier session (no certificate exchange).
    pub fn is_resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Writes waiting records until they are gone or the socket is full (not an error:
    /// [`Self::wants_write`] stays true and the core waits for WRITABLE).
    pub fn send_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.io) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues close_notify and sends what it can: the peer reads the end of the stream
    /// (the caller shuts the socket's write side after it).
    pub fn close_notify(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.send_records()
    }

    /// Takes records from the socket and decrypts them; what they call for (handshake
    /// answers, a key update's reply) goes out at once. Returns whether the socket gave
    /// less than rustls asked for: it is drained (or at EOF), so with edge-triggered
    /// epoll reading it again would only see EAGAIN.
    fn receive_records(&mut self) -> io::Result<bool> {
        let mut socket = NoteShort {
            io: &mut self.io,
            short: false,
        };
        loop {
            match self.conn.read_tls(&mut socket) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => {
                    other?;
                    break;
                }
            }
        }
        let drained = socket.short;
        let processed = self.conn.process_new_packets();
        // An alert describing a failure is among the records to send, so send first.
        let sent = self.send_records();
        processed.map_err(tls_error)?;
        sent?;
        Ok(drained)
    }
}

/// The socket as rustls reads it, noting whether one read gave less than asked (rustls
/// reads once per `read_tls`).
struct NoteShort<'a, IO> {
    io: &'a mut IO,
    short: bool,
}

impl<IO: Read> Read for NoteShort<'_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.io.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

impl<IO: mio::event::Source> mio::event::Source for TlsStream<IO> {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.io.register(r, t, i)
    }
    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.io.reregister(r, t, i)
    }
    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        self.io.deregister(r)
    }
}

impl<IO: Read + Write> Read for TlsStream<IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        let mut drained = false;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                // close_notify: the end (after what was already handed over).
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without close_notify. Many servers end a connection so;
                // the protocol above sees a FIN and judges whether a message was cut short.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return Err(e),
            }
            // Nothing decrypted is waiting: read records until the socket is drained, so
            // that a short read still means it is. A read of the socket that came back
            // short says so already, sparing the recv that would only see EAGAIN.
            if drained {
                return if filled > 0 {
                    Ok(filled)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            match self.receive_records() {
                Ok(short) => drained = short,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
        }
    }
}

impl<IO: Read + Write> TlsStream<IO> {
    /// Gives rustls what follows the first `skip` bytes of `bufs` (as many slices as one
    /// `writev` takes: the core never offers more).
    #[cold]
    fn write_rest(&mut self, bufs: &[IoSlice<'_>], mut skip: usize) -> io::Result<usize> {
        const MAX_SLICES: usize = 64;
        let mut rest = [IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for buf in bufs {
            if skip >= buf.len() {
                skip -= buf.len();
                continue;
            }
            rest[count] = IoSlice::new(&buf[skip..]);
            skip = 0;
            count += 1;
            if count == MAX_SLICES {
                break;
            }
        }
        self.conn.writer().write_vectored(&rest[..count])
    }
}

impl<IO: Read + Write> Write for TlsStream<IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Ciphertext still waiting comes first; while it waits, take no more plaintext,
        // so the queue of owed bytes stays the connection's and its cap applies.
        self.send_records()?;
        if self.conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        let mut taken = self.conn.writer().write_vectored(bufs)?;
        if taken == 0 && offered > 0 {
            // rustls's own buffer is full (plaintext held during the handshake).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.send_records()?;
        // rustls takes at most its buffer limit of records (64 KiB) per call. While the
        // socket takes all of them, go on: a short count must mean the socket is full,
        // because the core then waits for WRITABLE, and edge-triggered epoll reports it
        // only after a write saw EAGAIN (which sending the records here did).
        while taken < offered && !self.conn.wants_write() {
            let n = self.write_rest(bufs, taken)?;
            if n == 0 {
                break;
            }
            taken += n;
            self.send_records()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_records()
    }
}

/// How a client checks the servers it connects to.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsOptions {
    /// Also trust the certificates in this PEM file (a private CA, a self-signed server).
    pub cacert: Option<std::path::PathBuf>,
    /// Accept any certificate (self-signed test servers): no authentication at all.
    pub insecure: bool,
}

/// A client configuration: the OS store's roots plus `--cacert`, or no verification with
/// `--insecure`. Sessions are cached in memory (rustls's default), so a reconnect with the
/// same configuration resumes instead of doing a full handshake.
pub fn client_config(options: &ClientTlsOptions) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        // A machine without a CA bundle can still use --cacert; unreadable entries are skipped.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = &options.cacert {
            let certs = read_certificates(path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "--cacert {}: no usable certificate in it",
                    path.display()
                ));
            }
        }
        if roots.is_empty() {
            return Err(
                "no trusted certificates: the OS store is empty; give --cacert FILE or --insecure"
                    .into(),
            );
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// A server configuration from a PEM certificate chain and private key (a server's
/// `--tls-cert/--tls-key`), offering `alpn` (empty: no ALPN). TLS 1.2 and 1.3. Every
/// failure says which file and why: unreadable, no certificate or key in it, or a key
/// that is not the certificate's.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certificates(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(e) => {
            format!("{}: {}", key.display(), crate::net::describe(&e))
        }
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PEM private key in it", key.display())
        }
        e => format!("{}: no usable private key: {e}", key.display()),
    })?;
    let mut config = build_server_config(certs, key_der).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} does not match the certificate in {}",
            key.display(),
            cert.display()
        ),
        e => format!("{} with {}: {e}", cert.display(), key.display()),
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server configuration from DER certificates and key.
pub fn server_config_from(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    build_server_config(certs, key)
        .map(Arc::new)
        .map_err(|e| format!("TLS: {e}"))
}

fn build_server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(e) => {
                format!("{}: {}", path.display(), crate::net::describe(&e))
            }
            e => format!("{}: {e}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The server name a URL's host gives: a DNS name (sent as SNI) or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| format!("{host:?} is not a valid TLS name"))
}

/// `--insecure`: any certificate is accepted, but the handshake's signatures are still
/// checked against it, so the session is at least consistent.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    //! Both ends of the layer on a Unix socket pair, non-blocking, driven by hand the way
    //! the core drives them: the handshake, plaintext both ways, a large write that fills
    //! the socket, close_notify, and a certificate that is not trusted.
    use super::*;
    use mio::net::UnixStream;

    type End = TlsStream<UnixStream>;

    /// A self-signed certificate for `localhost` and a server configuration with it.
    fn server_side() -> (CertificateDer<'static>, Arc<rustls::ServerConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (der.clone(), server_config_from(vec![der], key).unwrap())
    }

    fn client_trusting(cert: &CertificateDer<'static>) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A client with `client` and a server with a fresh certificate, on a socket pair.
    fn pair(client: Arc<ClientConfig>) -> (End, End) {
        ends(client, server_side().1)
    }

    /// A client that trusts the server's certificate, and that server.
    fn trusted_pair() -> (End, End) {
        let (cert, server) = server_side();
        ends(client_trusting(&cert), server)
    }

    fn ends(client: Arc<ClientConfig>, server: Arc<rustls::ServerConfig>) -> (End, End) {
        let (a, b) = UnixStream::pair().unwrap();
        let name = server_name("localhost").unwrap();
        (
            TlsStream::client(a, client, name).unwrap(),
            TlsStream::server(b, server).unwrap(),
        )
    }

    /// Turns both ends as a loop would (send what waits, read what came) until `done`.
    fn pump(a: &mut End, b: &mut End, mut done: impl FnMut(&End, &End) -> bool) {
        let mut sink = [0u8; 4096];
        for _ in 0..100 {
            if done(a, b) {
                return;
            }
            for end in [&mut *a, &mut *b] {
                end.send_records().unwrap();
                match end.read(&mut sink) {
                    Ok(0) => {}
                    Ok(n) => panic!("unexpected plaintext: {n} bytes"),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        panic!("did not get there");
    }

    fn read_all(end: &mut End, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            match end.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if got.len() >= want {
                break;
            }
        }
        got
    }

    /// The handshake completes over non-blocking sockets, plaintext crosses both ways,
    /// and close_notify reads as the end of the stream.
    #[test]
    fn handshake_data_and_close() {
        let (mut client, mut server) = trusted_pair();
        assert!(client.wants_write(), "the ClientHello waits from the start");
        pump(&mut client, &mut server, |c, s| {
            !c.is_handshaking() && !s.is_handshaking()
        });
        assert_eq!(client.write(b"GET / HTTP/1.1\r\n\r\n").unwrap(), 18);
        assert_eq!(read_all(&mut server, 18), b"GET / HTTP/1.1\r\n\r\n");
        server.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        server.close_notify().unwrap();
        assert_eq!(read_all(&mut client, 17), b"HTTP/1.1 200 OK\r\n");
        let mut buf = [0u8; 16];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "close_notify is EOF");
    }

    /// A megabyte written through a socket that takes less: the layer refuses plaintext
    /// (WouldBlock) while ciphertext waits, and everything arrives in order.
    #[test]
    fn large_write_under_backpressure() {
        let (mut client, mut server) = trusted_pair();
        pump(&mut client, &mut server, |c, s| {
            !c.is_handshaking() && !s.is_handshaking()
        });
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::new());
        // Nobody reads yet: the socket fills and the layer says so.
        let blocked = loop {
            match client.write(&data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) => panic!("{e}"),
            }
            if sent == data.len() {
                break false;
            }
        };
        assert!(
            blocked && client.wants_write(),
            "the socket filled before 1 MB"
        );
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < data.len() {
            if sent < data.len() {
                match client.write(&data[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            } else {
                client.send_records().unwrap();
            }
            match server.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, data);
        assert!(!client.wants_write());
    }

    /// A write larger than rustls takes in one call (its 64 KiB of records) is taken
    /// whole while the socket has room: a short count means the socket is full, never
    /// that rustls's buffer was (the core would wait for a WRITABLE edge that never comes).
    #[test]
    fn a_short_write_means_the_socket_is_full() {
        let (mut client, mut server) = trusted_pair();
        pump(&mut client, &mut server, |c, s| {
            !c.is_handshaking() && !s.is_handshaking()
        });
        let data = vec![7u8; 150_000];
        let half = IoSlice::new(&data[..75_000]);
        let other = IoSlice::new(&data[75_000..]);
        let n = server.write_vectored(&[half, other]).unwrap();
        assert!(
            n == data.len() || server.wants_write(),
            "took {n} of {} with the socket not full",
            data.len()
        );
        let mut sent = n;
        while sent < data.len() {
            server.send_records().unwrap();
            let _ = read_all(&mut client, 0);
            match server.write(&data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A server whose certificate is not trusted fails the handshake with a TLS error
    /// that says why.
    #[test]
    fn untrusted_certificate_is_refused() {
        let (other, _) = server_side();
        let (mut client, mut server) = pair(client_trusting(&other));
        let mut sink = [0u8; 64];
        let mut error = None;
        for _ in 0..100 {
            client.send_records().unwrap();
            let _ = server.read(&mut sink);
            let _ = server.send_records();
            match client.read(&mut sink) {
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    error = Some(e);
                    break;
                }
                _ => {}
            }
        }
        let error = error.expect("the handshake fails");
        assert!(
            error.to_string().contains("invalid peer certificate"),
            "{error}"
        );
    }

    /// `--insecure` accepts a certificate nobody vouches for.
    #[test]
    fn insecure_accepts_any_certificate() {
        let config = client_config(&ClientTlsOptions {
            cacert: None,
            insecure: true,
        })
        .unwrap();
        let (mut client, mut server) = pair(config);
        pump(&mut client, &mut server, |c, s| {
            !c.is_handshaking() && !s.is_handshaking()
        });
    }
}
