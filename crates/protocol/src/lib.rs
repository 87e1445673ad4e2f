//! Contract crate of Hangar: the types every component speaks, with no I/O.
//!
//! Labels, node and job states, resources, the internal RPC messages between
//! LinkisManager, EngineConnManager, EngineConn and Entrance, the Linkis REST
//! envelope, the error codes, the execID format, the log-line format and the
//! `.dolphin` result-set codec all live here so that every process agrees on
//! them by construction.

pub mod credential;
pub mod dolphin;
pub mod envelope;
pub mod error;
pub mod exec_id;
pub mod label;
pub mod logline;
pub mod resource;
pub mod rpc;
pub mod status;

pub use envelope::Envelope;
pub use error::{ErrorCode, HangarError};
pub use label::{EngineType, LabelSet, UserCreator};
pub use resource::Resource;
pub use status::{JobStatus, NodeStatus};

/// Whether a configuration key holds a secret (passwords, tokens): such values
/// are never logged, stored in job history, written to disk or put on a command line.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "credential"].iter().any(|w| k.contains(w))
}

/// Whether a configuration value must be kept secret: a secret key, or a URL
/// that carries a password (`user:pw@host`, `password=`).
pub fn is_secret_value(key: &str, value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    is_secret_key(key)
        || v.contains("password=")
        || v.contains("pwd=")
        || v.split_once("://").is_some_and(|(_, rest)| {
            rest.split(['/', '?']).next().is_some_and(|auth| auth.contains(':') && auth.contains('@'))
        })
}

/// Milliseconds since the Unix epoch, the time unit of every wire message.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
