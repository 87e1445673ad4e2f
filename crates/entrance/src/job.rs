//! Submit and the job runner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_manager::{AskRequest, EngineGrant};
use hangar_protocol::label::{CODE_TYPE, USER_CREATOR};
use hangar_protocol::logline::{self, Level};
use hangar_protocol::rpc::{EngineReply, EngineRequest, TaskEvent, TaskExecuteRequest};
use hangar_protocol::{ErrorCode, HangarError, JobStatus, LabelSet, exec_id, now_ms};
use hangar_store::NewJob;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::auth::Caller;
use crate::{Entrance, Group, JobHandle, lock};

/// A validated submission, ready to run.
pub(crate) struct Prepared {
    /// What `/entrance/{execID}/events` subscribers see.
    pub feed: tokio::sync::broadcast::Sender<Value>,
    pub task_id: i64,
    pub exec_id: String,
    pub user: String,
    pub labels: LabelSet,
    pub run_type: String,
    pub code: String,
    pub startup: BTreeMap<String, String>,
    pub runtime: BTreeMap<String, String>,
    pub log_path: PathBuf,
    pub result_dir: PathBuf,
    /// Its consumer group (counted as queued already).
    pub group: String,
}

pub(crate) fn str_map(v: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>, HangarError> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    Value::Null => String::new(),
                    _ => return Err(HangarError::invalid(format!("{what}.{k} must be a string, number or boolean"))),
                };
                out.insert(k.clone(), s);
            }
        }
        Some(_) => return Err(HangarError::invalid(format!("{what} must be a JSON object"))),
    }
    Ok(out)
}

impl Entrance {
    /// Validate, persist and queue a job. Returns `(execID, taskID)`.
    pub(crate) async fn submit(self: &Arc<Self>, caller: &Caller, body: &Value) -> Result<(String, i64), HangarError> {
        if *self.shutting_down.borrow() {
            return Err(HangarError::new(ErrorCode::ShuttingDown, "the server is shutting down and takes no new jobs"));
        }
        let obj = body.as_object().ok_or_else(|| HangarError::invalid("request body must be a JSON object"))?;
        // `executionContent` (submit) or the legacy 0.x `executionCode` + `runType` (execute).
        let (code, run_type) = match obj.get("executionContent") {
            Some(Value::Object(c)) => (c.get("code"), c.get("runType")),
            Some(_) => return Err(HangarError::invalid("executionContent must be a JSON object")),
            None => (obj.get("executionCode"), obj.get("runType")),
        };
        let code = match code {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => return Err(HangarError::invalid("executionContent.code is required")),
            Some(_) => return Err(HangarError::invalid("executionContent.code must be a string")),
        };
        if code.trim().is_empty() {
            return Err(HangarError::invalid("executionContent.code is blank"));
        }
        if code.len() > self.cfg.max_code_bytes {
            return Err(HangarError::invalid(format!(
                "code is {} bytes, more than the limit of {} bytes",
                code.len(),
                self.cfg.max_code_bytes
            )));
        }
        let labels_json = match obj.get("labels") {
            Some(Value::Object(m)) if !m.is_empty() => m,
            Some(Value::Object(_)) | None | Some(Value::Null) => {
                return Err(HangarError::invalid("labels is null: send at least {\"engineType\": \"shell-1\"}"));
            }
            Some(_) => return Err(HangarError::invalid("labels must be a JSON object")),
        };
        let mut labels = LabelSet::from_json(labels_json)?;
        labels.engine_type()?;
        // Every field of a known name has its type, or the request is refused naming it.
        for (field, want) in [("executeUser", "a string"), ("params", "a JSON object"), ("source", "a JSON object")] {
            let ok = matches!(
                (obj.get(field), want),
                (None | Some(Value::Null), _)
                    | (Some(Value::String(_)), "a string")
                    | (Some(Value::Object(_)), "a JSON object")
            );
            if !ok {
                return Err(HangarError::invalid(format!("{field} must be {want}")));
            }
        }
        if let Some(c) = obj.get("params").and_then(|p| p.get("configuration"))
            && !(c.is_object() || c.is_null())
        {
            return Err(HangarError::invalid("params.configuration must be a JSON object"));
        }
        let execute_user = match obj.get("executeUser").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(u) if u != caller.user && !caller.admin => {
                return Err(HangarError::new(
                    ErrorCode::PermissionDenied,
                    format!("user '{}' may not execute as '{u}'", caller.user),
                ));
            }
            Some(u) if !crate::auth::valid_user_name(u) => {
                return Err(HangarError::invalid(format!("executeUser '{u}' is not a valid user name")));
            }
            Some(u) => u.to_string(),
            None => caller.user.clone(),
        };
        match run_type {
            Some(Value::String(rt)) if !rt.trim().is_empty() => {
                if !labels.contains(CODE_TYPE) {
                    labels.insert(CODE_TYPE, rt.trim().to_string())?;
                }
            }
            Some(Value::String(_)) | None | Some(Value::Null) => {}
            Some(_) => return Err(HangarError::invalid("executionContent.runType must be a string")),
        }
        let run_type = labels.get(CODE_TYPE).map(str::to_string).ok_or_else(|| {
            HangarError::invalid("executionContent.runType (or label codeType) is required, e.g. \"shell\"")
        })?;
        if !labels.contains(USER_CREATOR) {
            labels.insert(USER_CREATOR, format!("{execute_user}-{}", self.cfg.default_creator))?;
        }
        let uc = labels.user_creator()?;
        if uc.user != execute_user && !caller.admin {
            return Err(HangarError::new(
                ErrorCode::PermissionDenied,
                format!("label userCreator names user '{}' but the job runs as '{execute_user}'", uc.user),
            ));
        }
        self.manager.validate(&labels)?;
        label_seconds(&labels, "jobQueuingTimeout")?;
        label_seconds(&labels, "jobRunningTimeout")?;
        let et = labels.engine_type()?;
        let plugin = hangar_engineconn_plugin_run_types(&self.manager, &et.engine);
        if !plugin.iter().any(|r| *r == run_type) {
            return Err(HangarError::invalid(format!(
                "engine type {et} does not run codeType '{run_type}'; it runs {}",
                plugin.join(", ")
            )));
        }
        let params = obj.get("params").cloned().unwrap_or_else(|| json!({}));
        let variables = str_map(params.get("variable"), "params.variable")?;
        let code = crate::vars::substitute(&code, &variables, matches!(run_type.as_str(), "shell" | "sh"))?;
        let conf = params.get("configuration");
        let startup = str_map(conf.and_then(|c| c.get("startup")), "params.configuration.startup")?;
        let runtime = str_map(conf.and_then(|c| c.get("runtime")), "params.configuration.runtime")?;
        let source = obj.get("source").cloned().unwrap_or_else(|| json!({}));
        // Job history keeps the params, but never a password in them.
        let params = redact_secrets(params);

        let group = format!("{}_{}_{}", uc.creator, uc.user, et.engine);
        {
            let mut groups = lock(&self.groups);
            let g = groups.entry(group.clone()).or_insert_with(|| Group {
                slots: Arc::new(tokio::sync::Semaphore::new(self.cfg.max_running_per_group.max(1))),
                queued: 0,
            });
            if g.queued >= self.cfg.max_queued_per_group {
                return Err(HangarError::new(
                    ErrorCode::Overloaded,
                    format!("the queue of group {group} is full ({} jobs waiting); try again later", g.queued),
                ));
            }
            g.queued += 1;
        }
        let inserted = self
            .persist(
                &caller.user,
                &execute_user,
                &uc.creator,
                &et.to_string(),
                &run_type,
                &labels,
                &params,
                &source,
                &code,
            )
            .await;
        let (task_id, exec, log_path, result_dir) = match inserted {
            Ok(v) => v,
            Err(e) => {
                self.dequeue(&group);
                return Err(e);
            }
        };
        self.start(Prepared {
            feed: tokio::sync::broadcast::channel(1024).0,
            task_id,
            exec_id: exec.clone(),
            user: execute_user,
            labels,
            run_type,
            code,
            startup,
            runtime,
            log_path,
            result_dir,
            group,
        });
        Ok((exec, task_id))
    }

    /// Run a stored, queued job (a new one, or one re-queued after a restart).
    pub(crate) fn start(self: &Arc<Self>, prepared: Prepared) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (kill_tx, kill_rx) = watch::channel(false);
        let progress_info = Arc::new(Mutex::new(json!([])));
        lock(&self.jobs).insert(
            prepared.task_id,
            JobHandle {
                events: events_tx,
                feed: prepared.feed.clone(),
                kill: kill_tx,
                progress_info: progress_info.clone(),
                ticket: Default::default(),
            },
        );
        let this = self.clone();
        tokio::spawn(async move { this.run(prepared, events_rx, kill_rx, progress_info).await });
    }

    #[allow(clippy::too_many_arguments)]
    async fn persist(
        &self,
        submit_user: &str,
        execute_user: &str,
        creator: &str,
        engine_type: &str,
        run_type: &str,
        labels: &LabelSet,
        params: &Value,
        source: &Value,
        code: &str,
    ) -> Result<(i64, String, PathBuf, PathBuf), HangarError> {
        let created = now_ms();
        let new = NewJob {
            submit_user: submit_user.into(),
            execute_user: execute_user.into(),
            creator: creator.into(),
            engine_type: engine_type.into(),
            run_type: run_type.into(),
            labels: serde_json::to_string(labels).unwrap_or_default(),
            params: params.to_string(),
            source: source.to_string(),
            code: code.into(),
            created_ms: created,
        };
        let engine = engine_type.split('-').next().unwrap_or(engine_type);
        let day = chrono::Local::now().format("%Y-%m-%d").to_string();
        let (logs, results, instance) = (&self.cfg.logs_dir, &self.cfg.results_dir, &self.cfg.instance);
        let log_of = |id: i64| logs.join(&day).join(creator).join(execute_user).join(format!("{id}.log"));
        let result_of = |id: i64| results.join(execute_user).join(&day).join(creator).join(id.to_string());
        let stored = self
            .store
            .insert_job(&new, |id| hangar_store::JobPaths {
                exec_id: exec_id::build(instance, creator, execute_user, engine, id),
                log_path: log_of(id).display().to_string(),
                result_location: format!("file://{}", result_of(id).display()),
            })
            .await;
        let (task_id, paths) = stored.map_err(|e| {
            tracing::error!(error = %e, "cannot store a submitted job");
            HangarError::new(ErrorCode::Internal, format!("the job could not be stored, nothing was run: {e}"))
        })?;
        let (exec, log_path, result_dir) = (paths.exec_id, log_of(task_id), result_of(task_id));
        Ok((task_id, exec, log_path, result_dir))
    }

    fn dequeue(&self, group: &str) {
        if let Some(g) = lock(&self.groups).get_mut(group) {
            g.queued = g.queued.saturating_sub(1);
        }
    }

    async fn run(
        self: Arc<Self>,
        job: Prepared,
        events: mpsc::UnboundedReceiver<TaskEvent>,
        kill: watch::Receiver<bool>,
        progress_info: Arc<Mutex<Value>>,
    ) {
        let task_id = job.task_id;
        let mut log = JobLog::open(&job.log_path).await;
        log.feed = Some(job.feed.clone());
        let mut metrics = Map::new();
        metrics.insert("submitTime".into(), json!(now_ms()));
        let outcome = self.run_inner(&job, &mut log, &mut metrics, events, kill, progress_info).await;
        self.finish_job(task_id, &job.exec_id, &job.feed, &mut log, metrics, outcome).await;
    }

    /// Store a job's end, tell its followers, and forget it.
    async fn finish_job(
        &self,
        task_id: i64,
        exec_id: &str,
        feed: &tokio::sync::broadcast::Sender<Value>,
        log: &mut JobLog,
        mut metrics: Map<String, Value>,
        outcome: Result<(JobStatus, Option<HangarError>), HangarError>,
    ) {
        let (status, error) = match outcome {
            Ok(s) => s,
            Err(e) => (JobStatus::Failed, Some(e)),
        };
        metrics.insert("completeTime".into(), json!(now_ms()));
        match &error {
            Some(e) if status != JobStatus::Succeed => {
                log.line(Level::Error, &format!("job {exec_id} ended {status}: {}", e.message)).await
            }
            _ => log.line(Level::Info, &format!("job {exec_id} ended {status}")).await,
        }
        log.flush().await;
        let progress = if status == JobStatus::Succeed { Some(1.0) } else { None };
        // A job whose log was lost says so, even when it succeeded.
        let error = match (&log.error, error) {
            (Some(why), Some(e)) if status != JobStatus::Succeed => {
                Some(HangarError::new(e.code, format!("{}; and {why}", e.message)))
            }
            (Some(why), _) => Some(HangarError::internal(format!("the job ended {status}, but {why}"))),
            (None, e) => e,
        };
        let lost_log = log.error.is_some();
        let err = error
            .as_ref()
            .filter(|_| status != JobStatus::Succeed || lost_log)
            .map(|e| (e.code.number(), e.message.as_str()));
        let metrics = Value::Object(metrics).to_string();
        if let Err(e) = self.store.update_status(task_id, status, progress, err, Some(&metrics), now_ms()).await {
            // A job never stays unfinished in the store: keep trying (a full
            // disk that gets room again) while this process lives.
            tracing::error!(task_id, error = %e, "cannot store the final job status; retrying until it can");
            let store = self.store.clone();
            let err = err.map(|(code, msg)| (code, msg.to_string()));
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(200);
                loop {
                    tokio::time::sleep(backoff).await;
                    let e = err.as_ref().map(|(c, m)| (*c, m.as_str()));
                    match store.update_status(task_id, status, progress, e, Some(&metrics), now_ms()).await {
                        Ok(_) => {
                            tracing::info!(task_id, %status, "stored the final job status at last");
                            return;
                        }
                        Err(e) => tracing::debug!(task_id, error = %e, "final job status still not stored"),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            });
        }
        let desc = error.as_ref().filter(|_| status != JobStatus::Succeed || lost_log).map(|e| e.message.clone());
        let _ = feed.send(json!({"type": "end", "status": status.as_str(), "errDesc": desc}));
        lock(&self.jobs).remove(&task_id);
        tracing::info!(task_id, %status, "job finished");
    }

    async fn run_inner(
        &self,
        job: &Prepared,
        log: &mut JobLog,
        metrics: &mut Map<String, Value>,
        mut events: mpsc::UnboundedReceiver<TaskEvent>,
        mut kill: watch::Receiver<bool>,
        progress_info: Arc<Mutex<Value>>,
    ) -> Result<(JobStatus, Option<HangarError>), HangarError> {
        let task_id = job.task_id;
        log.line(
            Level::Info,
            &format!(
                "Your job is accepted, jobID is {} and taskID is {task_id}. Please wait it to be scheduled",
                job.exec_id
            ),
        )
        .await;
        let slots = lock(&self.groups).get(&job.group).map(|g| g.slots.clone());
        let mut shutdown = self.shutting_down.subscribe();
        let cancelled =
            |why: &str| Ok((JobStatus::Cancelled, Some(HangarError::new(ErrorCode::InvalidRequest, why.to_string()))));
        let queue_timeout = label_seconds(&job.labels, "jobQueuingTimeout")?;
        let queue_deadline = async {
            match queue_timeout {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let permit = match slots {
            Some(s) => tokio::select! {
                p = s.acquire_owned() => p.ok(),
                _ = queue_deadline => {
                    self.dequeue(&job.group);
                    let secs = queue_timeout.map_or(0, |d| d.as_secs());
                    return Ok((JobStatus::Timeout, Some(HangarError::new(ErrorCode::Timeout, format!("the job waited in its queue longer than jobQueuingTimeout = {secs} s")))));
                }
                _ = fired(&mut kill) => { self.dequeue(&job.group); return cancelled("killed by user before it was scheduled"); }
                _ = fired(&mut shutdown) => { self.dequeue(&job.group); return Err(HangarError::new(ErrorCode::ShuttingDown, "the server shut down before the job was scheduled")); }
            },
            None => None,
        };
        self.dequeue(&job.group);
        let _permit = permit;
        self.store.update_status(task_id, JobStatus::Scheduled, None, None, None, now_ms()).await?;
        let _ = job.feed.send(json!({"type": "status", "status": "Scheduled"}));
        metrics.insert("scheduleTime".into(), json!(now_ms()));
        log.line(
            Level::Info,
            &format!(
                "job is scheduled; asking the LinkisManager for an engine with labels {:?}",
                job.labels.to_linkis_list()
            ),
        )
        .await;

        let ask = AskRequest {
            user: job.user.clone(),
            labels: job.labels.clone(),
            properties: job.startup.clone(),
            timeout: self.cfg.ask_timeout,
        };
        let asked_at = Instant::now();
        let grant = tokio::select! {
            g = self.ask_engine(task_id, &ask, log, &job.feed) => g?,
            _ = fired(&mut kill) => return cancelled("killed by user while waiting for an engine"),
            _ = fired(&mut shutdown) => return Err(HangarError::new(ErrorCode::ShuttingDown, "the server shut down while the job waited for an engine")),
        };
        let result = self
            .run_on_engine(job, log, metrics, &grant, asked_at, &mut events, &mut kill, &mut shutdown, progress_info)
            .await;
        self.manager.unlock(&grant).await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_on_engine(
        &self,
        job: &Prepared,
        log: &mut JobLog,
        metrics: &mut Map<String, Value>,
        grant: &EngineGrant,
        asked_at: Instant,
        events: &mut mpsc::UnboundedReceiver<TaskEvent>,
        kill: &mut watch::Receiver<bool>,
        shutdown: &mut watch::Receiver<bool>,
        progress_info: Arc<Mutex<Value>>,
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
        self.store.set_running(task_id, &assignment, &Value::Object(metrics.clone()).to_string(), now_ms()).await?;
        let _ = job.feed.send(json!({"type": "status", "status": "Running"}));
        let req = TaskExecuteRequest {
            task_id,
            exec_id: job.exec_id.clone(),
            code: job.code.clone(),
            lock: grant.lock.clone(),
            run_type: job.run_type.clone(),
            user: job.user.clone(),
            properties: job.runtime.clone(),
            result_dir: job.result_dir.display().to_string(),
            callback_url: self.cfg.callback_url.clone(),
        };
        prepare_result_dir(&self.cfg.results_dir, &job.result_dir, grant.account).await?;
        // From now on only this engine's events reach the job.
        if let Some(h) = lock(&self.jobs).get(&task_id) {
            let _ = h.ticket.set(grant.ticket_id.clone());
        }
        let mut engine = engine;
        if let Err(e) =
            self.manager.engine_client().call(&grant.instance, grant.key.expose(), &EngineRequest::Execute(req)).await
        {
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
    async fn follow(
        &self,
        task_id: i64,
        feed: &tokio::sync::broadcast::Sender<Value>,
        log: &mut JobLog,
        metrics: &mut Map<String, Value>,
        grant: &EngineGrant,
        run_timeout: Option<Duration>,
        engine: &mut watch::Receiver<hangar_manager::EngineView>,
        events: &mut mpsc::UnboundedReceiver<TaskEvent>,
        kill: &mut watch::Receiver<bool>,
        shutdown: &mut watch::Receiver<bool>,
        progress_info: Arc<Mutex<Value>>,
    ) -> Result<(JobStatus, Option<HangarError>), HangarError> {
        let mut kill_deadline: Option<tokio::time::Instant> = None;
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
                    let _ = self.manager.engine_client().call(&grant.instance, grant.key.expose(), &EngineRequest::Kill { task_id }).await;
                    return Ok((JobStatus::Timeout, Some(HangarError::new(ErrorCode::Timeout, format!("the job ran longer than jobRunningTimeout = {secs} s")))));
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { return Err(HangarError::internal("job event channel closed")) };
                    match ev {
                        TaskEvent::Log { lines, .. } => log.raw(&lines).await,
                        TaskEvent::RunningInfo(info) => {
                            *lock(&progress_info) = serde_json::to_value(&info.progress_info).unwrap_or_else(|_| json!([]));
                            let _ = feed.send(json!({
                                "type": "progress", "progress": info.progress, "progressInfo": info.progress_info,
                                "resource": info.resource.to_linkis_json(), "engineMetrics": info.metrics,
                            }));
                            metrics.insert("engineMetrics".into(), serde_json::to_value(&info.metrics).unwrap_or_default());
                            metrics.insert("resource".into(), info.resource.to_linkis_json());
                            if last_progress_write.elapsed() >= Duration::from_millis(500) {
                                last_progress_write = Instant::now();
                                let m = Value::Object(metrics.clone()).to_string();
                                self.store.set_progress(task_id, info.progress as f64, &m, now_ms()).await?;
                            }
                        }
                        TaskEvent::ResultSet { alias, rows, .. } => {
                            let _ = feed.send(json!({"type": "resultSet", "alias": alias, "rows": rows}));
                            log.line(Level::Info, &format!("result set _{alias}.dolphin written with {rows} rows")).await;
                        }
                        TaskEvent::Status { status, error, .. } => {
                            if status.is_completed() {
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
                                TaskEvent::Status { status, error, .. } if status.is_completed() => {
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
                    log.line(Level::Warn, "kill requested by user").await;
                    kill_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3));
                    if let Err(e) = self.manager.engine_client().call(&grant.instance, grant.key.expose(), &EngineRequest::Kill { task_id }).await {
                        tracing::debug!(error = %e, "kill request to engine failed");
                    }
                }
                _ = kill_timer => {
                    return Ok((JobStatus::Cancelled, Some(HangarError::new(ErrorCode::InvalidRequest, "killed by user (engine did not confirm in 3 s)"))));
                }
                _ = fired(shutdown) => {
                    let _ = self.manager.engine_client().call(&grant.instance, grant.key.expose(), &EngineRequest::Kill { task_id }).await;
                    return Err(HangarError::new(ErrorCode::ShuttingDown, "the server shut down while the job ran"));
                }
            }
        }
    }

    /// Follow a job of an earlier process again (see [`Entrance::recover`]).
    pub(crate) fn reattach(self: &Arc<Self>, j: hangar_store::JobRecord) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (kill_tx, kill_rx) = watch::channel(false);
        let progress_info = Arc::new(Mutex::new(json!([])));
        let (feed, _) = tokio::sync::broadcast::channel(1024);
        lock(&self.jobs).insert(
            j.id,
            JobHandle {
                events: events_tx,
                feed: feed.clone(),
                kill: kill_tx,
                progress_info: progress_info.clone(),
                ticket: Arc::new(std::sync::OnceLock::from(j.ticket_id.clone().unwrap_or_default())),
            },
        );
        // It still runs in its group: it holds one of the group's running slots.
        let slot = serde_json::from_str::<LabelSet>(&j.labels)
            .ok()
            .and_then(|l| Some((l.user_creator().ok()?, l.engine_type().ok()?)))
            .map(|(uc, et)| format!("{}_{}_{}", uc.creator, uc.user, et.engine))
            .and_then(|group| {
                let mut groups = lock(&self.groups);
                let g = groups.entry(group).or_insert_with(|| Group {
                    slots: Arc::new(tokio::sync::Semaphore::new(self.cfg.max_running_per_group.max(1))),
                    queued: 0,
                });
                g.slots.clone().try_acquire_owned().ok()
            });
        let this = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut log = JobLog::open(Path::new(&j.log_path)).await;
            log.feed = Some(feed.clone());
            let mut metrics: Map<String, Value> = serde_json::from_str(&j.metrics).unwrap_or_default();
            metrics.insert("reattached".into(), json!(true));
            let outcome =
                this.reattach_inner(&j, &feed, &mut log, &mut metrics, events_rx, kill_rx, progress_info).await;
            this.finish_job(j.id, &j.exec_id, &feed, &mut log, metrics, outcome).await;
        });
    }

    #[allow(clippy::too_many_arguments)]
    async fn reattach_inner(
        &self,
        j: &hangar_store::JobRecord,
        feed: &tokio::sync::broadcast::Sender<Value>,
        log: &mut JobLog,
        metrics: &mut Map<String, Value>,
        mut events: mpsc::UnboundedReceiver<TaskEvent>,
        mut kill: watch::Receiver<bool>,
        progress_info: Arc<Mutex<Value>>,
    ) -> Result<(JobStatus, Option<HangarError>), HangarError> {
        let instance = j.engine_instance.clone().unwrap_or_default();
        let ticket = j.ticket_id.clone().unwrap_or_default();
        log.line(Level::Warn, &format!("the server restarted; re-attaching to engine {instance} (ticket {ticket})"))
            .await;
        let lost = |why: String| HangarError::new(ErrorCode::EngineLost, why);
        let deadline = Instant::now() + self.cfg.reattach_timeout;
        // Has the engine rejoined the manager (its key is known then), and
        // where does the task stand?
        let (status, error, lock_token, watch, key) = loop {
            let key = self.manager.engine_key(&ticket);
            let reply = match &key {
                Some(k) => {
                    self.manager.engine_client().call(&instance, k, &EngineRequest::TaskStatus { task_id: j.id }).await
                }
                None => Err(HangarError::new(ErrorCode::EngineLost, "the engine has not rejoined yet")),
            };
            match reply {
                Ok(EngineReply::TaskStatus { status: None, .. }) => {
                    return Err(lost(format!("engine {instance} no longer knows this job's task")));
                }
                Ok(EngineReply::TaskStatus { status: Some(s), error, lock }) => {
                    let watch = self.manager.watch_engine(&ticket);
                    if s.is_completed() || watch.is_some() {
                        break (s, error, lock, watch, key.unwrap_or_default());
                    }
                }
                Ok(other) => return Err(lost(format!("engine {instance} answered {other:?}"))),
                Err(_) if self.manager.has_ended(&ticket) => {
                    return Err(lost(format!("engine {instance} (ticket {ticket}) ended while the server was down")));
                }
                Err(e) => tracing::debug!(task_id = j.id, error = %e, "engine not reachable yet"),
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
            key: hangar_protocol::credential::Secret(key),
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
                // It ended while the server was down: keep what was delivered, then its end.
                while let Ok(ev) = events.try_recv() {
                    if let TaskEvent::Log { lines, .. } = ev {
                        log.raw(&lines).await;
                    }
                }
                let err = error.map(|m| HangarError::new(ErrorCode::Internal, m));
                Ok((status, err))
            }
        };
        if !grant.lock.is_empty() {
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

    pub(crate) fn progress_info(&self, task_id: i64) -> Value {
        lock(&self.jobs).get(&task_id).map(|h| lock(&h.progress_info).clone()).unwrap_or_else(|| json!([]))
    }
}

/// Params as job history keeps them: values of secret keys replaced, and
/// passwords inside URLs (`jdbc.url = postgresql://u:pw@h/db`) masked.
fn redact_secrets(v: Value) -> Value {
    match v {
        Value::String(s) => match hangar_protocol::mask_url_credentials(&s) {
            std::borrow::Cow::Owned(masked) => Value::String(masked),
            std::borrow::Cow::Borrowed(_) => Value::String(s),
        },
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    if hangar_protocol::is_secret_key(&k) && !v.is_object() {
                        (k, json!("******"))
                    } else {
                        (k, redact_secrets(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(redact_secrets).collect()),
        other => other,
    }
}

/// Create the job's result folder; when this process is root and the job's
/// user exists on the host, hand it to that user (engines may run as them).
/// Create a task's result folder below the results root without following
/// a link: parents root-owned and traverse-only, the folder itself private to
/// the account the engine runs as (it writes the result sets there).
async fn prepare_result_dir(
    root: &Path,
    dir: &Path,
    account: Option<hangar_protocol::rpc::OsAccount>,
) -> Result<(), HangarError> {
    let root = root.to_path_buf();
    let rel = dir.strip_prefix(&root).map_err(|_| HangarError::internal("result folder outside the results root"))?;
    let rel = rel.to_path_buf();
    let me = nix::unistd::geteuid().as_raw();
    // Only a root server hands folders to other accounts.
    let owner = account.filter(|a| a.uid != me && me == 0).map(|a| (a.uid, a.gid));
    tokio::task::spawn_blocking(move || {
        hangar_fsguard::create_dirs(
            &root,
            &rel,
            hangar_fsguard::Perms::mode(0o711),
            hangar_fsguard::Perms { mode: 0o700, owner },
        )
        .map(drop)
        .map_err(|e| HangarError::internal(format!("cannot create the result folder: {e}")))
    })
    .await
    .map_err(|e| HangarError::internal(e.to_string()))?
}

/// A job-strategy label in seconds (`jobQueuingTimeout`, `jobRunningTimeout`).
fn label_seconds(labels: &LabelSet, key: &str) -> Result<Option<Duration>, HangarError> {
    match labels.get(key) {
        None | Some("") => Ok(None),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err(HangarError::invalid(format!("label {key} must be a positive number of seconds, got '{v}'"))),
        },
    }
}

/// Resolves once the flag is set (or its sender is gone).
async fn fired(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn hangar_engineconn_plugin_run_types(m: &hangar_manager::Manager, engine: &str) -> Vec<&'static str> {
    m.plugins().iter().find(|p| p.engine_type() == engine).map(|p| p.run_types().to_vec()).unwrap_or_default()
}

/// The job's log file; writes never fail the job (a warning is traced instead).
pub(crate) struct JobLog {
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    /// Lines written so far (the `fromLine` of the next one).
    lines: u64,
    feed: Option<tokio::sync::broadcast::Sender<Value>>,
    /// Why the log could not be written, the first time it could not.
    pub(crate) error: Option<String>,
}

impl JobLog {
    async fn open(path: &Path) -> Self {
        if let Some(dir) = path.parent() {
            let _ = tokio::fs::create_dir_all(dir).await;
        }
        let file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await;
        match file {
            Ok(f) => Self { file: Some(tokio::io::BufWriter::new(f)), lines: 0, feed: None, error: None },
            Err(e) => {
                let why = format!("cannot open the job log {}: {e}", path.display());
                tracing::error!("{why}");
                Self { file: None, lines: 0, feed: None, error: Some(why) }
            }
        }
    }

    async fn raw(&mut self, lines: &[String]) {
        // Whatever an engine prints, a password written in a URL never reaches the log.
        let masked: Vec<String>;
        let lines = if lines.iter().any(|l| hangar_protocol::has_url_credentials(l)) {
            masked = lines.iter().map(|l| hangar_protocol::mask_url_credentials(l).into_owned()).collect();
            &masked[..]
        } else {
            lines
        };
        if let Some(f) = &mut self.file {
            let mut written = Ok(());
            for l in lines {
                if written.is_ok() {
                    written = f.write_all(l.as_bytes()).await;
                }
                if written.is_ok() {
                    written = f.write_all(b"\n").await;
                }
            }
            if written.is_ok() {
                written = f.flush().await;
            }
            if let Err(e) = written
                && self.error.is_none()
            {
                let why = format!("cannot write the job log: {e}");
                tracing::error!("{why}");
                self.error = Some(why);
            }
        }
        if let Some(feed) = &self.feed {
            let _ = feed.send(json!({"type": "log", "fromLine": self.lines, "lines": lines}));
        }
        self.lines += lines.len() as u64;
    }

    pub(crate) async fn line(&mut self, level: Level, msg: &str) {
        self.raw(&[logline::format(level, msg)]).await;
    }

    async fn flush(&mut self) {
        if let Some(f) = &mut self.file
            && let Err(e) = f.flush().await
            && self.error.is_none()
        {
            let why = format!("cannot write the job log: {e}");
            tracing::error!("{why}");
            self.error = Some(why);
        }
    }
}

/// Append one line to a job log outside a runner (recovery).
pub(crate) async fn append_log_line(path: &str, level: Level, msg: &str) {
    if path.is_empty() {
        return;
    }
    let mut log = JobLog::open(Path::new(path)).await;
    log.line(level, msg).await;
    log.flush().await;
}
