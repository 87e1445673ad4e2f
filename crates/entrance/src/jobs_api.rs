//! Job endpoints: `entrance/submit` (and 0.x `execute`), status, progress,
//! log, events, kill, killJobs, `jobhistory/{id}/get`; and `user/userInfo`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use hangar_protocol::logline;
use hangar_protocol::{Envelope, HangarError};
use hangar_store::JobRecord;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Entrance;
use crate::api::{error_reply, method_of, reply};
use crate::wire::jobs::*;

pub(crate) fn routes(r: OpenApiRouter<Arc<Entrance>>) -> OpenApiRouter<Arc<Entrance>> {
    r.routes(routes!(submit))
        .routes(routes!(execute))
        .routes(routes!(user_info))
        .routes(routes!(status))
        .routes(routes!(progress))
        .routes(routes!(progress_with_resource))
        .routes(routes!(log))
        .routes(routes!(events))
        .routes(routes!(kill))
        .routes(routes!(kill_jobs))
        .routes(routes!(job_history))
        .routes(routes!(job_list))
}

async fn submit_body(
    e: &Arc<Entrance>,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let caller = e.caller(headers).await?;
        let body = body.map_err(|r| {
            HangarError::invalid(format!(
                "request body refused: {} (code may be at most {} bytes)",
                r.body_text(),
                e.cfg.max_code_bytes
            ))
        })?;
        let req: SubmitRequest = crate::wire::body(&body)?;
        let (exec_id, task_id) = e.submit(&caller, req).await?;
        Ok(SubmitData { exec_id, task_id })
    }
    .await;
    reply(uri, result)
}

/// Submit a job: it is stored before the answer, then queued.
#[utoipa::path(post, path = "/api/rest_j/v1/entrance/submit", tag = "entrance", request_body = SubmitRequest,
    responses((status = 200, description = "The job is stored and queued", body = Envelope<SubmitData>)))]
async fn submit(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    submit_body(&e, &uri, &headers, body).await
}

/// Submit a job, Linkis 0.x style (`executionCode` and `runType` at the top).
#[utoipa::path(post, path = "/api/rest_j/v1/entrance/execute", tag = "entrance", request_body = SubmitRequest,
    responses((status = 200, description = "The job is stored and queued", body = Envelope<SubmitData>)))]
async fn execute(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    submit_body(&e, &uri, &headers, body).await
}

/// Who the caller is.
#[utoipa::path(get, path = "/api/rest_j/v1/user/userInfo", tag = "user",
    responses((status = 200, description = "The caller", body = Envelope<UserInfo>)))]
async fn user_info(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    reply(&uri, e.caller(&headers).await.map(|c| UserInfo { user_name: c.user, is_admin: c.admin }))
}

/// Kill several jobs: one envelope per execID.
#[utoipa::path(post, path = "/api/rest_j/v1/entrance/{id}/killJobs", tag = "entrance", request_body = KillJobsRequest,
    params(("id" = String, Path, description = "Any execID (Linkis clients send the first)")),
    responses((status = 200, description = "One outcome per execID", body = Envelope<KillJobsData>)))]
async fn kill_jobs(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    Path(_id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let req: KillJobsRequest = crate::wire::body(&body)?;
        let mut messages = Vec::new();
        for id in req.id_list {
            let one = async {
                let job = e.job_by_exec_id(&caller, &id).await?;
                if job.status.is_completed() {
                    return Err(HangarError::invalid(format!("job {id} already ended as {}", job.status)));
                }
                e.kill_job(&job).await
            }
            .await;
            let method = format!("/api/entrance/{id}/kill");
            let outcome = match one {
                Ok(()) => serde_json::to_value(KillOutcome::ok_msg(method, KILLED, ExecIdData { exec_id: id })),
                Err(err) => serde_json::to_value(Envelope::error(method, &err)),
            };
            messages.push(outcome.unwrap_or_default());
        }
        Ok(KillJobsData { messages })
    }
    .await;
    reply(&uri, result)
}

const KILLED: &str = "Successfully killed the job(成功kill了job)";

/// Server-Sent Events of one job: `status`, `log` (with `fromLine`),
/// `progress`, `resultSet` and a final `end` event.
#[utoipa::path(get, path = "/api/rest_j/v1/entrance/{id}/events", tag = "entrance",
    params(("id" = String, Path, description = "execID")),
    responses((status = 200, description = "An event stream (JSON in each event's data)", content_type = "text/event-stream", body = JobEvent)))]
async fn events(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let job = match async {
        let caller = e.caller(&headers).await?;
        e.job_by_exec_id(&caller, &id).await
    }
    .await
    {
        Ok(j) => j,
        Err(err) => return error_reply(method_of(&uri), &err),
    };
    let end_of = |j: &JobRecord| {
        let metrics: Value = serde_json::from_str(&j.metrics).unwrap_or_default();
        let exit_code = metrics.get(crate::run::EXIT_CODE).cloned().unwrap_or(Value::Null);
        json!({"type": "end", "status": j.status.as_str(), "errDesc": j.err_desc, "exitCode": exit_code})
    };
    // Subscribe before reading the status so no transition falls in between;
    // then the output printed before this subscriber came.
    let feed = crate::lock(&e.jobs).get(&job.id).map(|h| h.feed.clone());
    if feed.is_none() && !job.status.is_completed() {
        // Run by no live instance right now (its owner died; another takes
        // it over soon): its status from the store, until it ends.
        return Sse::new(store_events(e.clone(), job)).keep_alive(KeepAlive::default()).into_response();
    }
    let rx = feed.as_ref().map(|f| f.subscribe());
    let first: Vec<Value> = match (&feed, job.status.is_completed()) {
        (Some(f), false) => {
            std::iter::once(json!({"type": "status", "status": job.status.as_str()})).chain(f.replay()).collect()
        }
        _ => vec![end_of(&job)],
    };
    let done = first.iter().any(|v| v["type"] == "end");
    let state = (first.into_iter(), if done { None } else { rx }, false);
    let event = |v: &Value| Event::default().event(v["type"].as_str().unwrap_or("message")).data(v.to_string());
    let stream = futures_util::stream::unfold(state, move |(mut first, mut rx, finished)| async move {
        if finished {
            return None;
        }
        if let Some(v) = first.next() {
            let end = v["type"] == "end";
            return Some((Ok::<_, std::convert::Infallible>(event(&v)), (first, rx, end)));
        }
        let r = rx.as_mut()?;
        let v = match r.recv().await {
            Ok(v) => v,
            Err(RecvError::Lagged(n)) => json!({"type": "lagged", "missed": n}),
            Err(RecvError::Closed) => return None,
        };
        let end = v["type"] == "end";
        Some((Ok(event(&v)), (first, rx, end)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// The events of a job no instance runs right now: its status as the store
/// has it, every 500 ms, until it ends.
fn store_events(
    e: Arc<Entrance>,
    job: JobRecord,
) -> impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>> {
    use axum::response::sse::Event;
    let event = |v: Value| Event::default().event(v["type"].as_str().unwrap_or("message")).data(v.to_string());
    futures_util::stream::unfold(
        (e, job.id, None::<hangar_protocol::JobStatus>, false),
        move |(e, id, seen, done)| async move {
            if done {
                return None;
            }
            loop {
                let j = e.store.get_job(id).await.ok().flatten()?;
                if j.status.is_completed() {
                    let metrics: Value = serde_json::from_str(&j.metrics).unwrap_or_default();
                    let exit_code = metrics.get(crate::run::EXIT_CODE).cloned().unwrap_or(Value::Null);
                    let end = json!({"type": "end", "status": j.status.as_str(), "errDesc": j.err_desc, "exitCode": exit_code});
                    return Some((Ok(event(end)), (e, id, Some(j.status), true)));
                }
                if seen != Some(j.status) {
                    let v = json!({"type": "status", "status": j.status.as_str()});
                    return Some((Ok(event(v)), (e, id, Some(j.status), false)));
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        },
    )
}

/// A job's status.
#[utoipa::path(get, path = "/api/rest_j/v1/entrance/{id}/status", tag = "entrance",
    params(("id" = String, Path, description = "execID")),
    responses((status = 200, description = "The status", body = Envelope<StatusData>)))]
async fn status(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        Ok(StatusData { status: job.status, exec_id: id })
    }
    .await;
    reply(&uri, result)
}

/// A job's progress (0 to 1) and its steps.
#[utoipa::path(get, path = "/api/rest_j/v1/entrance/{id}/progress", tag = "entrance",
    params(("id" = String, Path, description = "execID")),
    responses((status = 200, description = "The progress", body = Envelope<ProgressData>)))]
async fn progress(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        Ok(ProgressData { progress: job.progress, progress_info: e.progress_info(job.id), exec_id: id })
    }
    .await;
    reply(&uri, result)
}

/// A job's progress with its engine's metrics and resource.
#[utoipa::path(get, path = "/api/rest_j/v1/entrance/{id}/progressWithResource", tag = "entrance",
    params(("id" = String, Path, description = "execID")),
    responses((status = 200, description = "The progress and resource", body = Envelope<ProgressWithResourceData>)))]
async fn progress_with_resource(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        let metrics: Value = serde_json::from_str(&job.metrics).unwrap_or_else(|_| json!({}));
        Ok(ProgressWithResourceData {
            progress: job.progress,
            progress_info: e.progress_info(job.id),
            yarn_metrics: YarnMetrics { yarn_resource: None },
            engine_metrics: metrics.get("engineMetrics").cloned().unwrap_or(Value::Null),
            resource: metrics.get("resource").cloned().unwrap_or(Value::Null),
            exec_id: id,
        })
    }
    .await;
    reply(&uri, result)
}

fn log_slice(text: &str, from_line: usize, size: usize) -> (Vec<&str>, usize) {
    let lines: Vec<&str> = text.lines().skip(from_line).take(size).collect();
    let next = from_line + lines.len();
    (lines, next)
}

/// A page of a job's log.
#[utoipa::path(get, path = "/api/rest_j/v1/entrance/{id}/log", tag = "entrance",
    params(("id" = String, Path, description = "execID"), LogQuery),
    responses((status = 200, description = "Log lines from `fromLine`", body = Envelope<LogData>)))]
async fn log(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let q: LogQuery = crate::wire::query(&uri)?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        let from_line = q.from_line.unwrap_or(0);
        let size = match q.size {
            Some(s) if s < 0 => 10_000,
            Some(s) => usize::try_from(s).unwrap_or(usize::MAX),
            None => 100,
        };
        let text = tokio::fs::read_to_string(&job.log_path).await.unwrap_or_default();
        let (lines, next) = log_slice(&text, from_line, size);
        let log = if q.distinct_level == Some(false) {
            LogText::All(lines.iter().map(|l| format!("{l}\n")).collect())
        } else {
            LogText::Levels(logline::split_levels(lines.iter().copied()))
        };
        Ok(LogData { log, exec_id: id, from_line: next })
    }
    .await;
    reply(&uri, result)
}

/// Kill a job.
#[utoipa::path(method(get, post), path = "/api/rest_j/v1/entrance/{id}/kill", tag = "entrance",
    params(("id" = String, Path, description = "execID")),
    responses((status = 200, description = "The job is being killed", body = Envelope<ExecIdData>)))]
async fn kill(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        if job.status.is_completed() {
            return Err(HangarError::invalid(format!("job {id} already ended as {}", job.status)));
        }
        e.kill_job(&job).await?;
        Ok(ExecIdData { exec_id: id })
    }
    .await;
    match result {
        Ok(data) => Json(Envelope::ok_msg(method_of(&uri), KILLED, data)).into_response(),
        Err(err) => error_reply(method_of(&uri), &err),
    }
}

impl Entrance {
    /// Kill a job running here; else ask whoever runs it, through the store
    /// (its owner sees the request at its next lease renewal, an instance
    /// taking it over at once). A call about a job another live instance
    /// runs is forwarded to it before it comes here (`hangar serve`).
    async fn kill_job(&self, job: &JobRecord) -> Result<(), HangarError> {
        if !self.kill(job.id) && !self.store.request_kill(job.id).await? {
            return Err(HangarError::invalid(format!("job {} already ended", job.exec_id)));
        }
        Ok(())
    }
}

fn task_vo(job: &JobRecord) -> TaskVo {
    let labels: Value = serde_json::from_str(&job.labels).unwrap_or_else(|_| json!({}));
    let label_list: Vec<String> = labels
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    let metrics: Value = serde_json::from_str(&job.metrics).unwrap_or_else(|_| json!({}));
    let running = !job.status.is_completed();
    let end = if running { hangar_protocol::now_ms() } else { job.updated_ms };
    TaskVo {
        task_id: job.id,
        instance: Some(job.owner.clone()).filter(|o| !o.is_empty()),
        exec_id: job.exec_id.clone(),
        stronger_exec_id: job.exec_id.clone(),
        um_user: job.submit_user.clone(),
        execute_user: job.execute_user.clone(),
        engine_instance: job.engine_instance.clone(),
        ecm_instance: job.ecm_instance.clone(),
        ticket_id: job.ticket_id.clone(),
        execution_code: job.code.clone(),
        progress: job.progress,
        log_path: job.log_path.clone(),
        result_location: job.result_location.clone(),
        status: job.status,
        created_time: job.created_ms,
        updated_time: job.updated_ms,
        engine_type: job.engine_type.clone(),
        err_code: if running { None } else { job.err_code },
        err_desc: if running { None } else { job.err_desc.clone() },
        execute_application_name: job.engine_type.split('-').next().unwrap_or("").to_string(),
        request_application_name: job.creator.clone(),
        run_type: job.run_type.clone(),
        params_json: job.params.clone(),
        source_json: job.source.clone(),
        cost_time: (end - job.created_ms).max(0),
        labels: label_list,
        is_reuse: job.is_reuse,
        engine_log_path: metrics.get("engineLogPath").and_then(Value::as_str).map(str::to_string),
        metrics,
        can_retry: false,
        sub_jobs: None,
    }
}

/// A job as job history keeps it.
#[utoipa::path(get, path = "/api/rest_j/v1/jobhistory/{id}/get", tag = "jobhistory",
    params(("id" = String, Path, description = "taskID")),
    responses((status = 200, description = "The job", body = Envelope<TaskData>)))]
async fn job_history(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let task_id: i64 = id.parse().map_err(|_| HangarError::not_found(format!("'{id}' is not a taskID")))?;
        let job = e.owned_job(&caller, task_id).await?;
        Ok(TaskData { task: task_vo(&job) })
    }
    .await;
    reply(&uri, result)
}

/// Job history: the caller's jobs (admins with `isAdminView`: everyone's, or
/// `proxyUser`'s), filtered, newest first.
#[utoipa::path(get, path = "/api/rest_j/v1/jobhistory/list", tag = "jobhistory", params(JobListQuery),
    responses((status = 200, description = "One page of jobs", body = Envelope<JobListData>)))]
async fn job_list(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    const CODE_CHARS: usize = 1000;
    let result = async {
        let caller = e.caller(&headers).await?;
        let q: JobListQuery = crate::wire::query(&uri)?;
        let user = match (caller.admin && q.is_admin_view == Some(true), q.proxy_user.clone()) {
            (true, proxy) => proxy.filter(|p| !p.is_empty()),
            (false, _) => Some(caller.user.clone()),
        };
        let filter = job_filter(q, user)?;
        let (jobs, total) = e.store.list_jobs(&filter).await?;
        let tasks = jobs
            .iter()
            .map(|j| {
                let mut vo = task_vo(j);
                if let Some((cut, _)) = vo.execution_code.char_indices().nth(CODE_CHARS) {
                    vo.execution_code.truncate(cut);
                }
                vo
            })
            .collect();
        Ok(JobListData { tasks, total_page: total })
    }
    .await;
    reply(&uri, result)
}

/// A creator or engine type as the history filters take them (Linkis error 21304 otherwise).
fn history_name(v: Option<String>, what: &str) -> Result<Option<String>, HangarError> {
    match v.filter(|c| !c.is_empty() && c != "all") {
        Some(c) if !c.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) => Err(HangarError::invalid(
            format!("invalid {what} '{c}': letters, digits, '-', '_' and '.' only (Linkis error 21304)"),
        )),
        v => Ok(v),
    }
}

/// The store filter of a `jobhistory/list` query: `taskID` drops every other
/// filter but the user; start == end covers that whole day.
pub(crate) fn job_filter(q: JobListQuery, user: Option<String>) -> Result<hangar_store::JobFilter, HangarError> {
    let page = q.page_now.unwrap_or(1).max(1);
    let page_size = q.page_size.unwrap_or(20).clamp(1, 1000);
    if let Some(id) = q.task_id {
        return Ok(hangar_store::JobFilter { user, task_id: Some(id), page, page_size, ..Default::default() });
    }
    let until = match (q.start_date, q.end_date) {
        (Some(s), Some(e)) if s == e => Some(e + 24 * 3600 * 1000),
        (_, e) => e,
    };
    let text = |v: Option<String>| v.filter(|c| !c.is_empty() && c != "all");
    Ok(hangar_store::JobFilter {
        user,
        status: q.status,
        creator: history_name(q.creator, "creator")?,
        engine: history_name(q.execute_application_name, "executeApplicationName")?,
        since_ms: q.start_date,
        until_ms: until,
        task_id: None,
        instance: text(q.instance),
        engine_instance: text(q.engine_instance),
        run_type: text(q.run_type),
        undone: false,
        min_task_id: None,
        page,
        page_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> JobListQuery {
        let uri: Uri = format!("/x?{s}").parse().expect("uri");
        crate::wire::query(&uri).expect("query")
    }

    #[test]
    fn history_filters() {
        let f = job_filter(q("taskID=7&creator=IDE&status=Running&pageSize=5"), Some("a".into())).expect("f");
        assert_eq!((f.task_id, f.creator, f.status, f.page_size), (Some(7), None, None, 5));
        assert_eq!(f.user.as_deref(), Some("a"));
        let f = job_filter(q("startDate=1000&endDate=1000"), None).expect("f");
        assert_eq!((f.since_ms, f.until_ms), (Some(1000), Some(1000 + 86_400_000)));
        let f =
            job_filter(q("startDate=1000&endDate=2000&runType=shell&engineInstance=h:1&instance=i1"), None).expect("f");
        assert_eq!((f.until_ms, f.run_type.as_deref()), (Some(2000), Some("shell")));
        assert_eq!((f.engine_instance.as_deref(), f.instance.as_deref()), (Some("h:1"), Some("i1")));
        let f = job_filter(q("creator=all&executeApplicationName=shell"), None).expect("f");
        assert_eq!((f.creator, f.engine.as_deref(), f.page, f.page_size), (None, Some("shell"), 1, 20));
        let err = job_filter(q("creator=a%27%20or%201"), None).expect_err("bad creator");
        assert!(err.message.contains("creator"), "{err}");
    }

    #[test]
    fn log_paging() {
        let (l, next) = log_slice("a\nb\nc\n", 1, 1);
        assert_eq!((l, next), (vec!["b"], 2));
        let (l, next) = log_slice("a\nb\nc\n", 5, 10);
        assert_eq!((l.len(), next), (0, 5));
    }
}
