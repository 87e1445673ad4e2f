//! The shell engine (`engineType=shell-1`, `codeType=shell`): each task's code
//! runs in a `bash` child of the EngineConn of its own, in its own process
//! group. Its stdout becomes a TEXT result set, its stderr goes to the task
//! log, a non-zero exit fails the task with the tail of stderr, and a kill
//! signals the whole group.
//!
//! The `bash` of the next task is started ahead of time ([`Spare`]): it
//! starts, then waits for its code on a pipe, so a task does not wait for a
//! fork, an exec and bash's start-up. The code is sourced from that pipe
//! (`. /dev/fd/9`, standard input is `/dev/null` as before), so it reads and
//! behaves as a script does, with three differences: `$0` is `hangar-task`,
//! `BASH_SOURCE` is `/dev/fd/9` (its messages say `/dev/fd/9: line N`), and a
//! top-level `return` ends the code instead of being an error. A spare
//! unused for [`SPARE_IDLE`] is stopped, so an idle engine holds none.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hangar_engineconn_plugin::take_line;
use hangar_engineconn_plugin::{
    EngineConnBuildRequest, EngineConnLaunchRequest, EngineConnPlugin, EngineConnSession, EngineCreationContext,
    EngineResourceRequest, ExecutionContext, Executor, executor_for, resource_from,
};
use hangar_protocol::{HangarError, Resource};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Startup parameter: the folder tasks run in (default: the engine's work dir).
pub const WORKING_DIR_KEY: &str = "hangar.shell.working_dir";
pub use hangar_engineconn_plugin::REQUIRED_ENV_KEY;

const STDERR_TAIL_LINES: usize = 20;
const KILL_GRACE: Duration = Duration::from_millis(500);

/// The shell EngineConnPlugin.
pub struct ShellPlugin;

#[async_trait]
impl EngineConnPlugin for ShellPlugin {
    fn engine_type(&self) -> &'static str {
        "shell"
    }

    fn versions(&self) -> &'static [&'static str] {
        &["1"]
    }

    fn run_types(&self) -> &'static [&'static str] {
        &["shell", "sh"]
    }

    fn create_engine_resource(&self, req: &EngineResourceRequest<'_>) -> Result<Resource, HangarError> {
        resource_from(req.properties, "256m", 1)
    }

    fn build_launch(&self, req: &EngineConnBuildRequest) -> Result<EngineConnLaunchRequest, HangarError> {
        hangar_engineconn_plugin::same_binary_launch(req)
    }

    async fn create_engine_conn(&self, ctx: &EngineCreationContext) -> Result<Arc<dyn EngineConnSession>, HangarError> {
        let shell = ["/bin/bash", "/usr/bin/bash", "/bin/sh"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| HangarError::internal("neither bash nor sh was found on this host"))?;
        let cwd = match ctx.options.get(WORKING_DIR_KEY) {
            Some(dir) => {
                let p = PathBuf::from(dir);
                if !p.is_dir() {
                    return Err(HangarError::invalid(format!(
                        "startup parameter {WORKING_DIR_KEY}: '{dir}' is not an existing folder on this host"
                    )));
                }
                p
            }
            None => ctx.work_dir.clone(),
        };
        let executor = ShellExecutor::new(shell, cwd);
        // The first task's shell, ready before it comes.
        executor.shells.refill();
        Ok(Arc::new(ShellSession { executor: Arc::new(executor) }))
    }
}

struct ShellSession {
    executor: Arc<ShellExecutor>,
}

impl EngineConnSession for ShellSession {
    fn executor(&self, run_type: &str) -> Result<Arc<dyn Executor>, HangarError> {
        executor_for("shell", ShellPlugin.run_types(), run_type, self.executor.clone())
    }
}

/// How the spare shell waits for its code: the pipe on standard input is
/// moved to fd 9, standard input becomes `/dev/null`, and the code is sourced
/// once the engine closes the pipe.
const BOOT: &str = "exec 9<&0 0</dev/null; . /dev/fd/9";
/// A spare shell unused this long is stopped.
pub const SPARE_IDLE: Duration = Duration::from_secs(3);

/// A started `bash` waiting for its task's code.
struct Spare {
    child: tokio::process::Child,
    generation: u64,
}

struct ShellExecutor {
    shells: Arc<Shells>,
}

impl ShellExecutor {
    fn new(shell: PathBuf, cwd: PathBuf) -> Self {
        Self { shells: Arc::new(Shells { shell, cwd, spare: Default::default(), generation: Default::default() }) }
    }
}

/// Where tasks' shells come from: the spare, or a new one.
struct Shells {
    shell: PathBuf,
    cwd: PathBuf,
    spare: std::sync::Mutex<Option<Spare>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Shells {
    fn start(&self) -> std::io::Result<tokio::process::Child> {
        Command::new(&self.shell)
            .args(["-c", BOOT, "hangar-task"])
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    }

    /// The spare shell if one is alive, else a new one.
    fn take(&self) -> Result<tokio::process::Child, String> {
        let spare = self.spare.lock().ok().and_then(|mut s| s.take());
        if let Some(mut s) = spare
            && matches!(s.child.try_wait(), Ok(None))
        {
            return Ok(s.child);
        }
        self.start().map_err(|e| format!("cannot start {}: {e}", self.shell.display()))
    }

    /// Start the next task's shell in the background (unless one waits
    /// already); it is stopped when unused for [`SPARE_IDLE`].
    fn refill_later(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            // After the task's own end has gone on its way.
            tokio::task::yield_now().await;
            this.refill();
        });
    }

    fn refill(self: &Arc<Self>) {
        let Ok(mut slot) = self.spare.lock() else { return };
        if slot.is_some() {
            return;
        }
        let child = match self.start() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "no spare shell");
                return;
            }
        };
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *slot = Some(Spare { child, generation });
        drop(slot);
        let shells = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_IDLE).await;
            if let Some(shells) = shells.upgrade()
                && let Ok(mut slot) = shells.spare.lock()
                && slot.as_ref().is_some_and(|s| s.generation == generation)
            {
                // kill_on_drop stops it; the runtime reaps it.
                slot.take();
            }
        });
    }
}

#[async_trait]
impl Executor for ShellExecutor {
    async fn execute(&self, ctx: &mut ExecutionContext, code: &str) -> Result<(), String> {
        // The code goes to the shell through a pipe (never on its command
        // line: that caps a job at the kernel's argument limit), written while
        // the shell runs, since it reads all of it before it starts.
        let mut child = self.shells.take()?;
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let code = code.as_bytes().to_vec();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // A shell that ended early (killed) has closed its end: nothing to do.
            let _ = stdin.write_all(&code).await;
        });
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;

        let mut writer = ctx.text_writer().await?;
        let mut out = BufReader::new(stdout);
        let mut err = BufReader::new(stderr);
        let mut out_buf = Vec::new();
        let mut err_buf = Vec::new();
        let mut tail: VecDeque<String> = VecDeque::new();
        let (mut out_open, mut err_open) = (true, true);
        let cancel = ctx.cancel_signal();

        while out_open || err_open {
            tokio::select! {
                // `read_until` keeps what a cancelled call (another branch
                // won) had read in the buffer: at the end of the stream the
                // last call may read nothing while an unterminated last line
                // waits there, so a non-empty buffer is a line too.
                n = out.read_until(b'\n', &mut out_buf), if out_open => {
                    out_open = matches!(n, Ok(k) if k > 0);
                    if !out_buf.is_empty() {
                        writer.add_line(&take_line(&mut out_buf)).await?;
                    }
                }
                n = err.read_until(b'\n', &mut err_buf), if err_open => {
                    err_open = matches!(n, Ok(k) if k > 0);
                    if !err_buf.is_empty() {
                        let line = take_line(&mut err_buf);
                        ctx.stderr(&line);
                        if tail.len() == STDERR_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
                _ = cancel.cancelled() => break,
            }
        }
        if cancel.is_cancelled() {
            if let Some(pg) = pgid {
                let _ = killpg(pg, Signal::SIGTERM);
                if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_err() {
                    let _ = killpg(pg, Signal::SIGKILL);
                }
            }
            let _ = child.wait().await;
            writer.close().await?;
            return Err("killed".into());
        }
        let status = child.wait().await.map_err(|e| format!("cannot wait for the shell: {e}"))?;
        // Children of the script that outlived it (e.g. `sleep 100 &`) die with the task.
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        self.shells.refill_later();
        writer.close().await?;
        if let Some(code) = status.code() {
            ctx.set_exit_code(code);
        }
        if status.success() {
            return Ok(());
        }
        let how = match status.code() {
            Some(c) => format!("exit code {c}"),
            None => "a signal".to_string(),
        };
        let tail: Vec<String> = tail.into_iter().collect();
        if tail.is_empty() {
            Err(format!("shell script ended with {how}"))
        } else {
            Err(format!("shell script ended with {how}{}{}", hangar_protocol::rpc::STDERR_TAIL, tail.join("\n")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_engineconn_plugin::{CancelSignal, ExecutorEvent};
    use hangar_protocol::dolphin;
    use std::collections::BTreeMap;
    use tokio::sync::mpsc;

    async fn run(
        code: &str,
        cancel_after: Option<Duration>,
    ) -> (Result<(), String>, Vec<ExecutorEvent>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tmp");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancelSignal::default();
        let mut ctx =
            ExecutionContext::new(1, "u".into(), BTreeMap::new(), dir.path().join("res"), 100, tx, cancel.clone());
        let exec = ShellExecutor::new("/bin/bash".into(), dir.path().to_path_buf());
        if let Some(after) = cancel_after {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                cancel.cancel();
            });
        }
        let res = exec.execute(&mut ctx, code).await;
        drop(ctx);
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        (res, events, dir)
    }

    #[tokio::test]
    async fn stdout_is_the_result_stderr_the_log() {
        let (res, events, _dir) = run("echo hi; echo there; echo oops >&2", None).await;
        assert_eq!(res, Ok(()));
        let Some(ExecutorEvent::ResultSet { data, rows, .. }) =
            events.iter().find(|e| matches!(e, ExecutorEvent::ResultSet { .. }))
        else {
            panic!("no result set in {events:?}");
        };
        assert_eq!(*rows, 2);
        let rs = dolphin::decode(&data.bytes().expect("read")).expect("decode");
        assert_eq!(rs.rows, vec![vec![Some("hi".to_string())], vec![Some("there".to_string())]]);
        assert!(events.iter().any(|e| matches!(e, ExecutorEvent::Log(l) if l.ends_with("oops"))));
    }

    #[tokio::test]
    async fn the_code_runs_as_a_script_with_empty_stdin_whatever_its_size() {
        // Standard input is /dev/null, never the code itself.
        let (res, events, _dir) = run("cat; read -r x || echo \"stdin empty\"; echo \"$0\"", None).await;
        assert_eq!(res, Ok(()));
        let Some(ExecutorEvent::ResultSet { data, .. }) =
            events.iter().find(|e| matches!(e, ExecutorEvent::ResultSet { .. }))
        else {
            panic!("no result set in {events:?}");
        };
        let rs = dolphin::decode(&data.bytes().expect("read")).expect("decode");
        assert_eq!(rs.rows, vec![vec![Some("stdin empty".to_string())], vec![Some("hangar-task".to_string())]]);
        // Larger than a pipe's buffer: written while the shell reads it.
        let code: String = (0..20_000).map(|i| format!("echo line-{i}\n")).collect();
        let (res, events, _dir) = run(&code, None).await;
        assert_eq!(res, Ok(()));
        // (The test context keeps 100 rows; it counts them all.)
        let total = events.iter().find_map(|e| match e {
            ExecutorEvent::ResultSet { total_rows, .. } => Some(*total_rows),
            _ => None,
        });
        assert_eq!(total, Some(Some(20_000)));
        // A syntax error fails the task with bash's words.
        let (res, _, _dir) = run("echo ok\nif then fi", None).await;
        let err = res.expect_err("syntax error");
        assert!(err.contains("syntax error"), "{err}");
    }

    #[tokio::test]
    async fn a_spare_shell_is_ready_and_stopped_when_unused() {
        let dir = tempfile::tempdir().expect("tmp");
        let exec = ShellExecutor::new("/bin/bash".into(), dir.path().to_path_buf());
        exec.shells.refill();
        let pid = exec.shells.spare.lock().expect("lock").as_ref().and_then(|s| s.child.id()).expect("a spare");
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        tokio::time::sleep(SPARE_IDLE + Duration::from_millis(500)).await;
        assert!(exec.shells.spare.lock().expect("lock").is_none(), "the unused spare is dropped");
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
        });
        assert!(gone, "the spare shell {pid} still runs");
    }

    #[tokio::test]
    async fn failure_carries_stderr_tail() {
        let (res, _, _dir) = run("echo bad thing >&2; exit 3", None).await;
        let err = res.expect_err("fails");
        assert!(err.contains("exit code 3") && err.contains("bad thing"), "{err}");
    }

    #[tokio::test]
    async fn kill_stops_the_whole_group_quickly() {
        let start = std::time::Instant::now();
        let (res, _, _dir) = run("sleep 30 & sleep 30", Some(Duration::from_millis(200))).await;
        assert_eq!(res, Err("killed".to_string()));
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn resource_defaults_and_overrides() {
        use hangar_engineconn_plugin::{CORES_KEY, MEMORY_KEY};
        let mut p = BTreeMap::new();
        assert_eq!(resource_from(&p, "256m", 1).expect("r"), Resource::new(256 << 20, 1, 1));
        p.insert(MEMORY_KEY.to_string(), "1g".to_string());
        p.insert(CORES_KEY.to_string(), "2".to_string());
        assert_eq!(resource_from(&p, "256m", 1).expect("r"), Resource::new(1 << 30, 2, 1));
        p.insert(CORES_KEY.to_string(), "two".to_string());
        assert!(resource_from(&p, "256m", 1).is_err());
    }
}
