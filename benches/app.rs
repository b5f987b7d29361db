//! App protocol benches: decode and encode throughput of a typical request (bytes/s), one
//! request through the protocol (decode, answer, encode), a 1 MiB JSON request through
//! the protocol in 64 KiB reads (bytes/s: the per-byte cost a large request puts on its
//! loop), and requests/s through the in-process app server with 50 keep-alive
//! connections driven in lock step.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use multiconn::client::app::encode_request;
use multiconn::protocol::app::{
    decode, encode, encode_json_fields, App, BINARY_ENCODING, CLIENT_BINARY_TYPE,
    DEFAULT_MAX_CONTENT_LENGTH,
};
use multiconn::protocol::{Produced, Protocol};
use multiconn::{ListenAddr, Peer, Server, ServerConfig};

/// Keep-alive connections in the server bench, each with one request outstanding.
const CONNECTIONS: usize = 50;

fn codec(c: &mut Criterion) {
    let search = encode_request("search", "morpheus").expect("encode");
    let binary = encode_request("upload", &"x".repeat(200)).expect("encode");
    let mut group = c.benchmark_group("app codec");

    group.throughput(Throughput::Bytes(search.len() as u64));
    group.bench_function("decode search request", |b| {
        b.iter(|| decode(black_box(&search), DEFAULT_MAX_CONTENT_LENGTH).map(|f| f.map(|f| f.1)))
    });
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode search request", |b| {
        b.iter(|| {
            out.clear();
            let fields = [("action", "search"), ("value", black_box("morpheus"))];
            encode_json_fields(&mut out, &fields).map(|_| out.len())
        })
    });

    group.throughput(Throughput::Bytes(binary.len() as u64));
    group.bench_function("decode binary request", |b| {
        b.iter(|| decode(black_box(&binary), DEFAULT_MAX_CONTENT_LENGTH).map(|f| f.map(|f| f.1)))
    });
    let content = [b"upload".as_slice(), &[b'x'; 200]];
    group.bench_function("encode binary request", |b| {
        b.iter(|| {
            out.clear();
            encode(
                &mut out,
                CLIENT_BINARY_TYPE,
                BINARY_ENCODING,
                black_box(&content),
            )
            .map(|_| out.len())
        })
    });

    // The protocol's whole share of one request: decode, look up, encode the answer.
    group.throughput(Throughput::Elements(1));
    let mut app = App::default();
    let mut produced = Produced::default();
    let mut session = app.open(&Peer::Unix, &mut produced.output());
    group.bench_function("serve search request", |b| {
        b.iter(|| {
            produced.reply.clear();
            app.on_input(&mut session, black_box(&search), &mut produced.output())
        })
    });

    // A large request as the loop presents it: one read at a time, each consumed whole.
    let large = large_json_request(1024 * 1024);
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("serve 1 MiB JSON request in 64 KiB reads", |b| {
        b.iter(|| {
            produced.reply.clear();
            let mut used = 0;
            for read in large.chunks(64 * 1024) {
                let mut out = produced.output();
                used += app.on_input(&mut session, black_box(read), &mut out).0;
            }
            used
        })
    });
    group.finish();
}

/// A search request whose content is `len` bytes: the query, then an array of zeros.
fn large_json_request(len: usize) -> Vec<u8> {
    let mut content = br#"{"action": "search", "value": "ring", "zeros": [0"#.to_vec();
    while content.len() + 4 <= len {
        content.extend_from_slice(b",0");
    }
    content.extend_from_slice(b"]}");
    content.resize(len, b' ');
    let mut request = Vec::new();
    encode(&mut request, "text/json", "utf-8", &[&content]).expect("encode");
    request
}

fn server(c: &mut Criterion) {
    let config = ServerConfig::new(ListenAddr::Tcp("127.0.0.1:0".parse().expect("address")));
    let server = Server::bind(config, App::default()).expect("bind 127.0.0.1:0");
    let (addr, handle, thread) = server.spawn().unwrap();
    let ListenAddr::Tcp(addr) = addr else {
        panic!("expected a TCP address")
    };
    let request = encode_request("search", "morpheus").expect("encode");
    let mut expected = Vec::new();
    encode_json_fields(
        &mut expected,
        &[("result", "Follow the white rabbit. \u{1f430}")],
    )
    .expect("encode");
    let mut conns: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let conn = TcpStream::connect(addr).expect("connect");
            conn.set_nodelay(true).expect("nodelay");
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            conn
        })
        .collect();
    let mut response = vec![0; expected.len()];

    let mut group = c.benchmark_group("app server");
    // One iteration: every connection sends a request, then every answer is read.
    group.throughput(Throughput::Elements(CONNECTIONS as u64));
    group.bench_function("search requests, 50 keep-alive connections", |b| {
        b.iter(|| {
            for conn in conns.iter_mut() {
                conn.write_all(&request).expect("write");
            }
            for conn in conns.iter_mut() {
                conn.read_exact(&mut response).expect("read");
                assert!(response == expected, "unexpected answer");
            }
        })
    });
    group.finish();

    drop(conns);
    handle.shutdown();
    let stats = thread.join().expect("server thread").expect("server loop");
    eprintln!("app server: {stats}");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = codec, server
}
criterion_main!(benches);
