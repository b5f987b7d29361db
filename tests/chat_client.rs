//! The interactive chat client (`multiconn-client HOST PORT 1 --protocol chat`) against the
//! real `multiconn-server --protocol chat`: typed lines reach the room, the room's lines
//! are printed, and `quit`, `/quit` or EOF on stdin leaves (the others see it go).

mod chat_member;
mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use chat_member::Member;
use common::{start_server_bin, wait_exit, Transcript};

/// A chat client with stdin piped (kept open until the test drops or closes it).
struct ChatClient {
    child: Child,
    stdout: Transcript,
    stderr: Option<std::process::ChildStderr>,
}

impl ChatClient {
    fn start(addr: SocketAddr, extra: &[&str]) -> ChatClient {
        ChatClient::with_stdin(addr, extra, Stdio::piped())
    }

    fn with_stdin(addr: SocketAddr, extra: &[&str], stdin: Stdio) -> ChatClient {
        let mut child = Command::new(env!("CARGO_BIN_EXE_multiconn-client"))
            .args([&addr.ip().to_string(), &addr.port().to_string(), "1"])
            .args(["--protocol", "chat"])
            .args(extra)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn multiconn-client");
        let stdout = Transcript::of(child.stdout.take().unwrap());
        let stderr = child.stderr.take();
        ChatClient {
            child,
            stdout,
            stderr,
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for the exit; its status and stderr.
    fn exit(&mut self) -> (std::process::ExitStatus, String) {
        let status = wait_exit(&mut self.child);
        let mut err = String::new();
        if let Some(mut pipe) = self.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for ChatClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two clients and a raw TCP member in one room: each client's typed lines reach the
/// others, each prints the others' lines; EOF on stdin leaves, `quit` leaves, and the
/// raw member sees both go. Both exit 0.
#[test]
fn two_clients_and_a_raw_member_talk() {
    let (_server, _log, addr) = start_server_bin(&["--protocol", "chat"]);
    let mut raw = Member::join(addr);
    let mut anne = ChatClient::start(addr, &[]);
    // Its arrival announced to the raw member: it is in the room.
    let joined = raw.line();
    assert!(
        joined.starts_with("* ") && joined.ends_with(" joined\n"),
        "{joined}"
    );
    anne.type_line("/nick anne");
    anne.stdout.wait_for("* you are anne");
    let mut bob = ChatClient::start(addr, &[]);
    anne.stdout.wait_for(" joined");
    bob.type_line("/nick bob");
    bob.stdout.wait_for("* you are bob");
    raw.send("hello from raw\n");
    anne.stdout.wait_for("hello from raw");
    bob.stdout.wait_for("hello from raw");

    anne.type_line("hi bob");
    assert_eq!(bob.stdout.wait_for("hi bob"), "[anne] hi bob");
    bob.type_line("hi anne");
    assert_eq!(anne.stdout.wait_for("hi anne"), "[bob] hi anne");
    assert_eq!(raw.message(), "[anne] hi bob\n");
    assert_eq!(raw.message(), "[bob] hi anne\n");

    // EOF leaves: a last line without a line end still goes out first.
    let stdin = anne.child.stdin.as_mut().unwrap();
    stdin.write_all(b"bye from anne").unwrap();
    anne.close_stdin();
    assert_eq!(bob.stdout.wait_for("bye from anne"), "[anne] bye from anne");
    bob.stdout.wait_for("* anne left");
    let (status, err) = anne.exit();
    assert!(status.success(), "anne: {status} {err}");
    assert!(!err.contains("error"), "{err}");

    // `quit` leaves; what follows it is not sent.
    bob.type_line("last words");
    bob.type_line("quit");
    bob.type_line("never sent");
    let (status, err) = bob.exit();
    assert!(status.success(), "bob: {status} {err}");
    let mut rest = Vec::new();
    loop {
        let line = raw.line();
        rest.push(line.clone());
        if line == "* bob left\n" {
            break;
        }
    }
    assert!(rest.contains(&"[bob] last words\n".to_string()), "{rest:?}");
    assert!(rest.iter().all(|l| !l.contains("never sent")), "{rest:?}");
}

/// stdin from a regular file (which epoll refuses) and from /dev/null: the file's lines
/// are sent, then EOF leaves; `/quit` and `--room` work; the client exits 0.
#[test]
fn stdin_from_a_file_or_dev_null() {
    let (_server, _log, addr) = start_server_bin(&["--protocol", "chat"]);
    let mut raw = Member::join(addr);
    raw.send("/join dev\n");
    assert!(raw.line().starts_with("* you are in dev"));
    let dir = common::TempDir::new("chat-client-stdin");
    let path = dir.0.join("typed.txt");
    std::fs::write(&path, "one\ntwo\n/quit\nthree\n").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut client = ChatClient::with_stdin(addr, &["--room", "dev"], Stdio::from(file));
    let (status, err) = client.exit();
    assert!(status.success(), "{status} {err}");
    let mut got = Vec::new();
    loop {
        let line = raw.line();
        if line.ends_with(" left\n") {
            break;
        }
        got.push(line);
    }
    let said: Vec<&String> = got.iter().filter(|l| l.starts_with('[')).collect();
    assert_eq!(said.len(), 2, "{got:?}");
    assert!(
        said[0].ends_with("] one\n") && said[1].ends_with("] two\n"),
        "{got:?}"
    );

    let mut idle = ChatClient::with_stdin(addr, &[], Stdio::null());
    let (status, err) = idle.exit();
    assert!(status.success(), "{status} {err}");
}

/// The server going away ends the session with a line on stderr and exit 0; a refused
/// connect is an error (exit 1).
#[test]
fn server_close_and_refusal() {
    let (mut server, _log, addr) = start_server_bin(&["--protocol", "chat"]);
    let mut raw = Member::join(addr);
    let mut client = ChatClient::start(addr, &[]);
    assert!(raw.line().ends_with(" joined\n"));
    server.kill().unwrap();
    let _ = server.wait();
    let (status, err) = client.exit();
    assert!(status.success(), "{status} {err}");
    assert!(err.contains("closed the connection"), "{err}");

    let mut refused = ChatClient::with_stdin(addr, &[], Stdio::null());
    let (status, err) = refused.exit();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
}
