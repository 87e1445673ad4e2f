//! The LinkisManager: AppManager (ask = reuse or create), ResourceManager,
//! LabelManager (CORE-label matching) and the node registry with its
//! heartbeat monitor.
//!
//! Ask flow (the add-an-engineconn seed): validate the labels and find the
//! plugin; try to reuse an engine whose CORE labels equal the ask's and which
//! grants its lock; otherwise, under a per-label-set gate, select an ECM by
//! labels and free resource, reserve the plugin's resource on the ECM and
//! user labels atomically, have the ECM launch the engine, wait for its ready
//! report (or its death, or the start deadline), confirm the resource and
//! lock the engine for the caller.

mod admin;
mod api;
mod ask;
mod client;
mod config;
mod engine_client;
mod monitor;
mod nodes;
mod pool;
mod pool_model;
mod remote_ecm;
mod remote_manager;
pub mod rm;
mod rpc;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use hangar_bml::MaterialLibrary;
use hangar_engineconn_plugin::{EngineConnBuildRequest, EngineConnPlugin, find_plugin};
use hangar_protocol::resource::ClusterCharge;
use hangar_protocol::rpc::{EcmHealth, MaterialRef};
use hangar_protocol::rpc::{EngineReply, EngineRequest};
use hangar_protocol::{HangarError, LabelSet, NodeStatus, Resource};
use tokio::sync::{Semaphore, watch};

pub use admin::{EcmChange, EndedEngine};
pub use api::serve_call;
pub use client::{LocalManager, ManagerClient};
pub use config::ManagerConfig;
pub use engine_client::EngineClient;
pub use nodes::{EcmInfo, EngineInfo, EngineView};
pub use pool::{POOL_MAX_KEY, POOL_MIN_IDLE_KEY, PoolConfig, PoolSnapshot};
pub use remote_manager::{ClusterManager, Leader, Leadership};
pub use rpc::router as rpc_router;

use nodes::{EcmNode, EngineNode};

/// What a launch returned: the engine process is started, not yet ready.
#[derive(Debug, Clone)]
pub struct LaunchedEngine {
    pub pid: u32,
    pub log_dir: String,
}

/// The manager's handle on one EngineConnManager (in-process or remote).
#[async_trait]
pub trait EcmClient: Send + Sync {
    async fn launch(
        &self,
        req: EngineConnBuildRequest,
        manager_url: &str,
        engine_conf: &[(String, String)],
    ) -> Result<LaunchedEngine, HangarError>;
    /// Stop the engine's process tree (SIGTERM, grace, SIGKILL).
    async fn kill(&self, ticket_id: &str) -> Result<(), HangarError>;
    /// A page of an engine's stdout or stderr.
    async fn engine_log(
        &self,
        ticket_id: &str,
        log_type: &str,
        from_line: usize,
        page_size: usize,
    ) -> Result<EngineLog, HangarError>;
    /// An ECM in another process, possibly on another host: one that can be
    /// lost. The in-process ECM cannot be cut off from its manager.
    fn remote(&self) -> bool {
        true
    }
}

/// A page of an engine's log file.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineLog {
    pub log_path: String,
    pub logs: Vec<String>,
    pub end_line: usize,
}

pub use hangar_protocol::manager_api::{AskRequest, EngineGrant, EngineState};

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ManagerStats {
    pub asks: AtomicU64,
    pub reuse_hits: AtomicU64,
    pub creations: AtomicU64,
    pub creation_failures: AtomicU64,
    pub engines_lost: AtomicU64,
    /// ECMs written off after 3 missed heartbeats (their host lost).
    pub ecms_lost: AtomicU64,
}

/// Engine start times (launch to ready), Prometheus-style buckets in seconds.
#[derive(Debug, Clone, Default)]
pub struct StartHistogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

const START_BUCKETS: [f64; 13] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl StartHistogram {
    fn observe(&mut self, secs: f64) {
        if self.buckets.is_empty() {
            self.buckets = START_BUCKETS.iter().map(|b| (*b, 0)).collect();
        }
        if let Some(b) = self.buckets.iter_mut().find(|(le, _)| secs <= *le) {
            b.1 += 1;
        }
        self.sum_seconds += secs;
        self.count += 1;
    }
}

/// Lock order, where two are held at once: the pools' sets (then their
/// tasks), `ecms`, then `engines`, then the ResourceManager's own lock. Every other lock is held alone.
pub struct Manager {
    cfg: ManagerConfig,
    start_times: Mutex<StartHistogram>,
    plugins: Vec<Arc<dyn EngineConnPlugin>>,
    rm: rm::ResourceManager,
    engines: Mutex<HashMap<String, EngineNode>>,
    ecms: Mutex<Vec<EcmNode>>,
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
    client: EngineClient,
    pub stats: ManagerStats,
    secrets: ControlPlaneSecrets,
    /// What control-plane instances present to each other.
    peer_token: String,
    materials: Option<Arc<MaterialLibrary>>,
    /// Tickets this manager ended, with why (most recent last): they may not rejoin.
    ended: Mutex<(HashMap<String, String>, std::collections::VecDeque<String>)>,
    /// The control-plane URLs engines are given (this instance's first).
    control_plane_urls: Mutex<String>,
    /// After a restart: engines with running jobs that have not rejoined
    /// yet, and until when new engines wait for them.
    expected: Mutex<(std::collections::HashSet<String>, Option<Instant>)>,
    /// When the monitor last ran: after a stall of this process, silence
    /// is its own, not the hosts'.
    last_monitor: Mutex<Option<Instant>>,
    /// Where ended engines are sent to be recorded (engine history).
    history: Mutex<Option<tokio::sync::mpsc::Sender<EndedEngine>>>,
    /// The warm pools (`pool.rs`).
    pool: pool::Pools,
}

const ECM_LABEL_PREFIX: &str = "emInstance:";
const USER_LABEL_PREFIX: &str = "combined_userCreator_engineType:";

/// What a resource label accounts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceHolder {
    /// An EngineConnManager (its instance).
    Ecm(String),
    /// A user's engines of one type (`alice-IDE`, `spark-4.3.0`).
    UserEngine { user_creator: String, engine_type: String },
    /// A cluster queue's executors (Spark: `sparkQueue=<queue>@<master>`).
    ClusterQueue(String),
}

/// How many ended tickets the manager remembers.
const ENDED_MEMORY: usize = 100_000;

/// The control plane's credentials: the secret engine keys are derived from
/// (it never leaves the control plane) and the token ECMs present.
#[derive(Clone)]
pub struct ControlPlaneSecrets {
    pub rpc_secret: String,
    pub ecm_token: String,
}

impl std::fmt::Debug for ControlPlaneSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlPlaneSecrets(***)")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these mutexes is updated in short, check-then-write steps.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Manager {
    /// `materials`: the library engines' materials come from (none: engines get
    /// empty `conf`/`lib` and user resources cannot be named).
    pub fn new(
        cfg: ManagerConfig,
        plugins: Vec<Arc<dyn EngineConnPlugin>>,
        secrets: ControlPlaneSecrets,
        materials: Option<Arc<MaterialLibrary>>,
    ) -> Result<Arc<Self>, HangarError> {
        if secrets.rpc_secret.is_empty() || secrets.ecm_token.is_empty() {
            return Err(HangarError::invalid("the manager needs an RPC secret and an ECM token"));
        }
        let client = EngineClient::new()?;
        Ok(Arc::new_cyclic(|me| Self {
            pool: pool::Pools::new(cfg.pool.clone(), me.clone()),
            materials,
            ended: Mutex::new(Default::default()),
            control_plane_urls: Mutex::new(cfg.manager_url.clone()),
            expected: Mutex::new(Default::default()),
            last_monitor: Mutex::new(None),
            history: Mutex::new(None),
            client,
            start_times: Mutex::new(StartHistogram::default()),
            cfg,
            plugins,
            rm: rm::ResourceManager::new(),
            engines: Mutex::new(HashMap::new()),
            ecms: Mutex::new(Vec::new()),
            gates: Mutex::new(HashMap::new()),
            stats: ManagerStats::default(),
            peer_token: hangar_protocol::credential::derived_token(
                secrets.rpc_secret.as_bytes(),
                hangar_protocol::manager_api::PEER_TOKEN_PURPOSE,
            ),
            secrets,
        }))
    }

    pub fn engine_client(&self) -> &EngineClient {
        &self.client
    }

    /// The token control-plane instances present to each other.
    pub fn peer_token(&self) -> &str {
        &self.peer_token
    }

    /// The token ECMs authenticate with.
    pub fn ecm_token(&self) -> &str {
        &self.secrets.ecm_token
    }

    /// The key an engine with this record must hold.
    fn derive_key(
        &self,
        ticket_id: &str,
        user: &str,
        labels: &LabelSet,
        ecm_instance: &str,
        resource: &Resource,
        cluster: Option<&ClusterCharge>,
    ) -> String {
        let b = hangar_protocol::credential::EngineBinding { ticket_id, user, labels, ecm_instance, resource, cluster };
        hangar_protocol::credential::engine_key(self.secrets.rpc_secret.as_bytes(), &b)
    }

    /// What an engine charges each label: its resource on its ECM and its
    /// user, and its cluster share on the queue (whose max is set on first use).
    fn charges(
        &self,
        ecm_instance: &str,
        labels: &LabelSet,
        resource: Resource,
        cluster: Option<&ClusterCharge>,
    ) -> Result<Vec<(String, Resource)>, HangarError> {
        let user_label = Self::user_label(labels)?;
        if self.rm.label(&user_label).is_none() {
            self.rm.set_max(&user_label, self.cfg.user_max);
        }
        let mut charges = vec![(Self::ecm_label(ecm_instance), resource), (user_label, resource)];
        if let Some(c) = cluster {
            if self.rm.label(&c.label).is_none() {
                self.rm.set_max(&c.label, c.max);
            }
            charges.push((c.label.clone(), c.resource));
        }
        Ok(charges)
    }

    /// The key of a known engine (None once it ended or before it rejoined).
    pub fn engine_key(&self, ticket_id: &str) -> Option<String> {
        lock(&self.engines).get(ticket_id).map(|n| n.key.clone())
    }

    /// None: the ticket is unknown; else whether `presented` is its key.
    /// One lookup, no copy (every heartbeat comes here).
    pub(crate) fn check_engine_key(&self, ticket_id: &str, presented: Option<&str>) -> Option<bool> {
        lock(&self.engines).get(ticket_id).map(|n| hangar_protocol::credential::matches(&n.key, presented))
    }

    pub fn plugins(&self) -> &[Arc<dyn EngineConnPlugin>] {
        &self.plugins
    }

    pub fn resources(&self) -> &rm::ResourceManager {
        &self.rm
    }

    pub fn material_library(&self) -> Option<&Arc<MaterialLibrary>> {
        self.materials.as_ref()
    }

    /// The materials an ask's engine needs (plugin dirs and named user files).
    async fn materials_for(&self, req: &AskRequest) -> Result<Vec<MaterialRef>, HangarError> {
        match &self.materials {
            Some(lib) => lib.materials_for(&req.user, &req.labels.engine_type()?, &req.properties).await,
            None if req.properties.contains_key(hangar_bml::RESOURCES_KEY) => Err(HangarError::invalid(format!(
                "startup parameter {} names resources, but this manager has no material library",
                hangar_bml::RESOURCES_KEY
            ))),
            None => Ok(Vec::new()),
        }
    }

    fn ecm_label(instance: &str) -> String {
        format!("{ECM_LABEL_PREFIX}{instance}")
    }

    /// Every resource label's accounting, by what the label stands for
    /// (the label strings are this crate's own business).
    pub fn resource_labels(&self) -> Vec<(ResourceHolder, rm::LabelResource)> {
        self.rm
            .snapshot()
            .into_iter()
            .map(|(label, lr)| {
                let holder = if let Some(ecm) = label.strip_prefix(ECM_LABEL_PREFIX) {
                    ResourceHolder::Ecm(ecm.to_string())
                } else if let Some((uc, et)) = label.strip_prefix(USER_LABEL_PREFIX).and_then(|v| v.split_once(',')) {
                    ResourceHolder::UserEngine { user_creator: uc.to_string(), engine_type: et.to_string() }
                } else {
                    // Labels of cluster charges, as plugins name them.
                    ResourceHolder::ClusterQueue(label)
                };
                (holder, lr)
            })
            .collect()
    }

    fn user_label(labels: &LabelSet) -> Result<String, HangarError> {
        Ok(format!("{USER_LABEL_PREFIX}{}", labels.combined_user_engine()?))
    }

    /// Register (or re-register) an ECM with its labels and capacity.
    pub fn register_ecm(&self, instance: &str, labels: LabelSet, max: Resource, client: Arc<dyn EcmClient>) {
        self.rm.set_max(&Self::ecm_label(instance), max);
        let mut ecms = lock(&self.ecms);
        let admin = ecms.iter().find(|e| e.instance == instance).map(|e| e.admin.clone()).unwrap_or_default();
        ecms.retain(|e| e.instance != instance);
        ecms.push(EcmNode {
            registered_ms: hangar_protocol::now_ms(),
            admin,
            instance: instance.to_string(),
            labels,
            max,
            status: NodeStatus::Running,
            protected: false,
            health: None,
            last_heartbeat: Instant::now(),
            client,
        });
        tracing::info!(%instance, %max, "ECM registered");
    }

    /// An ECM reported it is alive; false when it is not registered (or was
    /// written off as lost): it must register again.
    pub fn ecm_heartbeat(&self, instance: &str, health: Option<&EcmHealth>) -> bool {
        match lock(&self.ecms).iter_mut().find(|e| e.instance == instance && e.status == NodeStatus::Running) {
            Some(e) => {
                e.last_heartbeat = Instant::now();
                if let Some(h) = health {
                    if h.protected != e.protected {
                        tracing::warn!(%instance, protected = h.protected, free_memory = h.free_memory, load1 = h.load1, "ECM protection changed");
                    }
                    e.protected = h.protected;
                    e.health = Some(h.clone());
                }
                true
            }
            None => false,
        }
    }

    /// Register an ECM that runs in another process.
    pub fn register_remote_ecm(&self, instance: &str, labels: LabelSet, max: Resource) {
        let client = remote_ecm::RemoteEcm {
            instance: instance.to_string(),
            http: self.client.http().clone(),
            token: self.secrets.ecm_token.clone(),
        };
        self.register_ecm(instance, labels, max, Arc::new(client));
    }

    /// Read an engine's log through its ECM.
    pub async fn engine_log(
        &self,
        ticket_id: &str,
        log_type: &str,
        from_line: usize,
        page_size: usize,
    ) -> Result<EngineLog, HangarError> {
        let ecm_instance = lock(&self.engines).get(ticket_id).map(|n| n.ecm_instance.clone());
        let ecms: Vec<Arc<dyn EcmClient>> = {
            let ecms = lock(&self.ecms);
            match ecm_instance {
                Some(i) => ecms.iter().filter(|e| e.instance == i).map(|e| e.client.clone()).collect(),
                None => ecms.iter().map(|e| e.client.clone()).collect(),
            }
        };
        let mut last = HangarError::not_found(format!("no engine with ticket {ticket_id}"));
        for ecm in ecms {
            match ecm.engine_log(ticket_id, log_type, from_line, page_size).await {
                Ok(l) => return Ok(l),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Validate an ask without acting on it.
    pub fn validate(&self, labels: &LabelSet) -> Result<(), HangarError> {
        labels.user_creator()?;
        find_plugin(&self.plugins, labels)?;
        Ok(())
    }

    /// Give the engine back after a job (Linkis `RequestManagerUnlock`).
    pub async fn unlock(&self, grant: &EngineGrant) {
        // An engine that ended (lost, exited) is not called: a stopped one
        // would hold the caller until the request timed out.
        if !lock(&self.engines).contains_key(&grant.ticket_id) {
            return;
        }
        let req = EngineRequest::Unlock { lock: grant.lock.clone() };
        match self.client.call(&grant.instance, grant.key.expose(), &req).await {
            Ok(EngineReply::Unlocked { unlocked: true }) => self.note_status(&grant.ticket_id, NodeStatus::Unlock),
            // Not held any more: the engine gave it back itself at the task's
            // end (unlock_when_done, e.g. a task re-attached after a restart).
            // The record takes where the engine is now.
            Ok(EngineReply::Unlocked { unlocked: false }) => {
                if let Ok(EngineReply::Status { status, .. }) =
                    self.client.call(&grant.instance, grant.key.expose(), &EngineRequest::Status).await
                    && !status.is_completed()
                {
                    self.note_status(&grant.ticket_id, status);
                }
            }
            Ok(other) => tracing::debug!(instance = %grant.instance, ?other, "unlock refused"),
            Err(e) => tracing::debug!(instance = %grant.instance, error = %e, "unlock failed"),
        }
    }

    /// The engine gave `grant`'s lock back itself (its task ended): the
    /// record says Unlock as after [`Manager::unlock`], without a call.
    pub fn released(&self, grant: &EngineGrant) {
        self.note_status(&grant.ticket_id, NodeStatus::Unlock);
    }

    /// Follow one engine's status (for jobs running on it).
    pub fn watch_engine(&self, ticket_id: &str) -> Option<watch::Receiver<EngineView>> {
        lock(&self.engines).get(ticket_id).map(|n| n.watch.subscribe())
    }

    /// An ask got the engine's lock: it is taken for work (Idle until its
    /// task runs), counted in its `used_times`.
    fn note_taken(&self, ticket_id: &str) {
        if let Some(n) = lock(&self.engines).get_mut(ticket_id) {
            n.used_times += 1;
        }
        self.note_status(ticket_id, NodeStatus::Idle);
    }

    fn note_status(&self, ticket_id: &str, status: NodeStatus) {
        if let Some(n) = lock(&self.engines).get_mut(ticket_id) {
            n.set_status(status, None);
            n.noted = Some(std::time::Instant::now());
        }
    }

    /// End an engine's record: final status, resources released exactly once,
    /// watchers told the reason, and optionally its process killed.
    pub fn finish(&self, ticket_id: &str, status: NodeStatus, reason: String, kill: bool) {
        self.remember_ended(ticket_id, &reason);
        self.rejoined(ticket_id);
        let node = lock(&self.engines).remove(ticket_id);
        let released = self.rm.release(ticket_id);
        let Some(mut node) = node else { return };
        tracing::info!(ticket = %ticket_id, %status, %reason, released, "engine finished");
        let final_status =
            if status.is_completed() && status != NodeStatus::ShuttingDown { status } else { NodeStatus::Failed };
        node.set_status(NodeStatus::ShuttingDown, Some(reason.clone()));
        node.set_status(final_status, Some(reason.clone()));
        self.record_ended(&node, final_status, reason);
        if kill {
            let ecm = lock(&self.ecms).iter().find(|e| e.instance == node.ecm_instance).map(|e| e.client.clone());
            if let Some(ecm) = ecm {
                let ticket = ticket_id.to_string();
                tokio::spawn(async move {
                    if let Err(e) = ecm.kill(&ticket).await {
                        tracing::warn!(%ticket, error = %e, "kill failed");
                    }
                });
            }
        }
    }

    pub(crate) fn remember_ended(&self, ticket_id: &str, reason: &str) {
        let mut g = lock(&self.ended);
        if g.0.insert(ticket_id.to_string(), reason.to_string()).is_none() {
            g.1.push_back(ticket_id.to_string());
            if g.1.len() > ENDED_MEMORY
                && let Some(old) = g.1.pop_front()
            {
                g.0.remove(&old);
            }
        }
    }

    /// True when the manager holds a record of this engine.
    pub fn knows_engine(&self, ticket_id: &str) -> bool {
        lock(&self.engines).contains_key(ticket_id)
    }

    /// True when this manager ended the engine (it may not rejoin).
    pub fn has_ended(&self, ticket_id: &str) -> bool {
        lock(&self.ended).0.contains_key(ticket_id)
    }

    /// Where each of these engines stands.
    pub fn engine_states(&self, tickets: &[String]) -> Vec<EngineState> {
        let engines = lock(&self.engines);
        let ended = lock(&self.ended);
        tickets
            .iter()
            .map(|t| match (engines.get(t), ended.0.get(t)) {
                (Some(n), _) => EngineState::Live { status: n.status },
                (None, Some(reason)) => EngineState::Ended { reason: reason.clone() },
                (None, None) => EngineState::Unknown,
            })
            .collect()
    }

    /// The control-plane URLs engines launched from now on are given
    /// (comma-separated, this instance's first), so they can fail over.
    pub fn set_control_plane_urls(&self, urls: &[String]) {
        let mut list = vec![self.cfg.manager_url.clone()];
        list.extend(urls.iter().filter(|u| **u != self.cfg.manager_url).cloned());
        *lock(&self.control_plane_urls) = list.join(",");
    }

    pub(crate) fn control_plane_urls(&self) -> String {
        lock(&self.control_plane_urls).clone()
    }

    /// This instance is no longer the elected manager: forget every engine
    /// and ECM without stopping them (they carry on with the new manager,
    /// which rebuilds its records from them) and every charge with them.
    pub fn step_down(&self) {
        self.stop_pool_keeper();
        let ecms = std::mem::take(&mut *lock(&self.ecms));
        let engines = std::mem::take(&mut *lock(&self.engines));
        self.rm.clear();
        lock(&self.gates).clear();
        *lock(&self.expected) = Default::default();
        tracing::warn!(
            engines = engines.len(),
            ecms = ecms.len(),
            "no longer the elected manager: records handed over"
        );
    }

    /// The ECM saw an engine's process exit.
    pub fn on_engine_exited(&self, ticket_id: &str, description: String) {
        self.finish(ticket_id, NodeStatus::Failed, description, false);
    }

    /// Stop every engine (server shutdown).
    pub async fn shutdown(&self) {
        self.stop_pool_keeper();
        let tickets: Vec<String> = lock(&self.engines).keys().cloned().collect();
        for t in &tickets {
            self.finish(t, NodeStatus::Success, "server shutting down".into(), false);
        }
    }

    /// Engine start times so far.
    pub fn start_histogram(&self) -> StartHistogram {
        let mut h = lock(&self.start_times).clone();
        if h.buckets.is_empty() {
            h.buckets = START_BUCKETS.iter().map(|b| (*b, 0)).collect();
        }
        h
    }

    pub fn list_engines(&self) -> Vec<EngineInfo> {
        let mut v: Vec<EngineInfo> = lock(&self.engines).values().map(EngineNode::info).collect();
        v.sort_by_key(|e| e.created_ms);
        v
    }

    pub fn list_ecms(&self) -> Vec<EcmInfo> {
        // Lock order: `ecms` before `engines` (as in `select_ecm`).
        let ecms = lock(&self.ecms);
        let engines = lock(&self.engines);
        ecms.iter()
            .map(|e| {
                let lr = self.rm.label(&Self::ecm_label(&e.instance)).unwrap_or_default();
                EcmInfo {
                    instance: e.instance.clone(),
                    labels: e.labels().clone(),
                    admin_unhealthy: e.admin.unhealthy,
                    description: e.admin.description.clone(),
                    registered_ms: e.registered_ms,
                    status: e.status,
                    resource: lr,
                    engines: engines.values().filter(|n| n.ecm_instance == e.instance).count(),
                    health: e.health.clone(),
                }
            })
            .collect()
    }
}
