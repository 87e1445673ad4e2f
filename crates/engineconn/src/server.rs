//! The engine's RPC endpoint: one `POST /rpc` taking an [`EngineRequest`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use hangar_protocol::ErrorCode;
use hangar_protocol::rpc::{ENGINE_RPC_PATH, EngineReply, EngineRequest, RPC_TOKEN_HEADER};

use crate::state::Engine;

/// The largest request an engine takes (JSON escaping can double code).
const MAX_REQUEST_BYTES: usize = 160 << 20;

#[derive(Clone)]
struct Ctx {
    engine: Arc<Engine>,
    token: Arc<str>,
}

pub(crate) fn spawn(listener: tokio::net::TcpListener, engine: Arc<Engine>, token: String) {
    // A task's code travels in one request: room for the largest code the
    // Entrance accepts (`entrance.max_code_bytes`, at most 64 MiB) as JSON.
    let app = Router::new()
        .route(ENGINE_RPC_PATH, post(handle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(Ctx { engine, token: token.into() });
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "engine RPC server stopped");
        }
    });
}

async fn handle(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<EngineReply>) {
    // Only the control plane (and this engine itself) holds this engine's key.
    let presented = headers.get(RPC_TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if !hangar_protocol::credential::matches(&ctx.token, presented) {
        let reply = EngineReply::Error { code: ErrorCode::Unauthenticated, message: "bad engine key".into() };
        return (StatusCode::UNAUTHORIZED, Json(reply));
    }
    let req: EngineRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let reply = EngineReply::Error { code: ErrorCode::InvalidRequest, message: format!("bad request: {e}") };
            return (StatusCode::BAD_REQUEST, Json(reply));
        }
    };
    let e = &ctx.engine;
    let reply = match req {
        EngineRequest::Lock { timeout_ms } => e.lock(timeout_ms),
        EngineRequest::Unlock { lock } => e.unlock(&lock),
        EngineRequest::Execute(task) => e.execute(task),
        EngineRequest::Kill { task_id } => e.kill(task_id),
        EngineRequest::TaskStatus { task_id, callback_url } => task_status(e, task_id, callback_url),
        EngineRequest::Status => {
            let (status, metrics) = e.metrics();
            EngineReply::Status { status, metrics }
        }
        EngineRequest::Shutdown { reason } => {
            e.request_exit(reason);
            EngineReply::Ack
        }
    };
    (StatusCode::OK, Json(reply))
}

/// Where a task stands; with a new callback URL (another Entrance took the
/// task's job over), the task's events go there from now on.
fn task_status(e: &Engine, task_id: i64, callback_url: Option<String>) -> EngineReply {
    let reply = e.task_status(task_id);
    let Some(url) = callback_url else { return reply };
    if let Err(err) = hangar_protocol::endpoints::Endpoints::parse(&url).and_then(|u| match u.urls() {
        [_] => Ok(()),
        _ => Err(hangar_protocol::HangarError::invalid("one callback URL, not a list")),
    }) {
        return EngineReply::Error {
            code: ErrorCode::InvalidRequest,
            message: format!("bad callback_url: {}", err.message),
        };
    }
    // Only a task this engine knows has events to send.
    if matches!(reply, EngineReply::TaskStatus { status: Some(_), .. }) {
        e.out.redirect(task_id, &url);
    }
    reply
}
