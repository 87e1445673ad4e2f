//! The REST API in Linkis's shapes, under `/api/rest_j/v1`: the router, the
//! envelope every answer travels in, and what handlers share.
//!
//! Routes are registered from the handlers' `#[utoipa::path]` annotations, so
//! the router and the OpenAPI document (`crate::openapi`) are one list.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hangar_protocol::rpc::{ENTRANCE_RESULT_PATH, ENTRANCE_RPC_PATH, RPC_TOKEN_HEADER, TaskEventBatch};
use hangar_protocol::{Envelope, ErrorCode, HangarError, exec_id};
use hangar_store::JobRecord;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;

use crate::Entrance;
use crate::auth::Caller;

pub(crate) const PREFIX: &str = "/api/rest_j/v1";

/// Where the server serves its OpenAPI document.
pub const OPENAPI_PATH: &str = "/api/rest_j/v1/openapi.json";

/// Every documented route, each registered from its handler's annotation.
pub(crate) fn documented(body_limit: usize, max_upload: u64) -> OpenApiRouter<Arc<Entrance>> {
    // Bodies may exceed the code limit by the JSON around the code; beyond
    // that they are refused with a clear message rather than buffered.
    let r = crate::jobs_api::routes(OpenApiRouter::with_openapi(crate::openapi::base()));
    let r = crate::configuration::routes(crate::console::routes(crate::ops::routes(r)));
    let r = crate::files::routes(crate::login::routes(r)).layer(DefaultBodyLimit::max(body_limit));
    r.merge(crate::bml::routes(max_upload))
}

pub fn router(entrance: Arc<Entrance>) -> Router {
    let body_limit = entrance.cfg.max_code_bytes.saturating_mul(2).saturating_add(1 << 20);
    let max_upload = entrance.operator.material_library().map_or(0, |l| l.max_upload());
    let (router, doc) = documented(body_limit, max_upload).split_for_parts();
    let doc = Arc::new(crate::openapi::finish(doc).to_pretty_json().unwrap_or_default());
    // The console's files (not part of the documented API).
    crate::console_assets::routes(router)
        .route(OPENAPI_PATH, get(move || async move { ([(header::CONTENT_TYPE, "application/json")], (*doc).clone()) }))
        .route("/metrics", get(crate::metrics::metrics))
        .route(ENTRANCE_RPC_PATH, post(task_events))
        // Result sets are streamed, whatever their size (the per-file limit is checked as they come).
        .route(
            &format!("{ENTRANCE_RESULT_PATH}/{{task_id}}/{{alias}}"),
            axum::routing::put(crate::results::receive).layer(DefaultBodyLimit::disable()),
        )
        .fallback(not_found)
        .with_state(entrance)
}

/// Linkis's `method`: `/api` + the path after `/api/rest_j/v1`.
pub(crate) fn method_of(uri: &Uri) -> String {
    let p = uri.path();
    format!("/api{}", p.strip_prefix(PREFIX).unwrap_or(p))
}

/// The answer of a call: its data in a success envelope, or the error's.
pub(crate) fn reply<T: Serialize>(uri: &Uri, result: Result<T, HangarError>) -> Response {
    let method = method_of(uri);
    match result {
        Ok(data) => Json(Envelope::ok(method, data)).into_response(),
        Err(e) => error_reply(method, &e),
    }
}

pub(crate) fn error_reply(method: String, e: &HangarError) -> Response {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::OK);
    (status, Json(Envelope::error(method, e))).into_response()
}

async fn not_found(uri: Uri) -> Response {
    reply::<()>(&uri, Err(HangarError::not_found(format!("no such API: {}", uri.path()))))
}

/// A required text parameter: present and not empty.
pub(crate) fn required(v: Option<String>, name: &str) -> Result<String, HangarError> {
    v.filter(|s| !s.is_empty()).ok_or_else(|| HangarError::invalid(format!("{name} is required")))
}

impl Entrance {
    pub(crate) async fn caller(&self, headers: &HeaderMap) -> Result<Caller, HangarError> {
        crate::auth::authenticate_with(&self.cfg, &self.sessions, headers).await
    }

    /// Load a job by taskID and check the caller may see it.
    pub(crate) async fn owned_job(&self, caller: &Caller, task_id: i64) -> Result<JobRecord, HangarError> {
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

    pub(crate) async fn job_by_exec_id(&self, caller: &Caller, id: &str) -> Result<JobRecord, HangarError> {
        let parsed = exec_id::parse(id)?;
        let job = self.owned_job(caller, parsed.task_id).await?;
        if job.exec_id != id {
            return Err(HangarError::not_found(format!("no job with execID {id}")));
        }
        Ok(job)
    }
}

/// Engines' task events (internal: each engine with its own key).
async fn task_events(State(e): State<Arc<Entrance>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mut batch = match serde_json::from_slice::<TaskEventBatch>(&body) {
        Ok(batch) => batch,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("bad task events: {err}")).into_response(),
    };
    // Events come from one engine, with its own key, about its own tasks.
    let presented = headers.get(RPC_TOKEN_HEADER).and_then(|v| v.to_str().ok());
    match e.check_engine_key(&batch.ticket_id, presented).await {
        Some(true) => {}
        Some(false) => {
            tracing::warn!(ticket = %batch.ticket_id, "task events refused: wrong key for this ticket");
            return (StatusCode::UNAUTHORIZED, "bad engine key for this ticket").into_response();
        }
        // Sent again later.
        None => return (StatusCode::SERVICE_UNAVAILABLE, "the engine's key cannot be checked now").into_response(),
    }
    e.store_inline_results(&batch.ticket_id, &mut batch.events).await;
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
}
