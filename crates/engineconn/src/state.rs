//! The accessible executor: engine status, the timed lock, running tasks,
//! the engine's own metrics, heartbeats and the reasons to exit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hangar_engineconn_plugin::{CancelSignal, EngineConnSession, EngineCreationContext};
use hangar_protocol::rpc::{
    ECM_INSTANCE_CONF, EngineMetrics, EngineReply, EngineToManager, RPC_VERSION, TaskExecuteRequest,
};
use hangar_protocol::{ErrorCode, JobStatus, NodeStatus, Resource, now_ms};
use tokio::sync::watch;

use crate::options::EngineOptions;
use crate::outbound::Outbound;

const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A status change is reported once the engine stayed in it this long (or
/// moved on: then where it is).
const STATUS_SETTLE: Duration = Duration::from_millis(50);

pub(crate) struct Engine {
    pub(crate) ctx: EngineCreationContext,
    pub(crate) instance: String,
    pub(crate) opts: EngineOptions,
    pub(crate) out: Outbound,
    pub(crate) resource: Resource,
    session: Arc<dyn EngineConnSession>,
    /// Tasks at once; above 1 the engine is a concurrent engine: up to that
    /// many callers hold a lock of their own at once (each lock one slot), the
    /// engine is Unlock while a slot is free and Busy when all are taken.
    concurrency: usize,
    inner: Mutex<Inner>,
    status_tx: watch::Sender<NodeStatus>,
    exit: CancelSignal,
    exit_reason: Mutex<Option<String>>,
}

struct Inner {
    status: NodeStatus,
    status_since: Instant,
    lock: Option<String>,
    lock_since: Instant,
    tasks: HashMap<i64, CancelSignal>,
    /// Concurrent engines: the locks handed out (one slot each) and when.
    grants: HashMap<String, Instant>,
    /// Concurrent engines: the lock each running task came with.
    task_lock: HashMap<i64, String>,
    /// Since when no task has run (None while one runs).
    free_since: Option<Instant>,
    last_manager_contact: Instant,
    tasks_done: u64,
    metrics: EngineMetrics,
    /// The last tasks that ended here: `(task, status, error, lock)`, for an
    /// Entrance that re-attaches after a restart.
    finished: VecDeque<(i64, JobStatus, Option<String>, Option<String>)>,
}

/// How many ended tasks an engine remembers.
const FINISHED_MEMORY: usize = 256;

impl Engine {
    pub(crate) fn new(
        ctx: EngineCreationContext,
        instance: String,
        session: Arc<dyn EngineConnSession>,
        concurrency: usize,
        opts: EngineOptions,
        out: Outbound,
    ) -> Arc<Self> {
        let now = Instant::now();
        let num = |k: &str| ctx.options.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let resource = Resource::new(
            num("hangar.resource.memory"),
            num("hangar.resource.cores") as u32,
            num("hangar.resource.instances") as u32,
        );
        let metrics =
            EngineMetrics { engine_instance: instance.clone(), ticket_id: ctx.ticket_id.clone(), ..Default::default() };
        let (status_tx, _) = watch::channel(NodeStatus::Starting);
        Arc::new(Self {
            ctx,
            instance,
            opts,
            out,
            resource,
            session,
            concurrency,
            inner: Mutex::new(Inner {
                status: NodeStatus::Starting,
                status_since: now,
                lock: None,
                lock_since: now,
                tasks: HashMap::new(),
                grants: HashMap::new(),
                task_lock: HashMap::new(),
                free_since: Some(now),
                last_manager_contact: now,
                tasks_done: 0,
                metrics,
                finished: VecDeque::new(),
            }),
            status_tx,
            exit: CancelSignal::default(),
            exit_reason: Mutex::new(None),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another request panicked mid-update; the
        // state itself stays consistent because every update is a few assignments.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Guarded status change plus time accounting; reported by the heartbeat loop.
    pub(crate) fn set_status(&self, to: NodeStatus) {
        let mut g = self.inner();
        Self::set_status_locked(&mut g, to);
        drop(g);
        self.status_tx.send_replace(to);
    }

    fn set_status_locked(g: &mut Inner, to: NodeStatus) {
        let from = g.status;
        if from == to {
            return;
        }
        if !from.can_transition(to) {
            tracing::warn!(%from, %to, "ignoring illegal engine status transition");
            return;
        }
        let spent = g.status_since.elapsed().as_millis() as u64;
        let m = &mut g.metrics;
        match from {
            NodeStatus::Unlock => m.total_unlock_time_mills += spent,
            NodeStatus::Idle => {
                m.total_idle_time_mills += spent;
                m.total_lock_time_mills += spent;
            }
            NodeStatus::Busy => {
                m.total_busy_time_mills += spent;
                m.total_lock_time_mills += spent;
            }
            _ => {}
        }
        if to == NodeStatus::Unlock {
            m.last_unlock_timestamp = now_ms();
        }
        g.status = to;
        g.status_since = Instant::now();
    }

    pub(crate) fn metrics(&self) -> (NodeStatus, EngineMetrics) {
        let g = self.inner();
        let mut m = g.metrics.clone();
        m.running_tasks = g.tasks.len() as u32;
        let status = g.status;
        drop(g);
        m.rss_kb = rss_kb();
        m.unhealthy = self.session.healthy().err();
        m.info = self.session.info();
        (status, m)
    }

    fn concurrent(&self) -> bool {
        self.concurrency > 1
    }

    /// Concurrent engines: Busy when every slot is held or running, else Unlock.
    fn settle_concurrent(&self, g: &mut Inner) {
        if !g.status.is_available() {
            return;
        }
        let taken = g.grants.len().max(g.tasks.len());
        let to = if taken >= self.concurrency { NodeStatus::Busy } else { NodeStatus::Unlock };
        Self::set_status_locked(g, to);
    }

    pub(crate) fn lock(&self, _timeout_ms: u64) -> EngineReply {
        let mut g = self.inner();
        if self.concurrent() {
            if !g.status.is_available() || g.grants.len() >= self.concurrency {
                return EngineReply::Lock {
                    lock: None,
                    message: format!(
                        "concurrent engine is {} with {} of {} slots taken",
                        g.status,
                        g.grants.len(),
                        self.concurrency
                    ),
                };
            }
            let lock = uuid::Uuid::new_v4().simple().to_string();
            g.grants.insert(lock.clone(), Instant::now());
            self.settle_concurrent(&mut g);
            let status = g.status;
            drop(g);
            self.status_tx.send_replace(status);
            return EngineReply::Lock { lock: Some(lock), message: "OK".into() };
        }
        if g.status != NodeStatus::Unlock || g.lock.is_some() {
            return EngineReply::Lock { lock: None, message: format!("engine is {}, not Unlock", g.status) };
        }
        let lock = uuid::Uuid::new_v4().simple().to_string();
        g.lock = Some(lock.clone());
        g.lock_since = Instant::now();
        Self::set_status_locked(&mut g, NodeStatus::Idle);
        drop(g);
        self.status_tx.send_replace(NodeStatus::Idle);
        EngineReply::Lock { lock: Some(lock), message: "OK".into() }
    }

    pub(crate) fn unlock(&self, lock: &str) -> EngineReply {
        let mut g = self.inner();
        if self.concurrent() {
            let unlocked = g.grants.remove(lock).is_some();
            self.settle_concurrent(&mut g);
            let status = g.status;
            drop(g);
            self.status_tx.send_replace(status);
            return EngineReply::Unlocked { unlocked };
        }
        if g.lock.as_deref() != Some(lock) {
            return EngineReply::Unlocked { unlocked: false };
        }
        self.release_lock_locked(&mut g);
        let retire = self.ctx.labels.execute_once() || (self.opts.max_tasks > 0 && g.tasks_done >= self.opts.max_tasks);
        let status = g.status;
        drop(g);
        self.status_tx.send_replace(status);
        if retire {
            self.request_exit(if self.ctx.labels.execute_once() {
                "executeOnce engine served its task".to_string()
            } else {
                format!("engine ran its maximum of {} tasks", self.opts.max_tasks)
            });
        }
        EngineReply::Unlocked { unlocked: true }
    }

    fn release_lock_locked(&self, g: &mut Inner) {
        g.lock = None;
        if g.tasks.is_empty() && g.status.is_locked() {
            Self::set_status_locked(g, NodeStatus::Unlock);
        }
    }

    pub(crate) fn execute(self: &Arc<Self>, req: TaskExecuteRequest) -> EngineReply {
        let err = |code, message: String| EngineReply::Error { code, message };
        if req.code.trim().is_empty() {
            return err(ErrorCode::InvalidRequest, "code is blank".into());
        }
        let executor = match self.session.executor(&req.run_type) {
            Ok(e) => e,
            Err(e) => return err(e.code, e.message),
        };
        let cancel = CancelSignal::default();
        {
            let mut g = self.inner();
            let lock_ok = if self.concurrent() {
                g.grants.contains_key(&req.lock) && !g.task_lock.values().any(|l| *l == req.lock)
            } else {
                g.lock.as_deref() == Some(req.lock.as_str())
            };
            if !lock_ok {
                return err(ErrorCode::LockRejected, format!("invalid lock for engine {}", self.instance));
            }
            if g.status.is_completed() {
                return err(ErrorCode::EngineLost, format!("engine {} is {}", self.instance, g.status));
            }
            if g.tasks.len() >= self.concurrency {
                return err(ErrorCode::Overloaded, format!("engine {} is busy", self.instance));
            }
            if g.tasks.contains_key(&req.task_id) {
                return err(ErrorCode::InvalidRequest, format!("task {} already runs here", req.task_id));
            }
            g.tasks.insert(req.task_id, cancel.clone());
            g.free_since = None;
            g.lock_since = Instant::now();
            if self.concurrent() {
                g.task_lock.insert(req.task_id, req.lock.clone());
                self.settle_concurrent(&mut g);
            } else {
                Self::set_status_locked(&mut g, NodeStatus::Busy);
            }
        }
        let status = self.inner().status;
        self.status_tx.send_replace(status);
        let task_id = req.task_id;
        tokio::spawn(crate::task::run(self.clone(), req, executor, cancel));
        EngineReply::Submitted { task_id }
    }

    pub(crate) fn task_finished(&self, task_id: i64, status: JobStatus, error: Option<String>) {
        if let Err(reason) = self.session.healthy() {
            self.request_exit(format!("engine session failed: {reason}"));
        }
        let mut g = self.inner();
        g.tasks.remove(&task_id);
        let lock = if self.concurrent() { g.task_lock.get(&task_id).cloned() } else { g.lock.clone() };
        g.finished.push_back((task_id, status, error, lock));
        if g.finished.len() > FINISHED_MEMORY {
            g.finished.pop_front();
        }
        g.tasks_done += 1;
        match status {
            JobStatus::Succeed => g.metrics.succeed_tasks += 1,
            _ => g.metrics.failed_tasks += 1,
        }
        if self.concurrent() {
            g.task_lock.remove(&task_id);
            if g.tasks.is_empty() {
                g.free_since = Some(Instant::now());
            }
            self.settle_concurrent(&mut g);
        } else if g.tasks.is_empty() {
            g.free_since = Some(Instant::now());
            g.lock_since = Instant::now();
            let to = if g.lock.is_some() { NodeStatus::Idle } else { NodeStatus::Unlock };
            Self::set_status_locked(&mut g, to);
        }
        let status = g.status;
        drop(g);
        self.status_tx.send_replace(status);
    }

    /// Where a task stands, with the lock it runs (or ran) under.
    pub(crate) fn task_status(&self, task_id: i64) -> EngineReply {
        let g = self.inner();
        if g.tasks.contains_key(&task_id) {
            let lock = if self.concurrent() { g.task_lock.get(&task_id).cloned() } else { g.lock.clone() };
            return EngineReply::TaskStatus { status: Some(JobStatus::Running), error: None, lock };
        }
        match g.finished.iter().rev().find(|f| f.0 == task_id) {
            Some((_, status, error, lock)) => {
                EngineReply::TaskStatus { status: Some(*status), error: error.clone(), lock: lock.clone() }
            }
            None => EngineReply::TaskStatus { status: None, error: None, lock: None },
        }
    }

    pub(crate) fn kill(&self, task_id: i64) -> EngineReply {
        match self.inner().tasks.get(&task_id) {
            Some(c) => {
                c.cancel();
                EngineReply::Ack
            }
            None => EngineReply::Error {
                code: ErrorCode::NotFound,
                message: format!("task {task_id} is not running on engine {}", self.instance),
            },
        }
    }

    pub(crate) fn request_exit(&self, reason: String) {
        let mut r = self.exit_reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.exit.cancel();
    }

    /// Periodic checks: session health, lock auto-release, idle exit, orphan exit.
    fn check(&self) {
        if let Err(reason) = self.session.healthy() {
            self.request_exit(format!("engine session failed: {reason}"));
            return;
        }
        let mut g = self.inner();
        if self.concurrent() {
            let stale: Vec<String> = g
                .grants
                .iter()
                .filter(|(l, at)| at.elapsed() >= self.opts.lock_idle_release && !g.task_lock.values().any(|t| t == *l))
                .map(|(l, _)| l.clone())
                .collect();
            if !stale.is_empty() {
                tracing::info!(count = stale.len(), "releasing locks unused for {:?}", self.opts.lock_idle_release);
                for l in stale {
                    g.grants.remove(&l);
                }
                self.settle_concurrent(&mut g);
                let s = g.status;
                drop(g);
                self.status_tx.send_replace(s);
                g = self.inner();
            }
        }
        if g.status == NodeStatus::Idle && g.tasks.is_empty() && g.lock_since.elapsed() >= self.opts.lock_idle_release {
            tracing::info!("releasing a lock unused for {:?}", self.opts.lock_idle_release);
            self.release_lock_locked(&mut g);
            let s = g.status;
            drop(g);
            self.status_tx.send_replace(s);
            g = self.inner();
        }
        let orphaned = g.last_manager_contact.elapsed();
        let idle = g.free_since.map(|t| t.elapsed());
        drop(g);
        if orphaned >= self.opts.orphan_timeout {
            self.request_exit(format!("orphaned: the manager has not answered for {} ms", orphaned.as_millis()));
        } else if idle.is_some_and(|d| d >= self.opts.max_free_time) {
            self.request_exit(format!("idle release after {} ms without a task", self.opts.max_free_time.as_millis()));
        }
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut rx = self.status_tx.subscribe();
        let mut tick = tokio::time::interval(self.opts.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = rx.changed() => {
                    if changed.is_err() { return }
                    // A busy engine changes status several times a task (locked,
                    // Busy, Unlock): one report of where it settled, not one each.
                    // The manager knows its own locks and unlocks already.
                    let s = *rx.borrow_and_update();
                    if !s.is_completed() && s != NodeStatus::ShuttingDown {
                        tokio::time::sleep(STATUS_SETTLE).await;
                        rx.borrow_and_update();
                    }
                }
            }
            let (status, metrics) = self.metrics();
            if status.is_completed() {
                return;
            }
            let msg = EngineToManager::Heartbeat { ticket_id: self.ctx.ticket_id.clone(), status, metrics };
            match self.out.to_manager(&msg).await {
                Ok(reply) if !reply.known && reply.rejoin => {
                    // The manager restarted: take our record back to it.
                    let (status, metrics) = self.metrics();
                    let rejoin = EngineToManager::Rejoin {
                        ticket_id: self.ctx.ticket_id.clone(),
                        instance: self.instance.clone(),
                        pid: std::process::id(),
                        user: self.ctx.user.clone(),
                        labels: self.ctx.labels.clone(),
                        resource: self.resource,
                        cluster: self
                            .ctx
                            .options
                            .get(hangar_protocol::rpc::CLUSTER_CHARGE_CONF)
                            .and_then(|v| serde_json::from_str(v).ok()),
                        ecm_instance: self.ctx.options.get(ECM_INSTANCE_CONF).cloned().unwrap_or_default(),
                        status,
                        metrics,
                        rpc_version: RPC_VERSION,
                        account: Some(crate::own_account()),
                    };
                    match self.out.to_manager(&rejoin).await {
                        Ok(r) if r.known => {
                            self.inner().last_manager_contact = Instant::now();
                            tracing::info!("rejoined a restarted manager");
                        }
                        // Not yet (its ECM has not registered again): the next heartbeat tries again.
                        Ok(r) if r.rejoin => tracing::info!("the manager cannot take this engine back yet"),
                        Ok(_) => self.request_exit("the restarted manager did not take this engine back".into()),
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "rejoin failed"),
                    }
                }
                Ok(reply) => {
                    self.inner().last_manager_contact = Instant::now();
                    if !reply.known {
                        self.request_exit("the manager no longer knows this engine".into());
                    }
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "heartbeat failed"),
            }
        }
    }

    /// Serve until a reason to exit, then shut down cleanly; returns the reason.
    pub(crate) async fn run_until_exit(self: Arc<Self>) -> String {
        tokio::spawn(self.clone().heartbeat_loop());
        let check_every = (self.opts.heartbeat_interval / 2)
            .min(Duration::from_secs(1))
            .min(self.opts.max_free_time / 4)
            .max(Duration::from_millis(20));
        let mut tick = tokio::time::interval(check_every);
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            tokio::select! {
                _ = tick.tick() => self.check(),
                _ = self.exit.cancelled() => break,
                _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                    self.request_exit("terminated by signal".into());
                }
            }
        }
        let reason = self.exit_reason.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        self.set_status(NodeStatus::ShuttingDown);
        let running: Vec<CancelSignal> = self.inner().tasks.values().cloned().collect();
        for c in &running {
            c.cancel();
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while !self.inner().tasks.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Deliver what is queued, but do not wait out a gone Entrance's retries.
        let _ = tokio::time::timeout(Duration::from_secs(3), self.out.flush()).await;
        let final_status = if reason.starts_with("orphaned") { NodeStatus::Failed } else { NodeStatus::Success };
        self.set_status(final_status);
        let msg = EngineToManager::Exiting {
            ticket_id: self.ctx.ticket_id.clone(),
            status: final_status,
            reason: reason.clone(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.out.to_manager(&msg)).await;
        reason
    }
}

impl Engine {
    /// Why the engine is exiting, once it is.
    pub(crate) fn exit_reason(&self) -> Option<String> {
        self.exit_reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Resident memory of this process: one short procfs read (`statm`, in pages)
/// rather than parsing `status`, since it runs on every heartbeat and report.
fn rss_kb() -> u64 {
    let page_kb =
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4, |p| p as u64 / 1024);
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_kb)
}
