//! Chat's `--web` side: the page at `GET /`, WebSocket members at `/ws` sharing rooms
//! with line members, and two real pages in headless Chromium (Debian's `chromium`,
//! driven over the DevTools protocol) and a TCP member that all see each other's lines.

mod chat_member;
mod child_server;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chat_member::{wait_for_line, Member};
use child_server::ChildServer;
use common::{connect, IO_TIMEOUT};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

fn web_server() -> ChildServer {
    ChildServer::start(&["--protocol", "chat", "--web"])
}

/// A TCP member of a `--web` server: it joins with its first line, here a nick.
fn line_member(server: &ChildServer, nick: &str) -> Member {
    let mut member = Member::join(server.addr);
    member.send(&format!("/nick {nick}\n"));
    member.expect(&format!("* you are {nick}\n"));
    member.name = nick.to_string();
    member
}

/// A WebSocket member, as a browser would be.
fn ws_member(server: &ChildServer) -> WebSocket<TcpStream> {
    let stream = connect(server.addr);
    let url = format!("ws://{}/ws", server.addr);
    let (ws, response) = tungstenite::client::client(url, stream).expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// The next chat line a WebSocket member receives (the server sends lines as binary
/// messages, a line or more each).
fn ws_lines(ws: &mut WebSocket<TcpStream>) -> Vec<String> {
    loop {
        match ws.read().expect("a message") {
            Message::Binary(bytes) => {
                return String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(str::to_string)
                    .collect()
            }
            Message::Text(text) => return text.lines().map(str::to_string).collect(),
            _ => continue,
        }
    }
}

fn ws_wait_for(ws: &mut WebSocket<TcpStream>, want: &str) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        if ws_lines(ws).iter().any(|l| l == want) {
            return;
        }
    }
    panic!("no {want:?} in time");
}

/// `GET /` is the page (self-contained: no script, style or image fetched from
/// anywhere), other paths are 404, and neither joins the room.
#[test]
fn the_page_is_served() {
    let server = web_server();
    let mut tcp = line_member(&server, "tcp");
    let mut page = connect(server.addr);
    page.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    page.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: text/html; charset=utf-8\r\n"));
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.contains("new WebSocket("));
    for fetch in ["src=", "href=\"http", "@import", "url("] {
        assert!(!body.contains(fetch), "the page fetches something: {fetch}");
    }
    let mut other = connect(server.addr);
    other
        .write_all(b"GET /favicon.ico HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut status = String::new();
    BufReader::new(other).read_line(&mut status).unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found\r\n");
    // Neither request joined: the next thing the TCP member hears is a real member.
    let mut second = Member::join(server.addr);
    second.send("hi\n");
    tcp.expect(&format!("* {} joined\n", second.name));
    tcp.expect(&format!("[{}] hi\n", second.name));
}

/// A WebSocket member and a TCP member in one room: each hears the other, commands work
/// over the WebSocket, and a ping is answered.
#[test]
fn websocket_and_line_members_share_a_room() {
    let server = web_server();
    let mut tcp = line_member(&server, "tcp");
    let mut ws = ws_member(&server);
    ws.send(Message::text("/nick web")).unwrap();
    ws_wait_for(&mut ws, "* you are web");
    ws.send(Message::text("hello from the browser")).unwrap();
    wait_for_line(&mut tcp, "[web] hello from the browser\n", IO_TIMEOUT);
    tcp.send("hello from tcp\n");
    ws_wait_for(&mut ws, "[tcp] hello from tcp");
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "no pong");
        if let Message::Pong(payload) = ws.read().unwrap() {
            assert_eq!(&payload[..], b"are you there");
            break;
        }
    }
    ws.close(None).unwrap();
    wait_for_line(&mut tcp, "* web left\n", IO_TIMEOUT);
}

// ---- headless Chromium ----

/// A headless Chromium of this test's own (in its own process group, killed by id),
/// and a DevTools protocol connection to it.
struct Browser {
    child: Child,
    dir: std::path::PathBuf,
    cdp: WebSocket<TcpStream>,
    next_id: u64,
}

/// How long a page may take to load and connect, and a line to reach it.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

impl Browser {
    /// Starts Chromium, or `None` (with a line saying so) if the machine has none.
    fn start() -> Option<Browser> {
        let binary = ["chromium", "chromium-browser"].into_iter().find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        let Some(binary) = binary else {
            println!("skipping: chromium is not installed (.ci/run installs it)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("multiconn-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-extensions",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let (tx, rx) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(PAGE_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                kill_group(&mut child);
                panic!("chromium did not say where DevTools listens");
            }
        };
        let authority = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let stream = TcpStream::connect(&authority).expect("connect to DevTools");
        stream.set_read_timeout(Some(PAGE_TIMEOUT)).unwrap();
        let (cdp, _) = tungstenite::client::client(url, stream).expect("DevTools handshake");
        Some(Browser {
            child,
            dir,
            cdp,
            next_id: 0,
        })
    }

    /// Sends a DevTools command and returns its result (events on the way are skipped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.cdp.send(Message::text(command.to_string())).unwrap();
        loop {
            let Message::Text(text) = self.cdp.read().expect("DevTools answer") else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page; returns the page's session.
    fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({"url": url}));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        attached["sessionId"].as_str().unwrap().to_string()
    }

    /// Evaluates `expression` in a page and returns its value.
    fn eval(&mut self, page: &str, expression: &str) -> Value {
        let result = self.call(
            Some(page),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in a page.
    fn wait_until(&mut self, page: &str, expression: &str) {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        while self.eval(page, expression) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "page never had {expression}: it shows {}",
                self.eval(page, "JSON.stringify(window.chat ? chat.lines : null)")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a page has shown `line`.
    fn wait_for_line(&mut self, page: &str, line: &str) {
        self.wait_until(
            page,
            &format!("window.chat.lines.includes({})", json!(line)),
        );
    }
}

fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) on the process group of a child we started with its own group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two pages in headless Chromium and one TCP member in one room: every line reaches the
/// two others, and a page that leaves is seen to.
#[test]
fn two_pages_and_a_tcp_member_in_one_room() {
    let server = web_server();
    let Some(mut browser) = Browser::start() else {
        return;
    };
    let mut tcp = line_member(&server, "tcp");
    let url = format!("http://{}/", server.addr);
    let pages = [browser.open(&url), browser.open(&url)];
    for (page, nick) in pages.iter().zip(["pagea", "pageb"]) {
        browser.wait_until(page, "window.chat !== undefined && chat.state() === 'open'");
        browser.eval(page, &format!("chat.send('/nick {nick}')"));
        browser.wait_for_line(page, &format!("* you are {nick}"));
    }
    let [a, b] = &pages;

    browser.eval(a, "chat.send('hello from a')");
    browser.wait_for_line(b, "[pagea] hello from a");
    wait_for_line(&mut tcp, "[pagea] hello from a\n", PAGE_TIMEOUT);

    browser.eval(b, "chat.send('hello from b')");
    browser.wait_for_line(a, "[pageb] hello from b");
    wait_for_line(&mut tcp, "[pageb] hello from b\n", PAGE_TIMEOUT);

    tcp.send("hello from tcp\n");
    browser.wait_for_line(a, "[tcp] hello from tcp");
    browser.wait_for_line(b, "[tcp] hello from tcp");

    // A page shows its own line locally, and what it was sent by the room.
    let shown = browser.eval(a, "document.getElementById('log').innerText");
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("> hello from a") && shown.contains("[tcp] hello from tcp"),
        "{shown}"
    );

    browser.call(Some(b), "Page.close", json!({}));
    wait_for_line(&mut tcp, "* pageb left\n", PAGE_TIMEOUT);
}
