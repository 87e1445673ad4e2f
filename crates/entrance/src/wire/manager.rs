//! Operator answers in Linkis's `linkisManager` shapes: ECMs, engines,
//! resources, engine logs.

use hangar_protocol::{LabelSet, NodeStatus, Resource};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Linkis's resource form `{"instance":1,"memory":"1.0 GB","cpu":1}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceVo {
    pub instance: u64,
    /// Human-readable, e.g. `512.0 MB`.
    pub memory: String,
    pub cpu: u64,
}

impl From<Resource> for ResourceVo {
    fn from(r: Resource) -> Self {
        Self {
            instance: r.instances.into(),
            memory: hangar_protocol::resource::format_bytes(r.memory),
            cpu: r.cores.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelVo {
    pub label_key: String,
    pub string_value: String,
}

pub(crate) fn labels_vo(l: &LabelSet) -> Vec<LabelVo> {
    l.iter().map(|(k, v)| LabelVo { label_key: k.to_string(), string_value: v.to_string() }).collect()
}

/// `Healthy` or `UnHealthy`.
#[derive(Debug, Serialize, ToSchema)]
pub enum NodeHealthy {
    Healthy,
    UnHealthy,
}

/// An EngineConn as the manager's listings show it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineVo {
    pub application_name: String,
    /// `host:port` once the engine is up.
    pub instance: Option<String>,
    pub ticket_id: String,
    pub owner: String,
    pub labels: Vec<LabelVo>,
    pub engine_type: Option<String>,
    pub node_status: NodeStatus,
    pub em_instance: String,
    pub pid: Option<u32>,
    pub resource: ResourceVo,
    pub start_time: i64,
    pub engine_log_path: String,
    pub running_tasks: u32,
    pub node_healthy: NodeHealthy,
    pub unhealthy_reason: Option<String>,
    #[serde(rename = "rssKB")]
    pub rss_kb: u64,
    /// Its executors' share of a cluster queue (Spark on a cluster master):
    /// Linkis's `yarnResource` of a DriverAndYarnResource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_resource: Option<ClusterResourceVo>,
    /// What the engine says about itself (Spark: `spark.ui.url`, `spark.app.id`,
    /// `spark.master`, `spark.executors`, `spark.executor.memory`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub engine_info: std::collections::BTreeMap<String, String>,
    /// Created by the warm pool ahead of demand (Hangar's own).
    pub pooled: bool,
}

/// A queue charge: the queue's resource label and what the engine holds there.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterResourceVo {
    pub queue: String,
    pub resource: ResourceVo,
}

/// An EngineConnManager and its resources.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcmVo {
    pub application_name: String,
    pub instance: String,
    pub labels: Vec<LabelVo>,
    pub node_status: NodeStatus,
    pub node_healthy: NodeHealthy,
    pub max_resource: ResourceVo,
    pub used_resource: ResourceVo,
    pub locked_resource: ResourceVo,
    pub left_resource: ResourceVo,
    pub engine_count: usize,
    /// The account the server runs as.
    pub owner: String,
    /// When it registered (epoch ms).
    pub start_time: i64,
    /// An admin's note (`modifyEMInfo`).
    pub description: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EcmsData {
    #[serde(rename = "EMs")]
    pub ems: Vec<EcmVo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnginesData {
    pub engines: Vec<EngineVo>,
}

/// `listEMEngines`: the ECM, as Linkis's console sends it, as `emInstance`,
/// or as `{"instance": "host:port"}`; and optional filters.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct ListEcmEnginesRequest {
    pub em: Option<EmRef>,
    pub instance: Option<String>,
    pub em_instance: Option<String>,
    /// Only engines in this status.
    pub node_status: Option<NodeStatus>,
    /// Only this user's engines.
    pub owner: Option<String>,
    /// Only engines of this type (`shell`) or type and version (`shell-1`).
    pub engine_type: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct EmRef {
    pub service_instance: Option<ServiceInstance>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
#[serde(rename_all = "camelCase")]
pub struct ServiceInstance {
    pub application_name: Option<String>,
    pub instance: Option<String>,
}

/// `killEngineConn`: one engine or a list, each by `instance` or `ticketId`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged, expecting = "an engine {\"instance\"|\"ticketId\": ...} or a list of them")]
pub enum KillEngineRequest {
    One(EngineRef),
    Many(Vec<EngineRef>),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct EngineRef {
    pub instance: Option<String>,
    pub ticket_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KillEngineData {
    /// The instances or tickets asked to end.
    pub killed: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserResourcesQuery {
    /// Admins: this user's resources only.
    pub user: Option<String>,
}

/// One user's resources for one creator and engine type.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserResourceVo {
    pub user_creator: String,
    pub engine_type_with_version: String,
    pub resource_type: String,
    pub max_resource: ResourceVo,
    pub used_resource: ResourceVo,
    pub locked_resource: ResourceVo,
    pub left_resource: ResourceVo,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserResourcesData {
    pub user_resources: Vec<UserResourceVo>,
}

/// A cluster queue executors are charged to (`sparkQueue=<queue>@<master>`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueResourceVo {
    pub queuename: String,
    pub max_resources: ResourceVo,
    pub used_resources: ResourceVo,
    pub locked_resources: ResourceVo,
    pub left_resources: ResourceVo,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueResourcesData {
    pub queues: Vec<QueueResourceVo>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct EngineLogQuery {
    /// The engine's ticket.
    pub ticket_id: Option<String>,
    /// `stdout` (default) or `stderr`.
    pub log_type: Option<String>,
    /// 1-based first line (default 1).
    pub from_line: Option<usize>,
    /// Lines per page (default 100).
    pub page_size: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineLogData {
    pub log_path: String,
    pub rows: usize,
    pub logs: Vec<String>,
    pub end_line: usize,
}
