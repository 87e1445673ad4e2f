//! Node records: engines and ECMs as the manager sees them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use hangar_protocol::label::{EM_INSTANCE, TENANT};
use hangar_protocol::resource::ClusterCharge;
use hangar_protocol::rpc::{EcmHealth, EngineMetrics};
use hangar_protocol::{LabelSet, NodeStatus, Resource, now_ms};
use serde::Serialize;
use tokio::sync::watch;

use crate::EcmClient;
use crate::rm::LabelResource;

/// What a watcher of an engine sees.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineView {
    pub status: NodeStatus,
    pub reason: Option<String>,
    pub instance: Option<String>,
}

pub(crate) struct EngineNode {
    pub ticket_id: String,
    pub instance: Option<String>,
    pub user: String,
    pub labels: LabelSet,
    pub ecm_instance: String,
    pub resource: Resource,
    /// What it takes from a cluster queue besides (Spark executors).
    pub cluster: Option<ClusterCharge>,
    pub pid: Option<u32>,
    pub status: NodeStatus,
    /// Held by the ask that is creating it until that ask locks it.
    pub reserved: bool,
    pub created_at: Instant,
    pub created_ms: i64,
    pub last_heartbeat: Instant,
    pub metrics: EngineMetrics,
    pub log_dir: String,
    /// Digests of the user files localized for it: asks naming files it
    /// lacks do not reuse it.
    pub user_files: BTreeSet<String>,
    pub watch: watch::Sender<EngineView>,
    /// The engine's own credential (`credential::engine_key`).
    pub key: String,
    /// The OS account it runs as, as it reported.
    pub account: Option<hangar_protocol::rpc::OsAccount>,
    /// When it first reported ready (epoch ms).
    pub ready_ms: Option<i64>,
    /// How many times an ask was given it (counted when it granted the lock).
    pub used_times: u32,
    /// When the manager last set the status itself (a lock it got, an
    /// unlock): a heartbeat read before that must not undo it.
    pub noted: Option<Instant>,
    /// Created by the warm pool ahead of demand (`pool.rs`).
    pub pooled: bool,
    /// A pooled engine an ask was given once (its first use is a pool hit).
    pub pool_served: bool,
}

impl EngineNode {
    pub(crate) fn starting(
        ticket_id: &str,
        user: &str,
        labels: &LabelSet,
        ecm_instance: &str,
        resource: Resource,
        watch: watch::Sender<EngineView>,
        key: String,
    ) -> Self {
        let now = Instant::now();
        Self {
            ticket_id: ticket_id.to_string(),
            instance: None,
            user: user.to_string(),
            labels: labels.clone(),
            ecm_instance: ecm_instance.to_string(),
            resource,
            cluster: None,
            pid: None,
            status: NodeStatus::Starting,
            reserved: true,
            created_at: now,
            created_ms: now_ms(),
            last_heartbeat: now,
            metrics: EngineMetrics::default(),
            log_dir: String::new(),
            user_files: BTreeSet::new(),
            watch,
            key,
            account: None,
            ready_ms: None,
            used_times: 0,
            noted: None,
            pooled: false,
            pool_served: false,
        }
    }

    /// Guarded transition; illegal ones (a stale heartbeat after the end) are ignored.
    pub(crate) fn set_status(&mut self, to: NodeStatus, reason: Option<String>) -> bool {
        if !self.status.can_transition(to) {
            return false;
        }
        if to == NodeStatus::Unlock && self.ready_ms.is_none() {
            self.ready_ms = Some(now_ms());
        }
        self.status = to;
        let instance = self.instance.clone();
        self.watch.send_modify(|v| {
            v.status = to;
            v.instance = instance;
            if reason.is_some() {
                v.reason = reason;
            }
        });
        true
    }

    pub(crate) fn info(&self) -> EngineInfo {
        EngineInfo {
            ticket_id: self.ticket_id.clone(),
            instance: self.instance.clone(),
            user: self.user.clone(),
            labels: self.labels.clone(),
            ecm_instance: self.ecm_instance.clone(),
            status: self.status,
            resource: self.resource,
            cluster: self.cluster.as_ref().map(|c| ClusterUse { label: c.label.clone(), resource: c.resource }),
            pid: self.pid,
            created_ms: self.created_ms,
            log_dir: self.log_dir.clone(),
            running_tasks: self.metrics.running_tasks,
            rss_kb: self.metrics.rss_kb,
            unhealthy: self.metrics.unhealthy.clone(),
            info: self.metrics.info.clone(),
            pooled: self.pooled,
        }
    }
}

/// An engine as listed by the operator API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    pub ticket_id: String,
    pub instance: Option<String>,
    pub user: String,
    pub labels: LabelSet,
    pub ecm_instance: String,
    pub status: NodeStatus,
    pub resource: Resource,
    /// Its executors' share of a cluster queue (Spark).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterUse>,
    pub pid: Option<u32>,
    pub created_ms: i64,
    pub log_dir: String,
    pub running_tasks: u32,
    pub rss_kb: u64,
    pub unhealthy: Option<String>,
    /// What the engine says about itself (Spark: UI URL, application, executors).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub info: std::collections::BTreeMap<String, String>,
    /// Created by the warm pool ahead of demand.
    pub pooled: bool,
}

/// An engine's charge on a cluster queue, as listed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterUse {
    pub label: String,
    pub resource: Resource,
}

pub(crate) struct EcmNode {
    pub instance: String,
    pub labels: LabelSet,
    pub max: Resource,
    pub status: NodeStatus,
    /// The ECM says its host is short of memory or CPU.
    pub protected: bool,
    /// Its last health report.
    pub health: Option<EcmHealth>,
    pub last_heartbeat: Instant,
    pub client: Arc<dyn EcmClient>,
    /// When it (last) registered (epoch ms).
    pub registered_ms: i64,
    /// What an admin set (`modifyEMInfo`); kept across re-registrations.
    pub admin: EcmAdmin,
}

/// What an admin set on an ECM.
#[derive(Debug, Clone, Default)]
pub struct EcmAdmin {
    /// Labels set by an admin replace the ECM's own.
    pub labels: Option<LabelSet>,
    /// Marked UnHealthy: no new engine is placed on it.
    pub unhealthy: bool,
    pub description: String,
}

impl EcmNode {
    /// An ECM serves an ask when every routing label the ECM carries is in the
    /// ask with the same value, and an ask for a tenant only goes to that
    /// tenant's ECMs.
    pub(crate) fn matches(&self, ask: &LabelSet) -> bool {
        let labels = self.labels();
        let own_ok = labels.iter().filter(|(k, _)| *k != EM_INSTANCE).all(|(k, v)| ask.get(k) == Some(v));
        let tenant_ok = match ask.get(TENANT) {
            Some(t) => labels.get(TENANT) == Some(t),
            None => true,
        };
        own_ok && tenant_ok
    }

    /// Its labels in effect: an admin's, else its own.
    pub(crate) fn labels(&self) -> &LabelSet {
        self.admin.labels.as_ref().unwrap_or(&self.labels)
    }
}

/// An ECM as listed by the operator API.
#[derive(Debug, Clone, Serialize)]
pub struct EcmInfo {
    pub instance: String,
    pub labels: LabelSet,
    pub status: NodeStatus,
    pub resource: LabelResource,
    pub engines: usize,
    pub health: Option<EcmHealth>,
    /// Marked UnHealthy by an admin: no new engine is placed on it.
    pub admin_unhealthy: bool,
    pub description: String,
    /// When it registered (epoch ms).
    pub registered_ms: i64,
}
