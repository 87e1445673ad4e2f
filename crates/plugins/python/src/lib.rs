//! The python engine (`engineType=python-python3`, `codeType=python` or `py`):
//! one long-lived Python interpreter per engine, in its own process group,
//! running the driver in `driver.py`. Every task's code is one cell executed in
//! the same namespace, so variables, imports and functions persist from task to
//! task on the same engine.
//!
//! The driver speaks JSON lines on private duplicates of the interpreter's
//! stdin/stdout (see `driver.py`): user stdout lines become a TEXT result set,
//! stderr lines the task log as they are produced, `show_table(...)` a TABLE
//! result set, and a failing cell fails the task with its Python traceback. A
//! kill interrupts the cell with SIGINT (`KeyboardInterrupt`) and keeps the
//! session; an interpreter that does not answer within two seconds is killed
//! and the session reports itself unhealthy, as it does when the interpreter
//! dies, so the engine exits.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use hangar_engineconn_plugin::{
    EngineConnBuildRequest, EngineConnLaunchRequest, EngineConnPlugin, EngineConnSession, EngineCreationContext,
    EngineResourceRequest, ExecutionContext, Executor, ResultSetWriter, executor_for, resource_from,
};
use hangar_protocol::dolphin::Column;
use hangar_protocol::{ErrorCode, HangarError, Resource};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

/// Startup parameter: the python interpreter to run (a path or a command on `PATH`).
pub const PYTHON_PATH_KEY: &str = "hangar.python.path";
/// Linkis's name for the interpreter; honoured when it is a path.
pub const LINKIS_PYTHON_VERSION_KEY: &str = "python.version";
/// Startup parameter: colon-separated folders put in front of `sys.path`.
pub const PYTHON_PATHS_KEY: &str = "hangar.python.paths";
pub use hangar_engineconn_plugin::REQUIRED_ENV_KEY;

const DEFAULT_PYTHON: &str = "python3";
/// The real interpreter behind `python3`, found by [`PythonPlugin::prepare`].
static RESOLVED_PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// How the ECM hands that path to the engine process.
const RESOLVED_PYTHON_ENV: &str = "HANGAR_PYTHON_RESOLVED";
/// The driver the interpreter runs (`python3 -u -c DRIVER <paths>`).
const DRIVER: &str = include_str!("driver.py");
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an interrupted cell may take to stop before the interpreter is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How often an interrupted cell that goes on is interrupted again.
const INTERRUPT_REPEAT: Duration = Duration::from_millis(400);
/// How long the interpreter's stderr may stay open after it exited.
const STDERR_DRAIN: Duration = Duration::from_millis(300);
const STDERR_TAIL_LINES: usize = 20;

/// The python EngineConnPlugin.
pub struct PythonPlugin;

#[async_trait]
impl EngineConnPlugin for PythonPlugin {
    fn engine_type(&self) -> &'static str {
        "python"
    }

    fn versions(&self) -> &'static [&'static str] {
        &["python3"]
    }

    fn run_types(&self) -> &'static [&'static str] {
        &["python", "py"]
    }

    fn create_engine_resource(&self, req: &EngineResourceRequest<'_>) -> Result<Resource, HangarError> {
        resource_from(req.properties, "512m", 1)
    }

    /// Resolve `python3` on `PATH` to the real interpreter once: version
    /// managers put a shell-script shim there (pyenv's costs ~150 ms a start).
    fn prepare(&self) {
        let out = std::process::Command::new(DEFAULT_PYTHON).args(["-c", "import sys; print(sys.executable)"]).output();
        if let Ok(out) = out
            && out.status.success()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !path.is_empty() && std::path::Path::new(&path).is_file() {
                let _ = RESOLVED_PYTHON.set(path);
            }
        }
    }

    fn build_launch(&self, req: &EngineConnBuildRequest) -> Result<EngineConnLaunchRequest, HangarError> {
        let mut launch = hangar_engineconn_plugin::same_binary_launch(req)?;
        if let Some(p) = RESOLVED_PYTHON.get() {
            launch.environment.insert(RESOLVED_PYTHON_ENV.to_string(), p.clone());
        }
        Ok(launch)
    }

    async fn create_engine_conn(&self, ctx: &EngineCreationContext) -> Result<Arc<dyn EngineConnSession>, HangarError> {
        let python = python_command(&ctx.options);
        // The plugin's `lib` and the user's localized `resources` are importable.
        let mut paths: Vec<String> = ctx
            .options
            .get(PYTHON_PATHS_KEY)
            .map(|p| p.trim().to_string())
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        for d in ["lib", "resources"] {
            let dir = ctx.work_dir.join(d);
            if dir.is_dir() {
                paths.push(dir.display().to_string());
            }
        }
        let paths = paths.join(":");
        let interp = Interpreter::start(&python, &paths, &ctx.work_dir).await?;
        Ok(Arc::new(PythonSession { executor: Arc::new(PythonExecutor { interp }) }))
    }
}

/// The interpreter to run: `hangar.python.path`, else Linkis's `python.version`
/// when it names a path, else `python3` from `PATH` (as resolved by the server
/// when the engine's account can run that).
fn python_command(options: &BTreeMap<String, String>) -> String {
    options
        .get(PYTHON_PATH_KEY)
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .or_else(|| options.get(LINKIS_PYTHON_VERSION_KEY).map(|p| p.trim().to_string()).filter(|p| p.contains('/')))
        // The server's interpreter, when this engine's account may run it (an
        // engine running as another account looks `python3` up on PATH).
        .or_else(|| {
            std::env::var(RESOLVED_PYTHON_ENV)
                .ok()
                .filter(|p| !p.is_empty() && nix::unistd::access(p.as_str(), nix::unistd::AccessFlags::X_OK).is_ok())
        })
        .unwrap_or_else(|| DEFAULT_PYTHON.to_string())
}

struct PythonSession {
    executor: Arc<PythonExecutor>,
}

impl EngineConnSession for PythonSession {
    fn executor(&self, run_type: &str) -> Result<Arc<dyn Executor>, HangarError> {
        executor_for("python", PythonPlugin.run_types(), run_type, self.executor.clone())
    }

    fn healthy(&self) -> Result<(), String> {
        match self.executor.interp.shared.dead() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

/// A message from the driver.
#[derive(Debug, Deserialize)]
#[serde(tag = "t")]
enum Msg {
    #[serde(rename = "ready")]
    Ready {},
    #[serde(rename = "out")]
    Stdout { s: String },
    #[serde(rename = "err")]
    Stderr { s: String },
    #[serde(rename = "table")]
    Table { columns: Vec<ColumnMsg>, rows: Vec<Vec<Option<String>>> },
    #[serde(rename = "done")]
    Done {
        #[serde(default)]
        ok: bool,
        #[serde(default)]
        cancelled: bool,
        #[serde(default)]
        error: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
struct ColumnMsg {
    name: String,
    #[serde(rename = "type", default)]
    data_type: String,
}

/// What is known about the interpreter outside the protocol channel.
#[derive(Default)]
struct Shared {
    /// Set once the interpreter is gone for good.
    dead: Mutex<Option<String>>,
    /// The last lines of its stderr (driver diagnostics and the cells' stderr).
    tail: Mutex<VecDeque<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn dead(&self) -> Option<String> {
        lock(&self.dead).clone()
    }

    /// Record why the session ended; the first reason wins.
    fn set_dead(&self, reason: String) -> String {
        lock(&self.dead).get_or_insert(reason).clone()
    }

    fn push_tail(&self, line: &str) {
        let mut t = lock(&self.tail);
        if t.len() == STDERR_TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line.to_string());
    }

    fn tail_text(&self) -> String {
        let t = lock(&self.tail);
        if t.is_empty() { String::new() } else { format!("; last stderr: {}", Vec::from(t.clone()).join("\n")) }
    }
}

/// The protocol channel: the driver's requests and replies.
struct Channel {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    buf: Vec<u8>,
    /// A cell was sent and its `done` not read yet (its task was abandoned).
    in_flight: bool,
}

impl Channel {
    /// The next line of the driver, `None` at EOF.
    async fn next_line(&mut self) -> Option<String> {
        match self.stdout.read_until(b'\n', &mut self.buf).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(take_line(&mut self.buf)),
        }
    }
}

/// One python interpreter running the driver.
struct Interpreter {
    python: String,
    /// The interpreter's pid, also its process group.
    pgid: Pid,
    channel: tokio::sync::Mutex<Channel>,
    shared: Arc<Shared>,
    /// `Some(how)` once the interpreter has exited.
    exited: watch::Receiver<Option<String>>,
}

impl Interpreter {
    async fn start(python: &str, paths: &str, cwd: &Path) -> Result<Interpreter, HangarError> {
        let start_err = |msg: String| HangarError::new(ErrorCode::EngineStartFailed, msg);
        let mut cmd = Command::new(python);
        cmd.arg("-u")
            .arg("-c")
            .arg(DRIVER)
            .arg(paths)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if cwd.is_dir() {
            cmd.current_dir(cwd);
        }
        let mut child =
            cmd.spawn().map_err(|e| start_err(format!("cannot start python interpreter '{python}': {e}")))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| start_err(format!("python interpreter '{python}' exited at once")))?;
        let pgid = Pid::from_raw(pid);
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(start_err("the python interpreter's pipes are missing".into()));
        };
        let shared = Arc::new(Shared::default());

        let tail = shared.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut err = BufReader::new(stderr);
            let mut buf = Vec::new();
            while let Ok(n) = err.read_until(b'\n', &mut buf).await {
                if n == 0 {
                    break;
                }
                let line = take_line(&mut buf);
                tracing::warn!(pid, "python: {line}");
                tail.push_tail(&line);
            }
        });
        let (exit_tx, exited) = watch::channel(None);
        let watcher = shared.clone();
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(st) => describe_exit(st),
                Err(e) => format!("cannot be waited for: {e}"),
            };
            let _ = tokio::time::timeout(STDERR_DRAIN, stderr_reader).await;
            let reason = watcher.set_dead(format!("python interpreter exited: {how}{}", watcher.tail_text()));
            tracing::warn!(pid, "{reason}");
            exit_tx.send_replace(Some(how));
        });

        let interp = Interpreter {
            python: python.to_string(),
            pgid,
            channel: tokio::sync::Mutex::new(Channel {
                stdin,
                stdout: BufReader::new(stdout),
                buf: Vec::new(),
                in_flight: false,
            }),
            shared,
            exited,
        };
        match tokio::time::timeout(START_TIMEOUT, interp.handshake()).await {
            Ok(Ok(())) => {
                tracing::info!(pid, python, "python interpreter ready");
                Ok(interp)
            }
            Ok(Err(())) => {
                let reason = interp.lost().await;
                Err(start_err(format!("python interpreter '{python}' did not start the hangar driver: {reason}")))
            }
            Err(_) => {
                interp.kill(format!("python interpreter '{python}' was not ready within {START_TIMEOUT:?}"));
                Err(start_err(format!(
                    "python interpreter '{python}' was not ready within {} s{}",
                    START_TIMEOUT.as_secs(),
                    interp.shared.tail_text()
                )))
            }
        }
    }

    /// Wait for the driver's `ready`; anything printed before it (by a
    /// sitecustomize, say) is logged and skipped.
    async fn handshake(&self) -> Result<(), ()> {
        let mut chan = self.channel.lock().await;
        loop {
            let line = chan.next_line().await.ok_or(())?;
            match serde_json::from_str::<Msg>(&line) {
                Ok(Msg::Ready {}) => return Ok(()),
                _ => {
                    tracing::warn!(python = %self.python, "python printed before the driver started: {line}");
                    self.shared.push_tail(&line);
                }
            }
        }
    }

    /// The protocol channel closed: wait for the exit to be recorded, then
    /// return why the interpreter is gone.
    async fn lost(&self) -> String {
        let mut rx = self.exited.clone();
        let exited = matches!(tokio::time::timeout(INTERRUPT_GRACE, rx.wait_for(Option::is_some)).await, Ok(Ok(_)));
        if !exited {
            return self.kill("python interpreter closed its protocol channel and was killed".into());
        }
        self.shared.dead().unwrap_or_else(|| "python interpreter exited".into())
    }

    /// Kill the interpreter's whole process group and mark the session dead.
    fn kill(&self, reason: String) -> String {
        let reason = self.shared.set_dead(reason);
        let _ = killpg(self.pgid, Signal::SIGKILL);
        reason
    }

    fn interrupt(&self) {
        if self.shared.dead().is_none() {
            // The group, as a terminal's Ctrl-C does: `os.system` and friends
            // ignore SIGINT in the interpreter while their child runs.
            let _ = killpg(self.pgid, Signal::SIGINT);
        }
    }

    /// A cell was abandoned before its `done`: interrupt it and skip its
    /// messages, or give the session up.
    async fn resync(&self, chan: &mut Channel) -> Result<(), String> {
        self.interrupt();
        let drained = tokio::time::timeout(INTERRUPT_GRACE, async {
            loop {
                match chan.next_line().await {
                    None => return false,
                    Some(line) => {
                        if matches!(serde_json::from_str::<Msg>(&line), Ok(Msg::Done { .. })) {
                            return true;
                        }
                    }
                }
            }
        })
        .await;
        match drained {
            Ok(true) => {
                chan.in_flight = false;
                Ok(())
            }
            Ok(false) => Err(self.lost().await),
            Err(_) => Err(self.kill("python interpreter did not finish an abandoned cell and was killed".into())),
        }
    }
}

fn describe_exit(st: ExitStatus) -> String {
    if let Some(c) = st.code() {
        format!("exit code {c}")
    } else if let Some(s) = st.signal() {
        match Signal::try_from(s) {
            Ok(sig) => format!("signal {s} ({})", sig.as_str()),
            Err(_) => format!("signal {s}"),
        }
    } else {
        st.to_string()
    }
}

struct PythonExecutor {
    interp: Interpreter,
}

/// The result sets of one cell and the first error writing them.
#[derive(Default)]
struct CellOutput {
    text: Option<ResultSetWriter>,
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

    async fn table(&mut self, ctx: &mut ExecutionContext, columns: Vec<ColumnMsg>, rows: Vec<Vec<Option<String>>>) {
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
        let r = async {
            let mut w = ctx.table_writer(&columns).await?;
            for row in &rows {
                let cells: Vec<Option<&str>> =
                    (0..columns.len()).map(|i| row.get(i).and_then(|c| c.as_deref())).collect();
                w.add_row(&cells).await?;
            }
            w.close().await
        }
        .await;
        self.tables += 1;
        self.keep(r);
    }

    /// Close the result sets; a successful cell without output still gets an
    /// empty TEXT result set, as a shell task does.
    async fn finish(mut self, ctx: &mut ExecutionContext, succeeded: bool) -> Result<(), String> {
        if let Some(w) = self.text.take() {
            let r = w.close().await;
            self.keep(r);
        } else if succeeded && self.tables == 0 && self.error.is_none() {
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
impl Executor for PythonExecutor {
    async fn execute(&self, ctx: &mut ExecutionContext, code: &str) -> Result<(), String> {
        let interp = &self.interp;
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
        let mut request = serde_json::to_vec(&serde_json::json!({ "code": code }))
            .map_err(|e| format!("cannot encode the cell: {e}"))?;
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
                        Ok(Msg::Table { columns, rows }) => output.table(ctx, columns, rows).await,
                        Ok(Msg::Done { cancelled: true, .. }) => {
                            // A KeyboardInterrupt nobody asked for is the cell's own error.
                            let why = if deadline.is_some() { "killed" } else { "KeyboardInterrupt" };
                            break Outcome::Done(Err(why.into()));
                        }
                        Ok(Msg::Done { ok: true, .. }) => break Outcome::Done(Ok(())),
                        Ok(Msg::Done { error, .. }) => {
                            break Outcome::Done(Err(error.unwrap_or_else(|| "the python cell failed".into())));
                        }
                        Ok(Msg::Ready {}) => {}
                        Err(e) => ctx.warn(&format!("unreadable message from the python driver ({e}): {line}")),
                    }
                }
                _ = cancel.cancelled(), if deadline.is_none() => {
                    ctx.info("interrupting the python cell (KeyboardInterrupt)");
                    interp.interrupt();
                    let now = tokio::time::Instant::now();
                    deadline = Some(now + INTERRUPT_GRACE);
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
        match outcome {
            Outcome::Done(result) => {
                chan.in_flight = false;
                drop(chan);
                let written = output.finish(ctx, result.is_ok()).await;
                result.and(written)
            }
            Outcome::Killed => {
                let reason = interp.kill(format!(
                    "python interpreter did not stop within {} s of an interrupt and was killed",
                    INTERRUPT_GRACE.as_secs()
                ));
                drop(chan);
                ctx.warn(&reason);
                let _ = output.finish(ctx, false).await;
                Err("killed".into())
            }
            Outcome::Lost(reason) => {
                drop(chan);
                let _ = output.finish(ctx, false).await;
                Err(reason)
            }
        }
    }
}

fn take_line(buf: &mut Vec<u8>) -> String {
    let mut end = buf.len();
    while end > 0 && matches!(buf[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let line = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.clear();
    line
}

#[cfg(test)]
mod tests;
