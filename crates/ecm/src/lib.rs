//! The EngineConnManager: owner of the engine processes on one host.
//!
//! A build request becomes a launch request through the engine's plugin
//! (EngineConnLaunchBuilder); the ECM checks the necessary environment,
//! lays out the work dir `engineconn/<user>/<yyyymmdd>/<engineType>/<ticketId>/`
//! with `logs/ tmp/ conf/ lib/`, writes `engineConnExec.sh` there (kept for
//! debugging), and starts it in a process group of its own. It records pid +
//! start time, watches every child and reports an exit at once with the tail
//! of stderr. Kills go to the whole group (SIGTERM, grace, SIGKILL) and then to
//! any left-over process that carries the engine's ticket in its environment,
//! after checking identity by pid + start time, never by name.

mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hangar_engineconn_plugin::{EngineConnBuildRequest, EngineConnPlugin, find_plugin};
use hangar_protocol::{ErrorCode, HangarError};
use tokio::sync::{mpsc, watch};

pub use process::{pid_alive, proc_start_time};

/// Env var carrying the engine's ticket into every process of the engine.
pub const TICKET_ENV: &str = "HANGAR_ENGINE_TICKET";
/// Env var carrying the internal RPC secret to the engine (never written to disk).
pub const RPC_TOKEN_ENV: &str = "HANGAR_RPC_TOKEN";
const STDERR_TAIL_LINES: usize = 30;

#[derive(Debug, Clone)]
pub struct EcmConfig {
    /// `host:port` this ECM is known by.
    pub instance: String,
    /// Root of the engines' work dirs.
    pub engineconn_root: PathBuf,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    pub rpc_token: String,
}

/// What the ECM reports to the manager on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum EcmEvent {
    EngineExited { ticket_id: String, description: String },
}

/// A started engine.
#[derive(Debug, Clone)]
pub struct Launched {
    pub pid: u32,
    pub work_dir: PathBuf,
    pub log_dir: PathBuf,
}

struct ProcessRecord {
    pid: u32,
    start_time: u64,
    killing: bool,
    exited: watch::Receiver<bool>,
}

pub struct Ecm {
    cfg: EcmConfig,
    plugins: Vec<Arc<dyn EngineConnPlugin>>,
    engines: Mutex<HashMap<String, ProcessRecord>>,
    events: mpsc::UnboundedSender<EcmEvent>,
}

impl Ecm {
    pub fn new(
        cfg: EcmConfig,
        plugins: Vec<Arc<dyn EngineConnPlugin>>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<EcmEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Self { cfg, plugins, engines: Mutex::new(HashMap::new()), events: tx }), rx)
    }

    pub fn instance(&self) -> &str {
        &self.cfg.instance
    }

    fn engines(&self) -> MutexGuard<'_, HashMap<String, ProcessRecord>> {
        self.engines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of engine processes alive under this ECM.
    pub fn running(&self) -> usize {
        self.engines().len()
    }

    /// The work dir of a ticket (it need not exist).
    pub fn work_dir(&self, req: &EngineConnBuildRequest) -> Result<PathBuf, HangarError> {
        let et = req.labels.engine_type()?;
        let day = chrono::Local::now().format("%Y%m%d").to_string();
        for part in [&req.user, &et.engine, &req.ticket_id] {
            if part.is_empty() || part.contains('/') || part.starts_with('.') {
                return Err(HangarError::invalid(format!("'{part}' cannot be part of a work dir path")));
            }
        }
        Ok(self.cfg.engineconn_root.join(&req.user).join(day).join(&et.engine).join(&req.ticket_id))
    }

    /// Launch one engine; returns once its process runs (not once it is ready).
    pub async fn launch(
        self: &Arc<Self>,
        req: EngineConnBuildRequest,
        manager_url: &str,
        engine_conf: &[(String, String)],
    ) -> Result<Launched, HangarError> {
        let plugin = find_plugin(&self.plugins, &req.labels)?;
        let launch = plugin.build_launch(&req)?;
        if launch.command.is_empty() {
            return Err(start_failed(format!("plugin {} gave an empty launch command", plugin.engine_type())));
        }
        for var in &launch.necessary_environment {
            if std::env::var_os(var).is_none() {
                return Err(start_failed(format!(
                    "necessary environment variable {var} is not set on ECM {}",
                    self.cfg.instance
                )));
            }
        }
        let work_dir = self.work_dir(&req)?;
        let log_dir = work_dir.join("logs");
        for d in ["logs", "tmp", "conf", "lib"] {
            tokio::fs::create_dir_all(work_dir.join(d))
                .await
                .map_err(|e| start_failed(format!("cannot create {}: {e}", work_dir.join(d).display())))?;
        }
        let mut conf: BTreeMap<String, String> = req.properties.clone();
        for (k, v) in engine_conf {
            conf.entry(k.clone()).or_insert_with(|| v.clone());
        }
        conf.insert("hangar.resource.memory".into(), req.resource.memory.to_string());
        conf.insert("hangar.resource.cores".into(), req.resource.cores.to_string());
        conf.insert("hangar.resource.instances".into(), req.resource.instances.to_string());

        let mut args: Vec<String> = launch.command.clone();
        args.extend(["--ticket-id".into(), req.ticket_id.clone(), "--user".into(), req.user.clone()]);
        args.extend(["--manager-url".into(), manager_url.to_string()]);
        args.extend(["--work-dir".into(), work_dir.display().to_string()]);
        for pair in req.labels.to_pairs() {
            args.extend(["--label".into(), pair]);
        }
        for (k, v) in &conf {
            args.extend(["--conf".into(), format!("{k}={v}")]);
        }
        let mut env = launch.environment.clone();
        env.insert("USER".into(), req.user.clone());
        env.insert("PWD".into(), work_dir.display().to_string());
        env.insert("LOG_DIRS".into(), log_dir.display().to_string());
        env.insert("TEMP_DIRS".into(), work_dir.join("tmp").display().to_string());
        env.insert("TMPDIR".into(), work_dir.join("tmp").display().to_string());
        env.insert(TICKET_ENV.into(), req.ticket_id.clone());
        let script = startup_script(&env, &args);
        let script_path = work_dir.join("engineConnExec.sh");
        tokio::fs::write(&script_path, script)
            .await
            .map_err(|e| start_failed(format!("cannot write {}: {e}", script_path.display())))?;

        let mut cmd = tokio::process::Command::new("/bin/bash");
        cmd.arg(&script_path)
            .current_dir(&work_dir)
            .env(RPC_TOKEN_ENV, &self.cfg.rpc_token)
            .env(TICKET_ENV, &req.ticket_id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| start_failed(format!("cannot run {}: {e}", script_path.display())))?;
        let pid = child.id().ok_or_else(|| start_failed("the engine process vanished at once".into()))?;
        let start_time = proc_start_time(pid).unwrap_or(0);
        let (exit_tx, exit_rx) = watch::channel(false);
        self.engines()
            .insert(req.ticket_id.clone(), ProcessRecord { pid, start_time, killing: false, exited: exit_rx });
        let record = serde_json::json!({"ticketId": req.ticket_id, "pid": pid, "startTime": start_time, "user": req.user, "ecm": self.cfg.instance});
        let _ = tokio::fs::write(work_dir.join("engine.json"), record.to_string()).await;
        tracing::info!(ticket = %req.ticket_id, pid, work_dir = %work_dir.display(), "engine process started");

        let this = self.clone();
        let ticket = req.ticket_id.clone();
        let log_dir2 = log_dir.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exit_tx.send(true);
            let killed_by_us = this.engines().remove(&ticket).is_some_and(|r| r.killing);
            let how = match &status {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(s)) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    _ => "an unknown status".into(),
                },
                Err(e) => format!("an error waiting for it: {e}"),
            };
            let tail = stderr_tail(&log_dir2).await;
            let retry = matches!(status.as_ref().ok().and_then(|s| s.code()), Some(143) | None);
            let mut description = format!("engine process {pid} ended with {how}");
            if killed_by_us {
                description.push_str(" after a kill");
            }
            if !tail.is_empty() {
                description.push_str("; last stderr lines:\n");
                description.push_str(&tail);
            }
            description.push_str(&format!(
                "\nlogs: {}; {}",
                log_dir2.display(),
                if retry { "a retry may succeed" } else { "a retry will likely fail the same way" }
            ));
            tracing::info!(%ticket, pid, %how, "engine process exited");
            let _ = this.events.send(EcmEvent::EngineExited { ticket_id: ticket, description });
        });
        Ok(Launched { pid, work_dir, log_dir })
    }

    /// Stop an engine and everything it started. Unknown tickets are a no-op.
    pub async fn kill(&self, ticket_id: &str) -> Result<(), HangarError> {
        let target = {
            let mut engines = self.engines();
            engines.get_mut(ticket_id).map(|r| {
                r.killing = true;
                (r.pid, r.start_time, r.exited.clone())
            })
        };
        if let Some((pid, start_time, mut exited)) = target
            && process::same_process(pid, start_time)
        {
            process::signal_group(pid, nix::sys::signal::Signal::SIGTERM);
            let gone = tokio::time::timeout(self.cfg.kill_grace, exited.wait_for(|e| *e)).await.is_ok();
            if !gone && process::same_process(pid, start_time) {
                process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|e| *e)).await;
            }
        }
        let ticket = ticket_id.to_string();
        let leftovers =
            tokio::task::spawn_blocking(move || process::kill_by_ticket(TICKET_ENV, &ticket)).await.unwrap_or(0);
        if leftovers > 0 {
            tracing::info!(ticket = %ticket_id, leftovers, "killed left-over engine processes");
        }
        Ok(())
    }

    /// Stop every engine at once (ECM shutdown).
    pub async fn kill_all(self: &Arc<Self>) {
        let tickets: Vec<String> = self.engines().keys().cloned().collect();
        let mut set = tokio::task::JoinSet::new();
        for t in tickets {
            let this = self.clone();
            set.spawn(async move { this.kill(&t).await });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "kill failed during shutdown");
            }
        }
    }
}

fn start_failed(message: String) -> HangarError {
    HangarError::new(ErrorCode::EngineStartFailed, message)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The generated `engineConnExec.sh`.
fn startup_script(env: &BTreeMap<String, String>, args: &[String]) -> String {
    let mut s = String::from(
        "#!/usr/bin/env bash\n# Generated by the Hangar EngineConnManager; kept for debugging.\nulimit -c 0\n",
    );
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    s.push_str("exec 1>>\"$LOG_DIRS/stdout\" 2>>\"$LOG_DIRS/stderr\"\n");
    let cmd: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    s.push_str(&format!("exec {}\n", cmd.join(" ")));
    s
}

async fn stderr_tail(log_dir: &Path) -> String {
    let Ok(bytes) = tokio::fs::read(log_dir.join("stderr")).await else { return String::new() };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_everything() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "it's $HOME".to_string());
        let s = startup_script(&env, &["/bin/echo".into(), "a b".into()]);
        assert!(s.contains("export A='it'\\''s $HOME'"));
        assert!(s.contains("exec '/bin/echo' 'a b'"));
    }
}
