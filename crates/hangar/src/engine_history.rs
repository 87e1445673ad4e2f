//! The engine history's writer: the manager sends every engine it ends on a
//! bounded channel (never waiting: a full channel drops the record, the
//! resource release goes on), and one task here writes them to the store.
//! Only the manager that ends engines (the elected one) has any to send.

use std::sync::Arc;
use std::time::Duration;

use hangar_manager::{EndedEngine, Manager};
use hangar_protocol::Resource;
use hangar_store::{EngineRecord, Store};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Records waiting to be written before new ones are dropped.
const QUEUE: usize = 4096;

/// Start writing the manager's ended engines into the store.
pub(crate) fn start(manager: &Manager, store: Store) -> JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<EndedEngine>(QUEUE);
    manager.set_engine_history(tx);
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let record = record(&e);
            if let Err(err) = store.record_engine(&record).await {
                tracing::warn!(ticket = %e.ticket_id, error = %err, "engine history: cannot record an ended engine");
            }
        }
    })
}

/// Stop taking records and write those still queued (bounded wait).
pub(crate) async fn stop(manager: &Arc<Manager>, writer: JoinHandle<()>) {
    manager.close_engine_history();
    if tokio::time::timeout(Duration::from_secs(5), writer).await.is_err() {
        tracing::warn!("engine history: records still queued at shutdown were not written");
    }
}

fn resource_json(r: &Resource) -> String {
    serde_json::json!({ "memory": r.memory, "cores": r.cores, "instance": r.instances }).to_string()
}

/// The work dir below the ECM's engine root (`<user>/<yyyymmdd>/<type>/<ticket>/logs`).
fn log_dir_suffix(log_dir: &str) -> String {
    match log_dir.rsplit_once("/engineconn/") {
        Some((_, suffix)) => suffix.to_string(),
        None => log_dir.to_string(),
    }
}

pub(crate) fn record(e: &EndedEngine) -> EngineRecord {
    let engine_type = e.labels.engine_type().map(|t| t.engine.clone()).unwrap_or_default();
    let labels = serde_json::to_string(&e.labels.to_linkis_list()).unwrap_or_else(|_| "[]".into());
    let used = resource_json(&e.resource);
    EngineRecord {
        id: 0,
        ticket_id: e.ticket_id.clone(),
        create_user: e.user.clone(),
        label_value: e.labels.combined_user_engine().unwrap_or_default(),
        labels,
        service_instance: e.instance.clone().unwrap_or_default(),
        ecm_instance: e.ecm_instance.clone(),
        engine_type,
        used_resource: if e.ready_ms.is_some() { used.clone() } else { resource_json(&Resource::default()) },
        request_resource: used.clone(),
        released_resource: used,
        request_times: 1,
        used_times: i64::from(e.used_times),
        release_times: 1,
        used_time_ms: e.ready_ms,
        create_time_ms: e.created_ms,
        release_time_ms: e.ended_ms,
        log_dir_suffix: log_dir_suffix(&e.log_dir),
        status: e.status.to_string(),
        reason: e.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_below_the_engine_root() {
        assert_eq!(log_dir_suffix("/d/engineconn/alice/20240101/shell/t1/logs"), "alice/20240101/shell/t1/logs");
        assert_eq!(log_dir_suffix("/elsewhere/logs"), "/elsewhere/logs");
    }
}
