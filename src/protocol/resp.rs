//! RESP2, the Redis protocol, for the links that carry a chat's broadcasts between
//! servers: a subscriber that takes what other servers publish to the rooms' channels,
//! and a publisher (a subscribed connection cannot publish). Frames are decoded and
//! encoded by `redis-protocol` on byte slices; this module knows the commands and turns
//! a published message into a broadcast. Every message starts with its server's id, so a
//! server drops its own.

use std::collections::HashMap;
use std::sync::Arc;

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, RangeFrame};

use super::{Flow, Group, Output, Protocol};
use crate::net::Peer;

/// The channels are `PREFIX` + room name; the subscriber takes `PREFIX*`.
pub const CHANNEL_PREFIX: &str = "multiconn:chat:";

/// Length of the server id in a message: 16 hex digits and a space.
const ID_LEN: usize = 17;

/// Groups made from channel names are kept for reuse (so a message allocates only its
/// chunk); past this many, the cache is emptied, as rooms come and go.
const MAX_CACHED_GROUPS: usize = 1024;

/// Which end of the pair a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Subscriber,
    Publisher,
}

/// One link's session.
#[derive(Debug)]
pub struct RespLink {
    pub role: Role,
    /// The subscription was confirmed (subscriber only).
    pub subscribed: bool,
    /// An error reply was logged already on this link.
    error_logged: bool,
}

impl RespLink {
    pub fn new(role: Role) -> RespLink {
        RespLink {
            role,
            subscribed: false,
            error_logged: false,
        }
    }
}

/// The RESP side of one server loop: its id, and the groups its channels name.
#[derive(Debug)]
pub struct Resp {
    /// `0123456789abcdef ` : this server's id as it starts every message it publishes.
    id: [u8; ID_LEN],
    /// The longest frame accepted: a broadcast chunk and the command around it.
    max_frame: usize,
    groups: HashMap<Box<[u8]>, Group>,
    /// Messages published by others and passed on to this loop's members.
    pub received: u64,
}

impl Resp {
    /// The links of server `id`, for chunks up to `max_chunk` bytes.
    pub fn new(id: u64, max_chunk: usize) -> Resp {
        let mut hex = [b' '; ID_LEN];
        hex[..16].copy_from_slice(format!("{id:016x}").as_bytes());
        Resp {
            id: hex,
            max_frame: max_chunk + ID_LEN + 512,
            groups: HashMap::new(),
            received: 0,
        }
    }

    /// `PSUBSCRIBE multiconn:chat:*`: every room's channel.
    pub fn subscribe(&self, out: &mut Vec<u8>) {
        let pattern = format!("{CHANNEL_PREFIX}*");
        encode(
            out,
            &[
                BorrowedFrame::BulkString(b"PSUBSCRIBE"),
                BorrowedFrame::BulkString(pattern.as_bytes()),
            ],
        );
    }

    /// `PING`, which a subscribed connection may send too: a link that does not answer
    /// within the idle timeout is dead.
    pub fn ping(&self, out: &mut Vec<u8>) {
        encode(out, &[BorrowedFrame::BulkString(b"PING")]);
    }

    /// `PUBLISH multiconn:chat:ROOM "ID chunk"`. `scratch` holds the message while it is
    /// encoded (kept by the caller, so this allocates nothing once warm).
    pub fn publish(&self, group: &Group, chunk: &[u8], scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
        scratch.clear();
        scratch.extend_from_slice(CHANNEL_PREFIX.as_bytes());
        scratch.extend_from_slice(group.name().as_bytes());
        let channel_len = scratch.len();
        scratch.extend_from_slice(&self.id);
        scratch.extend_from_slice(chunk);
        let (channel, message) = scratch.split_at(channel_len);
        encode(
            out,
            &[
                BorrowedFrame::BulkString(b"PUBLISH"),
                BorrowedFrame::BulkString(channel),
                BorrowedFrame::BulkString(message),
            ],
        );
    }

    /// The group a channel names (cached).
    fn group(&mut self, channel: &[u8]) -> Option<Group> {
        let room = channel.strip_prefix(CHANNEL_PREFIX.as_bytes())?;
        if let Some(group) = self.groups.get(room) {
            return Some(group.clone());
        }
        let name = std::str::from_utf8(room).ok()?;
        if self.groups.len() >= MAX_CACHED_GROUPS {
            self.groups.clear();
        }
        let group = Group::new(name);
        self.groups.insert(room.into(), group.clone());
        Some(group)
    }

    /// A published message: broadcast to this loop's members unless this server sent it.
    fn on_message(&mut self, channel: &[u8], message: &[u8], out: &mut Output<'_>) {
        let Some((id, chunk)) = message.split_at_checked(ID_LEN) else {
            return log::debug!("redis: a message without a server id, dropped");
        };
        if id == self.id || chunk.is_empty() {
            return; // our own, already delivered here
        }
        let Some(group) = self.group(channel) else {
            return log::debug!("redis: a message on an unexpected channel, dropped");
        };
        self.received += 1;
        out.broadcast(&group, Arc::from(chunk));
    }

    /// One decoded frame on a link.
    fn on_frame(
        &mut self,
        link: &mut RespLink,
        buf: &[u8],
        frame: &RangeFrame,
        out: &mut Output<'_>,
    ) {
        let bytes = |frame: &RangeFrame| match frame {
            RangeFrame::BulkString((start, end)) | RangeFrame::SimpleString((start, end)) => {
                buf.get(*start..*end)
            }
            _ => None,
        };
        match frame {
            RangeFrame::Array(items) => {
                let kind = items.first().and_then(bytes).unwrap_or_default();
                match (link.role, kind, items.as_slice()) {
                    (Role::Subscriber, b"pmessage", [_, _, channel, message]) => {
                        if let (Some(channel), Some(message)) = (bytes(channel), bytes(message)) {
                            self.on_message(channel, message, out);
                        }
                    }
                    (Role::Subscriber, b"psubscribe", _) => link.subscribed = true,
                    _ => {} // a pong
                }
            }
            RangeFrame::Error((start, end)) => {
                let text = String::from_utf8_lossy(&buf[*start..*end]);
                if !std::mem::replace(&mut link.error_logged, true) {
                    log::warn!("redis: the server answered an error: {text}");
                } else {
                    log::debug!("redis: error: {text}");
                }
            }
            _ => {} // PUBLISH's count of receivers, PONG
        }
    }
}

/// Encodes `items` as a command (an array of bulk strings) at the end of `out`.
fn encode(out: &mut Vec<u8>, items: &[BorrowedFrame<'_>]) {
    let frame = BorrowedFrame::Array(items);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // The buffer is exactly as long as the frame needs, so this cannot fail.
    let _ = encode_borrowed(&mut out[start..], &frame, false);
}

impl Protocol for Resp {
    type Session = RespLink;

    /// Links are made outgoing ([`RespLink::new`]); an accepted connection would be a
    /// publisher that never sends.
    fn open(&mut self, _peer: &Peer, _out: &mut Output<'_>) -> RespLink {
        RespLink::new(Role::Publisher)
    }

    fn on_input(
        &mut self,
        link: &mut RespLink,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> (usize, Flow) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match decode_range(rest) {
                Ok(Some((frame, len))) => {
                    self.on_frame(link, rest, &frame, out);
                    used += len;
                }
                Ok(None) if rest.len() > self.max_frame => {
                    log::warn!(
                        "redis: a frame of more than {} bytes, closing",
                        self.max_frame
                    );
                    return (input.len(), Flow::Close);
                }
                Ok(None) => return (used, Flow::Continue),
                Err(e) => {
                    log::warn!("redis: cannot decode what the server sent ({e:?}), closing");
                    return (input.len(), Flow::Close);
                }
            }
        }
    }

    fn max_pending_input(&self) -> usize {
        self.max_frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Produced;

    /// A server's own publication, as the subscriber sees it come back.
    fn pmessage(channel: &str, message: &[u8]) -> Vec<u8> {
        let mut frame = format!(
            "*4\r\n$8\r\npmessage\r\n$16\r\nmulticonn:chat:*\r\n${}\r\n{channel}\r\n${}\r\n",
            channel.len(),
            message.len()
        )
        .into_bytes();
        frame.extend_from_slice(message);
        frame.extend_from_slice(b"\r\n");
        frame
    }

    /// The commands, byte for byte as Redis expects them.
    #[test]
    fn commands() {
        let resp = Resp::new(0xab, 100);
        let mut out = Vec::new();
        resp.subscribe(&mut out);
        assert_eq!(
            out,
            b"*2\r\n$10\r\nPSUBSCRIBE\r\n$16\r\nmulticonn:chat:*\r\n"
        );
        out.clear();
        resp.publish(&Group::new("dev"), b"[a] hi\n", &mut Vec::new(), &mut out);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$18\r\nmulticonn:chat:dev\r\n$24\r\n00000000000000ab [a] hi\n\r\n"
                .as_slice()
        );
        out.clear();
        resp.ping(&mut out);
        assert_eq!(out, b"*1\r\n$4\r\nPING\r\n");
    }

    /// Another server's message becomes a broadcast to its room; our own is dropped; the
    /// subscription is noticed; frames split anywhere decode the same.
    #[test]
    fn messages_become_broadcasts() {
        let mut input = b"*3\r\n$10\r\npsubscribe\r\n$16\r\nmulticonn:chat:*\r\n:1\r\n".to_vec();
        input.extend(pmessage(
            "multiconn:chat:dev",
            b"0000000000000001 [x] one\n",
        ));
        input.extend(pmessage(
            "multiconn:chat:dev",
            b"00000000000000ab [me] mine\n",
        ));
        input.extend(pmessage(
            "multiconn:chat:lobby",
            b"0000000000000002 [y] two\n",
        ));
        for split in 0..=input.len() {
            let mut resp = Resp::new(0xab, 100);
            let mut link = RespLink::new(Role::Subscriber);
            let mut produced = Produced::default();
            let mut pending = Vec::new();
            for piece in [&input[..split], &input[split..]] {
                pending.extend_from_slice(piece);
                let (used, flow) = resp.on_input(&mut link, &pending, &mut produced.output());
                assert_eq!(flow, Flow::Continue);
                pending.drain(..used);
            }
            assert!(pending.is_empty() && link.subscribed, "split at {split}");
            let got: Vec<(&str, &[u8])> = produced
                .broadcast
                .iter()
                .map(|(g, c)| (g.name(), &c[..]))
                .collect();
            assert_eq!(got, [("dev", &b"[x] one\n"[..]), ("lobby", b"[y] two\n")]);
        }
    }

    /// Garbage and oversized frames close the link.
    #[test]
    fn bad_input_closes() {
        let mut resp = Resp::new(1, 10);
        let mut link = RespLink::new(Role::Subscriber);
        let mut produced = Produced::default();
        let (_, flow) = resp.on_input(&mut link, b"?what\r\n", &mut produced.output());
        assert_eq!(flow, Flow::Close);
        let long = format!("${}\r\n", 10_000).into_bytes();
        let mut input = long.clone();
        input.resize(2000, b'x');
        let (_, flow) = resp.on_input(&mut link, &input, &mut produced.output());
        assert_eq!(flow, Flow::Close);
    }
}
