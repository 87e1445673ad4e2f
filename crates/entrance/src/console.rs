//! The management console's REST (Linkis `linkis-web` console): undone
//! jobs and the history page's rights, resource management (applications,
//! every user's resources, engine kill), ECM management (list, modify, kill
//! idle engines, health states) and the engine history.
//!
//! The `linkisManager/*` routes read this process's manager (`Entrance::operator`):
//! on several instances only the elected manager serves them, the others forward.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use hangar_manager::{EcmChange, EcmInfo, EngineInfo, ResourceHolder};
use hangar_protocol::label::{TENANT, UserCreator};
use hangar_protocol::{Envelope, ErrorCode, HangarError, NodeStatus, Resource, now_ms};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Entrance;
use crate::api::{reply, required};
use crate::ops::admin_only;
use crate::wire::Empty;
use crate::wire::console::*;
use crate::wire::manager::{EcmVo, EcmsData, KillEngineData, NodeHealthy, labels_vo};

const DAY_MS: i64 = 24 * 3600 * 1000;

pub(crate) fn routes(r: OpenApiRouter<Arc<Entrance>>) -> OpenApiRouter<Arc<Entrance>> {
    r.routes(routes!(list_undone))
        .routes(routes!(governance_station_admin))
        .routes(routes!(application_list))
        .routes(routes!(all_user_resource))
        .routes(routes!(engine_types))
        .routes(routes!(engine_kill))
        .routes(routes!(kill_unlock_engine_by_em))
        .routes(routes!(list_ecms))
        .routes(routes!(modify_em_info))
        .routes(routes!(ecm_healthy_states))
        .routes(routes!(node_states))
        .routes(routes!(ecr_history_list))
}

/// Engine type `t` (`shell-1`) is what `want` names: the type or type and version.
fn engine_type_is(want: &str, t: &str) -> bool {
    t == want || t.strip_prefix(want).is_some_and(|rest| rest.starts_with('-'))
}

fn engine_type_of(e: &EngineInfo) -> String {
    e.labels.engine_type().map(|t| t.to_string()).unwrap_or_default()
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty() && s != "all")
}

/// `yyyy-MM-dd HH:mm:ss` in the server's time zone, as epoch ms.
pub(crate) fn console_date(v: &str, name: &str) -> Result<i64, HangarError> {
    use chrono::TimeZone;
    let t = chrono::NaiveDateTime::parse_from_str(v.trim(), "%Y-%m-%d %H:%M:%S").map_err(|e| {
        HangarError::invalid(format!("query parameter {name} must be yyyy-MM-dd HH:mm:ss, got '{v}' ({e})"))
    })?;
    chrono::Local.from_local_datetime(&t).earliest().map(|d| d.timestamp_millis()).ok_or_else(|| {
        HangarError::invalid(format!("query parameter {name}: '{v}' does not exist in the server's time zone"))
    })
}

/// How full a label is: the largest share of its maximum held.
fn load_status(used: Resource, locked: Resource, max: Resource) -> &'static str {
    let share = |u: u64, l: u64, m: u64| if m == 0 { 0.0 } else { (u + l) as f64 / m as f64 };
    let s = share(used.memory, locked.memory, max.memory)
        .max(share(used.cores.into(), locked.cores.into(), max.cores.into()))
        .max(share(used.instances.into(), locked.instances.into(), max.instances.into()));
    if s > 0.9 {
        "Critical"
    } else if s > 0.6 {
        "Warn"
    } else {
        "Normal"
    }
}

/// The count of the caller's unfinished jobs (by default of the last day).
#[utoipa::path(get, path = "/api/rest_j/v1/jobhistory/listundone", tag = "jobhistory", params(ListUndoneQuery),
    responses((status = 200, description = "How many jobs are not finished", body = Envelope<ListUndoneData>)))]
async fn list_undone(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        let q: ListUndoneQuery = crate::wire::query(&uri)?;
        let now = now_ms();
        let filter = hangar_store::JobFilter {
            user: Some(c.user),
            creator: non_empty(q.creator),
            engine: non_empty(q.engine_type),
            since_ms: Some(q.start_date.unwrap_or(now - DAY_MS)),
            until_ms: Some(q.end_date.unwrap_or(now + 1)),
            min_task_id: q.start_task_id,
            undone: true,
            page: q.page_now.unwrap_or(1),
            page_size: q.page_size.unwrap_or(20),
            ..Default::default()
        };
        Ok(ListUndoneData { total_page: e.store.count_jobs(&filter).await? })
    }
    .await;
    reply(&uri, r)
}

/// What the caller may do on the global history page.
#[utoipa::path(get, path = "/api/rest_j/v1/jobhistory/governanceStationAdmin", tag = "jobhistory",
    responses((status = 200, description = "The caller's rights", body = Envelope<GovernanceData>)))]
async fn governance_station_admin(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e.caller(&headers).await.map(|c| GovernanceData {
        admin: c.admin,
        history_admin: c.admin,
        dept_admin: false,
        can_result_set: true,
        error_msg_tip: "The job failed: its log and errDesc name the cause.".into(),
    });
    reply(&uri, r)
}

/// One user-creator's resources and engines (the caller's own; admins: anyone's).
#[utoipa::path(post, path = "/api/rest_j/v1/linkisManager/rm/applicationlist", tag = "linkisManager",
    request_body = ApplicationListRequest,
    responses((status = 200, description = "The applications", body = Envelope<ApplicationListData>)))]
async fn application_list(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        let req: ApplicationListRequest = crate::wire::body(&body)?;
        let uc = UserCreator::parse(&required(req.user_creator, "userCreator")?)?;
        if uc.user != c.user && !c.admin {
            return Err(HangarError::new(
                ErrorCode::PermissionDenied,
                format!("the resources of {} are another user's", uc.user),
            ));
        }
        let want = non_empty(req.engine_type);
        let type_ok = |t: &str| want.as_deref().is_none_or(|w| engine_type_is(w, t));
        let uc_text = format!("{}-{}", uc.user, uc.creator);
        let (mut used, mut max, mut locked) = (Resource::default(), Resource::default(), Resource::default());
        for (holder, lr) in e.operator.resource_labels() {
            if let ResourceHolder::UserEngine { user_creator, engine_type } = holder
                && user_creator == uc_text
                && type_ok(&engine_type)
            {
                used = used + lr.used;
                max = max + lr.max;
                locked = locked + lr.locked;
            }
        }
        let engine_instances = e
            .operator
            .list_engines()
            .into_iter()
            .filter(|x| x.user == uc.user && x.labels.user_creator().is_ok_and(|u| u.creator == uc.creator))
            .filter(|x| type_ok(&engine_type_of(x)))
            .map(|x| EngineInstanceVo {
                creator: uc.creator.clone(),
                engine_type: x.labels.engine_type().map(|t| t.engine).unwrap_or_default(),
                label: engine_type_of(&x),
                instance: x.instance.clone(),
                resource: x.resource.into(),
                status: x.status,
                start_time: x.created_ms,
                owner: x.user.clone(),
                ticket_id: x.ticket_id.clone(),
            })
            .collect();
        let application_list = ApplicationResources {
            used_resource: used.into(),
            max_resource: max.into(),
            min_resource: LoadInstanceVo::default(),
            locked_resource: locked.into(),
            engine_instances,
        };
        Ok(ApplicationListData { applications: vec![ApplicationVo { creator: uc.creator, application_list }] })
    }
    .await;
    reply(&uri, r)
}

/// Every user's resources per creator and engine type (admins), paged.
#[utoipa::path(get, path = "/api/rest_j/v1/linkisManager/rm/allUserResource", tag = "linkisManager",
    params(AllUserResourceQuery),
    responses((status = 200, description = "The resources", body = Envelope<AllUserResourceData>)))]
async fn all_user_resource(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = async {
        admin_only(&e.caller(&headers).await?)?;
        let q: AllUserResourceQuery = crate::wire::query(&uri)?;
        let has = |v: &str, want: &Option<String>| want.as_deref().is_none_or(|w| v.contains(w));
        let (user_q, creator_q, type_q) = (non_empty(q.username), non_empty(q.creator), non_empty(q.engine_type));
        let mut rows: Vec<UserResourceRow> = e
            .operator
            .resource_labels()
            .into_iter()
            .filter_map(|(holder, lr)| {
                let ResourceHolder::UserEngine { user_creator, engine_type } = holder else { return None };
                let (user, creator) = user_creator.split_once('-').unwrap_or((&user_creator, ""));
                (has(user, &user_q) && has(creator, &creator_q) && has(&engine_type, &type_q)).then(|| {
                    UserResourceRow {
                        username: user.to_string(),
                        creator: creator.to_string(),
                        engine_type_with_version: engine_type.clone(),
                        resource_type: "LoadInstance".into(),
                        used_resource: lr.used.into(),
                        locked_resource: lr.locked.into(),
                        max_resource: lr.max.into(),
                        left_resource: lr.left().into(),
                        load_resource_status: load_status(lr.used, lr.locked, lr.max).into(),
                        queue_resource_status: None,
                    }
                })
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.username, &a.creator, &a.engine_type_with_version).cmp(&(
                &b.username,
                &b.creator,
                &b.engine_type_with_version,
            ))
        });
        let total = rows.len();
        let size = q.size.unwrap_or(20).clamp(1, 1000) as usize;
        let skip = (q.page.unwrap_or(1).max(1) as usize - 1).saturating_mul(size);
        Ok(AllUserResourceData { resources: rows.into_iter().skip(skip).take(size).collect(), total })
    }
    .await;
    reply(&uri, r)
}

/// The engine types this server runs.
#[utoipa::path(get, path = "/api/rest_j/v1/linkisManager/rm/engineType", tag = "linkisManager",
    responses((status = 200, description = "The engine types", body = Envelope<EngineTypesData>)))]
async fn engine_types(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e.caller(&headers).await.map(|_| {
        let mut engine_type: Vec<String> = e.plugins.iter().map(|p| p.engine_type().to_string()).collect();
        engine_type.sort();
        engine_type.dedup();
        EngineTypesData { engine_type }
    });
    reply(&uri, r)
}

/// End engines by instance (JSON array of `{applicationName|engineType, engineInstance}`):
/// the owner's, or for admins anyone's. Every target is checked before any ends.
#[utoipa::path(post, path = "/api/rest_j/v1/linkisManager/rm/enginekill", tag = "linkisManager",
    request_body = Vec<EngineKillTarget>,
    responses((status = 200, description = "The engines asked to end", body = Envelope<KillEngineData>)))]
async fn engine_kill(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        let targets: Vec<EngineKillTarget> = crate::wire::body(&body)?;
        // The console sends the service's name under `engineType`, the API under `applicationName`:
        // either names the engines' service; the instance names the engine.
        let ids = targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| required(t.engine_instance, &format!("[{i}].engineInstance")))
            .collect::<Result<Vec<_>, _>>()?;
        crate::ops::kill_engines(&e, &c, ids)
    }
    .await;
    reply(&uri, r)
}

/// End the idle (Unlock) engines of one ECM (admins).
#[utoipa::path(post, path = "/api/rest_j/v1/linkisManager/rm/killUnlockEngineByEM", tag = "linkisManager",
    request_body = EcmInstanceRequest,
    responses((status = 200, description = "What was released", body = Envelope<KillUnlockData>)))]
async fn kill_unlock_engine_by_em(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        admin_only(&c)?;
        let req: EcmInstanceRequest = crate::wire::body(&body)?;
        let instance = required(req.instance, "instance")?;
        let (n, freed) = e.operator.kill_unlocked_engines(&instance, &c.user)?;
        Ok(KillUnlockData { result: KilledEngines { kill_engine_num: n, memory: freed.memory, cores: freed.cores } })
    }
    .await;
    reply(&uri, r)
}

/// ECMs are `linkis-cg-engineconnmanager`; a body naming another service is refused.
pub(crate) fn ecm_application(name: Option<&str>) -> Result<(), HangarError> {
    match name.filter(|n| !n.is_empty()) {
        Some(n) if n != ECM_APPLICATION => {
            Err(HangarError::invalid(format!("applicationName must be {ECM_APPLICATION}, got '{n}'")))
        }
        _ => Ok(()),
    }
}

pub(crate) const ECM_APPLICATION: &str = "linkis-cg-engineconnmanager";

fn ecm_vo(e: &EcmInfo, owner: &str) -> EcmVo {
    let healthy = e.status == NodeStatus::Running && !e.admin_unhealthy;
    EcmVo {
        application_name: ECM_APPLICATION.into(),
        instance: e.instance.clone(),
        labels: labels_vo(&e.labels),
        node_status: e.status,
        node_healthy: if healthy { NodeHealthy::Healthy } else { NodeHealthy::UnHealthy },
        max_resource: e.resource.max.into(),
        used_resource: e.resource.used.into(),
        locked_resource: e.resource.locked.into(),
        left_resource: e.resource.left().into(),
        engine_count: e.engines,
        owner: owner.to_string(),
        start_time: e.registered_ms,
        description: e.description.clone(),
    }
}

/// The account the server runs as: the ECMs' owner.
fn server_owner() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name).unwrap_or_default()
}

/// Every EngineConnManager (admins), filtered, by instance.
#[utoipa::path(get, path = "/api/rest_j/v1/linkisManager/listAllEMs", tag = "linkisManager", params(EcmListQuery),
    responses((status = 200, description = "The ECMs", body = Envelope<EcmsData>)))]
async fn list_ecms(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = async {
        admin_only(&e.caller(&headers).await?)?;
        let q: EcmListQuery = crate::wire::query(&uri)?;
        let owner = server_owner();
        let (instance, healthy) = (non_empty(q.instance), non_empty(q.node_healthy));
        let (owner_q, tenant) = (non_empty(q.owner), non_empty(q.tenant_label));
        if owner_q.as_ref().is_some_and(|o| !o.eq_ignore_ascii_case(&owner)) {
            return Ok(EcmsData { ems: Vec::new() });
        }
        let mut ems: Vec<EcmVo> = e
            .operator
            .list_ecms()
            .iter()
            .filter(|x| instance.as_deref().is_none_or(|i| x.instance.contains(i)))
            .filter(|x| tenant.as_deref().is_none_or(|t| x.labels.get(TENANT) == Some(t)))
            .map(|x| ecm_vo(x, &owner))
            .filter(|v| healthy.as_deref().is_none_or(|h| format!("{:?}", v.node_healthy).eq_ignore_ascii_case(h)))
            .collect();
        ems.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(EcmsData { ems })
    }
    .await;
    reply(&uri, r)
}

/// Change an ECM's labels, health and description (admins). Asks then
/// select ECMs by the new labels; an UnHealthy one gets no new engine.
#[utoipa::path(put, path = "/api/rest_j/v1/linkisManager/modifyEMInfo", tag = "linkisManager",
    request_body = ModifyEmRequest,
    responses((status = 200, description = "Changed", body = Envelope<Empty>)))]
async fn modify_em_info(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        admin_only(&e.caller(&headers).await?)?;
        let req: ModifyEmRequest = crate::wire::body(&body)?;
        ecm_application(req.application_name.as_deref())?;
        let instance = required(req.instance, "instance")?;
        let healthy = match req.em_status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some("Healthy" | "WARN" | "StockAvailable") => Some(true),
            Some("UnHealthy" | "StockUnavailable") => Some(false),
            Some(other) => {
                return Err(HangarError::invalid(format!(
                    "emStatus must be one of {EDITABLE_HEALTH:?}, got '{other}'"
                )));
            }
        };
        let labels = req.labels.map(|ls| ls.into_iter().map(|l| (l.label_key, l.string_value)).collect());
        e.operator.modify_ecm(&instance, EcmChange { labels, healthy, description: req.description })?;
        Ok(Empty {})
    }
    .await;
    reply(&uri, r)
}

const EDITABLE_HEALTH: [&str; 5] = ["Healthy", "UnHealthy", "WARN", "StockAvailable", "StockUnavailable"];

/// The health states of an ECM (`onlyEditable`: those an admin may set).
#[utoipa::path(get, path = "/api/rest_j/v1/linkisManager/listAllECMHealthyStatus", tag = "linkisManager",
    params(HealthyStatusQuery),
    responses((status = 200, description = "The states", body = Envelope<NodeHealthyData>)))]
async fn ecm_healthy_states(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = async {
        e.caller(&headers).await?;
        let q: HealthyStatusQuery = crate::wire::query(&uri)?;
        let mut node_healthy: Vec<String> = EDITABLE_HEALTH.iter().map(|s| s.to_string()).collect();
        if q.only_editable != Some(true) {
            node_healthy.push("Unknown".into());
        }
        Ok(NodeHealthyData { node_healthy })
    }
    .await;
    reply(&uri, r)
}

/// The states of an engine or ECM.
#[utoipa::path(get, path = "/api/rest_j/v1/linkisManager/listAllNodeHealthyStatus", tag = "linkisManager",
    responses((status = 200, description = "The states", body = Envelope<NodeStatusData>)))]
async fn node_states(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e.caller(&headers).await.map(|_| NodeStatusData { node_status: NodeStatus::ALL.to_vec() });
    reply(&uri, r)
}

/// Ended engines, newest first: the caller's (admins: everyone's, or `creator`'s).
#[utoipa::path(get, path = "/api/rest_j/v1/linkisManager/ecinfo/ecrHistoryList", tag = "linkisManager",
    params(EcrHistoryQuery),
    responses((status = 200, description = "One page of ended engines", body = Envelope<EcrHistoryData>)))]
async fn ecr_history_list(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        let q: EcrHistoryQuery = crate::wire::query(&uri)?;
        let filter = ecr_filter(q, &c)?;
        let (rows, total) = e.store.list_engine_history(&filter).await?;
        let engine_list = rows
            .into_iter()
            .map(|r| EcrRecordVo {
                id: r.id,
                create_user: r.create_user,
                label_value: r.label_value,
                ticket_id: r.ticket_id,
                service_instance: r.service_instance,
                used_resource: r.used_resource,
                request_resource: r.request_resource,
                released_resource: r.released_resource,
                ecm_instance: r.ecm_instance,
                request_times: r.request_times,
                used_times: r.used_times,
                release_times: r.release_times,
                used_time: r.used_time_ms,
                create_time: r.create_time_ms,
                release_time: r.release_time_ms,
                log_dir_suffix: r.log_dir_suffix,
                engine_type: r.engine_type,
                status: r.status,
                release_reason: r.reason,
            })
            .collect();
        Ok(EcrHistoryData { engine_list, total_page: total })
    }
    .await;
    reply(&uri, r)
}

fn ecr_filter(q: EcrHistoryQuery, c: &crate::auth::Caller) -> Result<hangar_store::EngineHistoryFilter, HangarError> {
    let user = if c.admin { non_empty(q.creator) } else { Some(c.user.clone()) };
    let since_ms = non_empty(q.start_date).map(|d| console_date(&d, "startDate")).transpose()?;
    let until_ms = non_empty(q.end_date).map(|d| console_date(&d, "endDate")).transpose()?;
    Ok(hangar_store::EngineHistoryFilter {
        user,
        instance: non_empty(q.instance),
        engine_type: non_empty(q.engine_type),
        status: non_empty(q.status),
        // Seconds are whole in the console's dates: the end second is included.
        until_ms: until_ms.map(|t| t + 999),
        since_ms,
        page: q.page_now.unwrap_or(1).max(1),
        page_size: q.page_size.unwrap_or(20).clamp(1, 1000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_type_names() {
        assert!(engine_type_is("shell", "shell-1"));
        assert!(engine_type_is("shell-1", "shell-1"));
        assert!(engine_type_is("python", "python-python3"));
        assert!(!engine_type_is("shel", "shell-1"));
        assert!(!engine_type_is("shell-2", "shell-1"));
    }

    #[test]
    fn console_dates_and_history_filter() {
        let a = console_date("2024-03-01 10:00:00", "startDate").expect("date");
        let b = console_date("2024-03-01 10:00:01", "startDate").expect("date");
        assert_eq!(b - a, 1000);
        let err = console_date("2024-03-01", "startDate").expect_err("no time");
        assert!(err.message.contains("startDate"), "{err}");
        let uri: Uri =
            "/x?creator=bob&startDate=2024-03-01%2010%3A00%3A00&endDate=2024-03-01%2010%3A00%3A00&status=Success"
                .parse()
                .expect("uri");
        let q = |uri: &Uri| crate::wire::query::<EcrHistoryQuery>(uri).expect("query");
        let admin = crate::auth::Caller { user: "admin".into(), admin: true };
        let f = ecr_filter(q(&uri), &admin).expect("filter");
        assert_eq!((f.user.as_deref(), f.since_ms, f.until_ms), (Some("bob"), Some(a), Some(a + 999)));
        assert_eq!((f.status.as_deref(), f.page, f.page_size), (Some("Success"), 1, 20));
        let alice = crate::auth::Caller { user: "alice".into(), admin: false };
        assert_eq!(ecr_filter(q(&uri), &alice).expect("filter").user.as_deref(), Some("alice"));
    }

    #[test]
    fn load_levels() {
        let max = Resource::new(100, 10, 10);
        assert_eq!(load_status(Resource::new(10, 1, 1), Resource::default(), max), "Normal");
        assert_eq!(load_status(Resource::new(10, 7, 1), Resource::default(), max), "Warn");
        assert_eq!(load_status(Resource::new(10, 1, 9), Resource::new(0, 0, 1), max), "Critical");
    }
}
