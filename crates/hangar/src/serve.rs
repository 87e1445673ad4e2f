//! `hangar serve`: Entrance + LinkisManager + one ECM in one process.
//!
//! The roles call each other in-process; engines are separate processes that
//! talk to this server over HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use hangar_ecm::{Ecm, EcmConfig, EcmEvent};
use hangar_engineconn::EngineOptions;
use hangar_engineconn_plugin::{EngineConnBuildRequest, EngineConnPlugin};
use hangar_entrance::{Entrance, EntranceConfig, TokenConfig};
use hangar_manager::{EcmClient, LaunchedEngine, Manager, ManagerConfig};
use hangar_protocol::resource::parse_bytes;
use hangar_protocol::{HangarError, LabelSet, Resource};
use hangar_store::Store;
use tokio::sync::mpsc;

use crate::config::Config;

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
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30)
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

pub async fn serve(cfg: Config, plugins: Vec<Arc<dyn EngineConnPlugin>>) -> anyhow::Result<()> {
    let data_dir = prepare_data_dir(Path::new(&cfg.server.data_dir))?;
    let store_url = if cfg.server.store_url.is_empty() {
        format!("sqlite://{}", data_dir.join("hangar.db").display())
    } else {
        cfg.server.store_url.clone()
    };
    let store = Store::open(&store_url).await.with_context(|| format!("cannot open the store at {store_url}"))?;

    let listener = tokio::net::TcpListener::bind((cfg.server.bind.as_str(), cfg.server.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", cfg.server.bind, cfg.server.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    let reach_host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let instance = format!("{reach_host}:{}", addr.port());
    let base_url = format!("http://{instance}");
    if !addr.ip().is_loopback() && cfg.auth.token == hangar_cli::DEFAULT_TOKEN {
        tracing::warn!(
            "listening on {addr} with the default token: set HANGAR_TOKEN before exposing Hangar beyond this host"
        );
    }

    let rpc_token = uuid::Uuid::new_v4().simple().to_string();
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
        reservation_timeout: ms(cfg.manager.reservation_timeout_ms),
        engine_lock_timeout: ms(cfg.manager.engine_lock_timeout_ms),
        max_concurrent_creations: cfg.manager.max_concurrent_creations,
        manager_url: base_url.clone(),
        engine_conf: engine_conf(&cfg),
        admins: cfg.auth.admins.clone(),
    };
    let manager = Manager::new(mcfg, plugins.clone(), rpc_token.clone())?;

    let (ecm, ecm_events) = Ecm::new(
        EcmConfig {
            instance: instance.clone(),
            engineconn_root: data_dir.join("engineconn"),
            kill_grace: ms(cfg.ecm.kill_grace_ms),
            rpc_token: rpc_token.clone(),
        },
        plugins,
    );
    let ecm_memory = if cfg.ecm.memory.is_empty() {
        host_memory().saturating_sub(parse_bytes(&cfg.ecm.protected_memory)?)
    } else {
        parse_bytes(&cfg.ecm.memory)?
    };
    let ecm_labels = LabelSet::from_pairs(cfg.ecm.labels.iter().map(String::as_str)).context("bad [ecm] labels")?;
    manager.register_ecm(
        &instance,
        ecm_labels,
        Resource::new(ecm_memory, cfg.ecm.cores, cfg.ecm.instances),
        Arc::new(LocalEcm(ecm.clone())),
    );
    spawn_ecm_loops(manager.clone(), ecm.clone(), ecm_events, instance.clone());
    tokio::spawn(manager.clone().monitor());

    let ecfg = EntranceConfig {
        instance: instance.clone(),
        callback_url: base_url.clone(),
        logs_dir: data_dir.join("logs"),
        results_dir: data_dir.join("results"),
        max_running_per_group: cfg.entrance.max_running_per_group,
        max_queued_per_group: cfg.entrance.max_queued_per_group,
        ask_timeout: ms(cfg.entrance.ask_timeout_ms),
        max_code_bytes: cfg.entrance.max_code_bytes,
        tokens: vec![TokenConfig { token: cfg.auth.token.clone(), users: cfg.auth.token_users.clone() }],
        admins: cfg.auth.admins.clone(),
        default_creator: cfg.entrance.default_creator.clone(),
    };
    std::fs::create_dir_all(&ecfg.results_dir)?;
    std::fs::create_dir_all(&ecfg.logs_dir)?;
    let entrance = Entrance::new(ecfg, store.clone(), manager.clone());
    let recovered = entrance.recover().await?;
    if recovered > 0 {
        tracing::warn!(jobs = recovered, "ended jobs left unfinished by an earlier run");
    }

    let app = hangar_entrance::router(entrance.clone())
        .merge(hangar_manager::rpc_router(manager.clone()))
        .route("/health", axum::routing::get(|| async { "ok" }));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    tracing::info!(%base_url, data_dir = %data_dir.display(), store = %store_url, "Hangar is serving");
    eprintln!("Hangar listening on {base_url} (data in {}); stop with Ctrl-C", data_dir.display());

    wait_for_signal().await;
    tracing::info!("shutting down: ending jobs, stopping engines");
    entrance.shutdown().await;
    manager.shutdown().await;
    ecm.kill_all().await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Err(_) => tracing::warn!("HTTP server did not stop within 5 s"),
        _ => {}
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Forward the ECM's reports to the manager, and keep the ECM's heartbeat fresh.
fn spawn_ecm_loops(
    manager: Arc<Manager>,
    ecm: Arc<Ecm>,
    mut events: mpsc::UnboundedReceiver<EcmEvent>,
    instance: String,
) {
    let m = manager.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                EcmEvent::EngineExited { ticket_id, description } => m.on_engine_exited(&ticket_id, description),
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            tracing::trace!(engines = ecm.running(), "ECM heartbeat");
            manager.ecm_heartbeat(&instance);
        }
    });
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    std::fs::canonicalize(dir).with_context(|| format!("cannot resolve the data dir {}", dir.display()))
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
