//! Several control-plane instances on one store: each heartbeats its
//! address into the store, and they elect one active LinkisManager by a
//! lease in the store (`manager.leader_lease_ms`, renewed every quarter).
//!
//! Why one elected manager rather than a shared transactional ledger: the
//! manager's records (engines, ECMs, resources, locks) are rebuilt from the
//! processes that hold the truth (engines rejoin, ECMs register), so a new
//! manager needs nothing from the old one, and every ask, reservation and
//! release stays one in-memory critical section (the property-tested
//! ResourceManager) instead of a database round trip. The others forward
//! the manager's calls to the leader (`forward.rs`).
//!
//! A leader that cannot renew its lease before a quarter of it is left steps
//! down (forgets its records; the engines carry on and rejoin the next one),
//! so two managers never act at once as long as clocks agree to within a
//! quarter of the lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_manager::{Leader, Manager};
use hangar_protocol::now_ms;
use hangar_store::{InstanceRecord, Store};
use tokio::sync::watch;

/// The manager's role in the lease table.
const MANAGER_ROLE: &str = "manager";

/// An instance is live while its heartbeat is this recent.
pub(crate) const INSTANCE_LIVE_MS: i64 = 5_000;
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What the forwarding layer needs to know of the cluster.
#[derive(Clone)]
pub(crate) struct ClusterView {
    pub me: String,
    pub leadership: watch::Receiver<Option<Leader>>,
    /// The instances as last read from the store.
    pub instances: Arc<Mutex<Vec<InstanceRecord>>>,
}

impl ClusterView {
    /// The base URL of live instance `id` (not this one).
    pub fn live_url(&self, id: &str) -> Option<String> {
        let now = now_ms();
        let list = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .find(|i| i.id == id && i.id != self.me && now - i.heartbeat_ms < INSTANCE_LIVE_MS)
            .map(|i| i.url.clone())
    }
}

pub(crate) struct ControlPlane {
    pub store: Store,
    /// This instance's id (its jobs' owner).
    pub me: String,
    pub url: String,
    pub lease: Duration,
    pub manager: Arc<Manager>,
    /// How long engines of running jobs get to rejoin a new manager.
    pub rejoin_window: Duration,
    /// This process's name in the lease (a restarted instance is a new holder).
    pub holder: String,
}

impl ControlPlane {
    /// Start the loop; returns the view of it and a handle that gives the
    /// lease up at a clean stop.
    pub(crate) fn start(self) -> (ClusterView, Arc<Self>) {
        let (tx, rx) = watch::channel(None);
        let view = ClusterView { me: self.me.clone(), leadership: rx, instances: Default::default() };
        let holder = format!("{}/{}", self.me, uuid::Uuid::new_v4().simple());
        let this = Arc::new(Self { holder, ..self });
        tokio::spawn(this.clone().run(tx, view.instances.clone()));
        (view, this)
    }

    /// A clean stop: hand the manager's lease over at once, and say this
    /// instance is gone.
    pub(crate) async fn stop(&self) {
        let _ = self.store.release_lease(MANAGER_ROLE, &self.holder).await;
        let _ = self.store.instance_stopped(&self.me).await;
    }

    async fn run(self: Arc<Self>, tx: watch::Sender<Option<Leader>>, instances: Arc<Mutex<Vec<InstanceRecord>>>) {
        let holder = self.holder.clone();
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(5_000).max(400);
        let every = Duration::from_millis(u64::try_from(lease_ms / 4).unwrap_or(250)).min(HEARTBEAT);
        let mut first = true;
        let mut leading_until: Option<i64> = None;
        loop {
            let now = now_ms();
            if let Err(e) = self.store.heartbeat_instance(&self.me, &self.url, now, first).await {
                tracing::warn!(error = %e, "cannot record this instance's heartbeat in the store");
            } else {
                first = false;
            }
            if let Ok(list) = self.store.instances().await {
                let live: Vec<String> =
                    list.iter().filter(|i| now - i.heartbeat_ms < INSTANCE_LIVE_MS).map(|i| i.url.clone()).collect();
                self.manager.set_control_plane_urls(&live);
                *instances.lock().unwrap_or_else(|p| p.into_inner()) = list;
            }
            match self.store.acquire_lease(MANAGER_ROLE, &holder, &self.url, now, now + lease_ms, &self.me).await {
                Ok(Some(l)) if l.holder == holder => {
                    if leading_until.is_none() {
                        tracing::warn!(epoch = l.epoch, "this instance is now the elected LinkisManager");
                        // Only the active manager keeps warm pools (step_down stops them).
                        self.manager.start_pool_keeper();
                        // Engines of running jobs come back before new ones are made.
                        match self.store.running_tickets().await {
                            Ok(t) => self.manager.expect_rejoins(t, self.rejoin_window),
                            Err(e) => tracing::warn!(error = %e, "cannot list the engines of running jobs"),
                        }
                    }
                    leading_until = Some(l.until_ms);
                    tx.send_if_modified(|cur| {
                        replace(cur, Some(Leader { url: self.url.clone(), me: true, epoch: l.epoch }))
                    });
                }
                Ok(other) => {
                    if leading_until.take().is_some() {
                        self.manager.step_down();
                    }
                    let leader = other.filter(|l| l.until_ms >= now && !l.holder.is_empty()).map(|l| Leader {
                        url: l.url,
                        me: false,
                        epoch: l.epoch,
                    });
                    tx.send_if_modified(|cur| replace(cur, leader));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the store to hold or find the manager's lease");
                    // Stop acting before the lease can be another's.
                    if leading_until.is_some_and(|u| now_ms() > u - lease_ms / 4) {
                        leading_until = None;
                        self.manager.step_down();
                        tx.send_replace(None);
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

fn replace(cur: &mut Option<Leader>, new: Option<Leader>) -> bool {
    if *cur == new {
        return false;
    }
    *cur = new;
    true
}
