//! Submit and the job runner.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_manager::AskRequest;
use hangar_protocol::label::{CODE_TYPE, USER_CREATOR};
use hangar_protocol::logline::Level;
use hangar_protocol::rpc::{JobProgressInfo, TaskEvent};
use hangar_protocol::{ErrorCode, HangarError, JobStatus, LabelSet, exec_id, now_ms};
use hangar_store::NewJob;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

use crate::auth::Caller;
use crate::joblog::JobLog;
use crate::run::fired;
use crate::wire::Scalar;
use crate::wire::jobs::SubmitRequest;
use crate::{Entrance, JobHandle, lock};

/// A validated submission, ready to run.
pub(crate) struct Prepared {
    /// What `/entrance/{execID}/events` subscribers see.
    pub feed: crate::feed::Feed,
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

/// A map of scalars as the text the engine gets.
pub(crate) fn texts(m: Option<BTreeMap<String, Scalar>>) -> BTreeMap<String, String> {
    m.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_text())).collect()
}

impl Entrance {
    /// Validate, persist and queue a job. Returns `(execID, taskID)`.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        caller: &Caller,
        req: SubmitRequest,
    ) -> Result<(String, i64), HangarError> {
        if *self.shutting_down.borrow() {
            return Err(HangarError::new(ErrorCode::ShuttingDown, "the server is shutting down and takes no new jobs"));
        }
        // `executionContent` (submit) or the legacy 0.x `executionCode` + `runType` (execute).
        let (code, run_type) = match req.execution_content {
            Some(c) => (c.code, c.run_type),
            None => (req.execution_code, req.run_type),
        };
        let code = code.ok_or_else(|| HangarError::invalid("executionContent.code is required"))?;
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
        let labels_json = match &req.labels {
            Some(m) if !m.is_empty() => m,
            _ => return Err(HangarError::invalid("labels is null: send at least {\"engineType\": \"shell-1\"}")),
        };
        let mut labels = LabelSet::from_json(labels_json)?;
        labels.engine_type()?;
        let execute_user = match req.execute_user.as_deref().filter(|s| !s.is_empty()) {
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
        if let Some(rt) = run_type.as_deref().map(str::trim).filter(|rt| !rt.is_empty())
            && !labels.contains(CODE_TYPE)
        {
            labels.insert(CODE_TYPE, rt.to_string())?;
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
        hangar_engineconn_plugin::find_plugin(&self.plugins, &labels)?;
        label_seconds(&labels, "jobQueuingTimeout")?;
        label_seconds(&labels, "jobRunningTimeout")?;
        let et = labels.engine_type()?;
        let plugin = self.run_types(&et.engine);
        if !plugin.iter().any(|r| *r == run_type) {
            return Err(HangarError::invalid(format!(
                "engine type {et} does not run codeType '{run_type}'; it runs {}",
                plugin.join(", ")
            )));
        }
        let params = req.params.unwrap_or_default();
        let stored_params = serde_json::to_value(&params).unwrap_or_else(|_| json!({}));
        let variables = texts(params.variable);
        let code = crate::vars::substitute(&code, &variables, matches!(run_type.as_str(), "shell" | "sh"))?;
        let conf = params.configuration.unwrap_or_default();
        let (startup, runtime) = (texts(conf.startup), texts(conf.runtime));
        let source = Value::Object(req.source.unwrap_or_default());
        // Job history keeps the params, but never a password in them.
        let params = redact_secrets(stored_params);

        let group = format!("{}_{}_{}", uc.creator, uc.user, et.engine);
        self.with_group(&group, |g| {
            if g.queued >= self.cfg.max_queued_per_group {
                return Err(HangarError::new(
                    ErrorCode::Overloaded,
                    format!("the queue of group {group} is full ({} jobs waiting); try again later", g.queued),
                ));
            }
            g.queued += 1;
            Ok(())
        })?;
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
                &group,
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
            feed: crate::feed::JobFeed::new(),
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
        let progress_info = Arc::new(Mutex::new(Vec::new()));
        lock(&self.jobs).insert(
            prepared.task_id,
            JobHandle {
                events: events_tx,
                feed: prepared.feed.clone(),
                kill: kill_tx,
                progress_info: progress_info.clone(),
                ticket: Default::default(),
                key: Default::default(),
                lost: Default::default(),
                result_dir: prepared.result_dir.clone(),
                engine_unlocked: Default::default(),
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
        group: &str,
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
            owner: self.cfg.owner_id.clone(),
            group: group.to_string(),
            lease_until: created + i64::try_from(self.cfg.job_lease.as_millis()).unwrap_or(i64::MAX / 2),
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

    /// Forget a job whose lease another instance took: nothing is written.
    pub(crate) fn let_go(&self, task_id: i64) {
        lock(&self.jobs).remove(&task_id);
        tracing::warn!(task_id, "{}", crate::schedule::LEASE_LOST);
    }

    pub(crate) fn dequeue(&self, group: &str) {
        if let Some(g) = lock(&self.groups).get_mut(group) {
            g.queued = g.queued.saturating_sub(1);
        }
    }

    async fn run(
        self: Arc<Self>,
        job: Prepared,
        events: mpsc::UnboundedReceiver<TaskEvent>,
        kill: watch::Receiver<bool>,
        progress_info: Arc<Mutex<Vec<JobProgressInfo>>>,
    ) {
        let task_id = job.task_id;
        let mut log = JobLog::open(&job.log_path).await;
        log.feed = Some(job.feed.clone());
        let mut metrics = Map::new();
        metrics.insert("submitTime".into(), json!(now_ms()));
        let outcome = self.run_inner(&job, &mut log, &mut metrics, events, kill, progress_info).await;
        if matches!(&outcome, Err(e) if crate::schedule::is_lease_lost(e)) {
            return self.let_go(task_id);
        }
        self.finish_job(task_id, &job.exec_id, &job.feed, &mut log, metrics, outcome).await;
    }

    /// Store a job's end, tell its followers, and forget it.
    pub(crate) async fn finish_job(
        &self,
        task_id: i64,
        exec_id: &str,
        feed: &crate::feed::Feed,
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
        let exit_code = metrics.get(crate::run::EXIT_CODE).cloned().unwrap_or(Value::Null);
        let metrics = Value::Object(metrics).to_string();
        if let Err(e) =
            self.store.update_status(task_id, &self.cfg.owner_id, status, progress, err, Some(&metrics), now_ms()).await
        {
            // A job never stays unfinished in the store: keep trying (a full
            // disk that gets room again) while this process lives.
            tracing::error!(task_id, error = %e, "cannot store the final job status; retrying until it can");
            let store = self.store.clone();
            let owner = self.cfg.owner_id.clone();
            let err = err.map(|(code, msg)| (code, msg.to_string()));
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(200);
                loop {
                    tokio::time::sleep(backoff).await;
                    let e = err.as_ref().map(|(c, m)| (*c, m.as_str()));
                    match store.update_status(task_id, &owner, status, progress, e, Some(&metrics), now_ms()).await {
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
        feed.send(json!({"type": "end", "status": status.as_str(), "errDesc": desc, "exitCode": exit_code}));
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
        progress_info: Arc<Mutex<Vec<JobProgressInfo>>>,
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
        let mut shutdown = self.shutting_down.subscribe();
        let cancelled =
            |why: &str| Ok((JobStatus::Cancelled, Some(HangarError::new(ErrorCode::InvalidRequest, why.to_string()))));
        // The parameter configuration, read once: the group's maximum and the ask's startup parameters.
        let applied = self.applied(&job.labels, &job.startup).await?;
        let _permit = match self.wait_for_slot(job, applied.max_running, &mut kill, &mut shutdown).await? {
            crate::schedule::SlotWait::Got(permit) => permit,
            crate::schedule::SlotWait::End(status, why) => return Ok((status, why)),
        };
        job.feed.send(json!({"type": "status", "status": "Scheduled"}));
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
            properties: applied.startup,
            timeout: self.cfg.ask_timeout,
        };
        let asked_at = Instant::now();
        let grant = tokio::select! {
            g = self.ask_engine(task_id, &ask, log, &job.feed) => g?,
            _ = fired(&mut kill) => { self.killed(task_id)?; return cancelled("killed by user while waiting for an engine") }
            _ = fired(&mut shutdown) => { self.killed(task_id)?; return Err(HangarError::new(ErrorCode::ShuttingDown, "the server shut down while the job waited for an engine")) }
        };
        let result = self
            .run_on_engine(job, log, metrics, &grant, asked_at, &mut events, &mut kill, &mut shutdown, progress_info)
            .await;
        // An instance that lost the job's lease leaves the engine to its new owner.
        if !matches!(&result, Err(e) if crate::schedule::is_lease_lost(e)) {
            let released = lock(&self.jobs)
                .get(&task_id)
                .is_some_and(|h| h.engine_unlocked.load(std::sync::atomic::Ordering::Relaxed));
            if released {
                self.manager.released(&grant).await;
            } else {
                self.manager.unlock(&grant).await;
            }
        }
        result
    }

    pub(crate) fn progress_info(&self, task_id: i64) -> Vec<JobProgressInfo> {
        lock(&self.jobs).get(&task_id).map(|h| lock(&h.progress_info).clone()).unwrap_or_default()
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

/// A job-strategy label in seconds (`jobQueuingTimeout`, `jobRunningTimeout`).
pub(crate) fn label_seconds(labels: &LabelSet, key: &str) -> Result<Option<Duration>, HangarError> {
    match labels.get(key) {
        None | Some("") => Ok(None),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err(HangarError::invalid(format!("label {key} must be a positive number of seconds, got '{v}'"))),
        },
    }
}

impl Entrance {
    /// The run types engine type `engine` takes.
    fn run_types(&self, engine: &str) -> Vec<&'static str> {
        self.plugins.iter().find(|p| p.engine_type() == engine).map(|p| p.run_types().to_vec()).unwrap_or_default()
    }
}
