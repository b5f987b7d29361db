//! A chat member for the chat tests: a line reader and a writer on one socket, and the
//! checks of who said what in which order.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::connect;

/// A chat member: a line reader and a writer on one socket.
pub struct Member {
    pub name: String,
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Member {
    pub fn join(addr: SocketAddr) -> Member {
        Member::from_stream(connect(addr))
    }

    pub fn from_stream(stream: TcpStream) -> Member {
        let name = stream.local_addr().unwrap().to_string();
        Member {
            name,
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("send");
    }

    /// The next line, with its `\n`; panics at EOF.
    pub fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).expect("read line");
        assert!(
            line.ends_with(b"\n"),
            "{}: connection ended: {:?}",
            self.name,
            String::from_utf8_lossy(&line)
        );
        String::from_utf8(line).expect("UTF-8 line")
    }

    pub fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want, "received by {}", self.name);
    }

    /// The next line that is not a join/leave notice.
    pub fn message(&mut self) -> String {
        loop {
            let line = self.line();
            if !line.starts_with("* ") {
                return line;
            }
        }
    }

    /// Everything left until the server closes.
    pub fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to EOF");
        rest
    }
}

/// Splits `[HOST:PORT] text\n` into sender and text.
pub fn attribute(line: &str) -> (&str, &str) {
    let inner = line.strip_prefix('[').expect("line starts with [");
    let (sender, text) = inner.split_once("] ").expect("line has a sender");
    (sender, text.strip_suffix('\n').expect("line ends with \\n"))
}

/// Checks that lines from each sender arrive in the order they were sent: sender `s`'s
/// lines read `{tag}{n}` with n counting from 0. Returns how many arrived from each.
pub struct PerSenderOrder {
    pub next: HashMap<String, usize>,
}

impl PerSenderOrder {
    pub fn new() -> Self {
        PerSenderOrder {
            next: HashMap::new(),
        }
    }

    pub fn check(&mut self, receiver: &str, line: &str, tag: &str) {
        let (sender, text) = attribute(line);
        assert_ne!(sender, receiver, "{receiver} received its own line");
        let next = self.next.entry(sender.to_string()).or_insert(0);
        let n: usize = text
            .strip_prefix(tag)
            .and_then(|n| n.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        assert_eq!(n, *next, "{receiver}: line {n} from {sender} out of order");
        *next += 1;
    }
}

/// Reads `member`'s lines until one satisfies `want`, within `timeout`; join, leave and
/// other notices on the way are skipped, anything else fails.
pub fn wait_for_line(member: &mut Member, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    member
        .reader
        .get_ref()
        .set_read_timeout(Some(timeout))
        .unwrap();
    loop {
        assert!(
            Instant::now() < deadline,
            "{}: no {want:?} in time",
            member.name
        );
        let line = member.line();
        if line == want {
            return;
        }
        assert!(
            line.starts_with("* "),
            "{}: {line:?} while waiting for {want:?}",
            member.name
        );
    }
}

/// Every member sends `lines` lines `{tag}{n} from NAME` at once, on a thread each, and
/// reads every other member's; returns each member with how many lines it heard from
/// each sender, every sender's in order.
pub fn everyone_talks(
    members: Vec<Member>,
    lines: usize,
    tag: &'static str,
) -> Vec<(Member, HashMap<String, usize>)> {
    let others = members.len() - 1;
    let threads: Vec<_> = members
        .into_iter()
        .map(|mut member| {
            std::thread::spawn(move || {
                let said: String = (0..lines)
                    .map(|n| format!("{tag}{n} from {}\n", member.name))
                    .collect();
                member.send(&said);
                let mut order = PerSenderOrder::new();
                for _ in 0..others * lines {
                    let line = member.message();
                    order.check(&member.name, &line, tag);
                }
                // The member is returned, not closed: closing before everyone is done
                // would make the others read departures, which keeps this about delivery.
                (member, order.next)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("member thread"))
        .collect()
}
