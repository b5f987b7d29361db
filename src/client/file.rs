//! The file-transfer client: `run_file_load` has NUM_CONNS connections on a mio loop each
//! download one path (a load test of `--protocol file`); `download` fetches it once into a
//! writer (`-o OUT`). Both check the byte count against the server's `OK <size>` header.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::connect;
use crate::launch::describe;
use crate::protocol::ByteStr;

/// The longest reply header accepted, in bytes. The server's are short (`OK <size>`,
/// `ERR <reason>`); anything longer without a line end is not this protocol.
const MAX_HEADER: usize = 1024;

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 64 * 1024;

/// Why one download failed.
#[derive(Debug)]
pub enum DownloadError {
    /// The path cannot be sent as a request (empty, or contains a line end).
    BadPath,
    /// The server answered `ERR <reason>`.
    Refused(String),
    /// The connection ended before the announced size arrived.
    Short {
        expected: u64,
        received: u64,
    },
    /// The server said something that is not this protocol.
    BadReply(String),
    Io(io::Error),
}

impl fmt::Display for DownloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownloadError::BadPath => f.write_str("the path must be non-empty and on one line"),
            DownloadError::Refused(reason) => write!(f, "server refused: {reason}"),
            DownloadError::Short { expected, received } => write!(
                f,
                "short transfer: {received} of {expected} bytes before the server closed"
            ),
            DownloadError::BadReply(what) => write!(f, "unexpected reply: {what}"),
            DownloadError::Io(e) => f.write_str(&describe(e)),
        }
    }
}

impl std::error::Error for DownloadError {}

impl From<io::Error> for DownloadError {
    fn from(e: io::Error) -> Self {
        DownloadError::Io(e)
    }
}

/// `PATH\n`, the request for `path`.
fn request_line(path: &[u8]) -> Result<Vec<u8>, DownloadError> {
    if path.is_empty() || path.contains(&b'\n') {
        return Err(DownloadError::BadPath);
    }
    let mut line = path.to_vec();
    line.push(b'\n');
    Ok(line)
}

/// Reads the size out of a header line (without its `\n`): `OK <size>` or `ERR <reason>`.
pub fn parse_header(line: &[u8]) -> Result<u64, DownloadError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(reason) = line.strip_prefix(b"ERR ") {
        return Err(DownloadError::Refused(
            String::from_utf8_lossy(reason).into_owned(),
        ));
    }
    line.strip_prefix(b"OK ")
        .and_then(|size| std::str::from_utf8(size).ok())
        .filter(|size| !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|size| size.parse().ok())
        .ok_or_else(|| DownloadError::BadReply(ByteStr(line).to_string()))
}

/// Where a connection is in its download.
#[derive(Debug)]
enum Stage {
    /// Waiting for the header line; holds what arrived of it.
    Header(Vec<u8>),
    /// Receiving the file: `remaining` of `size` bytes still to come.
    Body { size: u64, remaining: u64 },
}

/// Consumes `data` received by a connection. Returns `Some(size)` once the whole file is
/// in; bytes past the announced size are an error (the server sends nothing unasked).
fn receive(
    stage: &mut Stage,
    mut data: &[u8],
    sink: &mut dyn Write,
) -> Result<Option<u64>, DownloadError> {
    if let Stage::Header(header) = stage {
        let Some(end) = data.iter().position(|&b| b == b'\n') else {
            if header.len() + data.len() > MAX_HEADER {
                return Err(DownloadError::BadReply(format!(
                    "no header line in {MAX_HEADER} bytes"
                )));
            }
            header.extend_from_slice(data);
            return Ok(None);
        };
        header.extend_from_slice(&data[..end]);
        let size = parse_header(header)?;
        *stage = Stage::Body {
            size,
            remaining: size,
        };
        data = &data[end + 1..];
    }
    let Stage::Body { size, remaining } = stage else {
        return Ok(None);
    };
    if data.len() as u64 > *remaining {
        return Err(DownloadError::BadReply(format!(
            "more than the announced {size} bytes"
        )));
    }
    sink.write_all(data)?;
    *remaining -= data.len() as u64;
    Ok((*remaining == 0).then_some(*size))
}

/// One finished download.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Download {
    /// Bytes of the file, as announced and received.
    pub size: u64,
    pub elapsed: Duration,
}

impl Download {
    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.size as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Downloads `path` over one blocking connection, writing the file's bytes to `sink`.
/// Every socket operation gives up after `io_timeout`.
pub fn download(
    addr: SocketAddr,
    path: &[u8],
    sink: &mut dyn Write,
    io_timeout: Duration,
) -> Result<Download, DownloadError> {
    let request = request_line(path)?;
    let started = Instant::now();
    let mut stream = StdTcpStream::connect_timeout(&addr, io_timeout)?;
    stream.set_read_timeout(Some(io_timeout))?;
    stream.set_write_timeout(Some(io_timeout))?;
    stream.write_all(&request)?;
    let mut stage = Stage::Header(Vec::new());
    let mut buf = vec![0; READ_CHUNK];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(closed_early(&stage));
        }
        if let Some(size) = receive(&mut stage, &buf[..n], sink)? {
            return Ok(Download {
                size,
                elapsed: started.elapsed(),
            });
        }
    }
}

fn closed_early(stage: &Stage) -> DownloadError {
    match stage {
        Stage::Header(_) => DownloadError::BadReply("closed before the header".to_string()),
        Stage::Body { size, remaining } => DownloadError::Short {
            expected: *size,
            received: size - remaining,
        },
    }
}

/// A load test: `connections` concurrent downloads of `path`.
#[derive(Debug, Clone)]
pub struct FileLoadConfig {
    pub addr: SocketAddr,
    pub connections: usize,
    /// Relative to the server's root, as bytes (paths need not be UTF-8).
    pub path: Vec<u8>,
    /// The run fails when no connection makes progress for this long (a large file may
    /// take much longer in all).
    pub timeout: Duration,
}

/// How the downloads of a load test went.
#[derive(Debug, Default, Clone)]
pub struct FileLoadReport {
    pub connections: usize,
    pub completed: usize,
    /// The size the server announced.
    pub size: Option<u64>,
    /// File bytes received over all connections, complete or not.
    pub bytes: u64,
    pub elapsed: Duration,
    /// (connection number, what went wrong), sorted.
    pub failures: Vec<(usize, String)>,
}

impl FileLoadReport {
    /// File bytes per second over all connections.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Every download completed with the announced size.
    pub fn is_success(&self) -> bool {
        self.failures.is_empty() && self.completed == self.connections
    }
}

impl fmt::Display for FileLoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} downloads complete",
            self.completed, self.connections
        )?;
        if let Some(size) = self.size {
            write!(f, " ({size} bytes each)")?;
        }
        write!(
            f,
            ": {} bytes in {:.3} s, {:.1} MiB/s",
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.rate() / (1024.0 * 1024.0)
        )
    }
}

struct LoadConn {
    number: usize,
    stream: TcpStream,
    connected: bool,
    /// Bytes of the request line already written.
    written: usize,
    stage: Stage,
}

/// Runs `config.connections` downloads of `config.path` at once on one mio loop, counting
/// and checking the bytes (they are not kept). Fails only if the poll itself fails; each
/// connection's failure is in the report.
pub fn run_file_load(config: &FileLoadConfig) -> io::Result<FileLoadReport> {
    let mut report = FileLoadReport {
        connections: config.connections,
        ..FileLoadReport::default()
    };
    let request = match request_line(&config.path) {
        Ok(r) => r,
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())),
    };
    let started = Instant::now();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(256);
    let mut conns = Slab::with_capacity(config.connections);
    for number in 1..=config.connections {
        let entry = conns.vacant_entry();
        let token = Token(entry.key());
        let Some(stream) = connect::start_noting_failure(
            poll.registry(),
            config.addr,
            token,
            number,
            &mut report.failures,
        )?
        else {
            continue;
        };
        entry.insert(LoadConn {
            number,
            stream,
            connected: false,
            written: 0,
            stage: Stage::Header(Vec::new()),
        });
    }
    let mut deadline = started + config.timeout;
    let mut buf = vec![0u8; READ_CHUNK];
    while !conns.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            for (_, conn) in conns.iter() {
                let conn: &LoadConn = conn;
                let got = match conn.stage {
                    Stage::Header(_) => "no header yet".to_string(),
                    Stage::Body { size, remaining } => {
                        format!("{} of {size} bytes", size - remaining)
                    }
                };
                report.failures.push((
                    conn.number,
                    format!("no progress for {:?}, with {got}", config.timeout),
                ));
            }
            break;
        }
        match poll.poll(&mut events, Some(deadline - now)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if !events.is_empty() {
            deadline = Instant::now() + config.timeout;
        }
        for event in events.iter() {
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let mut counted = Counted(0);
            let outcome = serve_load_conn(
                conn,
                event,
                &request,
                &mut buf,
                &mut counted,
                poll.registry(),
            );
            report.bytes += counted.0;
            match outcome {
                Ok(None) => {}
                Ok(Some(size)) => {
                    if report.size.is_some_and(|s| s != size) {
                        report.failures.push((
                            conn.number,
                            format!("got {size} bytes where others got {:?}", report.size),
                        ));
                    } else {
                        report.size = Some(size);
                        report.completed += 1;
                    }
                    conns.remove(key);
                }
                Err(e) => {
                    report.failures.push((conn.number, e.to_string()));
                    conns.remove(key);
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    report.failures.sort_by_key(|(number, _)| *number);
    Ok(report)
}

/// A sink that only counts, for load tests.
struct Counted(u64);

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Handles one event of a load connection: `Some(size)` once its download is complete.
fn serve_load_conn(
    conn: &mut LoadConn,
    event: &mio::event::Event,
    request: &[u8],
    buf: &mut [u8],
    sink: &mut Counted,
    registry: &mio::Registry,
) -> Result<Option<u64>, DownloadError> {
    if !conn.connected {
        conn.connected = connect::finished(&conn.stream)?;
        if !conn.connected {
            return Ok(None);
        }
    }
    if conn.written < request.len() {
        loop {
            match conn.stream.write(&request[conn.written..]) {
                Ok(n) => {
                    conn.written += n;
                    if conn.written == request.len() {
                        // Everything sent: only reading is left.
                        registry.reregister(&mut conn.stream, event.token(), Interest::READABLE)?;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        loop {
            match conn.stream.read(buf) {
                Ok(0) => return Err(closed_early(&conn.stage)),
                Ok(n) => {
                    if let Some(size) = receive(&mut conn.stage, &buf[..n], sink)? {
                        return Ok(Some(size));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers parse to a size, a refusal, or a bad reply.
    #[test]
    fn headers() {
        assert_eq!(parse_header(b"OK 0").unwrap(), 0);
        assert_eq!(parse_header(b"OK 104857600\r").unwrap(), 104_857_600);
        assert!(
            matches!(parse_header(b"ERR not found"), Err(DownloadError::Refused(r)) if r == "not found")
        );
        for bad in [
            &b"OK"[..],
            b"OK ",
            b"OK -1",
            b"OK +1",
            b"OK 1 2",
            b"ok 1",
            b"HTTP/1.1 200 OK",
            b"OK 99999999999999999999999",
        ] {
            assert!(
                matches!(parse_header(bad), Err(DownloadError::BadReply(_))),
                "{}",
                ByteStr(bad)
            );
        }
    }

    /// A reply split at every point is received the same, and its end is detected.
    #[test]
    fn receive_at_every_split() {
        let reply = b"OK 5\nhello";
        for split in 0..=reply.len() {
            let mut stage = Stage::Header(Vec::new());
            let mut sink = Vec::new();
            let first = receive(&mut stage, &reply[..split], &mut sink).unwrap();
            let second = receive(&mut stage, &reply[split..], &mut sink).unwrap();
            assert_eq!(first.or(second), Some(5), "split at {split}");
            assert_eq!(sink, b"hello");
        }
        let mut stage = Stage::Header(Vec::new());
        assert!(matches!(
            receive(&mut stage, b"OK 2\nabc", &mut Vec::new()),
            Err(DownloadError::BadReply(_))
        ));
        let mut stage = Stage::Header(Vec::new());
        assert!(matches!(
            receive(&mut stage, &[b'O'; MAX_HEADER + 1], &mut Vec::new()),
            Err(DownloadError::BadReply(_))
        ));
    }

    /// A path that would make two requests, or none, is refused before connecting.
    #[test]
    fn bad_paths() {
        assert!(matches!(request_line(b""), Err(DownloadError::BadPath)));
        assert!(matches!(request_line(b"a\nb"), Err(DownloadError::BadPath)));
        assert_eq!(request_line(b"a b").unwrap(), b"a b\n");
    }
}
