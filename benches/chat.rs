//! Chat broadcast fan-out: one sender, 100 and 1,000 receivers on the in-process chat
//! server. Each iteration the sender writes a burst of lines (1: every line is its own
//! broadcast; 100: the lines of one read share chunks) and waits until every receiver has
//! every line; throughput is lines delivered (lines x receivers) per second.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mio::{Events, Interest, Poll, Token, Waker};
use multiconn::protocol::chat::Chat;
use multiconn::{ListenAddr, Server, ServerConfig};

/// Lines the sender writes per iteration, in one write.
const BURSTS: [usize; 2] = [1, 100];
/// The text of every line (the server adds `[HOST:PORT] ` and `\n`).
const TEXT: &str = "a chat line of moderate length";
/// How long a wait for delivery may take before the bench gives up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes received over all receivers, shared with the thread that reads them.
struct Received {
    bytes: Mutex<u64>,
    changed: Condvar,
}

impl Received {
    /// Blocks until at least `target` bytes have arrived.
    fn wait_for(&self, target: u64) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let mut bytes = self.bytes.lock().expect("lock");
        while *bytes < target {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {target} bytes delivered",
                *bytes
            );
            bytes = self.changed.wait_timeout(bytes, left).expect("lock").0;
        }
    }
}

/// A thread that reads every receiver's socket on one mio loop and counts the bytes.
struct Receivers {
    received: Arc<Received>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Receivers {
    fn start(streams: Vec<TcpStream>) -> io::Result<Receivers> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), Token(usize::MAX))?);
        let mut sockets = Vec::with_capacity(streams.len());
        for (i, stream) in streams.into_iter().enumerate() {
            stream.set_nonblocking(true)?;
            let mut socket = mio::net::TcpStream::from_std(stream);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            sockets.push(socket);
        }
        let received = Arc::new(Received {
            bytes: Mutex::new(0),
            changed: Condvar::new(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || read_all(poll, sockets, &received, &stop))
        };
        Ok(Receivers {
            received,
            stop,
            waker,
            thread: Some(thread),
        })
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_all(
    mut poll: Poll,
    mut sockets: Vec<mio::net::TcpStream>,
    received: &Received,
    stop: &AtomicBool,
) {
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        if poll.poll(&mut events, None).is_err() {
            continue;
        }
        let mut got = 0u64;
        for event in events.iter() {
            let Some(socket) = sockets.get_mut(event.token().0) else {
                continue;
            };
            // Edge-triggered: read until the socket is empty.
            loop {
                match socket.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        if got > 0 {
            *received.bytes.lock().expect("lock") += got;
            received.changed.notify_all();
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// `* ADDR joined\n`, as the server announces `stream`.
fn join_notice_len(stream: &TcpStream) -> u64 {
    format!("* {} joined\n", stream.local_addr().expect("local address")).len() as u64
}

fn fan_out(c: &mut Criterion) {
    let mut config = ServerConfig::new(ListenAddr::Tcp("127.0.0.1:0".parse().expect("address")));
    // Room for many bursts per receiver: the bench measures delivery, not the slow-consumer cut.
    config.limits.max_outbound = 16 * 1024 * 1024;
    let mut group = c.benchmark_group("chat fan-out");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for receivers in [100usize, 1000] {
        let server = Server::bind(config.clone(), Chat::default()).expect("bind 127.0.0.1:0");
        let (addr, handle, thread) = server.spawn().unwrap();
        let ListenAddr::Tcp(addr) = addr else {
            unreachable!("bound to TCP")
        };

        // Receiver j is announced to the j receivers before it; the sender to all of them.
        let streams: Vec<TcpStream> = (0..receivers).map(|_| connect(addr)).collect();
        let mut setup_bytes: u64 = streams
            .iter()
            .enumerate()
            .map(|(j, s)| j as u64 * join_notice_len(s))
            .sum();
        let mut sender = connect(addr);
        setup_bytes += receivers as u64 * join_notice_len(&sender);
        let framed =
            format!("[{}] {TEXT}\n", sender.local_addr().expect("local address")).len() as u64;
        let readers = Receivers::start(streams).expect("receiver loop");
        readers.received.wait_for(setup_bytes);
        let mut delivered_so_far = setup_bytes;

        for lines in BURSTS {
            let burst = format!("{TEXT}\n").repeat(lines);
            let per_burst = (lines * receivers) as u64;
            group.throughput(Throughput::Elements(per_burst));
            let id = BenchmarkId::new(format!("{receivers} receivers, lines per write"), lines);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        sender.write_all(burst.as_bytes()).expect("send burst");
                        delivered_so_far += framed * per_burst;
                        readers.received.wait_for(delivered_so_far);
                    }
                    start.elapsed()
                })
            });
        }
        drop(sender);
        drop(readers);
        handle.stop_now();
        thread.join().expect("server thread").expect("server loop");
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
