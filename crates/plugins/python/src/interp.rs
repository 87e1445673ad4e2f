//! One Python interpreter running the driver (`driver.py`), spoken to in
//! JSON lines over private pipes. Shared by the python engine and the engines
//! built on it (Spark).

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hangar_engineconn_plugin::take_line;
use hangar_protocol::{ErrorCode, HangarError};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

/// The driver's code (it defines `_main(setup=None)` and does not call it).
pub const DRIVER: &str = include_str!("driver.py");
const STDERR_TAIL_LINES: usize = 20;
/// How long the interpreter's stderr may stay open after it exited.
const STDERR_DRAIN: Duration = Duration::from_millis(300);

/// How to start an interpreter.
#[derive(Debug, Clone)]
pub struct InterpreterSpec {
    /// What the engine calls it in messages ("python interpreter", "Spark driver").
    pub name: &'static str,
    pub python: String,
    /// Folders put in front of `sys.path`.
    pub paths: String,
    pub cwd: PathBuf,
    /// Environment added to the engine's own.
    pub env: BTreeMap<String, String>,
    /// Python code run after the driver's definitions; it must end by calling
    /// `_main(...)`. The python engine's is `_main()`.
    pub program: String,
    /// Start-up, as far as the driver's `ready`.
    pub start_timeout: Duration,
    /// How long an interrupted cell may take to stop before the interpreter is killed.
    pub interrupt_grace: Duration,
    /// What an interrupt does, for the task log.
    pub interrupt_note: &'static str,
    /// A line sent before any cell, for a setup that calls `driver.read_setup()`
    /// (it may carry secrets: it never touches argv, the environment or disk).
    pub setup_line: Option<String>,
}

/// A message from the driver.
#[derive(Debug, Deserialize)]
#[serde(tag = "t")]
pub(crate) enum Msg {
    #[serde(rename = "ready")]
    Ready {
        #[serde(default)]
        info: BTreeMap<String, String>,
    },
    #[serde(rename = "out")]
    Stdout { s: String },
    #[serde(rename = "err")]
    Stderr { s: String },
    /// A TABLE result set; `more` says rows follow in `rows` messages.
    #[serde(rename = "table")]
    Table {
        columns: Vec<ColumnMsg>,
        rows: Vec<Vec<Option<String>>>,
        #[serde(default)]
        more: bool,
    },
    #[serde(rename = "rows")]
    Rows {
        rows: Vec<Vec<Option<String>>>,
        #[serde(default)]
        more: bool,
    },
    #[serde(rename = "progress")]
    Progress {
        p: f32,
        #[serde(default)]
        info: Vec<ProgressMsg>,
    },
    #[serde(rename = "done")]
    Done {
        #[serde(default)]
        ok: bool,
        #[serde(default)]
        cancelled: bool,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        info: Option<BTreeMap<String, String>>,
    },
}

#[derive(Debug, Deserialize)]
pub(crate) struct ColumnMsg {
    pub name: String,
    #[serde(rename = "type", default)]
    pub data_type: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ProgressMsg {
    pub id: String,
    #[serde(default)]
    pub total: u32,
    #[serde(default)]
    pub running: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub succeed: u32,
}

/// What is known about the interpreter outside the protocol channel.
#[derive(Default)]
pub(crate) struct Shared {
    /// Set once the interpreter is gone for good.
    dead: Mutex<Option<String>>,
    /// The last lines of its stderr (driver diagnostics and the cells' stderr).
    tail: Mutex<VecDeque<String>>,
    /// What the driver last said about its session (`ready` / `done` info).
    pub info: Mutex<BTreeMap<String, String>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn dead(&self) -> Option<String> {
        lock(&self.dead).clone()
    }

    /// Record why the session ended; the first reason wins.
    fn set_dead(&self, reason: String) -> String {
        lock(&self.dead).get_or_insert(reason).clone()
    }

    pub fn push_tail(&self, line: &str) {
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
pub(crate) struct Channel {
    pub stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    buf: Vec<u8>,
    /// A cell was sent and its `done` not read yet (its task was abandoned).
    pub in_flight: bool,
}

impl Channel {
    /// The next line of the driver, `None` at EOF.
    pub async fn next_line(&mut self) -> Option<String> {
        match self.stdout.read_until(b'\n', &mut self.buf).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(take_line(&mut self.buf)),
        }
    }
}

/// One interpreter running the driver.
pub struct Interpreter {
    pub(crate) spec: InterpreterSpec,
    /// The interpreter's pid, also its process group.
    pgid: Pid,
    pub(crate) channel: tokio::sync::Mutex<Channel>,
    pub(crate) shared: Arc<Shared>,
    /// `Some(how)` once the interpreter has exited.
    exited: watch::Receiver<Option<String>>,
}

impl Interpreter {
    pub async fn start(spec: InterpreterSpec) -> Result<Interpreter, HangarError> {
        let start_err = |msg: String| HangarError::new(ErrorCode::EngineStartFailed, msg);
        let (name, python) = (spec.name, spec.python.clone());
        let mut cmd = Command::new(&python);
        cmd.arg("-u")
            .arg("-c")
            .arg(format!("{DRIVER}\n{}\n", spec.program))
            .arg(&spec.paths)
            .envs(&spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if spec.cwd.is_dir() {
            cmd.current_dir(&spec.cwd);
        }
        let mut child = cmd.spawn().map_err(|e| start_err(format!("cannot start {name} '{python}': {e}")))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| start_err(format!("{name} '{python}' exited at once")))?;
        let pgid = Pid::from_raw(pid);
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(start_err(format!("the {name}'s pipes are missing")));
        };
        if let Some(line) = &spec.setup_line {
            let mut line = line.replace('\n', " ").into_bytes();
            line.push(b'\n');
            // Into the pipe's buffer (a setup line is small); a driver that
            // died at once shows in the handshake.
            let _ = stdin.write_all(&line).await;
        }
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
                tracing::warn!(pid, "{name}: {line}");
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
            let reason = watcher.set_dead(format!("{name} exited: {how}{}", watcher.tail_text()));
            tracing::warn!(pid, "{reason}");
            exit_tx.send_replace(Some(how));
        });

        let start_timeout = spec.start_timeout;
        let interp = Interpreter {
            spec,
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
        match tokio::time::timeout(start_timeout, interp.handshake()).await {
            Ok(Ok(())) => {
                tracing::info!(pid, python, "{name} ready");
                Ok(interp)
            }
            Ok(Err(failure)) => {
                let reason = match failure {
                    Some(f) => interp.kill(f),
                    None => interp.lost().await,
                };
                Err(start_err(format!("{name} '{python}' did not start the hangar driver: {reason}")))
            }
            Err(_) => {
                interp.kill(format!("{name} '{python}' was not ready within {start_timeout:?}"));
                Err(start_err(format!(
                    "{name} '{python}' was not ready within {} s{}",
                    start_timeout.as_secs(),
                    interp.shared.tail_text()
                )))
            }
        }
    }

    /// Wait for the driver's `ready`; anything printed before it (by a
    /// sitecustomize, say) is logged and skipped. `Err(Some(why))` when the
    /// driver reports that its setup failed.
    async fn handshake(&self) -> Result<(), Option<String>> {
        let mut chan = self.channel.lock().await;
        loop {
            let line = chan.next_line().await.ok_or(None)?;
            match serde_json::from_str::<Msg>(&line) {
                Ok(Msg::Ready { info }) => {
                    *lock(&self.shared.info) = info;
                    return Ok(());
                }
                Ok(Msg::Done { error: Some(e), .. }) => return Err(Some(e)),
                Ok(Msg::Stderr { s } | Msg::Stdout { s }) => {
                    tracing::info!(python = %self.spec.python, "{}: {s}", self.spec.name);
                    self.shared.push_tail(&s);
                }
                _ => {
                    tracing::warn!(python = %self.spec.python, "printed before the driver started: {line}");
                    self.shared.push_tail(&line);
                }
            }
        }
    }

    /// Why the session is gone, once it is.
    pub fn dead(&self) -> Option<String> {
        self.shared.dead()
    }

    /// What the driver last said about its session.
    pub fn info(&self) -> BTreeMap<String, String> {
        lock(&self.shared.info).clone()
    }

    /// The protocol channel closed: wait for the exit to be recorded, then
    /// return why the interpreter is gone.
    pub(crate) async fn lost(&self) -> String {
        let mut rx = self.exited.clone();
        let grace = self.spec.interrupt_grace;
        let exited = matches!(tokio::time::timeout(grace, rx.wait_for(Option::is_some)).await, Ok(Ok(_)));
        if !exited {
            return self.kill(format!("{} closed its protocol channel and was killed", self.spec.name));
        }
        self.shared.dead().unwrap_or_else(|| format!("{} exited", self.spec.name))
    }

    /// Kill the interpreter's whole process group and mark the session dead.
    pub(crate) fn kill(&self, reason: String) -> String {
        let reason = self.shared.set_dead(reason);
        let _ = killpg(self.pgid, Signal::SIGKILL);
        reason
    }

    pub(crate) fn interrupt(&self) {
        if self.shared.dead().is_none() {
            // The group, as a terminal's Ctrl-C does: `os.system` and friends
            // ignore SIGINT in the interpreter while their child runs. A JVM
            // that pyspark started ignores SIGINT.
            let _ = killpg(self.pgid, Signal::SIGINT);
        }
    }

    /// A cell was abandoned before its `done`: interrupt it and skip its
    /// messages, or give the session up.
    pub(crate) async fn resync(&self, chan: &mut Channel) -> Result<(), String> {
        self.interrupt();
        let drained = tokio::time::timeout(self.spec.interrupt_grace, async {
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
            Err(_) => Err(self.kill(format!("{} did not finish an abandoned cell and was killed", self.spec.name))),
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
