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
mod materials;
mod process;
mod recover;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hangar_engineconn_plugin::{EngineConnBuildRequest, EngineConnPlugin, find_plugin};
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
    /// Which OS account each engine runs as.
    pub identity: Identity,
    /// Further variables engines inherit from the ECM's environment.
    pub env_passthrough: Vec<String>,
    /// The shared, checksum-keyed cache of localized materials.
    pub material_cache_dir: PathBuf,
    /// Above this many bytes the cache evicts entries no engine uses.
    pub material_cache_max_bytes: u64,
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

    async fn launch_inner(
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
        // The account first: an engine that may not run fails before any folder exists.
        let account = self.account_for(&req.user).await?;
        // Root-owned parents (traverse only), the work dir root's until it is
        // handed over: nothing below is reached through a user's symlink.
        let rel = work_dir.strip_prefix(&self.cfg.engineconn_root).unwrap_or(&work_dir).to_path_buf();
        let root = self.cfg.engineconn_root.clone();
        let logs = tokio::task::spawn_blocking(move || -> Result<std::os::fd::OwnedFd, HangarError> {
            let dir = |r: &Path| {
                hangar_fsguard::create_dirs(
                    &root,
                    r,
                    hangar_fsguard::Perms::mode(PARENT_DIR),
                    hangar_fsguard::Perms::mode(PRIVATE_DIR),
                )
                .map_err(|e| start_failed(format!("cannot create the work dir: {e}")))
            };
            dir(&rel)?;
            dir(&rel.join("tmp"))?;
            dir(&rel.join("logs"))
        })
        .await
        .map_err(|e| HangarError::internal(e.to_string()))??;
        // Materials first (`conf`, `lib` and `resources/*` become links into
        // the shared cache), then empty `conf`/`lib` where the plugin has none.
        let fetched_before = self.materials.stats.fetches.load(std::sync::atomic::Ordering::Relaxed);
        self.materials.localize(&req.materials, manager_url, &work_dir).await?;
        // Only new bytes can push the cache over its limit.
        if self.materials.stats.fetches.load(std::sync::atomic::Ordering::Relaxed) != fetched_before {
            let this = self.clone();
            tokio::spawn(async move {
                let in_use = this.materials_in_use().await;
                this.materials.prune(in_use).await;
            });
        }
        for d in ["conf", "lib"] {
            let p = work_dir.join(d);
            if tokio::fs::symlink_metadata(&p).await.is_err() {
                tokio::fs::create_dir_all(&p)
                    .await
                    .map_err(|e| start_failed(format!("cannot create {}: {e}", p.display())))?;
            }
        }
        // Startup parameters win over the plugin's own defaults
        // (`conf/linkis-engineconn.properties`), which win over the server's.
        let mut conf: BTreeMap<String, String> = req.properties.clone();
        let plugin_conf = work_dir.join("conf").join(PLUGIN_PROPERTIES);
        if let Ok(text) = tokio::fs::read_to_string(&plugin_conf).await {
            for (k, v) in parse_properties(&text) {
                conf.entry(k).or_insert(v);
            }
        }
        for (k, v) in engine_conf {
            conf.entry(k.clone()).or_insert_with(|| v.clone());
        }
        conf.insert(hangar_protocol::rpc::ECM_INSTANCE_CONF.into(), self.cfg.instance.clone());
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
        // Secrets (the engine key, passwords) go to the engine on its standard
        // input, never onto its command line, into its environment or on disk.
        let (secret, public): (BTreeMap<String, String>, BTreeMap<String, String>) =
            conf.into_iter().partition(|(k, v)| hangar_protocol::is_secret_value(k, v));
        for (k, v) in &public {
            args.extend(["--conf".into(), format!("{k}={v}")]);
        }
        let env = self.engine_env(&launch, &req, &work_dir, account.as_ref());
        if let Some(u) = &account {
            // Drop to the account's uid, gid and groups right before the engine starts.
            let mut wrapped = vec![
                "setpriv".to_string(),
                format!("--reuid={}", u.uid),
                format!("--regid={}", u.gid),
                "--init-groups".to_string(),
                "--".to_string(),
            ];
            wrapped.extend(args);
            args = wrapped;
        }
        let script_path = work_dir.join("engineConnExec.sh");
        tokio::fs::write(&script_path, startup_script(&env, &args))
            .await
            .map_err(|e| start_failed(format!("cannot write {}: {e}", script_path.display())))?;
        let owner = account.as_ref().map(|a| (a.uid, a.gid));
        let (stdout, stderr) = {
            let dir = work_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<(std::fs::File, std::fs::File), HangarError> {
                let perms = hangar_fsguard::Perms { mode: 0o600, owner };
                let open = |name: &str| {
                    hangar_fsguard::append_file_at(&logs, name, perms)
                        .map_err(|e| start_failed(format!("cannot open the engine's {name} log: {e}")))
                };
                let files = (open("stdout")?, open("stderr")?);
                if let Some((uid, gid)) = owner {
                    chown_tree(&dir, nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(gid))
                        .map_err(|e| start_failed(format!("cannot hand {} to uid {uid}: {e}", dir.display())))?;
                }
                Ok(files)
            })
            .await
            .map_err(|e| HangarError::internal(e.to_string()))??
        };

        let mut cmd = tokio::process::Command::new("/bin/bash");
        cmd.arg(&script_path)
            .current_dir(&work_dir)
            .env_clear()
            .env("PATH", env.get("PATH").map_or("/usr/bin:/bin", String::as_str))
            .stdin(Stdio::piped())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| start_failed(format!("cannot run {}: {e}", script_path.display())))?;
        let pid = child.id().ok_or_else(|| start_failed("the engine process vanished at once".into()))?;
        let secrets = hangar_protocol::credential::EngineSecrets {
            engine_key: req.engine_key.expose().to_string(),
            conf: secret,
        };
        if let Some(mut stdin) = child.stdin.take() {
            let bytes = serde_json::to_vec(&secrets).unwrap_or_default();
            // The engine reads it at once; a dead engine is reported by the watcher below.
            if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut stdin, &bytes).await {
                tracing::warn!(ticket = %req.ticket_id, error = %e, "cannot hand the engine its secrets");
            }
        }
        let start_time = proc_start_time(pid).unwrap_or(0);
        let (exit_tx, exit_rx) = watch::channel(false);
        self.engines().insert(
            req.ticket_id.clone(),
            ProcessRecord { pid, start_time, killing: false, work_dir: work_dir.clone(), exited: exit_rx },
        );
        let record = serde_json::json!({"ticketId": req.ticket_id, "pid": pid, "startTime": start_time, "user": req.user, "ecm": self.cfg.instance});
        // Never through a link the engine's account may have put there.
        let record_path = work_dir.join("engine.json");
        let written = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&record_path).await;
        match written {
            Ok(mut f) => {
                let _ = tokio::io::AsyncWriteExt::write_all(&mut f, record.to_string().as_bytes()).await;
            }
            Err(e) => tracing::warn!(ticket = %req.ticket_id, error = %e, "cannot write engine.json"),
        }
        tracing::info!(ticket = %req.ticket_id, pid, work_dir = %work_dir.display(), account = ?account.as_ref().map(|a| &a.name), "engine process started");

        let this = self.clone();
        let ticket = req.ticket_id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exit_tx.send(true);
            let how = match &status {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(s)) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    _ => "an unknown status".into(),
                },
                Err(e) => format!("an error waiting for it: {e}"),
            };
            let retry = matches!(status.as_ref().ok().and_then(|s| s.code()), Some(143) | None);
            this.report_exit(&ticket, pid, &how, retry).await;
        });
        Ok(Launched { pid, work_dir, log_dir })
    }

    /// The engine's whole environment: a short allowlist from the ECM's own
    /// (locale, time zone, `PATH`, `ecm.engine_env_passthrough`, the plugin's
    /// necessary variables), the plugin's variables, the account's identity
    /// and the work dir's folders. Nothing else: no server secret.
    fn engine_env(
        &self,
        launch: &hangar_engineconn_plugin::EngineConnLaunchRequest,
        req: &EngineConnBuildRequest,
        work_dir: &Path,
        account: Option<&Account>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (k, v) in std::env::vars() {
            let inherited = INHERITED_ENV.contains(&k.as_str())
                || k.starts_with("LC_")
                || self.cfg.env_passthrough.contains(&k)
                || launch.necessary_environment.contains(&k);
            if inherited {
                env.insert(k, v);
            }
        }
        env.extend(launch.environment.clone());
        let (name, home) = match (account, &self.own_account) {
            (Some(a), _) => (a.name.clone(), a.home.clone().unwrap_or_else(|| work_dir.to_path_buf())),
            (None, Some((name, home))) => (name.clone(), home.clone()),
            (None, None) => (req.user.clone(), work_dir.to_path_buf()),
        };
        env.insert("USER".into(), name.clone());
        env.insert("LOGNAME".into(), name);
        env.insert("HOME".into(), home.display().to_string());
        env.insert("PWD".into(), work_dir.display().to_string());
        env.insert("LOG_DIRS".into(), work_dir.join("logs").display().to_string());
        env.insert("TEMP_DIRS".into(), work_dir.join("tmp").display().to_string());
        env.insert("TMPDIR".into(), work_dir.join("tmp").display().to_string());
        env.insert("HANGAR_CONF_DIR".into(), work_dir.join("conf").display().to_string());
        env.insert("HANGAR_LIB_DIR".into(), work_dir.join("lib").display().to_string());
        env.insert("HANGAR_RESOURCES_DIR".into(), work_dir.join("resources").display().to_string());
        env.insert("HANGAR_USER".into(), req.user.clone());
        env.insert(TICKET_ENV.into(), req.ticket_id.clone());
        env
    }

    /// The account a user's engines run as (None: the ECM's own).
    async fn account_for(&self, user: &str) -> Result<Option<Account>, HangarError> {
        if !self.cfg.identity.switches() {
            return Ok(None);
        }
        let identity = self.cfg.identity.clone();
        let name = user.to_string();
        tokio::task::spawn_blocking(move || identity.account_for(&name))
            .await
            .map_err(|e| HangarError::internal(e.to_string()))?
            .map_err(|m| start_failed(format!("{m} (ECM {})", self.cfg.instance)))
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
            protected: free_memory < self.cfg.protected_memory || load1 / f64::from(cores) > 4.0,
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

/// Hand a work dir to the engine's user. Links into the shared material
/// cache are re-owned themselves, never followed: the cache stays the ECM's.
fn chown_tree(dir: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid.as_raw()), Some(gid.as_raw()))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid.as_raw()), Some(gid.as_raw()))?;
        }
    }
    Ok(())
}

/// `key=value` (or `key: value`) lines of a Java-style properties file;
/// `#` and `!` start comments.
fn parse_properties(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=').or_else(|| l.split_once(':'))?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
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
    let cmd: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    s.push_str(&format!("exec {}\n", cmd.join(" ")));
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_like_java() {
        let p = parse_properties("# c\n! c\na=1\n b : two words \n\nbad line\nc=x=y\n");
        assert_eq!(p, vec![("a".into(), "1".into()), ("b".into(), "two words".into()), ("c".into(), "x=y".into())]);
    }

    #[test]
    fn script_quotes_everything() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "it's $HOME".to_string());
        let s = startup_script(&env, &["/bin/echo".into(), "a b".into()]);
        assert!(s.contains("export A='it'\\''s $HOME'"));
        assert!(s.contains("exec '/bin/echo' 'a b'"));
    }
}
