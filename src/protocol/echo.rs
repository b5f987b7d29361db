//! Echo: every byte read is sent back unchanged. No framing, so nothing is ever pending
//! and an echoed read needs no state beyond the peer's name for the debug log.

use super::{ByteStr, Flow, Output, Protocol};
use crate::net::Peer;

/// The tutorial's echo server.
#[derive(Debug, Default, Clone)]
pub struct Echo;

impl Protocol for Echo {
    type Session = Peer;

    fn open(&mut self, peer: &Peer, _out: &mut Output<'_>) -> Peer {
        *peer
    }

    fn on_input(&mut self, peer: &mut Peer, input: &[u8], out: &mut Output<'_>) -> (usize, Flow) {
        // Guarded: formatting every message would cost more than echoing it.
        if log::log_enabled!(log::Level::Debug) {
            log_echo(input, peer);
        }
        out.send(input);
        out.count_request();
        (input.len(), Flow::Continue)
    }
}

/// Out of line, so the formatting machinery does not weigh on the hot path.
#[cold]
fn log_echo(input: &[u8], peer: &Peer) {
    log::debug!("Echoing {} to {}", ByteStr(input), peer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Produced;

    /// Whatever arrives is queued back whole and fully consumed.
    #[test]
    fn echoes_input() {
        let peer = Peer::Unix;
        let mut produced = Produced::default();
        let mut out = produced.output();
        let mut echo = Echo;
        let mut session = echo.open(&peer, &mut out);
        assert_eq!(
            echo.on_input(&mut session, b"abc", &mut out),
            (3, Flow::Continue)
        );
        assert_eq!(
            echo.on_input(&mut session, b"de", &mut out),
            (2, Flow::Continue)
        );
        assert_eq!(produced.reply.to_vec(), b"abcde");
        assert!(produced.broadcast.is_empty());
        assert_eq!(produced.requests, 2);
    }
}
