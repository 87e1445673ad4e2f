//! One task's life inside the engine (Linkis TaskExecutionService): run the
//! executor, forward its logs in batches, send the combined running-info
//! report on an interval and on progress, then the final status.

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
    engine.out.event(&cb, TaskEvent::Status { task_id, status: JobStatus::Running, error: None, exit_code: None });
    ctx.info(&format!("engine {} (ticket {}) runs task {task_id}", engine.instance, engine.ctx.ticket_id));
    let forwarder = tokio::spawn(forward(engine.clone(), cb.clone(), task_id, rx));

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
    let (progress, not_sent) = forwarder.await.unwrap_or((0.0, None));
    let _ = tokio::fs::remove_dir_all(&spool).await;
    if let Some(line) = error_line {
        engine.out.event(&cb, TaskEvent::Log { task_id, lines: vec![line] });
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
    engine.out.event(&cb, running_info(&engine, task_id, final_progress, Vec::new()));
    engine.out.event(&cb, TaskEvent::Status { task_id, status, error: error.clone(), exit_code });
    engine.task_finished(task_id, status, error);
}

fn running_info(engine: &Engine, task_id: i64, progress: f32, progress_info: Vec<JobProgressInfo>) -> TaskEvent {
    let (_, metrics) = engine.metrics();
    TaskEvent::RunningInfo(TaskRunningInfo { task_id, progress, progress_info, resource: engine.resource, metrics })
}

const OUTPUT_PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// The most a running task reports (Linkis `linkis.job.fake.progress`).
const MAX_RUNNING_PROGRESS: f32 = 0.99;

/// Forward executor events until the executor's context is dropped; returns
/// the last progress, and why a result set could not be sent if one was not.
async fn forward(
    engine: Arc<Engine>,
    cb: String,
    task_id: i64,
    mut rx: mpsc::UnboundedReceiver<ExecutorEvent>,
) -> (f32, Option<String>) {
    let mut not_sent: Option<String> = None;
    let mut lines: Vec<String> = Vec::new();
    let mut output: Vec<OutputLine> = Vec::new();
    // Linkis floors progress at 0.1 while a task runs.
    let mut progress: f32 = 0.1;
    let mut info: Vec<JobProgressInfo> = Vec::new();
    let mut log_tick = tokio::time::interval(engine.opts.log_push_interval);
    // What the task prints reaches a following client within ~50 ms.
    let mut output_tick = tokio::time::interval(OUTPUT_PUSH_INTERVAL);
    output_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut info_tick = tokio::time::interval(engine.opts.running_info_interval);
    let flush = |lines: &mut Vec<String>, output: &mut Vec<OutputLine>| {
        if !output.is_empty() {
            engine.out.event(&cb, TaskEvent::Output { task_id, lines: std::mem::take(output) });
        }
        if !lines.is_empty() {
            engine.out.event(&cb, TaskEvent::Log { task_id, lines: std::mem::take(lines) });
        }
    };
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                None => break,
                Some(ExecutorEvent::Log(line)) => {
                    lines.push(line);
                    if lines.len() >= engine.opts.log_push_lines {
                        flush(&mut lines, &mut output);
                    }
                }
                Some(ExecutorEvent::Output { stream, line }) => {
                    output.push(OutputLine { stream, line });
                    if output.len() >= engine.opts.log_push_lines {
                        flush(&mut lines, &mut output);
                    }
                }
                Some(ExecutorEvent::Progress { progress: p, info: i }) => {
                    // Never backwards, and below 1 until the final status.
                    progress = progress.max(p.min(MAX_RUNNING_PROGRESS));
                    info = i;
                    flush(&mut lines, &mut output);
                    engine.out.event(&cb, running_info(&engine, task_id, progress, info.clone()));
                }
                Some(ExecutorEvent::OutputStopped) => {
                    flush(&mut lines, &mut output);
                    engine.out.event(&cb, TaskEvent::OutputStopped { task_id });
                }
                Some(ExecutorEvent::ResultSet { data, alias, rs_type, rows, cut, total_rows }) => {
                    flush(&mut lines, &mut output);
                    // The writer already kept each result set within the Entrance's limit.
                    let sent = match data {
                        // Small: inside the ordered events, no extra request.
                        ResultSetData::Inline(text) => Ok(Some(text)),
                        ResultSetData::File(path) => {
                            let r = engine.out.upload_result(&cb, task_id, alias, &path).await;
                            let _ = tokio::fs::remove_file(&path).await;
                            r.map(|_| None)
                        }
                    };
                    match sent {
                        Ok(inline) => engine.out.event(&cb, TaskEvent::ResultSet { task_id, alias, inline, rs_type, rows, cut, total_rows }),
                        Err(e) => {
                            engine.out.event(&cb, TaskEvent::Log { task_id, lines: vec![logline::format(Level::Error, &e)] });
                            not_sent.get_or_insert(e);
                        }
                    }
                }
            },
            _ = log_tick.tick() => flush(&mut lines, &mut output),
            _ = output_tick.tick(), if !output.is_empty() => {
                engine.out.event(&cb, TaskEvent::Output { task_id, lines: std::mem::take(&mut output) });
            }
            _ = info_tick.tick() => {
                engine.out.event(&cb, running_info(&engine, task_id, progress, info.clone()));
            }
        }
    }
    flush(&mut lines, &mut output);
    (progress, not_sent)
}
