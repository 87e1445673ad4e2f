//! The ask: reuse an engine whose CORE labels equal the ask's, else create
//! one under a per-label-set gate (ECM selection by labels and free
//! resource, atomic reservation, launch, ready wait, lock).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hangar_engineconn_plugin::{EngineConnBuildRequest, EngineResourceRequest, find_plugin};
use hangar_protocol::label::FIXED_ENGINE_CONN;
use hangar_protocol::resource::ClusterCharge;
use hangar_protocol::rpc::{EngineReply, EngineRequest, MaterialKind, MaterialRef, OsAccount};
use hangar_protocol::{ErrorCode, HangarError, LabelSet, NodeStatus, Resource};
use tokio::sync::{Semaphore, watch};

use crate::nodes::{EcmNode, EngineNode};

/// How long a reuse waits for an engine to answer a lock request (an engine
/// behind a cut link must not hold up an ask that another engine can serve).
const LOCK_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
use crate::{AskRequest, EcmClient, EngineGrant, EngineView, Manager, lock};

impl Manager {
    /// Reuse or create an engine and lock it for the caller.
    pub async fn ask(&self, req: &AskRequest) -> Result<EngineGrant, HangarError> {
        self.stats.asks.fetch_add(1, Ordering::Relaxed);
        self.validate(&req.labels)?;
        // `spark-3.2.1` from a Linkis client asks for the installed Spark.
        let canonical = hangar_engineconn_plugin::canonical_labels(&self.plugins, &req.labels)?;
        let aliased;
        let req = if canonical == req.labels {
            req
        } else {
            tracing::info!(asked = ?req.labels.engine_type().ok(), runs = ?canonical.engine_type().ok(), "engine version alias");
            aliased = AskRequest { labels: canonical, ..req.clone() };
            &aliased
        };
        let deadline = Instant::now() + req.timeout;
        let materials = self.materials_for(req).await?;
        // Engines coming back after a restart first (bounded by their window):
        // they may be the ones to reuse, and their resources are theirs.
        self.wait_for_rejoins().await;
        let files: BTreeSet<String> =
            materials.iter().filter(|m| m.kind == MaterialKind::UserFile).map(|m| m.sha256.clone()).collect();
        let pool_key = crate::pool::key(&req.labels, &files);
        let mut pooled = self.pool_note_ask(req, &pool_key);
        if !req.labels.execute_once()
            && let Some(g) = self.try_reuse(&req.labels, &files).await
        {
            return Ok(g);
        }
        if let Some(flight) = pooled.as_mut() {
            // A pooled engine on its way serves this ask, else it makes its
            // own and the pool starts the rest of a burst beside it.
            if let Some(g) = self.await_pooled(&pool_key, &req.labels, &files, deadline).await {
                return Ok(g);
            }
            self.pool_miss(flight);
        }
        let gate = self.gate(&req.labels);
        let _permit = tokio::time::timeout_at(deadline.into(), gate.acquire_owned())
            .await
            .map_err(|_| {
                HangarError::new(
                    ErrorCode::Timeout,
                    "timed out waiting for other engine creations with the same labels",
                )
            })?
            .map_err(|_| HangarError::new(ErrorCode::ShuttingDown, "manager is shutting down"))?;
        if !req.labels.execute_once()
            && let Some(g) = self.try_reuse(&req.labels, &files).await
        {
            return Ok(g);
        }
        self.session_busy(&req.labels)?;
        self.create(req, materials, files, deadline).await
    }

    /// A session (`fixedEngineConn`) has one engine: while it lives, jobs of
    /// the session wait for it (a shortage) rather than start a second one.
    fn session_busy(&self, labels: &LabelSet) -> Result<(), HangarError> {
        let Some(session) = labels.get(FIXED_ENGINE_CONN) else { return Ok(()) };
        let want = labels.core();
        let busy = lock(&self.engines)
            .values()
            .find(|n| n.labels.core() == want && !n.status.is_completed())
            .map(|n| n.status);
        match busy {
            None => Ok(()),
            Some(status) => Err(HangarError::new(
                ErrorCode::NotEnoughResource,
                format!("the engine of session '{session}' is {status} (one engine per session); the job waits for it"),
            )),
        }
    }

    fn gate(&self, labels: &LabelSet) -> Arc<Semaphore> {
        let key = format!("{:?}", labels.core());
        lock(&self.gates)
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.max_concurrent_creations.max(1))))
            .clone()
    }

    pub(crate) async fn try_reuse(&self, labels: &LabelSet, files: &BTreeSet<String>) -> Option<EngineGrant> {
        let want = labels.core();
        // Engines on a host that missed a heartbeat are not asked: it may be cut off.
        let suspect: BTreeSet<String> = {
            let ecms = lock(&self.ecms);
            let late = self.cfg.ecm_heartbeat_interval * 3 / 2;
            ecms.iter()
                .filter(|e| e.status != NodeStatus::Running || (e.client.remote() && e.last_heartbeat.elapsed() > late))
                .map(|e| e.instance.clone())
                .collect()
        };
        #[allow(clippy::type_complexity)]
        let mut candidates: Vec<(u8, String, String, String, String, String, Option<OsAccount>)> = lock(&self.engines)
            .values()
            .filter(|n| !n.reserved && matches!(n.status, NodeStatus::Unlock | NodeStatus::Idle))
            .filter(|n| n.metrics.unhealthy.is_none())
            .filter(|n| n.labels.core() == want && files.is_subset(&n.user_files))
            .filter(|n| !suspect.contains(&n.ecm_instance))
            .filter_map(|n| {
                let inst = n.instance.clone()?;
                if labels.reuse_excluded(&inst) {
                    return None;
                }
                let rank = if n.status == NodeStatus::Unlock { 0 } else { 1 };
                Some((
                    rank,
                    n.ticket_id.clone(),
                    inst,
                    n.ecm_instance.clone(),
                    n.log_dir.clone(),
                    n.key.clone(),
                    n.account,
                ))
            })
            .collect();
        candidates.sort();
        // Concurrent asks start at different free engines (a burst on a
        // pool would otherwise all ask the same one for its lock first).
        let free = candidates.iter().take_while(|c| c.0 == 0).count();
        if free > 1 {
            candidates[..free].rotate_left(self.stats.asks.load(Ordering::Relaxed) as usize % free);
        }
        for (_, ticket_id, instance, ecm_instance, log_dir, key, account) in candidates {
            let timeout_ms = self.cfg.engine_lock_timeout.as_millis() as u64;
            let ask_lock = EngineRequest::Lock { timeout_ms };
            match self.client.call_within(&instance, &key, &ask_lock, LOCK_CALL_TIMEOUT).await {
                Ok(EngineReply::Lock { lock: Some(lock), .. }) => {
                    self.pool_first_use(&ticket_id);
                    self.note_taken(&ticket_id);
                    self.stats.reuse_hits.fetch_add(1, Ordering::Relaxed);
                    let key = hangar_protocol::credential::Secret(key);
                    return Some(EngineGrant {
                        ticket_id,
                        key,
                        account,
                        instance,
                        ecm_instance,
                        lock,
                        reused: true,
                        log_dir,
                    });
                }
                Ok(_) => continue,
                Err(e) => tracing::debug!(%instance, error = %e, "reuse candidate refused"),
            }
        }
        None
    }

    /// Refuse an engine no ECM and no user limit could ever hold (not a
    /// shortage that waiting may end).
    fn servable(&self, labels: &LabelSet, need: Resource, cluster: Option<&ClusterCharge>) -> Result<(), HangarError> {
        if let Some(c) = cluster
            && !c.max.not_less(&c.resource)
        {
            return Err(HangarError::invalid(format!(
                "the engine's executors need {}, more than the queue {} holds ({}); it can never be served",
                c.resource, c.label, c.max
            )));
        }
        let maxima: Vec<(String, Resource)> =
            lock(&self.ecms).iter().filter(|e| e.matches(labels)).map(|e| (e.instance.clone(), e.max)).collect();
        if !maxima.is_empty() && !maxima.iter().any(|(_, max)| max.not_less(&need)) {
            let shown: Vec<String> = maxima.iter().map(|(i, max)| format!("{i}: {max}")).collect();
            return Err(HangarError::invalid(format!(
                "the engine needs {need}, more than any EngineConnManager's maximum ({}); it can never be served",
                shown.join(" | ")
            )));
        }
        if !self.cfg.user_max.not_less(&need) {
            return Err(HangarError::invalid(format!(
                "the engine needs {need}, more than a user may hold per userCreator and engine type ({}, \
                 manager.user_max_*); it can never be served",
                self.cfg.user_max
            )));
        }
        Ok(())
    }

    fn select_ecm(&self, labels: &LabelSet, need: Resource) -> Result<(String, Arc<dyn EcmClient>), HangarError> {
        let ecms = lock(&self.ecms);
        let heartbeat_timeout = self.cfg.ecm_heartbeat_interval * 3;
        let matching: Vec<&EcmNode> = ecms.iter().filter(|e| e.matches(labels)).collect();
        if matching.is_empty() {
            return Err(HangarError::new(
                ErrorCode::NoEcm,
                format!("no EngineConnManager matches the labels {:?}", labels.to_linkis_list()),
            ));
        }
        let mut usable: Vec<(&EcmNode, Resource, usize)> = Vec::new();
        let mut reasons = Vec::new();
        let engines = lock(&self.engines);
        for e in matching {
            if e.status != NodeStatus::Running || e.last_heartbeat.elapsed() > heartbeat_timeout {
                reasons.push(format!(
                    "{} is unreachable (no heartbeat for {} ms)",
                    e.instance,
                    e.last_heartbeat.elapsed().as_millis()
                ));
                continue;
            }
            if e.admin.unhealthy {
                reasons.push(format!("{} is marked UnHealthy by an admin (linkisManager/modifyEMInfo)", e.instance));
                continue;
            }
            if e.protected {
                reasons.push(format!("{} is protecting its host (short of memory or CPU)", e.instance));
                continue;
            }
            let left = self.rm.label(&Self::ecm_label(&e.instance)).map(|l| l.left()).unwrap_or_default();
            if !left.not_less(&need) {
                reasons.push(format!("{}: {}", e.instance, Resource::shortfall(&left, &need).join("; ")));
                continue;
            }
            let count = engines.values().filter(|n| n.ecm_instance == e.instance).count();
            usable.push((e, left, count));
        }
        drop(engines);
        // Most free memory relative to max, then fewest engines; among the
        // near-equal leaders (within 5 points of free ratio) take turns, so a
        // burst does not pile onto one host (hotspot spreading).
        let ratio = |u: &(&EcmNode, Resource, usize)| u.1.memory as f64 / u.0.max.memory.max(1) as f64;
        usable.sort_by(|a, b| ratio(b).total_cmp(&ratio(a)).then(a.2.cmp(&b.2)));
        let leaders = match usable.first() {
            Some(best) => {
                let top = ratio(best);
                usable.iter().take_while(|u| top - ratio(u) <= 0.05 && u.2 <= best.2 + 1).count()
            }
            None => 0,
        };
        let pick = if leaders > 1 { self.stats.creations.load(Ordering::Relaxed) as usize % leaders } else { 0 };
        match usable.get(pick) {
            Some((e, _, _)) => Ok((e.instance.clone(), e.client.clone())),
            None => Err(HangarError::new(
                ErrorCode::NotEnoughResource,
                format!("not enough resource on any EngineConnManager for {need}: {}", reasons.join(" | ")),
            )),
        }
    }

    async fn create(
        &self,
        req: &AskRequest,
        materials: Vec<MaterialRef>,
        files: BTreeSet<String>,
        deadline: Instant,
    ) -> Result<EngineGrant, HangarError> {
        self.stats.creations.fetch_add(1, Ordering::Relaxed);
        let result = self.create_inner(req, materials, files, deadline).await;
        if result.is_err() {
            self.stats.creation_failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn create_inner(
        &self,
        req: &AskRequest,
        materials: Vec<MaterialRef>,
        files: BTreeSet<String>,
        deadline: Instant,
    ) -> Result<EngineGrant, HangarError> {
        let Started { ticket_id, instance, key, ecm_instance } =
            self.start_engine(req, materials, files, deadline, false).await?;
        let timeout_ms = self.cfg.engine_lock_timeout.as_millis() as u64;
        let lock_reply = self.client.call(&instance, &key, &EngineRequest::Lock { timeout_ms }).await;
        let (log_dir, account) = {
            let mut engines = lock(&self.engines);
            match engines.get_mut(&ticket_id) {
                Some(n) => {
                    n.reserved = false;
                    (n.log_dir.clone(), n.account)
                }
                None => (String::new(), None),
            }
        };
        match lock_reply {
            Ok(EngineReply::Lock { lock: Some(lock), .. }) => {
                self.note_taken(&ticket_id);
                let key = hangar_protocol::credential::Secret(key);
                Ok(EngineGrant { ticket_id, key, account, instance, ecm_instance, lock, reused: false, log_dir })
            }
            Ok(other) => Err(HangarError::new(
                ErrorCode::LockRejected,
                format!("new engine {instance} refused its lock: {other:?}"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Create an engine and wait until it is ready (Unlock): ECM selection,
    /// reservation, launch, ready wait. A `pooled` one is left free for the
    /// next ask; else it stays reserved for the caller, who locks it.
    pub(crate) async fn start_engine(
        &self,
        req: &AskRequest,
        materials: Vec<MaterialRef>,
        files: BTreeSet<String>,
        deadline: Instant,
        pooled: bool,
    ) -> Result<Started, HangarError> {
        let plugin = find_plugin(&self.plugins, &req.labels)?.clone();
        let resource_req = EngineResourceRequest { user: &req.user, labels: &req.labels, properties: &req.properties };
        let resource = plugin.create_engine_resource(&resource_req)?;
        let cluster = plugin.cluster_resource(&resource_req)?;
        self.servable(&req.labels, resource, cluster.as_ref())?;
        let (ecm_instance, ecm) = self.select_ecm(&req.labels, resource)?;
        let ticket_id = uuid::Uuid::new_v4().to_string();
        let charges = self.charges(&ecm_instance, &req.labels, resource, cluster.as_ref())?;
        self.rm.reserve(&ticket_id, &charges)?;
        let (tx, mut rx) = watch::channel(EngineView { status: NodeStatus::Starting, reason: None, instance: None });
        let key = self.derive_key(&ticket_id, &req.user, &req.labels, &ecm_instance, &resource, cluster.as_ref());
        let mut node =
            EngineNode::starting(&ticket_id, &req.user, &req.labels, &ecm_instance, resource, tx, key.clone());
        node.user_files = files;
        node.cluster = cluster.clone();
        node.pooled = pooled;
        lock(&self.engines).insert(ticket_id.clone(), node);
        tracing::info!(ticket = %ticket_id, ecm = %ecm_instance, labels = ?req.labels.to_linkis_list(), %resource, "creating engine");

        let build = EngineConnBuildRequest {
            ticket_id: ticket_id.clone(),
            user: req.user.clone(),
            labels: req.labels.clone(),
            resource,
            properties: req.properties.clone(),
            materials,
            engine_key: hangar_protocol::credential::Secret(key.clone()),
            cluster,
        };
        let launched_at = Instant::now();
        match ecm.launch(build, &self.control_plane_urls(), &self.cfg.engine_conf).await {
            Ok(launched) => {
                if let Some(n) = lock(&self.engines).get_mut(&ticket_id) {
                    n.pid = Some(launched.pid);
                    n.log_dir = launched.log_dir;
                }
            }
            Err(e) => {
                self.finish(&ticket_id, NodeStatus::Failed, format!("launch failed: {}", e.message), false);
                return Err(HangarError::new(
                    ErrorCode::EngineStartFailed,
                    format!("engine launch on {ecm_instance} failed: {}", e.message),
                ));
            }
        }

        let start_deadline = deadline.min(Instant::now() + self.cfg.engine_start_timeout);
        let waited = tokio::time::timeout_at(start_deadline.into(), rx.wait_for(|v| v.status != NodeStatus::Starting))
            .await
            .map(|r| r.map(|v| v.clone()));
        let view = match waited {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => {
                EngineView { status: NodeStatus::Failed, reason: Some("engine record vanished".into()), instance: None }
            }
            Err(_) => {
                let reason = format!(
                    "engine {ticket_id} did not become ready within {} ms",
                    start_deadline
                        .saturating_duration_since(Instant::now())
                        .as_millis()
                        .max(self.cfg.engine_start_timeout.as_millis().min(req.timeout.as_millis()))
                );
                self.finish(&ticket_id, NodeStatus::Failed, reason.clone(), true);
                return Err(HangarError::new(ErrorCode::EngineStartFailed, reason));
            }
        };
        let (Some(instance), NodeStatus::Unlock) = (view.instance.clone(), view.status) else {
            let reason = view.reason.unwrap_or_else(|| format!("engine ended as {}", view.status));
            return Err(HangarError::new(
                ErrorCode::EngineStartFailed,
                format!("engine {ticket_id} on {ecm_instance} failed to start: {reason}"),
            ));
        };
        lock(&self.start_times).observe(launched_at.elapsed().as_secs_f64());
        if pooled && let Some(n) = lock(&self.engines).get_mut(&ticket_id) {
            n.reserved = false;
        }
        Ok(Started { ticket_id, instance, key, ecm_instance })
    }
}

/// An engine that reported ready.
pub(crate) struct Started {
    ticket_id: String,
    instance: String,
    key: String,
    ecm_instance: String,
}
