//! The `filesystem` endpoints: path checks, directory trees, result paging, logs.
//!
//! A path is accepted only after normalisation (symlinks resolved) and only
//! inside the caller's own folder: `<results>/<user>/...` for results, a
//! `<logs>/.../<user>/<taskId>.log` for logs; admins may read anything under
//! those roots.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use hangar_protocol::Envelope;
use hangar_protocol::{ErrorCode, HangarError, dolphin, logline};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Entrance;
use crate::api::{reply, required};
use crate::auth::Caller;
use crate::wire::files::*;

/// The one answer for a path that does not exist and one that is not the
/// caller's, so paths cannot be probed.
fn denied(raw: &str) -> HangarError {
    HangarError::new(ErrorCode::PermissionDenied, format!("path '{raw}' does not exist or is not yours"))
}

/// `file:///abs` or `/abs`, absolute, without `.` or `..` parts.
fn lexical(raw: &str) -> Result<PathBuf, HangarError> {
    let p = if let Some(rest) = raw.strip_prefix("file://") {
        rest
    } else if raw.contains("://") {
        return Err(HangarError::invalid(format!("path '{raw}' must be a file:// path")));
    } else {
        raw
    };
    if p.is_empty() {
        return Err(HangarError::invalid("path is required"));
    }
    let p = Path::new(p);
    if !p.is_absolute() {
        return Err(HangarError::invalid(format!("path '{raw}' must be absolute")));
    }
    if p.components().any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir)) {
        return Err(denied(raw));
    }
    Ok(p.to_path_buf())
}

/// A path below a trusted root, opened only by walking it without
/// following links (users own their result folders and may put links there).
#[derive(Debug, Clone)]
pub(crate) struct GuardedPath {
    pub root: PathBuf,
    pub rel: PathBuf,
}

impl GuardedPath {
    pub fn full(&self) -> PathBuf {
        self.root.join(&self.rel)
    }
}

/// A result path the caller may read (its own folder; admins: every user's).
pub(crate) fn result_path(results_root: &Path, caller: &Caller, raw: &str) -> Result<GuardedPath, HangarError> {
    let path = lexical(raw)?;
    let root = std::fs::canonicalize(results_root).map_err(|_| denied(raw))?;
    let allowed = if caller.admin { root } else { root.join(&caller.user) };
    let rel = path.strip_prefix(&allowed).map_err(|_| denied(raw))?.to_path_buf();
    // Exists (a folder or a file), and no link on the way, the last part included.
    let exists = hangar_fsguard::open_dir(&allowed, &rel).is_ok() || hangar_fsguard::open_file(&allowed, &rel).is_ok();
    if !exists {
        return Err(denied(raw));
    }
    Ok(GuardedPath { root: allowed, rel })
}

/// A job log path the caller may read (job logs are the server's own files).
pub(crate) fn log_path(logs_root: &Path, caller: &Caller, raw: &str) -> Result<PathBuf, HangarError> {
    let path = lexical(raw)?;
    let root = std::fs::canonicalize(logs_root).map_err(|_| denied(raw))?;
    let rel = path.strip_prefix(&root).map_err(|_| denied(raw))?;
    let owner = path.parent().and_then(Path::file_name).and_then(|n| n.to_str());
    if !(caller.admin || owner == Some(caller.user.as_str())) {
        return Err(denied(raw));
    }
    hangar_fsguard::open_file(&root, rel).map_err(|_| denied(raw))?;
    Ok(path)
}

fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

fn properties(meta: &std::fs::Metadata) -> FileProperties {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis())
        .unwrap_or(0);
    FileProperties { size: meta.len().to_string(), modifytime: modified.to_string() }
}

/// Linkis `dirFileTrees` of one folder (one level), listed through the
/// folder opened without following links.
pub(crate) fn dir_tree(at: &GuardedPath) -> Result<DirFileTree, HangarError> {
    use std::os::fd::AsRawFd;
    let dir = at.full();
    let fd = hangar_fsguard::open_dir(&at.root, &at.rel)
        .map_err(|_| HangarError::invalid(format!("{} is not a folder", dir.display())))?;
    let opened = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let mut entries: Vec<(PathBuf, std::fs::Metadata)> = std::fs::read_dir(&opened)
        .map_err(|e| HangarError::internal(format!("cannot list {}: {e}", dir.display())))?
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| (dir.join(e.file_name()), m)))
        .collect();
    entries.sort_by_key(|(p, _)| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let num: String = name.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
        (num.parse::<u64>().unwrap_or(u64::MAX), name.to_string())
    });
    let name_of = |p: &Path| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    let children = entries
        .iter()
        .map(|(p, m)| DirFileTree {
            name: name_of(p),
            path: file_uri(p),
            properties: Some(properties(m)),
            children: None,
            is_leaf: !m.is_dir(),
            parent_path: Some(file_uri(&dir)),
        })
        .collect();
    Ok(DirFileTree {
        name: name_of(&dir),
        path: file_uri(&dir),
        properties: None,
        children: Some(children),
        is_leaf: false,
        parent_path: dir.parent().map(file_uri),
    })
}

/// The most cell bytes one `openFile` page carries.
const MAX_PAGE_BYTES: usize = 256 << 20;

/// One page of a result-set file in Linkis's `openFile` shape.
pub(crate) fn open_result(
    at: &GuardedPath,
    page: usize,
    page_size: usize,
    null_value: &str,
) -> Result<OpenFileData, HangarError> {
    let shown = at.full().display().to_string();
    let f = hangar_fsguard::open_file(&at.root, &at.rel).map_err(|_| denied(&shown))?;
    let page_size = page_size.clamp(1, 100_000);
    let page = page.max(1);
    // One page in memory, however large the file.
    let reader = std::io::BufReader::with_capacity(256 << 10, f);
    let rs = dolphin::read_page(reader, (page - 1).saturating_mul(page_size), page_size, MAX_PAGE_BYTES)?;
    let total = rs.total;
    let total_page = total.div_ceil(page_size);
    let rows: Vec<Vec<String>> = rs
        .rows
        .into_iter()
        .map(|r| r.into_iter().map(|c| c.unwrap_or_else(|| null_value.to_string())).collect())
        .collect();
    let metadata = if rs.rs_type == dolphin::TABLE {
        let column = |c: &dolphin::Column| ColumnVo {
            column_name: c.name.clone(),
            comment: c.comment.clone(),
            data_type: c.data_type.clone(),
        };
        ResultMetadata::Columns(rs.columns.iter().map(column).collect())
    } else {
        ResultMetadata::Text("NULL".into())
    };
    Ok(OpenFileData {
        metadata,
        file_content: rows,
        rs_type: rs.rs_type.to_string(),
        total_line: total,
        total_page,
        page,
        total_column: rs.columns.len(),
    })
}

pub(crate) fn routes(r: OpenApiRouter<Arc<Entrance>>) -> OpenApiRouter<Arc<Entrance>> {
    r.routes(routes!(dir_file_trees)).routes(routes!(open_file)).routes(routes!(open_log))
}

/// One level of a result folder.
#[utoipa::path(get, path = "/api/rest_j/v1/filesystem/getDirFileTrees", tag = "filesystem", params(PathQuery),
    responses((status = 200, description = "The folder and its entries", body = Envelope<DirFileTreesData>)))]
async fn dir_file_trees(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let q: PathQuery = crate::wire::query(&uri)?;
        let path = result_path(&e.cfg.results_dir, &caller, &required(q.path, "query parameter path")?)?;
        tokio::task::spawn_blocking(move || dir_tree(&path))
            .await
            .map_err(|e| HangarError::internal(e.to_string()))?
            .map(|dir_file_trees| DirFileTreesData { dir_file_trees })
    }
    .await;
    reply(&uri, result)
}

/// One page of a result set.
#[utoipa::path(get, path = "/api/rest_j/v1/filesystem/openFile", tag = "filesystem", params(OpenFileQuery),
    responses((status = 200, description = "The page", body = Envelope<OpenFileData>)))]
async fn open_file(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let q: OpenFileQuery = crate::wire::query(&uri)?;
        let path = result_path(&e.cfg.results_dir, &caller, &required(q.path, "query parameter path")?)?;
        let null_value = q.null_value.filter(|s| !s.is_empty()).unwrap_or_else(|| "NULL".into());
        let (page, size) = (q.page.unwrap_or(1), q.page_size.unwrap_or(5000));
        tokio::task::spawn_blocking(move || open_result(&path, page, size, &null_value))
            .await
            .map_err(|e| HangarError::internal(e.to_string()))?
    }
    .await;
    reply(&uri, result)
}

/// A job's log file, split by level.
#[utoipa::path(get, path = "/api/rest_j/v1/filesystem/openLog", tag = "filesystem", params(PathQuery),
    responses((status = 200, description = "The log", body = Envelope<OpenLogData>)))]
async fn open_log(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let caller = e.caller(&headers).await?;
        let q: PathQuery = crate::wire::query(&uri)?;
        let path = log_path(&e.cfg.logs_dir, &caller, &required(q.path, "query parameter path")?)?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|err| HangarError::internal(format!("cannot read log: {err}")))?;
        Ok(OpenLogData { log: logline::split_levels(text.lines()) })
    }
    .await;
    reply(&uri, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user: &str, admin: bool) -> Caller {
        Caller { user: user.into(), admin }
    }

    #[test]
    fn paths_stay_inside_the_users_folder() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("results");
        std::fs::create_dir_all(root.join("alice/d")).expect("mk");
        std::fs::create_dir_all(root.join("bob/d")).expect("mk");
        std::fs::write(root.join("bob/d/_0.dolphin"), b"x").expect("w");
        std::os::unix::fs::symlink(root.join("bob/d"), root.join("alice/link")).expect("ln");
        let alice = caller("alice", false);
        let ok = format!("file://{}", root.join("alice/d").display());
        assert!(result_path(&root, &alice, &ok).is_ok());
        for bad in [
            format!("{}", root.join("bob/d/_0.dolphin").display()),
            format!("{}/alice/../bob/d", root.display()),
            format!("{}", root.join("alice/link").display()),
            "/etc/passwd".to_string(),
        ] {
            let e = result_path(&root, &alice, &bad).expect_err(&bad);
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{bad}");
            assert!(e.message.ends_with("does not exist or is not yours"), "{e:?}");
        }
        // Missing and not yours look the same.
        let missing =
            result_path(&root, &alice, &root.join("alice/nope/x").display().to_string()).expect_err("missing");
        assert_eq!(missing.code, ErrorCode::PermissionDenied);
        // A link in the caller's own folder is not followed.
        std::os::unix::fs::symlink(root.join("bob/d/_0.dolphin"), root.join("alice/d/_0.dolphin")).expect("ln");
        let e = result_path(&root, &alice, &root.join("alice/d/_0.dolphin").display().to_string()).expect_err("link");
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        // ... nor when it is put there after the check.
        std::fs::write(root.join("alice/d/_1.dolphin"), b"x").expect("w");
        let at = result_path(&root, &alice, &root.join("alice/d/_1.dolphin").display().to_string()).expect("a file");
        std::fs::remove_file(root.join("alice/d/_1.dolphin")).expect("rm");
        std::os::unix::fs::symlink(root.join("bob/d/_0.dolphin"), root.join("alice/d/_1.dolphin")).expect("ln");
        assert_eq!(open_result(&at, 1, 10, "NULL").expect_err("link").code, ErrorCode::PermissionDenied);
        assert_eq!(result_path(&root, &alice, "hdfs:///x").expect_err("scheme").code, ErrorCode::InvalidRequest);
        assert_eq!(result_path(&root, &alice, "relative/x").expect_err("rel").code, ErrorCode::InvalidRequest);
        assert!(result_path(&root, &caller("root", true), &root.join("bob/d").display().to_string()).is_ok());
    }
}
