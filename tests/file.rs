//! File transfer over real sockets: exact replies, the root as a security boundary, a
//! 100 MiB download that is byte-identical while the server's memory stays flat, two
//! downloads sharing the loop, a request followed by FIN, and the client library.

mod child_server;
mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use child_server::ChildServer;
use common::{pseudo_random_bytes, read_exact, read_to_end, write_all, TestServer, IO_TIMEOUT};
use multiconn::client::file::{download, run_file_load, DownloadError, FileLoadConfig};
use multiconn::protocol::file::{FileServer, CHUNK};

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("multiconn-file-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn root(&self) -> PathBuf {
        self.0.join("root")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `root/` with `small`, `sub/`, a link leading out (`escape` → `../secret`), a linked
/// directory leading out (`outdir` → `..`), and `secret` next to the root.
fn fixture(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    let root = dir.root();
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("small"), b"hello file\n").unwrap();
    fs::write(dir.0.join("secret"), b"secret\n").unwrap();
    symlink(dir.0.join("secret"), root.join("escape")).unwrap();
    symlink(&dir.0, root.join("outdir")).unwrap();
    dir
}

fn serve(root: &Path) -> TestServer {
    TestServer::start(FileServer::new(root).unwrap(), |_| {})
}

/// FNV-1a over 64-bit words: a checksum that sees every byte, computed the same way for
/// the file and for what arrived.
struct Checksum {
    hash: u64,
    len: u64,
    /// Bytes that did not fill a word yet.
    tail: Vec<u8>,
}

impl Checksum {
    fn new() -> Self {
        Checksum {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
            tail: Vec::new(),
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let take = (8 - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() == 8 {
                let word = std::mem::take(&mut self.tail);
                self.mix(&word);
            }
        }
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            self.mix(word);
        }
        self.tail.extend_from_slice(words.remainder());
    }

    fn mix(&mut self, word: &[u8]) {
        let word = u64::from_le_bytes(word.try_into().unwrap());
        self.hash = (self.hash ^ word).wrapping_mul(0x100_0000_01b3);
    }

    fn finish(mut self) -> (u64, u64) {
        let tail = std::mem::take(&mut self.tail);
        for &b in &tail {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        (self.hash, self.len)
    }
}

/// Replies are exact, and the connection stays open for the next request.
#[test]
fn replies_are_exact_and_the_connection_is_kept() {
    let dir = fixture("exact");
    let server = serve(&dir.root());
    let mut conn = server.connect();
    write_all(&mut conn, b"small\n");
    assert_eq!(read_exact(&mut conn, 17), b"OK 11\nhello file\n");
    write_all(&mut conn, b"missing\r\n");
    assert_eq!(read_exact(&mut conn, 14), b"ERR not found\n");
    write_all(&mut conn, b"sub\n");
    assert_eq!(read_exact(&mut conn, 23), b"ERR not a regular file\n");
    write_all(&mut conn, b"./sub/../small\n");
    assert_eq!(read_exact(&mut conn, 25), b"ERR `..` is not accepted\n");
    // Pipelined: three requests in one write, three answers in order.
    write_all(&mut conn, b"small\nnope\nsmall\n");
    let want = b"OK 11\nhello file\nERR not found\nOK 11\nhello file\n";
    assert_eq!(read_exact(&mut conn, want.len()), want);
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut conn), b"", "nothing more, then EOF");
    assert_eq!(server.stop().requests, 7);
}

/// Every way out of the root is refused: `..`, absolute paths, a symlink to a file
/// outside, a path through a symlinked directory outside; odd bytes do not hurt.
#[test]
fn traversal_is_refused() {
    let dir = fixture("traversal");
    let server = serve(&dir.root());
    let mut conn = server.connect();
    let outside = b"ERR outside the root\n";
    let secret_abs = dir.0.join("secret");
    let cases: [&[u8]; 6] = [
        b"../secret",
        b"sub/../../secret",
        b"/etc/passwd",
        secret_abs.to_str().unwrap().as_bytes(),
        b"escape",
        b"outdir/secret",
    ];
    for path in cases {
        write_all(&mut conn, &[path, b"\n"].concat());
        assert_eq!(
            read_exact(&mut conn, outside.len()),
            outside,
            "{}",
            String::from_utf8_lossy(path)
        );
    }
    write_all(&mut conn, b"sm\0all\n");
    assert_eq!(read_exact(&mut conn, 17), b"ERR invalid path\n");
    // `..` that stays inside is refused too, saying so.
    write_all(&mut conn, b"\xff\xfe/..\n");
    assert_eq!(read_exact(&mut conn, 25), b"ERR `..` is not accepted\n");
    write_all(&mut conn, b"\xff\xfe\n");
    assert_eq!(read_exact(&mut conn, 14), b"ERR not found\n");
    // Still serving after all that.
    write_all(&mut conn, b"small\n");
    assert_eq!(read_exact(&mut conn, 17), b"OK 11\nhello file\n");
}

/// A missing file, a directory, a FIFO and a dangling link each get their `ERR` line, and
/// the FIFO is never opened (which would block the loop).
#[test]
fn missing_and_not_regular() {
    let dir = fixture("irregular");
    let fifo = dir.root().join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    symlink("nowhere", dir.root().join("dangling")).unwrap();
    let server = serve(&dir.root());
    let mut conn = server.connect();
    let cases: [(&[u8], &[u8]); 6] = [
        (b"missing", b"ERR not found\n"),
        (b"sub/missing", b"ERR not found\n"),
        (b"small/child", b"ERR not found\n"),
        (b"dangling", b"ERR not found\n"),
        (b"sub", b"ERR not a regular file\n"),
        (b"fifo", b"ERR not a regular file\n"),
    ];
    for (path, reply) in cases {
        write_all(&mut conn, &[path, b"\n"].concat());
        assert_eq!(
            read_exact(&mut conn, reply.len()),
            reply,
            "{}",
            String::from_utf8_lossy(path)
        );
    }
}

/// A 100 MiB file downloaded from the real server binary arrives byte-identical, and the
/// server's resident memory stays within a few MiB of what it was before the download.
#[test]
fn hundred_mib_download_is_identical_and_memory_stays_flat() {
    const SIZE: usize = 100 * 1024 * 1024;
    const ALLOWED_GROWTH_KIB: u64 = 4 * 1024;
    let dir = fixture("big");
    let expected = {
        let content = pseudo_random_bytes(0x5eed, SIZE);
        fs::write(dir.root().join("big"), &content).unwrap();
        let mut sum = Checksum::new();
        sum.update(&content);
        sum.finish()
    };
    let root = dir.root();
    let server = ChildServer::start(&["--protocol", "file", "--root", root.to_str().unwrap()]);
    // Warm up: the loop's buffers are allocated by a first, small transfer.
    let mut warm = Vec::new();
    download(&server.addr.into(), b"small", &mut warm, IO_TIMEOUT).unwrap();
    assert_eq!(warm, b"hello file\n");
    let baseline = server.rss_kib();

    /// Hashes what arrives and samples the server's RSS after every MiB.
    struct Watch<'a> {
        sum: Checksum,
        server: &'a ChildServer,
        next_sample: u64,
        peak_kib: u64,
        samples: usize,
    }
    impl Write for Watch<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sum.update(buf);
            if self.sum.len >= self.next_sample {
                self.peak_kib = self.peak_kib.max(self.server.rss_kib());
                self.samples += 1;
                self.next_sample += 1024 * 1024;
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut watch = Watch {
        sum: Checksum::new(),
        server: &server,
        next_sample: 1024 * 1024,
        peak_kib: baseline,
        samples: 0,
    };
    let done = download(&server.addr.into(), b"big", &mut watch, IO_TIMEOUT).unwrap();
    assert_eq!(done.size, SIZE as u64);
    let (peak, samples) = (watch.peak_kib, watch.samples);
    assert_eq!(
        watch.sum.finish(),
        expected,
        "checksum and length of what arrived"
    );
    eprintln!(
        "server VmRSS: {baseline} KiB before, peak {peak} KiB over {samples} samples, {:.1} MiB/s",
        done.rate() / (1024.0 * 1024.0)
    );
    assert!(samples >= 100, "sampled {samples} times");
    assert!(
        peak <= baseline + ALLOWED_GROWTH_KIB,
        "server RSS grew from {baseline} KiB to {peak} KiB while sending 100 MiB"
    );
}

/// The loop holds at most about two chunks for a transfer, whatever the file's size.
#[test]
fn queued_output_stays_at_a_couple_of_chunks() {
    let dir = fixture("peak");
    fs::write(
        dir.root().join("big"),
        pseudo_random_bytes(7, 16 * 1024 * 1024),
    )
    .unwrap();
    let server = serve(&dir.root());
    let done = download(&server.addr.into(), b"big", &mut io::sink(), IO_TIMEOUT).unwrap();
    assert_eq!(done.size, 16 * 1024 * 1024);
    let stats = server.stop();
    // The loop asks for a chunk when at most 64 KiB (one chunk) is queued.
    assert!(
        stats.peak_outbound <= 2 * CHUNK + 64,
        "peak {}",
        stats.peak_outbound
    );
}

/// Two downloads at once share the loop: read in lockstep, a bit from one then a bit from
/// the other, both advance before either finishes. A server that served one to the end
/// first would leave the other's read waiting (and the test would fail on its timeout).
#[test]
fn two_downloads_interleave() {
    const SIZE: usize = 32 * 1024 * 1024;
    const STEP: usize = 64 * 1024;
    let dir = fixture("two");
    let content = pseudo_random_bytes(11, SIZE);
    fs::write(dir.root().join("big"), &content).unwrap();
    let server = serve(&dir.root());
    let mut conns = [small_window_conn(&server), small_window_conn(&server)];
    for conn in conns.iter_mut() {
        write_all(conn, b"big\n");
    }
    let header = format!("OK {SIZE}\n");
    for conn in conns.iter_mut() {
        assert_eq!(read_exact(conn, header.len()), header.as_bytes());
    }
    let mut received = [0usize; 2];
    let mut other_at_first_finish = None;
    while received.iter().any(|&r| r < SIZE) {
        for i in 0..2 {
            if received[i] == SIZE {
                continue;
            }
            let n = STEP.min(SIZE - received[i]);
            let got = read_exact(&mut conns[i], n);
            assert!(
                got == content[received[i]..received[i] + n],
                "connection {i} at {}",
                received[i]
            );
            received[i] += n;
            if received[i] == SIZE && other_at_first_finish.is_none() {
                other_at_first_finish = Some(received[1 - i]);
            }
        }
    }
    let other = other_at_first_finish.unwrap();
    assert!(
        other >= SIZE - STEP,
        "the other download was at {other} of {SIZE}"
    );
}

/// A client socket with a small receive window, so the kernel buffers little of a transfer
/// and the server must keep switching between connections.
fn small_window_conn(server: &TestServer) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A client that sends its request and at once shuts down its write side (`nc -N`) still
/// receives the whole file before the server closes.
#[test]
fn request_then_fin_gets_the_whole_file() {
    let dir = fixture("fin");
    let content = pseudo_random_bytes(3, 4 * 1024 * 1024 + 17);
    fs::write(dir.root().join("big"), &content).unwrap();
    let server = serve(&dir.root());
    let mut conn = server.connect();
    write_all(&mut conn, b"big\nsmall\n");
    conn.shutdown(Shutdown::Write).unwrap();
    let got = read_to_end(&mut conn);
    let want = [
        format!("OK {}\n", content.len()).as_bytes(),
        &content,
        b"OK 11\nhello file\n",
    ]
    .concat();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "content differs");
}

/// The client library: eight concurrent downloads complete with the right byte count.
#[test]
fn client_load_downloads_concurrently() {
    let dir = fixture("load");
    fs::write(dir.root().join("mib"), pseudo_random_bytes(5, 1024 * 1024)).unwrap();
    let server = serve(&dir.root());
    let config = FileLoadConfig {
        addr: server.addr.into(),
        connections: 8,
        path: b"mib".to_vec(),
        timeout: IO_TIMEOUT,
    };
    let report = run_file_load(&config).unwrap();
    assert!(report.is_success(), "{report}: {:?}", report.failures);
    assert_eq!(
        (report.completed, report.size, report.bytes),
        (8, Some(1024 * 1024), 8 * 1024 * 1024)
    );
    assert!(report.rate() > 0.0);
    assert_eq!(server.stop().requests, 8);
}

/// The client library reports the server's refusal on every connection.
#[test]
fn client_load_reports_refusals() {
    let dir = fixture("refused");
    let server = serve(&dir.root());
    let config = FileLoadConfig {
        addr: server.addr.into(),
        connections: 2,
        path: b"../secret".to_vec(),
        timeout: IO_TIMEOUT,
    };
    let report = run_file_load(&config).unwrap();
    assert!(!report.is_success());
    let reasons: Vec<_> = report
        .failures
        .iter()
        .map(|(n, r)| (*n, r.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (1, "server refused: outside the root"),
            (2, "server refused: outside the root")
        ]
    );
    let err = download(&server.addr.into(), b"missing", &mut Vec::new(), IO_TIMEOUT).unwrap_err();
    assert!(
        matches!(&err, DownloadError::Refused(r) if r == "not found"),
        "{err}"
    );
}

/// A server that closes before sending the announced size is a short transfer, both for
/// the blocking download and for the load test.
#[test]
fn client_detects_short_transfer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut request = [0u8; 5];
            conn.read_exact(&mut request).unwrap();
            assert_eq!(&request, b"file\n");
            conn.write_all(b"OK 100\n").unwrap();
            conn.write_all(&[b'x'; 50]).unwrap();
        }
    });
    let err = download(&addr.into(), b"file", &mut Vec::new(), IO_TIMEOUT).unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Short {
                expected: 100,
                received: 50
            }
        ),
        "{err}"
    );
    let report = run_file_load(&FileLoadConfig {
        addr: addr.into(),
        connections: 1,
        path: b"file".to_vec(),
        timeout: IO_TIMEOUT,
    })
    .unwrap();
    fake.join().unwrap();
    assert_eq!(report.completed, 0);
    assert_eq!(report.bytes, 50);
    assert_eq!(
        report.failures,
        [(
            1,
            "short transfer: 50 of 100 bytes before the server closed".to_string()
        )]
    );
}

/// `--protocol file` without `--root` is a usage error (exit 2); an unusable `--root` is
/// one error line and exit code 1.
#[test]
fn server_binary_requires_a_readable_root() {
    let dir = fixture("flags");
    let small = dir.root().join("small");
    let missing = dir.0.join("missing");
    let cases = [
        (
            vec!["--protocol", "file"],
            "error: --protocol file needs --root DIR\n".to_string(),
            2,
        ),
        (
            vec!["--protocol", "file", "--root", missing.to_str().unwrap()],
            format!(
                "error: cannot serve files from {}: No such file or directory\n",
                missing.display()
            ),
            1,
        ),
        (
            vec!["--protocol", "file", "--root", small.to_str().unwrap()],
            format!(
                "error: cannot serve files from {}: not a directory\n",
                small.display()
            ),
            1,
        ),
    ];
    for (args, want, code) in cases {
        let mut all = args.clone();
        all.extend(["127.0.0.1", "0"]);
        let mut child = common::spawn_bin("multiconn-server", &all);
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(
            (status.code(), err.as_str()),
            (Some(code), want.as_str()),
            "{args:?}"
        );
    }
}

/// The client binary: `--protocol file --path P -o OUT` writes the file byte for byte;
/// without `-o` every connection downloads it; a refused path is an error line and exit 1.
#[test]
fn client_binary_downloads() {
    let dir = fixture("client-binary");
    let content = pseudo_random_bytes(21, 3 * CHUNK + 17);
    fs::write(dir.root().join("data"), &content).unwrap();
    let server = serve(&dir.root());
    let port = server.addr.port().to_string();
    let out_path = dir.0.join("downloaded");
    let out = out_path.to_str().unwrap();

    let run = |args: &[&str]| {
        let mut all = vec!["127.0.0.1", port.as_str()];
        all.extend_from_slice(args);
        common::spawn_bin("multiconn-client", &all)
            .wait_with_output()
            .unwrap()
    };
    let result = run(&["1", "--protocol", "file", "--path", "data", "-o", out]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        fs::read(&out_path).unwrap() == content,
        "downloaded file differs"
    );
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        stdout.starts_with(&format!("data: {} bytes in ", content.len())),
        "{stdout}"
    );

    let result = run(&["3", "--protocol", "file", "--path", "data"]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        stdout.starts_with(&format!(
            "data: 3 of 3 downloads complete ({} bytes each)",
            content.len()
        )),
        "{stdout}"
    );

    let result = run(&["1", "--protocol", "file", "--path", "../secret", "-o", out]);
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(
        stderr.trim(),
        "error: ../secret: server refused: outside the root"
    );

    let result = run(&["2", "--protocol", "file", "--path", "data", "-o", out]);
    assert_eq!(result.status.code(), Some(2), "-o takes one connection");
    assert_eq!(
        server.stop().requests,
        5,
        "1 + 3 downloads and the refused request"
    );
}

/// A file that shrinks while sendfile is sending it ends the connection short: the client
/// gets fewer bytes than `OK` promised, then EOF. What is still the file is the file's
/// bytes; what the socket already held past the new end refers to pages the truncation
/// emptied (sendfile sends pages, not copies: nginx's clients see the same).
#[test]
fn file_shrinking_during_sendfile_closes_short() {
    const SIZE: usize = 32 * 1024 * 1024;
    let dir = fixture("shrink");
    let content = pseudo_random_bytes(9, SIZE);
    fs::write(dir.root().join("big"), &content).unwrap();
    let server = serve(&dir.root());
    let mut conn = small_window_conn(&server);
    write_all(&mut conn, b"big\n");
    let header = format!("OK {SIZE}\n");
    assert_eq!(read_exact(&mut conn, header.len()), header.as_bytes());
    // Some of it has come, the rest waits on our window; now most of the file goes.
    let start = read_exact(&mut conn, 64 * 1024);
    assert!(start == content[..64 * 1024]);
    fs::OpenOptions::new()
        .write(true)
        .open(dir.root().join("big"))
        .and_then(|f| f.set_len(1024 * 1024))
        .unwrap();
    let rest = read_to_end(&mut conn);
    let got = start.len() + rest.len();
    assert!(got < SIZE, "{got} bytes of a {SIZE}-byte promise");
    let came = [start, rest].concat();
    let kept = got.min(1024 * 1024);
    let first_wrong = came[..kept].iter().zip(&content).position(|(a, b)| a != b);
    assert_eq!(
        first_wrong, None,
        "what came is the file's ({got} bytes came)"
    );
}
