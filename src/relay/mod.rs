//! Relays: how a chat's broadcasts reach members on other worker loops of the process
//! ([`mesh`]) and on other servers ([`redis`]). [`Links`] is the [`Relay`] a loop is given:
//! either or both, behind the loop's one extension point.

pub mod mesh;
pub mod redis;

use std::time::Duration;

use mio::{Registry, Token};

use crate::clock::Tick;
use crate::connection::Readiness;
use crate::protocol::Broadcasts;
use crate::server::{relay_token, Relay, RelayIo};
use mesh::Mesh;
use redis::Redis;

/// The relay tokens: the mesh's waker, then Redis's subscriber and publisher.
pub fn mesh_token() -> Token {
    relay_token(0)
}

pub fn redis_tokens() -> [Token; 2] {
    [relay_token(1), relay_token(2)]
}

/// A loop's links to the other loops and to Redis.
pub struct Links {
    pub mesh: Option<Mesh>,
    pub redis: Option<Redis>,
}

impl Relay for Links {
    fn on_event(&mut self, io: &mut RelayIo<'_>, token: Token, ready: Readiness) {
        // The mesh's waker needs nothing here: its channel is drained in `turn`.
        if let Some(redis) = self.redis.as_mut().filter(|r| r.owns(token)) {
            redis.on_event(io, token, ready);
        }
    }

    fn forward(&mut self, broadcasts: &Broadcasts) {
        if let Some(mesh) = &mut self.mesh {
            mesh.forward(broadcasts);
        }
        if let Some(redis) = &mut self.redis {
            redis.forward(broadcasts);
        }
    }

    fn turn(&mut self, io: &mut RelayIo<'_>) -> Option<Tick> {
        let mut next = None;
        if let Some(mesh) = &mut self.mesh {
            mesh.send();
            if mesh.receive(io.arrivals) {
                next = Some(io.now);
            }
        }
        if let Some(redis) = &mut self.redis {
            let at = redis.turn(io);
            next = match (next, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    fn congested(&self) -> bool {
        self.mesh.as_ref().is_some_and(Mesh::congested)
            || self.redis.as_ref().is_some_and(Redis::congested)
    }

    fn hold_arrivals(&mut self, held: bool) {
        if let Some(mesh) = &mut self.mesh {
            mesh.hold(held);
        }
        if let Some(redis) = &mut self.redis {
            redis.hold(held);
        }
    }

    fn cut_stalled(&mut self, now: Tick, stall: Duration) {
        if let Some(redis) = &mut self.redis {
            redis.cut_stalled(now, stall);
        }
    }

    fn shutdown(&mut self, _registry: &Registry) {
        if let Some(mesh) = &mut self.mesh {
            mesh.shutdown();
        }
        if let Some(redis) = &mut self.redis {
            redis.shutdown(Tick::now());
        }
    }
}
