//! The Entrance: the Linkis-compatible client API, durable jobs, per-group
//! queues, and the job runner that asks the LinkisManager for an engine,
//! sends the task, consumes the engine's task events and stores them.

mod api;
mod ask;
pub mod auth;
mod bml;
mod config;
mod configuration;
mod console;
mod console_assets;
mod feed;
mod files;
#[doc(hidden)]
pub mod fuzz_support;
mod job;
mod joblog;
mod jobs_api;
mod login;
mod metrics;
pub mod openapi;
mod ops;
mod param_conf;
mod recover;
mod results;
mod run;
mod schedule;
pub mod session;
mod settings;
mod takeover;
mod throttle;
mod vars;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hangar_manager::{EngineClient, Manager, ManagerClient};
use hangar_protocol::rpc::TaskEvent;
use hangar_store::Store;
use tokio::sync::{Semaphore, mpsc, watch};

pub use api::{OPENAPI_PATH, router};
pub use config::{EntranceConfig, TokenConfig, UserConfig};

/// A job that lives in this process (queued or running).
#[derive(Clone)]
pub(crate) struct JobHandle {
    pub events: mpsc::UnboundedSender<TaskEvent>,
    /// What `/entrance/{execID}/events` subscribers see.
    pub feed: crate::feed::Feed,
    pub kill: watch::Sender<bool>,
    pub progress_info: Arc<Mutex<Vec<hangar_protocol::rpc::JobProgressInfo>>>,
    /// The engine the task was sent to: only its events are taken.
    pub ticket: Arc<std::sync::OnceLock<String>>,
    /// That engine's key (its events and result sets must carry it).
    pub key: Arc<std::sync::OnceLock<hangar_protocol::credential::Secret>>,
    /// Set when another instance took the job's lease: the runner stops
    /// without a write (woken through `kill`).
    pub lost: Arc<std::sync::atomic::AtomicBool>,
    /// Where its result sets are stored (below `results_dir`).
    pub result_dir: std::path::PathBuf,
    /// The engine gave the task's lock back itself (`TaskEvent::Unlocked`).
    pub engine_unlocked: Arc<std::sync::atomic::AtomicBool>,
}

/// A consumer group: running slots and a count of waiting jobs.
pub(crate) struct Group {
    pub slots: Arc<Semaphore>,
    /// How many permits `slots` has in all (the group's running maximum).
    pub size: usize,
    pub queued: usize,
}

impl Group {
    /// Make the group's running maximum `want` (its `wds.linkis.rm.instance`
    /// may change): permits added, or free ones taken away (busy ones are
    /// taken on a later call; the store's slot count holds the maximum meanwhile).
    pub(crate) fn resize(&mut self, want: usize) {
        let want = want.max(1);
        if want > self.size {
            self.slots.add_permits(want - self.size);
            self.size = want;
        } else if want < self.size {
            self.size -= self.slots.forget_permits(self.size - want);
        }
    }
}

pub struct Entrance {
    pub(crate) cfg: EntranceConfig,
    pub(crate) store: Store,
    /// The LinkisManager, reached only through its client interface.
    pub(crate) manager: Arc<dyn ManagerClient>,
    /// This process's manager, for the operator API, the material library
    /// and `/metrics`: served here only while this instance is the elected
    /// manager (the other instances forward those calls to it).
    pub(crate) operator: Arc<Manager>,
    /// The engine plugins (what a job may ask for, which run types each takes).
    pub(crate) plugins: Vec<Arc<dyn hangar_engineconn_plugin::EngineConnPlugin>>,
    /// Requests to engines (each with that engine's key).
    pub(crate) engines: EngineClient,
    pub(crate) jobs: Mutex<HashMap<i64, JobHandle>>,
    pub(crate) groups: Mutex<HashMap<String, Group>>,
    pub(crate) shutting_down: watch::Sender<bool>,
    /// A clean stop of one of several instances: its jobs go to the others.
    pub(crate) handing_over: std::sync::atomic::AtomicBool,
    pub(crate) sessions: session::Sessions,
    pub(crate) login_throttle: throttle::LoginThrottle,
    /// Parameter configuration as resolved per user, creator and engine type.
    pub(crate) conf_cache: param_conf::Cache,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entrance {
    pub fn new(
        cfg: EntranceConfig,
        store: Store,
        manager: Arc<dyn ManagerClient>,
        operator: Arc<Manager>,
        plugins: Vec<Arc<dyn hangar_engineconn_plugin::EngineConnPlugin>>,
    ) -> Result<Arc<Self>, hangar_protocol::HangarError> {
        Ok(Arc::new(Self {
            sessions: session::Sessions::new(store.clone(), cfg.session_timeout),
            cfg,
            store,
            manager,
            // The manager's own connections when it runs in this process.
            engines: operator.engine_client().clone(),
            operator,
            plugins,
            jobs: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            shutting_down: watch::channel(false).0,
            handing_over: Default::default(),
            login_throttle: throttle::LoginThrottle::default(),
            conf_cache: Default::default(),
        }))
    }

    /// Whether `presented` is the key of engine `ticket`: as the jobs whose
    /// tasks went to it know it, else as the manager does (an engine no job
    /// here follows, or one being re-attached). None: that cannot be told now
    /// (the manager cannot be reached); the engine sends again later.
    pub(crate) async fn check_engine_key(&self, ticket: &str, presented: Option<&str>) -> Option<bool> {
        let known = {
            let jobs = lock(&self.jobs);
            jobs.values().find_map(|h| match h.ticket.get() {
                Some(t) if t == ticket => h.key.get().cloned(),
                _ => None,
            })
        };
        let key = match known {
            Some(k) => k,
            None => match self.manager.engine_key(ticket).await {
                Ok(Some(k)) => k,
                Ok(None) => return Some(false),
                Err(_) => return None,
            },
        };
        Some(hangar_protocol::credential::matches(key.expose(), presented))
    }

    /// Run `f` on consumer group `name` (made on first use), under the groups' lock.
    pub(crate) fn with_group<T>(&self, name: &str, f: impl FnOnce(&mut Group) -> T) -> T {
        let mut groups = lock(&self.groups);
        let g = groups.entry(name.to_string()).or_insert_with(|| Group {
            slots: Arc::new(Semaphore::new(self.cfg.max_running_per_group.max(1))),
            size: self.cfg.max_running_per_group.max(1),
            queued: 0,
        });
        f(g)
    }

    /// Whether job `task_id` is queued or running in this process.
    pub fn runs(&self, task_id: i64) -> bool {
        lock(&self.jobs).contains_key(&task_id)
    }

    /// Jobs in this process, and how many of them wait in a queue.
    pub fn job_counts(&self) -> (usize, usize) {
        let live = lock(&self.jobs).len();
        let queued = lock(&self.groups).values().map(|g| g.queued).sum();
        (live, queued)
    }

    /// Route events from engine `ticket` (already authenticated with its
    /// key) to their jobs: only to jobs whose task was sent to that engine.
    /// Returns how many events were refused.
    pub fn on_task_events(&self, ticket: &str, events: Vec<TaskEvent>) -> usize {
        let jobs = lock(&self.jobs);
        let mut refused = 0;
        for ev in events {
            match jobs.get(&ev.task_id()) {
                Some(h) if h.ticket.get().is_some_and(|t| t == ticket) => {
                    let _ = h.events.send(ev);
                }
                Some(_) => {
                    refused += 1;
                    tracing::warn!(task = ev.task_id(), %ticket, "refused an event from an engine the task was not sent to");
                }
                None => tracing::debug!(task = ev.task_id(), "event for a job not running here"),
            }
        }
        refused
    }

    /// Stop taking jobs; running and queued jobs end Failed with the reason.
    pub async fn shutdown(&self) {
        self.shutting_down.send_replace(true);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !lock(&self.jobs).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
