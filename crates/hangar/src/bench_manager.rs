//! The manager-capacity part of `hangar bench`: thousands of simulated engines
//! created through the real ask path (a fake ECM and a fake engine endpoint
//! stand in for processes), then heartbeats over loopback HTTP to the real
//! manager RPC endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Json;
use axum::routing::post;
use hangar_engineconn_plugin::EngineConnBuildRequest;
use hangar_manager::{AskRequest, EcmClient, EngineLog, LaunchedEngine, Manager, ManagerConfig};
use hangar_protocol::rpc::{
    ENGINE_RPC_PATH, EngineMetrics, EngineReply, EngineRequest, EngineToManager, MANAGER_RPC_PATH, RPC_TOKEN_HEADER,
    RPC_VERSION,
};
use hangar_protocol::{HangarError, LabelSet, NodeStatus, Resource};

use crate::bench::rss_kb;

pub struct HeartbeatResult {
    pub latency: super_dist::Dist,
    pub per_s: f64,
    pub cpu_s: f64,
    pub rss_kb: u64,
}

pub mod super_dist {
    /// Latencies in milliseconds.
    #[derive(Debug, Clone)]
    pub struct Dist(pub Vec<f64>);

    impl Dist {
        pub fn pct(&self, q: f64) -> f64 {
            if self.0.is_empty() {
                return f64::NAN;
            }
            let mut v = self.0.clone();
            v.sort_by(f64::total_cmp);
            v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
        }
        pub fn json(&self) -> serde_json::Value {
            serde_json::json!({"n": self.0.len(), "p50_ms": self.pct(0.5), "p99_ms": self.pct(0.99)})
        }
    }
}

/// An ECM that "launches" by having the engine report ready at once.
struct FakeEcm {
    manager: std::sync::OnceLock<Arc<Manager>>,
    engine_addr: String,
    pid: AtomicU64,
}

#[async_trait]
impl EcmClient for FakeEcm {
    async fn launch(
        &self,
        req: EngineConnBuildRequest,
        _: &str,
        _: &[(String, String)],
    ) -> Result<LaunchedEngine, HangarError> {
        let m = self.manager.get().cloned().ok_or_else(|| HangarError::internal("fake ECM not wired"))?;
        let pid = self.pid.fetch_add(1, Ordering::Relaxed) as u32;
        let instance = self.engine_addr.clone();
        tokio::spawn(async move {
            let ready = EngineToManager::Ready {
                ticket_id: req.ticket_id,
                instance,
                pid,
                rpc_version: RPC_VERSION,
                account: None,
            };
            m.on_engine_message(ready, Some(req.engine_key.expose()));
        });
        Ok(LaunchedEngine { pid, log_dir: String::new() })
    }
    async fn kill(&self, _: &str) -> Result<(), HangarError> {
        Ok(())
    }
    async fn engine_log(&self, t: &str, _: &str, _: usize, _: usize) -> Result<EngineLog, HangarError> {
        Err(HangarError::not_found(format!("simulated engine {t} has no log")))
    }
}

async fn serve(app: axum::Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

pub async fn heartbeats(engines: usize, beats: usize) -> anyhow::Result<HeartbeatResult> {
    let secrets = hangar_manager::ControlPlaneSecrets { rpc_secret: "bench-rpc".into(), ecm_token: "bench-ecm".into() };
    // A fake engine endpoint that grants every lock.
    let engine_app = axum::Router::new().route(
        ENGINE_RPC_PATH,
        post(|Json(req): Json<EngineRequest>| async move {
            Json(match req {
                EngineRequest::Lock { .. } => EngineReply::Lock { lock: Some("sim".into()), message: "OK".into() },
                EngineRequest::Unlock { .. } => EngineReply::Unlocked { unlocked: true },
                _ => EngineReply::Ack,
            })
        }),
    );
    let engine_addr = serve(engine_app).await?;
    let cfg = ManagerConfig {
        user_max: Resource::new(1 << 40, 1 << 20, 1 << 20),
        engine_start_timeout: Duration::from_secs(30),
        engine_heartbeat_interval: Duration::from_secs(3600),
        ecm_heartbeat_interval: Duration::from_secs(3600),
        reservation_timeout: Duration::from_secs(3600),
        engine_lock_timeout: Duration::from_secs(300),
        max_concurrent_creations: 64,
        manager_url: String::new(),
        engine_conf: Vec::new(),
        admins: Vec::new(),
        pool: Default::default(),
    };
    let manager = Manager::new(cfg, vec![Arc::new(hangar_plugin_shell::ShellPlugin)], secrets, None)?;
    let ecm = Arc::new(FakeEcm { manager: std::sync::OnceLock::new(), engine_addr, pid: AtomicU64::new(1_000_000) });
    let _ = ecm.manager.set(manager.clone());
    manager.register_ecm("sim-ecm:1", LabelSet::default(), Resource::new(1 << 50, 1 << 24, 1 << 24), ecm);

    // Create the engines through the real ask path, 32 at a time.
    let mut set = tokio::task::JoinSet::new();
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..32 {
        let (m, next) = (manager.clone(), next.clone());
        set.spawn(async move {
            let mut tickets = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= engines {
                    return anyhow::Ok(tickets);
                }
                let mut labels = LabelSet::default();
                labels.insert("engineType", "shell-1".into())?;
                labels.insert("userCreator", format!("sim{i}-BENCH"))?;
                let ask = AskRequest {
                    user: format!("sim{i}"),
                    labels,
                    properties: Default::default(),
                    timeout: Duration::from_secs(30),
                };
                let grant = m.ask(&ask).await?;
                m.unlock(&grant).await;
                tickets.push((grant.ticket_id.clone(), grant.key.expose().to_string()));
            }
        });
    }
    let mut tickets = Vec::with_capacity(engines);
    while let Some(r) = set.join_next().await {
        tickets.extend(r??);
    }
    let tickets = Arc::new(tickets);
    let manager_addr = serve(hangar_manager::rpc_router(manager.clone())).await?;
    let url = format!("http://{manager_addr}{MANAGER_RPC_PATH}");
    let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(64).build()?;

    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let clients = 8;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (http, url, tickets) = (http.clone(), url.clone(), tickets.clone());
        set.spawn(async move {
            let mut lat = Vec::with_capacity(beats / clients + 1);
            for i in (c..beats).step_by(clients) {
                let (ticket, key) = &tickets[i % tickets.len()];
                let msg = EngineToManager::Heartbeat {
                    ticket_id: ticket.clone(),
                    status: if i % 2 == 0 { NodeStatus::Unlock } else { NodeStatus::Idle },
                    metrics: EngineMetrics { ticket_id: ticket.clone(), ..Default::default() },
                };
                let s = Instant::now();
                let r = http.post(&url).header(RPC_TOKEN_HEADER, key).json(&msg).send().await?;
                let ok: serde_json::Value = r.json().await?;
                if ok["known"] != true {
                    anyhow::bail!("manager forgot a simulated engine");
                }
                lat.push(s.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::with_capacity(beats);
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    let secs = t0.elapsed().as_secs_f64();
    if manager.list_engines().len() != engines {
        anyhow::bail!("expected {engines} simulated engines, manager has {}", manager.list_engines().len());
    }
    Ok(HeartbeatResult {
        latency: super_dist::Dist(all),
        per_s: beats as f64 / secs,
        cpu_s: cpu_seconds() - cpu0,
        rss_kb: rss_kb(std::process::id()).unwrap_or(0),
    })
}
