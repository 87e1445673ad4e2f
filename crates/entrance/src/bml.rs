//! The material library's REST API in Linkis's `bml` shapes (upload,
//! updateVersion, download, getVersions, getResources, getBasic,
//! deleteVersion, deleteResource(s)) and `engineplugin/refreshAll`.
//! A user sees and changes only their own resources.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use hangar_bml::MaterialLibrary;
use hangar_protocol::{Envelope, ErrorCode, HangarError};
use hangar_store::MaterialVersion;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Entrance;
use crate::api::{error_reply, method_of, reply, required};
use crate::wire::Empty;
use crate::wire::bml::*;

pub(crate) fn routes(max_upload: u64) -> OpenApiRouter<Arc<Entrance>> {
    // Room for the multipart framing around the largest file allowed.
    let limit = usize::try_from(max_upload).unwrap_or(usize::MAX).saturating_add(64 << 10);
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(update_version))
        .layer(DefaultBodyLimit::max(limit))
        .routes(routes!(download))
        .routes(routes!(get_versions))
        .routes(routes!(get_resources))
        .routes(routes!(get_basic))
        .routes(routes!(delete_version))
        .routes(routes!(delete_resource))
        .routes(routes!(delete_resources))
        .routes(routes!(refresh_all))
}

fn library(e: &Entrance) -> Result<&Arc<MaterialLibrary>, HangarError> {
    e.operator.material_library().ok_or_else(|| HangarError::not_found("this server has no material library"))
}

fn version_vo(v: &MaterialVersion) -> VersionVo {
    VersionVo {
        resource_id: v.resource_id.clone(),
        version: v.version.clone(),
        user: v.owner.clone(),
        file_name: v.file_name.clone(),
        size: v.size,
        sha256: v.sha256.clone(),
        start_time: v.created_ms,
    }
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

/// A new resource: one file as multipart/form-data.
#[utoipa::path(post, path = "/api/rest_j/v1/bml/upload", tag = "bml",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "The resource's first version", body = Envelope<UploadData>)))]
async fn upload(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    mp: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    store_upload(&e, &uri, &headers, mp).await
}

/// A resource's next version (`resourceId` in the query or the form).
#[utoipa::path(post, path = "/api/rest_j/v1/bml/updateVersion", tag = "bml",
    params(ResourceQuery),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "The new version", body = Envelope<UploadData>)))]
async fn update_version(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    mp: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    store_upload(&e, &uri, &headers, mp).await
}

async fn store_upload(
    e: &Entrance,
    uri: &Uri,
    headers: &HeaderMap,
    mp: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let result = async {
        let caller = e.caller(headers).await?;
        let lib = library(e)?;
        let q: ResourceQuery = crate::wire::query(uri)?;
        let mp =
            mp.map_err(|r| HangarError::invalid(format!("send the file as multipart/form-data: {}", r.body_text())))?;
        let (name, bytes, mut fields) = read_multipart(mp, lib.max_upload()).await?;
        let v = if uri.path().ends_with("/updateVersion") {
            let id = required(q.resource_id.or_else(|| fields.remove("resourceId")), "resourceId")?;
            lib.update(&caller.user, &id, &name, bytes).await?
        } else {
            lib.upload(&caller.user, &name, bytes).await?
        };
        Ok(UploadData { resource_id: v.resource_id, version: v.version, sha256: v.sha256, size: v.size })
    }
    .await;
    reply(uri, result)
}

/// The bytes of one version (default: the latest).
#[utoipa::path(get, path = "/api/rest_j/v1/bml/download", tag = "bml", params(ResourceQuery),
    responses((status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>)))]
async fn download(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let lib = library(&e)?;
        let q: ResourceQuery = crate::wire::query(&uri)?;
        let v = lib.version(&caller.user, &required(q.resource_id, "resourceId")?, q.version.as_deref()).await?;
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
        Err(err) => error_reply(method_of(&uri), &err),
    }
}

/// Every version of one of the caller's resources.
#[utoipa::path(get, path = "/api/rest_j/v1/bml/getVersions", tag = "bml", params(ResourceQuery),
    responses((status = 200, description = "The versions", body = Envelope<VersionsData>)))]
async fn get_versions(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let q: ResourceQuery = crate::wire::query(&uri)?;
        let id = required(q.resource_id, "resourceId")?;
        let versions = library(&e)?.owned_versions(&caller.user, &id).await?;
        let versions = versions.iter().map(version_vo).collect();
        Ok(VersionsData { resource_versions: ResourceVersions { resource_id: id, user: caller.user, versions } })
    }
    .await;
    reply(&uri, result)
}

/// The caller's resources (the latest version of each).
#[utoipa::path(get, path = "/api/rest_j/v1/bml/getResources", tag = "bml",
    responses((status = 200, description = "The resources", body = Envelope<ResourcesData>)))]
async fn get_resources(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let all = library(&e)?.resources_of(&caller.user).await?;
        Ok(ResourcesData { resources: all.iter().map(version_vo).collect() })
    }
    .await;
    reply(&uri, result)
}

/// A resource's owner, creation time and number of versions.
#[utoipa::path(get, path = "/api/rest_j/v1/bml/getBasic", tag = "bml", params(ResourceQuery),
    responses((status = 200, description = "The resource", body = Envelope<BasicData>)))]
async fn get_basic(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let q: ResourceQuery = crate::wire::query(&uri)?;
        let id = required(q.resource_id, "resourceId")?;
        let versions = library(&e)?.owned_versions(&caller.user, &id).await?;
        let (Some(first), Some(last)) = (versions.first(), versions.last()) else {
            return Err(HangarError::not_found(format!("no resource {id}")));
        };
        Ok(BasicData {
            basic: BasicVo {
                resource_id: first.resource_id.clone(),
                owner: first.owner.clone(),
                create_time: first.created_ms,
                downloaded_file_name: last.file_name.clone(),
                expire_time: None,
                number_of_versions: versions.len(),
            },
        })
    }
    .await;
    reply(&uri, result)
}

/// Delete one version of one of the caller's resources.
#[utoipa::path(post, path = "/api/rest_j/v1/bml/deleteVersion", tag = "bml", request_body = DeleteRequest,
    responses((status = 200, description = "Deleted", body = Envelope<Empty>)))]
async fn delete_version(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    delete_one(&e, &uri, &headers, &body, true).await
}

/// Delete one of the caller's resources, every version.
#[utoipa::path(post, path = "/api/rest_j/v1/bml/deleteResource", tag = "bml", request_body = DeleteRequest,
    responses((status = 200, description = "Deleted", body = Envelope<Empty>)))]
async fn delete_resource(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    delete_one(&e, &uri, &headers, &body, false).await
}

async fn delete_one(e: &Entrance, uri: &Uri, headers: &HeaderMap, body: &Bytes, one_version: bool) -> Response {
    let result = async {
        let caller = e.caller(headers).await?;
        let req: DeleteRequest = crate::wire::body(body)?;
        let version = if one_version { Some(required(req.version, "version")?) } else { None };
        library(e)?.delete(&caller.user, &required(req.resource_id, "resourceId")?, version.as_deref()).await?;
        Ok(Empty {})
    }
    .await;
    reply(uri, result)
}

/// Delete several of the caller's resources: all or none.
#[utoipa::path(post, path = "/api/rest_j/v1/bml/deleteResources", tag = "bml", request_body = DeleteResourcesRequest,
    responses((status = 200, description = "Deleted", body = Envelope<Empty>)))]
async fn delete_resources(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let req: DeleteResourcesRequest = crate::wire::body(&body)?;
        let ids = req.resource_ids;
        if ids.is_empty() {
            return Err(HangarError::invalid("resourceIds must be a non-empty list of resource ids"));
        }
        let lib = library(&e)?;
        // All must be the caller's before any goes.
        for id in &ids {
            lib.owned_versions(&caller.user, id).await?;
        }
        for id in &ids {
            lib.delete(&caller.user, id, None).await?;
        }
        Ok(Empty {})
    }
    .await;
    reply(&uri, result)
}

/// Re-scan the plugin materials (admins only).
#[utoipa::path(method(get, post), path = "/api/rest_j/v1/engineplugin/refreshAll", tag = "engineplugin",
    responses((status = 200, description = "The materials found", body = Envelope<RefreshData>)))]
async fn refresh_all(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        if !caller.admin {
            return Err(HangarError::new(
                ErrorCode::PermissionDenied,
                "only admins may refresh engine plugins (admins are named by the server's auth.admins)",
            ));
        }
        let found = library(&e)?.refresh_plugins().await?;
        Ok(RefreshData { materials: found })
    }
    .await;
    reply(&uri, result)
}
