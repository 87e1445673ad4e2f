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

mod identity;
mod launch;
mod materials;
mod process;
mod recover;
mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hangar_engineconn_plugin::{EngineConnBuildRequest, EngineConnPlugin};
use hangar_protocol::{ErrorCode, HangarError};
use tokio::sync::{mpsc, watch};

pub use identity::{Account, Identity, RunAs, account_name};
pub use materials::{MaterialCache, MaterialStats};
pub use process::{pid_alive, proc_start_time};
pub use server::router;

/// Env var carrying the engine's ticket into every process of the engine.
pub const TICKET_ENV: &str = "HANGAR_ENGINE_TICKET";
/// Variables an engine's environment takes from the ECM's (everything else
/// starts empty: no server secret reaches an engine or the code it runs).
const INHERITED_ENV: [&str; 4] = ["PATH", "LANG", "LANGUAGE", "TZ"];
const STDERR_TAIL_LINES: usize = 30;
/// Engine defaults shipped in a plugin's `conf` material (Linkis's file name).
pub const PLUGIN_PROPERTIES: &str = "linkis-engineconn.properties";

#[derive(Debug, Clone)]
pub struct EcmConfig {
    /// `host:port` this ECM is known by.
    pub instance: String,
    /// Root of the engines' work dirs.
    pub engineconn_root: PathBuf,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// This ECM's credential towards the manager (material fetches).
    pub ecm_token: String,
    /// Launches at once; more wait up to `launch_queue_timeout`.
    pub max_concurrent_launches: usize,
    pub launch_queue_timeout: Duration,
    /// After a restart: re-adopt engines still alive (true) or stop them.
    pub adopt_on_restart: bool,
    /// Below this much free memory the ECM reports itself protected.
    pub protected_memory: u64,
    /// Protected (no new engines) above this 1-minute load average per core.
    pub protected_load: f64,
    /// Which OS account each engine runs as.
    pub identity: Identity,
    /// Further variables engines inherit from the ECM's environment.
    pub env_passthrough: Vec<String>,
    /// The shared, checksum-keyed cache of localized materials.
    pub material_cache_dir: PathBuf,
    /// Above this many bytes the cache evicts entries no engine uses.
    pub material_cache_max_bytes: u64,
    /// The control-plane URLs this ECM was configured with (it runs apart
    /// from the manager): what its engines and material fetches use, rather
    /// than the one URL a launch request names. None: the request's URL.
    pub manager_urls: Option<hangar_protocol::endpoints::Endpoints>,
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

/// Work and log folders: the account's alone; their parents traversable only.
const PRIVATE_DIR: u32 = 0o700;
const PARENT_DIR: u32 = 0o711;

struct ProcessRecord {
    pid: u32,
    start_time: u64,
    killing: bool,
    work_dir: PathBuf,
    exited: watch::Receiver<bool>,
}

pub struct Ecm {
    cfg: EcmConfig,
    plugins: Vec<Arc<dyn EngineConnPlugin>>,
    engines: Mutex<HashMap<String, ProcessRecord>>,
    events: mpsc::UnboundedSender<EcmEvent>,
    launches: tokio::sync::Semaphore,
    launch_failures: std::sync::atomic::AtomicU64,
    materials: MaterialCache,
    /// The ECM's own account (name, home): engines that do not switch run as it.
    own_account: Option<(String, PathBuf)>,
}

impl Ecm {
    pub fn new(
        cfg: EcmConfig,
        plugins: Vec<Arc<dyn EngineConnPlugin>>,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<EcmEvent>), HangarError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let launches = tokio::sync::Semaphore::new(cfg.max_concurrent_launches.max(1));
        let materials =
            MaterialCache::new(cfg.material_cache_dir.clone(), cfg.material_cache_max_bytes, cfg.ecm_token.clone())?;
        let own_account = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| (u.name, u.dir));
        let this = Self {
            own_account,
            materials,
            cfg,
            plugins,
            engines: Mutex::new(HashMap::new()),
            events: tx,
            launches,
            launch_failures: std::sync::atomic::AtomicU64::new(0),
        };
        Ok((Arc::new(this), rx))
    }

    /// The material cache (counters for logs and tests).
    pub fn materials(&self) -> &MaterialCache {
        &self.materials
    }

    pub fn instance(&self) -> &str {
        &self.cfg.instance
    }

    fn engines(&self) -> MutexGuard<'_, HashMap<String, ProcessRecord>> {
        self.engines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tickets of the engine processes alive under this ECM.
    pub fn tickets(&self) -> Vec<String> {
        self.engines().keys().cloned().collect()
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
        let _slot = tokio::time::timeout(self.cfg.launch_queue_timeout, self.launches.acquire())
            .await
            .map_err(|_| {
                HangarError::new(
                    ErrorCode::Overloaded,
                    format!(
                        "ECM {} has {} launches under way and none finished within {} ms",
                        self.cfg.instance,
                        self.cfg.max_concurrent_launches,
                        self.cfg.launch_queue_timeout.as_millis()
                    ),
                )
            })?
            .map_err(|_| HangarError::new(ErrorCode::ShuttingDown, "ECM is shutting down"))?;
        let r = self.launch_inner(req, manager_url, engine_conf).await;
        if r.is_err() {
            self.launch_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// Digests of the cache entries linked from live engines' work dirs.
    async fn materials_in_use(&self) -> std::collections::HashSet<String> {
        let dirs: Vec<PathBuf> = self.engines().values().map(|r| r.work_dir.clone()).collect();
        let root = self.cfg.material_cache_dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut used = std::collections::HashSet::new();
            for d in dirs {
                let mut links = vec![d.join("conf"), d.join("lib")];
                links.extend(std::fs::read_dir(d.join("resources")).into_iter().flatten().flatten().map(|e| e.path()));
                used.extend(links.iter().filter_map(|l| materials::linked_digest(&root, l)));
            }
            used
        })
        .await
        .unwrap_or_default()
    }

    /// Forget an ended engine and tell the manager how it ended, with the tail of its stderr.
    async fn report_exit(&self, ticket: &str, pid: u32, how: &str, retry: bool) {
        let record = self.engines().remove(ticket);
        let killed_by_us = record.as_ref().is_some_and(|r| r.killing);
        let Some(work_dir) = record.map(|r| r.work_dir) else { return };
        // Every end of an engine ends every process it started (a task's
        // process group outlives an engine killed by a signal).
        let t = ticket.to_string();
        let leftovers = tokio::task::spawn_blocking(move || process::kill_by_ticket(TICKET_ENV, &t)).await.unwrap_or(0);
        if leftovers > 0 {
            tracing::warn!(%ticket, leftovers, "stopped processes the ended engine had started");
        }
        let log_dir = work_dir.join("logs");
        let _ = tokio::fs::remove_file(work_dir.join("engine.json")).await;
        let tail = stderr_tail(&log_dir).await;
        let mut description = format!("engine process {pid} ended with {how}");
        if killed_by_us {
            description.push_str(" after a kill");
        }
        if leftovers > 0 {
            description.push_str(&format!("; {leftovers} processes it had started were stopped"));
        }
        if !tail.is_empty() {
            description.push_str("; last stderr lines:\n");
            description.push_str(&tail);
        }
        description.push_str(&format!(
            "\nlogs: {}; {}",
            log_dir.display(),
            if retry { "a retry may succeed" } else { "a retry will likely fail the same way" }
        ));
        tracing::info!(%ticket, pid, %how, "engine process exited");
        let _ = self.events.send(EcmEvent::EngineExited { ticket_id: ticket.to_string(), description });
    }

    /// Host health for the heartbeat.
    pub fn health(&self) -> hangar_protocol::rpc::EcmHealth {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |name: &str| {
            meminfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
            .unwrap_or(0.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let free_memory = field("MemAvailable:");
        hangar_protocol::rpc::EcmHealth {
            total_memory: field("MemTotal:"),
            free_memory,
            load1,
            cores,
            engines: self.running() as u32,
            launch_failures: self.launch_failures.load(std::sync::atomic::Ordering::Relaxed),
            protected: free_memory < self.cfg.protected_memory || load1 / f64::from(cores) > self.cfg.protected_load,
            material_fetches: self.materials.stats.fetches.load(std::sync::atomic::Ordering::Relaxed),
            material_refetches: self.materials.stats.refetches.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Page an engine's stdout or stderr (1-based `from_line`).
    pub async fn engine_log(
        &self,
        ticket_id: &str,
        log_type: &str,
        from_line: usize,
        page_size: usize,
    ) -> Result<(String, Vec<String>, usize), HangarError> {
        if !matches!(log_type, "stdout" | "stderr") {
            return Err(HangarError::invalid(format!("logType must be stdout or stderr, not '{log_type}'")));
        }
        let dir = match self.engines().get(ticket_id).map(|r| r.work_dir.clone()) {
            Some(d) => d,
            None => recover::find_work_dir(&self.cfg.engineconn_root, ticket_id).ok_or_else(|| {
                HangarError::not_found(format!("no engine with ticket {ticket_id} on ECM {}", self.cfg.instance))
            })?,
        };
        let path = dir.join("logs").join(log_type);
        // The engine's account owns its work dir: never follow its links.
        let rel = PathBuf::from("logs").join(log_type);
        let bytes = tokio::task::spawn_blocking(move || hangar_fsguard::read_tail(&dir, &rel, 64 << 20))
            .await
            .map_err(|e| HangarError::internal(e.to_string()))?;
        let text = match bytes {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(hangar_fsguard::FsGuardError::NotFound(_)) => String::new(),
            Err(e) => {
                return Err(HangarError::new(ErrorCode::PermissionDenied, format!("cannot read the engine log: {e}")));
            }
        };
        let from = from_line.max(1);
        let logs: Vec<String> =
            text.lines().skip(from - 1).take(page_size.clamp(1, 10_000)).map(str::to_string).collect();
        let end = from - 1 + logs.len();
        Ok((path.display().to_string(), logs, end))
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

/// The last lines of an engine's stderr, read without following links (the
/// engine's account owns its work dir).
pub(crate) async fn stderr_tail(log_dir: &Path) -> String {
    let dir = log_dir.to_path_buf();
    let read =
        tokio::task::spawn_blocking(move || hangar_fsguard::read_tail(&dir, Path::new("stderr"), 64 * 1024)).await;
    let Ok(Ok(bytes)) = read else { return String::new() };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}
