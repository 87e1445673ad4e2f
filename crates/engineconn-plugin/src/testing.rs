//! Driving an executor the way the engine runtime does, for plugins' tests:
//! split the code, run statement by statement until one fails, optionally
//! cancel after a delay, and collect every event the executor sent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hangar_protocol::dolphin;
use tokio::sync::mpsc;

use crate::{CancelSignal, ExecutionContext, Executor, ExecutorEvent};

/// What one task produced.
pub struct TaskRun {
    pub res: Result<(), String>,
    pub events: Vec<ExecutorEvent>,
}

impl TaskRun {
    /// The result sets, decoded, in alias order.
    pub fn result_sets(&self) -> Vec<dolphin::ResultSet> {
        let mut sets: Vec<(u32, &crate::ResultSetData)> = self
            .events
            .iter()
            .filter_map(|e| match e {
                ExecutorEvent::ResultSet { data, alias, .. } => Some((*alias, data)),
                _ => None,
            })
            .collect();
        sets.sort_by_key(|(alias, _)| *alias);
        sets.into_iter()
            .map(|(_, data)| dolphin::decode(&data.bytes().expect("result bytes")).expect("dolphin"))
            .collect()
    }

    /// The rows of the TEXT result sets.
    pub fn text(&self) -> Vec<String> {
        self.result_sets()
            .into_iter()
            .filter(|rs| rs.rs_type == dolphin::TEXT)
            .flat_map(|rs| rs.rows)
            .filter_map(|r| r.into_iter().next().flatten())
            .collect()
    }

    /// The task's log lines.
    pub fn log_lines(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ExecutorEvent::Log(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    /// The task's log, one line per line.
    pub fn logs(&self) -> String {
        self.log_lines().join("\n")
    }
}

/// One task's settings.
pub struct TaskSpec {
    pub task_id: i64,
    pub properties: BTreeMap<String, String>,
    pub result_dir: PathBuf,
    pub max_rows: u64,
    /// Cancel the task this long after it starts.
    pub cancel_after: Option<Duration>,
}

/// Run `code` on `exec` as the runtime does.
pub async fn run_task(exec: &dyn Executor, spec: TaskSpec, code: &str) -> TaskRun {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancelSignal::default();
    let mut ctx = ExecutionContext::new(
        spec.task_id,
        "alice".into(),
        spec.properties,
        spec.result_dir,
        spec.max_rows,
        tx,
        cancel.clone(),
    );
    if let Some(after) = spec.cancel_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            cancel.cancel();
        });
    }
    let mut res = Ok(());
    for stmt in exec.split(code) {
        res = exec.execute(&mut ctx, &stmt).await;
        if res.is_err() {
            break;
        }
    }
    drop(ctx);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    TaskRun { res, events }
}
