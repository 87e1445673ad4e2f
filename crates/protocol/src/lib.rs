//! Contract crate of Hangar: the types every component speaks, with no I/O.
//!
//! Labels, node and job states, resources, the internal RPC messages between
//! LinkisManager, EngineConnManager, EngineConn and Entrance, the Linkis REST
//! envelope, the error codes, secret handling, the execID format, the log-line format and the
//! `.dolphin` result-set codec all live here so that every process agrees on
//! them by construction.

pub mod credential;
pub mod dolphin;
pub mod endpoints;
pub mod envelope;
pub mod error;
pub mod exec_id;
pub mod label;
pub mod logline;
pub mod manager_api;
pub mod resource;
pub mod rpc;
pub mod secret;
pub mod status;

pub use envelope::{Envelope, ErrorData};
pub use error::{ErrorCode, HangarError};
pub use label::{EngineType, LabelSet, UserCreator};
pub use resource::Resource;
pub use secret::{constant_time_eq, has_url_credentials, is_secret_key, is_secret_value, mask_url_credentials};
pub use status::{JobStatus, NodeStatus};

/// Milliseconds since the Unix epoch, the time unit of every wire message.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
