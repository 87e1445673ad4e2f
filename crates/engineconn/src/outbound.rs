//! Everything the engine sends: messages to the manager, and task events to
//! Entrances through one ordered queue (logs before the final status).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hangar_protocol::endpoints::{Attempt, Endpoints, retry_elsewhere};
use hangar_protocol::rpc::{
    ENTRANCE_RESULT_PATH, ENTRANCE_RPC_PATH, EngineToManager, MANAGER_RPC_PATH, ManagerReply, RPC_TOKEN_HEADER,
    TICKET_HEADER, TaskEvent, TaskEventBatch,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::routes::Routes;

const MAX_BATCH: usize = 512;
/// Gaps between attempts to deliver task events or a result set: quick at
/// first, then every [`MAX_GAP`], for up to [`DELIVERY_BUDGET`] in all, so a
/// control plane that restarts or fails over to another instance (~15-20 s)
/// still gets them. A redirect of the task ends the wait at once.
const GAPS: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
const MAX_GAP: Duration = Duration::from_secs(8);
const DELIVERY_BUDGET: Duration = Duration::from_secs(60);

/// The backoff of one delivery.
struct Retry {
    start: Instant,
    budget: Duration,
    attempts: usize,
}

impl Retry {
    fn new(budget: Duration) -> Self {
        Self { start: Instant::now(), budget, attempts: 0 }
    }

    /// How long to wait before the next attempt; None once the budget is spent.
    fn next_gap(&mut self) -> Option<Duration> {
        let gap = GAPS.get(self.attempts).copied().unwrap_or(MAX_GAP);
        self.attempts += 1;
        let left = self.budget.checked_sub(self.start.elapsed()).filter(|d| !d.is_zero())?;
        Some(gap.min(left))
    }

    /// Wait out the next gap, or less when a task is redirected meanwhile;
    /// false once the budget is spent.
    async fn wait(&mut self, redirected: &mut watch::Receiver<u64>) -> bool {
        let Some(gap) = self.next_gap() else { return false };
        tokio::select! {
            _ = tokio::time::sleep(gap) => {}
            Ok(()) = redirected.changed() => {}
        }
        true
    }
}

/// One event and the Entrance its task came from.
struct Queued {
    callback_url: String,
    event: TaskEvent,
}

enum Out {
    /// Several events of one task, queued at once so they leave in one request.
    Events(Vec<Queued>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(crate) struct Outbound {
    http: reqwest::Client,
    manager: Endpoints,
    token: String,
    queue: mpsc::UnboundedSender<Out>,
    routes: Arc<Routes>,
    budget: Duration,
}

impl Outbound {
    /// `manager_urls`: the control plane's base URLs, comma-separated.
    pub(crate) fn new(manager_urls: &str, token: String) -> anyhow::Result<Self> {
        Self::with_budget(manager_urls, token, DELIVERY_BUDGET)
    }

    fn with_budget(manager_urls: &str, token: String, budget: Duration) -> anyhow::Result<Self> {
        let manager =
            Endpoints::parse(manager_urls).map_err(|e| anyhow::anyhow!("bad --manager-url: {}", e.message))?;
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
        let this = Self { http, manager, token, queue: tx, routes: Arc::new(Routes::new()), budget };
        tokio::spawn(this.clone().send_loop(rx));
        Ok(this)
    }

    /// To the manager through the control-plane instance that answered last;
    /// one that cannot be reached or answers 5xx (no leader to forward to)
    /// hands over to the next at once. A 4xx answer is final.
    pub(crate) async fn to_manager(&self, msg: &EngineToManager) -> anyhow::Result<ManagerReply> {
        self.manager
            .try_each(|base| {
                let url = format!("{base}{MANAGER_RPC_PATH}");
                async move {
                    let sent = self.http.post(&url).header(RPC_TOKEN_HEADER, &self.token).json(msg).send().await;
                    let resp = match sent {
                        Ok(r) => r,
                        Err(e) => {
                            return Attempt::Next(
                                anyhow::Error::new(e).context(format!("cannot reach the manager at {url}")),
                            );
                        }
                    };
                    let status = resp.status();
                    if !status.is_success() {
                        let body = resp.text().await.unwrap_or_default();
                        let e = anyhow::anyhow!("the manager at {url} answered {status}: {body}");
                        return if retry_elsewhere(status.as_u16()) { Attempt::Next(e) } else { Attempt::Final(e) };
                    }
                    match resp.json::<ManagerReply>().await {
                        Ok(r) => Attempt::Done(r),
                        Err(e) => Attempt::Final(anyhow::Error::new(e).context("bad reply from the manager")),
                    }
                }
            })
            .await
    }

    /// Queue several events at once: they leave together (one request, when
    /// nothing else is waiting), in this order, after those queued before.
    pub(crate) fn events(&self, callback_url: &str, events: Vec<TaskEvent>) {
        if events.is_empty() {
            return;
        }
        let batch = events.into_iter().map(|event| Queued { callback_url: callback_url.to_string(), event }).collect();
        let _ = self.queue.send(Out::Events(batch));
    }

    /// From now on `task_id`'s events and result sets go to `callback_url`
    /// (the Entrance that took its job over), those waiting too.
    pub(crate) fn redirect(&self, task_id: i64, callback_url: &str) {
        tracing::info!(task_id, %callback_url, "task events follow the job to another Entrance");
        self.routes.redirect(task_id, callback_url);
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
            let mut events = Vec::new();
            let mut flushes = Vec::new();
            for out in pending {
                match out {
                    Out::Flush(done) => flushes.push(done),
                    Out::Events(qs) => events.extend(qs),
                }
            }
            if !events.is_empty() {
                self.deliver(&ticket_id, merge_logs(events)).await;
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
    }

    /// Deliver events, retrying those not taken. At every attempt each
    /// event goes where its task's route points now, so a batch splits by
    /// Entrance; one task's events stay in order (they always share a URL).
    async fn deliver(&self, ticket_id: &str, mut pending: Vec<Queued>) {
        let mut redirected = self.routes.subscribe();
        let mut retry = Retry::new(self.budget);
        for attempt in 0usize.. {
            redirected.borrow_and_update();
            let mut groups: Vec<(String, Vec<Queued>)> = Vec::new();
            for q in pending.drain(..) {
                let url = self.routes.resolve(q.event.task_id(), &q.callback_url);
                match groups.iter_mut().find(|g| g.0 == url) {
                    Some(g) => g.1.push(q),
                    None => groups.push((url, vec![q])),
                }
            }
            for (base, group) in groups {
                let (urls, events): (Vec<String>, Vec<TaskEvent>) =
                    group.into_iter().map(|q| (q.callback_url, q.event)).unzip();
                let batch = TaskEventBatch { ticket_id: ticket_id.to_string(), events };
                let url = format!("{base}{ENTRANCE_RPC_PATH}");
                let sent = self.http.post(&url).header(RPC_TOKEN_HEADER, &self.token).json(&batch).send().await;
                match sent {
                    Ok(r) if r.status().is_success() => continue,
                    Ok(r) => tracing::warn!(%url, status = %r.status(), attempt, "entrance refused task events"),
                    Err(e) => tracing::warn!(%url, error = %e, attempt, "cannot reach the entrance"),
                }
                pending.extend(
                    urls.into_iter().zip(batch.events).map(|(callback_url, event)| Queued { callback_url, event }),
                );
            }
            if pending.is_empty() || !retry.wait(&mut redirected).await {
                break;
            }
        }
        if !pending.is_empty() {
            tracing::error!(events = pending.len(), "dropping task events after retries");
        }
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
        let ticket_id = std::env::var(crate::TICKET_ENV).unwrap_or_default();
        let mut redirected = self.routes.subscribe();
        let mut retry = Retry::new(self.budget);
        let mut last = String::new();
        for attempt in 0usize.. {
            redirected.borrow_and_update();
            // Where the task's events go now (its job may have moved).
            let url = format!("{}{ENTRANCE_RESULT_PATH}/{task_id}/{alias}", self.routes.resolve(task_id, base));
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
            if !retry.wait(&mut redirected).await {
                break;
            }
        }
        Err(format!("result set {} could not be sent: {last}", alias + 1))
    }
}

/// Merge adjacent log events of the same task into one.
fn merge_logs(events: Vec<Queued>) -> Vec<Queued> {
    let mut out: Vec<Queued> = Vec::with_capacity(events.len());
    for q in events {
        if let (Some(TaskEvent::Log { task_id: last_id, lines: last }), TaskEvent::Log { task_id, lines }) =
            (out.last_mut().map(|l| &mut l.event), &q.event)
            && last_id == task_id
        {
            last.extend(lines.iter().cloned());
            continue;
        }
        out.push(q);
    }
    out
}

#[cfg(test)]
#[path = "outbound_tests.rs"]
mod tests;
