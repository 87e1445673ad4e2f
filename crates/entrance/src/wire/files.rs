//! Result sets and logs: `filesystem/getDirFileTrees`, `openFile`, `openLog`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    /// A `file://` path under the caller's own folder (a job's `resultLocation` or `logPath`).
    pub path: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct OpenFileQuery {
    /// A result-set file (`file://.../_0.dolphin`) under the caller's own folder.
    pub path: Option<String>,
    /// 1-based page (default 1).
    pub page: Option<usize>,
    /// Rows per page (default 5000, at most 100000).
    pub page_size: Option<usize>,
    /// What a NULL cell shows as (default `NULL`).
    pub null_value: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileProperties {
    /// Bytes, as text.
    pub size: String,
    /// Milliseconds since the epoch, as text.
    pub modifytime: String,
}

/// One folder (with its entries one level down) or one entry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirFileTree {
    pub name: String,
    pub path: String,
    pub properties: Option<FileProperties>,
    #[schema(no_recursion)]
    pub children: Option<Vec<DirFileTree>>,
    pub is_leaf: bool,
    pub parent_path: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirFileTreesData {
    pub dir_file_trees: DirFileTree,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ColumnVo {
    pub column_name: String,
    pub comment: String,
    pub data_type: String,
}

/// Columns of a table result; the text `NULL` for a text result.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ResultMetadata {
    Columns(Vec<ColumnVo>),
    Text(String),
}

/// One page of a result set (Linkis `openFile`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenFileData {
    pub metadata: ResultMetadata,
    /// Rows of cells, as text.
    pub file_content: Vec<Vec<String>>,
    /// The result-set type number (`1` text, `2` table).
    #[serde(rename = "type")]
    pub rs_type: String,
    pub total_line: usize,
    pub total_page: usize,
    pub page: usize,
    pub total_column: usize,
}

/// Log text: four strings (ERROR, WARN, INFO, ALL lines).
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenLogData {
    pub log: [String; 4],
}
