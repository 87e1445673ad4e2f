//! The `filesystem` endpoints' path checks, directory trees and result paging.
//!
//! A path is accepted only after normalisation (symlinks resolved) and only
//! inside the caller's own folder: `<results>/<user>/...` for results, a
//! `<logs>/.../<user>/<taskId>.log` for logs; admins may read anything under
//! those roots.

use std::path::{Path, PathBuf};

use hangar_protocol::dolphin;
use hangar_protocol::{ErrorCode, HangarError};
use serde_json::{Value, json};

use crate::auth::Caller;

fn denied(raw: &str) -> HangarError {
    HangarError::new(ErrorCode::PermissionDenied, format!("path '{raw}' is outside your own folder"))
}

/// `file:///abs` or `/abs` to a canonical path that exists.
fn canonical(raw: &str) -> Result<PathBuf, HangarError> {
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
    std::fs::canonicalize(p).map_err(|_| HangarError::not_found(format!("path '{raw}' does not exist")))
}

/// A result path the caller may read.
pub(crate) fn result_path(results_root: &Path, caller: &Caller, raw: &str) -> Result<PathBuf, HangarError> {
    let path = canonical(raw)?;
    let root = std::fs::canonicalize(results_root).map_err(|_| denied(raw))?;
    let allowed = if caller.admin { root } else { root.join(&caller.user) };
    if path.starts_with(&allowed) { Ok(path) } else { Err(denied(raw)) }
}

/// A job log path the caller may read.
pub(crate) fn log_path(logs_root: &Path, caller: &Caller, raw: &str) -> Result<PathBuf, HangarError> {
    let path = canonical(raw)?;
    let root = std::fs::canonicalize(logs_root).map_err(|_| denied(raw))?;
    if !path.starts_with(&root) || !path.is_file() {
        return Err(denied(raw));
    }
    let owner = path.parent().and_then(Path::file_name).and_then(|n| n.to_str());
    if caller.admin || owner == Some(caller.user.as_str()) { Ok(path) } else { Err(denied(raw)) }
}

fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

fn properties(meta: &std::fs::Metadata) -> Value {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis())
        .unwrap_or(0);
    json!({"size": meta.len().to_string(), "modifytime": modified.to_string()})
}

/// Linkis `dirFileTrees` of one folder (one level).
pub(crate) fn dir_tree(dir: &Path) -> Result<Value, HangarError> {
    if !dir.is_dir() {
        return Err(HangarError::invalid(format!("{} is not a folder", dir.display())));
    }
    let mut entries: Vec<(PathBuf, std::fs::Metadata)> = std::fs::read_dir(dir)
        .map_err(|e| HangarError::internal(format!("cannot list {}: {e}", dir.display())))?
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| (e.path(), m)))
        .collect();
    entries.sort_by_key(|(p, _)| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let num: String = name.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
        (num.parse::<u64>().unwrap_or(u64::MAX), name.to_string())
    });
    let children: Vec<Value> = entries
        .iter()
        .map(|(p, m)| {
            json!({
                "name": p.file_name().and_then(|n| n.to_str()).unwrap_or(""),
                "path": file_uri(p),
                "properties": properties(m),
                "children": null,
                "isLeaf": !m.is_dir(),
                "parentPath": file_uri(dir),
            })
        })
        .collect();
    Ok(json!({
        "name": dir.file_name().and_then(|n| n.to_str()).unwrap_or(""),
        "path": file_uri(dir),
        "properties": null,
        "children": children,
        "isLeaf": false,
        "parentPath": dir.parent().map(file_uri),
    }))
}

/// One page of a result-set file in Linkis's `openFile` shape.
pub(crate) fn open_result(path: &Path, page: usize, page_size: usize, null_value: &str) -> Result<Value, HangarError> {
    let bytes =
        std::fs::read(path).map_err(|e| HangarError::internal(format!("cannot read {}: {e}", path.display())))?;
    let rs = dolphin::decode(&bytes)?;
    let total = rs.rows.len();
    let page_size = page_size.clamp(1, 100_000);
    let page = page.max(1);
    let total_page = total.div_ceil(page_size);
    let rows: Vec<Vec<String>> = rs
        .rows
        .into_iter()
        .skip((page - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|r| r.into_iter().map(|c| c.unwrap_or_else(|| null_value.to_string())).collect())
        .collect();
    let metadata = if rs.rs_type == dolphin::TABLE {
        json!(
            rs.columns
                .iter()
                .map(|c| json!({"columnName": c.name, "comment": c.comment, "dataType": c.data_type}))
                .collect::<Vec<_>>()
        )
    } else {
        json!("NULL")
    };
    Ok(json!({
        "metadata": metadata,
        "fileContent": rows,
        "type": rs.rs_type.to_string(),
        "totalLine": total,
        "totalPage": total_page,
        "page": page,
        "totalColumn": rs.columns.len(),
    }))
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
        }
        assert_eq!(result_path(&root, &alice, "hdfs:///x").expect_err("scheme").code, ErrorCode::InvalidRequest);
        assert_eq!(result_path(&root, &alice, "relative/x").expect_err("rel").code, ErrorCode::InvalidRequest);
        assert!(result_path(&root, &caller("root", true), &root.join("bob/d").display().to_string()).is_ok());
    }
}
