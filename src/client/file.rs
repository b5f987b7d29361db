//! The file-transfer client: `run_file_load` has NUM_CONNS connections on the client loop
//! each download one path (a load test of `--protocol file`); `download` fetches it once
//! into a writer (`-o OUT`). Both are one client protocol, which checks the byte count
//! against the server's `OK <size>` header and hands the bytes to a sink.

use std::fmt;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::driver::{client_timeouts, Client, Driver, Endpoint};
use crate::config::Timeouts;
use crate::connection::{Ended, Failure};
use crate::launch::describe;
use crate::net::Peer;
use crate::protocol::line::{next_line, Line};
use crate::protocol::{ByteStr, Flow, Output, Protocol};

/// The longest reply header accepted, in bytes. The server's are short (`OK <size>`,
/// `ERR <reason>`); anything longer without a line end is not this protocol.
const MAX_HEADER: usize = 1024;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the header line (what arrived of it is held by the connection).
    Header,
    /// Receiving the file: `remaining` of `size` bytes still to come.
    Body { size: u64, remaining: u64 },
}

/// Consumes `data` received by a connection, the file's bytes going to `sink`. Returns
/// the bytes used (an unfinished header line is left to be shown again with more) and,
/// once the whole file is in, its size; bytes past the announced size are an error (the
/// server sends nothing unasked).
fn receive(
    stage: &mut Stage,
    mut data: &[u8],
    sink: &mut dyn Write,
) -> Result<(usize, Option<u64>), DownloadError> {
    let mut used = 0;
    if *stage == Stage::Header {
        match next_line(data, MAX_HEADER) {
            Line::Complete(line, len) => {
                let size = parse_header(line)?;
                *stage = Stage::Body {
                    size,
                    remaining: size,
                };
                used = len;
                data = &data[len..];
            }
            Line::Incomplete => return Ok((0, None)),
            Line::TooLong(_) => {
                return Err(DownloadError::BadReply(format!(
                    "no header line in {MAX_HEADER} bytes"
                )))
            }
        }
    }
    let Stage::Body { size, remaining } = stage else {
        return Ok((used, None));
    };
    if data.len() as u64 > *remaining {
        return Err(DownloadError::BadReply(format!(
            "more than the announced {size} bytes"
        )));
    }
    sink.write_all(data)?;
    *remaining -= data.len() as u64;
    Ok((used + data.len(), (*remaining == 0).then_some(*size)))
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

/// Downloads `path` over one connection, writing the file's bytes to `sink`. Connecting
/// gives up after `io_timeout`, and so does the transfer when nothing moves for as long.
pub fn download(
    addr: &Endpoint,
    path: &[u8],
    sink: &mut dyn Write,
    io_timeout: Duration,
) -> Result<Download, DownloadError> {
    let request = request_line(path)?;
    let started = Instant::now();
    let mut driver = Driver::new(
        Downloads::new(request, sink, io_timeout),
        timeouts(io_timeout),
    )?;
    driver.connect(addr)?;
    driver.run()?;
    let (_, result) = driver
        .into_protocol()
        .results
        .pop()
        .ok_or_else(|| DownloadError::BadReply("the connection was never made".into()))?;
    result.map(|size| Download {
        size,
        elapsed: started.elapsed(),
    })
}

/// A download's connection gives up after `timeout` connecting, or without progress.
fn timeouts(timeout: Duration) -> Timeouts {
    Timeouts {
        idle: Some(timeout),
        ..client_timeouts(timeout, None)
    }
}

fn closed_early(stage: &Stage) -> DownloadError {
    match stage {
        Stage::Header => DownloadError::BadReply("closed before the header".to_string()),
        Stage::Body { size, remaining } => DownloadError::Short {
            expected: *size,
            received: size - remaining,
        },
    }
}

/// A load test: `connections` concurrent downloads of `path`.
#[derive(Debug, Clone)]
pub struct FileLoadConfig {
    pub addr: Endpoint,
    pub connections: usize,
    /// Relative to the server's root, as bytes (paths need not be UTF-8).
    pub path: Vec<u8>,
    /// A connection fails when it makes no progress for this long (a large file may take
    /// much longer in all), or cannot connect within it.
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

/// Downloads as a client protocol: every connection sends the one request line and
/// receives one file into the sink.
struct Downloads<'a> {
    request: Vec<u8>,
    sink: &'a mut dyn Write,
    timeout: Duration,
    opened: usize,
    /// File bytes received over all connections, complete or not.
    bytes: u64,
    /// (connection number, its size or why it failed), in the order they ended.
    results: Vec<(usize, Result<u64, DownloadError>)>,
}

/// One connection's download.
struct Transfer {
    number: usize,
    stage: Stage,
    /// Known once complete, or once the protocol saw it fail.
    result: Option<Result<u64, DownloadError>>,
}

impl<'a> Downloads<'a> {
    fn new(request: Vec<u8>, sink: &'a mut dyn Write, timeout: Duration) -> Self {
        Downloads {
            request,
            sink,
            timeout,
            opened: 0,
            bytes: 0,
            results: Vec::new(),
        }
    }
}

impl Protocol for Downloads<'_> {
    type Session = Transfer;

    fn open(&mut self, _: &Peer, out: &mut Output<'_>) -> Transfer {
        self.opened += 1;
        out.send(&self.request);
        Transfer {
            number: self.opened,
            stage: Stage::Header,
            result: None,
        }
    }

    fn on_input(
        &mut self,
        transfer: &mut Transfer,
        input: &[u8],
        _: &mut Output<'_>,
    ) -> (usize, Flow) {
        let before = match transfer.stage {
            Stage::Header => None,
            Stage::Body { remaining, .. } => Some(remaining),
        };
        let received = receive(&mut transfer.stage, input, &mut *self.sink);
        if let Stage::Body { size, remaining } = transfer.stage {
            self.bytes += before.unwrap_or(size) - remaining;
        }
        match received {
            Ok((used, None)) => (used, Flow::Continue),
            Ok((used, Some(size))) => {
                transfer.result = Some(Ok(size));
                (used, Flow::Close)
            }
            Err(e) => {
                transfer.result = Some(Err(e));
                (input.len(), Flow::Close)
            }
        }
    }

    fn on_eof(&mut self, transfer: &mut Transfer, _: &[u8], _: &mut Output<'_>) {
        if transfer.result.is_none() {
            transfer.result = Some(Err(closed_early(&transfer.stage)));
        }
    }

    fn max_pending_input(&self) -> usize {
        // Only an unfinished header line is kept; `receive` refuses a longer one itself.
        MAX_HEADER + 1
    }
}

impl Client for Downloads<'_> {
    fn on_ended(&mut self, ended: Ended<Transfer>) {
        let transfer = ended.session;
        let result = transfer.result.unwrap_or_else(|| {
            Err(match ended.error {
                Some(Failure { error, .. }) => DownloadError::Io(error),
                None => {
                    let got = match transfer.stage {
                        Stage::Header => "no header yet".to_string(),
                        Stage::Body { size, remaining } => {
                            format!("{} of {size} bytes", size - remaining)
                        }
                    };
                    DownloadError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no progress for {:?}, with {got}", self.timeout),
                    ))
                }
            })
        });
        self.results.push((transfer.number, result));
    }
}

/// Runs `config.connections` downloads of `config.path` at once on one loop, counting
/// and checking the bytes (they are not kept). Fails only if the poll itself fails; each
/// connection's failure is in the report.
pub fn run_file_load(config: &FileLoadConfig) -> io::Result<FileLoadReport> {
    let request = match request_line(&config.path) {
        Ok(r) => r,
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())),
    };
    let started = Instant::now();
    let mut sink = io::sink();
    let mut driver = Driver::new(
        Downloads::new(request, &mut sink, config.timeout),
        timeouts(config.timeout),
    )?;
    for _ in 0..config.connections {
        driver.connect(&config.addr)?;
    }
    driver.run()?;
    let downloads = driver.into_protocol();
    let mut report = FileLoadReport {
        connections: config.connections,
        bytes: downloads.bytes,
        elapsed: started.elapsed(),
        ..FileLoadReport::default()
    };
    for (number, result) in downloads.results {
        match result {
            Ok(size) if report.size.is_some_and(|s| s != size) => report.failures.push((
                number,
                format!("got {size} bytes where others got {:?}", report.size),
            )),
            Ok(size) => {
                report.size = Some(size);
                report.completed += 1;
            }
            Err(e) => report.failures.push((number, e.to_string())),
        }
    }
    report.failures.sort_by_key(|(number, _)| *number);
    Ok(report)
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

    /// A reply split at every point is received the same (what is not used is shown
    /// again with the rest, as the connection does), and its end is detected.
    #[test]
    fn receive_at_every_split() {
        let reply = b"OK 5\r\nhello";
        for split in 0..=reply.len() {
            let mut stage = Stage::Header;
            let mut sink = Vec::new();
            let (used, first) = receive(&mut stage, &reply[..split], &mut sink).unwrap();
            let rest = &reply[used..];
            let (used_rest, second) = receive(&mut stage, rest, &mut sink).unwrap();
            assert_eq!(used_rest, rest.len(), "split at {split}");
            assert_eq!(first.or(second), Some(5), "split at {split}");
            assert_eq!(sink, b"hello");
        }
        let mut stage = Stage::Header;
        assert!(matches!(
            receive(&mut stage, b"OK 2\nabc", &mut Vec::new()),
            Err(DownloadError::BadReply(_))
        ));
        let mut stage = Stage::Header;
        assert!(matches!(
            receive(&mut stage, &[b'O'; MAX_HEADER + 2], &mut Vec::new()),
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
