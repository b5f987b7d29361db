//! Proves the echo path allocates nothing per message (issue 8): a counting global
//! allocator sees every allocation in this process, the server's thread included, while a
//! client that reuses its buffers makes thousands of round trips.

mod common;
mod counting_alloc;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::TestServer;
use counting_alloc::{allocations, CountingAllocator};
use multiconn::protocol::echo::Echo;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Bytes per message, as in the benches.
const MESSAGE_SIZE: usize = 64;
/// Allocations tolerated during a measured run, whatever its length: anything the test
/// harness's own threads might do. A per-message allocation would show up thousands of times.
const SLACK: u64 = 8;

/// Makes `rounds` round trips of `batch` (written whole, read back whole) on `stream`,
/// checking the echo, and returns how many allocations the process made meanwhile.
fn allocations_during(stream: &mut TcpStream, batch: &[u8], echo: &mut [u8], rounds: usize) -> u64 {
    let before = allocations();
    for _ in 0..rounds {
        stream.write_all(batch).expect("write");
        stream.read_exact(echo).expect("read");
        assert!(echo == batch, "echo differs from what was sent");
    }
    allocations() - before
}

/// After warm-up, 1,000 and 10,000 echoed messages (one in flight, then 16 pipelined per
/// write) cost the whole process at most a small constant number of allocations: none per
/// message in the read → protocol → write path of the loop.
#[test]
fn echo_path_does_not_allocate_per_message() {
    let before = allocations();
    std::hint::black_box(vec![0u8; 100]);
    assert!(allocations() > before, "the counting allocator is in use");

    let server = TestServer::start(Echo, |_| {});
    let mut stream = server.connect();
    for depth in [1, 16] {
        let batch: Vec<u8> = (0..MESSAGE_SIZE * depth).map(|i| (i * 7) as u8).collect();
        let mut echo = vec![0u8; batch.len()];
        // Warm-up: connection setup, first-use buffers and lazily grown queues.
        allocations_during(&mut stream, &batch, &mut echo, 1_000);
        let short = allocations_during(&mut stream, &batch, &mut echo, 1_000);
        let long = allocations_during(&mut stream, &batch, &mut echo, 10_000);
        eprintln!(
            "{depth} in flight: {short} allocations over 1,000 round trips, {long} over 10,000"
        );
        assert!(
            short <= SLACK && long <= SLACK,
            "{depth} in flight: {short} allocations over 1,000 round trips, {long} over 10,000"
        );
    }
    drop(stream);
    let stats = server.stop();
    let sent = 12_000 * MESSAGE_SIZE as u64 * (1 + 16);
    assert_eq!(
        (stats.bytes_in, stats.bytes_out),
        (sent, sent),
        "every byte went through the loop"
    );
}
