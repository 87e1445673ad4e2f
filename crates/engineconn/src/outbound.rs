//! Everything the engine sends: messages to the manager, and task events to
//! Entrances through one ordered queue (logs before the final status).

use std::time::Duration;

use anyhow::Context;
use hangar_protocol::rpc::{
    ENTRANCE_RESULT_PATH, ENTRANCE_RPC_PATH, EngineToManager, MANAGER_RPC_PATH, ManagerReply, RPC_TOKEN_HEADER,
    TICKET_HEADER, TaskEvent, TaskEventBatch,
};
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 512;
/// Backoff between attempts to deliver task events: ~20 s in all, so a
/// control plane that restarts meanwhile still gets them.
const RETRIES: [Duration; 7] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(5),
    Duration::from_secs(8),
];

enum Out {
    Event { callback_url: String, event: Box<TaskEvent> },
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(crate) struct Outbound {
    http: reqwest::Client,
    manager_url: String,
    token: String,
    queue: mpsc::UnboundedSender<Out>,
}

impl Outbound {
    pub(crate) fn new(manager_url: String, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            // A lost SYN (a partition) is retried on a new connection soon
            // after the network heals, not after the kernel's backoff.
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Self { http, manager_url, token, queue: tx };
        tokio::spawn(this.clone().send_loop(rx));
        Ok(this)
    }

    pub(crate) async fn to_manager(&self, msg: &EngineToManager) -> anyhow::Result<ManagerReply> {
        let url = format!("{}{}", self.manager_url.trim_end_matches('/'), MANAGER_RPC_PATH);
        let resp = self
            .http
            .post(&url)
            .header(RPC_TOKEN_HEADER, &self.token)
            .json(msg)
            .send()
            .await
            .with_context(|| format!("cannot reach the manager at {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!("the manager answered {status}: {body}");
        }
        resp.json::<ManagerReply>().await.context("bad reply from the manager")
    }

    /// Queue an event for a task's Entrance; events leave in queue order.
    pub(crate) fn event(&self, callback_url: &str, event: TaskEvent) {
        let _ = self.queue.send(Out::Event { callback_url: callback_url.to_string(), event: Box::new(event) });
    }

    /// Wait until everything queued so far has been sent (or given up on).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Out::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    async fn send_loop(self, mut rx: mpsc::UnboundedReceiver<Out>) {
        let ticket_id = std::env::var(crate::TICKET_ENV).unwrap_or_default();
        while let Some(first) = rx.recv().await {
            let mut pending = vec![first];
            while pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(o) => pending.push(o),
                    Err(_) => break,
                }
            }
            let mut batch: Vec<TaskEvent> = Vec::new();
            let mut batch_url = String::new();
            let mut flushes = Vec::new();
            for out in pending {
                match out {
                    Out::Flush(done) => flushes.push(done),
                    Out::Event { callback_url, event } => {
                        if callback_url != batch_url && !batch.is_empty() {
                            self.post_batch(&batch_url, &ticket_id, std::mem::take(&mut batch)).await;
                        }
                        batch_url = callback_url;
                        batch.push(*event);
                    }
                }
            }
            if !batch.is_empty() {
                self.post_batch(&batch_url, &ticket_id, batch).await;
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
    }

    async fn post_batch(&self, base: &str, ticket_id: &str, events: Vec<TaskEvent>) {
        let url = format!("{}{}", base.trim_end_matches('/'), ENTRANCE_RPC_PATH);
        let batch = TaskEventBatch { ticket_id: ticket_id.to_string(), events: merge_logs(events) };
        for (attempt, backoff) in RETRIES.iter().enumerate() {
            let sent = self.http.post(&url).header(RPC_TOKEN_HEADER, &self.token).json(&batch).send().await;
            match sent {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => tracing::warn!(%url, status = %r.status(), attempt, "entrance refused task events"),
                Err(e) => tracing::warn!(%url, error = %e, attempt, "cannot reach the entrance"),
            }
            tokio::time::sleep(*backoff).await;
        }
        tracing::error!(%url, events = batch.events.len(), "dropping task events after retries");
    }
}

impl Outbound {
    /// Stream one result-set file to the task's Entrance (`PUT`), retrying
    /// while it cannot be reached; a refusal (too large, not this engine's
    /// task) is final. Returns the bytes sent.
    pub(crate) async fn upload_result(
        &self,
        base: &str,
        task_id: i64,
        alias: u32,
        path: &std::path::Path,
    ) -> Result<u64, String> {
        let url = format!("{}{ENTRANCE_RESULT_PATH}/{task_id}/{alias}", base.trim_end_matches('/'));
        let ticket_id = std::env::var(crate::TICKET_ENV).unwrap_or_default();
        let mut last = String::new();
        for (attempt, backoff) in RETRIES.iter().enumerate() {
            let file = tokio::fs::File::open(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            // The whole file in flight, however large: a minute plus 4 MiB/s.
            let timeout = Duration::from_secs(60) + Duration::from_millis(len / 4096);
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10));
            let sent = self
                .http
                .put(&url)
                .header(RPC_TOKEN_HEADER, &self.token)
                .header(TICKET_HEADER, &ticket_id)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .timeout(timeout)
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(len),
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let why = r.text().await.unwrap_or_default();
                    return Err(format!("the Entrance refused result set {} ({status}): {why}", alias + 1));
                }
                Ok(r) => last = format!("the Entrance answered {}", r.status()),
                Err(e) => last = format!("cannot reach the Entrance at {url}: {e}"),
            }
            tracing::warn!(%url, attempt, error = %last, "result set not sent yet");
            tokio::time::sleep(*backoff).await;
        }
        Err(format!("result set {} could not be sent: {last}", alias + 1))
    }
}

/// Merge adjacent log events of the same task into one.
fn merge_logs(events: Vec<TaskEvent>) -> Vec<TaskEvent> {
    let mut out: Vec<TaskEvent> = Vec::with_capacity(events.len());
    for ev in events {
        if let (Some(TaskEvent::Log { task_id: last_id, lines: last }), TaskEvent::Log { task_id, lines }) =
            (out.last_mut(), &ev)
            && last_id == task_id
        {
            last.extend(lines.iter().cloned());
            continue;
        }
        out.push(ev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_logs_merge_but_keep_order() {
        let log = |t, l: &str| TaskEvent::Log { task_id: t, lines: vec![l.to_string()] };
        let st =
            TaskEvent::Status { task_id: 1, status: hangar_protocol::JobStatus::Running, error: None, exit_code: None };
        let merged = merge_logs(vec![log(1, "a"), log(1, "b"), st.clone(), log(1, "c"), log(2, "d")]);
        assert_eq!(merged.len(), 4);
        assert_eq!(merged[0], TaskEvent::Log { task_id: 1, lines: vec!["a".into(), "b".into()] });
        assert_eq!(merged[1], st);
    }
}
