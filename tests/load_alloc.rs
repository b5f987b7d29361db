//! The load generator allocates nothing per request: with a counting global allocator,
//! runs of 2,000 and 22,000 requests allocate the same (fixed) amount. The echo server
//! runs as a separate process so that only the generator's allocations are counted; this
//! file holds one test so that no other test's allocations are counted with it.

mod common;
mod counting_alloc;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;

use common::spawn_bin;
use counting_alloc::{allocations, CountingAllocator};
use multiconn::client::{run_load, LoadConfig, LoadControl, RatePlan, StopAt, Workload};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// `multiconn-server` on a free port, killed when dropped.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the echo server binary and reads the address it listens on from its log.
fn start_server() -> (ServerProcess, SocketAddr) {
    let mut child = spawn_bin("multiconn-server", &["127.0.0.1", "0"]);
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let server = ServerProcess(child);
    let first = log.next().expect("a log line").expect("readable log");
    let addr = first
        .strip_prefix("Listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .expect("an address");
    // Keep draining the log (a line per closed connection) so the server never blocks on it.
    std::thread::spawn(move || log.for_each(drop));
    (server, addr)
}

fn allocations_for(addr: SocketAddr, requests: u64, rate: Option<f64>) -> u64 {
    let mut config = LoadConfig::new(addr, 10, StopAt::Requests(requests), Workload::echo(64, 1));
    config.pipeline = 4;
    config.rate = rate.map(RatePlan::Constant);
    let control = LoadControl::new();
    let before = allocations();
    let report = run_load(&config, &control, None).expect("load run");
    let after = allocations();
    assert_eq!(report.requests.completed, requests);
    assert_eq!(report.errors.total, 0);
    drop(report);
    after - before
}

/// 20,000 more requests, closed loop or on a schedule, cost no more allocations than the
/// setup's own variation (threads, sockets, histograms), i.e. none per request.
#[test]
fn no_allocation_per_request() {
    let (_server, addr) = start_server();
    for rate in [None, Some(50_000.0)] {
        let small = allocations_for(addr, 2_000, rate);
        let large = allocations_for(addr, 22_000, rate);
        assert!(
            large <= small + 50,
            "rate {rate:?}: {small} allocations for 2,000 requests, {large} for 22,000"
        );
    }
}
