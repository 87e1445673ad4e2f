//! Operator REST in Linkis's `linkisManager` namespace (and the `/metrics` route).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use hangar_manager::{EcmInfo, EngineInfo};
use hangar_protocol::{ErrorCode, HangarError, NodeStatus};
use serde_json::{Value, json};

use crate::Entrance;
use crate::api::{PREFIX, Params, parse_json, reply};

pub(crate) fn routes(r: Router<Arc<Entrance>>) -> Router<Arc<Entrance>> {
    r.route(&format!("{PREFIX}/linkisManager/listAllEMs"), get(list_ecms))
        .route(&format!("{PREFIX}/linkisManager/listUserEngines"), get(list_user_engines))
        .route(&format!("{PREFIX}/linkisManager/listAllEngines"), get(list_all_engines))
        .route(&format!("{PREFIX}/linkisManager/listEMEngines"), post(list_ecm_engines))
        .route(&format!("{PREFIX}/linkisManager/killEngineConn"), post(kill_engine))
        .route(&format!("{PREFIX}/linkisManager/rm/userresources"), get(user_resources).post(user_resources))
        .route(&format!("{PREFIX}/linkisManager/openEngineLog"), get(open_engine_log))
        .route("/metrics", get(crate::metrics::metrics))
}

fn labels_vo(l: &hangar_protocol::LabelSet) -> Value {
    json!(l.iter().map(|(k, v)| json!({"labelKey": k, "stringValue": v})).collect::<Vec<_>>())
}

fn engine_vo(e: &EngineInfo) -> Value {
    json!({
        "applicationName": "linkis-cg-engineconn",
        "instance": e.instance,
        "ticketId": e.ticket_id,
        "owner": e.user,
        "labels": labels_vo(&e.labels),
        "engineType": e.labels.get("engineType"),
        "nodeStatus": e.status,
        "emInstance": e.ecm_instance,
        "pid": e.pid,
        "resource": e.resource.to_linkis_json(),
        "startTime": e.created_ms,
        "engineLogPath": e.log_dir,
        "runningTasks": e.running_tasks,
        "nodeHealthy": if e.unhealthy.is_some() { "UnHealthy" } else { "Healthy" },
        "unhealthyReason": e.unhealthy,
        "rssKB": e.rss_kb,
    })
}

fn ecm_vo(e: &EcmInfo) -> Value {
    json!({
        "applicationName": "linkis-cg-engineconnmanager",
        "instance": e.instance,
        "labels": labels_vo(&e.labels),
        "nodeStatus": e.status,
        "nodeHealthy": if e.status == NodeStatus::Running { "Healthy" } else { "UnHealthy" },
        "maxResource": e.resource.max.to_linkis_json(),
        "usedResource": e.resource.used.to_linkis_json(),
        "lockedResource": e.resource.locked.to_linkis_json(),
        "leftResource": e.resource.left().to_linkis_json(),
        "engineCount": e.engines,
    })
}

fn admin_only(c: &crate::auth::Caller) -> Result<(), HangarError> {
    if c.admin {
        Ok(())
    } else {
        Err(HangarError::new(ErrorCode::PermissionDenied, format!("user '{}' is not an admin", c.user)))
    }
}

async fn list_ecms(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e
        .caller(&headers)
        .and_then(|c| admin_only(&c))
        .map(|()| json!({"EMs": e.manager.list_ecms().iter().map(ecm_vo).collect::<Vec<_>>()}));
    reply(&uri, r)
}

async fn list_user_engines(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e.caller(&headers).map(|c| {
        let engines: Vec<Value> = e.manager.list_engines().iter().filter(|x| x.user == c.user).map(engine_vo).collect();
        json!({"engines": engines})
    });
    reply(&uri, r)
}

async fn list_all_engines(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e
        .caller(&headers)
        .and_then(|c| admin_only(&c))
        .map(|()| json!({"engines": e.manager.list_engines().iter().map(engine_vo).collect::<Vec<_>>()}));
    reply(&uri, r)
}

async fn list_ecm_engines(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let c = e.caller(&headers)?;
        admin_only(&c)?;
        let body = parse_json(&body)?;
        let instance = body
            .pointer("/em/serviceInstance/instance")
            .or_else(|| body.get("instance"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                HangarError::invalid(
                    "body must name the ECM: {\"em\":{\"serviceInstance\":{\"instance\":\"host:port\"}}}",
                )
            })?;
        let engines: Vec<Value> =
            e.manager.list_engines().iter().filter(|x| x.ecm_instance == instance).map(engine_vo).collect();
        Ok(json!({"engines": engines}))
    }
    .await;
    reply(&uri, r)
}

async fn kill_engine(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let c = e.caller(&headers)?;
        let body = parse_json(&body)?;
        let targets: Vec<Value> = match &body {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        let engines = e.manager.list_engines();
        let mut killed = Vec::new();
        for t in targets {
            let id = t
                .get("instance")
                .or_else(|| t.get("ticketId"))
                .and_then(Value::as_str)
                .ok_or_else(|| HangarError::invalid("each target needs an instance (host:port) or a ticketId"))?;
            let engine = engines
                .iter()
                .find(|x| x.instance.as_deref() == Some(id) || x.ticket_id == id)
                .ok_or_else(|| HangarError::not_found(format!("no engine {id}")))?;
            if !c.admin && engine.user != c.user {
                return Err(HangarError::new(
                    ErrorCode::PermissionDenied,
                    format!("engine {id} belongs to another user"),
                ));
            }
            e.manager.finish(&engine.ticket_id, NodeStatus::Failed, format!("killed by {}", c.user), true);
            killed.push(id.to_string());
        }
        Ok(json!({"killed": killed}))
    }
    .await;
    reply(&uri, r)
}

async fn user_resources(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Query(q): Params) -> Response {
    let r = e.caller(&headers).map(|c| {
        let want = q.get("user").filter(|_| c.admin).cloned();
        let rows: Vec<Value> = e
            .manager
            .resources()
            .snapshot()
            .into_iter()
            .filter_map(|(label, lr)| {
                let v = label.strip_prefix("combined_userCreator_engineType:")?;
                let (uc, et) = v.split_once(',')?;
                let user = uc.split('-').next().unwrap_or("");
                let visible = match &want {
                    Some(u) => user == u,
                    None => c.admin || user == c.user,
                };
                visible.then(|| {
                    json!({
                        "userCreator": uc, "engineTypeWithVersion": et, "resourceType": "LoadInstance",
                        "maxResource": lr.max.to_linkis_json(), "usedResource": lr.used.to_linkis_json(),
                        "lockedResource": lr.locked.to_linkis_json(), "leftResource": lr.left().to_linkis_json(),
                    })
                })
            })
            .collect();
        json!({"userResources": rows})
    });
    reply(&uri, r)
}

/// A page of an engine's stdout/stderr (Linkis `engineConnLog` operator): the
/// engine's owner or an admin; `fromLine` is 1-based.
async fn open_engine_log(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Query(q): Params) -> Response {
    let r = async {
        let c = e.caller(&headers)?;
        let ticket = q.get("ticketId").ok_or_else(|| HangarError::invalid("query parameter ticketId is required"))?;
        let owner = e.manager.list_engines().into_iter().find(|x| &x.ticket_id == ticket).map(|x| x.user);
        match owner {
            Some(u) if u == c.user || c.admin => {}
            Some(_) => {
                return Err(HangarError::new(
                    ErrorCode::PermissionDenied,
                    format!("engine {ticket} belongs to another user"),
                ));
            }
            None => admin_only(&c)?,
        }
        let num = |k: &str, d: usize| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let log_type = q.get("logType").map(String::as_str).unwrap_or("stdout");
        let log = e.manager.engine_log(ticket, log_type, num("fromLine", 1), num("pageSize", 100)).await?;
        Ok(json!({"logPath": log.log_path, "rows": log.logs.len(), "logs": log.logs, "endLine": log.end_line}))
    }
    .await;
    reply(&uri, r)
}
