//! The manager's RPC endpoint for engines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hangar_protocol::NodeStatus;
use hangar_protocol::rpc::{
    EcmToManager, EngineToManager, MANAGER_ECM_RPC_PATH, MANAGER_MATERIAL_PATH, MANAGER_RPC_PATH, ManagerReply,
    RPC_TOKEN_HEADER, RPC_VERSION,
};

use crate::{Manager, lock};

fn presented(headers: &HeaderMap) -> Option<&str> {
    headers.get(RPC_TOKEN_HEADER).and_then(|v| v.to_str().ok())
}

/// ECM traffic: the ECM token, and nothing else.
fn authorize_ecm(m: &Manager, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    if hangar_protocol::credential::matches(m.ecm_token(), presented(headers)) {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, "bad ECM token".into()))
    }
}

pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route(MANAGER_RPC_PATH, post(handle))
        .route(MANAGER_ECM_RPC_PATH, post(handle_ecm))
        .route(hangar_protocol::manager_api::MANAGER_API_PATH, post(crate::api::handle))
        .route(&format!("{MANAGER_MATERIAL_PATH}/{{sha256}}"), get(material))
        .with_state(manager)
}

/// An ECM fetches a material's bytes by digest, streamed from the blob file.
async fn material(
    State(m): State<Arc<Manager>>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> Result<Response, (StatusCode, String)> {
    authorize_ecm(&m, &headers)?;
    let path = m
        .material_library()
        .and_then(|lib| lib.blob_path(&sha256))
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no material with sha256 {sha256}")))?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => (StatusCode::NOT_FOUND, format!("no material with sha256 {sha256}")),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot open material {sha256}: {e}")),
    })?;
    let len = file.metadata().await.map(|md| md.len()).unwrap_or(0);
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err::<axum::body::Bytes, _>(e), None)),
        }
    });
    let body = axum::body::Body::from_stream(chunks);
    Ok(([(axum::http::header::CONTENT_LENGTH, len.to_string())], body).into_response())
}

async fn handle_ecm(
    State(m): State<Arc<Manager>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ManagerReply>, (StatusCode, String)> {
    authorize_ecm(&m, &headers)?;
    let msg: EcmToManager =
        serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad message: {e}")))?;
    let known = match msg {
        EcmToManager::Register { instance, labels, max, rpc_version, engines } => {
            if rpc_version != RPC_VERSION {
                return Err((
                    StatusCode::CONFLICT,
                    format!("ECM speaks RPC version {rpc_version}, manager {RPC_VERSION}"),
                ));
            }
            return Ok(Json(m.on_ecm_register(&instance, labels, max, engines)));
        }
        EcmToManager::Heartbeat { instance, health } => m.ecm_heartbeat(&instance, Some(&health)),
        EcmToManager::EngineExited { ticket_id, description, .. } => {
            m.on_engine_exited(&ticket_id, description);
            true
        }
    };
    Ok(Json(ManagerReply::known(known)))
}

/// How long a registering ECM's engines have to rejoin before new engines
/// are made without them.
const REMOTE_REJOIN_WINDOW: Duration = Duration::from_secs(15);

/// How long the manager's own note of an engine's status beats heartbeats.
const NOTED_WINS: Duration = Duration::from_secs(1);

async fn handle(
    State(m): State<Arc<Manager>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ManagerReply>, (StatusCode, String)> {
    let msg: EngineToManager =
        serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad message: {e}")))?;
    m.on_engine_message(msg, presented(&headers))
        .map(Json)
        .ok_or_else(|| (StatusCode::UNAUTHORIZED, "bad engine key for this ticket".to_string()))
}

impl Manager {
    /// A remote ECM registers (at start, or again after it was forgotten or
    /// written off) with the engines alive under it. Engines written off
    /// while its host was unreachable are to be stopped by it (their jobs
    /// already ended); the others come back before new ones are made for
    /// their labels.
    pub fn on_ecm_register(
        &self,
        instance: &str,
        labels: hangar_protocol::LabelSet,
        max: hangar_protocol::Resource,
        engines: Vec<String>,
    ) -> ManagerReply {
        tracing::info!(%instance, engines = engines.len(), "remote ECM registering");
        self.register_remote_ecm(instance, labels, max);
        let (stop, live): (Vec<String>, Vec<String>) = engines.into_iter().partition(|t| self.has_ended(t));
        let unknown: Vec<String> = live.into_iter().filter(|t| !self.knows_engine(t)).collect();
        self.expect_rejoins(unknown, REMOTE_REJOIN_WINDOW);
        if !stop.is_empty() {
            tracing::warn!(%instance, engines = stop.len(), "the ECM stops engines written off while its host was lost");
        }
        ManagerReply { known: true, stop, ..Default::default() }
    }

    /// Apply one engine message presented with `key`; None when the key is
    /// not the key of the ticket the message is about. A message about an
    /// unknown ticket changes nothing: the manager never ended it (it
    /// restarted since) and asks it to rejoin, or it answers "unknown".
    pub fn on_engine_message(&self, msg: EngineToManager, key: Option<&str>) -> Option<ManagerReply> {
        let ticket = msg.ticket_id().to_string();
        if let EngineToManager::Rejoin { .. } = msg {
            return self.rejoin(msg, key);
        }
        match self.check_engine_key(&ticket, key) {
            None => return Some(ManagerReply { known: false, rejoin: !self.has_ended(&ticket), ..Default::default() }),
            Some(false) => {
                tracing::warn!(%ticket, "engine message refused: wrong key for this ticket");
                return None;
            }
            Some(true) => {}
        }
        let known = self.apply_engine_message(msg);
        Some(ManagerReply { known, rejoin: !known && !self.has_ended(&ticket), ..Default::default() })
    }

    fn apply_engine_message(&self, msg: EngineToManager) -> bool {
        let ticket = msg.ticket_id().to_string();
        match msg {
            EngineToManager::Ready { instance, pid, rpc_version, account, .. } => {
                if rpc_version != RPC_VERSION {
                    self.finish(
                        &ticket,
                        NodeStatus::Failed,
                        format!("engine speaks RPC version {rpc_version}, manager {RPC_VERSION}"),
                        true,
                    );
                    return false;
                }
                let mut engines = lock(&self.engines);
                let Some(n) = engines.get_mut(&ticket) else { return false };
                n.instance = Some(instance);
                n.pid = Some(pid);
                n.account = account;
                n.last_heartbeat = Instant::now();
                let ready = n.set_status(NodeStatus::Unlock, None);
                drop(engines);
                if ready {
                    self.rm.confirm(&ticket);
                }
                ready
            }
            EngineToManager::Heartbeat { status, metrics, .. } => {
                let mut engines = lock(&self.engines);
                let Some(n) = engines.get_mut(&ticket) else { return false };
                n.last_heartbeat = Instant::now();
                n.metrics = metrics;
                // A heartbeat may have been read before the manager's own
                // lock or unlock of the engine and arrive after it: for a
                // moment it may not undo that (free <-> taken); Busy <-> Idle
                // still pass, and the engine's next report is current.
                let crosses = (n.status == NodeStatus::Unlock) != (status == NodeStatus::Unlock);
                let stale = crosses && n.noted.is_some_and(|t| t.elapsed() < NOTED_WINS);
                if n.status != NodeStatus::Starting && !status.is_completed() && !stale {
                    n.set_status(status, None);
                }
                true
            }
            EngineToManager::StartFailed { reason, .. } => {
                self.finish(&ticket, NodeStatus::Failed, reason, false);
                true
            }
            EngineToManager::Exiting { status, reason, .. } => {
                self.finish(&ticket, status, reason, false);
                true
            }
            EngineToManager::Rejoin { .. } => false,
        }
    }

    /// Take back a running engine after a manager restart: its record comes
    /// from the engine, its resource is charged again on its ECM and user.
    fn rejoin(&self, msg: EngineToManager, key: Option<&str>) -> Option<ManagerReply> {
        let EngineToManager::Rejoin {
            ticket_id,
            instance,
            pid,
            user,
            labels,
            resource,
            cluster,
            ecm_instance,
            status,
            metrics,
            rpc_version,
            account,
        } = msg
        else {
            return Some(ManagerReply::known(false));
        };
        // The key binds the whole record: a rejoin that claims another user,
        // other labels, another ECM or a smaller resource does not match.
        let expected = self.derive_key(&ticket_id, &user, &labels, &ecm_instance, &resource, cluster.as_ref());
        if !hangar_protocol::credential::matches(&expected, key) {
            tracing::warn!(ticket = %ticket_id, "rejoin refused: the key does not match the record");
            return None;
        }
        if lock(&self.engines).contains_key(&ticket_id) {
            return Some(ManagerReply::known(true));
        }
        if self.has_ended(&ticket_id) || rpc_version != RPC_VERSION || status.is_completed() {
            self.rejoined(&ticket_id);
            return Some(ManagerReply::known(false));
        }
        if !lock(&self.ecms).iter().any(|e| e.instance == ecm_instance) {
            // Its ECM has not registered again yet: ask again later.
            return Some(ManagerReply { known: false, rejoin: true, ..Default::default() });
        }
        let Ok(charges) = self.charges(&ecm_instance, &labels, resource, cluster.as_ref()) else {
            return Some(ManagerReply::known(false));
        };
        if let Err(e) = self.rm.reserve(&ticket_id, &charges) {
            tracing::warn!(ticket = %ticket_id, error = %e, "cannot take back an engine: its resource does not fit");
            self.remember_ended(&ticket_id, &format!("it could not be taken back after a restart: {e}"));
            self.rejoined(&ticket_id);
            return Some(ManagerReply::known(false));
        }
        self.rm.confirm(&ticket_id);
        let (tx, _) = tokio::sync::watch::channel(crate::EngineView {
            status: NodeStatus::Starting,
            reason: None,
            instance: Some(instance.clone()),
        });
        let mut node =
            crate::nodes::EngineNode::starting(&ticket_id, &user, &labels, &ecm_instance, resource, tx, expected);
        node.instance = Some(instance.clone());
        node.pid = Some(pid);
        node.cluster = cluster;
        node.account = account;
        node.reserved = false;
        node.metrics = metrics;
        node.set_status(NodeStatus::Unlock, None);
        if status != NodeStatus::Unlock {
            node.set_status(status, None);
        }
        lock(&self.engines).insert(ticket_id.clone(), node);
        self.rejoined(&ticket_id);
        tracing::info!(ticket = %ticket_id, %instance, ecm = %ecm_instance, %status, "engine rejoined after a manager restart");
        Some(ManagerReply::known(true))
    }
}

impl Manager {
    /// After a restart: these engines run jobs and will rejoin; until they
    /// have (or `within` passed) no new engine is created, so their users'
    /// limits are theirs first and a rejoin is never refused for a newcomer.
    pub fn expect_rejoins(&self, tickets: impl IntoIterator<Item = String>, within: Duration) {
        let tickets: Vec<String> = tickets.into_iter().filter(|t| !self.has_ended(t)).collect();
        let mut g = lock(&self.expected);
        g.0.extend(tickets);
        if !g.0.is_empty() {
            g.1 = Some(Instant::now() + within);
        }
    }

    pub(crate) fn rejoined(&self, ticket_id: &str) {
        lock(&self.expected).0.remove(ticket_id);
    }

    /// Wait (bounded) until every expected engine has rejoined.
    pub(crate) async fn wait_for_rejoins(&self) {
        loop {
            {
                let mut g = lock(&self.expected);
                match g.1 {
                    Some(deadline) if !g.0.is_empty() && Instant::now() < deadline => {}
                    _ => {
                        if !g.0.is_empty() {
                            tracing::warn!(missing = g.0.len(), "engines with running jobs did not rejoin in time");
                        }
                        g.0.clear();
                        g.1 = None;
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
