//! The elected manager of several control-plane instances, as an Entrance
//! sees it: in process on the instance holding the manager's lease, over
//! HTTP on the others. The instance's election loop publishes who the
//! leader is ([`Leadership`]); calls follow it, and wait out a failover.
//!
//! Engines watched for running jobs are polled as one batch (every 200 ms),
//! whichever instance is the manager now: a view ends when the manager says
//! the engine ended (with its reason), or when no manager has known it for
//! [`UNKNOWN_GRACE`] (it did not rejoin after a failover).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hangar_protocol::credential::Secret;
use hangar_protocol::manager_api::{FORWARDED_HEADER, MANAGER_API_PATH, ManagerAnswer, ManagerCall};
use hangar_protocol::rpc::RPC_TOKEN_HEADER;
use hangar_protocol::{ErrorCode, HangarError, NodeStatus};
use tokio::sync::watch;

use crate::{AskRequest, EngineGrant, EngineState, EngineView, Manager, ManagerClient, lock};

/// Who holds the manager's lease now.
#[derive(Debug, Clone, PartialEq)]
pub struct Leader {
    pub url: String,
    /// This instance.
    pub me: bool,
    pub epoch: i64,
}

/// The election loop's view of the leader (None while nobody holds it).
pub type Leadership = watch::Receiver<Option<Leader>>;

/// How long an engine may stay unknown to every manager before the jobs
/// on it are ended (a failover's rejoin takes a few heartbeats).
pub const UNKNOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a call waits for a manager to be elected and reachable.
const FAILOVER_WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(200);

struct Watched {
    tx: watch::Sender<EngineView>,
    unknown_since: Option<Instant>,
}

pub struct ClusterManager {
    local: Arc<Manager>,
    leadership: Leadership,
    http: reqwest::Client,
    me: String,
    watched: Mutex<HashMap<String, Watched>>,
    poller: Mutex<bool>,
}

impl ClusterManager {
    /// `local`: this instance's manager (active while it leads); `me`: this
    /// instance's id (named on forwarded calls).
    pub fn new(local: Arc<Manager>, leadership: Leadership, me: String) -> Result<Arc<Self>, HangarError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| HangarError::internal(format!("cannot build HTTP client: {e}")))?;
        Ok(Arc::new(Self {
            local,
            leadership,
            http,
            me,
            watched: Mutex::new(HashMap::new()),
            poller: Mutex::new(false),
        }))
    }

    /// One call on the manager, wherever it is now; waits out a failover
    /// (no leader, or one that cannot be reached) for up to 15 s.
    async fn call(&self, call: ManagerCall, within: Duration) -> Result<ManagerAnswer, HangarError> {
        let deadline = Instant::now() + FAILOVER_WAIT;
        let mut last = String::from("no control-plane instance holds the manager's lease");
        loop {
            let leader = self.leadership.borrow().clone();
            match leader {
                Some(l) if l.me => return Ok(crate::api::serve_call(&self.local, call).await),
                Some(l) => match self.post(&l.url, &call, within).await {
                    Ok(a) => return Ok(a),
                    Err(e) => last = e,
                },
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(HangarError::new(
                    ErrorCode::NoEcm,
                    format!("the LinkisManager cannot be reached now (a failover?): {last}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn post(&self, base: &str, call: &ManagerCall, within: Duration) -> Result<ManagerAnswer, String> {
        let url = format!("{}{MANAGER_API_PATH}", base.trim_end_matches('/'));
        let r = self
            .http
            .post(&url)
            .header(RPC_TOKEN_HEADER, self.local.peer_token())
            .header(FORWARDED_HEADER, &self.me)
            .json(call)
            .timeout(within)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = r.status();
        if !status.is_success() {
            return Err(format!("{url} answered {status}: {}", r.text().await.unwrap_or_default()));
        }
        r.json().await.map_err(|e| format!("{url}: bad answer: {e}"))
    }

    fn unexpected(a: ManagerAnswer) -> HangarError {
        match a {
            ManagerAnswer::Error { code, message } => HangarError::new(code, message),
            other => HangarError::internal(format!("unexpected answer from the manager: {other:?}")),
        }
    }

    fn start_poller(self: &Arc<Self>) {
        let mut started = lock(&self.poller);
        if *started {
            return;
        }
        *started = true;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                let Some(this) = weak.upgrade() else { return };
                this.poll_once().await;
            }
        });
    }

    async fn poll_once(&self) {
        let tickets: Vec<String> = {
            let mut w = lock(&self.watched);
            w.retain(|_, x| x.tx.receiver_count() > 0);
            w.keys().cloned().collect()
        };
        if tickets.is_empty() {
            return;
        }
        let states = match self.call(ManagerCall::Engines { tickets: tickets.clone() }, Duration::from_secs(5)).await {
            Ok(ManagerAnswer::Engines { states }) if states.len() == tickets.len() => states,
            Ok(other) => return tracing::warn!(?other, "unexpected answer to an engine poll"),
            Err(e) => return tracing::debug!(error = %e, "engine poll failed"),
        };
        let mut w = lock(&self.watched);
        for (ticket, state) in tickets.iter().zip(states) {
            let Some(x) = w.get_mut(ticket) else { continue };
            let ended = match state {
                EngineState::Live { status } => {
                    x.unknown_since = None;
                    x.tx.send_if_modified(|v| {
                        let changed = v.status != status;
                        v.status = status;
                        changed
                    });
                    None
                }
                EngineState::Ended { reason } => Some(reason),
                EngineState::Unknown => {
                    let since = *x.unknown_since.get_or_insert_with(Instant::now);
                    (since.elapsed() >= UNKNOWN_GRACE).then(|| {
                        format!("no manager has known it for {} s (it did not rejoin)", UNKNOWN_GRACE.as_secs())
                    })
                }
            };
            if let Some(reason) = ended {
                x.tx.send_modify(|v| {
                    v.status = NodeStatus::Failed;
                    v.reason = Some(reason);
                });
                w.remove(ticket);
            }
        }
    }
}

#[async_trait]
impl ManagerClient for Arc<ClusterManager> {
    async fn ask(&self, req: AskRequest) -> Result<EngineGrant, HangarError> {
        let within = req.timeout + Duration::from_secs(5);
        match self.call(ManagerCall::Ask(req), within).await? {
            ManagerAnswer::Grant(g) => Ok(g),
            other => Err(ClusterManager::unexpected(other)),
        }
    }

    async fn unlock(&self, grant: &EngineGrant) {
        if let Err(e) = self.call(ManagerCall::Unlock(grant.clone()), Duration::from_secs(10)).await {
            tracing::warn!(ticket = %grant.ticket_id, error = %e, "cannot give an engine back");
        }
    }

    async fn released(&self, grant: &EngineGrant) {
        if let Err(e) = self.call(ManagerCall::Released(grant.clone()), Duration::from_secs(10)).await {
            // Its next heartbeat says Unlock anyway.
            tracing::debug!(ticket = %grant.ticket_id, error = %e, "cannot note an engine given back");
        }
    }

    async fn engine_key(&self, ticket_id: &str) -> Result<Option<Secret>, HangarError> {
        match self.call(ManagerCall::EngineKey { ticket_id: ticket_id.into() }, Duration::from_secs(5)).await? {
            ManagerAnswer::Key { key } => Ok(key),
            other => Err(ClusterManager::unexpected(other)),
        }
    }

    async fn engine_state(&self, ticket_id: &str) -> Result<EngineState, HangarError> {
        let call = ManagerCall::Engines { tickets: vec![ticket_id.into()] };
        match self.call(call, Duration::from_secs(5)).await? {
            ManagerAnswer::Engines { mut states } if states.len() == 1 => Ok(states.remove(0)),
            other => Err(ClusterManager::unexpected(other)),
        }
    }

    fn watch_engine(&self, ticket_id: &str) -> Option<watch::Receiver<EngineView>> {
        self.start_poller();
        let mut w = lock(&self.watched);
        let x = w.entry(ticket_id.to_string()).or_insert_with(|| Watched {
            tx: watch::channel(EngineView { status: NodeStatus::Busy, reason: None, instance: None }).0,
            unknown_since: None,
        });
        Some(x.tx.subscribe())
    }

    async fn expect_rejoins(&self, tickets: Vec<String>, within: Duration) {
        let within_ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        if let Err(e) = self.call(ManagerCall::ExpectRejoins { tickets, within_ms }, Duration::from_secs(5)).await {
            tracing::warn!(error = %e, "cannot tell the manager which engines will rejoin");
        }
    }
}
