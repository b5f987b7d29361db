//! `--udp`: echo datagrams (the seeds' `SOCK_DGRAM`, `recvfrom`/`sendto`) on a
//! `mio::net::UdpSocket` in the same loop, on the TCP port by default. Each datagram
//! goes straight back to its sender; when the socket's send buffer is full, echoes wait
//! in a bounded queue, and past it they are dropped and counted, as UDP itself would
//! drop them: a flood can cost the loop a bounded amount of memory, never unbounded.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;
use mio::Interest;

use super::{Server, UDP};
use crate::connection::Readiness;
use crate::protocol::Protocol;

/// Datagrams taken per loop turn before the connections get theirs; the rest are taken
/// next turn (edge-triggered epoll would not report them again).
const DATAGRAMS_PER_TURN: usize = 256;
/// Echoes waiting for room in the socket's send buffer, at most: past it they are
/// dropped. 1 MiB covers a burst of 64 KiB datagrams for a few milliseconds of a full
/// buffer; a peer that floods beyond it loses echoes, as it would on any UDP path.
const MAX_QUEUED_BYTES: usize = 1024 * 1024;
const MAX_QUEUED_DATAGRAMS: usize = 1024;

/// The loop's UDP socket and the echoes waiting to be sent.
pub(super) struct Udp {
    socket: UdpSocket,
    queue: VecDeque<(SocketAddr, Box<[u8]>)>,
    queued_bytes: usize,
    /// WRITABLE is registered: the queue is not empty.
    writable: bool,
}

impl<P: Protocol, T: crate::net::Accepted> Server<P, T> {
    /// Echoes datagrams on `socket` from this loop.
    pub fn serve_udp(&mut self, socket: std::net::UdpSocket) -> io::Result<()> {
        socket.set_nonblocking(true)?;
        let mut socket = UdpSocket::from_std(socket);
        self.poll
            .registry()
            .register(&mut socket, UDP, Interest::READABLE)?;
        self.udp = Some(Box::new(Udp {
            socket,
            queue: VecDeque::new(),
            queued_bytes: 0,
            writable: false,
        }));
        Ok(())
    }

    /// Another handle on this loop's UDP socket, for a worker that shares it.
    pub fn share_udp(&self) -> Option<io::Result<std::net::UdpSocket>> {
        use std::os::fd::AsFd;
        let udp = self.udp.as_ref()?;
        Some(
            udp.socket
                .as_fd()
                .try_clone_to_owned()
                .map(std::net::UdpSocket::from),
        )
    }

    #[cold]
    pub(super) fn udp_event(&mut self, ready: Readiness) {
        if ready.writable {
            self.udp_flush();
        }
        if ready.readable {
            self.udp_echo();
        }
    }

    /// Takes datagrams until the socket has none (or the turn's budget is spent) and
    /// echoes each to its sender.
    #[cold]
    pub(super) fn udp_echo(&mut self) {
        let Some(udp) = &mut self.udp else {
            return;
        };
        for _ in 0..DATAGRAMS_PER_TURN {
            let (n, from) = match udp.socket.recv_from(&mut self.read_buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.udp_reregister(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // An ICMP error for an earlier echo, reported on this socket: that
                    // peer is gone; the others are not.
                    log::debug!("udp: {e}");
                    continue;
                }
            };
            self.stats.datagrams_in += 1;
            let datagram = &self.read_buf[..n];
            log::trace!("udp: echoing {n} bytes to {from}");
            if udp.queue.is_empty() {
                match udp.socket.send_to(datagram, from) {
                    Ok(_) => {
                        self.stats.datagrams_out += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        log::debug!("udp: cannot echo to {from}: {e}");
                        self.stats.datagrams_dropped += 1;
                        continue;
                    }
                }
            }
            if udp.queue.len() < MAX_QUEUED_DATAGRAMS && udp.queued_bytes + n <= MAX_QUEUED_BYTES {
                udp.queued_bytes += n;
                udp.queue.push_back((from, datagram.into()));
            } else {
                self.stats.datagrams_dropped += 1;
            }
        }
        // Budget spent with datagrams perhaps still waiting: take them next turn.
        self.schedule.serve_next_turn(UDP.0, 0);
        self.udp_reregister();
    }

    /// Sends queued echoes until the queue is empty or the socket is full.
    fn udp_flush(&mut self) {
        let Some(udp) = &mut self.udp else {
            return;
        };
        while let Some((to, datagram)) = udp.queue.front() {
            match udp.socket.send_to(datagram, *to) {
                Ok(_) => self.stats.datagrams_out += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("udp: cannot echo to {to}: {e}");
                    self.stats.datagrams_dropped += 1;
                }
            }
            udp.queued_bytes -= datagram.len();
            udp.queue.pop_front();
        }
        self.udp_reregister();
    }

    /// WRITABLE while echoes wait, READABLE only once they are gone.
    fn udp_reregister(&mut self) {
        let Some(udp) = &mut self.udp else {
            return;
        };
        let wants_writable = !udp.queue.is_empty();
        if wants_writable == udp.writable {
            return;
        }
        let interest = if wants_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match self
            .poll
            .registry()
            .reregister(&mut udp.socket, UDP, interest)
        {
            Ok(()) => udp.writable = wants_writable,
            Err(e) => log::warn!("udp: cannot reregister: {e}"),
        }
    }

    /// The server is shutting down: datagrams are not drained (UDP promises nothing).
    pub(super) fn close_udp(&mut self) {
        if let Some(mut udp) = self.udp.take() {
            let _ = self.poll.registry().deregister(&mut udp.socket);
            self.stats.datagrams_dropped += udp.queue.len() as u64;
        }
    }
}
