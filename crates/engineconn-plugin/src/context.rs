//! What an Executor sees while it runs one task: its logs, progress and
//! result-set writers, and the cancel signal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hangar_protocol::dolphin::{self, Column};
use hangar_protocol::logline::{self, Level};
use hangar_protocol::rpc::{JobProgressInfo, OutputStream};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{Notify, mpsc};

/// What an executor reports while it runs; the runtime turns these into task events.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutorEvent {
    /// One formatted log line.
    Log(String),
    Progress {
        progress: f32,
        info: Vec<JobProgressInfo>,
    },
    ResultSet {
        data: ResultSetData,
        alias: u32,
        rs_type: u32,
        rows: u64,
        /// Cut at the row limit.
        cut: bool,
        /// Rows produced, when cut and known.
        total_rows: Option<u64>,
    },
    /// A line the task printed, for clients following the job live.
    Output {
        stream: OutputStream,
        line: String,
    },
    /// No more output goes out live for this task (see [`LIVE_OUTPUT_MAX_BYTES`]).
    OutputStopped,
}

/// Live output of one task is for a person at a terminal: past this many
/// bytes, or at a line longer than [`LIVE_LINE_MAX_BYTES`], it stops going
/// out live (everything stays in the result sets and the log).
pub const LIVE_OUTPUT_MAX_BYTES: u64 = 16 << 20;
pub const LIVE_LINE_MAX_BYTES: usize = 64 << 10;

/// The live-output allowance of one task, shared by its writers.
#[derive(Debug, Clone, Default)]
struct LiveOutput(Arc<std::sync::atomic::AtomicU64>);

const LIVE_STOPPED: u64 = u64::MAX;

impl LiveOutput {
    /// Send `line` live if the allowance has room; the first refusal says so once.
    fn send(&self, events: &mpsc::UnboundedSender<ExecutorEvent>, stream: OutputStream, line: &str) {
        let len = line.len() as u64;
        let sent = self.0.load(Ordering::Relaxed);
        if sent == LIVE_STOPPED {
            return;
        }
        if line.len() > LIVE_LINE_MAX_BYTES || sent + len > LIVE_OUTPUT_MAX_BYTES {
            if self.0.swap(LIVE_STOPPED, Ordering::Relaxed) != LIVE_STOPPED {
                let _ = events.send(ExecutorEvent::OutputStopped);
            }
            return;
        }
        self.0.fetch_add(len, Ordering::Relaxed);
        let _ = events.send(ExecutorEvent::Output { stream, line: line.to_string() });
    }
}

/// Where a finished result set's bytes are: small ones in memory (they
/// travel inside the task's ordered events), larger ones in a spool file
/// (streamed to the Entrance, then removed).
#[derive(Debug, Clone, PartialEq)]
pub enum ResultSetData {
    Inline(String),
    File(PathBuf),
}

impl ResultSetData {
    /// The whole `.dolphin` file (tests and tools).
    pub fn bytes(&self) -> std::io::Result<Vec<u8>> {
        match self {
            ResultSetData::Inline(s) => Ok(s.as_bytes().to_vec()),
            ResultSetData::File(p) => std::fs::read(p),
        }
    }
}

/// Result sets up to this size stay in memory and go out with the task's
/// events (no file, no extra request); larger ones are spooled to a file.
pub const INLINE_RESULT_MAX_BYTES: usize = 64 << 10;

/// A one-shot cancel signal shared by the runtime and the running executor.
#[derive(Debug, Clone, Default)]
pub struct CancelSignal(Arc<(AtomicBool, Notify)>);

impl CancelSignal {
    pub fn cancel(&self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.0.load(Ordering::SeqCst)
    }

    /// Resolves once [`CancelSignal::cancel`] has been called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// The task-scoped context handed to [`crate::Executor::execute`].
pub struct ExecutionContext {
    pub task_id: i64,
    pub user: String,
    pub properties: BTreeMap<String, String>,
    result_dir: PathBuf,
    next_alias: u32,
    max_rows: u64,
    events: mpsc::UnboundedSender<ExecutorEvent>,
    cancel: CancelSignal,
    exit_code: Option<i32>,
    live: LiveOutput,
    max_result_bytes: u64,
    /// The statement running and how many the task has (progress is scaled to it).
    statement: (usize, usize),
}

impl ExecutionContext {
    pub fn new(
        task_id: i64,
        user: String,
        properties: BTreeMap<String, String>,
        result_dir: PathBuf,
        max_rows: u64,
        events: mpsc::UnboundedSender<ExecutorEvent>,
        cancel: CancelSignal,
    ) -> Self {
        Self {
            task_id,
            user,
            properties,
            result_dir,
            next_alias: 0,
            max_rows,
            events,
            cancel,
            exit_code: None,
            live: LiveOutput::default(),
            max_result_bytes: 0,
            statement: (0, 1),
        }
    }

    /// The largest result set the task's Entrance stores (0: no limit): a
    /// writer that would pass it fails at once, so nothing larger is kept.
    pub fn set_max_result_bytes(&mut self, limit: u64) {
        self.max_result_bytes = limit;
    }

    /// Rows a result set keeps before it is cut (`engineconn.max_result_rows`).
    pub fn max_rows(&self) -> u64 {
        self.max_rows
    }

    /// The exit code of the task's program (engines that run one: shell).
    pub fn set_exit_code(&mut self, code: i32) {
        self.exit_code = Some(code);
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    /// A line the task's program wrote to stderr: in the job log, and live
    /// to clients following the job.
    pub fn stderr(&self, line: &str) {
        self.info(line);
        self.live.send(&self.events, OutputStream::Stderr, line);
    }

    fn log(&self, level: Level, msg: &str) {
        // The runtime outlives every context; a closed channel means the task is gone.
        let _ = self.events.send(ExecutorEvent::Log(logline::format(level, msg)));
    }

    pub fn info(&self, msg: &str) {
        self.log(Level::Info, msg);
    }

    pub fn warn(&self, msg: &str) {
        self.log(Level::Warn, msg);
    }

    pub fn error(&self, msg: &str) {
        self.log(Level::Error, msg);
    }

    /// Which statement of how many runs now (set by the runtime).
    pub fn set_statement(&mut self, index: usize, total: usize) {
        self.statement = (index, total.max(1));
    }

    /// The progress of the running statement (0..=1); the task's progress is
    /// that share of its statements (Linkis: (paragraph-1)/total + fraction/total).
    pub fn progress(&self, progress: f32, info: Vec<JobProgressInfo>) {
        let (i, n) = self.statement;
        let p = (i as f32 + progress.clamp(0.0, 1.0)) / n as f32;
        let _ = self.events.send(ExecutorEvent::Progress { progress: p.clamp(0.0, 1.0), info });
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the task is killed.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn cancel_signal(&self) -> CancelSignal {
        self.cancel.clone()
    }

    /// Open the next `_N.dolphin` TEXT result set.
    pub async fn text_writer(&mut self) -> Result<ResultSetWriter, String> {
        self.open(dolphin::TEXT, dolphin::text_meta()).await
    }

    /// Open the next `_N.dolphin` TABLE result set with these columns.
    pub async fn table_writer(&mut self, columns: &[Column]) -> Result<ResultSetWriter, String> {
        self.open(dolphin::TABLE, dolphin::table_meta(columns)).await
    }

    async fn open(&mut self, rs_type: u32, meta: Vec<u8>) -> Result<ResultSetWriter, String> {
        let alias = self.next_alias;
        self.next_alias += 1;
        let mut head = dolphin::header(rs_type);
        head.extend(meta);
        Ok(ResultSetWriter {
            bytes: head.len() as u64,
            max_bytes: self.max_result_bytes,
            out: Sink::Memory(head),
            path: self.result_dir.join(format!("_{alias}.dolphin")),
            alias,
            rs_type,
            rows: 0,
            produced: 0,
            unread: false,
            max_rows: self.max_rows,
            events: self.events.clone(),
            live: self.live.clone(),
        })
    }
}

fn io_err(path: &Path, e: std::io::Error) -> String {
    format!("cannot write result file {}: {e}", path.display())
}

/// The setting that raises the row limit, as a user would set it.
pub const ROW_LIMIT_SETTING: &str = "engineconn.max_result_rows (HANGAR_ENGINECONN_MAX_RESULT_ROWS)";

/// Writes one result set; rows beyond the engine's row limit are counted but
/// not stored, and the task log says how many were kept of how many. Lines of
/// a TEXT result set (a program's stdout) also go live to clients.
pub struct ResultSetWriter {
    out: Sink,
    /// The spool file, once the result set outgrows memory.
    path: PathBuf,
    alias: u32,
    rs_type: u32,
    rows: u64,
    produced: u64,
    /// The engine stopped reading at the limit: `produced` is a lower bound.
    unread: bool,
    max_rows: u64,
    events: mpsc::UnboundedSender<ExecutorEvent>,
    live: LiveOutput,
    /// Bytes of the file so far, and the Entrance's per-file limit (0: none).
    bytes: u64,
    max_bytes: u64,
}

/// A result set being written: in memory until it passes
/// [`INLINE_RESULT_MAX_BYTES`], then in its spool file.
enum Sink {
    Memory(Vec<u8>),
    File(BufWriter<tokio::fs::File>),
}

impl ResultSetWriter {
    async fn write(&mut self, rec: &[u8]) -> Result<(), String> {
        if self.max_bytes > 0 && self.bytes + rec.len() as u64 > self.max_bytes {
            // Nothing larger than the Entrance takes is kept (or sent).
            if let Sink::File(_) = std::mem::replace(&mut self.out, Sink::Memory(Vec::new())) {
                let _ = tokio::fs::remove_file(&self.path).await;
            }
            return Err(hangar_protocol::rpc::result_set_too_large(self.alias, self.max_bytes));
        }
        self.bytes += rec.len() as u64;
        if let Sink::Memory(buf) = &mut self.out {
            if buf.len() + rec.len() <= INLINE_RESULT_MAX_BYTES {
                buf.extend_from_slice(rec);
                return Ok(());
            }
            let dir = self.path.parent().unwrap_or(Path::new("."));
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| format!("cannot create result folder {}: {e}", dir.display()))?;
            let file = tokio::fs::File::create(&self.path)
                .await
                .map_err(|e| format!("cannot create result file {}: {e}", self.path.display()))?;
            let mut w = BufWriter::new(file);
            w.write_all(buf).await.map_err(|e| io_err(&self.path, e))?;
            self.out = Sink::File(w);
        }
        if let Sink::File(w) = &mut self.out {
            w.write_all(rec).await.map_err(|e| io_err(&self.path, e))?;
        }
        Ok(())
    }

    fn admit(&mut self) -> bool {
        self.produced += 1;
        if self.rows >= self.max_rows {
            return false;
        }
        self.rows += 1;
        true
    }

    pub async fn add_line(&mut self, line: &str) -> Result<(), String> {
        self.live.send(&self.events, OutputStream::Stdout, line);
        if self.admit() {
            self.write(&dolphin::text_line(line)).await?;
        }
        Ok(())
    }

    pub async fn add_row(&mut self, cells: &[Option<&str>]) -> Result<(), String> {
        if self.admit() {
            self.write(&dolphin::table_row(cells)).await?;
        }
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The engine stops reading its source at the row limit (the total is
    /// then not known).
    pub fn stop_reading(&mut self) {
        self.unread = true;
    }

    /// Finish the result set and announce it.
    pub async fn close(mut self) -> Result<(), String> {
        let data = match std::mem::replace(&mut self.out, Sink::Memory(Vec::new())) {
            // Every record is UTF-8 text (cells are `&str`).
            Sink::Memory(buf) => {
                ResultSetData::Inline(String::from_utf8(buf).map_err(|_| "a result set is not UTF-8 text".to_string())?)
            }
            Sink::File(mut w) => {
                // Flushed to the OS, not fsynced: the file is sent on and removed.
                w.flush().await.map_err(|e| io_err(&self.path, e))?;
                ResultSetData::File(self.path.clone())
            }
        };
        let cut = self.produced > self.rows;
        if cut {
            let what = if self.unread {
                format!("kept its first {} rows; the rest was not read", self.rows)
            } else {
                format!("kept {} of {} rows", self.rows, self.produced)
            };
            let _ = self.events.send(ExecutorEvent::Log(logline::format(
                Level::Warn,
                &format!(
                    "result set {} {what} (the row limit); raise {ROW_LIMIT_SETTING} to keep more",
                    self.alias + 1
                ),
            )));
        }
        let _ = self.events.send(ExecutorEvent::ResultSet {
            data,
            alias: self.alias,
            rs_type: self.rs_type,
            rows: self.rows,
            cut,
            total_rows: (cut && !self.unread).then_some(self.produced),
        });
        Ok(())
    }
}
