//! Clients: the tutorial's multi-connection scenario and app client (and, later, the load generator).

pub mod app;
pub mod scenario;

pub use app::{run_app_client, AppClientConfig, AppClientError, AppResponse};
pub use scenario::{run_scenario, ScenarioConfig, ScenarioReport};
