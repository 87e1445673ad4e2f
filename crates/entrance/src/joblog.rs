//! A job's log file: Linkis log lines, the events feed, and the first
//! write error kept so the job can say its log was lost.
//!
//! Every job log of the process is written by one thread of its own
//! ([`writer`]): a line costs the job a channel send, never a file
//! operation on the async runtime, and lines queued together for one file
//! leave in one `write`. [`JobLog::flush`] waits until the thread wrote what
//! the job sent so far (a job's end is told only after its log is written),
//! and hands back the first error.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use hangar_protocol::logline::{self, Level};
use serde_json::json;
use tokio::sync::oneshot;

/// The job's log file; writes never fail the job (a warning is traced instead).
pub(crate) struct JobLog {
    id: u64,
    /// Lines written so far (the `fromLine` of the next one).
    lines: u64,
    pub(crate) feed: Option<crate::feed::Feed>,
    /// Why the log could not be written, the first time it could not
    /// (known once [`JobLog::flush`] returned).
    pub(crate) error: Option<String>,
}

impl JobLog {
    pub(crate) async fn open(path: &Path) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        send(Op::Open { id, path: path.to_path_buf() });
        Self { id, lines: 0, feed: None, error: None }
    }

    pub(crate) async fn raw(&mut self, lines: &[String]) {
        // Whatever an engine prints, a password written in a URL never reaches the log.
        let masked: Vec<String>;
        let lines = if lines.iter().any(|l| hangar_protocol::has_url_credentials(l)) {
            masked = lines.iter().map(|l| hangar_protocol::mask_url_credentials(l).into_owned()).collect();
            &masked[..]
        } else {
            lines
        };
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            bytes.extend_from_slice(l.as_bytes());
            bytes.push(b'\n');
        }
        send(Op::Append { id: self.id, bytes });
        if let Some(feed) = &self.feed {
            feed.send(json!({"type": "log", "fromLine": self.lines, "lines": lines}));
        }
        self.lines += lines.len() as u64;
    }

    pub(crate) async fn line(&mut self, level: Level, msg: &str) {
        self.raw(&[logline::format(level, msg)]).await;
    }

    /// Wait until everything sent so far is written; notes the first error.
    pub(crate) async fn flush(&mut self) {
        let (tx, rx) = oneshot::channel();
        send(Op::Flush { id: self.id, done: tx });
        let outcome = rx.await.unwrap_or_else(|_| Err("the job log writer stopped".to_string()));
        if let Err(why) = outcome
            && self.error.is_none()
        {
            tracing::error!("{why}");
            self.error = Some(why);
        }
    }
}

impl Drop for JobLog {
    fn drop(&mut self) {
        send(Op::Close { id: self.id });
    }
}

/// Append one line to a job log outside a runner (recovery).
pub(crate) async fn append_log_line(path: &str, level: Level, msg: &str) {
    if path.is_empty() {
        return;
    }
    let mut log = JobLog::open(Path::new(path)).await;
    log.line(level, msg).await;
    log.flush().await;
}

enum Op {
    Open { id: u64, path: PathBuf },
    Append { id: u64, bytes: Vec<u8> },
    Flush { id: u64, done: oneshot::Sender<Result<(), String>> },
    Close { id: u64 },
}

fn send(op: Op) {
    // The thread lives as long as the process; if it could not start, the
    // failure is the job's (its flush says the log is lost).
    if let Some(tx) = writer() {
        let _ = tx.send(op);
    }
}

/// The writer thread's queue (started on first use).
fn writer() -> Option<&'static mpsc::Sender<Op>> {
    static WRITER: OnceLock<Option<mpsc::Sender<Op>>> = OnceLock::new();
    WRITER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            match std::thread::Builder::new().name("hangar-joblog".into()).spawn(move || write_loop(rx)) {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the job log writer: job logs are lost");
                    None
                }
            }
        })
        .as_ref()
}

/// Files kept open at once; a job whose file was closed for room reopens it.
const MAX_OPEN: usize = 256;

/// One job's log as the writer knows it.
struct Target {
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    error: Option<String>,
}

impl Target {
    fn write_out(&mut self, open: &mut usize) {
        if self.buf.is_empty() {
            return;
        }
        if self.error.is_some() {
            self.buf.clear();
            return;
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(f) => {
                    self.file = Some(f);
                    *open += 1;
                }
                Err(e) => {
                    self.error = Some(format!("cannot open the job log {}: {e}", self.path.display()));
                    self.buf.clear();
                    return;
                }
            }
        }
        if let Some(f) = &mut self.file
            && let Err(e) = f.write_all(&self.buf)
        {
            self.error = Some(format!("cannot write the job log {}: {e}", self.path.display()));
        }
        self.buf.clear();
    }
}

fn write_loop(rx: mpsc::Receiver<Op>) {
    let mut targets: HashMap<u64, Target> = HashMap::new();
    let mut open = 0usize;
    let mut dirty: Vec<u64> = Vec::new();
    let mut flushes: Vec<(u64, oneshot::Sender<Result<(), String>>)> = Vec::new();
    while let Ok(first) = rx.recv() {
        // Everything queued now, then one write per file.
        let mut next = Some(first);
        while let Some(op) = next {
            match op {
                Op::Open { id, path } => {
                    targets.insert(id, Target { path, file: None, buf: Vec::new(), error: None });
                }
                Op::Append { id, bytes } => {
                    if let Some(t) = targets.get_mut(&id) {
                        if t.buf.is_empty() {
                            dirty.push(id);
                        }
                        t.buf.extend_from_slice(&bytes);
                    }
                }
                Op::Flush { id, done } => flushes.push((id, done)),
                Op::Close { id } => {
                    if let Some(mut t) = targets.remove(&id) {
                        t.write_out(&mut open);
                        if t.file.is_some() {
                            open -= 1;
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        for id in dirty.drain(..) {
            if let Some(t) = targets.get_mut(&id) {
                t.write_out(&mut open);
            }
        }
        for (id, done) in flushes.drain(..) {
            let outcome = match targets.get(&id) {
                Some(Target { error: Some(e), .. }) => Err(e.clone()),
                _ => Ok(()),
            };
            let _ = done.send(outcome);
        }
        if open > MAX_OPEN {
            for t in targets.values_mut().filter(|t| t.file.is_some()) {
                t.file = None;
                open -= 1;
                if open <= MAX_OPEN / 2 {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_written_in_order_and_a_lost_log_says_why() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a/b/1.log");
        let mut log = JobLog::open(&path).await;
        for i in 0..1000 {
            log.line(Level::Info, &format!("line {i}")).await;
        }
        log.flush().await;
        assert!(log.error.is_none());
        let text = std::fs::read_to_string(&path).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert!(lines.iter().enumerate().all(|(i, l)| l.ends_with(&format!("line {i}"))));

        // A folder where the file should be: the job learns its log is lost.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("2.log")).expect("dir");
        let mut lost = JobLog::open(&blocked.join("2.log")).await;
        lost.line(Level::Info, "x").await;
        lost.flush().await;
        assert!(lost.error.as_deref().is_some_and(|e| e.contains("cannot open the job log")), "{:?}", lost.error);
    }

    #[tokio::test]
    async fn many_logs_at_once_reopen_past_the_open_file_cap() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut logs = Vec::new();
        for i in 0..(MAX_OPEN * 2) {
            let mut l = JobLog::open(&dir.path().join(format!("{i}.log"))).await;
            l.line(Level::Info, "first").await;
            l.flush().await;
            logs.push(l);
        }
        for l in &mut logs {
            l.line(Level::Info, "second").await;
            l.flush().await;
            assert!(l.error.is_none());
        }
        drop(logs);
        for i in 0..(MAX_OPEN * 2) {
            let text = std::fs::read_to_string(dir.path().join(format!("{i}.log"))).expect("log");
            assert_eq!(text.lines().count(), 2, "{i}: {text}");
        }
    }
}
