//! The material library's REST API in Linkis's `bml` shapes (upload,
//! updateVersion, download, getVersions, getResources, getBasic,
//! deleteVersion, deleteResource(s)) and `engineplugin/refreshAll`.
//! A user sees and changes only their own resources.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hangar_bml::MaterialLibrary;
use hangar_protocol::{ErrorCode, HangarError};
use hangar_store::MaterialVersion;
use serde_json::{Value, json};

use crate::Entrance;
use crate::api::{PREFIX, Params, parse_json, reply};

pub(crate) fn routes(max_upload: u64) -> Router<Arc<Entrance>> {
    // Room for the multipart framing around the largest file allowed.
    let limit = usize::try_from(max_upload).unwrap_or(usize::MAX).saturating_add(64 << 10);
    Router::new()
        .route(&format!("{PREFIX}/bml/upload"), post(upload))
        .route(&format!("{PREFIX}/bml/updateVersion"), post(upload))
        .layer(DefaultBodyLimit::max(limit))
        .route(&format!("{PREFIX}/bml/download"), get(download))
        .route(&format!("{PREFIX}/bml/getVersions"), get(get_versions))
        .route(&format!("{PREFIX}/bml/getResources"), get(get_resources))
        .route(&format!("{PREFIX}/bml/getBasic"), get(get_basic))
        .route(&format!("{PREFIX}/bml/deleteVersion"), post(delete_one))
        .route(&format!("{PREFIX}/bml/deleteResource"), post(delete_one))
        .route(&format!("{PREFIX}/bml/deleteResources"), post(delete_resources))
        .route(&format!("{PREFIX}/engineplugin/refreshAll"), get(refresh_all).post(refresh_all))
}

fn library(e: &Entrance) -> Result<&Arc<MaterialLibrary>, HangarError> {
    e.manager.material_library().ok_or_else(|| HangarError::not_found("this server has no material library"))
}

fn version_vo(v: &MaterialVersion) -> Value {
    json!({
        "resourceId": v.resource_id,
        "version": v.version,
        "user": v.owner,
        "fileName": v.file_name,
        "size": v.size,
        "sha256": v.sha256,
        "startTime": v.created_ms,
    })
}

/// The one file of a multipart body and its other text fields.
pub(crate) async fn read_multipart(
    mut mp: Multipart,
    max: u64,
) -> Result<(String, Vec<u8>, HashMap<String, String>), HangarError> {
    let mut file: Option<(String, Vec<u8>)> = None;
    let mut fields = HashMap::new();
    let bad = |e: axum::extract::multipart::MultipartError| {
        HangarError::invalid(format!("multipart body refused: {} (files may be at most {max} bytes)", e.body_text()))
    };
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        match field.file_name().map(str::to_string) {
            Some(file_name) => {
                if file.is_some() {
                    return Err(HangarError::invalid("send one file per upload"));
                }
                let bytes = field.bytes().await.map_err(bad)?;
                file = Some((file_name, bytes.to_vec()));
            }
            None => {
                let text = field.text().await.map_err(bad)?;
                fields.insert(name, text);
            }
        }
    }
    let (name, bytes) = file.ok_or_else(|| HangarError::invalid("the multipart body has no file part"))?;
    // Browsers may send a path; keep only its last component.
    let name = name.rsplit(['/', '\\']).next().unwrap_or_default().to_string();
    Ok((name, bytes, fields))
}

/// `upload` (a new resource) and `updateVersion` (`resourceId` in the query
/// or the form: its next version), each one file as multipart/form-data.
async fn upload(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Params,
    mp: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let lib = library(&e)?;
        let mp =
            mp.map_err(|r| HangarError::invalid(format!("send the file as multipart/form-data: {}", r.body_text())))?;
        let (name, bytes, fields) = read_multipart(mp, lib.max_upload()).await?;
        let v = if uri.path().ends_with("/updateVersion") {
            let id = q
                .get("resourceId")
                .or_else(|| fields.get("resourceId"))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| HangarError::invalid("resourceId is required"))?;
            lib.update(&caller.user, id, &name, bytes).await?
        } else {
            lib.upload(&caller.user, &name, bytes).await?
        };
        Ok(json!({"resourceId": v.resource_id, "version": v.version, "sha256": v.sha256, "size": v.size}))
    }
    .await;
    reply(&uri, result)
}

fn resource_id(q: &HashMap<String, String>) -> Result<&str, HangarError> {
    q.get("resourceId")
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| HangarError::invalid("resourceId is required"))
}

async fn download(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Query(q): Params) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let lib = library(&e)?;
        let v = lib.version(&caller.user, resource_id(&q)?, q.get("version").map(String::as_str)).await?;
        let missing = || HangarError::internal(format!("the bytes of {}@{} are missing", v.resource_id, v.version));
        let path = lib.blob_path(&v.sha256).ok_or_else(missing)?;
        let bytes = tokio::fs::read(&path).await.map_err(|_| missing())?;
        Ok((v, bytes))
    }
    .await;
    match result {
        Ok((v, bytes)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", v.file_name.replace('"', ""))),
            ],
            bytes,
        )
            .into_response(),
        Err(err) => reply(&uri, Err(err)),
    }
}

async fn get_versions(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Query(q): Params) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let id = resource_id(&q)?;
        let versions = library(&e)?.owned_versions(&caller.user, id).await?;
        let versions: Vec<Value> = versions.iter().map(version_vo).collect();
        Ok(json!({"ResourceVersions": {"resourceId": id, "user": caller.user, "versions": versions}}))
    }
    .await;
    reply(&uri, result)
}

async fn get_resources(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let all = library(&e)?.resources_of(&caller.user).await?;
        Ok(json!({"Resources": all.iter().map(version_vo).collect::<Vec<_>>()}))
    }
    .await;
    reply(&uri, result)
}

async fn get_basic(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, Query(q): Params) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let versions = library(&e)?.owned_versions(&caller.user, resource_id(&q)?).await?;
        let (first, last) = (&versions[0], &versions[versions.len() - 1]);
        Ok(json!({"basic": {
            "resourceId": first.resource_id,
            "owner": first.owner,
            "createTime": first.created_ms,
            "downloadedFileName": last.file_name,
            "expireTime": null,
            "numberOfVerions": versions.len(),
        }}))
    }
    .await;
    reply(&uri, result)
}

fn field<'a>(body: &'a Value, key: &str) -> Result<&'a str, HangarError> {
    body.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| HangarError::invalid(format!("{key} is required")))
}

/// `deleteVersion` (`resourceId` + `version`) and `deleteResource` (`resourceId`: every version).
async fn delete_one(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let body = parse_json(&body)?;
        let version = if uri.path().ends_with("/deleteVersion") { Some(field(&body, "version")?) } else { None };
        library(&e)?.delete(&caller.user, field(&body, "resourceId")?, version).await?;
        Ok(json!({}))
    }
    .await;
    reply(&uri, result)
}

async fn delete_resources(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        let body = parse_json(&body)?;
        let ids: Vec<&str> = body
            .get("resourceIds")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .filter(|v: &Vec<&str>| !v.is_empty())
            .ok_or_else(|| HangarError::invalid("resourceIds must be a non-empty list of resource ids"))?;
        let lib = library(&e)?;
        // All must be the caller's before any goes.
        for id in &ids {
            lib.owned_versions(&caller.user, id).await?;
        }
        for id in ids {
            lib.delete(&caller.user, id, None).await?;
        }
        Ok(json!({}))
    }
    .await;
    reply(&uri, result)
}

/// Re-scan the plugin materials (admins only).
async fn refresh_all(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers)?;
        if !caller.admin {
            return Err(HangarError::new(ErrorCode::PermissionDenied, "only admins may refresh engine plugins"));
        }
        let found = library(&e)?.refresh_plugins().await?;
        Ok(json!({"materials": found}))
    }
    .await;
    reply(&uri, result)
}
