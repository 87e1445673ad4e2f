//! The shell engine (`engineType=shell-1`, `codeType=shell`): each task's code
//! runs as a `bash -c` child of the EngineConn in its own process group. Its
//! stdout becomes a TEXT result set, its stderr goes to the task log, a
//! non-zero exit fails the task with the tail of stderr, and a kill signals the
//! whole group.

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
        Ok(Arc::new(ShellSession { executor: Arc::new(ShellExecutor { shell, cwd }) }))
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

/// A task's code as a private file in the engine's temp folder, removed
/// when the task ends.
struct TaskScript(PathBuf);

impl TaskScript {
    async fn write(task_id: i64, code: &str) -> Result<Self, String> {
        use tokio::io::AsyncWriteExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hangar-task-{task_id}-{}-{n}.sh", std::process::id()));
        let _ = tokio::fs::remove_file(&path).await;
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(|e| format!("cannot write the task's script {}: {e}", path.display()))?;
        f.write_all(code.as_bytes()).await.map_err(|e| format!("cannot write the task's script: {e}"))?;
        f.flush().await.map_err(|e| format!("cannot write the task's script: {e}"))?;
        Ok(Self(path))
    }
}

impl Drop for TaskScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct ShellExecutor {
    shell: PathBuf,
    cwd: PathBuf,
}

#[async_trait]
impl Executor for ShellExecutor {
    async fn execute(&self, ctx: &mut ExecutionContext, code: &str) -> Result<(), String> {
        // The code goes to the shell in a file of the engine's own (never on
        // its command line: that caps a job at the kernel's argument limit).
        let script = TaskScript::write(ctx.task_id, code).await?;
        let mut cmd = Command::new(&self.shell);
        cmd.arg(&script.0)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", self.shell.display()))?;
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
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
        let exec = ShellExecutor { shell: "/bin/bash".into(), cwd: dir.path().to_path_buf() };
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
