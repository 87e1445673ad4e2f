//! Operator REST in Linkis's `linkisManager` namespace.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use hangar_manager::{EngineInfo, ResourceHolder};
use hangar_protocol::{Envelope, ErrorCode, HangarError, NodeStatus};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Entrance;
use crate::api::reply;
use crate::wire::manager::*;

pub(crate) fn routes(r: OpenApiRouter<Arc<Entrance>>) -> OpenApiRouter<Arc<Entrance>> {
    r.routes(routes!(list_user_engines))
        .routes(routes!(list_all_engines))
        .routes(routes!(list_ecm_engines))
        .routes(routes!(kill_engine))
        .routes(routes!(user_resources))
        .routes(routes!(queue_resources))
        .routes(routes!(open_engine_log))
}

pub(crate) fn engine_vo(e: &EngineInfo) -> EngineVo {
    EngineVo {
        application_name: "linkis-cg-engineconn".into(),
        instance: e.instance.clone(),
        ticket_id: e.ticket_id.clone(),
        owner: e.user.clone(),
        labels: labels_vo(&e.labels),
        engine_type: e.labels.get("engineType").map(str::to_string),
        node_status: e.status,
        em_instance: e.ecm_instance.clone(),
        pid: e.pid,
        resource: e.resource.into(),
        start_time: e.created_ms,
        engine_log_path: e.log_dir.clone(),
        running_tasks: e.running_tasks,
        node_healthy: if e.unhealthy.is_some() { NodeHealthy::UnHealthy } else { NodeHealthy::Healthy },
        unhealthy_reason: e.unhealthy.clone(),
        rss_kb: e.rss_kb,
        cluster_resource: e
            .cluster
            .as_ref()
            .map(|c| ClusterResourceVo { queue: c.label.clone(), resource: c.resource.into() }),
        engine_info: e.info.clone(),
        pooled: e.pooled,
    }
}

pub(crate) fn admin_only(c: &crate::auth::Caller) -> Result<(), HangarError> {
    if c.admin {
        Ok(())
    } else {
        Err(HangarError::new(
            ErrorCode::PermissionDenied,
            format!(
                "user '{}' is not an admin (admins are named by the server's auth.admins, or HANGAR_AUTH_ADMINS=name1,name2)",
                c.user
            ),
        ))
    }
}

/// The caller's engines.
#[utoipa::path(get, path = "/api/rest_j/v1/linkisManager/listUserEngines", tag = "linkisManager",
    responses((status = 200, description = "The caller's engines", body = Envelope<EnginesData>)))]
async fn list_user_engines(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e.caller(&headers).await.map(|c| EnginesData {
        engines: e.operator.list_engines().iter().filter(|x| x.user == c.user).map(engine_vo).collect(),
    });
    reply(&uri, r)
}

/// Every engine (admins).
#[utoipa::path(get, path = "/api/rest_j/v1/linkisManager/listAllEngines", tag = "linkisManager",
    responses((status = 200, description = "Every engine", body = Envelope<EnginesData>)))]
async fn list_all_engines(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e
        .caller(&headers)
        .await
        .and_then(|c| admin_only(&c))
        .map(|()| EnginesData { engines: e.operator.list_engines().iter().map(engine_vo).collect() });
    reply(&uri, r)
}

/// The engines of one ECM (admins).
#[utoipa::path(post, path = "/api/rest_j/v1/linkisManager/listEMEngines", tag = "linkisManager",
    request_body = ListEcmEnginesRequest,
    responses((status = 200, description = "The ECM's engines", body = Envelope<EnginesData>)))]
async fn list_ecm_engines(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        admin_only(&c)?;
        let req: ListEcmEnginesRequest = crate::wire::body(&body)?;
        let si = req.em.and_then(|em| em.service_instance);
        crate::console::ecm_application(si.as_ref().and_then(|s| s.application_name.as_deref()))?;
        let instance = si.and_then(|si| si.instance).or(req.em_instance).or(req.instance).ok_or_else(|| {
            HangarError::invalid("body must name the ECM: {\"em\":{\"serviceInstance\":{\"instance\":\"host:port\"}}}")
        })?;
        let type_ok = |x: &EngineInfo| match (&req.engine_type, x.labels.engine_type()) {
            (None, _) => true,
            (Some(want), Ok(t)) => *want == t.engine || *want == t.to_string(),
            (Some(_), Err(_)) => false,
        };
        let engines = e
            .operator
            .list_engines()
            .iter()
            .filter(|x| x.ecm_instance == instance)
            .filter(|x| req.node_status.is_none_or(|s| s == x.status))
            .filter(|x| req.owner.as_ref().is_none_or(|o| *o == x.user))
            .filter(|x| type_ok(x))
            .map(engine_vo)
            .collect();
        Ok(EnginesData { engines })
    }
    .await;
    reply(&uri, r)
}

/// End engines: the owner's or, for admins, anyone's.
#[utoipa::path(post, path = "/api/rest_j/v1/linkisManager/killEngineConn", tag = "linkisManager",
    request_body = KillEngineRequest,
    responses((status = 200, description = "The engines asked to end", body = Envelope<KillEngineData>)))]
async fn kill_engine(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        let targets = match crate::wire::body(&body)? {
            KillEngineRequest::One(t) => vec![t],
            KillEngineRequest::Many(ts) => ts,
        };
        let ids = targets
            .into_iter()
            .map(|t| {
                t.instance
                    .or(t.ticket_id)
                    .ok_or_else(|| HangarError::invalid("each target needs an instance (host:port) or a ticketId"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        kill_engines(&e, &c, ids)
    }
    .await;
    reply(&uri, r)
}

/// End engines named by instance (`host:port`) or ticket: the caller's own, or
/// for admins anyone's. Every one is checked before any ends.
pub(crate) fn kill_engines(
    e: &Entrance,
    c: &crate::auth::Caller,
    ids: Vec<String>,
) -> Result<KillEngineData, HangarError> {
    let engines = e.operator.list_engines();
    let mut chosen = Vec::new();
    for id in ids {
        let engine = engines
            .iter()
            .find(|x| x.instance.as_deref() == Some(id.as_str()) || x.ticket_id == id)
            .ok_or_else(|| HangarError::not_found(format!("no engine {id}")))?;
        if !c.admin && engine.user != c.user {
            return Err(HangarError::new(ErrorCode::PermissionDenied, format!("engine {id} belongs to another user")));
        }
        chosen.push((engine.ticket_id.clone(), id));
    }
    let mut killed = Vec::new();
    for (ticket, id) in chosen {
        e.operator.finish(&ticket, NodeStatus::Failed, format!("killed by {}", c.user), true);
        killed.push(id);
    }
    Ok(KillEngineData { killed })
}

/// Resources per user, creator and engine type (the caller's; admins: everyone's or `user`'s).
#[utoipa::path(method(get, post), path = "/api/rest_j/v1/linkisManager/rm/userresources", tag = "linkisManager",
    params(UserResourcesQuery),
    responses((status = 200, description = "The resources", body = Envelope<UserResourcesData>)))]
async fn user_resources(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e.caller(&headers).await.and_then(|c| {
        let q: UserResourcesQuery = crate::wire::query(&uri)?;
        let want = q.user.filter(|_| c.admin);
        let rows = e
            .operator
            .resource_labels()
            .into_iter()
            .filter_map(|(holder, lr)| {
                let ResourceHolder::UserEngine { user_creator: uc, engine_type: et } = holder else { return None };
                let user = uc.split('-').next().unwrap_or("");
                let visible = match &want {
                    Some(u) => user == u,
                    None => c.admin || user == c.user,
                };
                visible.then(|| UserResourceVo {
                    user_creator: uc.clone(),
                    engine_type_with_version: et.clone(),
                    resource_type: "LoadInstance".into(),
                    max_resource: lr.max.into(),
                    used_resource: lr.used.into(),
                    locked_resource: lr.locked.into(),
                    left_resource: lr.left().into(),
                })
            })
            .collect();
        Ok(UserResourcesData { user_resources: rows })
    });
    reply(&uri, r)
}

/// The cluster queues Spark executors are charged to: each queue's maximum
/// and what engines hold there (Linkis `rm/queueresources`).
#[utoipa::path(method(get, post), path = "/api/rest_j/v1/linkisManager/rm/queueresources", tag = "linkisManager",
    responses((status = 200, description = "The queues", body = Envelope<QueueResourcesData>)))]
async fn queue_resources(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e.caller(&headers).await.map(|_| {
        let queues = e
            .operator
            .resource_labels()
            .into_iter()
            .filter_map(|(holder, lr)| match holder {
                ResourceHolder::ClusterQueue(label) => Some((label, lr)),
                _ => None,
            })
            .map(|(label, lr)| QueueResourceVo {
                queuename: label,
                max_resources: lr.max.into(),
                used_resources: lr.used.into(),
                locked_resources: lr.locked.into(),
                left_resources: lr.left().into(),
            })
            .collect();
        QueueResourcesData { queues }
    });
    reply(&uri, r)
}

/// A page of an engine's stdout/stderr (Linkis `engineConnLog` operator): the
/// engine's owner or an admin; `fromLine` is 1-based.
#[utoipa::path(get, path = "/api/rest_j/v1/linkisManager/openEngineLog", tag = "linkisManager",
    params(EngineLogQuery),
    responses((status = 200, description = "The lines", body = Envelope<EngineLogData>)))]
async fn open_engine_log(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        let q: EngineLogQuery = crate::wire::query(&uri)?;
        let ticket = crate::api::required(q.ticket_id, "query parameter ticketId")?;
        let owner = e.operator.list_engines().into_iter().find(|x| x.ticket_id == ticket).map(|x| x.user);
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
        let log_type = q.log_type.as_deref().unwrap_or("stdout");
        let log =
            e.operator.engine_log(&ticket, log_type, q.from_line.unwrap_or(1), q.page_size.unwrap_or(100)).await?;
        Ok(EngineLogData { log_path: log.log_path, rows: log.logs.len(), logs: log.logs, end_line: log.end_line })
    }
    .await;
    reply(&uri, r)
}
