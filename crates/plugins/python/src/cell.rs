//! An executor that runs each statement as one cell of a driver
//! ([`Interpreter`]): output lines become a TEXT result set, tables TABLE
//! result sets, progress messages the task's progress, and a kill interrupts
//! the cell (SIGINT) and keeps the session.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hangar_engineconn_plugin::{ExecutionContext, Executor, ResultSetWriter};
use hangar_protocol::dolphin::Column;
use hangar_protocol::rpc::JobProgressInfo;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::interp::{ColumnMsg, Interpreter, Msg, lock};

/// How often an interrupted cell that goes on is interrupted again.
const INTERRUPT_REPEAT: Duration = Duration::from_millis(400);

/// Runs statements of one kind in a driver's session.
pub struct CellExecutor {
    interp: Arc<Interpreter>,
    /// The driver's handler (`python`, or what the setup registered: `sql`).
    kind: &'static str,
    /// Statements split as SQL (one cell each) rather than one cell per task.
    split_sql: bool,
    /// Fields added to every request of this executor.
    extra: Map<String, Value>,
}

impl CellExecutor {
    pub fn new(interp: Arc<Interpreter>, kind: &'static str, split_sql: bool, extra: Map<String, Value>) -> Self {
        Self { interp, kind, split_sql, extra }
    }
}

/// The result sets of one cell and the first error writing them.
#[derive(Default)]
struct CellOutput {
    text: Option<ResultSetWriter>,
    /// A table whose rows are still coming, and its width.
    table: Option<(ResultSetWriter, usize)>,
    tables: usize,
    error: Option<String>,
}

impl CellOutput {
    fn keep(&mut self, r: Result<(), String>) {
        if let Err(e) = r
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }

    async fn line(&mut self, ctx: &mut ExecutionContext, s: &str) {
        if self.error.is_some() {
            return;
        }
        if self.text.is_none() {
            match ctx.text_writer().await {
                Ok(w) => self.text = Some(w),
                Err(e) => return self.keep(Err(e)),
            }
        }
        if let Some(w) = self.text.as_mut() {
            let r = w.add_line(s).await;
            self.keep(r);
        }
    }

    async fn table(&mut self, ctx: &mut ExecutionContext, columns: Vec<ColumnMsg>) {
        self.close_table().await;
        if self.error.is_some() {
            return;
        }
        let columns: Vec<Column> = columns
            .into_iter()
            .map(|c| Column {
                name: c.name,
                data_type: if c.data_type.is_empty() { "string".into() } else { c.data_type },
                comment: "NULL".into(),
            })
            .collect();
        self.tables += 1;
        match ctx.table_writer(&columns).await {
            Ok(w) => self.table = Some((w, columns.len())),
            Err(e) => self.keep(Err(e)),
        }
    }

    async fn rows(&mut self, rows: Vec<Vec<Option<String>>>, more: bool) {
        if let Some((w, width)) = self.table.as_mut() {
            let width = *width;
            let mut r = Ok(());
            for row in &rows {
                let cells: Vec<Option<&str>> = (0..width).map(|i| row.get(i).and_then(|c| c.as_deref())).collect();
                r = w.add_row(&cells).await;
                if r.is_err() {
                    break;
                }
            }
            self.keep(r);
        }
        if !more {
            self.close_table().await;
        }
    }

    async fn close_table(&mut self) {
        if let Some((w, _)) = self.table.take() {
            let r = w.close().await;
            self.keep(r);
        }
    }

    /// Close the result sets; a successful cell without output still gets an
    /// empty TEXT result set, as a shell task does (not a SQL statement).
    async fn finish(mut self, ctx: &mut ExecutionContext, succeeded: bool, empty_text: bool) -> Result<(), String> {
        self.close_table().await;
        if let Some(w) = self.text.take() {
            let r = w.close().await;
            self.keep(r);
        } else if succeeded && empty_text && self.tables == 0 && self.error.is_none() {
            let r = match ctx.text_writer().await {
                Ok(w) => w.close().await,
                Err(e) => Err(e),
            };
            self.keep(r);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// How a cell ended.
enum Outcome {
    Done(Result<(), String>),
    Killed,
    Lost(String),
}

#[async_trait]
impl Executor for CellExecutor {
    fn split(&self, code: &str) -> Vec<String> {
        if self.split_sql { hangar_engineconn_plugin::code::split_sql(code) } else { vec![code.to_string()] }
    }

    async fn execute(&self, ctx: &mut ExecutionContext, code: &str) -> Result<(), String> {
        let interp = &self.interp;
        let name = interp.spec.name;
        let grace = interp.spec.interrupt_grace;
        let cancel = ctx.cancel_signal();
        let mut chan = tokio::select! {
            c = interp.channel.lock() => c,
            _ = cancel.cancelled() => return Err("killed".into()),
        };
        if let Some(reason) = interp.shared.dead() {
            return Err(reason);
        }
        if chan.in_flight {
            interp.resync(&mut chan).await?;
        }
        let mut req = self.extra.clone();
        req.insert("code".into(), Value::from(code));
        req.insert("kind".into(), Value::from(self.kind));
        req.insert("task".into(), Value::from(ctx.task_id));
        req.insert("max_rows".into(), Value::from(ctx.max_rows()));
        let mut request =
            serde_json::to_vec(&Value::Object(req)).map_err(|e| format!("cannot encode the cell: {e}"))?;
        request.push(b'\n');
        chan.in_flight = true;
        let sent = async {
            chan.stdin.write_all(&request).await?;
            chan.stdin.flush().await
        }
        .await;
        if sent.is_err() {
            return Err(interp.lost().await);
        }

        let mut output = CellOutput::default();
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut again: Option<tokio::time::Instant> = None;
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let outcome = loop {
            tokio::select! {
                line = chan.next_line() => {
                    let Some(line) = line else { break Outcome::Lost(interp.lost().await) };
                    match serde_json::from_str::<Msg>(&line) {
                        Ok(Msg::Stdout { s }) => output.line(ctx, &s).await,
                        Ok(Msg::Stderr { s }) => {
                            ctx.stderr(&s);
                            interp.shared.push_tail(&s);
                        }
                        Ok(Msg::Table { columns, rows, more }) => {
                            output.table(ctx, columns).await;
                            output.rows(rows, more).await;
                        }
                        Ok(Msg::Rows { rows, more }) => output.rows(rows, more).await,
                        Ok(Msg::Progress { p, info }) => ctx.progress(p, info.into_iter().map(|i| JobProgressInfo {
                            id: i.id,
                            total_tasks: i.total,
                            running_tasks: i.running,
                            failed_tasks: i.failed,
                            succeed_tasks: i.succeed,
                        }).collect()),
                        Ok(Msg::Done { ok, cancelled, error, info }) => {
                            if let Some(info) = info {
                                *lock(&interp.shared.info) = info;
                            }
                            break Outcome::Done(if deadline.is_some() && !ok {
                                // Whatever the cell says, it ended because it was killed.
                                Err("killed".into())
                            } else if cancelled {
                                // A KeyboardInterrupt nobody asked for is the cell's own error.
                                Err("KeyboardInterrupt".into())
                            } else if ok {
                                Ok(())
                            } else {
                                Err(error.unwrap_or_else(|| format!("the {name} cell failed")))
                            });
                        }
                        Ok(Msg::Ready { .. }) => {}
                        Err(e) => ctx.warn(&format!("unreadable message from the {name} ({e}): {line}")),
                    }
                }
                _ = cancel.cancelled(), if deadline.is_none() => {
                    ctx.info(&format!("interrupting the {} cell ({})", self.kind, interp.spec.interrupt_note));
                    interp.interrupt();
                    let now = tokio::time::Instant::now();
                    deadline = Some(now + grace);
                    again = Some(now + INTERRUPT_REPEAT);
                }
                // Repeated, as a user presses Ctrl-C again: `os.system` swallows
                // the first one while its child runs.
                _ = tokio::time::sleep_until(again.unwrap_or(far)), if again.is_some() => {
                    interp.interrupt();
                    again = again.map(|t| t + INTERRUPT_REPEAT);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    break Outcome::Killed;
                }
            }
        };
        let empty_text = !self.split_sql;
        match outcome {
            Outcome::Done(result) => {
                chan.in_flight = false;
                drop(chan);
                let written = output.finish(ctx, result.is_ok(), empty_text).await;
                result.and(written)
            }
            Outcome::Killed => {
                let reason = interp
                    .kill(format!("{name} did not stop within {} s of an interrupt and was killed", grace.as_secs()));
                drop(chan);
                ctx.warn(&reason);
                let _ = output.finish(ctx, false, empty_text).await;
                Err("killed".into())
            }
            Outcome::Lost(reason) => {
                drop(chan);
                let _ = output.finish(ctx, false, empty_text).await;
                Err(reason)
            }
        }
    }
}
