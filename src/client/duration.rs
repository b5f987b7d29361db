//! The duration syntax of the clients' flags: it lives in [`crate::duration`], below the
//! server and the clients, which both use it; re-exported here where the client code
//! names it.

pub use crate::duration::{format_duration, parse_duration};
