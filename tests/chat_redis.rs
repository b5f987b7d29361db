//! Chat across servers through a real Redis (Debian's `redis-server`, started by each test
//! on a free port and stopped by pid): two `multiconn-server --redis` processes share a
//! room, a member on each side hears the other in order, and when Redis is killed and
//! restarted, local delivery goes on and cross-server delivery resumes.

mod chat_member;
mod child_server;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_member::{wait_for_line, Member, PerSenderOrder};
use child_server::ChildServer;
use common::IO_TIMEOUT;

/// How long a server may take to (re)subscribe after Redis has come up.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(15);

/// A `redis-server` of this test's own, on `port`, with no persistence.
struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port, or `None` (with a line saying so) if the machine has
    /// no `redis-server`.
    fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("skipping: redis-server is not installed (.ci/run installs it)");
            return None;
        }
        // A port the OS had free; another process could take it in between, rarely.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("multiconn-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            port,
            dir,
            child: None,
        };
        redis.run();
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the process and waits until it answers PING.
    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.write_all(b"PING\r\n").unwrap();
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line == "+PONG\r\n" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL, by pid) and waits for it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A chat server relaying through `redis`, once it has subscribed.
fn chat_server(redis: &Redis, extra: &[&str]) -> ChildServer {
    let url = redis.url();
    let mut args = vec!["--protocol", "chat", "--redis", &url];
    args.extend_from_slice(extra);
    let server = ChildServer::start(&args);
    server.wait_for_log("subscribed to multiconn:chat:*", 1, SUBSCRIBE_TIMEOUT);
    server
}

/// Sends `count` numbered lines `{tag}{n}` from `from`, and checks that `to` hears all of
/// them from it in order (notices, and lines of other senders or earlier tags, skipped).
fn lines_cross(from: &mut Member, to: &mut Member, tag: &str, count: usize) {
    let lines: String = (0..count).map(|n| format!("{tag}{n}\n")).collect();
    from.send(&lines);
    let mut order = PerSenderOrder::new();
    while order.next.get(&from.name).copied().unwrap_or(0) < count {
        let line = to.message();
        let (sender, text) = chat_member::attribute(&line);
        let tagged = text
            .strip_prefix(tag)
            .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()));
        if sender == from.name && tagged {
            order.check(&to.name, &line, tag);
        }
    }
}

/// Two servers on different ports share the lobby and a room: each side's lines reach
/// the other, in each sender's order and once (a server drops its own publications, and
/// the second server's two workers, which share its id, get each other's lines from
/// their mesh only), join notices cross too, and a room's lines stay in the room.
#[test]
fn two_servers_share_rooms() {
    let Some(redis) = Redis::start() else { return };
    let one = chat_server(&redis, &[]);
    let two = chat_server(&redis, &["--workers", "2"]);
    two.wait_for_log("subscribed to multiconn:chat:*", 2, SUBSCRIBE_TIMEOUT);
    let mut a = Member::join(one.addr);
    // Several on the second server, so that both of its loops have members.
    let mut bs: Vec<Member> = (0..4).map(|_| Member::join(two.addr)).collect();
    // From two loops, the notices may come in either order.
    let mut joined: Vec<String> = bs
        .iter()
        .map(|b| format!("* {} joined\n", b.name))
        .collect();
    while !joined.is_empty() {
        let line = a.line();
        joined.retain(|j| *j != line);
    }

    let lines: String = (0..200).map(|n| format!("a{n}\n")).collect();
    a.send(&lines);
    for b in &mut bs {
        let mut order = PerSenderOrder::new();
        for _ in 0..200 {
            let line = b.message();
            order.check(&b.name, &line, "a");
        }
    }
    let (first, others) = bs.split_first_mut().unwrap();
    let lines: String = (0..200).map(|n| format!("b{n}\n")).collect();
    first.send(&lines);
    for member in others.iter_mut().chain([&mut a]) {
        let mut order = PerSenderOrder::new();
        for _ in 0..200 {
            let line = member.message();
            order.check(&member.name, &line, "b");
        }
    }

    // A room: a and the first b meet in dev; the others, in the lobby, hear none of it.
    a.send("/join dev\n");
    wait_for_line(&mut a, "* you are in dev\n", IO_TIMEOUT);
    first.send("/join dev\n");
    wait_for_line(first, "* you are in dev\n", IO_TIMEOUT);
    wait_for_line(&mut a, &format!("* {} joined\n", first.name), IO_TIMEOUT);
    lines_cross(&mut a, first, "dev", 20);
    others[0].send("lobby only\n");
    let said = format!("[{}] lobby only\n", others[0].name);
    for member in &mut others[1..] {
        // The lobby's next line is this one: nothing said in dev came before it.
        wait_for_line(member, &said, IO_TIMEOUT);
    }
}

/// Redis killed mid-test: lines still reach members of the same server, the outage is
/// logged once per loop; Redis restarted on its port: the servers reconnect, subscribe
/// again, and lines cross again, in order.
#[test]
fn redis_restart_is_survived() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let one = chat_server(&redis, &[]);
    let two = chat_server(&redis, &[]);
    let mut a = Member::join(one.addr);
    let mut a2 = Member::join(one.addr);
    let mut b = Member::join(two.addr);
    wait_for_line(&mut a, &format!("* {} joined\n", b.name), IO_TIMEOUT);
    wait_for_line(&mut a2, &format!("* {} joined\n", b.name), IO_TIMEOUT);
    lines_cross(&mut a, &mut b, "before", 50);

    redis.kill();
    one.wait_for_log("link lost", 1, IO_TIMEOUT);
    two.wait_for_log("link lost", 1, IO_TIMEOUT);
    // Local delivery goes on.
    lines_cross(&mut a, &mut a2, "during", 50);

    redis.run();
    one.wait_for_log(
        "reconnected; lines cross servers again",
        1,
        SUBSCRIBE_TIMEOUT,
    );
    two.wait_for_log(
        "reconnected; lines cross servers again",
        1,
        SUBSCRIBE_TIMEOUT,
    );
    one.wait_for_log("subscribed to multiconn:chat:*", 2, SUBSCRIBE_TIMEOUT);
    two.wait_for_log("subscribed to multiconn:chat:*", 2, SUBSCRIBE_TIMEOUT);
    lines_cross(&mut a, &mut b, "after", 50);
    lines_cross(&mut b, &mut a2, "back", 50);
    // The outage was logged once per server (one loop each), not once per retry.
    for server in [&one, &two] {
        let lost = server
            .log()
            .iter()
            .filter(|l| l.contains("link lost"))
            .count();
        assert_eq!(lost, 1, "{:#?}", server.log());
    }
}
