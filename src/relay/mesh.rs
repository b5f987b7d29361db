//! Broadcasts between the worker loops of one process. Each loop owns its members; a
//! line crosses to another loop as the same shared chunk (`Arc<[u8]>`) over that loop's
//! `mpsc` channel, and the loop is woken through its doorbell (an eventfd, as mio's
//! `Waker` is, of which a poll may have only one, the loop's own) once per turn, not per
//! line. Nothing on the way is locked: the channel is lock-free, and a loop's backlog is
//! an atomic count of the bytes sent to it and not yet taken, which paces senders the way
//! a member's queue does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::protocol::{Broadcasts, Group};

/// A loop takes at most this many bytes from its channel per turn, so that a burst from
/// the other loops is delivered in slices with its own connections served in between.
const DRAIN_PER_TURN: usize = 256 * 1024;

/// An eventfd registered (edge-triggered) with one loop's poll: every write to it is an
/// event there.
struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    fn new(registry: &Registry, token: Token) -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Doorbell { fd })
    }

    fn ring(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        loop {
            // SAFETY: writes 8 bytes from a live buffer to a descriptor we own.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            // The counter is full (never read): empty it and ring again, as mio does.
            let mut buf = [0u8; 8];
            // SAFETY: reads 8 bytes into a live buffer.
            unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        }
    }
}

/// One loop's end of the mesh, as every loop sees it.
struct Inbox {
    waker: Doorbell,
    /// Bytes sent to this loop and not yet taken from its channel.
    queued: AtomicUsize,
    /// A wake is pending: senders skip theirs (set by a sender, cleared by the owner just
    /// before it drains, so nothing sent after the drain goes unnoticed).
    notified: AtomicBool,
    /// A sender found this loop behind and waits to be woken once it has caught up.
    blocked: AtomicBool,
}

type Item = (Group, Arc<[u8]>);

/// One loop's link to the others.
pub struct Mesh {
    index: usize,
    inboxes: Arc<[Inbox]>,
    rx: mpsc::Receiver<Item>,
    /// A sender for every other loop, `None` for this one and for a loop that has ended.
    peers: Vec<Option<mpsc::Sender<Item>>>,
    /// What this loop's members broadcast this turn, sent at the end of it.
    outgoing: Broadcasts,
    /// A loop's backlog past which its senders are held (half the cap, like a member's).
    high_water: usize,
    /// A loop's backlog past which nothing more is sent to it: it has stopped draining,
    /// and what is lost is lost there alone, as when a member is cut.
    cap: usize,
    /// Arrivals are not taken while held.
    held: bool,
    /// Batches dropped for a loop over the cap (logged once).
    dropped: u64,
}

/// Builds the mesh of `registries.len()` loops: each loop's waker is registered with its
/// own poll under `token`. `cap` is the per-loop backlog in bytes (`--max-outbound`).
pub fn build(registries: &[&Registry], token: Token, cap: usize) -> std::io::Result<Vec<Mesh>> {
    let mut inboxes = Vec::with_capacity(registries.len());
    let mut channels = Vec::with_capacity(registries.len());
    for registry in registries {
        inboxes.push(Inbox {
            waker: Doorbell::new(registry, token)?,
            queued: AtomicUsize::new(0),
            notified: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        });
        channels.push(mpsc::channel::<Item>());
    }
    let inboxes: Arc<[Inbox]> = inboxes.into();
    let senders: Vec<mpsc::Sender<Item>> = channels.iter().map(|(tx, _)| tx.clone()).collect();
    Ok(channels
        .into_iter()
        .enumerate()
        .map(|(index, (_, rx))| Mesh {
            index,
            inboxes: inboxes.clone(),
            rx,
            peers: senders
                .iter()
                .enumerate()
                .map(|(i, tx)| (i != index).then(|| tx.clone()))
                .collect(),
            outgoing: Broadcasts::default(),
            high_water: (cap / 2).max(1),
            cap: cap.max(1) * 4,
            held: false,
            dropped: 0,
        })
        .collect())
}

impl Mesh {
    /// Queues this loop's broadcasts for the others (sent in [`send`](Self::send)).
    pub fn forward(&mut self, broadcasts: &Broadcasts) {
        if self.peers.iter().any(Option::is_some) {
            for (group, chunk) in broadcasts.iter() {
                self.outgoing.push(group, chunk.clone());
            }
        }
    }

    /// Sends what was forwarded this turn to every other loop and wakes each once.
    pub fn send(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let bytes = self.outgoing.len();
        for (i, peer) in self.peers.iter_mut().enumerate() {
            let Some(tx) = peer else { continue };
            let inbox = &self.inboxes[i];
            if inbox.queued.load(Ordering::Acquire) > self.cap {
                self.dropped += 1;
                if self.dropped == 1 {
                    log::warn!(
                        "worker {} has not taken {} bytes of lines; dropping lines for it",
                        i + 1,
                        inbox.queued.load(Ordering::Relaxed)
                    );
                }
                continue;
            }
            // Counted before they are sent, so the receiver never subtracts first.
            inbox.queued.fetch_add(bytes, Ordering::AcqRel);
            let mut gone = false;
            for (group, chunk) in self.outgoing.iter() {
                if tx.send((group.clone(), chunk.clone())).is_err() {
                    gone = true; // the loop has ended
                    break;
                }
            }
            if gone {
                *peer = None;
            } else if !inbox.notified.swap(true, Ordering::AcqRel) {
                if let Err(e) = inbox.waker.ring() {
                    log::debug!("cannot wake worker {}: {e}", i + 1);
                }
            }
        }
        self.outgoing.clear();
    }

    /// Takes what the other loops sent (up to a per-turn budget) into `arrivals`. Returns
    /// whether more is waiting, so the loop comes back at once.
    pub fn receive(&mut self, arrivals: &mut Broadcasts) -> bool {
        if self.held {
            return false;
        }
        let inbox = &self.inboxes[self.index];
        inbox.notified.store(false, Ordering::SeqCst);
        let mut taken = 0;
        while taken < DRAIN_PER_TURN {
            match self.rx.try_recv() {
                Ok((group, chunk)) => {
                    taken += chunk.len();
                    arrivals.push(&group, chunk);
                }
                Err(_) => break,
            }
        }
        if taken == 0 {
            return false;
        }
        let left = inbox.queued.fetch_sub(taken, Ordering::AcqRel) - taken;
        if left <= self.high_water && inbox.blocked.swap(false, Ordering::AcqRel) {
            // Someone holds its senders until this loop catches up: it has.
            for (i, other) in self.inboxes.iter().enumerate() {
                if i != self.index {
                    let _ = other.waker.ring();
                }
            }
        }
        taken >= DRAIN_PER_TURN
    }

    /// Whether another loop is more than half the cap behind (and it is told to wake this
    /// one when it is not).
    pub fn congested(&self) -> bool {
        let mut congested = false;
        for (i, inbox) in self.inboxes.iter().enumerate() {
            if self.peers[i].is_some() && inbox.queued.load(Ordering::Acquire) > self.high_water {
                inbox.blocked.store(true, Ordering::Release);
                congested = true;
            }
        }
        congested
    }

    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// Leaves the mesh: the other loops stop sending here once they notice.
    pub fn shutdown(&mut self) {
        self.peers.iter_mut().for_each(|p| *p = None);
        // Dropping the receiver makes their sends fail; its queue is freed with it.
        let (_, rx) = mpsc::channel();
        drop(std::mem::replace(&mut self.rx, rx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Duration;

    fn chunk(text: &str) -> Arc<[u8]> {
        Arc::from(text.as_bytes())
    }

    /// The mesh of `loops` polls, each loop's backlog capped at `cap`.
    fn meshes(loops: usize, cap: usize) -> (Vec<Poll>, Vec<Mesh>) {
        let polls: Vec<Poll> = (0..loops).map(|_| Poll::new().unwrap()).collect();
        let registries: Vec<&Registry> = polls.iter().map(Poll::registry).collect();
        let mesh = build(&registries, Token(7), cap).unwrap();
        (polls, mesh)
    }

    /// A loop's broadcasts reach every other loop, in order, as the same shared chunks,
    /// with one wake per turn; the backlog counts them until they are taken.
    #[test]
    fn broadcasts_cross_loops_with_one_wake() {
        let (polls, mut mesh) = meshes(3, 1000);
        let lobby = Group::new("lobby");
        let mut turn = Broadcasts::default();
        let first = chunk("one\n");
        turn.push(&lobby, first.clone());
        turn.push(&lobby, chunk("two\n"));
        mesh[0].forward(&turn);
        mesh[0].send();
        mesh[0].forward(&turn);
        mesh[0].send();
        // Two turns' sends, one wake: the second saw the first still pending.
        let mut polls = polls;
        for poll in &mut polls[1..] {
            let mut events = Events::with_capacity(8);
            poll.poll(&mut events, Some(Duration::from_secs(5)))
                .unwrap();
            assert_eq!(events.iter().filter(|e| e.token() == Token(7)).count(), 1);
        }
        for m in &mut mesh[1..] {
            assert_eq!(m.inboxes[m.index].queued.load(Ordering::Relaxed), 16);
            let mut arrivals = Broadcasts::default();
            assert!(!m.receive(&mut arrivals));
            let texts: Vec<&[u8]> = arrivals.iter().map(|(_, c)| &c[..]).collect();
            assert_eq!(texts, [&b"one\n"[..], b"two\n", b"one\n", b"two\n"]);
            assert!(Arc::ptr_eq(arrivals.iter().next().unwrap().1, &first));
            assert_eq!(m.inboxes[m.index].queued.load(Ordering::Relaxed), 0);
        }
        // The sender receives nothing of its own.
        let mut arrivals = Broadcasts::default();
        mesh[0].receive(&mut arrivals);
        assert!(arrivals.is_empty());
    }

    /// A loop that does not take what it is sent is congested past half the cap, and
    /// wakes its senders once it has caught up; past four caps it is sent nothing.
    #[test]
    fn a_loop_behind_holds_its_senders() {
        let (_polls, mut mesh) = meshes(2, 100);
        let lobby = Group::new("lobby");
        let mut turn = Broadcasts::default();
        turn.push(&lobby, Arc::from(vec![b'x'; 60]));
        mesh[0].forward(&turn);
        mesh[0].send();
        assert!(mesh[0].congested(), "60 bytes behind, over half of 100");
        for _ in 0..10 {
            mesh[0].forward(&turn);
            mesh[0].send();
        }
        assert_eq!(
            mesh[0].inboxes[1].queued.load(Ordering::Relaxed),
            420,
            "capped at 400"
        );
        let mut arrivals = Broadcasts::default();
        mesh[1].hold(true);
        assert!(!mesh[1].receive(&mut arrivals));
        assert!(arrivals.is_empty(), "held: nothing taken");
        mesh[1].hold(false);
        mesh[1].receive(&mut arrivals);
        assert_eq!(arrivals.len(), 420);
        assert!(!mesh[0].congested());
        assert!(!mesh[0].inboxes[1].blocked.load(Ordering::Relaxed), "woken");
    }
}
