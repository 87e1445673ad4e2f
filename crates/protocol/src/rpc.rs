//! Internal RPC messages between the components' processes.
//!
//! One style everywhere: an HTTP `POST` of one JSON message, tagged by `type`,
//! answered by one JSON reply. Every request carries a credential in the
//! header [`RPC_TOKEN_HEADER`]: between an engine and the control plane it is
//! that engine's own key (see [`crate::credential`]), between an ECM and the
//! manager the ECM token.
//!
//! * EngineConn -> LinkisManager: [`EngineToManager`] at [`MANAGER_RPC_PATH`].
//! * LinkisManager / Entrance -> EngineConn: [`EngineRequest`] at [`ENGINE_RPC_PATH`].
//! * EngineConn -> Entrance: [`TaskEventBatch`] at [`ENTRANCE_RPC_PATH`], and
//!   each result set's bytes streamed by `PUT` to [`ENTRANCE_RESULT_PATH`]
//!   `/{task_id}/{alias}` (the engine's ticket in [`TICKET_HEADER`]), so the
//!   engine may run on any host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::label::LabelSet;
use crate::resource::Resource;
use crate::status::{JobStatus, NodeStatus};

pub const RPC_TOKEN_HEADER: &str = "x-hangar-rpc-token";
pub const MANAGER_RPC_PATH: &str = "/api/rest_j/v1/rpc/manager";
pub const ENTRANCE_RPC_PATH: &str = "/api/rest_j/v1/rpc/entrance";
pub const ENTRANCE_RESULT_PATH: &str = "/api/rest_j/v1/rpc/entrance/result";
/// The ticket of the engine sending a result set (its key is in [`RPC_TOKEN_HEADER`]).
pub const TICKET_HEADER: &str = "x-hangar-ticket";
pub const ENGINE_RPC_PATH: &str = "/rpc";
pub const ECM_RPC_PATH: &str = "/api/rest_j/v1/rpc/ecm";
pub const MANAGER_ECM_RPC_PATH: &str = "/api/rest_j/v1/rpc/manager/ecm";
/// The version of this message set; a peer with another refuses to talk.
pub const RPC_VERSION: u32 = 2;

/// Messages an engine sends to the manager.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum EngineToManager {
    /// The engine listens at `instance` (`host:port`) and is ready (status Unlock).
    Ready {
        ticket_id: String,
        instance: String,
        pid: u32,
        rpc_version: u32,
        /// The OS account the engine runs as (its result folders are handed to it).
        #[serde(default)]
        account: Option<OsAccount>,
    },
    /// Periodic and on every status change.
    Heartbeat { ticket_id: String, status: NodeStatus, metrics: EngineMetrics },
    /// A start-up phase failed; the engine exits after sending this.
    StartFailed { ticket_id: String, reason: String },
    /// The engine is exiting by itself (idle, orphaned, told to, executeOnce done).
    Exiting { ticket_id: String, status: NodeStatus, reason: String },
    /// A manager that answered `rejoin` (it restarted and lost its records):
    /// everything it needs to take the running engine back and account for it.
    Rejoin {
        ticket_id: String,
        instance: String,
        pid: u32,
        user: String,
        labels: LabelSet,
        resource: Resource,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<crate::resource::ClusterCharge>,
        ecm_instance: String,
        status: NodeStatus,
        metrics: EngineMetrics,
        rpc_version: u32,
        #[serde(default)]
        account: Option<OsAccount>,
    },
}

/// A uid and gid on the engine's host.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct OsAccount {
    pub uid: u32,
    pub gid: u32,
}

impl EngineToManager {
    pub fn ticket_id(&self) -> &str {
        match self {
            EngineToManager::Ready { ticket_id, .. }
            | EngineToManager::Heartbeat { ticket_id, .. }
            | EngineToManager::StartFailed { ticket_id, .. }
            | EngineToManager::Exiting { ticket_id, .. }
            | EngineToManager::Rejoin { ticket_id, .. } => ticket_id,
        }
    }
}

/// The manager's answer to an [`EngineToManager`] message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ManagerReply {
    /// False when the manager does not know this ticket: the engine must
    /// exit, unless `rejoin` is set.
    pub known: bool,
    /// The manager has no record of the ticket but never ended it (it
    /// restarted): the engine should send [`EngineToManager::Rejoin`]; on a
    /// reply to `Rejoin` it means "not yet, try again later".
    #[serde(default)]
    pub rejoin: bool,
    /// To a registering ECM: tickets of its engines the manager already wrote
    /// off (their host was lost); the ECM stops them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

impl ManagerReply {
    pub fn known(known: bool) -> Self {
        Self { known, rejoin: false, stop: Vec::new() }
    }
}

/// Startup option the ECM gives every engine: its own `host:port`.
pub const ECM_INSTANCE_CONF: &str = "hangar.ecm.instance";
/// Startup option the ECM gives every engine: the address to listen on and
/// advertise (the ECM's own host, reachable from the control plane).
/// The engine's cluster queue charge (JSON of [`crate::resource::ClusterCharge`]),
/// which it shows the manager again when it rejoins.
pub const CLUSTER_CHARGE_CONF: &str = "hangar.resource.cluster";
pub const ENGINE_BIND_HOST_CONF: &str = "hangar.engineconn.bind_host";

/// Requests to an engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum EngineRequest {
    /// Lock the engine for one client; granted only when Unlock.
    Lock {
        timeout_ms: u64,
    },
    Unlock {
        lock: String,
    },
    Execute(TaskExecuteRequest),
    Kill {
        task_id: i64,
    },
    Status,
    /// Where one task stands (an Entrance re-attaching after a restart).
    /// With `callback_url`, the task's events (those queued or being retried
    /// now too) and result sets go to that Entrance from then on: the
    /// instance that took the job over.
    TaskStatus {
        task_id: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback_url: Option<String>,
    },
    Shutdown {
        reason: String,
    },
}

/// Replies from an engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum EngineReply {
    Lock {
        lock: Option<String>,
        message: String,
    },
    Unlocked {
        unlocked: bool,
    },
    Submitted {
        task_id: i64,
    },
    Status {
        status: NodeStatus,
        metrics: EngineMetrics,
    },
    /// `status` None: the engine does not know the task (never ran it, or
    /// forgot it); Running while it runs; final with its error once ended.
    /// `lock`: the lock the task ran under, to unlock the engine after it.
    TaskStatus {
        status: Option<JobStatus>,
        error: Option<String>,
        lock: Option<String>,
    },
    Ack,
    Error {
        code: crate::ErrorCode,
        message: String,
    },
}

/// `RequestTaskExecute`: code to run under a lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskExecuteRequest {
    /// The Entrance's taskID; the engine reports under it.
    pub task_id: i64,
    pub exec_id: String,
    pub code: String,
    pub lock: String,
    pub run_type: String,
    pub user: String,
    /// Runtime parameters (`params.configuration.runtime`).
    pub properties: BTreeMap<String, String>,
    /// Base URL of the Entrance that receives this task's events.
    pub callback_url: String,
    /// The largest result set that Entrance stores (0: no limit); the engine
    /// fails the task rather than send a larger one.
    #[serde(default)]
    pub max_result_set_bytes: u64,
    /// The engine gives the lock back itself when the task ends (and says so
    /// with [`TaskEvent::Unlocked`] before the final status), so the Entrance
    /// need not call it again. An older engine ignores this and is unlocked
    /// by the Entrance as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlock_when_done: bool,
}

/// Why a result set was refused for its size (said by the engine before
/// sending, and by the Entrance to an engine that sent it anyway).
pub fn result_set_too_large(alias: u32, limit: u64) -> String {
    format!(
        "result set {} is larger than entrance.max_result_set_size ({limit} bytes; \
         HANGAR_ENTRANCE_MAX_RESULT_SET_SIZE raises it)",
        alias + 1
    )
}

/// Events about tasks, pushed by an engine to the task's Entrance in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskEventBatch {
    pub ticket_id: String,
    pub events: Vec<TaskEvent>,
}

/// What separates a failure's reason from the last stderr lines quoted after
/// it (clients that showed stderr live print only the reason).
pub const STDERR_TAIL: &str = "; last stderr lines:\n";

/// Which stream a line of a task's output came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One line a task printed, streamed to clients as it is produced (stdout
/// lines are kept in the TEXT result set too; stderr lines in the job log).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputLine {
    pub stream: OutputStream,
    pub line: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum TaskEvent {
    Status {
        task_id: i64,
        status: JobStatus,
        error: Option<String>,
        /// The exit code of the task's program, where the engine has one (shell).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    Log {
        task_id: i64,
        lines: Vec<String>,
    },
    Output {
        task_id: i64,
        lines: Vec<OutputLine>,
    },
    /// The task's output is no longer sent live (too much of it, or a line
    /// too long for a terminal); all of it is in the result sets.
    OutputStopped {
        task_id: i64,
    },
    /// The engine gave back the lock the task ran under (asked with
    /// `unlock_when_done`); sent just before the final status.
    Unlocked {
        task_id: i64,
    },
    /// The combined report of the metrics-reporting seed: progress, resource
    /// and engine metrics in one message.
    RunningInfo(TaskRunningInfo),
    /// A result set: its bytes inline when small, else streamed to the
    /// Entrance (`ENTRANCE_RESULT_PATH`) before this event.
    ResultSet {
        task_id: i64,
        alias: u32,
        /// The whole `.dolphin` file, for a small result set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inline: Option<String>,
        rs_type: u32,
        /// Rows stored.
        rows: u64,
        /// Cut at the engine's row limit.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cut: bool,
        /// Rows produced, when cut and known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total_rows: Option<u64>,
    },
}

impl TaskEvent {
    pub fn task_id(&self) -> i64 {
        match self {
            TaskEvent::Status { task_id, .. }
            | TaskEvent::Log { task_id, .. }
            | TaskEvent::Output { task_id, .. }
            | TaskEvent::OutputStopped { task_id }
            | TaskEvent::Unlocked { task_id }
            | TaskEvent::ResultSet { task_id, .. } => *task_id,
            TaskEvent::RunningInfo(info) => info.task_id,
        }
    }
}

/// Linkis `JobProgressInfo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobProgressInfo {
    pub id: String,
    pub total_tasks: u32,
    pub running_tasks: u32,
    pub failed_tasks: u32,
    pub succeed_tasks: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskRunningInfo {
    pub task_id: i64,
    pub progress: f32,
    pub progress_info: Vec<JobProgressInfo>,
    pub resource: Resource,
    pub metrics: EngineMetrics,
}

/// The engine's own statistics (Linkis `heartBeatMsg` keys).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EngineMetrics {
    pub engine_instance: String,
    pub ticket_id: String,
    pub running_tasks: u32,
    pub queued_tasks: u32,
    pub succeed_tasks: u64,
    pub failed_tasks: u64,
    pub total_unlock_time_mills: u64,
    pub total_idle_time_mills: u64,
    pub total_busy_time_mills: u64,
    pub total_lock_time_mills: u64,
    pub last_unlock_timestamp: i64,
    /// Resident memory of the engine process (overload info).
    #[serde(default)]
    pub rss_kb: u64,
    /// Set when the engine's session is failing (NodeHealthy = UnHealthy): never reused.
    #[serde(default)]
    pub unhealthy: Option<String>,
    /// What the engine's session says about itself (Spark: `spark.ui.url`,
    /// `spark.app.id`, `spark.master`, `spark.executors`, `spark.executor.memory`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub info: BTreeMap<String, String>,
}

/// The manager's order to an ECM to start one engine (Linkis `EngineConnBuildRequest`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineConnBuildRequest {
    pub ticket_id: String,
    pub user: String,
    pub labels: LabelSet,
    pub resource: Resource,
    pub properties: BTreeMap<String, String>,
    /// Materials the ECM localizes before launch (Linkis `bmlResources`).
    #[serde(default)]
    pub materials: Vec<MaterialRef>,
    /// The engine's own credential (see [`crate::credential`]); the ECM hands
    /// it to the engine on standard input.
    #[serde(default)]
    pub engine_key: crate::credential::Secret,
    /// What it takes from a cluster queue besides `resource` (Spark executors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::resource::ClusterCharge>,
}

/// Where a localized material goes in an engine's work dir.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum MaterialKind {
    /// A directory of the engine's plugin (`conf` or `lib`), shipped as a tar
    /// archive and linked into the work dir under its name.
    PluginDir,
    /// A user's file from the material library, linked as `resources/<name>`.
    UserFile,
}

/// One material an engine needs, named by the SHA-256 of its bytes: the ECM
/// fetches it from the manager once, verifies it and shares it read-only
/// between engines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct MaterialRef {
    pub kind: MaterialKind,
    /// `conf`/`lib` for plugin dirs, the file name for user files.
    pub name: String,
    /// Lower-case hex SHA-256 of the bytes served by the manager.
    pub sha256: String,
    pub size: u64,
    /// Where it came from, for messages: `python/dist/python3/lib`, `resourceId@v000001`.
    pub origin: String,
}

impl MaterialRef {
    /// True for a 64-character lower-case hex digest (the only form used in paths).
    pub fn valid_digest(d: &str) -> bool {
        d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// True for a name that is one plain path component.
    pub fn valid_name(n: &str) -> bool {
        !n.is_empty() && n.len() <= 255 && !n.starts_with('.') && !n.contains(['/', '\\', '\0'])
    }
}

/// Path under the manager's address where ECMs fetch materials by digest.
pub const MANAGER_MATERIAL_PATH: &str = "/rpc/manager/materials";

/// Requests from the manager (or an operator) to an EngineConnManager.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum EcmRequest {
    Launch {
        build: EngineConnBuildRequest,
        manager_url: String,
        engine_conf: Vec<(String, String)>,
    },
    Kill {
        ticket_id: String,
    },
    /// Page through an engine's log file (Linkis `engineConnLog` operator).
    EngineLog {
        ticket_id: String,
        log_type: String,
        from_line: usize,
        page_size: usize,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum EcmReply {
    Launched { pid: u32, log_dir: String },
    Killed,
    Log { log_path: String, logs: Vec<String>, end_line: usize, rows: usize },
    Error { code: crate::ErrorCode, message: String },
}

/// What an ECM sends the manager.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum EcmToManager {
    /// On start and whenever the manager has forgotten it; idempotent.
    Register {
        instance: String,
        labels: LabelSet,
        max: Resource,
        rpc_version: u32,
        engines: Vec<String>,
    },
    Heartbeat {
        instance: String,
        health: EcmHealth,
    },
    /// An engine process ended (reported at once, not after a heartbeat timeout).
    EngineExited {
        instance: String,
        ticket_id: String,
        description: String,
    },
}

impl EcmToManager {
    pub fn instance(&self) -> &str {
        match self {
            EcmToManager::Register { instance, .. }
            | EcmToManager::Heartbeat { instance, .. }
            | EcmToManager::EngineExited { instance, .. } => instance,
        }
    }
}

/// Host health in an ECM heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EcmHealth {
    pub total_memory: u64,
    pub free_memory: u64,
    pub load1: f64,
    pub cores: u32,
    pub engines: u32,
    pub launch_failures: u64,
    /// Short of memory or CPU: place no new engines here.
    pub protected: bool,
    /// Materials fetched into the host's cache since the ECM started.
    #[serde(default)]
    pub material_fetches: u64,
    /// Of those, fetched again because the cached copy was corrupt.
    #[serde(default)]
    pub material_refetches: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let msgs = vec![
            EngineToManager::Ready {
                ticket_id: "t".into(),
                instance: "127.0.0.1:1".into(),
                pid: 7,
                rpc_version: RPC_VERSION,
                account: Some(OsAccount { uid: 1001, gid: 1001 }),
            },
            EngineToManager::Heartbeat {
                ticket_id: "t".into(),
                status: NodeStatus::Busy,
                metrics: EngineMetrics::default(),
            },
        ];
        for m in msgs {
            let s = serde_json::to_string(&m).expect("ser");
            assert_eq!(serde_json::from_str::<EngineToManager>(&s).expect("de"), m);
        }
        let req = EngineRequest::Execute(TaskExecuteRequest {
            task_id: 1,
            exec_id: "e".into(),
            code: "echo".into(),
            lock: "l".into(),
            run_type: "shell".into(),
            user: "u".into(),
            properties: BTreeMap::new(),
            callback_url: "http://x".into(),
            max_result_set_bytes: 0,
            unlock_when_done: true,
        });
        let s = serde_json::to_string(&req).expect("ser");
        assert!(s.contains("\"type\":\"Execute\""));
        assert_eq!(serde_json::from_str::<EngineRequest>(&s).expect("de"), req);
        let ev = TaskEvent::RunningInfo(TaskRunningInfo { task_id: 3, ..Default::default() });
        let s = serde_json::to_string(&ev).expect("ser");
        assert_eq!(serde_json::from_str::<TaskEvent>(&s).expect("de").task_id(), 3);
    }

    #[test]
    fn task_status_takes_an_optional_new_callback() {
        // An older Entrance sends no callback; an older engine ignores one.
        let old: EngineRequest = serde_json::from_str(r#"{"type":"TaskStatus","task_id":4}"#).expect("de");
        assert_eq!(old, EngineRequest::TaskStatus { task_id: 4, callback_url: None });
        assert_eq!(serde_json::to_string(&old).expect("ser"), r#"{"type":"TaskStatus","task_id":4}"#);
        let moved = EngineRequest::TaskStatus { task_id: 4, callback_url: Some("http://10.0.0.2:9001".into()) };
        let s = serde_json::to_string(&moved).expect("ser");
        assert_eq!(serde_json::from_str::<EngineRequest>(&s).expect("de"), moved);
    }
}
