//! The loop's one extension point: a [`Relay`] owns sources besides the listener and the
//! connections (another loop's queue and its waker, a link to a message broker), passes
//! the broadcasts of this loop's members on to them, and hands back what arrived from
//! them for this loop's members. The loop polls the relay's sources under tokens of its
//! own range and otherwise only schedules it; a loop without a relay pays one branch per
//! turn.

use std::ops::Range;
use std::time::Duration;

use mio::{Registry, Token};

use crate::clock::Tick;
use crate::connection::Readiness;
use crate::protocol::Broadcasts;

/// The tokens a relay may register its sources under: below the loop's own (listener,
/// waker, signals) and far above any slab key, so an event that finds no connection is
/// the relay's.
pub const RELAY_TOKENS: Range<usize> = (usize::MAX - 64)..(usize::MAX - 3);

/// The relay's `i`th token.
pub fn relay_token(i: usize) -> Token {
    let token = RELAY_TOKENS.start + i;
    assert!(token < RELAY_TOKENS.end, "relay token {i} out of range");
    Token(token)
}

/// What the loop lends a relay for one call.
pub struct RelayIo<'a> {
    pub registry: &'a Registry,
    /// The loop's scratch read buffer, free while the relay runs.
    pub read_buf: &'a mut [u8],
    pub now: Tick,
    /// Broadcasts that arrived for this loop's members; the loop delivers them (to every
    /// member of their group: the sender is elsewhere) and never passes them on again.
    pub arrivals: &'a mut Broadcasts,
}

/// Where a loop's broadcasts also go and where others' come from. Called on the loop's
/// thread only; `Send` so that the loop can be started on a thread of its own.
pub trait Relay: Send {
    /// A readiness event for one of its tokens.
    fn on_event(&mut self, io: &mut RelayIo<'_>, token: Token, ready: Readiness);

    /// Broadcasts this loop's members made, already delivered here: pass them on. Queue
    /// them; they are sent at the end of the turn, all of a turn's together.
    fn forward(&mut self, broadcasts: &Broadcasts);

    /// Once per loop turn, after the events: send what was forwarded, take what arrived
    /// (unless arrivals are held), run timers and reconnects. Returns when it next needs
    /// a turn though no event comes.
    fn turn(&mut self, io: &mut RelayIo<'_>) -> Option<Tick>;

    /// Whether a destination owes more than half its cap: the loop holds the members
    /// whose lines it forwards until it is not.
    fn congested(&self) -> bool;

    /// Stops (`true`) or resumes taking arrivals: what arrives has made this loop's
    /// members fall behind, and it is paced like a local sender.
    fn hold_arrivals(&mut self, held: bool);

    /// Cuts a destination that holds the loop's members and took nothing for `stall`, as
    /// a slow member is cut.
    fn cut_stalled(&mut self, now: Tick, stall: Duration);

    /// The loop is ending: close everything.
    fn shutdown(&mut self, registry: &Registry);
}
