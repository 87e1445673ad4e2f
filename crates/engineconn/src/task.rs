//! One task's life inside the engine (Linkis TaskExecutionService): run the
//! executor, forward its events in batches, send the combined running-info
//! report on an interval, then the final status.
//!
//! Events wait in the task's own buffer and leave together on the log push
//! interval, when enough lines are buffered, before a result set is uploaded,
//! and at the end with the final status: a task shorter than the interval
//! sends one request in all. Live output has its own, shorter, interval.

use std::sync::Arc;

use hangar_engineconn_plugin::{CancelSignal, ExecutionContext, Executor, ExecutorEvent, ResultSetData};
use hangar_protocol::JobStatus;
use hangar_protocol::logline::{self, Level};
use hangar_protocol::rpc::{JobProgressInfo, OutputLine, TaskEvent, TaskExecuteRequest, TaskRunningInfo};
use tokio::sync::mpsc;

use crate::state::Engine;

pub(crate) async fn run(
    engine: Arc<Engine>,
    req: TaskExecuteRequest,
    executor: Arc<dyn Executor>,
    cancel: CancelSignal,
) {
    let task_id = req.task_id;
    let (lock, unlock_when_done) = (req.lock.clone(), req.unlock_when_done);
    let cb = req.callback_url.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    // Result sets are written here first, then streamed to the Entrance
    // (which may be on another host) and removed.
    let spool = engine.ctx.work_dir.join("tmp").join("results").join(task_id.to_string());
    let mut ctx = ExecutionContext::new(
        task_id,
        req.user.clone(),
        req.properties.clone(),
        spool.clone(),
        engine.opts.max_result_rows,
        tx,
        cancel.clone(),
    );
    ctx.set_max_result_bytes(req.max_result_set_bytes);
    ctx.info(&format!("engine {} (ticket {}) runs task {task_id}", engine.instance, engine.ctx.ticket_id));
    let first = TaskEvent::Status { task_id, status: JobStatus::Running, error: None, exit_code: None };
    let forwarder = tokio::spawn(forward(engine.clone(), cb.clone(), task_id, rx, first));

    let code = req.code;
    let outcome = tokio::spawn(async move {
        let statements = executor.split(&code);
        let total = statements.len().max(1);
        let mut r = Ok(());
        for (i, stmt) in statements.iter().enumerate() {
            if ctx.is_cancelled() {
                r = Err("killed".to_string());
                break;
            }
            if total > 1 {
                ctx.info(&format!("running statement {} of {total}", i + 1));
            }
            ctx.set_statement(i, total);
            r = executor.execute(&mut ctx, stmt).await;
            if r.is_err() {
                break;
            }
            ctx.progress(
                1.0,
                vec![JobProgressInfo {
                    id: format!("{task_id}"),
                    total_tasks: total as u32,
                    running_tasks: u32::from(i + 1 < total),
                    failed_tasks: 0,
                    succeed_tasks: (i + 1) as u32,
                }],
            );
        }
        (r, ctx)
    })
    .await;
    let (result, error_line, exit_code) = match outcome {
        Ok((r, ctx)) => {
            if let Err(e) = &r
                && !cancel.is_cancelled()
            {
                ctx.error(e);
            }
            let exit_code = ctx.exit_code();
            drop(ctx);
            (r, None, exit_code)
        }
        Err(join) => {
            let msg = format!("executor panicked: {join}");
            (Err(msg.clone()), Some(logline::format(Level::Error, &msg)), None)
        }
    };
    let Forwarded { progress, not_sent, mut pending } = forwarder.await.unwrap_or_default();
    if let Some(line) = error_line {
        pending.push(TaskEvent::Log { task_id, lines: vec![line] });
    }
    // A result set that did not reach the Entrance fails the task.
    let result = match (result, not_sent) {
        (Ok(()), Some(e)) => Err(e),
        (r, _) => r,
    };
    let (status, error) = match result {
        Ok(()) => (JobStatus::Succeed, None),
        Err(_) if cancel.is_cancelled() => match engine.exit_reason() {
            Some(reason) => (JobStatus::Failed, Some(format!("engine {} exited: {reason}", engine.instance))),
            None => (JobStatus::Cancelled, Some("killed by user".to_string())),
        },
        Err(e) => (JobStatus::Failed, Some(e)),
    };
    let final_progress = if status == JobStatus::Succeed { 1.0 } else { progress };
    pending.push(running_info(&engine, task_id, final_progress, Vec::new()));
    if unlock_when_done {
        pending.push(TaskEvent::Unlocked { task_id });
    }
    pending.push(TaskEvent::Status { task_id, status, error: error.clone(), exit_code });
    // Queued before the lock goes: an executeOnce engine retires on it and
    // flushes what is queued as it exits.
    engine.out.events(&cb, pending);
    engine.task_finished(task_id, status, error);
    if unlock_when_done {
        engine.unlock(&lock);
    }
    let _ = tokio::fs::remove_dir_all(&spool).await;
}

/// What the forwarder leaves: the last progress, why a result set could not
/// be sent (if one was not), and the events not sent yet.
#[derive(Default)]
struct Forwarded {
    progress: f32,
    not_sent: Option<String>,
    pending: Vec<TaskEvent>,
}

fn running_info(engine: &Engine, task_id: i64, progress: f32, progress_info: Vec<JobProgressInfo>) -> TaskEvent {
    let (_, metrics) = engine.metrics();
    TaskEvent::RunningInfo(TaskRunningInfo { task_id, progress, progress_info, resource: engine.resource, metrics })
}

const OUTPUT_PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// The most a running task reports (Linkis `linkis.job.fake.progress`).
const MAX_RUNNING_PROGRESS: f32 = 0.99;

/// Forward executor events until the executor's context is dropped (see the
/// module doc for when they leave); `first` opens the task's events.
async fn forward(
    engine: Arc<Engine>,
    cb: String,
    task_id: i64,
    mut rx: mpsc::UnboundedReceiver<ExecutorEvent>,
    first: TaskEvent,
) -> Forwarded {
    let mut not_sent: Option<String> = None;
    let mut pending: Vec<TaskEvent> = vec![first];
    let mut lines: Vec<String> = Vec::new();
    let mut output: Vec<OutputLine> = Vec::new();
    // Linkis floors progress at 0.1 while a task runs.
    let mut progress: f32 = 0.1;
    let mut info: Vec<JobProgressInfo> = Vec::new();
    let start = tokio::time::Instant::now();
    let every = |period| {
        let mut t = tokio::time::interval_at(start + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    };
    let mut log_tick = every(engine.opts.log_push_interval);
    // What the task prints reaches a following client within ~50 ms.
    let mut output_tick = every(OUTPUT_PUSH_INTERVAL);
    let mut info_tick = every(engine.opts.running_info_interval);
    // Buffered lines and output join the pending events, in order.
    let gather = |pending: &mut Vec<TaskEvent>, lines: &mut Vec<String>, output: &mut Vec<OutputLine>| {
        if !output.is_empty() {
            pending.push(TaskEvent::Output { task_id, lines: std::mem::take(output) });
        }
        if !lines.is_empty() {
            pending.push(TaskEvent::Log { task_id, lines: std::mem::take(lines) });
        }
    };
    let send = |pending: &mut Vec<TaskEvent>, lines: &mut Vec<String>, output: &mut Vec<OutputLine>| {
        gather(pending, lines, output);
        engine.out.events(&cb, std::mem::take(pending));
    };
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                None => break,
                Some(ExecutorEvent::Log(line)) => {
                    lines.push(line);
                    if lines.len() >= engine.opts.log_push_lines {
                        send(&mut pending, &mut lines, &mut output);
                    }
                }
                Some(ExecutorEvent::Output { stream, line }) => {
                    output.push(OutputLine { stream, line });
                    if output.len() >= engine.opts.log_push_lines {
                        send(&mut pending, &mut lines, &mut output);
                    }
                }
                Some(ExecutorEvent::Progress { progress: p, info: i }) => {
                    // Never backwards, and below 1 until the final status.
                    progress = progress.max(p.min(MAX_RUNNING_PROGRESS));
                    info = i;
                    gather(&mut pending, &mut lines, &mut output);
                    pending.push(running_info(&engine, task_id, progress, info.clone()));
                }
                Some(ExecutorEvent::OutputStopped) => {
                    gather(&mut pending, &mut lines, &mut output);
                    pending.push(TaskEvent::OutputStopped { task_id });
                }
                Some(ExecutorEvent::ResultSet { data, alias, rs_type, rows, cut, total_rows }) => {
                    // The writer already kept each result set within the Entrance's limit.
                    let sent = match data {
                        // Small: inside the ordered events, no extra request.
                        ResultSetData::Inline(text) => {
                            gather(&mut pending, &mut lines, &mut output);
                            Ok(Some(text))
                        }
                        ResultSetData::File(path) => {
                            // What came before the upload leaves before it.
                            send(&mut pending, &mut lines, &mut output);
                            let r = engine.out.upload_result(&cb, task_id, alias, &path).await;
                            let _ = tokio::fs::remove_file(&path).await;
                            r.map(|_| None)
                        }
                    };
                    match sent {
                        Ok(inline) => pending.push(TaskEvent::ResultSet { task_id, alias, inline, rs_type, rows, cut, total_rows }),
                        Err(e) => {
                            pending.push(TaskEvent::Log { task_id, lines: vec![logline::format(Level::Error, &e)] });
                            not_sent.get_or_insert(e);
                        }
                    }
                }
            },
            _ = log_tick.tick() => send(&mut pending, &mut lines, &mut output),
            _ = output_tick.tick(), if !output.is_empty() => send(&mut pending, &mut lines, &mut output),
            _ = info_tick.tick() => {
                gather(&mut pending, &mut lines, &mut output);
                pending.push(running_info(&engine, task_id, progress, info.clone()));
                send(&mut pending, &mut lines, &mut output);
            }
        }
    }
    gather(&mut pending, &mut lines, &mut output);
    Forwarded { progress, not_sent, pending }
}
