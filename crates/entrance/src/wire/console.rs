//! The management console's requests and answers (Linkis `linkis-web`
//! console: global history, resource management, ECM management, engine
//! history), field names as Linkis's.

use hangar_protocol::{NodeStatus, Resource};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Linkis's LoadInstanceResource: memory in bytes, cores, instances.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct LoadInstanceVo {
    pub memory: u64,
    pub cores: u32,
    pub instance: u32,
}

impl From<Resource> for LoadInstanceVo {
    fn from(r: Resource) -> Self {
        Self { memory: r.memory, cores: r.cores, instance: r.instances }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListUndoneQuery {
    /// Created at or after (epoch ms; default a day ago).
    #[serde(rename = "startDate")]
    pub start_date: Option<i64>,
    /// Created before (epoch ms; default now).
    #[serde(rename = "endDate")]
    pub end_date: Option<i64>,
    #[serde(rename = "pageNow")]
    pub page_now: Option<u32>,
    #[serde(rename = "pageSize")]
    pub page_size: Option<u32>,
    /// Jobs with this taskID or a later one.
    #[serde(rename = "startTaskID")]
    pub start_task_id: Option<i64>,
    /// Engine type, e.g. `shell`.
    #[serde(rename = "engineType")]
    pub engine_type: Option<String>,
    pub creator: Option<String>,
}

/// `listundone`: only the count, under Linkis's name for it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListUndoneData {
    /// How many of the caller's jobs are not finished.
    pub total_page: i64,
}

/// What the caller may see and do on the global history page.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GovernanceData {
    pub admin: bool,
    /// A job-history admin (may use `isAdminView`): the server's `auth.admins`.
    pub history_admin: bool,
    /// Departments are not kept: always false.
    pub dept_admin: bool,
    pub can_result_set: bool,
    pub error_msg_tip: String,
}

/// `rm/applicationlist`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct ApplicationListRequest {
    /// `user-creator`, e.g. `alice-IDE`.
    pub user_creator: Option<String>,
    /// Engine type (`shell`) or type and version (`shell-1`).
    pub engine_type: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationListData {
    pub applications: Vec<ApplicationVo>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationVo {
    pub creator: String,
    pub application_list: ApplicationResources,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationResources {
    pub used_resource: LoadInstanceVo,
    pub max_resource: LoadInstanceVo,
    pub min_resource: LoadInstanceVo,
    pub locked_resource: LoadInstanceVo,
    pub engine_instances: Vec<EngineInstanceVo>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineInstanceVo {
    pub creator: String,
    pub engine_type: String,
    /// `host:port` once the engine is up.
    pub instance: Option<String>,
    /// Type and version, e.g. `shell-1`.
    pub label: String,
    pub resource: LoadInstanceVo,
    pub status: NodeStatus,
    pub start_time: i64,
    pub owner: String,
    pub ticket_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AllUserResourceQuery {
    /// A substring of the user.
    pub username: Option<String>,
    /// A substring of the creator.
    pub creator: Option<String>,
    /// A substring of the engine type with version.
    #[serde(rename = "engineType")]
    pub engine_type: Option<String>,
    /// 1-based (default 1).
    pub page: Option<u32>,
    /// Rows per page (default 20).
    pub size: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllUserResourceData {
    pub resources: Vec<UserResourceRow>,
    /// Matching rows in all.
    pub total: usize,
}

/// One user's resources for one creator and engine type (admin view).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserResourceRow {
    pub username: String,
    pub creator: String,
    pub engine_type_with_version: String,
    pub resource_type: String,
    pub used_resource: LoadInstanceVo,
    pub locked_resource: LoadInstanceVo,
    pub max_resource: LoadInstanceVo,
    pub left_resource: LoadInstanceVo,
    /// `Normal`, `Warn` (over 60 % of the maximum held) or `Critical` (over 90 %).
    pub load_resource_status: String,
    /// No Yarn queue part: always null.
    pub queue_resource_status: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineTypesData {
    pub engine_type: Vec<String>,
}

/// One engine to end, as the console sends it (`engineType` in place of
/// `applicationName`, a quirk of the console).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct EngineKillTarget {
    /// The engines' service name (`linkis-cg-engineconn`): accepted as Linkis
    /// clients send it, not needed (the instance names the engine).
    #[allow(dead_code)]
    pub application_name: Option<String>,
    /// The console's key for the same.
    #[allow(dead_code)]
    pub engine_type: Option<String>,
    /// The engine's `host:port`.
    pub engine_instance: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
pub struct EcmInstanceRequest {
    /// The ECM's instance (`host:port`).
    pub instance: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KilledEngines {
    pub kill_engine_num: usize,
    /// Bytes released.
    pub memory: u64,
    pub cores: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KillUnlockData {
    pub result: KilledEngines,
}

/// `modifyEMInfo`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct ModifyEmRequest {
    pub application_name: Option<String>,
    /// The ECM's instance (`host:port`).
    pub instance: Option<String>,
    /// `Healthy`, `UnHealthy`, `WARN`, `StockAvailable` or `StockUnavailable`.
    pub em_status: Option<String>,
    /// Replace the ECM's labels (asks are matched against them).
    pub labels: Option<Vec<LabelPair>>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct LabelPair {
    pub label_key: String,
    pub string_value: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct HealthyStatusQuery {
    /// Only the states an admin may set.
    pub only_editable: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealthyData {
    pub node_healthy: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusData {
    pub node_status: Vec<NodeStatus>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct EcrHistoryQuery {
    /// A substring of the engine's `host:port`.
    pub instance: Option<String>,
    /// Admins: this user's engines only.
    pub creator: Option<String>,
    /// `yyyy-MM-dd HH:mm:ss`, server time; engines created at or after.
    pub start_date: Option<String>,
    /// `yyyy-MM-dd HH:mm:ss`; engines created at or before (default now).
    pub end_date: Option<String>,
    /// Engine type, e.g. `shell`.
    pub engine_type: Option<String>,
    /// Final status, e.g. `Success` or `Failed`.
    pub status: Option<String>,
    pub page_now: Option<u32>,
    pub page_size: Option<u32>,
}

/// An ended engine (Linkis ECResourceInfoRecord).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcrRecordVo {
    pub id: i64,
    pub create_user: String,
    /// `user-creator,engineType-version`.
    pub label_value: String,
    pub ticket_id: String,
    pub service_instance: String,
    /// JSON of a LoadInstance resource, as Linkis stores it.
    pub used_resource: String,
    pub request_resource: String,
    pub released_resource: String,
    pub ecm_instance: String,
    pub request_times: i64,
    pub used_times: i64,
    pub release_times: i64,
    /// When it was first ready (epoch ms).
    pub used_time: Option<i64>,
    pub create_time: i64,
    pub release_time: i64,
    pub log_dir_suffix: String,
    pub engine_type: String,
    pub status: String,
    /// Why it ended.
    pub release_reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcrHistoryData {
    pub engine_list: Vec<EcrRecordVo>,
    /// Matching records in all (Linkis's name for it).
    pub total_page: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct EcmListQuery {
    /// A substring of the ECM's instance.
    pub instance: Option<String>,
    /// `Healthy` or `UnHealthy`.
    pub node_healthy: Option<String>,
    /// The ECM's owner (case-insensitive).
    pub owner: Option<String>,
    /// The value of the ECM's `tenant` label.
    pub tenant_label: Option<String>,
}
