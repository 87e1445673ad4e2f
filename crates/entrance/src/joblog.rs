//! A job's log file: Linkis log lines, the events feed, and the first
//! write error kept so the job can say its log was lost.

use std::path::Path;

use hangar_protocol::logline::{self, Level};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// The job's log file; writes never fail the job (a warning is traced instead).
pub(crate) struct JobLog {
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    /// Lines written so far (the `fromLine` of the next one).
    lines: u64,
    pub(crate) feed: Option<crate::feed::Feed>,
    /// Why the log could not be written, the first time it could not.
    pub(crate) error: Option<String>,
}

impl JobLog {
    pub(crate) async fn open(path: &Path) -> Self {
        if let Some(dir) = path.parent() {
            let _ = tokio::fs::create_dir_all(dir).await;
        }
        let file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await;
        match file {
            Ok(f) => Self { file: Some(tokio::io::BufWriter::new(f)), lines: 0, feed: None, error: None },
            Err(e) => {
                let why = format!("cannot open the job log {}: {e}", path.display());
                tracing::error!("{why}");
                Self { file: None, lines: 0, feed: None, error: Some(why) }
            }
        }
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
        if let Some(f) = &mut self.file {
            let mut written = Ok(());
            for l in lines {
                if written.is_ok() {
                    written = f.write_all(l.as_bytes()).await;
                }
                if written.is_ok() {
                    written = f.write_all(b"\n").await;
                }
            }
            if written.is_ok() {
                written = f.flush().await;
            }
            if let Err(e) = written
                && self.error.is_none()
            {
                let why = format!("cannot write the job log: {e}");
                tracing::error!("{why}");
                self.error = Some(why);
            }
        }
        if let Some(feed) = &self.feed {
            feed.send(json!({"type": "log", "fromLine": self.lines, "lines": lines}));
        }
        self.lines += lines.len() as u64;
    }

    pub(crate) async fn line(&mut self, level: Level, msg: &str) {
        self.raw(&[logline::format(level, msg)]).await;
    }

    pub(crate) async fn flush(&mut self) {
        if let Some(f) = &mut self.file
            && let Err(e) = f.flush().await
            && self.error.is_none()
        {
            let why = format!("cannot write the job log: {e}");
            tracing::error!("{why}");
            self.error = Some(why);
        }
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
