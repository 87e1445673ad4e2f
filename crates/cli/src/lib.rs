//! The `hangar` client: a typed client of the Linkis-compatible REST API and
//! the user commands built on it (`run`, `status`, `log`, `result`, `kill`,
//! `jobs`, the operator tables, materials, parameter configuration) and `linkis-cli`.

mod client;
mod config;
mod follow;
mod history;
pub mod linkis_cli;
mod materials;
mod progress;
mod tables;

pub use client::{Client, Connection, EventStream, ResultSet};
pub use config::{ConfigCmd, ConfigScope, config};
pub use follow::{FollowMode, Outcome, follow, run};
pub use history::{JobsQuery, human_ms, jobs, parse_age, status};
pub use materials::{MaterialCmd, material};
pub use tables::{Format, OpsView, emit, kill_engine, ops, print_results, print_table};

use serde_json::Value;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9001";
/// The token a fresh server accepts for local use (see README).
pub const DEFAULT_TOKEN: &str = "HANGAR-LOCAL-AUTH";
const PREFIX: &str = "/api/rest_j/v1";

pub(crate) fn enc(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F").replace('?', "%3F").replace('#', "%23")
}

/// What `hangar run` submits.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    pub engine_type: String,
    pub code: String,
    pub run_type: Option<String>,
    pub creator: String,
    pub labels: Vec<(String, String)>,
    pub startup: serde_json::Map<String, Value>,
    pub runtime: serde_json::Map<String, Value>,
}

/// Run type for an engine type when none is given.
pub fn default_run_type(engine_type: &str) -> String {
    match engine_type.split('-').next().unwrap_or("") {
        "python" => "python".into(),
        "jdbc" => "jdbc".into(),
        "shell" => "shell".into(),
        _ => "sql".into(),
    }
}

/// The user a client acts as when none is given: `$USER`, else this process's
/// account name (never a made-up name).
pub fn default_user() -> Option<String> {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.name))
}

/// A value at a JSON pointer as display text (`-` when absent or null).
pub(crate) fn text_at(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}
