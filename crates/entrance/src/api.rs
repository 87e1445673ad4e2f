//! The REST API in Linkis's shapes, under `/api/rest_j/v1`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hangar_protocol::logline;
use hangar_protocol::rpc::{ENTRANCE_RPC_PATH, RPC_TOKEN_HEADER, TaskEventBatch};
use hangar_protocol::{Envelope, ErrorCode, HangarError, exec_id};
use hangar_store::JobRecord;
use serde_json::{Value, json};

use crate::Entrance;
use crate::auth::Caller;
use crate::files;

pub(crate) const PREFIX: &str = "/api/rest_j/v1";

pub(crate) type Params = Query<HashMap<String, String>>;

pub fn router(entrance: Arc<Entrance>) -> Router {
    // Bodies may exceed the code limit by the JSON around the code; beyond
    // that they are refused with a clear message rather than buffered.
    let body_limit = entrance.cfg.max_code_bytes.saturating_mul(2).saturating_add(1 << 20);
    crate::ops::routes(Router::new())
        .route(&format!("{PREFIX}/user/login"), post(crate::login::login))
        .route(&format!("{PREFIX}/user/logout"), get(crate::login::logout).post(crate::login::logout))
        .route(&format!("{PREFIX}/user/userInfo"), get(user_info))
        .route(&format!("{PREFIX}/entrance/{{id}}/killJobs"), post(kill_jobs))
        .route(&format!("{PREFIX}/entrance/{{id}}/events"), get(events))
        .route(&format!("{PREFIX}/entrance/submit"), post(submit))
        .route(&format!("{PREFIX}/entrance/execute"), post(submit))
        .route(&format!("{PREFIX}/entrance/{{id}}/status"), get(status))
        .route(&format!("{PREFIX}/entrance/{{id}}/progress"), get(progress))
        .route(&format!("{PREFIX}/entrance/{{id}}/progressWithResource"), get(progress_with_resource))
        .route(&format!("{PREFIX}/entrance/{{id}}/log"), get(log))
        .route(&format!("{PREFIX}/entrance/{{id}}/kill"), get(kill).post(kill))
        .route(&format!("{PREFIX}/jobhistory/{{id}}/get"), get(job_history))
        .route(&format!("{PREFIX}/filesystem/getDirFileTrees"), get(dir_file_trees))
        .route(&format!("{PREFIX}/filesystem/openFile"), get(open_file))
        .route(&format!("{PREFIX}/filesystem/openLog"), get(open_log))
        .route(ENTRANCE_RPC_PATH, post(task_events))
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(crate::bml::routes(entrance.manager.material_library().map_or(0, |l| l.max_upload())))
        .fallback(not_found)
        .with_state(entrance)
}

/// Linkis's `method`: `/api` + the path after `/api/rest_j/v1`.
pub(crate) fn method_of(uri: &Uri) -> String {
    let p = uri.path();
    format!("/api{}", p.strip_prefix(PREFIX).unwrap_or(p))
}

pub(crate) fn reply(uri: &Uri, result: Result<Value, HangarError>) -> Response {
    let method = method_of(uri);
    match result {
        Ok(data) => Json(Envelope::ok(method, data)).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::OK);
            (status, Json(Envelope::error(method, &e))).into_response()
        }
    }
}

async fn not_found(uri: Uri) -> Response {
    reply(&uri, Err(HangarError::not_found(format!("no such API: {}", uri.path()))))
}

pub(crate) fn parse_json(body: &Bytes) -> Result<Value, HangarError> {
    if body.is_empty() {
        return Err(HangarError::invalid("request body is empty; send a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| HangarError::invalid(format!("request body is not valid JSON: {e}")))
}

impl Entrance {
    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<Caller, HangarError> {
        crate::auth::authenticate_with(&self.cfg, &self.sessions, headers)
    }

    /// Load a job by taskID and check the caller may see it.
    async fn owned_job(&self, caller: &Caller, task_id: i64) -> Result<JobRecord, HangarError> {
        let job = self
            .store
            .get_job(task_id)
            .await?
            .ok_or_else(|| HangarError::not_found(format!("no job with taskID {task_id}")))?;
        if !caller.admin && job.execute_user != caller.user && job.submit_user != caller.user {
            return Err(HangarError::new(
                ErrorCode::PermissionDenied,
                format!("job {task_id} belongs to another user"),
            ));
        }
        Ok(job)
    }

    async fn job_by_exec_id(&self, caller: &Caller, id: &str) -> Result<JobRecord, HangarError> {
        let parsed = exec_id::parse(id)?;
        let job = self.owned_job(caller, parsed.task_id).await?;
        if job.exec_id != id {
            return Err(HangarError::not_found(format!("no job with execID {id}")));
        }
        Ok(job)
    }
}

async fn submit(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let body = body.map_err(|r| {
            HangarError::invalid(format!(
                "request body refused: {} (code may be at most {} bytes)",
                r.body_text(),
                e.cfg.max_code_bytes
            ))
        })?;
        let body = parse_json(&body)?;
        let (exec, task_id) = e.submit(&caller, &body).await?;
        Ok(json!({"execID": exec, "taskID": task_id}))
    }
    .await;
    reply(&uri, result)
}

async fn user_info(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    reply(&uri, e.caller(&headers).map(|c| json!({"userName": c.user, "isAdmin": c.admin})))
}

/// `POST /entrance/{id}/killJobs` with `{"idList": [execID...], "taskIDList": [...]}`.
async fn kill_jobs(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let body = parse_json(&body)?;
        let ids: Vec<String> = body
            .get("idList")
            .and_then(Value::as_array)
            .ok_or_else(|| HangarError::invalid("idList (an array of execIDs) is required"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let mut messages = Vec::new();
        for id in ids {
            let one = async {
                let job = e.job_by_exec_id(&caller, &id).await?;
                if job.status.is_completed() {
                    return Err(HangarError::invalid(format!("job {id} already ended as {}", job.status)));
                }
                e.kill_job(&job).await
            }
            .await;
            let env = match one {
                Ok(()) => Envelope::ok_msg(
                    format!("/api/entrance/{id}/kill"),
                    "Successfully killed the job(成功kill了job)",
                    json!({"execID": id}),
                ),
                Err(err) => Envelope::error(format!("/api/entrance/{id}/kill"), &err),
            };
            messages.push(serde_json::to_value(env).unwrap_or_default());
        }
        Ok(json!({"messages": messages}))
    }
    .await;
    reply(&uri, result)
}

/// `GET /entrance/{execID}/events`: Server-Sent Events with the job's status
/// changes, log lines (with their `fromLine`), progress / running info,
/// result sets and a final `end` event, so clients need not poll.
async fn events(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let job = match async {
        let caller = e.caller(&headers)?;
        e.job_by_exec_id(&caller, &id).await
    }
    .await
    {
        Ok(j) => j,
        Err(err) => return reply(&uri, Err(err)),
    };
    let end_of = |j: &JobRecord| json!({"type": "end", "status": j.status.as_str(), "errDesc": j.err_desc});
    // Subscribe before reading the status so no transition falls in between.
    let rx = crate::lock(&e.jobs).get(&job.id).map(|h| h.feed.subscribe());
    let first: Vec<Value> = match (&rx, job.status.is_completed()) {
        (Some(_), false) => vec![json!({"type": "status", "status": job.status.as_str()})],
        _ => vec![end_of(&job)],
    };
    let done = first.iter().any(|v| v["type"] == "end");
    let state = (first.into_iter(), if done { None } else { rx }, false);
    let stream = futures_util::stream::unfold(state, |(mut first, mut rx, finished)| async move {
        if finished {
            return None;
        }
        if let Some(v) = first.next() {
            let end = v["type"] == "end";
            return Some((
                Ok::<_, std::convert::Infallible>(
                    Event::default().event(v["type"].as_str().unwrap_or("message")).data(v.to_string()),
                ),
                (first, rx, end),
            ));
        }
        let r = rx.as_mut()?;
        let v = match r.recv().await {
            Ok(v) => v,
            Err(RecvError::Lagged(n)) => json!({"type": "lagged", "missed": n}),
            Err(RecvError::Closed) => return None,
        };
        let end = v["type"] == "end";
        let ev = Event::default().event(v["type"].as_str().unwrap_or("message")).data(v.to_string());
        Some((Ok(ev), (first, rx, end)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

async fn status(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        Ok(json!({"status": job.status.as_str(), "execID": id}))
    }
    .await;
    reply(&uri, result)
}

async fn progress(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        Ok(json!({"progress": job.progress, "execID": id, "progressInfo": e.progress_info(job.id)}))
    }
    .await;
    reply(&uri, result)
}

async fn progress_with_resource(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        let metrics: Value = serde_json::from_str(&job.metrics).unwrap_or_else(|_| json!({}));
        Ok(json!({
            "progress": job.progress,
            "execID": id,
            "progressInfo": e.progress_info(job.id),
            "yarnMetrics": {"yarnResource": null},
            "engineMetrics": metrics.get("engineMetrics").cloned().unwrap_or(Value::Null),
            "resource": metrics.get("resource").cloned().unwrap_or(Value::Null),
        }))
    }
    .await;
    reply(&uri, result)
}

fn log_slice(text: &str, from_line: usize, size: usize) -> (Vec<&str>, usize) {
    let lines: Vec<&str> = text.lines().skip(from_line).take(size).collect();
    let next = from_line + lines.len();
    (lines, next)
}

async fn log(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        let from_line: usize = q.get("fromLine").and_then(|v| v.parse().ok()).unwrap_or(0);
        let size = match q.get("size").and_then(|v| v.parse::<i64>().ok()) {
            Some(s) if s < 0 => 10_000,
            Some(s) => s as usize,
            None => 100,
        };
        let text = tokio::fs::read_to_string(&job.log_path).await.unwrap_or_default();
        let (lines, next) = log_slice(&text, from_line, size);
        let log = if q.get("distinctLevel").map(String::as_str) == Some("false") {
            json!(lines.iter().map(|l| format!("{l}\n")).collect::<String>())
        } else {
            json!(logline::split_levels(lines.iter().copied()))
        };
        Ok(json!({"log": log, "execID": id, "fromLine": next}))
    }
    .await;
    reply(&uri, result)
}

async fn kill(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let job = e.job_by_exec_id(&caller, &id).await?;
        if job.status.is_completed() {
            return Err(HangarError::invalid(format!("job {id} already ended as {}", job.status)));
        }
        e.kill_job(&job).await?;
        Ok(json!({"execID": id}))
    }
    .await;
    match result {
        Ok(data) => {
            Json(Envelope::ok_msg(method_of(&uri), "Successfully killed the job(成功kill了job)", data)).into_response()
        }
        Err(err) => reply(&uri, Err(err)),
    }
}

impl Entrance {
    /// Kill a job running here, or force-end a record left by another process.
    async fn kill_job(&self, job: &JobRecord) -> Result<(), HangarError> {
        if !self.kill(job.id) {
            self.store
                .update_status(
                    job.id,
                    hangar_protocol::JobStatus::Cancelled,
                    None,
                    Some((ErrorCode::InvalidRequest.number(), "Forced Kill task")),
                    None,
                    hangar_protocol::now_ms(),
                )
                .await?;
        }
        Ok(())
    }
}

fn task_vo(job: &JobRecord) -> Value {
    let labels: Value = serde_json::from_str(&job.labels).unwrap_or_else(|_| json!({}));
    let label_list: Vec<String> = labels
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    let metrics: Value = serde_json::from_str(&job.metrics).unwrap_or_else(|_| json!({}));
    let running = !job.status.is_completed();
    let end = if running { hangar_protocol::now_ms() } else { job.updated_ms };
    json!({
        "taskID": job.id,
        "instance": null,
        "execId": job.exec_id,
        "strongerExecId": job.exec_id,
        "umUser": job.submit_user,
        "executeUser": job.execute_user,
        "engineInstance": job.engine_instance,
        "ecmInstance": job.ecm_instance,
        "ticketId": job.ticket_id,
        "executionCode": job.code,
        "progress": job.progress,
        "logPath": job.log_path,
        "resultLocation": job.result_location,
        "status": job.status.as_str(),
        "createdTime": job.created_ms,
        "updatedTime": job.updated_ms,
        "engineType": job.engine_type,
        "errCode": if running { None } else { job.err_code },
        "errDesc": if running { None } else { job.err_desc.clone() },
        "executeApplicationName": job.engine_type.split('-').next().unwrap_or(""),
        "requestApplicationName": job.creator,
        "runType": job.run_type,
        "paramsJson": job.params,
        "sourceJson": job.source,
        "costTime": (end - job.created_ms).max(0),
        "labels": label_list,
        "isReuse": job.is_reuse,
        "metrics": metrics,
        "engineLogPath": metrics.get("engineLogPath").cloned().unwrap_or(Value::Null),
        "canRetry": false,
        "subJobs": null,
    })
}

async fn job_history(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let task_id: i64 = id.parse().map_err(|_| HangarError::not_found(format!("'{id}' is not a taskID")))?;
        let job = e.owned_job(&caller, task_id).await?;
        Ok(json!({"task": task_vo(&job)}))
    }
    .await;
    reply(&uri, result)
}

fn required<'a>(q: &'a HashMap<String, String>, key: &str) -> Result<&'a str, HangarError> {
    q.get(key)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| HangarError::invalid(format!("query parameter {key} is required")))
}

async fn dir_file_trees(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Query(q): Params) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let path = files::result_path(&e.cfg.results_dir, &caller, required(&q, "path")?)?;
        Ok(json!({"dirFileTrees": files::dir_tree(&path)?}))
    }
    .await;
    reply(&uri, result)
}

async fn open_file(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Query(q): Params) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let path = files::result_path(&e.cfg.results_dir, &caller, required(&q, "path")?)?;
        let num = |k: &str, d: usize| -> Result<usize, HangarError> {
            match q.get(k) {
                Some(v) => {
                    v.parse().map_err(|_| HangarError::invalid(format!("{k} must be a positive number, got '{v}'")))
                }
                None => Ok(d),
            }
        };
        let null_value = q.get("nullValue").map(String::as_str).filter(|s| !s.is_empty()).unwrap_or("NULL");
        tokio::task::spawn_blocking({
            let (page, size) = (num("page", 1)?, num("pageSize", 5000)?);
            let null_value = null_value.to_string();
            move || files::open_result(&path, page, size, &null_value)
        })
        .await
        .map_err(|e| HangarError::internal(e.to_string()))?
    }
    .await;
    reply(&uri, result)
}

async fn open_log(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Query(q): Params) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let path = files::log_path(&e.cfg.logs_dir, &caller, required(&q, "path")?)?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|err| HangarError::internal(format!("cannot read log: {err}")))?;
        Ok(json!({"log": logline::split_levels(text.lines())}))
    }
    .await;
    reply(&uri, result)
}

async fn task_events(State(e): State<Arc<Entrance>>, headers: HeaderMap, body: Bytes) -> Response {
    let batch = match serde_json::from_slice::<TaskEventBatch>(&body) {
        Ok(batch) => batch,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("bad task events: {err}")).into_response(),
    };
    // Events come from one engine, with its own key, about its own tasks.
    let presented = headers.get(RPC_TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if !e.manager.verify_engine_key(&batch.ticket_id, presented) {
        tracing::warn!(ticket = %batch.ticket_id, "task events refused: wrong key for this ticket");
        return (StatusCode::UNAUTHORIZED, "bad engine key for this ticket").into_response();
    }
    match e.on_task_events(&batch.ticket_id, batch.events) {
        0 => StatusCode::OK.into_response(),
        n => (StatusCode::FORBIDDEN, format!("{n} events are about tasks not sent to this engine")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_drops_the_rest_prefix() {
        let uri: Uri = "/api/rest_j/v1/entrance/submit".parse().expect("uri");
        assert_eq!(method_of(&uri), "/api/entrance/submit");
    }

    #[test]
    fn log_paging() {
        let (l, next) = log_slice("a\nb\nc\n", 1, 1);
        assert_eq!((l, next), (vec!["b"], 2));
        let (l, next) = log_slice("a\nb\nc\n", 5, 10);
        assert_eq!((l.len(), next), (0, 5));
    }
}
