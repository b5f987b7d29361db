//! Clients: the tutorial's multi-connection scenario (and, later, the load generator).

pub mod file;
pub mod scenario;

pub use scenario::{run_scenario, ScenarioConfig, ScenarioReport};
