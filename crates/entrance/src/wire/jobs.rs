//! Jobs: submit, status, progress, log, kill, job history; users: login and userInfo.

use std::collections::BTreeMap;

use hangar_protocol::rpc::JobProgressInfo;
use hangar_protocol::{Envelope, JobStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::Scalar;

/// `POST /entrance/submit` (and the 0.x `/entrance/execute`, which sends
/// `executionCode` and `runType` at the top level instead of `executionContent`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct SubmitRequest {
    pub execution_content: Option<ExecutionContent>,
    /// 0.x `execute`: the code.
    pub execution_code: Option<String>,
    /// 0.x `execute`: the code type.
    pub run_type: Option<String>,
    /// Labels, at least `engineType` (e.g. `shell-1`); `userCreator` defaults to `<user>-<default creator>`.
    #[schema(value_type = BTreeMap<String, Scalar>, example = json!({"engineType": "shell-1", "userCreator": "alice-IDE"}))]
    pub labels: Option<Map<String, Value>>,
    /// Run as this user (admins, or the caller's own name).
    pub execute_user: Option<String>,
    pub params: Option<JobParams>,
    /// Where the code came from (kept in job history).
    #[schema(value_type = Option<Object>)]
    pub source: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct ExecutionContent {
    pub code: Option<String>,
    /// The code type, e.g. `shell`, `python`, `sql`; or the label `codeType`.
    pub run_type: Option<String>,
}

/// `params`: `variable` for `${name}` substitution, `configuration` for the
/// engine (`startup`, `runtime`); other keys are kept in job history.
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
pub struct JobParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable: Option<BTreeMap<String, Scalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<JobConfiguration>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
pub struct JobConfiguration {
    /// Engine start options (part of the engine's identity for reuse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<BTreeMap<String, Scalar>>,
    /// Options for this job only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<BTreeMap<String, Scalar>>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitData {
    #[serde(rename = "execID")]
    pub exec_id: String,
    #[serde(rename = "taskID")]
    pub task_id: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecIdData {
    #[serde(rename = "execID")]
    pub exec_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusData {
    pub status: JobStatus,
    #[serde(rename = "execID")]
    pub exec_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressData {
    pub progress: f64,
    #[serde(rename = "execID")]
    pub exec_id: String,
    pub progress_info: Vec<JobProgressInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct YarnMetrics {
    #[serde(rename = "yarnResource")]
    pub yarn_resource: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressWithResourceData {
    pub progress: f64,
    #[serde(rename = "execID")]
    pub exec_id: String,
    pub progress_info: Vec<JobProgressInfo>,
    pub yarn_metrics: YarnMetrics,
    /// What the engine reported about itself, when it did.
    #[schema(value_type = Option<Object>)]
    pub engine_metrics: Value,
    /// The engine's resource, when known.
    #[schema(value_type = Option<Object>)]
    pub resource: Value,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// The first line to return (0-based; the answer's `fromLine` is the next one).
    pub from_line: Option<usize>,
    /// How many lines (default 100; negative: up to 10000).
    pub size: Option<i64>,
    /// `false`: one string instead of four (error, warn, info, all).
    pub distinct_level: Option<bool>,
}

/// Log text: four strings (ERROR, WARN, INFO, ALL lines) or, with
/// `distinctLevel=false`, one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LogText {
    Levels([String; 4]),
    All(String),
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogData {
    pub log: LogText,
    #[serde(rename = "execID")]
    pub exec_id: String,
    pub from_line: usize,
}

/// One Server-Sent Event of `entrance/{id}/events`: its kind, and its data
/// as JSON text with a `type` field naming the kind again. (It describes the
/// stream; axum's `Sse` writes it.)
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct JobEvent {
    pub event: JobEventKind,
    /// JSON: `status` {status}; `log` {fromLine, lines}; `output` {fromLine,
    /// lines: [{stream: stdout|stderr, line}]} (what the task prints, live;
    /// numbered from 0); `progress` {progress, progressInfo, resource,
    /// engineMetrics}; `resultSet` {alias, rows, totalRows}; `end` {status,
    /// errDesc, exitCode}; `lagged` {missed}.
    pub data: String,
}

#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub enum JobEventKind {
    Status,
    Log,
    Output,
    Progress,
    ResultSet,
    End,
    Lagged,
}

/// `POST /entrance/{id}/killJobs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct KillJobsRequest {
    /// The execIDs to kill (Linkis clients also send `taskIDList`; the execIDs decide).
    pub id_list: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KillJobsData {
    /// One envelope per execID: `data.execID` on success, the error otherwise.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
}

/// `GET /jobhistory/list`: every parameter optional.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// Created at or after (epoch ms).
    #[serde(rename = "startDate")]
    pub start_date: Option<i64>,
    /// Created before (epoch ms; a day after `startDate` when they are equal).
    #[serde(rename = "endDate")]
    pub end_date: Option<i64>,
    pub status: Option<JobStatus>,
    /// 1-based page (default 1).
    #[serde(rename = "pageNow")]
    pub page_now: Option<u32>,
    /// Rows per page (default 20, at most 1000).
    #[serde(rename = "pageSize")]
    pub page_size: Option<u32>,
    #[serde(rename = "taskID")]
    pub task_id: Option<i64>,
    /// Engine type, e.g. `shell` or `python-python3`.
    #[serde(rename = "executeApplicationName")]
    pub execute_application_name: Option<String>,
    pub creator: Option<String>,
    /// Admins with `isAdminView`: this user's jobs only.
    #[serde(rename = "proxyUser")]
    pub proxy_user: Option<String>,
    /// Admins: every user's jobs.
    #[serde(rename = "isAdminView")]
    pub is_admin_view: Option<bool>,
    /// The Entrance instance that runs (ran) the job.
    pub instance: Option<String>,
    /// The engine it ran on (`host:port`).
    #[serde(rename = "engineInstance")]
    pub engine_instance: Option<String>,
    /// The code's run type, e.g. `shell`.
    #[serde(rename = "runType")]
    pub run_type: Option<String>,
}

/// One page of job history, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobListData {
    /// The jobs (`executionCode` cut to its first 1000 characters).
    pub tasks: Vec<TaskVo>,
    /// The number of matching jobs in all (Linkis's name for it).
    pub total_page: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskData {
    pub task: TaskVo,
}

/// A job as Linkis's job history shows it (`QueryTaskVO`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskVo {
    #[serde(rename = "taskID")]
    pub task_id: i64,
    pub instance: Option<String>,
    pub exec_id: String,
    pub stronger_exec_id: String,
    pub um_user: String,
    pub execute_user: String,
    pub engine_instance: Option<String>,
    pub ecm_instance: Option<String>,
    pub ticket_id: Option<String>,
    pub execution_code: String,
    pub progress: f64,
    pub log_path: String,
    pub result_location: String,
    pub status: JobStatus,
    pub created_time: i64,
    pub updated_time: i64,
    pub engine_type: String,
    pub err_code: Option<i64>,
    pub err_desc: Option<String>,
    pub execute_application_name: String,
    pub request_application_name: String,
    pub run_type: String,
    /// The job's params as submitted (secrets masked), as JSON text.
    pub params_json: String,
    pub source_json: String,
    pub cost_time: i64,
    /// `key:value` of each label.
    pub labels: Vec<String>,
    pub is_reuse: Option<bool>,
    #[schema(value_type = Object)]
    pub metrics: Value,
    pub engine_log_path: Option<String>,
    pub can_retry: bool,
    #[schema(value_type = Option<Vec<Object>>)]
    pub sub_jobs: Option<Vec<Value>>,
}

/// `POST /user/login`: credentials only in the JSON body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct LoginRequest {
    pub user_name: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginData {
    pub user_name: String,
    pub is_admin: bool,
    /// Session lifetime in milliseconds.
    pub session_time_out: u64,
    pub enable_watermark: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub user_name: String,
    pub is_admin: bool,
}

/// The envelopes `killJobs` lists, one per execID.
pub(crate) type KillOutcome = Envelope<ExecIdData>;
