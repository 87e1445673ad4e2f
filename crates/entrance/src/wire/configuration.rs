//! Parameter configuration in Linkis's `configuration` shapes: the category
//! tree, the full trees of settings with their values, a save, the engine types.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::wire::Scalar;

/// A creator (level 1) or an engine type of it (level 2): Linkis's CategoryLabelVo.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CategoryVo {
    pub category_id: i64,
    pub label_id: i64,
    /// A creator (`IDE`, `GlobalSettings`) or an engine type with its version (`spark-3.4.4`).
    pub category_name: String,
    #[schema(no_recursion)]
    pub child_category: Vec<CategoryVo>,
    pub description: String,
    pub tag: Option<String>,
    pub level: i32,
    pub father_category_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryData {
    #[serde(rename = "Category")]
    pub category: Vec<CategoryVo>,
}

/// `getFullTreesByAppName`: which settings. No creator (or the global
/// settings' name) means the global settings.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct FullTreesQuery {
    /// `IDE`, `nodeexecution`, ... or `GlobalSettings` (also `全局设置`, `*`).
    pub creator: Option<String>,
    /// An engine type (`spark`), or `spark-3.4.4` with its version.
    pub engine_type: Option<String>,
    /// The engine's version (default: the installed one).
    pub version: Option<String>,
    /// Admins: whose values (`*` for the defaults); default the caller's.
    pub user: Option<String>,
}

/// One setting with its value for the scope asked about.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingVo {
    pub id: i64,
    pub key: String,
    pub name: String,
    pub description: String,
    /// What applies when this scope sets nothing: a less specific level's
    /// value, else the catalogue's default (empty: the server's own setting).
    pub default_value: String,
    /// `None`, `NumInterval`, `Regex` or `OFT`.
    pub validate_type: String,
    pub validate_range: String,
    pub is_advanced: bool,
    pub is_hidden: bool,
    pub level: i32,
    /// The engine type it belongs to; empty for the global settings.
    pub engine_type: String,
    pub tree_name: String,
    pub value_id: Option<i64>,
    /// The value stored at this scope; empty when none.
    pub config_value: String,
    pub config_label_id: Option<i64>,
    pub unit: String,
    pub is_user_defined: bool,
    /// The allowed values in words.
    pub special_limit: String,
}

/// Settings of one tree name.
#[derive(Debug, Serialize, ToSchema)]
pub struct TreeVo {
    pub name: String,
    pub description: String,
    pub settings: Vec<SettingVo>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FullTreesData {
    pub full_tree: Vec<TreeVo>,
}

/// `saveFullTree`: the trees as read, with their `configValue`s changed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct SaveFullTreeRequest {
    pub full_tree: Vec<SaveTree>,
    /// `IDE`, ... or the global settings' name.
    pub creator: Option<String>,
    /// `spark-3.4.4`; null for the creator's global settings.
    pub engine_type: Option<String>,
    /// Admins: save for this user, or `*` for the creator's or the global default.
    pub user: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
pub struct SaveTree {
    /// The tree's name (not needed: keys are unique per engine type).
    #[allow(dead_code)]
    pub name: Option<String>,
    pub settings: Vec<SaveSetting>,
}

/// One setting to save: an empty `configValue` clears it (back to the default).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct SaveSetting {
    pub key: String,
    pub config_value: Option<Scalar>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SaveFullTreeData {
    /// Keys set at the scope.
    pub saved: Vec<String>,
    /// Keys cleared at the scope.
    pub cleared: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineTypesData {
    pub engine_type: Vec<String>,
}
