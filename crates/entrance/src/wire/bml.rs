//! The material library (`bml`) and `engineplugin/refreshAll`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `upload` / `updateVersion`: one file as multipart/form-data.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file (its name is kept; a path is cut to its last part).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// `updateVersion`: the resource to add a version to (or in the query).
    #[schema(value_type = Option<String>)]
    #[serde(rename = "resourceId")]
    pub resource_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ResourceQuery {
    pub resource_id: Option<String>,
    /// A version such as `v000001` (default: the latest).
    pub version: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadData {
    pub resource_id: String,
    pub version: String,
    pub sha256: String,
    pub size: i64,
}

/// One version of a resource.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionVo {
    pub resource_id: String,
    pub version: String,
    pub user: String,
    pub file_name: String,
    pub size: i64,
    pub sha256: String,
    pub start_time: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceVersions {
    pub resource_id: String,
    pub user: String,
    pub versions: Vec<VersionVo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionsData {
    #[serde(rename = "ResourceVersions")]
    pub resource_versions: ResourceVersions,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResourcesData {
    #[serde(rename = "Resources")]
    pub resources: Vec<VersionVo>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicVo {
    pub resource_id: String,
    pub owner: String,
    pub create_time: i64,
    pub downloaded_file_name: String,
    pub expire_time: Option<i64>,
    /// Linkis's spelling.
    #[serde(rename = "numberOfVerions")]
    pub number_of_versions: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BasicData {
    pub basic: BasicVo,
}

/// `deleteVersion` (`resourceId` + `version`) and `deleteResource` (`resourceId`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct DeleteRequest {
    pub resource_id: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct DeleteResourcesRequest {
    pub resource_ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RefreshData {
    /// The plugin materials found.
    pub materials: Vec<String>,
}
