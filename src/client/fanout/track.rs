//! Which of a sender's recent lines have reached every member: a ring of the lines in
//! flight, each counting its receipts against the members it should reach, so the time to
//! the last member is known without a record per delivery. The ring is allocated once;
//! a line that falls out of it before it is complete (an open-loop sender far ahead of its
//! slowest member) is given up as untracked rather than grown for.

/// One line in flight.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Its sequence number; [`EMPTY`] once it is retired.
    seq: u64,
    intended_ns: u64,
    /// Members it should reach, and how many it has.
    expected: u32,
    received: u32,
    /// The latest receipt so far.
    last_ns: u64,
    /// Sent in the measured window.
    counted: bool,
}

const EMPTY: u64 = u64::MAX;

const FREE: Slot = Slot {
    seq: EMPTY,
    intended_ns: 0,
    expected: 0,
    received: 0,
    last_ns: 0,
    counted: false,
};

/// How a line left the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    /// Every member it should reach has it: the intended send time, and the last receipt.
    Complete { intended_ns: u64, last_ns: u64 },
    /// Given up before every member had it (pushed out of the ring, timed out, or still
    /// in flight at the end): `missing` of the members it should reach never had it.
    Incomplete { missing: u32 },
}

/// What retiring a line reports: whether it was counted, and how it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub seq: u64,
    pub counted: bool,
    pub retired: Retired,
}

/// One sender's lines in flight: from `oldest` (the oldest not yet retired) to `next`.
#[derive(Debug)]
pub struct SenderTrack {
    ring: Box<[Slot]>,
    mask: u64,
    oldest: u64,
    next: u64,
}

impl SenderTrack {
    /// A ring for `capacity` lines in flight (rounded up to a power of two).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        SenderTrack {
            ring: vec![FREE; capacity].into_boxed_slice(),
            mask: capacity as u64 - 1,
            oldest: 0,
            next: 0,
        }
    }

    /// Lines sent and not yet retired.
    pub fn in_flight(&self) -> u64 {
        self.next - self.oldest
    }

    /// The next sequence number to send.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// When the oldest line in flight was due, if any is.
    pub fn oldest_intended(&self) -> Option<u64> {
        (self.oldest < self.next).then(|| self.ring[(self.oldest & self.mask) as usize].intended_ns)
    }

    /// Records a new line to reach `expected` members; returns its sequence number, and
    /// the line it pushed out of a full ring, if any. A line for nobody is complete at once.
    pub fn push(
        &mut self,
        intended_ns: u64,
        expected: u32,
        counted: bool,
        retired: &mut impl FnMut(Outcome),
    ) -> u64 {
        if self.in_flight() == self.ring.len() as u64 {
            self.retire_oldest(retired);
        }
        let seq = self.next;
        self.next += 1;
        self.ring[(seq & self.mask) as usize] = Slot {
            seq,
            intended_ns,
            expected,
            received: 0,
            last_ns: intended_ns,
            counted,
        };
        if expected == 0 {
            self.complete(seq, retired);
        }
        seq
    }

    /// A member received line `seq` at `now_ns`; returns whether the line was still
    /// tracked (a line retired, or never sent by this run, is not counted).
    pub fn receive(&mut self, seq: u64, now_ns: u64, retired: &mut impl FnMut(Outcome)) -> bool {
        let slot = &mut self.ring[(seq & self.mask) as usize];
        if slot.seq != seq || slot.received >= slot.expected {
            return false;
        }
        slot.received += 1;
        slot.last_ns = slot.last_ns.max(now_ns);
        if slot.received >= slot.expected {
            self.complete(seq, retired);
        }
        true
    }

    /// Gives up the oldest line in flight if it was due before `before_ns`; returns
    /// whether one was.
    pub fn expire(&mut self, before_ns: u64, retired: &mut impl FnMut(Outcome)) -> bool {
        match self.oldest_intended() {
            Some(at) if at < before_ns => {
                self.retire_oldest(retired);
                true
            }
            _ => false,
        }
    }

    /// Gives up every line still in flight (the end of the run).
    pub fn retire_all(&mut self, retired: &mut impl FnMut(Outcome)) {
        while self.oldest < self.next {
            self.retire_oldest(retired);
        }
    }

    fn retire_oldest(&mut self, retired: &mut impl FnMut(Outcome)) {
        let slot = &mut self.ring[(self.oldest & self.mask) as usize];
        if slot.seq == self.oldest {
            retired(Outcome {
                seq: slot.seq,
                counted: slot.counted,
                retired: Retired::Incomplete {
                    missing: slot.expected - slot.received,
                },
            });
            slot.seq = EMPTY;
        }
        self.oldest += 1;
        self.skip_retired();
    }

    fn complete(&mut self, seq: u64, retired: &mut impl FnMut(Outcome)) {
        let slot = &mut self.ring[(seq & self.mask) as usize];
        retired(Outcome {
            seq,
            counted: slot.counted,
            retired: Retired::Complete {
                intended_ns: slot.intended_ns,
                last_ns: slot.last_ns,
            },
        });
        slot.seq = EMPTY;
        self.skip_retired();
    }

    /// Moves `oldest` past the lines already retired.
    fn skip_retired(&mut self) {
        while self.oldest < self.next && self.ring[(self.oldest & self.mask) as usize].seq == EMPTY
        {
            self.oldest += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line completes when its last expected member has it, at that member's time;
    /// lines complete out of order and `oldest` follows the oldest incomplete one.
    #[test]
    fn lines_complete_at_their_last_member() {
        let mut done = Vec::new();
        let mut track = SenderTrack::new(4);
        let mut note = |o: Outcome| done.push(o);
        assert_eq!(track.push(100, 2, true, &mut note), 0);
        assert_eq!(track.push(200, 2, true, &mut note), 1);
        track.receive(1, 250, &mut note);
        track.receive(1, 260, &mut note);
        track.receive(0, 300, &mut note);
        assert_eq!(track.in_flight(), 2, "line 0 still waits");
        track.receive(0, 310, &mut note);
        assert_eq!(track.in_flight(), 0);
        // A late duplicate of a retired line changes nothing.
        track.receive(0, 400, &mut note);
        assert_eq!(
            done.iter().map(|o| (o.seq, o.retired)).collect::<Vec<_>>(),
            [
                (
                    1,
                    Retired::Complete {
                        intended_ns: 200,
                        last_ns: 260
                    }
                ),
                (
                    0,
                    Retired::Complete {
                        intended_ns: 100,
                        last_ns: 310
                    }
                ),
            ]
        );
    }

    /// A full ring gives up its oldest line as incomplete; a receipt for it afterwards
    /// is ignored, and the ring never grows.
    #[test]
    fn a_full_ring_gives_up_the_oldest() {
        let mut done = Vec::new();
        let mut note = |o: Outcome| done.push(o);
        let mut track = SenderTrack::new(2);
        for t in 0..3 {
            track.push(t, 1, t > 0, &mut note);
        }
        assert_eq!(track.in_flight(), 2);
        assert!(!track.receive(0, 10, &mut note), "line 0 was given up");
        assert!(track.receive(2, 10, &mut note));
        assert_eq!(
            done.iter()
                .map(|o| (o.seq, o.counted, o.retired))
                .collect::<Vec<_>>(),
            [
                (0, false, Retired::Incomplete { missing: 1 }),
                (
                    2,
                    true,
                    Retired::Complete {
                        intended_ns: 2,
                        last_ns: 10
                    }
                )
            ]
        );
        assert_eq!(track.in_flight(), 2, "line 1 is the oldest now");
    }

    /// A line for nobody completes at once; a receipt beyond what a line expects (a
    /// duplicate) is refused rather than counted.
    #[test]
    fn nobody_and_duplicates() {
        let mut done = Vec::new();
        let mut note = |o: Outcome| done.push(o.seq);
        let mut track = SenderTrack::new(8);
        track.push(0, 0, true, &mut note);
        track.push(1, 2, true, &mut note);
        assert!(track.receive(1, 5, &mut note));
        assert!(track.receive(1, 6, &mut note));
        assert!(!track.receive(1, 7, &mut note));
        assert_eq!(done, [0, 1]);
        assert_eq!(track.in_flight(), 0);
    }

    /// Expiry takes the oldest line only once it is overdue; the end retires the rest,
    /// each with the members it missed.
    #[test]
    fn expiry_and_the_end() {
        let mut done = Vec::new();
        let mut note = |o: Outcome| done.push((o.seq, o.retired));
        let mut track = SenderTrack::new(8);
        track.push(100, 1, true, &mut note);
        track.push(200, 3, true, &mut note);
        track.receive(1, 250, &mut note);
        assert!(!track.expire(100, &mut note));
        assert!(track.expire(150, &mut note));
        assert_eq!(track.oldest_intended(), Some(200));
        track.retire_all(&mut note);
        assert_eq!(
            done,
            [
                (0, Retired::Incomplete { missing: 1 }),
                (1, Retired::Incomplete { missing: 2 })
            ]
        );
        assert_eq!(track.oldest_intended(), None);
    }
}
