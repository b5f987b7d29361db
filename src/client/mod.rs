//! Clients, all on one client loop ([`driver`]: the server's connection core and
//! schedule, connecting instead of accepting), each a client protocol over bytes: the
//! tutorial's multi-connection scenario ([`scenario`]), the app protocol's one-shot client
//! ([`app`]), the file downloader ([`file`]), and the load generator (`multiconn-client`
//! with `--duration` or `--requests`): its loops ([`load`]), what it sends and checks per
//! protocol ([`workload`]), its report ([`report`]), its schedule timer ([`timer`]) and the
//! duration syntax of its flags ([`duration`]).

pub mod app;
pub mod driver;
pub mod duration;
pub mod file;
pub mod load;
pub mod report;
pub mod scenario;
pub mod timer;
pub mod workload;

pub use app::{run_app_client, AppClientConfig, AppClientError, AppResponse};
pub use duration::{format_duration, parse_duration};
pub use load::{run_load, LoadConfig, LoadControl, LoadError, StopAt};
pub use report::LoadReport;
pub use scenario::{run_scenario, ScenarioConfig, ScenarioReport};
pub use workload::{LoadProtocol, Workload};
