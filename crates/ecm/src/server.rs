//! The ECM's RPC endpoint (used when it runs apart from the manager).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use hangar_protocol::ErrorCode;
use hangar_protocol::rpc::{ECM_RPC_PATH, EcmReply, EcmRequest, RPC_TOKEN_HEADER};

use crate::Ecm;

pub fn router(ecm: Arc<Ecm>) -> Router {
    Router::new().route(ECM_RPC_PATH, post(handle)).with_state(ecm)
}

async fn handle(
    State(ecm): State<Arc<Ecm>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<EcmReply>) {
    // Only the manager holds the ECM token.
    let presented = headers.get(RPC_TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if !hangar_protocol::credential::matches(&ecm.cfg.ecm_token, presented) {
        let r = EcmReply::Error { code: ErrorCode::Unauthenticated, message: "bad ECM token".into() };
        return (StatusCode::UNAUTHORIZED, Json(r));
    }
    let req: EcmRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let r = EcmReply::Error { code: ErrorCode::InvalidRequest, message: format!("bad request: {e}") };
            return (StatusCode::BAD_REQUEST, Json(r));
        }
    };
    let err = |e: hangar_protocol::HangarError| EcmReply::Error { code: e.code, message: e.message };
    let reply = match req {
        EcmRequest::Launch { build, manager_url, engine_conf } => {
            match ecm.launch(build, &manager_url, &engine_conf).await {
                Ok(l) => EcmReply::Launched { pid: l.pid, log_dir: l.log_dir.display().to_string() },
                Err(e) => err(e),
            }
        }
        EcmRequest::Kill { ticket_id } => match ecm.kill(&ticket_id).await {
            Ok(()) => EcmReply::Killed,
            Err(e) => err(e),
        },
        EcmRequest::EngineLog { ticket_id, log_type, from_line, page_size } => {
            match ecm.engine_log(&ticket_id, &log_type, from_line, page_size).await {
                Ok((log_path, logs, end_line)) => EcmReply::Log { log_path, rows: logs.len(), logs, end_line },
                Err(e) => err(e),
            }
        }
    };
    (StatusCode::OK, Json(reply))
}
