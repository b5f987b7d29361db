//! Criterion benches of the echo path, the quick regression signal for issue 8: round trips
//! per second through the in-process server over loopback with 1, 50 and 500 connections
//! (64-byte messages, one in flight per connection), 16 pipelined per connection, and with
//! 50 active connections while 0, 1,000 or 10,000 idle ones are open. Throughput is in
//! messages echoed (`Throughput::Elements`). The side-by-side comparison with tokio, with
//! CPU and syscall counts, is `benches/compare/run.sh`.
//!
//! Idle connections are held by a child process (this binary, re-executed with
//! `MULTICONN_BENCH_IDLE_HOLDER` set): the process fd limit (20,000 here) cannot hold both
//! ends of 10,000 connections plus the server's.

mod common;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use multiconn::protocol::echo::Echo;
use multiconn::{ListenAddr, Server, ServerConfig, ServerHandle, Stats};

use common::{hold_idle_connections, EchoDriver, IdleHolder, IDLE_HOLDER_ENV};

/// Bytes per message, as in the measurements.
const MESSAGE_SIZE: usize = 64;
/// Active connections in the pipelined and idle-connection benches.
const ACTIVE: usize = 50;
/// Messages written together per connection in the pipelined bench.
const PIPELINE_DEPTH: usize = 16;

/// An in-process echo server on 127.0.0.1:0, stopped on drop.
struct BenchServer {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<std::io::Result<Stats>>>,
}

impl BenchServer {
    fn start() -> BenchServer {
        let mut config = ServerConfig::new(ListenAddr::Tcp(([127, 0, 0, 1], 0).into()));
        // 10,000 idle plus the active ones: above the default cap of 10,000.
        config.limits.max_connections = 20_000;
        let server = Server::bind(config, Echo).expect("bind 127.0.0.1:0");
        let (addr, handle, thread) = server.spawn().unwrap();
        let ListenAddr::Tcp(addr) = addr else {
            unreachable!("bound a TCP address")
        };
        BenchServer {
            addr,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        self.handle.stop_now();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Benchmarks `conns` connections each with `depth` messages in flight; one criterion
/// iteration is one batch of `depth` messages.
fn bench_driver(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    addr: SocketAddr,
    conns: usize,
    depth: usize,
) {
    let mut driver = EchoDriver::connect(addr, conns, MESSAGE_SIZE, depth).expect("connect driver");
    // Every connection once through the server before timing starts.
    driver.run(conns as u64 * 4).expect("warm-up round trips");
    group.throughput(Throughput::Elements(depth as u64));
    group.bench_function(id, |b| {
        b.iter_custom(|batches| driver.run(batches).expect("echo round trips"))
    });
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    // Every sample runs the same number of batches, so all connections are busy in each.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group
}

fn round_trips(c: &mut Criterion) {
    let mut group = configure(c, "echo_64B");
    for conns in [1, 50, 500] {
        let server = BenchServer::start();
        bench_driver(
            &mut group,
            BenchmarkId::new("connections", conns),
            server.addr,
            conns,
            1,
        );
    }
    group.finish();
}

fn pipelined(c: &mut Criterion) {
    let mut group = configure(c, "echo_64B_pipelined_16");
    let server = BenchServer::start();
    bench_driver(
        &mut group,
        BenchmarkId::new("connections", ACTIVE),
        server.addr,
        ACTIVE,
        PIPELINE_DEPTH,
    );
    group.finish();
}

fn with_idle(c: &mut Criterion) {
    let mut group = configure(c, "echo_64B_50_active");
    for idle in [0, 1_000, 10_000] {
        let server = BenchServer::start();
        let holder = (idle > 0)
            .then(|| IdleHolder::start(server.addr, idle).expect("start the idle holder"));
        bench_driver(
            &mut group,
            BenchmarkId::new("idle", idle),
            server.addr,
            ACTIVE,
            1,
        );
        drop(holder);
    }
    group.finish();
}

fn main() {
    if let Ok(spec) = std::env::var(IDLE_HOLDER_ENV) {
        if let Err(e) = hold_idle_connections(&spec) {
            eprintln!("error: idle holder: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    round_trips(&mut c);
    pipelined(&mut c);
    with_idle(&mut c);
    c.final_summary();
}
