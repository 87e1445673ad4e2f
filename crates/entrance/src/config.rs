//! The Entrance's settings (section `[entrance]` and `[auth]` of the server configuration).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EntranceConfig {
    /// `host:port` this Entrance is known by (embedded in execIDs).
    pub instance: String,
    /// Base URL engines send task events to.
    pub callback_url: String,
    /// Job logs live under `<logs_dir>/<yyyy-MM-dd>/<creator>/<user>/<taskId>.log`.
    pub logs_dir: PathBuf,
    /// Result sets live under `<results_dir>/<user>/<yyyy-MM-dd>/<creator>/<taskId>/`.
    pub results_dir: PathBuf,
    /// Max running jobs per `creator_user_engineType` group.
    pub max_running_per_group: usize,
    /// Max jobs waiting in one group before submits are refused.
    pub max_queued_per_group: usize,
    /// Max time to get an engine.
    pub ask_timeout: Duration,
    /// Retries of an ask that failed for a retryable reason (busy engine, no resource yet).
    pub ask_retries: u32,
    /// Largest accepted code, in bytes.
    pub max_code_bytes: usize,
    /// Largest result set (one `_N.dolphin`) an engine may send, in bytes.
    pub max_result_set_bytes: u64,
    /// Accepted tokens: `Token-Code` value and the users it may act as (`*` = any).
    pub tokens: Vec<TokenConfig>,
    pub admins: Vec<String>,
    /// Users who may log in with a password (`POST /user/login`).
    pub users: Vec<UserConfig>,
    /// A login session idle this long ends.
    pub session_timeout: Duration,
    /// Default creator when `userCreator` is absent (Linkis: IDE).
    pub default_creator: String,
    /// After a restart, how long a running job waits for its engine to
    /// answer and rejoin the manager before it is ended Failed.
    pub reattach_timeout: Duration,
    /// Session cookies get `Secure` (clients reach Hangar over HTTPS through a proxy).
    pub secure_cookie: bool,
    /// When non-empty, `/metrics` needs `Authorization: Bearer <metrics_token>`.
    pub metrics_token: String,
    /// The API listens on loopback only; when false and no `metrics_token` is
    /// set, `/metrics` needs an admin.
    pub loopback_only: bool,
    /// This instance as the owner of the jobs it accepts (stable across restarts).
    pub owner_id: String,
    /// How long an owner's lease on its unfinished jobs lasts without renewal.
    pub job_lease: Duration,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub token: String,
    pub users: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    /// From `hangar hash-password` (PBKDF2-HMAC-SHA256).
    pub password_hash: String,
}
