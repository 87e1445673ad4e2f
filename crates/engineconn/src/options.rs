//! Engine options from `--conf key=value`, with defaults. The manager passes
//! these from its `[engineconn]` configuration section.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

/// Runtime knobs of one engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Exit after this long Unlock/Idle with no task (Linkis `wds.linkis.engineconn.max.free.time`).
    pub max_free_time: Duration,
    pub heartbeat_interval: Duration,
    /// Exit when the manager has not answered for this long.
    pub orphan_timeout: Duration,
    /// Release a lock held this long with no task running.
    pub lock_idle_release: Duration,
    /// Interval of the combined running-info report while a task runs.
    pub running_info_interval: Duration,
    /// Log lines are pushed when this many are buffered or on `log_push_interval`.
    pub log_push_lines: usize,
    pub log_push_interval: Duration,
    pub max_result_rows: u64,
    /// Retire after this many tasks (0 = never).
    pub max_tasks: u64,
    pub bind_host: String,
    /// Tasks run at once; unset = the executor's own concurrency.
    pub concurrency: Option<usize>,
}

impl EngineOptions {
    pub const MAX_FREE_TIME: &'static str = "hangar.engineconn.max_free_time_ms";
    pub const HEARTBEAT_INTERVAL: &'static str = "hangar.engineconn.heartbeat_interval_ms";
    pub const ORPHAN_TIMEOUT: &'static str = "hangar.engineconn.orphan_timeout_ms";
    pub const LOCK_IDLE_RELEASE: &'static str = "hangar.engineconn.lock_idle_release_ms";
    pub const RUNNING_INFO_INTERVAL: &'static str = "hangar.engineconn.running_info_interval_ms";
    pub const LOG_PUSH_LINES: &'static str = "hangar.engineconn.log_push_lines";
    pub const LOG_PUSH_INTERVAL: &'static str = "hangar.engineconn.log_push_interval_ms";
    pub const MAX_RESULT_ROWS: &'static str = "hangar.engineconn.max_result_rows";
    pub const MAX_TASKS: &'static str = "hangar.engineconn.max_tasks";
    pub const BIND_HOST: &'static str = hangar_protocol::rpc::ENGINE_BIND_HOST_CONF;
    pub const CONCURRENCY: &'static str = "hangar.engineconn.concurrency";

    pub fn from_map(m: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let num = |key: &str, default: u64| -> anyhow::Result<u64> {
            match m.get(key) {
                Some(v) => v.trim().parse::<u64>().with_context(|| format!("{key} must be a whole number, got '{v}'")),
                None => Ok(default),
            }
        };
        let ms = |key: &str, default: u64| num(key, default).map(Duration::from_millis);
        Ok(Self {
            max_free_time: ms(Self::MAX_FREE_TIME, 300_000)?,
            heartbeat_interval: ms(Self::HEARTBEAT_INTERVAL, 3_000)?.max(Duration::from_millis(50)),
            orphan_timeout: ms(Self::ORPHAN_TIMEOUT, 60_000)?,
            lock_idle_release: ms(Self::LOCK_IDLE_RELEASE, 180_000)?,
            running_info_interval: ms(Self::RUNNING_INFO_INTERVAL, 1_000)?.max(Duration::from_millis(10)),
            log_push_lines: num(Self::LOG_PUSH_LINES, 300)?.max(1) as usize,
            log_push_interval: ms(Self::LOG_PUSH_INTERVAL, 200)?.max(Duration::from_millis(5)),
            max_result_rows: num(Self::MAX_RESULT_ROWS, 5_000)?,
            max_tasks: num(Self::MAX_TASKS, 0)?,
            bind_host: m.get(Self::BIND_HOST).cloned().unwrap_or_else(|| "127.0.0.1".into()),
            concurrency: match m.get(Self::CONCURRENCY) {
                Some(_) => Some(num(Self::CONCURRENCY, 1)?.clamp(1, 1024) as usize),
                None => None,
            },
        })
    }
}
