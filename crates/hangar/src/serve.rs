//! `hangar serve`: the roles of one Hangar process.
//!
//! * `all` (default): Entrance + LinkisManager + one ECM in one process; the
//!   roles call each other directly.
//! * `entrance,manager`: the control plane; ECMs register over HTTP.
//! * `ecm`: one EngineConnManager for this host, registered with `server.manager_url`.
//!
//! Engines are always separate processes talking HTTP to the manager and the Entrance.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use hangar_ecm::{Ecm, EcmConfig, EcmEvent};
use hangar_engineconn::EngineOptions;
use hangar_engineconn_plugin::{EngineConnBuildRequest, EngineConnPlugin};
use hangar_entrance::{Entrance, EntranceConfig, TokenConfig, UserConfig};
use hangar_manager::{EcmClient, EngineLog, LaunchedEngine, Manager, ManagerConfig};
use hangar_protocol::endpoints::Endpoints;
use hangar_protocol::resource::parse_bytes;
use hangar_protocol::{HangarError, LabelSet, Resource};
use hangar_store::Store;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::datadir::{DataDirLock, control_plane_secrets, dir_or, engines_can_reach, prepare_data_dir, private_dir};
use crate::ecm_link::ManagerLink;

/// The in-process ECM as the manager sees it.
struct LocalEcm(Arc<Ecm>);

#[async_trait]
impl EcmClient for LocalEcm {
    async fn launch(
        &self,
        req: EngineConnBuildRequest,
        manager_url: &str,
        conf: &[(String, String)],
    ) -> Result<LaunchedEngine, HangarError> {
        let l = self.0.launch(req, manager_url, conf).await?;
        Ok(LaunchedEngine { pid: l.pid, log_dir: l.log_dir.display().to_string() })
    }

    async fn kill(&self, ticket_id: &str) -> Result<(), HangarError> {
        self.0.kill(ticket_id).await
    }

    fn remote(&self) -> bool {
        false
    }

    async fn engine_log(
        &self,
        ticket: &str,
        log_type: &str,
        from: usize,
        size: usize,
    ) -> Result<EngineLog, HangarError> {
        let (log_path, logs, end_line) = self.0.engine_log(ticket, log_type, from, size).await?;
        Ok(EngineLog { log_path, logs, end_line })
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Roles {
    All,
    ControlPlane,
    Ecm,
}

fn roles(cfg: &Config) -> anyhow::Result<Roles> {
    let mut r: Vec<&str> = cfg.server.roles.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    r.sort_unstable();
    Ok(match r.as_slice() {
        ["all"] | ["ecm", "entrance", "manager"] => Roles::All,
        ["entrance", "manager"] => Roles::ControlPlane,
        ["ecm"] => Roles::Ecm,
        _ => bail!("server.roles '{}' is not supported: use all, entrance,manager or ecm", cfg.server.roles),
    })
}

/// Password users from `auth.users`, plus a first admin from
/// `HANGAR_ADMIN_USER` / `HANGAR_ADMIN_PASSWORD`.
fn users(cfg: &Config) -> anyhow::Result<Vec<UserConfig>> {
    let mut out = Vec::new();
    for entry in &cfg.auth.users {
        let (name, hash) =
            entry.split_once(':').with_context(|| format!("auth.users entry '{entry}' must be name:hash"))?;
        if !hangar_entrance::auth::valid_user_name(name) || !hash.starts_with("pbkdf2-sha256$") {
            bail!("auth.users entry for '{name}' needs a valid name and a hash from `hangar hash-password`");
        }
        out.push(UserConfig { name: name.into(), password_hash: hash.into() });
    }
    if let (Ok(name), Ok(pw)) = (std::env::var("HANGAR_ADMIN_USER"), std::env::var("HANGAR_ADMIN_PASSWORD")) {
        if !hangar_entrance::auth::valid_user_name(&name) || pw.is_empty() {
            bail!("HANGAR_ADMIN_USER must be a plain user name and HANGAR_ADMIN_PASSWORD non-empty");
        }
        out.retain(|u| u.name != name);
        out.push(UserConfig { name, password_hash: hangar_entrance::session::hash_password(&pw) });
    }
    Ok(out)
}

fn admins(cfg: &Config) -> Vec<String> {
    let mut a = cfg.auth.admins.clone();
    if let Ok(name) = std::env::var("HANGAR_ADMIN_USER") {
        a.push(name);
    }
    a
}

fn engine_conf(cfg: &Config) -> Vec<(String, String)> {
    let e = &cfg.engineconn;
    vec![
        (EngineOptions::MAX_FREE_TIME.into(), e.max_free_time_ms.to_string()),
        (EngineOptions::HEARTBEAT_INTERVAL.into(), e.heartbeat_interval_ms.to_string()),
        (EngineOptions::ORPHAN_TIMEOUT.into(), e.orphan_timeout_ms.to_string()),
        (EngineOptions::LOCK_IDLE_RELEASE.into(), e.lock_idle_release_ms.to_string()),
        (EngineOptions::RUNNING_INFO_INTERVAL.into(), e.running_info_interval_ms.to_string()),
        (EngineOptions::LOG_PUSH_INTERVAL.into(), e.log_push_interval_ms.to_string()),
        (EngineOptions::LOG_PUSH_LINES.into(), e.log_push_lines.to_string()),
        (EngineOptions::MAX_RESULT_ROWS.into(), e.max_result_rows.to_string()),
        (EngineOptions::MAX_TASKS.into(), e.max_tasks.to_string()),
    ]
}

/// The ECM of this process, its capacity and labels.
/// Let plugins do their slow one-off discovery off the async workers.
fn prepare_plugins(plugins: &[Arc<dyn EngineConnPlugin>]) {
    let plugins = plugins.to_vec();
    tokio::task::spawn_blocking(move || {
        for p in plugins {
            p.prepare();
        }
    });
}

fn build_ecm(
    cfg: &Config,
    data_dir: &Path,
    instance: &str,
    ecm_token: &str,
    plugins: Vec<Arc<dyn EngineConnPlugin>>,
    manager_urls: Option<Endpoints>,
) -> anyhow::Result<(Arc<Ecm>, mpsc::UnboundedReceiver<EcmEvent>, LabelSet, Resource)> {
    let protected = parse_bytes(&cfg.ecm.protected_memory)?;
    prepare_plugins(&plugins);
    let identity = hangar_ecm::Identity::from_config(
        &cfg.ecm.run_as,
        &cfg.ecm.account_prefix,
        cfg.ecm.min_uid,
        cfg.ecm.allow_root_engines,
    )
    .map_err(anyhow::Error::msg)?;
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.name).unwrap_or_default();
    match &identity.run_as {
        hangar_ecm::RunAs::Server => tracing::info!(user = %me, "engines run as the server's own account {me}"),
        hangar_ecm::RunAs::User => tracing::info!("engines run as the OS accounts named like their Hangar users"),
        hangar_ecm::RunAs::Account { prefix } => {
            tracing::info!(
                "engines run as one unprivileged account per Hangar user ({prefix}<user>, created on first use)"
            )
        }
    }
    let engineconn_root = data_dir.join("engineconn");
    let cache_dir = dir_or(&cfg.ecm.material_cache_dir, data_dir, "engineconn-public");
    // Engines traverse these (their own folders and cache entries below are named, not listed).
    private_dir(&engineconn_root, 0o711)?;
    private_dir(&cache_dir, 0o711)?;
    if identity.switches() {
        engines_can_reach(&[&engineconn_root, &std::env::current_exe()?])?;
    }
    let (ecm, events) = Ecm::new(
        EcmConfig {
            instance: instance.to_string(),
            engineconn_root,
            kill_grace: ms(cfg.ecm.kill_grace_ms),
            ecm_token: ecm_token.to_string(),
            max_concurrent_launches: cfg.ecm.max_concurrent_launches,
            launch_queue_timeout: ms(cfg.ecm.launch_queue_timeout_ms),
            adopt_on_restart: cfg.ecm.adopt_on_restart,
            protected_memory: protected,
            protected_load: cfg.ecm.protected_load,
            identity,
            env_passthrough: cfg.ecm.engine_env_passthrough.clone(),
            material_cache_dir: cache_dir,
            material_cache_max_bytes: parse_bytes(&cfg.ecm.material_cache_max_size)?,
            manager_urls,
        },
        plugins,
    )?;
    let memory = if cfg.ecm.memory.is_empty() {
        ecm.health().total_memory.saturating_sub(protected)
    } else {
        parse_bytes(&cfg.ecm.memory)?
    };
    let labels = LabelSet::from_pairs(cfg.ecm.labels.iter().map(String::as_str)).context("bad [ecm] labels")?;
    Ok((ecm, events, labels, Resource::new(memory, cfg.ecm.cores, cfg.ecm.instances)))
}

pub async fn serve(cfg: Config, plugins: Vec<Arc<dyn EngineConnPlugin>>) -> anyhow::Result<()> {
    let roles = roles(&cfg)?;
    if roles != Roles::Ecm {
        crate::exposure::check_client_token(&cfg)?;
    }
    // An ECM alone checks its control-plane URLs before anything else.
    let manager_urls =
        if roles == Roles::Ecm { Some(crate::ecm_link::manager_urls(&cfg.server.manager_url)?) } else { None };
    // Everything the server creates is its own unless made otherwise on purpose
    // (the store, job logs, secrets: 0600; folders 0700).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Jobs running as this account (a non-root server) may not read its
    // environment or memory through /proc.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the server process non-dumpable");
    }
    // Engines of other accounts traverse the data dir to their work dirs
    // (only where an ECM runs: result sets reach the Entrance over HTTP).
    let switches = roles != Roles::ControlPlane
        && hangar_ecm::Identity::from_config(
            &cfg.ecm.run_as,
            &cfg.ecm.account_prefix,
            cfg.ecm.min_uid,
            cfg.ecm.allow_root_engines,
        )
        .is_ok_and(|i| i.switches());
    let data_dir = prepare_data_dir(Path::new(&cfg.server.data_dir), switches)?;
    // Held until this function returns (the process ends soon after).
    let mut lock = DataDirLock::take(&data_dir)?;
    let secrets = control_plane_secrets(&cfg, roles, &data_dir)?;
    let listener = tokio::net::TcpListener::bind((cfg.server.bind.as_str(), cfg.server.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", cfg.server.bind, cfg.server.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    let reach_host = crate::address::advertise_host(&cfg, &addr).await?;
    let instance = format!("{reach_host}:{}", addr.port());
    let base_url = format!("http://{instance}");
    lock.describe(&format!("the Hangar server at {base_url}"));
    let loopback_only = addr.ip().is_loopback() && !crate::exposure::beyond_loopback(&cfg.server.bind);
    if let Some(manager) = manager_urls {
        return serve_ecm(cfg, plugins, data_dir, listener, instance, secrets.ecm_token, manager).await;
    }

    let store_url = if cfg.server.store_url.is_empty() {
        format!("sqlite://{}", data_dir.join("hangar.db").display())
    } else {
        cfg.server.store_url.clone()
    };
    // Its password never reaches a log line.
    let shown_store = hangar_protocol::mask_url_credentials(&store_url).into_owned();
    let store = Store::open(&store_url).await.with_context(|| format!("cannot open the store at {shown_store}"))?;
    let mcfg = ManagerConfig {
        user_max: Resource::new(
            parse_bytes(&cfg.manager.user_max_memory)?,
            cfg.manager.user_max_cores,
            cfg.manager.user_max_instances,
        ),
        engine_start_timeout: ms(cfg.manager.engine_start_timeout_ms),
        engine_heartbeat_interval: ms(cfg
            .engineconn
            .heartbeat_interval_ms
            .max(cfg.manager.engine_heartbeat_interval_ms)),
        ecm_heartbeat_interval: ms(cfg.ecm.heartbeat_interval_ms),
        reservation_timeout: ms(cfg.manager.reservation_timeout_ms),
        engine_lock_timeout: ms(cfg.manager.engine_lock_timeout_ms),
        max_concurrent_creations: cfg.manager.max_concurrent_creations,
        manager_url: base_url.clone(),
        engine_conf: engine_conf(&cfg),
        admins: admins(&cfg),
        pool: hangar_manager::PoolConfig {
            enabled: cfg.manager.pool_enabled,
            max_per_label_set: cfg.manager.pool_max_per_label_set,
            max_total: cfg.manager.pool_max_total,
            min_idle: cfg.manager.pool_min_idle,
            half_life: ms(cfg.manager.pool_half_life_ms),
            memory: ms(cfg.manager.pool_memory_ms),
            interval: ms(cfg.manager.pool_interval_ms.max(10)),
        },
    };
    let engineconn_home = dir_or(&cfg.materials.engineconn_home, &data_dir, "engineconn-plugins");
    // What every control-plane instance on this store must see.
    let shared_dir =
        if cfg.server.shared_dir.is_empty() { data_dir.clone() } else { PathBuf::from(&cfg.server.shared_dir) };
    if shared_dir != data_dir {
        private_dir(&shared_dir, 0o700)?;
    }
    let library = hangar_bml::MaterialLibrary::open(
        store.clone(),
        &shared_dir.join("materials"),
        &engineconn_home,
        parse_bytes(&cfg.materials.max_upload_size)?,
    )
    .await
    .context("cannot open the material library")?;
    let ecm_token = secrets.ecm_token.clone();
    let manager = Manager::new(mcfg, plugins.clone(), secrets, Some(library))?;

    let local_ecm = if roles == Roles::All {
        let (ecm, events, labels, max) = build_ecm(&cfg, &data_dir, &instance, &ecm_token, plugins, None)?;
        manager.register_ecm(&instance, labels, max, Arc::new(LocalEcm(ecm.clone())));
        spawn_local_ecm_links(
            manager.clone(),
            ecm.clone(),
            events,
            instance.clone(),
            ms(cfg.ecm.heartbeat_interval_ms),
        );
        let adopted = ecm.recover().await;
        if !adopted.is_empty() {
            tracing::info!(engines = adopted.len(), "engines of an earlier run are watched until they exit");
            // Idle engines too (a session's interpreter): taken back before new ones are made.
            manager.expect_rejoins(adopted, ms(cfg.entrance.reattach_timeout_ms));
        }
        Some(ecm)
    } else {
        None
    };
    tokio::spawn(manager.clone().monitor());
    let history = crate::engine_history::start(&manager, store.clone());

    let ecfg = EntranceConfig {
        instance: instance.clone(),
        callback_url: base_url.clone(),
        logs_dir: shared_dir.join("logs"),
        results_dir: shared_dir.join("results"),
        max_running_per_group: cfg.entrance.max_running_per_group,
        max_queued_per_group: cfg.entrance.max_queued_per_group,
        ask_timeout: ms(cfg.entrance.ask_timeout_ms),
        ask_retries: cfg.entrance.ask_retries,
        max_result_set_bytes: parse_bytes(&cfg.entrance.max_result_set_size)?,
        max_code_bytes: match cfg.entrance.max_code_bytes {
            n if n <= 64 << 20 => n,
            n => bail!("entrance.max_code_bytes is {n}; at most 67108864 (64 MiB) is supported"),
        },
        tokens: vec![TokenConfig { token: cfg.auth.token.clone(), users: cfg.auth.token_users.clone() }],
        admins: admins(&cfg),
        users: users(&cfg)?,
        session_timeout: ms(cfg.auth.session_timeout_ms),
        default_creator: cfg.entrance.default_creator.clone(),
        reattach_timeout: ms(cfg.entrance.reattach_timeout_ms),
        secure_cookie: cfg.auth.secure_cookie,
        metrics_token: cfg.server.metrics_token.clone(),
        loopback_only,
        owner_id: crate::datadir::instance_id(&data_dir)?,
        job_lease: ms(cfg.entrance.job_lease_ms),
    };
    private_dir(&ecfg.results_dir, 0o700)?;
    private_dir(&ecfg.logs_dir, 0o700)?;
    let owner_id = ecfg.owner_id.clone();
    // One process alone talks to its manager in process; instances of a
    // control plane elect one and reach it wherever it runs.
    let (client, control): (Arc<dyn hangar_manager::ManagerClient>, _) = if roles == Roles::ControlPlane {
        let (view, control) = crate::cluster::ControlPlane {
            store: store.clone(),
            me: owner_id.clone(),
            url: base_url.clone(),
            lease: ms(cfg.manager.leader_lease_ms),
            manager: manager.clone(),
            rejoin_window: ms(cfg.entrance.reattach_timeout_ms),
            holder: String::new(),
        }
        .start();
        let client = hangar_manager::ClusterManager::new(manager.clone(), view.leadership.clone(), owner_id.clone())?;
        (Arc::new(client), Some((view, control)))
    } else {
        // Alone, this instance is the manager: its pools are kept from the start.
        manager.start_pool_keeper();
        (Arc::new(hangar_manager::LocalManager(manager.clone())), None)
    };
    let entrance = Entrance::new(ecfg, store.clone(), client, manager.clone(), manager.plugins().to_vec())?;
    let (reattached, requeued, ended) = entrance.recover().await?;
    if reattached + requeued + ended > 0 {
        tracing::warn!(
            reattached,
            requeued,
            ended,
            "jobs left unfinished by an earlier run: re-attached to their engines, queued again or ended"
        );
    }

    let mut app = hangar_entrance::router(entrance.clone())
        .merge(hangar_manager::rpc_router(manager.clone()))
        .route("/health", axum::routing::get(|| async { "ok" }));
    if let Some((view, _)) = &control {
        let f = crate::forward::Forwarder::new(view.clone(), store.clone(), entrance.clone())?;
        app = app.layer(axum::middleware::from_fn_with_state(f, crate::forward::route));
    }
    let server = spawn_http(listener, app);
    tracing::info!(%base_url, data_dir = %data_dir.display(), store = %shown_store, ?roles, "Hangar is serving");
    eprintln!("Hangar listening on {base_url} (data in {}); stop with Ctrl-C", data_dir.display());

    wait_for_signal().await;
    tracing::info!("shutting down: ending jobs, stopping engines");
    if control.is_some() {
        entrance.hand_over().await;
    } else {
        entrance.shutdown().await;
    }
    if let Some((_, control)) = &control {
        // The engines carry on with the next manager; this one only lets go.
        control.stop().await;
        manager.step_down();
    }
    manager.shutdown().await;
    if let Some(ecm) = local_ecm {
        ecm.kill_all().await;
    }
    server.stop().await;
    crate::engine_history::stop(&manager, history).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// An ECM alone on its host, registered with a remote manager.
async fn serve_ecm(
    cfg: Config,
    plugins: Vec<Arc<dyn EngineConnPlugin>>,
    data_dir: PathBuf,
    listener: tokio::net::TcpListener,
    instance: String,
    ecm_token: String,
    manager: Endpoints,
) -> anyhow::Result<()> {
    // Its engines and material fetches use the same list.
    let (ecm, events, labels, max) = build_ecm(&cfg, &data_dir, &instance, &ecm_token, plugins, Some(manager.clone()))?;
    // Engines of an earlier ECM process are watched again; they are listed
    // when the ECM registers (it registers with the engines alive then).
    ecm.recover().await;
    let app = hangar_ecm::router(ecm.clone()).route("/health", axum::routing::get(|| async { "ok" }));
    let server = spawn_http(listener, app);
    let link = ManagerLink::new(manager.clone(), ecm_token)?;
    let me = crate::ecm_link::EcmIdentity { instance: instance.clone(), labels, max };
    tokio::spawn(link.run(ecm.clone(), me, events, ms(cfg.ecm.heartbeat_interval_ms)));
    tracing::info!(%instance, %manager, "ECM is serving");
    eprintln!("Hangar ECM listening on http://{instance} (data in {}); stop with Ctrl-C", data_dir.display());
    wait_for_signal().await;
    tracing::info!("ECM shutting down: stopping its engines");
    ecm.kill_all().await;
    // Let the exit reports reach the manager.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop().await;
    Ok(())
}

/// The in-process ECM's reports go straight to the manager.
fn spawn_local_ecm_links(
    manager: Arc<Manager>,
    ecm: Arc<Ecm>,
    mut events: mpsc::UnboundedReceiver<EcmEvent>,
    instance: String,
    every: Duration,
) {
    let m = manager.clone();
    tokio::spawn(async move {
        while let Some(EcmEvent::EngineExited { ticket_id, description }) = events.recv().await {
            m.on_engine_exited(&ticket_id, description);
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let health = ecm.health();
            manager.ecm_heartbeat(&instance, Some(&health));
        }
    });
}

struct HttpServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Err(_) => tracing::warn!("HTTP server did not stop within 5 s"),
            _ => {}
        }
    }
}

fn spawn_http(listener: tokio::net::TcpListener, app: axum::Router) -> HttpServer {
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        // Connect info: the login backoff counts failures per client address.
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    HttpServer { stop, task }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
