//! The app protocol end to end: the tutorial's answers over real sockets, pipelining,
//! many clients, every bad-input case (error reply, EOF, nobody else disturbed), the
//! `app-client` binary, and interop with an independent Python implementation.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::Duration;

use common::*;
use multiconn::protocol::app::{App, ByteOrder, DEFAULT_MAX_CONTENT_LENGTH};

// ---- frames written by hand, independent of the crate's encoder ----

/// A JSON header as Python's `json.dumps` writes the tutorial's dict.
fn header(content_type: &str, encoding: &str, length: usize) -> String {
    format!(
        "{{\"byteorder\": \"{}\", \"content-type\": \"{content_type}\", \
         \"content-encoding\": \"{encoding}\", \"content-length\": {length}}}",
        ByteOrder::NATIVE.as_str()
    )
}

/// Prefix + header + content.
fn frame(header: &str, content: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u16).to_be_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(content);
    bytes
}

/// A JSON string literal (quotes and escapes), as Python writes it for these texts.
fn json_str(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn json_frame(content: &str) -> Vec<u8> {
    frame(
        &header("text/json", "utf-8", content.len()),
        content.as_bytes(),
    )
}

fn search(query: &str) -> Vec<u8> {
    json_frame(&format!(
        "{{\"action\": \"search\", \"value\": {}}}",
        json_str(query)
    ))
}

fn binary(content: &[u8]) -> Vec<u8> {
    frame(
        &header("binary/custom-client-binary-type", "binary", content.len()),
        content,
    )
}

fn result_reply(answer: &str) -> Vec<u8> {
    json_frame(&format!("{{\"result\": {}}}", json_str(answer)))
}

fn error_reply(message: &str) -> Vec<u8> {
    json_frame(&format!("{{\"error\": {}}}", json_str(message)))
}

fn binary_reply(first_bytes: &[u8]) -> Vec<u8> {
    let content = [&b"First 10 bytes of request: "[..], first_bytes].concat();
    frame(
        &header("binary/custom-server-binary-type", "binary", content.len()),
        &content,
    )
}

/// The four search answers of the tutorial's table, plus a miss.
const SEARCHES: [(&str, &str); 4] = [
    ("morpheus", "Follow the white rabbit. 🐰"),
    ("ring", "In the caves beneath the Misty Mountains. 💍"),
    ("🐶", "🐾 Playing ball! 🏐"),
    ("neo", "No match for 'neo'."),
];

/// Reads one whole frame (prefix, header, content-length bytes) and returns its bytes.
fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let prefix = read_exact(stream, 2);
    let header = read_exact(
        stream,
        usize::from(u16::from_be_bytes([prefix[0], prefix[1]])),
    );
    let parsed: serde_json::Value = serde_json::from_slice(&header).expect("header is JSON");
    let length = parsed["content-length"].as_u64().expect("content-length");
    let content = read_exact(stream, length as usize);
    [prefix, header, content].concat()
}

/// Asserts the next read sees EOF (the server closed cleanly, not with a reset).
fn assert_eof(stream: &mut TcpStream) {
    assert_eq!(read_to_end(stream), b"", "expected EOF");
}

// ---- a logger that catches anything above info from the in-process servers ----

static LOUD_LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct CatchLoudLines;

impl log::Log for CatchLoudLines {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{}: {}", record.level(), record.args());
            LOUD_LINES.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

fn catch_loud_lines() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CatchLoudLines).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

fn assert_nothing_logged_above_info() {
    let lines = LOUD_LINES.lock().unwrap();
    assert!(lines.is_empty(), "logged above info: {lines:#?}");
}

// ---- the tutorial's exchanges ----

/// The four searches get the tutorial's answers, exactly, on one kept-alive connection.
#[test]
fn search_answers_follow_the_tutorial() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conn = server.connect();
    for (query, answer) in SEARCHES {
        write_all(&mut conn, &search(query));
        assert_eq!(read_frame(&mut conn), result_reply(answer), "query {query}");
    }
    drop(conn);
    let stats = server.stop();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.accepted, 1);
}

/// Any action but search gets the tutorial's invalid-action result.
#[test]
fn other_actions_are_invalid() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conn = server.connect();
    write_all(
        &mut conn,
        &json_frame(r#"{"action": "find", "value": "ring"}"#),
    );
    assert_eq!(
        read_frame(&mut conn),
        result_reply("Error: invalid action 'find'.")
    );
    // Not a string: quoted as JSON text, cut short.
    write_all(
        &mut conn,
        &json_frame(&format!(r#"{{"action": [{}]}}"#, "1, ".repeat(100) + "1")),
    );
    assert_eq!(
        read_frame(&mut conn),
        result_reply(&format!(
            "Error: invalid action '[{}...'.",
            "1,".repeat(20)[..39].to_owned()
        ))
    );
}

/// A binary request is answered with its first 10 bytes, and a shorter one with all of it.
#[test]
fn binary_request_gets_its_first_ten_bytes() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conn = server.connect();
    write_all(&mut conn, &binary(b"binary\x00\xff request bytes"));
    assert_eq!(read_frame(&mut conn), binary_reply(b"binary\x00\xff r"));
    write_all(&mut conn, &binary(b"abc"));
    assert_eq!(read_frame(&mut conn), binary_reply(b"abc"));
}

/// A request written one byte per segment is decoded and answered once complete.
#[test]
fn request_one_byte_at_a_time() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conn = server.connect();
    for byte in search("ring") {
        write_all(&mut conn, &[byte]);
    }
    assert_eq!(
        read_frame(&mut conn),
        result_reply("In the caves beneath the Misty Mountains. 💍")
    );
}

fn pipelined_case(i: usize) -> (Vec<u8>, Vec<u8>) {
    if i % 5 == 4 {
        let content = format!("request number {i}");
        (
            binary(content.as_bytes()),
            binary_reply(&content.as_bytes()[..10]),
        )
    } else {
        let (query, answer) = SEARCHES[i % 4];
        (search(query), result_reply(answer))
    }
}

/// 100 requests in one write are all answered, in order, without waiting for more input.
#[test]
fn hundred_pipelined_requests_answered_in_order() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conn = server.connect();
    let (requests, replies): (Vec<_>, Vec<_>) = (0..100).map(pipelined_case).unzip();
    write_all(&mut conn, &requests.concat());
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(&read_frame(&mut conn), reply, "reply {i}");
    }
    drop(conn);
    assert_eq!(server.stop().requests, 100);
}

/// Requests split across writes at an arbitrary point: the complete ones are answered
/// at once, the cut one as soon as its rest arrives.
#[test]
fn pipelined_requests_split_mid_frame() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conn = server.connect();
    let (requests, replies): (Vec<_>, Vec<_>) = (0..10).map(pipelined_case).unzip();
    let all = requests.concat();
    let cut = requests[..7].iter().map(Vec::len).sum::<usize>() + 20;
    write_all(&mut conn, &all[..cut]);
    for reply in &replies[..7] {
        assert_eq!(&read_frame(&mut conn), reply);
    }
    write_all(&mut conn, &all[cut..]);
    for reply in &replies[7..] {
        assert_eq!(&read_frame(&mut conn), reply);
    }
}

/// 500 clients connected at once, each with a request outstanding: each gets its own answer.
#[test]
fn five_hundred_concurrent_clients() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conns: Vec<TcpStream> = (0..500).map(|_| server.connect()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        write_all(conn, &pipelined_case(i).0);
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(read_frame(conn), pipelined_case(i).1, "client {i}");
    }
    drop(conns);
    let stats = server.stop();
    assert_eq!((stats.accepted, stats.requests), (500, 500));
}

/// Interest like the tutorial's Message, minus its waste: requests answered in lock step
/// are written at once, so WRITABLE is never registered and nothing is reregistered.
#[test]
fn lock_step_requests_never_register_writable() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conns: Vec<TcpStream> = (0..10).map(|_| server.connect()).collect();
    for i in 0..100 {
        for conn in conns.iter_mut() {
            let (request, reply) = pipelined_case(i);
            write_all(conn, &request);
            assert_eq!(read_frame(conn), reply);
        }
    }
    drop(conns);
    let stats = server.stop();
    assert_eq!(stats.requests, 1000);
    assert_eq!(stats.reregistrations, 0);
    assert_eq!(stats.writable_registrations, 0);
}

/// A 4 MiB binary request arriving over many reads is answered, and the connection
/// goes on serving: the content is gathered, not refused or cut.
#[test]
fn large_binary_request_is_answered() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conn = server.connect();
    let content = pseudo_random_bytes(5, 4 * 1024 * 1024);
    let mut writer = conn.try_clone().unwrap();
    let request = binary(&content);
    let sender = std::thread::spawn(move || writer.write_all(&request));
    assert_eq!(read_frame(&mut conn), binary_reply(&content[..10]));
    sender.join().unwrap().expect("write");
    write_all(&mut conn, &search("ring"));
    assert_eq!(
        read_frame(&mut conn),
        result_reply("In the caves beneath the Misty Mountains. 💍")
    );
}

/// A 16 MiB JSON request (8.4 M zeros in a member) arriving over many reads is
/// answered, and the connection goes on serving: the content is decoded as it arrives.
#[test]
fn large_json_request_is_answered() {
    let server = TestServer::start(App::default(), |_| {});
    let mut conn = server.connect();
    let open = r#"{"value": "morpheus", "zeros": [0"#;
    let mut content = open.as_bytes().to_vec();
    while content.len() + 2 + r#"], "action": "search"}"#.len() <= DEFAULT_MAX_CONTENT_LENGTH {
        content.extend_from_slice(b",0");
    }
    content.extend_from_slice(br#"], "action": "search"}"#);
    let request = frame(&header("text/json", "utf-8", content.len()), &content);
    drop(content);
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&request));
    assert_eq!(
        read_frame(&mut conn),
        result_reply("Follow the white rabbit. 🐰")
    );
    sender.join().unwrap().expect("write");
    write_all(&mut conn, &search("ring"));
    assert_eq!(
        read_frame(&mut conn),
        result_reply("In the caves beneath the Misty Mountains. 💍")
    );
}

/// A client that reads slowly through a small receive window: every answer still comes,
/// in order, and the server asked for WRITABLE only because bytes were left over.
#[test]
fn slow_reader_gets_every_answer() {
    const REQUESTS: usize = 20_000;
    let server = TestServer::start(App::default(), |c| {
        c.limits.max_outbound = 64 * 1024;
        // A small send buffer too, or the kernel absorbs every answer.
        c.socket.send_buffer = Some(4096);
    });
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut reader: TcpStream = socket.into();
    reader.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut writer = reader.try_clone().unwrap();
    writer.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let sender = std::thread::spawn(move || {
        let all: Vec<u8> = (0..REQUESTS).flat_map(|i| pipelined_case(i).0).collect();
        writer.write_all(&all).map(|_| writer)
    });
    for i in 0..REQUESTS {
        assert_eq!(read_frame(&mut reader), pipelined_case(i).1, "reply {i}");
    }
    drop(sender.join().unwrap().expect("writer"));
    drop(reader);
    let stats = server.stop();
    assert_eq!(stats.requests, REQUESTS as u64);
    assert!(
        stats.writable_registrations >= 1,
        "a 4 KiB window never filled"
    );
}

// ---- bad input ----

/// Sends `bytes` (then FIN if `fin`) on one connection and expects exactly `reply` then
/// EOF, while a client in the middle of its own request and a new client are served as
/// usual and nothing is logged above info.
fn assert_refused(bytes: &[u8], fin: bool, reply: &[u8]) {
    catch_loud_lines();
    let server = TestServer::start(App::default(), |_| {});
    let mut bystander = server.connect();
    let pending = search("morpheus");
    write_all(&mut bystander, &pending[..9]);

    let mut bad = server.connect();
    let mut writer = bad.try_clone().unwrap();
    let bytes = bytes.to_vec();
    // Written on a thread: a large bad input is still being sent when the reply comes.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
        if fin {
            let _ = writer.shutdown(Shutdown::Write);
        }
    });
    let mut got = Vec::new();
    bad.read_to_end(&mut got)
        .expect("a clean close, not a reset");
    sender.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(reply)
    );
    assert_eq!(got, reply);
    drop(bad);

    write_all(&mut bystander, &pending[9..]);
    assert_eq!(
        read_frame(&mut bystander),
        result_reply("Follow the white rabbit. 🐰")
    );
    let mut fresh = server.connect();
    write_all(&mut fresh, &binary(b"still here"));
    assert_eq!(read_frame(&mut fresh), binary_reply(b"still here"));
    drop((bystander, fresh));
    server.stop();
    assert_nothing_logged_above_info();
}

fn refused_with(bytes: &[u8], message: &str) {
    assert_refused(bytes, false, &error_reply(message));
}

/// A header length of 0 is answered with an error, then the close.
#[test]
fn bad_header_length_zero() {
    refused_with(b"\x00\x00{}", "header length is 0");
}

/// A header that is not UTF-8.
#[test]
fn bad_header_not_utf8() {
    refused_with(
        &frame_of_raw_header(b"{\"\xff\xfe\": 1}"),
        "header is not valid UTF-8",
    );
}

fn frame_of_raw_header(header: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u16).to_be_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes
}

/// A header that is not JSON.
#[test]
fn bad_header_not_json() {
    let detail = serde_json::from_str::<serde_json::Value>("{oops")
        .unwrap_err()
        .to_string();
    refused_with(
        &frame("{oops", b""),
        &format!("header is not valid JSON: {detail}"),
    );
}

/// A header that is a JSON array (which a derived struct would accept positionally).
#[test]
fn bad_header_array() {
    refused_with(
        &frame(r#"["little", "text/json", "utf-8", 2]"#, b"{}"),
        "header must be a JSON object, not an array",
    );
}

/// A header that is a JSON number.
#[test]
fn bad_header_number() {
    refused_with(
        &frame("42", b""),
        "header must be a JSON object, not a number",
    );
}

/// Each required key missing, one at a time.
#[test]
fn bad_header_missing_each_key() {
    let keys = [
        ("byteorder", "\"little\""),
        ("content-type", "\"text/json\""),
        ("content-encoding", "\"utf-8\""),
        ("content-length", "2"),
    ];
    for (missing, _) in keys {
        let header = keys
            .iter()
            .filter(|(key, _)| *key != missing)
            .map(|(key, value)| format!("\"{key}\": {value}"))
            .collect::<Vec<_>>()
            .join(", ");
        refused_with(
            &frame(&format!("{{{header}}}"), b"{}"),
            &format!("header is missing the required key \"{missing}\""),
        );
    }
}

fn with_length(length: &str) -> Vec<u8> {
    frame(
        &format!(
            r#"{{"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": {length}}}"#
        ),
        b"",
    )
}

/// content-length negative.
#[test]
fn bad_content_length_negative() {
    refused_with(&with_length("-5"), "content-length must not be negative");
}

/// content-length fractional.
#[test]
fn bad_content_length_fractional() {
    refused_with(&with_length("2.5"), "content-length must be an integer");
}

/// content-length a string.
#[test]
fn bad_content_length_string() {
    refused_with(&with_length("\"10\""), "content-length must be a number");
}

/// content-length over the default 16 MiB is refused from the header alone: no content
/// is sent, and the answer comes anyway.
#[test]
fn bad_content_length_over_default_limit() {
    let declared = DEFAULT_MAX_CONTENT_LENGTH + 1;
    refused_with(
        &with_length(&declared.to_string()),
        &format!(
            "content-length {declared} exceeds the limit of {DEFAULT_MAX_CONTENT_LENGTH} bytes"
        ),
    );
}

/// A configured limit applies the same way, and exactly the limit is still served.
#[test]
fn bad_content_length_over_configured_limit() {
    let server = TestServer::start(App::new(16), |_| {});
    let mut conn = server.connect();
    write_all(&mut conn, &binary(b"sixteen bytes!!!"));
    assert_eq!(read_frame(&mut conn), binary_reply(b"sixteen by"));
    write_all(&mut conn, &with_length("17"));
    assert_eq!(
        read_frame(&mut conn),
        error_reply("content-length 17 exceeds the limit of 16 bytes")
    );
    assert_eof(&mut conn);
}

/// JSON content that is not valid JSON: where it stops being JSON.
#[test]
fn bad_json_content_not_json() {
    refused_with(
        &json_frame("{\"action\": "),
        "text/json content is not valid JSON: unexpected end of content at byte 11",
    );
    refused_with(
        &json_frame("{\"action\" \"search\"}"),
        "text/json content is not valid JSON: syntax error at byte 10",
    );
}

/// JSON content that is not UTF-8 is refused as soon as the bad byte is in, before the
/// rest of its content (one byte of 14 is never sent).
#[test]
fn bad_json_content_not_utf8() {
    refused_with(
        &frame(&header("text/json", "utf-8", 14), b"{\"value\": \"\xc3("),
        "text/json content is not valid UTF-8",
    );
}

/// JSON content that is not an object.
#[test]
fn bad_json_content_not_object() {
    refused_with(
        &json_frame(r#"["search", "ring"]"#),
        "text/json content must be a JSON object, not an array",
    );
}

/// JSON content in an unknown encoding is refused from the header, before its content.
#[test]
fn bad_json_content_unknown_encoding() {
    refused_with(
        &frame(&header("text/json", "utf-16", 40), b""),
        "unsupported content-encoding \"utf-16\" for text/json (only utf-8)",
    );
}

/// A frame cut short and followed by FIN: no answer is possible, the server just closes.
#[test]
fn bad_truncated_frame_then_fin() {
    let request = search("ring");
    assert_refused(&request[..request.len() - 3], true, b"");
}

/// A lone byte of prefix and FIN: closed without an answer.
#[test]
fn bad_half_prefix_then_fin() {
    assert_refused(b"\x00", true, b"");
}

/// 1 MiB of random bytes: the prefix and header are read as such, refused, and the rest
/// is discarded while the answer arrives intact.
#[test]
fn bad_random_megabyte() {
    let bytes = pseudo_random_bytes(11, 1024 * 1024);
    let header_len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    assert!(header_len > 0 && std::str::from_utf8(&bytes[2..2 + header_len]).is_err());
    refused_with(&bytes, "header is not valid UTF-8");
}

/// A request not completed within the frame timeout gets an error, then the close.
#[test]
fn unfinished_request_times_out_with_an_error() {
    let server = TestServer::start(App::default(), |c| {
        c.timeouts.frame = Some(Duration::from_millis(200))
    });
    let mut conn = server.connect();
    write_all(&mut conn, &search("ring")[..10]);
    assert_eq!(
        read_frame(&mut conn),
        error_reply("request not completed in time")
    );
    assert_eof(&mut conn);
}

/// A full server refuses a new connection with an error frame, then closes it.
#[test]
fn full_server_refuses_with_an_error() {
    let server = TestServer::start(App::default(), |c| c.limits.max_connections = 1);
    let mut first = server.connect();
    write_all(&mut first, &search("ring"));
    read_frame(&mut first); // the first connection is surely accepted now
    let mut second = server.connect();
    assert_eq!(read_to_end(&mut second), error_reply("server busy"));
}

// ---- the binaries ----

/// `multiconn-server --protocol app` serves the protocol and honours --max-content-length.
#[test]
fn server_binary_serves_app_with_limit() {
    let (mut server, _log, addr) =
        start_server_bin(&["--protocol", "app", "--max-content-length", "100"]);
    let mut conn = connect(addr);
    write_all(&mut conn, &search("morpheus"));
    assert_eq!(
        read_frame(&mut conn),
        result_reply("Follow the white rabbit. 🐰")
    );
    write_all(&mut conn, &with_length("101"));
    assert_eq!(
        read_frame(&mut conn),
        error_reply("content-length 101 exceeds the limit of 100 bytes")
    );
    assert_eof(&mut conn);
    drop(conn);
    kill(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server).success());
}

fn app_client(addr: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    let port = addr.port().to_string();
    let mut all = vec!["127.0.0.1", port.as_str()];
    all.extend_from_slice(args);
    let out = spawn_bin("app-client", &all).wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `app-client` prints the tutorial's lines for searches and binary requests, exit 0.
#[test]
fn app_client_prints_results() {
    let server = TestServer::start(App::default(), |_| {});
    for (query, answer) in SEARCHES {
        let (code, stdout, stderr) = app_client(server.addr, &["search", query]);
        assert_eq!(
            (code, stdout.as_str(), stderr.as_str()),
            (Some(0), format!("Got result: {answer}\n").as_str(), "")
        );
    }
    let (code, stdout, _) = app_client(server.addr, &["get", "some \"bytes\""]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        "Got response: b\"First 10 bytes of request: getsome \\\"b\"\n"
    );
}

/// `-v` shows the request and response headers and the bytes.
#[test]
fn app_client_verbose_shows_headers_and_bytes() {
    let server = TestServer::start(App::default(), |_| {});
    let (code, stdout, stderr) = app_client(server.addr, &["-v", "search", "ring"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        "Got result: In the caves beneath the Misty Mountains. 💍\n"
    );
    let request_header = header("text/json", "utf-8", 37);
    assert!(
        stderr.contains(&format!("Request header: {request_header}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("Response header: {\"byteorder\""),
        "{stderr}"
    );
    assert!(stderr.contains("Sending b\"\\x00g{"), "{stderr}");
    assert!(stderr.contains("Received b\""), "{stderr}");
}

/// Failures are one `error:` line and exit 1: refused, timeout, malformed, early close.
#[test]
fn app_client_failures_are_one_line() {
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, stdout, stderr) = app_client(closed_port, &["search", "x"]);
    assert_eq!((code, stdout.as_str()), (Some(1), ""));
    assert_eq!(
        stderr,
        format!("error: cannot connect to {closed_port}: Connection refused\n")
    );

    // Accepted by the kernel, never answered.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, _, stderr) = app_client(
        silent.local_addr().unwrap(),
        &["--timeout", "0.3", "search", "x"],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "error: timed out after 0.3s waiting for the response\n"
    );

    let (code, _, stderr) = fake_server(b"\x00\x00garbage", &["search", "x"]);
    assert_eq!(code, Some(1));
    assert_eq!(stderr, "error: malformed response: header length is 0\n");

    let (code, _, stderr) = fake_server(b"", &["search", "x"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "error: the server closed the connection without a response\n"
    );

    let partial = &result_reply("cut")[..30];
    let (code, _, stderr) = fake_server(partial, &["search", "x"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "error: the server closed the connection in the middle of a response (30 bytes received)\n"
    );

    let (code, _, stderr) = fake_server(&error_reply("server busy"), &["search", "x"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "error: the server refused the request: server busy\n"
    );

    let (code, _, stderr) = app_client(closed_port, &["search"]);
    assert_eq!(code, Some(2), "usage error: {stderr}");
}

/// Runs app-client against a one-shot server that reads the request, writes `reply`
/// and closes.
fn fake_server(reply: &[u8], args: &[&str]) -> (Option<i32>, String, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = reply.to_vec();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        read_frame(&mut conn);
        conn.write_all(&reply).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        // Wait for the client's close so our close sends no reset over the reply.
        let _ = conn.read_to_end(&mut Vec::new());
    });
    let result = app_client(addr, args);
    server.join().unwrap();
    result
}

// ---- interop with an independent Python implementation ----

fn python_peer() -> Option<(String, PathBuf)> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/app_peer.py");
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => Some(("python3".into(), script)),
        _ => {
            eprintln!("SKIPPED: python3 is not installed; the interop tests need it (.ci/run installs it)");
            None
        }
    }
}

fn python(python: &str, script: &PathBuf, args: &[&str]) -> Command {
    let mut command = Command::new(python);
    command
        .arg(script)
        .args(args)
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The Python peer as client against our server: every answer, a binary request, and
/// 100 pipelined requests, all validated strictly by the Python side.
#[test]
fn interop_python_client_against_our_server() {
    let Some((python3, script)) = python_peer() else {
        return;
    };
    let server = TestServer::start(App::default(), |_| {});
    let port = server.addr.port().to_string();
    let mut cases: Vec<(Vec<&str>, String)> = SEARCHES
        .iter()
        .map(|(query, answer)| (vec!["search", *query], format!("Got result: {answer}\n")))
        .collect();
    cases.push((
        vec!["binary", "0123456789"],
        "Got response: b'First 10 bytes of request: binary0123'\n".into(),
    ));
    cases.push((
        vec!["search", "morpheus", "--repeat", "100"],
        "Got result: Follow the white rabbit. 🐰\n".repeat(100),
    ));
    for (args, expected) in cases {
        let mut all = vec!["client", "127.0.0.1", port.as_str()];
        all.extend(&args);
        let out = python(&python3, &script, &all).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{args:?}");
    }
    assert_eq!(server.stop().requests, 105);
}

/// Our app-client against the Python peer as server: the same answers, and the Python
/// side found every request well-formed (it exits 0 only then).
#[test]
fn interop_our_client_against_python_server() {
    let Some((python3, script)) = python_peer() else {
        return;
    };
    let cases: Vec<(Vec<&str>, String)> = SEARCHES
        .iter()
        .map(|(query, answer)| (vec!["search", *query], format!("Got result: {answer}\n")))
        .chain([(
            vec!["upload", "\u{1f436}bytes"],
            "Got response: b\"First 10 bytes of request: upload\\xf0\\x9f\\x90\\xb6\"\n".into(),
        )])
        .collect();
    let connections = cases.len().to_string();
    let mut peer = python(
        &python3,
        &script,
        &["server", "127.0.0.1", "0", "--connections", &connections],
    )
    .spawn()
    .unwrap();
    let mut stdout = Transcript::of(peer.stdout.take().unwrap());
    let port = stdout
        .wait_for("listening on ")
        .trim_start_matches("listening on ")
        .trim()
        .to_owned();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for (args, expected) in cases {
        let (code, out, err) = app_client(addr, &args);
        assert_eq!(
            (code, out.as_str()),
            (Some(0), expected.as_str()),
            "{args:?}: {err}"
        );
    }
    let status = wait_exit(&mut peer);
    let mut stderr = String::new();
    peer.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "python peer: {stderr}");
}
