//! Any control-plane instance answers any call: what this one cannot answer
//! itself it forwards, once, to the instance that can.
//!
//! * The manager's calls (engines' and ECMs' RPC, the Entrance API of other
//!   instances, the operator API `linkisManager/*`, the material library
//!   `bml/*` and `engineplugin/*`) go to the elected manager.
//! * Calls about one job that live in its owner's memory (kill, the events
//!   stream, progress) go to the instance that owns the job, while it is live;
//!   with no live owner they are answered here from the store (a kill is
//!   recorded there for whoever takes the job over).
//!
//! The request goes as it came (its credentials too: tokens are shared,
//! sessions are in the store), marked with `x-hangar-forwarded-by`; a marked
//! call is never forwarded again (a manager call that reaches an instance
//! which is no longer the manager is refused with 503, and its sender tries
//! again).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_entrance::Entrance;
use hangar_protocol::manager_api::FORWARDED_HEADER;
use hangar_protocol::{Envelope, ErrorCode, HangarError};
use hangar_store::Store;

use crate::cluster::ClusterView;

pub(crate) struct Forwarder {
    pub view: ClusterView,
    pub store: Store,
    pub entrance: Arc<Entrance>,
    pub http: reqwest::Client,
}

impl Forwarder {
    pub(crate) fn new(view: ClusterView, store: Store, entrance: Arc<Entrance>) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Arc::new(Self { view, store, entrance, http }))
    }
}

const API: &str = "/api/rest_j/v1";

/// Whether the elected manager answers this path.
fn manager_path(path: &str) -> bool {
    path.starts_with("/rpc/manager")
        || path.strip_prefix(API).is_some_and(|p| {
            p.starts_with("/rpc/manager")
                || p.starts_with("/linkisManager/")
                || p.starts_with("/bml/")
                || p.starts_with("/engineplugin/")
        })
}

/// The execID of a call that the job's owner answers from memory.
fn owner_call(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(API)?.strip_prefix("/entrance/")?;
    let (id, what) = rest.split_once('/')?;
    matches!(what, "kill" | "events" | "progress" | "progressWithResource").then_some(id)
}

pub(crate) async fn route(State(f): State<Arc<Forwarder>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let forwarded = req.headers().contains_key(FORWARDED_HEADER);
    if manager_path(&path) {
        let leader = f.view.leadership.borrow().clone();
        return match leader {
            Some(l) if l.me => next.run(req).await,
            Some(l) if !forwarded => f.proxy(&l.url, req).await,
            _ => unavailable(&path, "no control-plane instance is the elected manager right now (a failover?)"),
        };
    }
    if !forwarded
        && let Some(exec) = owner_call(&path)
        && let Some(url) = f.owner_url(exec).await
    {
        // Small bodies (a kill has none): kept, to answer here if the owner cannot be reached.
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
            return unavailable(&path, "the request body is too large to forward");
        };
        let copy = Request::from_parts(parts.clone(), Body::from(bytes.clone()));
        match f.send(&url, copy).await {
            Ok(resp) => return resp,
            Err(e) => tracing::info!(%path, error = %e, "the job's owner cannot be reached; answering here"),
        }
        return next.run(Request::from_parts(parts, Body::from(bytes))).await;
    }
    next.run(req).await
}

impl Forwarder {
    /// The live instance other than this one that owns the unfinished job `exec`.
    async fn owner_url(&self, exec: &str) -> Option<String> {
        let task_id = hangar_protocol::exec_id::parse(exec).ok()?.task_id;
        if self.entrance.runs(task_id) {
            return None;
        }
        let job = self.store.get_job(task_id).await.ok()??;
        if job.status.is_completed() || job.owner == self.view.me {
            return None;
        }
        self.view.live_url(&job.owner)
    }

    async fn proxy(&self, base: &str, req: Request) -> Response {
        let path = req.uri().path().to_string();
        match self.send(base, req).await {
            Ok(r) => r,
            Err(e) => unavailable(&path, &e),
        }
    }

    /// Send the request on to `base`; Err: it cannot be reached.
    async fn send(&self, base: &str, req: Request) -> Result<Response, String> {
        let path = req.uri().path().to_string();
        let url = format!(
            "{}{}",
            base.trim_end_matches('/'),
            req.uri().path_and_query().map_or(path.as_str(), |p| p.as_str())
        );
        let (parts, body) = req.into_parts();
        let mut out = self.http.request(parts.method, &url);
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                out = out.header(name, value);
            }
        }
        let me = HeaderValue::from_str(&self.view.me).unwrap_or_else(|_| HeaderValue::from_static("instance"));
        out = out.header(FORWARDED_HEADER, me);
        let body = reqwest::Body::wrap_stream(body.into_data_stream());
        match out.body(body).send().await {
            Ok(resp) => {
                let mut b = Response::builder().status(resp.status().as_u16());
                for (name, value) in resp.headers() {
                    if !hop_by_hop(name) {
                        b = b.header(name, value);
                    }
                }
                Ok(b.body(Body::from_stream(resp.bytes_stream()))
                    .unwrap_or_else(|e| unavailable(&path, &format!("cannot relay the answer of {base}: {e}"))))
            }
            Err(e) => Err(format!("the instance at {base} that answers this cannot be reached: {e}")),
        }
    }
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te" | "trailer" | "host"
    )
}

/// 503: a Linkis envelope for the REST API, plain text for internal RPC.
fn unavailable(path: &str, why: &str) -> Response {
    if path.starts_with(&format!("{API}/rpc")) || path.starts_with("/rpc") {
        return (StatusCode::SERVICE_UNAVAILABLE, why.to_string()).into_response();
    }
    let method = format!("/api{}", path.strip_prefix(API).unwrap_or(path));
    let err = HangarError::new(ErrorCode::Overloaded, why);
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(Envelope::error(method, &err))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_calls_go_where() {
        assert!(manager_path("/api/rest_j/v1/rpc/manager"));
        assert!(manager_path("/api/rest_j/v1/rpc/manager/ecm"));
        assert!(manager_path("/rpc/manager/api"));
        assert!(manager_path("/rpc/manager/materials/abc"));
        assert!(manager_path("/api/rest_j/v1/linkisManager/listAllEngines"));
        assert!(manager_path("/api/rest_j/v1/bml/upload"));
        assert!(!manager_path("/api/rest_j/v1/rpc/entrance"));
        assert!(!manager_path("/api/rest_j/v1/entrance/submit"));
        assert_eq!(owner_call("/api/rest_j/v1/entrance/exec1/kill"), Some("exec1"));
        assert_eq!(owner_call("/api/rest_j/v1/entrance/exec1/events"), Some("exec1"));
        assert_eq!(owner_call("/api/rest_j/v1/entrance/exec1/status"), None);
        assert_eq!(owner_call("/api/rest_j/v1/entrance/submit"), None);
    }
}
