//! Chat: the seeds' line-based group chat (000, 001, 004) on the event loop, with rooms
//! and names. Every complete line a member sends goes to the other members of its room
//! as `[NAME] text\n` (NAME is its nick, or `HOST:PORT` as in the tutorial), serialised
//! once and shared; arrivals, departures and renames are announced; `/join ROOM`,
//! `/nick NAME`, `/who` and `/quit` (or the seeds' bare `quit`) are the commands. With
//! `--web` the same port serves a page and WebSocket members ([`web`]).
//!
//! A room is a [`Group`]: a broadcast names it, and the loop asks [`Chat::receives`]
//! which connections are in it. The [`Roster`] shared by a server's loops knows the
//! names in each room (for `/who` and unique nicks); it is locked for commands and
//! arrivals, never for a line.

pub mod roster;
mod stamp;
pub mod web;

use std::sync::Arc;
use std::time::SystemTime;

use super::line::{next_line, Line};
use super::{ByteStr, Flow, Group, Output, Protocol, Receive, Timeout};
use crate::net::Peer;
pub use roster::Roster;
use stamp::{Stamp, STAMP_LEN};
use tungstenite::protocol::frame::coding::{Control, OpCode};
use web::{Event, Request, Sniff};

/// Default for `--max-line`, in bytes of text (without the line end). A chat line is typed
/// or pasted by a person; 64 KiB is generous for that while bounding what one connection
/// may make the server buffer before its line ends.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// The most bytes the server adds around a line: `[`, the longest name (an address such
/// as `[ffff:...:ffff%scope]:65535` stays under 60; a nick is at most 32), `] ` and `\n`.
/// A recipient's cap must leave room for one maximal line plus this (and the timestamp
/// and frame header, when configured: [`ChatConfig::line_overhead`]), or a long line
/// would disconnect everybody.
pub const LINE_OVERHEAD: usize = 64;

/// Lines found in one call are gathered into one shared chunk up to this many bytes, so a
/// burst of short lines costs each recipient one queue entry, not one per line. Small next
/// to any sensible `--max-outbound`, so batching barely changes when a slow consumer is cut.
const BATCH_BYTES: usize = 16 * 1024;

/// Bytes of lines one member may broadcast per loop turn before it is paused until the
/// next: the loop delivers (and writes) each slice to every member before the sender is
/// read again, so a burst reaches members that read as it comes instead of piling up in
/// their queues, and the other connections get their turn in between. A 1-byte line costs
/// about 20 bytes framed, so one 64 KiB read of empty lines takes about 20 slices.
pub const MAX_FANOUT_PER_TURN: usize = 64 * 1024;

/// Sent to a client whose line is longer than the limit, just before it is disconnected.
pub const TOO_LONG: &[u8] = b"! line too long\n";

/// The room everybody starts in.
pub const DEFAULT_ROOM: &str = "lobby";

/// The longest nick or room name, in bytes.
pub const MAX_NAME: usize = 32;

/// The line that ends a session (seed 004); `/quit` does too.
const QUIT: &[u8] = b"quit";

/// Answers to a command that cannot be carried out.
const UNKNOWN_COMMAND: &[u8] = b"! unknown command: try /join ROOM, /nick NAME, /who or /quit\n";
const BAD_NAME: &[u8] = b"! a name is 1 to 32 letters, digits, '-', '_' or '.'\n";

/// `/who` lists at most this many names (then says how many more), so its answer stays
/// a line of a few KiB however full the room.
const WHO_NAMES: usize = 100;

/// How a chat server behaves, as plain values (`multiconn-server` builds it from flags).
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// The longest line accepted, in bytes (line end excluded).
    pub max_line: usize,
    /// Stamp each line with the local time after its sender's name (seed 004).
    pub timestamps: bool,
    /// Send a member its own lines too (seed 004); by default they go to every other
    /// member only (seeds 000, 001).
    pub echo_sender: bool,
    /// Serve the page at `GET /` and WebSocket members at `/ws` on the chat port.
    pub web: bool,
}

impl ChatConfig {
    /// The most bytes a member receives for a line beyond its text.
    pub fn line_overhead(&self) -> usize {
        LINE_OVERHEAD
            + if self.timestamps { STAMP_LEN } else { 0 }
            + if self.web { web::MAX_FRAME_HEADER } else { 0 }
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            max_line: DEFAULT_MAX_LINE,
            timestamps: false,
            echo_sender: false,
            web: false,
        }
    }
}

/// The chat of one loop: its settings, the roster it shares with the other loops of the
/// server, and scratch space.
#[derive(Clone)]
pub struct Chat {
    config: ChatConfig,
    roster: Arc<Roster>,
    /// The default room's group, before the roster interns it for a member.
    lobby: Group,
    /// The lines of the current call, reused so that a broadcast allocates only its chunk.
    batch: Vec<u8>,
    /// Where `--timestamps` take the time; tests substitute a fixed clock.
    clock: fn() -> SystemTime,
    stamp: Stamp,
    /// The page's whole response, shared by every response (with `--web`).
    page: Option<Arc<[u8]>>,
}

/// Where a connection is in its session.
#[derive(Debug)]
enum Stage {
    /// With `--web`, before its first bytes: they tell a browser from a line member. It is
    /// in no room yet (a chat line must not land in front of an HTTP response).
    Sniffing,
    /// Reading an HTTP request for the page or for the upgrade.
    Http,
    /// A line member (TCP), in its room.
    Line,
    /// A WebSocket member (a browser), in its room: one message is one line.
    WebSocket(web::Decoder),
    /// Left the room (or never was in one); nothing more is read or delivered.
    Gone,
}

/// One connection of the chat.
#[derive(Debug)]
pub struct ChatSession {
    peer: Peer,
    /// Its nick, or `HOST:PORT`.
    name: Box<str>,
    /// `[name] `, made when the name is.
    prefix: Box<[u8]>,
    /// `name` is a nick it holds in the roster.
    has_nick: bool,
    room: Group,
    stage: Stage,
}

impl ChatSession {
    fn in_room(&self) -> bool {
        matches!(self.stage, Stage::Line | Stage::WebSocket(_))
    }
}

/// Whether `name` may be a nick or a room: short, and nothing that could pass for an
/// address (no `:`), a command or a second word.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Chat {
    /// A chat refusing lines longer than `max_line` bytes (line end excluded), otherwise
    /// as by default, with a roster of its own.
    pub fn new(max_line: usize) -> Self {
        Chat::with_config(
            ChatConfig {
                max_line,
                ..ChatConfig::default()
            },
            Arc::new(Roster::default()),
        )
    }

    /// A chat with `config`, sharing `roster` with the other loops of the server.
    pub fn with_config(config: ChatConfig, roster: Arc<Roster>) -> Self {
        let page = config.web.then(|| Arc::from(web::page_response()));
        Chat {
            config,
            roster,
            lobby: Group::new(DEFAULT_ROOM),
            batch: Vec::new(),
            clock: SystemTime::now,
            stamp: Stamp::default(),
            page,
        }
    }

    /// Whether this call has broadcast as much as one turn allows.
    fn fanout_full(&self, out: &Output<'_>) -> bool {
        out.broadcast_len() + self.batch.len() >= MAX_FANOUT_PER_TURN
    }

    /// Appends `[NAME] line\n` (stamped if so configured) to the batch, sending the batch
    /// first if the line would make it pass `BATCH_BYTES`.
    fn push_line(&mut self, session: &ChatSession, line: &[u8], out: &mut Output<'_>) {
        let stamp = if self.config.timestamps { STAMP_LEN } else { 0 };
        let framed = session.prefix.len() + stamp + line.len() + 1;
        if !self.batch.is_empty() && self.batch.len() + framed > BATCH_BYTES {
            self.flush_batch(session, out);
        }
        self.batch.extend_from_slice(&session.prefix);
        if self.config.timestamps {
            self.batch.extend_from_slice(self.stamp.at((self.clock)()));
        }
        self.batch.extend_from_slice(line);
        self.batch.push(b'\n');
    }

    /// Broadcasts the batch to the member's room (and to itself with `echo_sender`).
    fn flush_batch(&mut self, session: &ChatSession, out: &mut Output<'_>) {
        if !self.batch.is_empty() {
            let chunk: Arc<[u8]> = Arc::from(&self.batch[..]);
            if self.config.echo_sender {
                to_self_shared(session, &chunk, out);
            }
            out.broadcast(&session.room, chunk);
            self.batch.clear();
        }
        if self.batch.capacity() > 2 * BATCH_BYTES {
            // One long line grew the scratch buffer; do not keep it for good.
            self.batch = Vec::new();
        }
    }

    /// Puts the member in its room and tells the room.
    fn enter(&mut self, session: &mut ChatSession, out: &mut Output<'_>) {
        session.room = self.roster.enter(session.room.name(), &session.name);
        let notice = format!("* {} joined\n", session.name).into_bytes();
        out.broadcast(&session.room, Arc::from(notice));
    }

    /// Takes the member out of its room and tells the room, once. It is announced when
    /// the member leaves (it receives nothing more from then on), not when its socket is
    /// finally closed, which may be seconds later after a lingering close.
    fn leave(&mut self, session: &mut ChatSession, out: &mut Output<'_>) {
        if session.in_room() {
            self.leave_room(session, out);
            if session.has_nick {
                self.roster.release_nick(&session.name);
            }
        }
        session.stage = Stage::Gone;
    }

    fn leave_room(&mut self, session: &ChatSession, out: &mut Output<'_>) {
        self.roster.leave(session.room.name(), &session.name);
        let notice = format!("* {} left\n", session.name).into_bytes();
        out.broadcast(&session.room, Arc::from(notice));
    }

    /// Every complete line of a line member.
    fn on_lines(
        &mut self,
        session: &mut ChatSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        let mut used = 0;
        let flow = loop {
            if self.fanout_full(out) {
                break Flow::Pause;
            }
            let line = match next_line(&input[used..], self.config.max_line) {
                Line::Complete(line, len) => {
                    used += len;
                    line
                }
                Line::Incomplete => break Flow::Continue,
                // Refused as soon as it cannot become a valid line, whole or not.
                Line::TooLong(len) => break self.refuse(session, len, out),
            };
            if let Some(flow) = self.on_line(session, line, out) {
                break flow;
            }
        };
        self.end_call(session, input, used, flow, out)
    }

    /// What follows the last line of a call: the batch goes out (lines before a `quit`
    /// or an over-long line still are delivered, before the departure), and a closing
    /// member leaves.
    fn end_call(
        &mut self,
        session: &mut ChatSession,
        input: &[u8],
        used: usize,
        flow: Flow,
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        self.flush_batch(session, out);
        match flow {
            Flow::Close => {
                self.leave(session, out);
                // Nothing after the last line is read: the session is over.
                (input.len(), Flow::Close)
            }
            Flow::Continue | Flow::Pause => (used, flow),
        }
    }

    /// One line from a member of either kind: a command, or text for its room. Returns
    /// a flow when the line ends the session.
    fn on_line(
        &mut self,
        session: &mut ChatSession,
        line: &[u8],
        out: &mut Output<'_>,
    ) -> Option<Flow> {
        if line == QUIT || line == b"/quit" {
            log::debug!("{}: quit", session.peer);
            return Some(Flow::Close);
        }
        if line.first() == Some(&b'/') {
            // Lines before it went to the room (and under the name) they were said in.
            self.flush_batch(session, out);
            self.command(session, line, out);
        } else {
            // Guarded: formatting every line would cost more than relaying it.
            if log::log_enabled!(log::Level::Debug) {
                log::debug!("{}: {}", session.peer, ByteStr(line));
            }
            self.push_line(session, line, out);
        }
        out.count_request();
        None
    }

    fn command(&mut self, session: &mut ChatSession, line: &[u8], out: &mut Output<'_>) {
        let text = String::from_utf8_lossy(&line[1..]);
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["join", room] => self.join(session, room, out),
            ["nick", nick] => self.nick(session, nick, out),
            ["who"] => self.who(session, out),
            ["join", ..] => to_self(session, b"! usage: /join ROOM\n", out),
            ["nick", ..] => to_self(session, b"! usage: /nick NAME\n", out),
            _ => to_self(session, UNKNOWN_COMMAND, out),
        }
    }

    fn join(&mut self, session: &mut ChatSession, room: &str, out: &mut Output<'_>) {
        if !valid_name(room) {
            return to_self(session, BAD_NAME, out);
        }
        if room != session.room.name() {
            self.leave_room(session, out);
            session.room = Group::new(room);
            self.enter(session, out);
        }
        to_self(session, format!("* you are in {room}\n").as_bytes(), out);
    }

    fn nick(&mut self, session: &mut ChatSession, nick: &str, out: &mut Output<'_>) {
        if !valid_name(nick) {
            return to_self(session, BAD_NAME, out);
        }
        if nick != &*session.name {
            if !self.roster.claim_nick(nick) {
                return to_self(session, format!("! {nick} is taken\n").as_bytes(), out);
            }
            if session.has_nick {
                self.roster.release_nick(&session.name);
            }
            self.roster.rename(session.room.name(), &session.name, nick);
            let notice = format!("* {} is now {nick}\n", session.name).into_bytes();
            out.broadcast(&session.room, Arc::from(notice));
            session.name = nick.into();
            session.prefix = format!("[{nick}] ").into_bytes().into_boxed_slice();
            session.has_nick = true;
        }
        to_self(session, format!("* you are {nick}\n").as_bytes(), out);
    }

    fn who(&mut self, session: &ChatSession, out: &mut Output<'_>) {
        let room = session.room.name();
        let (names, members) = self.roster.who(room);
        let mut answer = format!("* {room} ({members}):");
        for name in names.iter().take(WHO_NAMES) {
            answer.push(' ');
            answer.push_str(name);
        }
        if names.len() > WHO_NAMES {
            answer.push_str(&format!(" and {} more", names.len() - WHO_NAMES));
        }
        answer.push('\n');
        to_self(session, answer.as_bytes(), out);
    }

    fn refuse(&self, session: &ChatSession, len: usize, out: &mut Output<'_>) -> Flow {
        log::info!(
            "{}: line of {len} bytes or more exceeds {}, closing",
            session.peer,
            self.config.max_line
        );
        to_self(session, TOO_LONG, out);
        Flow::Close
    }

    /// A request on a `--web` connection: the page, an upgrade, or a refusal.
    fn on_http(
        &mut self,
        session: &mut ChatSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        let (request, used) = match web::parse_request(input) {
            Ok(None) => return (0, Flow::Continue),
            Ok(Some(parsed)) => parsed,
            Err(status) => (Request::Refused(status), input.len()),
        };
        out.count_request();
        match request {
            Request::Upgrade { accept } => {
                log::debug!("{}: WebSocket member", session.peer);
                out.send(&web::upgrade_response(&accept));
                session.stage = Stage::WebSocket(web::Decoder::default());
                self.enter(session, out);
                let (more, flow) = self.on_frames(session, &input[used..], out);
                (used + more, flow)
            }
            Request::Page => {
                if let Some(page) = &self.page {
                    out.send_shared(page.clone());
                }
                session.stage = Stage::Gone;
                (input.len(), Flow::Close)
            }
            Request::Refused(status) => {
                log::debug!("{}: HTTP {status}", session.peer);
                out.send(&web::status_response(status));
                session.stage = Stage::Gone;
                (input.len(), Flow::Close)
            }
        }
    }

    /// Every complete frame of a WebSocket member; each message is one line.
    fn on_frames(
        &mut self,
        session: &mut ChatSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        let max_message = self.config.max_line;
        let mut used = 0;
        let flow = loop {
            if self.fanout_full(out) {
                break Flow::Pause;
            }
            let Stage::WebSocket(decoder) = &mut session.stage else {
                break Flow::Close;
            };
            let (event, n) = match decoder.next(&input[used..], max_message) {
                Ok(None) => break Flow::Continue,
                Ok(Some(decoded)) => decoded,
                Err(refusal) => {
                    log::info!("{}: WebSocket: {}, closing", session.peer, refusal.reason);
                    if refusal.code == web::CLOSE_TOO_BIG {
                        to_self(session, TOO_LONG, out);
                    }
                    web::push_close(out.reply_buf(), refusal.code);
                    break Flow::Close;
                }
            };
            used += n;
            match event {
                Event::Fragment | Event::Pong => {}
                Event::Ping(payload) => {
                    web::push_frame(out.reply_buf(), OpCode::Control(Control::Pong), &payload);
                }
                Event::Close(code) => {
                    // The closing handshake: the browser's code comes back.
                    web::push_close(out.reply_buf(), code.unwrap_or(web::CLOSE_NORMAL));
                    break Flow::Close;
                }
                Event::Message => {
                    let mut message = decoder.take_message();
                    let line = one_line(&mut message);
                    let flow = self.on_line(session, line, out);
                    if let Stage::WebSocket(decoder) = &mut session.stage {
                        decoder.restore(message);
                    }
                    if let Some(flow) = flow {
                        web::push_close(out.reply_buf(), web::CLOSE_NORMAL);
                        break flow;
                    }
                }
            }
        };
        self.end_call(session, input, used, flow, out)
    }
}

/// A WebSocket message as one line: without a trailing line end, and with any line break
/// inside it made a space, so that it cannot become several lines for the line members.
fn one_line(message: &mut [u8]) -> &[u8] {
    let mut line = message;
    if let Some(rest) = line.strip_suffix(b"\n") {
        let len = rest.strip_suffix(b"\r").unwrap_or(rest).len();
        line = &mut line[..len];
    }
    for b in line.iter_mut() {
        if matches!(*b, b'\n' | b'\r') {
            *b = b' ';
        }
    }
    line
}

/// Sends `bytes` to the member itself, framed for a WebSocket member.
fn to_self(session: &ChatSession, bytes: &[u8], out: &mut Output<'_>) {
    match session.stage {
        Stage::WebSocket(_) => web::push_binary(out.reply_buf(), bytes),
        _ => out.send(bytes),
    }
}

/// Sends a shared chunk to the member itself: by reference, or framed (a copy).
fn to_self_shared(session: &ChatSession, chunk: &Arc<[u8]>, out: &mut Output<'_>) {
    match session.stage {
        Stage::WebSocket(_) => web::push_binary(out.reply_buf(), chunk),
        _ => out.send_shared(chunk.clone()),
    }
}

impl Default for Chat {
    fn default() -> Self {
        Chat::new(DEFAULT_MAX_LINE)
    }
}

impl Protocol for Chat {
    type Session = ChatSession;

    fn open(&mut self, peer: &Peer, out: &mut Output<'_>) -> ChatSession {
        let name = peer.to_string();
        let mut session = ChatSession {
            peer: *peer,
            prefix: format!("[{name}] ").into_bytes().into_boxed_slice(),
            name: name.into(),
            has_nick: false,
            room: self.lobby.clone(),
            stage: if self.config.web {
                Stage::Sniffing
            } else {
                Stage::Line
            },
        };
        if !self.config.web {
            self.enter(&mut session, out);
        }
        session
    }

    fn on_input(
        &mut self,
        session: &mut ChatSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        match session.stage {
            Stage::Line => self.on_lines(session, input, out),
            Stage::WebSocket(_) => self.on_frames(session, input, out),
            Stage::Http => self.on_http(session, input, out),
            Stage::Sniffing => match web::sniff(input) {
                Sniff::NeedMore => (0, Flow::Continue),
                Sniff::Http => {
                    session.stage = Stage::Http;
                    self.on_http(session, input, out)
                }
                Sniff::Line => {
                    session.stage = Stage::Line;
                    self.enter(session, out);
                    self.on_lines(session, input, out)
                }
            },
            Stage::Gone => (input.len(), Flow::Close),
        }
    }

    fn on_eof(&mut self, session: &mut ChatSession, leftover: &[u8], out: &mut Output<'_>) {
        if !leftover.is_empty() {
            log::debug!("{}: left with an unfinished line, dropped", session.peer);
        }
        self.leave(session, out);
    }

    fn mid_frame(&self, session: &ChatSession) -> bool {
        matches!(&session.stage, Stage::WebSocket(d) if d.mid_message())
    }

    fn on_timeout(&mut self, session: &mut ChatSession, _kind: Timeout, out: &mut Output<'_>) {
        if let Stage::Http = session.stage {
            out.send(&web::status_response("408 Request Timeout"));
        }
    }

    fn on_close(&mut self, mut session: ChatSession, _peer: &Peer, out: &mut Output<'_>) {
        // Cut as a slow consumer, a socket error, a timeout, shutdown: announced now.
        self.leave(&mut session, out);
    }

    #[inline(always)]
    fn receives(&self, session: &ChatSession, group: &Group) -> Receive {
        match session.stage {
            Stage::Line if session.room == *group => Receive::Bytes,
            Stage::WebSocket(_) if session.room == *group => Receive::Framed,
            _ => Receive::No,
        }
    }

    fn frame(&self, chunk: &[u8]) -> Arc<[u8]> {
        Arc::from(web::binary_frame(chunk))
    }

    fn max_pending_input(&self) -> usize {
        // `on_input` refuses anything longer itself, with a message; this is a backstop.
        let line = self.config.max_line.saturating_add(1);
        if self.config.web {
            line.max(self.config.max_line.saturating_add(web::MAX_FRAME_HEADER))
                .max(web::MAX_REQUEST_HEAD)
        } else {
            line
        }
    }
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Produced;
    use proptest::prelude::*;

    const PEER: &str = "10.0.0.1:4000";

    fn peer() -> Peer {
        Peer::Tcp(PEER.parse().unwrap())
    }

    /// What one connection's input made the protocol produce, gathered across calls.
    #[derive(Debug, Default)]
    struct Gathered {
        reply: Vec<u8>,
        /// The shared chunks, concatenated.
        broadcast: Vec<u8>,
        chunk_sizes: Vec<usize>,
        lines: u64,
        flow: Option<Flow>,
        /// Calls that returned `Flow::Pause`.
        pauses: usize,
    }

    /// Feeds `pieces` one after another the way the loop does: unconsumed bytes are kept
    /// and presented again, joined to the next piece; broadcasts are delivered (taken out)
    /// after each call, and after a pause what was kept is presented again. Stops at
    /// `Flow::Close`, after which the departure must have been announced, last (it is
    /// checked and left out here).
    fn run(chat: &mut Chat, pieces: &[&[u8]]) -> Gathered {
        let mut sink = Produced::default();
        let mut session = chat.open(&peer(), &mut sink.output());
        let joined = chunks(&sink.broadcast);
        sink.clear_broadcast();
        assert_eq!(joined, [format!("* {PEER} joined\n").into_bytes()]);
        let mut pending = Vec::new();
        let mut gathered = Gathered::default();
        let mut broadcast = Vec::new();
        'pieces: for piece in pieces {
            pending.extend_from_slice(piece);
            loop {
                let (used, flow) = chat.on_input(&mut session, &pending, &mut sink.output());
                assert!(used <= pending.len());
                pending.drain(..used);
                assert!(
                    sink.broadcast.len() <= MAX_FANOUT_PER_TURN + BATCH_BYTES + 100,
                    "one call's fan-out is bounded"
                );
                assert!(sink.broadcast.runs().all(|(g, _)| g.name() == DEFAULT_ROOM));
                broadcast.extend(chunks(&sink.broadcast));
                sink.clear_broadcast();
                if flow == Flow::Close {
                    gathered.flow = Some(flow);
                    break 'pieces;
                }
                if flow == Flow::Pause {
                    gathered.pauses += 1;
                    continue;
                }
                assert!(
                    pending.len() <= chat.max_pending_input(),
                    "kept more than the cap"
                );
                // Every complete line is consumed before returning.
                assert!(
                    !pending.contains(&b'\n'),
                    "a complete line was left unconsumed"
                );
                break;
            }
        }
        let (reply, requests) = (sink.reply.to_vec(), sink.requests);
        let left = format!("* {PEER} left\n");
        if gathered.flow == Some(Flow::Close) {
            let last = broadcast.pop().expect("a departure notice");
            assert_eq!(&last[..], left.as_bytes(), "the departure comes last");
        }
        assert!(broadcast.iter().all(|c| &c[..] != left.as_bytes()));
        gathered.reply = reply;
        gathered.chunk_sizes = broadcast.iter().map(|c| c.len()).collect();
        gathered.broadcast = broadcast.iter().flat_map(|c| c.iter().copied()).collect();
        gathered.lines = requests;
        gathered
    }

    /// The broadcast chunks, in order, as byte strings.
    fn chunks(broadcasts: &crate::protocol::Broadcasts) -> Vec<Vec<u8>> {
        broadcasts.iter().map(|(_, c)| c.to_vec()).collect()
    }

    fn framed(lines: &[&str]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| format!("[{PEER}] {l}\n").into_bytes())
            .collect()
    }

    /// Each line goes out prefixed with the sender's address; `\r\n` is accepted.
    #[test]
    fn lines_are_prefixed_and_broadcast() {
        let got = run(&mut Chat::new(100), &[b"hello\nsecond\r\n\nlast"]);
        assert_eq!(got.broadcast, framed(&["hello", "second", ""]));
        assert_eq!(got.chunk_sizes.len(), 1, "one call's lines share one chunk");
        assert!(got.reply.is_empty(), "the sender gets nothing back");
        assert_eq!(got.lines, 3);
        assert_eq!(got.flow, None);
    }

    /// The same input split at every point, and byte at a time, gives the same output.
    #[test]
    fn every_split_point_gives_the_same_broadcast() {
        let input: &[u8] = b"one\r\ntwo\n\nthree four\nquit\nnever\n";
        let whole = run(&mut Chat::new(100), &[input]);
        assert_eq!(whole.broadcast, framed(&["one", "two", "", "three four"]));
        assert_eq!(whole.flow, Some(Flow::Close));
        for split in 0..=input.len() {
            let got = run(&mut Chat::new(100), &[&input[..split], &input[split..]]);
            assert_eq!(got.broadcast, whole.broadcast, "split at {split}");
            assert_eq!(got.flow, Some(Flow::Close), "split at {split}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let got = run(&mut Chat::new(100), &bytes);
        assert_eq!(got.broadcast, whole.broadcast);
        assert_eq!(got.flow, Some(Flow::Close));
    }

    /// `quit` (also as `quit\r\n`) closes without broadcasting it or anything after it.
    #[test]
    fn quit_ends_the_session() {
        for input in [&b"a\nquit\nb\n"[..], b"a\nquit\r\nb\n"] {
            let got = run(&mut Chat::new(100), &[input]);
            assert_eq!(got.broadcast, framed(&["a"]));
            assert_eq!(got.flow, Some(Flow::Close));
            assert!(got.reply.is_empty());
        }
        // Only the exact word quits.
        let got = run(&mut Chat::new(100), &[b"quit now\n quit\n"]);
        assert_eq!(got.broadcast, framed(&["quit now", " quit"]));
        assert_eq!(got.flow, None);
    }

    /// A line of exactly the limit passes; one byte more is refused, with or without `\r`.
    #[test]
    fn line_length_limit() {
        let ok = [b'x'; 8];
        let got = run(&mut Chat::new(8), &[&ok, b"\r\n", &ok, b"\n"]);
        assert_eq!(got.broadcast, framed(&["xxxxxxxx", "xxxxxxxx"]));
        assert_eq!(got.flow, None);

        let got = run(&mut Chat::new(8), &[b"fine\n", &[b'y'; 9], b"\n"]);
        assert_eq!(got.broadcast, framed(&["fine"]));
        assert_eq!(got.reply, TOO_LONG);
        assert_eq!(got.flow, Some(Flow::Close));
    }

    /// An over-long line is refused as soon as it cannot end in time, not at its `\n`.
    #[test]
    fn long_line_refused_before_its_end() {
        // 8 bytes plus a `\r` may still be a valid line; 10 bytes without `\n` cannot.
        let got = run(&mut Chat::new(8), &[&[b'z'; 8], b"\r"]);
        assert_eq!(got.flow, None);
        let got = run(&mut Chat::new(8), &[&[b'z'; 10]]);
        assert_eq!(got.reply, TOO_LONG);
        assert_eq!(got.flow, Some(Flow::Close));
        assert!(got.broadcast.is_empty());
    }

    /// Many lines in one call are split into several shared chunks, in order.
    #[test]
    fn large_bursts_are_batched_in_bounded_chunks() {
        let line = "l".repeat(1000);
        let input: Vec<u8> = (0..100)
            .flat_map(|_| format!("{line}\n").into_bytes())
            .collect();
        let got = run(&mut Chat::new(2000), &[&input]);
        let expect = framed(&vec![line.as_str(); 100]);
        assert_eq!(got.broadcast, expect);
        let framed_line = format!("[{PEER}] {line}\n").len();
        assert!(
            got.chunk_sizes.len() > 1,
            "100 KB of lines make several chunks"
        );
        assert!(got.chunk_sizes.iter().all(|size| *size <= BATCH_BYTES));
        // Full (the next line would not have fitted) but for the last of each call.
        let partial = got
            .chunk_sizes
            .iter()
            .filter(|size| *size + framed_line <= BATCH_BYTES)
            .count();
        assert!(partial <= got.pauses + 1, "{:?}", got.chunk_sizes);
    }

    /// A burst of empty lines (the cheapest input with the largest fan-out) is broadcast
    /// in bounded slices: the member is paused between them, and every line still comes
    /// out, framed and in order.
    #[test]
    fn bursts_are_sliced_per_turn() {
        let burst = vec![b'\n'; 64 * 1024];
        let got = run(&mut Chat::new(100), &[&burst]);
        assert_eq!(got.lines, 64 * 1024);
        assert_eq!(got.broadcast, framed(&vec![""; 64 * 1024]));
        let framed_line = format!("[{PEER}] \n").len();
        assert!(
            got.pauses >= 64 * 1024 * framed_line / (MAX_FANOUT_PER_TURN + BATCH_BYTES),
            "{} pauses",
            got.pauses
        );
        assert_eq!(got.flow, None);
    }

    /// Joining and leaving are announced to the others, leaving exactly once: at the
    /// member's FIN, `quit` or over-long line, else when the connection is closed.
    #[test]
    fn join_and_leave_notices() {
        let joined: &[u8] = b"* 10.0.0.1:4000 joined\n";
        let left: &[u8] = b"* 10.0.0.1:4000 left\n";
        type Steps = fn(&mut Chat, &mut ChatSession, &mut Output<'_>);
        let cases: [Steps; 4] = [
            |_, _, _| {},
            |chat, s, out| chat.on_eof(s, b"", out),
            |chat, s, out| chat.on_eof(s, b"unfinished", out),
            |chat, s, out| assert_eq!(chat.on_input(s, b"quit\n", out), (5, Flow::Close)),
        ];
        for before_close in cases {
            let mut produced = Produced::default();
            let mut out = produced.output();
            let mut chat = Chat::default();
            let mut session = chat.open(&peer(), &mut out);
            before_close(&mut chat, &mut session, &mut out);
            chat.on_close(session, &peer(), &mut out);
            assert_eq!(chunks(&produced.broadcast), [joined, left]);
            assert!(produced.reply.is_empty());
        }
    }

    proptest! {
        /// Random input split anywhere never panics, keeps at most the cap, and every line
        /// within the limit comes out framed, in order.
        #[test]
        fn random_input_round_trips(
            data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..400),
            split in 0usize..400,
            max_line in 0usize..40,
        ) {
            let split = split.min(data.len());
            let got = run(&mut Chat::new(max_line), &[&data[..split], &data[split..]]);
            let mut expect = Vec::new();
            let mut closed = false;
            let mut rest = &data[..];
            while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
                rest = &rest[end + 1..];
                if line.len() > max_line || line == QUIT || line == b"/quit" {
                    closed = true;
                    break;
                }
                if line.first() == Some(&b'/') {
                    continue; // a command: answered to the member, not broadcast
                }
                expect.extend_from_slice(format!("[{PEER}] ").as_bytes());
                expect.extend_from_slice(line);
                expect.push(b'\n');
            }
            if !closed && rest.len() > max_line + 1 {
                closed = true;
            }
            prop_assert_eq!(got.broadcast, expect);
            prop_assert_eq!(got.flow.is_some(), closed);
        }
    }

    // ---- rooms, names and commands ----

    /// Several members of one chat, fed line by line, and what each call produced.
    struct Room {
        chat: Chat,
        members: Vec<ChatSession>,
    }

    /// What one call produced: the reply, and each broadcast as (room, text).
    #[derive(Debug, Default)]
    struct Said {
        /// The reply as text (lossy), and as bytes.
        reply: String,
        raw: Vec<u8>,
        broadcast: Vec<(String, String)>,
        flow: Option<Flow>,
    }

    impl Room {
        fn new(chat: Chat) -> Room {
            Room {
                chat,
                members: Vec::new(),
            }
        }

        /// A member from `10.0.0.N:4000` connects; returns its index and what it produced.
        fn join(&mut self) -> (usize, Said) {
            let n = self.members.len() + 1;
            let peer = Peer::Tcp(format!("10.0.0.{n}:4000").parse().unwrap());
            let mut produced = Produced::default();
            let session = self.chat.open(&peer, &mut produced.output());
            self.members.push(session);
            (n - 1, said(&produced, None))
        }

        fn send(&mut self, who: usize, input: &[u8]) -> Said {
            let mut produced = Produced::default();
            let (used, flow) =
                self.chat
                    .on_input(&mut self.members[who], input, &mut produced.output());
            assert_eq!(used, input.len(), "every complete line is consumed");
            said(&produced, Some(flow))
        }

        /// Whether member `who` takes a broadcast to `room`, and how.
        fn receives(&self, who: usize, room: &str) -> Receive {
            self.chat.receives(&self.members[who], &Group::new(room))
        }
    }

    fn said(produced: &Produced, flow: Option<Flow>) -> Said {
        Said {
            reply: String::from_utf8_lossy(&produced.reply.to_vec()).into_owned(),
            raw: produced.reply.to_vec(),
            broadcast: produced
                .broadcast
                .iter()
                .map(|(g, c)| (g.name().to_string(), String::from_utf8(c.to_vec()).unwrap()))
                .collect(),
            flow,
        }
    }

    fn to(room: &str, text: &str) -> (String, String) {
        (room.to_string(), text.to_string())
    }

    /// `/join` moves a member: the old room sees it leave, the new one arrive, it is told
    /// where it is, its lines go to the new room, and only members there take them.
    #[test]
    fn join_moves_a_member_between_rooms() {
        let mut room = Room::new(Chat::default());
        let (a, _) = room.join();
        let (b, _) = room.join();
        let got = room.send(a, b"before\n/join dev\nafter\n");
        assert_eq!(got.reply, "* you are in dev\n");
        assert_eq!(
            got.broadcast,
            [
                to("lobby", "[10.0.0.1:4000] before\n"),
                to("lobby", "* 10.0.0.1:4000 left\n"),
                to("dev", "* 10.0.0.1:4000 joined\n"),
                to("dev", "[10.0.0.1:4000] after\n"),
            ]
        );
        assert_eq!(room.receives(a, "dev"), Receive::Bytes);
        assert_eq!(room.receives(a, "lobby"), Receive::No);
        assert_eq!(room.receives(b, "lobby"), Receive::Bytes);
        assert_eq!(room.receives(b, "dev"), Receive::No);
        // Joining the room it is in changes nothing.
        let got = room.send(a, b"/join dev\n");
        assert_eq!(
            (got.reply.as_str(), got.broadcast.len()),
            ("* you are in dev\n", 0)
        );
        assert_eq!(
            room.send(b, b"/who\n").reply,
            "* lobby (1): 10.0.0.2:4000\n"
        );
        assert_eq!(
            room.send(b, b"/join dev\n/who\n").reply,
            "* you are in dev\n* dev (2): 10.0.0.1:4000 10.0.0.2:4000\n"
        );
    }

    /// `/nick` renames a member: lines carry the nick, the room hears of it, a nick is
    /// held by one member at a time and free again once its holder leaves.
    #[test]
    fn nick_renames_and_is_unique() {
        let mut room = Room::new(Chat::default());
        let (a, _) = room.join();
        let (b, _) = room.join();
        let got = room.send(a, b"/nick ann\nhi\n");
        assert_eq!(got.reply, "* you are ann\n");
        assert_eq!(
            got.broadcast,
            [
                to("lobby", "* 10.0.0.1:4000 is now ann\n"),
                to("lobby", "[ann] hi\n")
            ]
        );
        let got = room.send(b, b"/nick ann\n");
        assert_eq!(
            (got.reply.as_str(), got.broadcast.len()),
            ("! ann is taken\n", 0)
        );
        assert_eq!(room.send(a, b"/nick anne\n").reply, "* you are anne\n");
        assert_eq!(room.send(b, b"/nick ann\n").reply, "* you are ann\n");
        assert_eq!(room.send(b, b"/who\n").reply, "* lobby (2): ann anne\n");
        let got = room.send(a, b"quit\n");
        assert_eq!(got.broadcast, [to("lobby", "* anne left\n")]);
        assert_eq!(got.flow, Some(Flow::Close));
        assert_eq!(room.send(b, b"/nick anne\n").reply, "* you are anne\n");
    }

    /// Bad names, unknown commands and missing arguments are answered to the member only.
    #[test]
    fn command_mistakes_are_answered_privately() {
        let mut room = Room::new(Chat::default());
        let (a, _) = room.join();
        for (input, answer) in [
            (&b"/nick a:b\n"[..], BAD_NAME),
            (b"/join \n", b"! usage: /join ROOM\n"),
            (b"/join a b\n", b"! usage: /join ROOM\n"),
            (b"/nick\n", b"! usage: /nick NAME\n"),
            (b"/join 123456789012345678901234567890123\n", BAD_NAME),
            (b"/dance\n", UNKNOWN_COMMAND),
            (b"/\n", UNKNOWN_COMMAND),
        ] {
            let got = room.send(a, input);
            assert_eq!(got.raw, answer, "{}", String::from_utf8_lossy(input));
            assert!(got.broadcast.is_empty());
        }
        // `/quit` leaves like `quit`.
        let got = room.send(a, b"/quit\n");
        assert_eq!(got.flow, Some(Flow::Close));
        assert_eq!(got.broadcast, [to("lobby", "* 10.0.0.1:4000 left\n")]);
    }

    /// `--echo-sender` sends a member its own lines, shared with the broadcast;
    /// `--timestamps` stamps each line after the name.
    #[test]
    fn echo_sender_and_timestamps() {
        let config = ChatConfig {
            echo_sender: true,
            timestamps: true,
            ..ChatConfig::default()
        };
        let mut chat = Chat::with_config(config, Arc::new(Roster::default()));
        chat.clock = || std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let stamp = String::from_utf8(Stamp::default().at((chat.clock)()).to_vec()).unwrap();
        let mut room = Room::new(chat);
        let (a, _) = room.join();
        let got = room.send(a, b"hello\n");
        let line = format!("[10.0.0.1:4000] {stamp}hello\n");
        assert_eq!(got.reply, line);
        assert_eq!(got.broadcast, [to("lobby", &line)]);
    }

    // ---- the web side ----

    fn web_chat() -> Chat {
        let config = ChatConfig {
            web: true,
            ..ChatConfig::default()
        };
        Chat::with_config(config, Arc::new(Roster::default()))
    }

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [7, 1, 9, 3];
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    /// With `--web`, a connection is in no room until its first bytes: a line makes it a
    /// line member (announced then), `GET /` gets the page and never joins.
    #[test]
    fn web_sniffs_the_first_bytes() {
        let mut room = Room::new(web_chat());
        let (a, opened) = room.join();
        assert!(opened.broadcast.is_empty());
        assert_eq!(room.receives(a, "lobby"), Receive::No);
        let got = room.send(a, b"hi\n");
        assert_eq!(
            got.broadcast,
            [
                to("lobby", "* 10.0.0.1:4000 joined\n"),
                to("lobby", "[10.0.0.1:4000] hi\n")
            ]
        );
        assert_eq!(room.receives(a, "lobby"), Receive::Bytes);

        let (b, _) = room.join();
        let mut produced = Produced::default();
        let (used, flow) = room
            .chat
            .on_input(&mut room.members[b], b"GE", &mut produced.output());
        assert_eq!((used, flow), (0, Flow::Continue));
        let got = room.send(b, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            got.reply.starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            got.reply
        );
        assert!(got.reply.ends_with("</html>\n"));
        assert_eq!((got.flow, got.broadcast.len()), (Some(Flow::Close), 0));
        assert_eq!(room.receives(b, "lobby"), Receive::No);
    }

    /// A WebSocket member joins at the upgrade, takes broadcasts framed, says one line
    /// per message (commands too, answered in frames), is ponged, and leaves at close.
    #[test]
    fn websocket_member() {
        let mut room = Room::new(web_chat());
        let (w, _) = room.join();
        let mut input = UPGRADE.to_vec();
        input.extend(masked(0x1, b"hello\nthere"));
        let got = room.send(w, &input);
        assert!(got
            .reply
            .starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(got
            .reply
            .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert_eq!(
            got.broadcast,
            [
                to("lobby", "* 10.0.0.1:4000 joined\n"),
                to("lobby", "[10.0.0.1:4000] hello there\n")
            ]
        );
        assert_eq!(room.receives(w, "lobby"), Receive::Framed);
        assert_eq!(&room.chat.frame(b"ab")[..], [0x82, 2, b'a', b'b']);

        let got = room.send(w, &[masked(0x9, b"p"), masked(0x1, b"/who")].concat());
        let mut expect = vec![0x8a, 1, b'p'];
        web::push_binary(&mut expect, b"* lobby (1): 10.0.0.1:4000\n");
        assert_eq!(got.raw, expect);

        let got = room.send(w, &masked(0x8, &1001u16.to_be_bytes()));
        assert_eq!(got.raw, [0x88, 2, 0x03, 0xe9]);
        assert_eq!(got.flow, Some(Flow::Close));
        assert_eq!(got.broadcast, [to("lobby", "* 10.0.0.1:4000 left\n")]);
    }

    /// A WebSocket message longer than a line is refused from its header: the member is
    /// told, the connection closed with 1009.
    #[test]
    fn websocket_message_too_long() {
        let mut chat = web_chat();
        chat.config.max_line = 8;
        let mut room = Room::new(chat);
        let (w, _) = room.join();
        room.send(w, UPGRADE);
        let got = room.send(w, &masked(0x1, b"123456789"));
        let mut expect = Vec::new();
        web::push_binary(&mut expect, TOO_LONG);
        web::push_close(&mut expect, web::CLOSE_TOO_BIG);
        assert_eq!(got.raw, expect);
        assert_eq!(got.flow, Some(Flow::Close));
    }
}
