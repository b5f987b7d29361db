//! Clients, all on one client loop ([`driver`]: the server's connection core and
//! schedule, connecting instead of accepting), each a client protocol over bytes: the
//! tutorial's multi-connection scenario ([`scenario`]), the app protocol's one-shot client
//! ([`app`]), the file downloader ([`file`]), the interactive chat client ([`chat`]), the
//! chat fan-out load mode ([`fanout`]: delivery latency to every member of a room), and
//! the load generator (`multiconn-client` with `--duration` or `--requests`): its loops
//! ([`load`], TCP or `--udp`), what it sends and checks per protocol ([`workload`]), its
//! report ([`report`]) and its HTML page ([`html`]), how it kept a rate plan ([`pace`]),
//! its schedule timer ([`timer`]) and the duration syntax of its flags ([`duration`]); a
//! URL as its target ([`url`]); the per-second series ([`series`]), HdrHistogram formats of
//! its latencies ([`hdr`]) and the merging of runs ([`merge`]).

pub mod app;
pub mod chat;
pub mod driver;
pub mod duration;
pub mod fanout;
pub mod file;
pub mod hdr;
pub mod html;
pub mod load;
pub mod merge;
pub mod pace;
pub mod report;
pub mod scenario;
pub mod series;
pub mod timer;
pub mod url;
pub mod workload;

pub use app::{run_app_client, AppClientConfig, AppClientError, AppResponse};
pub use duration::{format_duration, parse_duration};
pub use load::{run_load, LoadConfig, LoadControl, LoadError, RatePlan, StopAt};
pub use report::LoadReport;
pub use scenario::{run_scenario, ScenarioConfig, ScenarioReport};
pub use workload::{HttpRequest, HttpWorkload, LoadProtocol, StatusSet, Workload};

/// Descriptors a client process keeps besides its connections: stdio, the signal thread's
/// pipe, files it reads or writes, and per loop its epoll, waker and timer.
const FD_HEADROOM: u64 = 16;
const FDS_PER_LOOP: u64 = 3;

/// Checks, before anything connects, that the open-files limit (raised to its hard
/// maximum first) holds `connections` sockets for `loops` client loops; the message
/// names the limit.
pub fn check_open_files(connections: usize, loops: usize) -> Result<(), String> {
    let Some(limit) = crate::net::raise_open_files_limit() else {
        return Ok(());
    };
    let needed = connections as u64 + FD_HEADROOM + FDS_PER_LOOP * loops as u64;
    if needed <= limit {
        return Ok(());
    }
    Err(format!(
        "NUM_CONNS {connections} needs about {needed} open files, more than this process may \
         have (its open-files limit, ulimit -n, is {limit} and cannot be raised further): \
         use at most {} connections, or raise the hard limit",
        limit.saturating_sub(FD_HEADROOM + FDS_PER_LOOP * loops as u64)
    ))
}
