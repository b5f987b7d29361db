//! Who is in which room, shared by every worker loop of one server process: it answers
//! `/who`, keeps nicknames unique, and interns room names, so that the members of a room
//! on every loop share one [`Group`] (their membership test then compares pointers). It is
//! locked when a member arrives, leaves, joins a room or renames itself, and for `/who`:
//! never for a line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use crate::protocol::Group;

/// The members of one room and how many connections go by each name (a Unix-socket
/// peer's name is not unique).
struct Room {
    group: Group,
    members: BTreeMap<Box<str>, usize>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<Box<str>, Room>,
    nicks: HashSet<Box<str>>,
}

/// The rooms and names of one server process.
#[derive(Default)]
pub struct Roster {
    inner: Mutex<Inner>,
}

impl Roster {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves the roster as consistent as any update
        // does: each one is a few map operations.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `name` enters `room`; returns the room's group (made when its first member came).
    pub fn enter(&self, room: &str, name: &str) -> Group {
        let mut inner = self.lock();
        let entry = inner.rooms.entry(room.into()).or_insert_with(|| Room {
            group: Group::new(room),
            members: BTreeMap::new(),
        });
        *entry.members.entry(name.into()).or_insert(0) += 1;
        entry.group.clone()
    }

    /// `name` leaves `room`; a room without members is forgotten.
    pub fn leave(&self, room: &str, name: &str) {
        let mut inner = self.lock();
        let Some(entry) = inner.rooms.get_mut(room) else {
            return;
        };
        if let Some(count) = entry.members.get_mut(name) {
            *count -= 1;
            if *count == 0 {
                entry.members.remove(name);
            }
        }
        if entry.members.is_empty() {
            inner.rooms.remove(room);
        }
    }

    /// Takes `nick` for a member; false if another member has it.
    pub fn claim_nick(&self, nick: &str) -> bool {
        self.lock().nicks.insert(nick.into())
    }

    pub fn release_nick(&self, nick: &str) {
        self.lock().nicks.remove(nick);
    }

    /// The member known as `old` in `room` is now `new` (its nick was claimed already).
    pub fn rename(&self, room: &str, old: &str, new: &str) {
        self.leave(room, old);
        self.enter(room, new);
    }

    /// The names in `room`, sorted (each once), and how many members that is.
    pub fn who(&self, room: &str) -> (Vec<Box<str>>, usize) {
        let inner = self.lock();
        match inner.rooms.get(room) {
            Some(entry) => (
                entry.members.keys().cloned().collect(),
                entry.members.values().sum(),
            ),
            None => (Vec::new(), 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members come and go; a room is forgotten with its last member, and a room of the
    /// same name made later is the same group again.
    #[test]
    fn rooms_follow_their_members() {
        let roster = Roster::default();
        let lobby = roster.enter("lobby", "a");
        assert_eq!(roster.enter("lobby", "b"), lobby);
        roster.enter("lobby", "b");
        assert_eq!(roster.who("lobby"), (vec!["a".into(), "b".into()], 3));
        roster.leave("lobby", "b");
        assert_eq!(roster.who("lobby").1, 2);
        roster.rename("lobby", "b", "bee");
        assert_eq!(roster.who("lobby").0, vec![Box::from("a"), "bee".into()]);
        roster.leave("lobby", "a");
        roster.leave("lobby", "bee");
        assert_eq!(roster.who("lobby"), (Vec::new(), 0));
        assert_eq!(roster.enter("lobby", "c"), lobby);
    }

    /// A nickname is held by one member at a time.
    #[test]
    fn nicks_are_unique() {
        let roster = Roster::default();
        assert!(roster.claim_nick("ann"));
        assert!(!roster.claim_nick("ann"));
        roster.release_nick("ann");
        assert!(roster.claim_nick("ann"));
    }
}
