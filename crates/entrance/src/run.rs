//! A job on its engine: the task sent with the engine's key, its events
//! followed until it ends, the user kills it, its engine goes, its running
//! timeout passes, or the server shuts down.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_manager::EngineGrant;
use hangar_protocol::logline::Level;
use hangar_protocol::rpc::{EngineRequest, JobProgressInfo, TaskEvent, TaskExecuteRequest};
use hangar_protocol::{ErrorCode, HangarError, JobStatus, now_ms};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

use crate::job::{Prepared, label_seconds};
use crate::joblog::JobLog;
use crate::wire::manager::ResourceVo;
use crate::{Entrance, lock};

impl Entrance {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_on_engine(
        &self,
        job: &Prepared,
        log: &mut JobLog,
        metrics: &mut Map<String, Value>,
        grant: &EngineGrant,
        asked_at: Instant,
        events: &mut mpsc::UnboundedReceiver<TaskEvent>,
        kill: &mut watch::Receiver<bool>,
        shutdown: &mut watch::Receiver<bool>,
        progress_info: Arc<Mutex<Vec<JobProgressInfo>>>,
    ) -> Result<(JobStatus, Option<HangarError>), HangarError> {
        let task_id = job.task_id;
        log.line(
            Level::Info,
            &format!(
                "{} engine {} (ticket {}) on ECM {} in {} ms",
                if grant.reused { "reusing" } else { "created" },
                grant.instance,
                grant.ticket_id,
                grant.ecm_instance,
                asked_at.elapsed().as_millis()
            ),
        )
        .await;
        for (k, v) in [
            ("engineInstance", json!(grant.instance)),
            ("ticketId", json!(grant.ticket_id)),
            ("ecmInstance", json!(grant.ecm_instance)),
            ("isReuse", json!(grant.reused)),
            ("engineLogPath", json!(grant.log_dir)),
            ("requestECTime", json!(asked_at.elapsed().as_millis() as u64)),
        ] {
            metrics.insert(k.into(), v);
        }
        let Some(engine) = self.manager.watch_engine(&grant.ticket_id) else {
            return Err(HangarError::new(
                ErrorCode::EngineLost,
                format!("engine {} ended before the task was sent", grant.instance),
            ));
        };
        metrics.insert("runningTime".into(), json!(now_ms()));
        let assignment = hangar_store::EngineAssignment {
            engine_instance: &grant.instance,
            ecm_instance: &grant.ecm_instance,
            ticket_id: &grant.ticket_id,
            is_reuse: grant.reused,
        };
        let metrics_text = Value::Object(metrics.clone()).to_string();
        if !self.store.set_running(task_id, &self.cfg.owner_id, &assignment, &metrics_text, now_ms()).await? {
            // Ended meanwhile, or another instance took it over: the task is not sent (the engine is given back).
            return Err(HangarError::new(
                ErrorCode::ShuttingDown,
                "the job is no longer this instance's to run (it ended or another instance took it over)",
            ));
        }
        job.feed.send(json!({"type": "status", "status": "Running"}));
        let req = TaskExecuteRequest {
            task_id,
            exec_id: job.exec_id.clone(),
            code: job.code.clone(),
            lock: grant.lock.clone(),
            run_type: job.run_type.clone(),
            user: job.user.clone(),
            properties: job.runtime.clone(),
            callback_url: self.cfg.callback_url.clone(),
            max_result_set_bytes: self.cfg.max_result_set_bytes,
            unlock_when_done: true,
        };
        // From now on only this engine's events reach the job.
        if let Some(h) = lock(&self.jobs).get(&task_id) {
            let _ = h.key.set(grant.key.clone());
            let _ = h.ticket.set(grant.ticket_id.clone());
        }
        let mut engine = engine;
        // An engine that ends while the task is on its way (lost, stopped) ends the job now, not at the call's timeout.
        let execute = EngineRequest::Execute(req);
        let sent = tokio::select! {
            r = self.engines.call(&grant.instance, grant.key.expose(), &execute) => r,
            v = engine.wait_for(|v| v.status.is_completed()) => Err(HangarError::new(
                ErrorCode::EngineLost,
                format!("engine {} (ticket {}) ended before it took the task: {}", grant.instance, grant.ticket_id,
                    v.ok().and_then(|v| v.reason.clone()).unwrap_or_default()),
            )),
        };
        if let Err(e) = sent {
            // An engine that died just now: its ECM reports how within moments; say that, not the transport error.
            let ended = tokio::time::timeout(Duration::from_secs(2), engine.wait_for(|v| v.status.is_completed()))
                .await
                .ok()
                .and_then(|r| r.ok().map(|v| v.reason.clone()));
            return Err(match ended {
                Some(reason) => HangarError::new(
                    ErrorCode::EngineLost,
                    format!(
                        "engine {} (ticket {}) exited before it took the task: {}",
                        grant.instance,
                        grant.ticket_id,
                        reason.unwrap_or_default()
                    ),
                ),
                None => e,
            });
        }
        let run_timeout = label_seconds(&job.labels, "jobRunningTimeout")?;
        self.follow(
            task_id,
            &job.feed,
            log,
            metrics,
            grant,
            run_timeout,
            &mut engine,
            events,
            kill,
            shutdown,
            progress_info,
        )
        .await
    }

    /// Consume a running task's events until it ends, the user kills it, its
    /// engine goes, its running timeout passes, or the server shuts down.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn follow(
        &self,
        task_id: i64,
        feed: &crate::feed::Feed,
        log: &mut JobLog,
        metrics: &mut Map<String, Value>,
        grant: &EngineGrant,
        run_timeout: Option<Duration>,
        engine: &mut watch::Receiver<hangar_manager::EngineView>,
        events: &mut mpsc::UnboundedReceiver<TaskEvent>,
        kill: &mut watch::Receiver<bool>,
        shutdown: &mut watch::Receiver<bool>,
        progress_info: Arc<Mutex<Vec<JobProgressInfo>>>,
    ) -> Result<(JobStatus, Option<HangarError>), HangarError> {
        let mut kill_deadline: Option<tokio::time::Instant> = None;
        let result_dir = lock(&self.jobs).get(&task_id).map(|h| h.result_dir.clone());
        // A result set that could not be stored fails a task that otherwise succeeded.
        let mut not_stored: Option<String> = None;
        let run_deadline = run_timeout.map(|d| tokio::time::Instant::now() + d);
        // Progress is stored at most every 500 ms; a short job's only write is its end.
        let mut last_progress_write = Instant::now();
        loop {
            let kill_timer = async {
                match kill_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let run_timer = async {
                match run_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = run_timer, if kill_deadline.is_none() => {
                    let secs = run_timeout.map_or(0, |d| d.as_secs());
                    log.line(Level::Warn, &format!("the job ran longer than jobRunningTimeout = {secs} s; stopping it")).await;
                    let _ = self.engines.call(&grant.instance, grant.key.expose(), &EngineRequest::Kill { task_id }).await;
                    return Ok((JobStatus::Timeout, Some(HangarError::new(ErrorCode::Timeout, format!("the job ran longer than jobRunningTimeout = {secs} s")))));
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { return Err(HangarError::internal("job event channel closed")) };
                    match ev {
                        TaskEvent::Log { lines, .. } => log.raw(&lines).await,
                        TaskEvent::RunningInfo(info) => {
                            *lock(&progress_info) = info.progress_info.clone();
                            let resource = serde_json::to_value(ResourceVo::from(info.resource)).unwrap_or_default();
                            feed.send(json!({
                                "type": "progress", "progress": info.progress, "progressInfo": info.progress_info,
                                "resource": resource, "engineMetrics": info.metrics,
                            }));
                            metrics.insert("engineMetrics".into(), serde_json::to_value(&info.metrics).unwrap_or_default());
                            metrics.insert("resource".into(), resource);
                            if last_progress_write.elapsed() >= Duration::from_millis(500) {
                                last_progress_write = Instant::now();
                                let m = Value::Object(metrics.clone()).to_string();
                                self.store.set_progress(task_id, &self.cfg.owner_id, info.progress as f64, &m, now_ms()).await?;
                            }
                        }
                        TaskEvent::Output { lines, .. } => feed.output(lines),
                        TaskEvent::Unlocked { .. } => {
                            if let Some(h) = lock(&self.jobs).get(&task_id) {
                                h.engine_unlocked.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        TaskEvent::OutputStopped { .. } => {
                            feed.send(json!({"type": "lagged"}));
                            log.line(Level::Info, "the output is no longer shown live (too much, or a line too long); all of it is in the result sets").await;
                        }
                        ev @ TaskEvent::ResultSet { .. } => {
                            self.take_result_set(ev, result_dir.as_deref(), feed, log, metrics, &mut not_stored).await;
                        }
                        TaskEvent::Status { status, error, exit_code, .. } => {
                            if let Some(code) = exit_code {
                                metrics.insert(EXIT_CODE.into(), json!(code));
                            }
                            if status.is_completed() {
                                if let (JobStatus::Succeed, Some(e)) = (status, not_stored.take()) {
                                    return Ok((JobStatus::Failed, Some(HangarError::internal(e))));
                                }
                                let err = error.map(|m| HangarError::new(if status == JobStatus::Cancelled { ErrorCode::InvalidRequest } else { ErrorCode::Internal }, m));
                                return Ok((status, err));
                            }
                        }
                    }
                }
                changed = engine.changed() => {
                    let view: hangar_manager::EngineView = { let v = engine.borrow(); v.clone() };
                    if changed.is_err() || view.status.is_completed() {
                        // Drain what the engine already sent: it may hold the final status.
                        while let Ok(ev) = events.try_recv() {
                            match ev {
                                TaskEvent::Log { lines, .. } => log.raw(&lines).await,
                                TaskEvent::Output { lines, .. } => feed.output(lines),
                                ev @ TaskEvent::ResultSet { .. } => {
                                    self.take_result_set(ev, result_dir.as_deref(), feed, log, metrics, &mut not_stored).await;
                                }
                                TaskEvent::Status { status, error, exit_code, .. } if status.is_completed() => {
                                    if let Some(code) = exit_code {
                                        metrics.insert(EXIT_CODE.into(), json!(code));
                                    }
                                    if let (JobStatus::Succeed, Some(e)) = (status, not_stored.take()) {
                                        return Ok((JobStatus::Failed, Some(HangarError::internal(e))));
                                    }
                                    return Ok((status, error.map(|m| HangarError::new(ErrorCode::Internal, m))));
                                }
                                _ => {}
                            }
                        }
                        let reason = view.reason.unwrap_or_else(|| format!("it is {}", view.status));
                        return Err(HangarError::new(ErrorCode::EngineLost, format!("engine {} (ticket {}) exited while running the task: {reason}", grant.instance, grant.ticket_id)));
                    }
                }
                _ = fired(kill), if kill_deadline.is_none() => {
                    // A lost lease: the job's new owner follows the engine now.
                    self.killed(task_id)?;
                    log.line(Level::Warn, "kill requested by user").await;
                    kill_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3));
                    if let Err(e) = self.engines.call(&grant.instance, grant.key.expose(), &EngineRequest::Kill { task_id }).await {
                        tracing::debug!(error = %e, "kill request to engine failed");
                    }
                }
                _ = kill_timer => {
                    return Ok((JobStatus::Cancelled, Some(HangarError::new(ErrorCode::InvalidRequest, "killed by user (engine did not confirm in 3 s)"))));
                }
                _ = fired(shutdown) => {
                    self.killed(task_id)?;
                    let _ = self.engines.call(&grant.instance, grant.key.expose(), &EngineRequest::Kill { task_id }).await;
                    return Err(HangarError::new(ErrorCode::ShuttingDown, "the server shut down while the job ran"));
                }
            }
        }
    }
}

impl Entrance {
    /// A result set the engine announced: stored first when it came inline
    /// (a larger one was streamed before the event), then told to followers,
    /// logged, and noted in the metrics when cut at the row limit.
    pub(crate) async fn take_result_set(
        &self,
        ev: TaskEvent,
        result_dir: Option<&Path>,
        feed: &crate::feed::Feed,
        log: &mut JobLog,
        metrics: &mut Map<String, Value>,
        not_stored: &mut Option<String>,
    ) {
        let TaskEvent::ResultSet { alias, rows, cut, total_rows, inline, .. } = ev else { return };
        if let (Some(text), Some(dir)) = (inline, result_dir) {
            let limit = self.cfg.max_result_set_bytes;
            if let Err(e) = crate::results::store_inline(&self.cfg.results_dir, dir, alias, text, limit).await {
                log.line(Level::Error, &e).await;
                not_stored.get_or_insert(e);
                return;
            }
        }
        feed.send(json!({"type": "resultSet", "alias": alias, "rows": rows, "cut": cut, "totalRows": total_rows}));
        log.line(Level::Info, &format!("result set _{alias}.dolphin stored with {rows} rows")).await;
        if cut {
            let cut = json!({"alias": alias, "kept": rows, "total": total_rows});
            match metrics.get_mut(TRUNCATED).and_then(Value::as_array_mut) {
                Some(list) => list.push(cut),
                None => {
                    metrics.insert(TRUNCATED.into(), json!([cut]));
                }
            }
        }
    }
}

/// Job metrics key: the exit code of the task's program (shell).
pub(crate) const EXIT_CODE: &str = "exitCode";
/// Job metrics key: result sets cut at the row limit, `{alias, kept, total}`.
pub(crate) const TRUNCATED: &str = "truncatedResults";

/// Resolves once the flag is set (or its sender is gone).
pub(crate) async fn fired(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
