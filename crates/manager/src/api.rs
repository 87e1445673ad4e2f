//! The elected manager's end of [`crate::ManagerClient`] over HTTP: the
//! Entrances of the other control-plane instances call it with the peer
//! token (derived from the control-plane secret for this purpose only).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hangar_protocol::manager_api::{ManagerAnswer, ManagerCall};
use hangar_protocol::rpc::RPC_TOKEN_HEADER;

use crate::Manager;

/// Carry out one call on this process's manager: the one path for calls
/// made in process and calls that came over HTTP.
pub async fn serve_call(m: &Arc<Manager>, call: ManagerCall) -> ManagerAnswer {
    match call {
        ManagerCall::Ask(ask) => match crate::client::ask_detached(m, ask).await {
            Ok(g) => ManagerAnswer::Grant(g),
            Err(e) => ManagerAnswer::Error { code: e.code, message: e.message },
        },
        ManagerCall::Unlock(grant) => {
            m.unlock(&grant).await;
            ManagerAnswer::Done
        }
        ManagerCall::Released(grant) => {
            m.released(&grant);
            ManagerAnswer::Done
        }
        ManagerCall::Engines { tickets } => ManagerAnswer::Engines { states: m.engine_states(&tickets) },
        ManagerCall::EngineKey { ticket_id } => {
            ManagerAnswer::Key { key: m.engine_key(&ticket_id).map(hangar_protocol::credential::Secret) }
        }
        ManagerCall::ExpectRejoins { tickets, within_ms } => {
            m.expect_rejoins(tickets, Duration::from_millis(within_ms));
            ManagerAnswer::Done
        }
    }
}

pub(crate) async fn handle(
    State(m): State<Arc<Manager>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ManagerAnswer>, (StatusCode, String)> {
    let presented = headers.get(RPC_TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if !hangar_protocol::credential::matches(m.peer_token(), presented) {
        return Err((StatusCode::UNAUTHORIZED, "bad control-plane peer token".into()));
    }
    let call: ManagerCall =
        serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad manager call: {e}")))?;
    Ok(Json(serve_call(&m, call).await))
}
