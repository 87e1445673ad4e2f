//! After a restart: jobs an earlier process accepted are never dropped.
//! A job that was running is re-attached to its engine (see `job.rs`); a job
//! still waiting for one is queued again from its stored record; only a job
//! whose secret parameters were not kept on disk ends Failed, saying so.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_manager::{EngineGrant, EngineState};
use hangar_protocol::logline::Level;
use hangar_protocol::rpc::{EngineReply, EngineRequest, TaskEvent};
use hangar_protocol::{ErrorCode, HangarError, JobStatus, LabelSet, now_ms};
use hangar_store::JobRecord;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

use crate::job::{Prepared, texts};
use crate::joblog::{JobLog, append_log_line};
use crate::wire::jobs::JobParams;
use crate::{Entrance, JobHandle, lock};

/// A re-attached job whose task its engine never received.
const NEVER_SENT: &str = "the server restarted before this job's task reached its engine";

impl Entrance {
    /// Jobs left unfinished by an earlier process of this instance (or by no
    /// one, or by an instance whose lease ran out; never another live
    /// instance's): running ones re-attach to their engines, waiting ones are
    /// queued again. Returns `(re-attached, re-queued, ended)`. Call before
    /// serving HTTP; it also starts renewing this instance's leases.
    pub async fn recover(self: &Arc<Self>) -> Result<(usize, usize, usize), HangarError> {
        let now = now_ms();
        let jobs = self.store.claim_unfinished(&self.cfg.owner_id, now, self.lease_until(now)).await?;
        tokio::spawn(self.clone().keep_leases());
        self.adopt(jobs, "the server restarted").await
    }

    /// Run jobs this instance just claimed: running ones re-attach to their
    /// engines, waiting ones are queued again (`cause` says why, in their
    /// logs); a kill asked for meanwhile is carried out.
    pub(crate) async fn adopt(
        self: &Arc<Self>,
        mut jobs: Vec<JobRecord>,
        cause: &str,
    ) -> Result<(usize, usize, usize), HangarError> {
        // Running jobs first: they take their groups' running slots back
        // before any queued job of the same group is started again.
        jobs.sort_by_key(|j| (j.status != JobStatus::Running, j.id));
        // Their engines rejoin before any new engine is made (so a new job
        // cannot take the limits a running job's engine needs back).
        let tickets = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Running)
            .filter_map(|j| j.ticket_id.clone())
            .collect::<Vec<_>>();
        if !tickets.is_empty() {
            self.manager.expect_rejoins(tickets, self.cfg.reattach_timeout).await;
        }
        let (mut reattached, mut requeued, mut ended) = (0, 0, 0);
        for j in jobs {
            let (id, log_path, kill) = (j.id, j.log_path.clone(), j.kill_requested);
            if j.status == JobStatus::Running
                && let (Some(_), Some(_)) = (&j.engine_instance, &j.ticket_id)
            {
                self.reattach(j, cause);
                reattached += 1;
            } else {
                match self.prepare_again(j) {
                    Ok(prepared) => {
                        let msg = format!("{cause} before this job reached an engine; it is queued again");
                        append_log_line(&log_path, Level::Warn, &msg).await;
                        self.start(prepared);
                        requeued += 1;
                    }
                    Err(why) => {
                        ended += 1;
                        let reason = format!("{cause} before this job reached an engine and {why}; submit it again");
                        append_log_line(&log_path, Level::Error, &reason).await;
                        let err = Some((ErrorCode::EngineLost.number(), reason.as_str()));
                        let owner = &self.cfg.owner_id;
                        self.store.update_status(id, owner, JobStatus::Failed, None, err, None, now_ms()).await?;
                        continue;
                    }
                }
            }
            if kill {
                self.kill(id);
            }
        }
        Ok((reattached, requeued, ended))
    }

    pub(crate) fn lease_until(&self, now: i64) -> i64 {
        now.saturating_add(i64::try_from(self.cfg.job_lease.as_millis()).unwrap_or(i64::MAX / 2))
    }

    /// A stored job as it was queued at submit (its code already has its
    /// variables substituted). Err: why it cannot run again.
    fn prepare_again(&self, j: JobRecord) -> Result<Prepared, String> {
        let bad = |what: &str| format!("its stored {what} cannot be read");
        let labels: LabelSet = serde_json::from_str(&j.labels).map_err(|_| bad("labels"))?;
        let params: JobParams = serde_json::from_str(&j.params).map_err(|_| bad("parameters"))?;
        let conf = params.configuration.unwrap_or_default();
        let (startup, runtime) = (texts(conf.startup), texts(conf.runtime));
        // Secrets are masked in the store: such a job cannot run as it was asked.
        let masked = |v: &String| v.contains("***");
        if startup.values().chain(runtime.values()).any(masked) {
            return Err("its secret parameters are not kept on disk".into());
        }
        let uc = labels.user_creator().map_err(|e| e.message)?;
        let et = labels.engine_type().map_err(|e| e.message)?;
        let group = format!("{}_{}_{}", uc.creator, uc.user, et.engine);
        self.with_group(&group, |g| g.queued += 1);
        Ok(Prepared {
            feed: crate::feed::JobFeed::new(),
            task_id: j.id,
            exec_id: j.exec_id,
            user: j.execute_user,
            labels,
            run_type: j.run_type,
            code: j.code,
            startup,
            runtime,
            log_path: PathBuf::from(j.log_path),
            result_dir: PathBuf::from(j.result_location.trim_start_matches("file://")),
            group,
        })
    }
}

/// How long a job whose task ended while the server was down waits for the
/// engine's last events (longer than the engine's largest retry gap).
const LAST_EVENTS_WAIT: Duration = Duration::from_secs(10);

impl Entrance {
    /// Follow a job of an earlier process again (see [`Entrance::recover`]).
    pub(crate) fn reattach(self: &Arc<Self>, j: hangar_store::JobRecord, cause: &str) {
        let cause = cause.to_string();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (kill_tx, kill_rx) = watch::channel(false);
        let progress_info = Arc::new(Mutex::new(Vec::new()));
        let feed = crate::feed::JobFeed::new();
        lock(&self.jobs).insert(
            j.id,
            JobHandle {
                events: events_tx,
                feed: feed.clone(),
                kill: kill_tx,
                progress_info: progress_info.clone(),
                ticket: Arc::new(std::sync::OnceLock::from(j.ticket_id.clone().unwrap_or_default())),
                key: Default::default(),
                lost: Default::default(),
                result_dir: PathBuf::from(j.result_location.trim_start_matches("file://")),
                engine_unlocked: Default::default(),
            },
        );
        // It still runs in its group: it holds one of the group's running slots.
        let slot = serde_json::from_str::<LabelSet>(&j.labels)
            .ok()
            .and_then(|l| Some((l.user_creator().ok()?, l.engine_type().ok()?)))
            .map(|(uc, et)| format!("{}_{}_{}", uc.creator, uc.user, et.engine))
            .and_then(|group| self.with_group(&group, |g| g.slots.clone().try_acquire_owned().ok()));
        let this = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut log = JobLog::open(Path::new(&j.log_path)).await;
            log.feed = Some(feed.clone());
            let mut metrics: Map<String, Value> = serde_json::from_str(&j.metrics).unwrap_or_default();
            metrics.insert("reattached".into(), json!(true));
            let outcome =
                this.reattach_inner(&j, &cause, &feed, &mut log, &mut metrics, events_rx, kill_rx, progress_info).await;
            if matches!(&outcome, Err(e) if crate::schedule::is_lease_lost(e)) {
                return this.let_go(j.id);
            }
            if matches!(&outcome, Err(e) if e.code == ErrorCode::NotFound && e.message == NEVER_SENT) {
                drop(_slot);
                lock(&this.jobs).remove(&j.id);
                let (id, exec_id) = (j.id, j.exec_id.clone());
                // Queued again: it waits for a slot of its group like any other job.
                if let Err(e) = this.store.release_slot(id, &this.cfg.owner_id).await {
                    tracing::warn!(task_id = id, error = %e, "cannot give back the slot of a job queued again");
                }
                match this.prepare_again(j) {
                    Ok(prepared) => {
                        log.line(
                            Level::Warn,
                            "its task never reached the engine before the restart; it is queued again",
                        )
                        .await;
                        this.start(prepared);
                    }
                    Err(why) => {
                        let e =
                            HangarError::new(ErrorCode::EngineLost, format!("{NEVER_SENT} and {why}; submit it again"));
                        this.finish_job(id, &exec_id, &feed, &mut log, metrics, Err(e)).await;
                    }
                }
                return;
            }
            this.finish_job(j.id, &j.exec_id, &feed, &mut log, metrics, outcome).await;
        });
    }

    #[allow(clippy::too_many_arguments)]
    async fn reattach_inner(
        &self,
        j: &hangar_store::JobRecord,
        cause: &str,
        feed: &crate::feed::Feed,
        log: &mut JobLog,
        metrics: &mut Map<String, Value>,
        mut events: mpsc::UnboundedReceiver<TaskEvent>,
        mut kill: watch::Receiver<bool>,
        progress_info: Arc<Mutex<Vec<hangar_protocol::rpc::JobProgressInfo>>>,
    ) -> Result<(JobStatus, Option<HangarError>), HangarError> {
        let instance = j.engine_instance.clone().unwrap_or_default();
        let ticket = j.ticket_id.clone().unwrap_or_default();
        log.line(Level::Warn, &format!("{cause}; re-attaching to engine {instance} (ticket {ticket})")).await;
        let lost = |why: String| HangarError::new(ErrorCode::EngineLost, why);
        let deadline = Instant::now() + self.cfg.reattach_timeout;
        // Has the engine rejoined the manager (its key is known then), and
        // where does the task stand?
        let (status, error, lock_token, watch, key) = loop {
            let key = self.manager.engine_key(&ticket).await.ok().flatten();
            if let (Some(k), Some(h)) = (&key, lock(&self.jobs).get(&j.id)) {
                let _ = h.key.set(k.clone());
            }
            let reply = match &key {
                Some(k) => {
                    // The engine sends this task's events here from now on
                    // (another instance may have sent it).
                    let callback_url = Some(self.cfg.callback_url.clone());
                    let req = EngineRequest::TaskStatus { task_id: j.id, callback_url };
                    self.engines.call(&instance, k.expose(), &req).await
                }
                None => Err(HangarError::new(ErrorCode::EngineLost, "the engine has not rejoined yet")),
            };
            match reply {
                Ok(EngineReply::TaskStatus { status: None, .. }) => {
                    // The server died between storing Running and sending the task:
                    // it never ran, so it is queued again (see `reattach`).
                    return Err(HangarError::new(ErrorCode::NotFound, NEVER_SENT));
                }
                Ok(EngineReply::TaskStatus { status: Some(s), error, lock }) => {
                    let watch = self.manager.watch_engine(&ticket);
                    if s.is_completed() || watch.is_some() {
                        break (s, error, lock, watch, key.unwrap_or_default());
                    }
                }
                Ok(other) => return Err(lost(format!("engine {instance} answered {other:?}"))),
                Err(_) if matches!(self.manager.engine_state(&ticket).await, Ok(EngineState::Ended { .. })) => {
                    return Err(lost(format!("engine {instance} (ticket {ticket}) ended while the server was down")));
                }
                Err(e) => tracing::debug!(task_id = j.id, error = %e, "engine not reachable yet"),
            }
            if self.lost(j.id) {
                return Err(crate::schedule::lease_lost());
            }
            if Instant::now() >= deadline {
                return Err(lost(format!(
                    "the server restarted and engine {instance} (ticket {ticket}) did not come back within {} ms",
                    self.cfg.reattach_timeout.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let grant = EngineGrant {
            ticket_id: ticket.clone(),
            key,
            account: None,
            instance: instance.clone(),
            ecm_instance: j.ecm_instance.clone().unwrap_or_default(),
            lock: lock_token.unwrap_or_default(),
            reused: j.is_reuse.unwrap_or(false),
            log_dir: String::new(),
        };
        log.line(Level::Info, &format!("re-attached: the task is {status} on engine {instance}")).await;
        let result = match watch {
            Some(mut engine) if !status.is_completed() => {
                let mut shutdown = self.shutting_down.subscribe();
                self.follow(
                    j.id,
                    feed,
                    log,
                    metrics,
                    &grant,
                    None,
                    &mut engine,
                    &mut events,
                    &mut kill,
                    &mut shutdown,
                    progress_info,
                )
                .await
            }
            _ => {
                // It ended while the server was down. Its last events (result
                // sets among them) may still be on their way: the engine
                // retries them with a backoff of up to 8 s. Take them until its
                // final status; events the old server already acknowledged
                // (their result sets stored) do not come again.
                let result_dir = lock(&self.jobs).get(&j.id).map(|h| h.result_dir.clone());
                let mut not_stored = None;
                let until = tokio::time::Instant::now() + LAST_EVENTS_WAIT;
                while let Ok(Some(ev)) = tokio::time::timeout_at(until, events.recv()).await {
                    match ev {
                        TaskEvent::Log { lines, .. } => log.raw(&lines).await,
                        ev @ TaskEvent::ResultSet { .. } => {
                            self.take_result_set(ev, result_dir.as_deref(), feed, log, metrics, &mut not_stored).await;
                        }
                        TaskEvent::Status { status, .. } if status.is_completed() => break,
                        _ => {}
                    }
                }
                if let (JobStatus::Succeed, Some(e)) = (status, not_stored) {
                    return Ok((JobStatus::Failed, Some(HangarError::internal(e))));
                }
                let err = error.map(|m| HangarError::new(ErrorCode::Internal, m));
                Ok((status, err))
            }
        };
        if !grant.lock.is_empty() && !matches!(&result, Err(e) if crate::schedule::is_lease_lost(e)) {
            self.manager.unlock(&grant).await;
        }
        result
    }

    /// Ask a job to stop. False when it is not running in this process.
    pub(crate) fn kill(&self, task_id: i64) -> bool {
        match lock(&self.jobs).get(&task_id) {
            Some(h) => {
                h.kill.send_replace(true);
                true
            }
            None => false,
        }
    }
}
