//! Chat: a line-based group chat room (seeds 000, 001, 004) on the event loop. Every
//! complete line a client sends goes to every other client as `[HOST:PORT] text\n`,
//! serialised once and shared; arrivals and departures are announced; `quit` leaves.

use std::sync::Arc;

use super::{ByteStr, Flow, Output, Protocol};
use crate::net::Peer;

/// Default for `--max-line`, in bytes of text (without the line end). A chat line is typed
/// or pasted by a person; 64 KiB is generous for that while bounding what one connection
/// may make the server buffer before its line ends.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// The most bytes the server adds around a line: `[`, the longest address
/// (`[ffff:...:ffff%scope]:65535` stays under 60), `] ` and `\n`. A recipient's cap must
/// leave room for one maximal line plus this, or a long line would disconnect everybody.
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

/// The line that ends a session (seed 004).
const QUIT: &[u8] = b"quit";

/// The chat room of one loop. Everyone connected to the loop is in the room.
#[derive(Debug, Clone)]
pub struct Chat {
    max_line: usize,
    /// The lines of the current call, reused so that a broadcast allocates only its chunk.
    batch: Vec<u8>,
}

/// One member of the room.
#[derive(Debug)]
pub struct ChatSession {
    peer: Peer,
    /// `[HOST:PORT] `, formatted once when the client connects.
    prefix: Box<[u8]>,
    /// Its departure was announced already (at `quit`, an over-long line or its FIN).
    left: bool,
}

impl Chat {
    /// A room refusing lines longer than `max_line` bytes (line end excluded).
    pub fn new(max_line: usize) -> Self {
        Chat {
            max_line,
            batch: Vec::new(),
        }
    }

    /// Appends `[HOST:PORT] line\n` to the batch, sending the batch first if the line would
    /// make it pass `BATCH_BYTES`.
    fn push_line(&mut self, session: &ChatSession, line: &[u8], out: &mut Output<'_>) {
        let framed = session.prefix.len() + line.len() + 1;
        if !self.batch.is_empty() && self.batch.len() + framed > BATCH_BYTES {
            self.flush_batch(out);
        }
        self.batch.extend_from_slice(&session.prefix);
        self.batch.extend_from_slice(line);
        self.batch.push(b'\n');
    }

    /// Tells the others this member left, once. It is announced when the member leaves the
    /// room (it receives nothing more from then on), not when its socket is finally
    /// closed, which may be seconds later after a lingering close.
    fn leave(&self, session: &mut ChatSession, out: &mut Output<'_>) {
        if !session.left {
            session.left = true;
            out.broadcast(Arc::from(format!("* {} left\n", session.peer).into_bytes()));
        }
    }

    fn flush_batch(&mut self, out: &mut Output<'_>) {
        if !self.batch.is_empty() {
            out.broadcast(Arc::from(&self.batch[..]));
            self.batch.clear();
        }
        if self.batch.capacity() > 2 * BATCH_BYTES {
            // One long line grew the scratch buffer; do not keep it for good.
            self.batch = Vec::new();
        }
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
        out.broadcast(Arc::from(format!("* {peer} joined\n").into_bytes()));
        ChatSession {
            peer: *peer,
            prefix: format!("[{peer}] ").into_bytes().into_boxed_slice(),
            left: false,
        }
    }

    fn on_input(
        &mut self,
        session: &mut ChatSession,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        let mut used = 0;
        let flow = loop {
            if out.broadcast_len() + self.batch.len() >= MAX_FANOUT_PER_TURN {
                break Flow::Pause;
            }
            let rest = &input[used..];
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                // Text plus a `\r` still waiting for its `\n` may reach `max_line + 1`;
                // anything longer cannot become a valid line, so refuse it now.
                if rest.len() > self.max_line + 1 {
                    break self.refuse(session, rest.len(), out);
                }
                break Flow::Continue;
            };
            let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
            used += end + 1;
            if line.len() > self.max_line {
                break self.refuse(session, line.len(), out);
            }
            if line == QUIT {
                log::debug!("{}: quit", session.peer);
                break Flow::Close;
            }
            // Guarded: formatting every line would cost more than relaying it.
            if log::log_enabled!(log::Level::Debug) {
                log::debug!("{}: {}", session.peer, ByteStr(line));
            }
            self.push_line(session, line, out);
            out.count_request();
        };
        // Lines before a `quit` or an over-long line are still delivered, before the
        // departure.
        self.flush_batch(out);
        match flow {
            Flow::Close => {
                self.leave(session, out);
                // Nothing after the last line is read: the session is over.
                (input.len(), Flow::Close)
            }
            Flow::Continue | Flow::Pause => (used, flow),
        }
    }

    fn on_eof(&mut self, session: &mut ChatSession, leftover: &[u8], out: &mut Output<'_>) {
        if !leftover.is_empty() {
            log::debug!("{}: left with an unfinished line, dropped", session.peer);
        }
        self.leave(session, out);
    }

    fn on_close(&mut self, mut session: ChatSession, _peer: &Peer, out: &mut Output<'_>) {
        // Cut as a slow consumer, a socket error, a timeout, shutdown: announced now.
        self.leave(&mut session, out);
    }

    fn max_pending_input(&self) -> usize {
        // `on_input` refuses anything longer itself, with a message; this is a backstop.
        self.max_line + 1
    }
}

impl Chat {
    fn refuse(&self, session: &ChatSession, len: usize, out: &mut Output<'_>) -> Flow {
        log::info!(
            "{}: line of {len} bytes or more exceeds {}, closing",
            session.peer,
            self.max_line
        );
        out.send(TOO_LONG);
        Flow::Close
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
        let joined = sink.broadcast.remove(0);
        sink.clear_broadcast();
        assert_eq!(&joined[..], format!("* {PEER} joined\n").as_bytes());
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
                    sink.broadcast_len <= MAX_FANOUT_PER_TURN + BATCH_BYTES + 100,
                    "one call's fan-out is bounded"
                );
                broadcast.append(&mut sink.broadcast);
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
            let texts: Vec<&[u8]> = produced.broadcast.iter().map(|c| &c[..]).collect();
            assert_eq!(texts, [joined, left]);
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
                if line.len() > max_line || line == QUIT {
                    closed = true;
                    break;
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
}
