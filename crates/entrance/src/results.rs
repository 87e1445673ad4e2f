//! Result sets arriving from engines, wherever they run: each `_N.dolphin`
//! is streamed by `PUT` into the job's result folder on this host, under a
//! temporary name renamed into place once whole, within the per-file limit.
//!
//! Only the engine the task was sent to may send its result sets (its
//! ticket and key), and only while the job runs here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hangar_protocol::rpc::{RPC_TOKEN_HEADER, TICKET_HEADER, TaskEvent};
use tokio::io::AsyncWriteExt;

use crate::{Entrance, lock};

/// At most this many result sets per task (`_0` .. `_9999`).
const MAX_RESULT_SETS: u32 = 10_000;

fn refuse(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

/// `PUT {ENTRANCE_RESULT_PATH}/{task_id}/{alias}`: one result set's bytes.
pub(crate) async fn receive(
    State(e): State<Arc<Entrance>>,
    UrlPath((task_id, alias)): UrlPath<(i64, u32)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let ticket = text(TICKET_HEADER).unwrap_or_default().to_string();
    match e.check_engine_key(&ticket, text(RPC_TOKEN_HEADER)).await {
        Some(true) => {}
        Some(false) => {
            tracing::warn!(%ticket, task_id, "result set refused: wrong key for this ticket");
            return refuse(StatusCode::UNAUTHORIZED, "bad engine key for this ticket");
        }
        None => return refuse(StatusCode::SERVICE_UNAVAILABLE, "the engine's key cannot be checked now"),
    }
    let dir = match e.result_dir_for(task_id, &ticket) {
        Ok(dir) => dir,
        Err((status, msg)) => return refuse(status, msg),
    };
    if alias >= MAX_RESULT_SETS {
        return refuse(StatusCode::BAD_REQUEST, format!("at most {MAX_RESULT_SETS} result sets per job"));
    }
    let limit = e.cfg.max_result_set_bytes;
    let declared = text(header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Not read at all: the connection closes after the answer.
        let msg = too_large(alias, limit);
        return (StatusCode::PAYLOAD_TOO_LARGE, [(header::CONNECTION, "close")], msg).into_response();
    }
    match store(&e.cfg.results_dir, &dir, alias, body.into_data_stream(), limit).await {
        Ok(bytes) => {
            tracing::debug!(task_id, alias, bytes, "result set stored");
            StatusCode::OK.into_response()
        }
        Err((status, msg)) => {
            tracing::warn!(task_id, alias, %msg, "result set not stored");
            refuse(status, msg)
        }
    }
}

impl Entrance {
    /// The result folder of a job running here whose task went to `ticket`.
    pub(crate) fn result_dir_for(&self, task_id: i64, ticket: &str) -> Result<PathBuf, (StatusCode, String)> {
        match lock(&self.jobs).get(&task_id) {
            Some(h) if h.ticket.get().is_some_and(|t| t == ticket) => Ok(h.result_dir.clone()),
            Some(_) => Err((StatusCode::FORBIDDEN, format!("task {task_id} was not sent to this engine"))),
            None => Err((StatusCode::GONE, format!("job {task_id} is not running on this Entrance"))),
        }
    }

    /// Store the small result sets of a batch of task events before the
    /// batch is acknowledged: an engine that was told "received" never has
    /// to send them again, so they must be on disk by then. One that cannot
    /// be stored stays in its event (the job's runner tries again and fails
    /// the job with the reason).
    pub(crate) async fn store_inline_results(&self, ticket: &str, events: &mut [TaskEvent]) {
        for ev in events.iter_mut() {
            let TaskEvent::ResultSet { task_id, alias, inline, .. } = ev else { continue };
            let (Some(text), Ok(dir)) = (inline.as_ref(), self.result_dir_for(*task_id, ticket)) else { continue };
            let stored =
                store_inline(&self.cfg.results_dir, &dir, *alias, text.clone(), self.cfg.max_result_set_bytes).await;
            if stored.is_ok() {
                *inline = None;
            }
        }
    }
}

fn too_large(alias: u32, limit: u64) -> String {
    hangar_protocol::rpc::result_set_too_large(alias, limit)
}

/// Store a small result set that came inside the task's events.
pub(crate) async fn store_inline(root: &Path, dir: &Path, alias: u32, text: String, limit: u64) -> Result<u64, String> {
    let chunk = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(Bytes::from(text)) });
    store(root, dir, alias, Box::pin(chunk), limit).await.map_err(|(_, msg)| msg)
}

/// Stream the bytes into `<dir>/_N.dolphin.part`, then rename it to
/// `_N.dolphin`; nothing is left behind on failure.
async fn store<E: std::fmt::Display>(
    root: &Path,
    dir: &Path,
    alias: u32,
    mut stream: impl futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    limit: u64,
) -> Result<u64, (StatusCode, String)> {
    let internal = |m: String| (StatusCode::INTERNAL_SERVER_ERROR, m);
    let rel = dir.strip_prefix(root).map_err(|_| internal("result folder outside the results root".into()))?;
    let (root, rel): (PathBuf, PathBuf) = (root.to_path_buf(), rel.to_path_buf());
    let name = format!("_{alias}.dolphin");
    let part = format!("{name}.part");
    let (dir_fd, file) = {
        let part = part.clone();
        tokio::task::spawn_blocking(move || {
            let dir = hangar_fsguard::create_dirs(
                &root,
                &rel,
                hangar_fsguard::Perms::mode(0o711),
                hangar_fsguard::Perms::mode(0o700),
            )?;
            let file = hangar_fsguard::create_file_at(&dir, &part, hangar_fsguard::Perms::mode(0o600))?;
            Ok::<_, hangar_fsguard::FsGuardError>((dir, file))
        })
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| internal(format!("cannot create the result file: {e}")))?
    };
    let mut out = tokio::io::BufWriter::with_capacity(256 << 10, tokio::fs::File::from_std(file));
    let mut written: u64 = 0;
    let outcome = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| (StatusCode::BAD_REQUEST, format!("the upload broke off: {e}")))?;
            written += chunk.len() as u64;
            if written > limit {
                // Read the rest before answering: a sender blocked on a full
                // window would not see the answer (engines check the limit
                // before sending; this is for one that did not).
                while let Some(Ok(_)) = stream.next().await {}
                return Err((StatusCode::PAYLOAD_TOO_LARGE, too_large(alias, limit)));
            }
            out.write_all(&chunk).await.map_err(|e| internal(format!("cannot write the result file: {e}")))?;
        }
        out.flush().await.map_err(|e| internal(format!("cannot write the result file: {e}")))?;
        Ok(())
    }
    .await;
    drop(out);
    tokio::task::spawn_blocking(move || match outcome {
        Ok(()) => hangar_fsguard::rename_at(&dir_fd, &part, &name)
            .map(|()| written)
            .map_err(|e| internal(format!("cannot store the result file: {e}"))),
        Err(e) => {
            let _ = hangar_fsguard::remove_file_at(&dir_fd, &part);
            Err(e)
        }
    })
    .await
    .map_err(|e| internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, size: usize) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter((0..n).map(move |_| Ok(Bytes::from(vec![b'x'; size]))))
    }

    #[tokio::test]
    async fn a_result_set_is_stored_whole_or_not_at_all() {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join("alice/2026-11-29/IDE/7");
        let n = store(root.path(), &dir, 0, chunks(4, 1000), 4000).await.expect("within the limit");
        assert_eq!(n, 4000);
        assert_eq!(std::fs::read(dir.join("_0.dolphin")).expect("stored").len(), 4000);
        // One byte over: refused, and neither the file nor its temporary name is left.
        let (status, msg) = store(root.path(), &dir, 1, chunks(4, 1001), 4000).await.expect_err("over the limit");
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(msg.contains("entrance.max_result_set_size"), "{msg}");
        let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("_0.dolphin")]);
        // A body that breaks off leaves nothing either.
        let broken =
            futures_util::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err(std::io::Error::other("reset"))]);
        let (status, _) = store(root.path(), &dir, 2, broken, 4000).await.expect_err("broken");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(!dir.join("_2.dolphin").exists() && !dir.join("_2.dolphin.part").exists());
        // A symlink planted where the folder goes is not followed.
        let elsewhere = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("bob")).expect("link");
        let planted = root.path().join("bob/x");
        assert!(store(root.path(), &planted, 0, chunks(1, 10), 4000).await.is_err());
        assert_eq!(std::fs::read_dir(elsewhere.path()).expect("dir").count(), 0);
    }
}
