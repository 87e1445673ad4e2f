//! The LinkisManager against a fake ECM whose "engines" are tiny in-process
//! HTTP endpoints: start deadlines, bounded creations, reuse rules and
//! resource release, without OS processes in the way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::routing::post;
use hangar_engineconn_plugin::EngineConnBuildRequest;
use hangar_manager::{AskRequest, EcmClient, EngineLog, LaunchedEngine, Manager, ManagerConfig};
use hangar_protocol::rpc::{ENGINE_RPC_PATH, EngineReply, EngineRequest, EngineToManager, RPC_VERSION};
use hangar_protocol::{ErrorCode, HangarError, LabelSet, NodeStatus, Resource};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ready { delay_ms: u64 },
    NeverReady,
    FailLaunch,
}

struct FakeEcm {
    manager: OnceLock<Arc<Manager>>,
    mode: Mutex<Mode>,
    starting: Arc<AtomicUsize>,
    max_starting: AtomicUsize,
    launched: AtomicUsize,
    killed: Mutex<Vec<String>>,
}

/// One fake engine: an HTTP endpoint with a real lock.
async fn fake_engine() -> String {
    let lock: Arc<Mutex<Option<String>>> = Arc::default();
    let app = axum::Router::new().route(
        ENGINE_RPC_PATH,
        post(move |Json(req): Json<EngineRequest>| {
            let lock = lock.clone();
            async move {
                let mut l = lock.lock().expect("lock");
                Json(match req {
                    EngineRequest::Lock { .. } if l.is_none() => {
                        *l = Some("L".into());
                        EngineReply::Lock { lock: Some("L".into()), message: "OK".into() }
                    }
                    EngineRequest::Lock { .. } => EngineReply::Lock { lock: None, message: "locked".into() },
                    EngineRequest::Unlock { .. } => {
                        *l = None;
                        EngineReply::Unlocked { unlocked: true }
                    }
                    _ => EngineReply::Ack,
                })
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[async_trait]
impl EcmClient for FakeEcm {
    async fn launch(
        &self,
        req: EngineConnBuildRequest,
        _: &str,
        _: &[(String, String)],
    ) -> Result<LaunchedEngine, HangarError> {
        let mode = *self.mode.lock().expect("mode");
        if mode == Mode::FailLaunch {
            return Err(HangarError::new(ErrorCode::EngineStartFailed, "necessary environment variable X is not set"));
        }
        self.launched.fetch_add(1, Ordering::SeqCst);
        let now = self.starting.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_starting.fetch_max(now, Ordering::SeqCst);
        let m = self.manager.get().cloned().expect("wired");
        if let Mode::Ready { delay_ms } = mode {
            let instance = fake_engine().await;
            let ticket = req.ticket_id.clone();
            let counter = self.starting.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                counter.fetch_sub(1, Ordering::SeqCst);
                let ready = EngineToManager::Ready {
                    ticket_id: ticket,
                    instance,
                    pid: 1,
                    rpc_version: RPC_VERSION,
                    account: None,
                };
                m.on_engine_message(ready, Some(req.engine_key.expose()));
            });
        }
        Ok(LaunchedEngine { pid: 1, log_dir: String::new() })
    }
    async fn kill(&self, ticket: &str) -> Result<(), HangarError> {
        self.killed.lock().expect("k").push(ticket.to_string());
        Ok(())
    }
    async fn engine_log(&self, _: &str, _: &str, _: usize, _: usize) -> Result<EngineLog, HangarError> {
        Err(HangarError::not_found("no logs"))
    }
}

const SECRET: &str = "control-plane-secret";

fn config(start_timeout_ms: u64, max_creations: usize) -> ManagerConfig {
    ManagerConfig {
        user_max: Resource::new(64 << 30, 64, 64),
        engine_start_timeout: Duration::from_millis(start_timeout_ms),
        engine_heartbeat_interval: Duration::from_secs(60),
        ecm_heartbeat_interval: Duration::from_secs(60),
        reservation_timeout: Duration::from_secs(60),
        engine_lock_timeout: Duration::from_secs(60),
        max_concurrent_creations: max_creations,
        manager_url: String::new(),
        engine_conf: Vec::new(),
        admins: Vec::new(),
        pool: Default::default(),
    }
}

fn setup(cfg: ManagerConfig, mode: Mode) -> (Arc<Manager>, Arc<FakeEcm>) {
    let secrets = hangar_manager::ControlPlaneSecrets { rpc_secret: SECRET.into(), ecm_token: "e".into() };
    let m = Manager::new(cfg, vec![Arc::new(hangar_plugin_shell::ShellPlugin)], secrets, None).expect("manager");
    let ecm = Arc::new(FakeEcm {
        manager: OnceLock::new(),
        mode: Mutex::new(mode),
        starting: Arc::new(AtomicUsize::new(0)),
        max_starting: AtomicUsize::new(0),
        launched: AtomicUsize::new(0),
        killed: Mutex::default(),
    });
    let _ = ecm.manager.set(m.clone());
    m.register_ecm("ecm:1", LabelSet::default(), Resource::new(64 << 30, 64, 64), ecm.clone());
    (m, ecm)
}

fn ask(labels: &[(&str, &str)]) -> AskRequest {
    let mut l = LabelSet::default();
    for (k, v) in labels {
        l.insert(k, v.to_string()).expect("label");
    }
    AskRequest {
        user: "alice".into(),
        labels: l,
        properties: HashMap::<String, String>::new().into_iter().collect(),
        timeout: Duration::from_secs(10),
    }
}

const BASE: [(&str, &str); 2] = [("engineType", "shell-1"), ("userCreator", "alice-IDE")];

fn assert_all_free(m: &Manager) {
    m.resources().check_invariants().expect("invariants");
    for (label, lr) in m.resources().snapshot() {
        assert!(lr.used.is_zero() && lr.locked.is_zero(), "{label} still holds {lr:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_never_gets_ready_is_stopped_and_released_at_its_deadline() {
    let (m, ecm) = setup(config(300, 2), Mode::NeverReady);
    let t0 = std::time::Instant::now();
    let err = m.ask(&ask(&BASE)).await.expect_err("never ready");
    assert_eq!(err.code, ErrorCode::EngineStartFailed);
    assert!(err.message.contains("did not become ready"), "{}", err.message);
    assert!(t0.elapsed() < Duration::from_secs(2));
    for _ in 0..100 {
        if !ecm.killed.lock().expect("k").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ecm.killed.lock().expect("k").len(), 1, "its process is stopped");
    assert!(m.list_engines().is_empty());
    assert_all_free(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_launch_releases_its_reservation() {
    let (m, _) = setup(config(5_000, 2), Mode::FailLaunch);
    let err = m.ask(&ask(&BASE)).await.expect_err("launch fails");
    assert!(err.message.contains("necessary environment variable X"), "{}", err.message);
    assert_all_free(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_asks_creates_engines_at_most_n_at_a_time_and_reuses_after() {
    let (m, ecm) = setup(config(5_000, 2), Mode::Ready { delay_ms: 50 });
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let m = m.clone();
        set.spawn(async move { m.ask(&ask(&BASE)).await });
    }
    let mut grants = Vec::new();
    while let Some(r) = set.join_next().await {
        grants.push(r.expect("join").expect("grant"));
    }
    assert!(
        ecm.max_starting.load(Ordering::SeqCst) <= 2,
        "at most 2 creations at once, saw {}",
        ecm.max_starting.load(Ordering::SeqCst)
    );
    // Give every engine back, then the same labels reuse instead of creating.
    for g in &grants {
        m.unlock(g).await;
    }
    let before = ecm.launched.load(Ordering::SeqCst);
    let g = m.ask(&ask(&BASE)).await.expect("reuse");
    assert!(g.reused);
    assert_eq!(ecm.launched.load(Ordering::SeqCst), before);
    // reuseExclusion "*" and executeOnce both create a new engine.
    let excl = m.ask(&ask(&[BASE[0], BASE[1], ("reuseExclusion", "*")])).await.expect("new");
    assert!(!excl.reused);
    let once = m.ask(&ask(&[BASE[0], BASE[1], ("executeOnce", "")])).await.expect("new");
    assert!(!once.reused);
    // An engine excluded by instance is skipped.
    m.unlock(&g).await;
    let skip = m.ask(&ask(&[BASE[0], BASE[1], ("reuseExclusion", g.instance.as_str())])).await.expect("grant");
    assert_ne!(skip.instance, g.instance);
    // Every engine ending releases exactly what it held.
    for e in m.list_engines() {
        m.finish(&e.ticket_id, NodeStatus::Success, "test over".into(), false);
        m.finish(&e.ticket_id, NodeStatus::Success, "twice is harmless".into(), false);
    }
    assert_all_free(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_rejoin_a_restarted_manager_once_and_are_charged_again() {
    use hangar_protocol::rpc::{EngineMetrics, ManagerReply};
    let mut cfg = config(5_000, 2);
    cfg.user_max = Resource::new(4 << 30, 4, 2);
    let (m, _ecm) = setup(cfg, Mode::Ready { delay_ms: 0 });
    let labels = ask(&BASE).labels;
    let rejoin = |ticket: &str, ecm: &str, memory: u64| EngineToManager::Rejoin {
        ticket_id: ticket.into(),
        instance: "127.0.0.1:1".into(),
        pid: 1,
        user: "alice".into(),
        labels: labels.clone(),
        resource: Resource::new(memory, 1, 1),
        cluster: None,
        ecm_instance: ecm.into(),
        status: NodeStatus::Busy,
        metrics: EngineMetrics::default(),
        rpc_version: RPC_VERSION,
        account: None,
    };
    // The key each engine holds: bound to its whole record.
    let key = |ticket: &str, ecm: &str, memory: u64| {
        let b = hangar_protocol::credential::EngineBinding {
            ticket_id: ticket,
            user: "alice",
            labels: &labels,
            ecm_instance: ecm,
            resource: &Resource::new(memory, 1, 1),
            cluster: None,
        };
        hangar_protocol::credential::engine_key(SECRET.as_bytes(), &b)
    };
    let k1 = key("t1", "ecm:1", 1 << 30);
    let k2 = key("t2", "ecm:1", 8 << 30);
    let send = |msg: EngineToManager, k: &str| m.on_engine_message(msg, Some(k));
    let heartbeat = |ticket: &str| EngineToManager::Heartbeat {
        ticket_id: ticket.into(),
        status: NodeStatus::Busy,
        metrics: EngineMetrics::default(),
    };
    // Unknown, never ended: asked to rejoin; an unregistered ECM means "later".
    assert_eq!(send(heartbeat("t1"), &k1), Some(ManagerReply { known: false, rejoin: true, ..Default::default() }));
    let k9 = key("t1", "ecm:9", 1 << 30);
    assert_eq!(
        send(rejoin("t1", "ecm:9", 1 << 30), &k9),
        Some(ManagerReply { known: false, rejoin: true, ..Default::default() })
    );
    // A key for another record (another ticket, ECM or resource) is refused.
    assert_eq!(send(rejoin("t1", "ecm:1", 1 << 30), &k2), None);
    assert_eq!(send(rejoin("t1", "ecm:1", 1 << 20), &k1), None, "a smaller resource than the key's");
    // On its registered ECM it is taken back, charged, and known from then on.
    assert_eq!(send(rejoin("t1", "ecm:1", 1 << 30), &k1), Some(ManagerReply::known(true)));
    assert_eq!(send(rejoin("t1", "ecm:1", 1 << 30), &k1), Some(ManagerReply::known(true)), "idempotent");
    assert_eq!(send(heartbeat("t1"), &k1), Some(ManagerReply::known(true)));
    assert_eq!(send(heartbeat("t1"), &k2), None, "another engine's key");
    assert_eq!(m.on_engine_message(heartbeat("t1"), None), None, "no key");
    let engines = m.list_engines();
    assert_eq!(engines.len(), 1);
    assert_eq!(engines[0].status, NodeStatus::Busy);
    let used = m.resources().label("emInstance:ecm:1").expect("ecm label").used;
    assert_eq!(used, Resource::new(1 << 30, 1, 1));
    m.resources().check_invariants().expect("invariants");
    // More than the user may hold: refused for good.
    assert_eq!(send(rejoin("t2", "ecm:1", 8 << 30), &k2), Some(ManagerReply::known(false)));
    assert_eq!(send(heartbeat("t2"), &k2), Some(ManagerReply::known(false)));
    // An engine the manager ended may not come back.
    m.finish("t1", NodeStatus::Failed, "lost".into(), false);
    assert_eq!(send(heartbeat("t1"), &k1), Some(ManagerReply::known(false)));
    assert_eq!(send(rejoin("t1", "ecm:1", 1 << 30), &k1), Some(ManagerReply::known(false)));
    assert_all_free(&m);
}

/// A Spark-like engine rejoins with its executors' queue charge: the key
/// binds the charge (a smaller one is refused), the queue is charged again,
/// and the engine's end gives the queue back once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoining_engine_takes_back_its_queue_charge_once() {
    use hangar_protocol::resource::ClusterCharge;
    use hangar_protocol::rpc::{EngineMetrics, ManagerReply};
    let (m, _ecm) = setup(config(5_000, 2), Mode::Ready { delay_ms: 0 });
    let labels = ask(&BASE).labels;
    let queue = |memory: u64| ClusterCharge {
        label: "sparkQueue=default@spark://h:7077".into(),
        max: Resource::new(8 << 30, 8, 4),
        resource: Resource::new(memory, 2, 2),
    };
    let driver = Resource::new(1 << 30, 1, 1);
    let rejoin = |cluster: ClusterCharge| EngineToManager::Rejoin {
        ticket_id: "s1".into(),
        instance: "127.0.0.1:1".into(),
        pid: 1,
        user: "alice".into(),
        labels: labels.clone(),
        resource: driver,
        cluster: Some(cluster),
        ecm_instance: "ecm:1".into(),
        status: NodeStatus::Unlock,
        metrics: EngineMetrics::default(),
        rpc_version: RPC_VERSION,
        account: None,
    };
    let big = queue(4 << 30);
    let key = hangar_protocol::credential::engine_key(
        SECRET.as_bytes(),
        &hangar_protocol::credential::EngineBinding {
            ticket_id: "s1",
            user: "alice",
            labels: &labels,
            ecm_instance: "ecm:1",
            resource: &driver,
            cluster: Some(&big),
        },
    );
    assert_eq!(m.on_engine_message(rejoin(queue(1 << 30)), Some(&key)), None, "a smaller queue charge than the key's");
    assert_eq!(m.on_engine_message(rejoin(big.clone()), Some(&key)), Some(ManagerReply::known(true)));
    let q = m.resources().label(&big.label).expect("queue label");
    assert_eq!((q.max, q.used), (big.max, big.resource));
    assert_eq!(m.resources().label("emInstance:ecm:1").expect("ecm").used, driver, "the ECM holds the driver only");
    m.resources().check_invariants().expect("invariants");
    m.finish("s1", NodeStatus::Success, "done".into(), false);
    m.finish("s1", NodeStatus::Success, "twice".into(), false);
    assert!(m.resources().label(&big.label).expect("queue").used.is_zero());
    assert_all_free(&m);
}

/// The operator views (`listAllEMs`, `/metrics`) take the manager's locks
/// too: listing in a tight loop from other threads during 500 engine
/// creations must neither deadlock nor see broken accounting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_during_500_creations_never_deadlocks() {
    let (m, ecm) = setup(config(5_000, 8), Mode::Ready { delay_ms: 0 });
    // A deadlock blocks the runtime's workers too, so no async timeout could
    // fire: a plain thread ends the test binary instead of letting it hang.
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(120)).is_err() {
            eprintln!("deadlock: 500 creations with concurrent listing did not finish in 120 s");
            std::process::exit(101);
        }
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listers: Vec<_> = (0..2)
        .map(|_| {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Each listing is one consistent snapshot: never over an ECM's maximum.
                    for e in m.list_ecms() {
                        let held = e.resource.used + e.resource.locked;
                        assert!(e.resource.max.not_less(&held), "{} holds {held}, over {}", e.instance, e.resource.max);
                    }
                    let _ = m.list_engines();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut set = tokio::task::JoinSet::new();
    // 32 at a time: the ECM holds 64 engines.
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..500 {
        let (m, slots) = (m.clone(), slots.clone());
        set.spawn(async move {
            let _slot = slots.acquire().await.expect("slot");
            let creator = format!("u{i}-IDE");
            let mut a = ask(&[("engineType", "shell-1"), ("userCreator", creator.as_str())]);
            a.user = format!("u{i}");
            let g = m.ask(&a).await.expect("ask");
            m.finish(&g.ticket_id, NodeStatus::Success, "done".into(), false);
        });
    }
    let all = async {
        while let Some(r) = set.join_next().await {
            r.expect("task");
        }
    };
    all.await;
    let _ = done.send(());
    stop.store(true, Ordering::Relaxed);
    let listed: u64 = listers.into_iter().map(|t| t.join().expect("lister")).sum();
    assert!(listed > 0);
    assert_eq!(ecm.launched.load(Ordering::SeqCst), 500);
    assert_all_free(&m);
}

/// A remote ECM host goes silent while its engines end by every other path
/// at the same time (exit reports, their own `Exiting`, unlocks): in every
/// interleaving each engine ends once, every resource comes back once, the
/// host is written off once, and when the ECM registers again the engines
/// it still lists that were written off are handed back to be stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_host_is_written_off_once_whatever_else_ends_its_engines() {
    for round in 0..20u64 {
        let mut cfg = config(5_000, 4);
        cfg.ecm_heartbeat_interval = Duration::from_millis(20);
        let (m, _) = setup(cfg, Mode::Ready { delay_ms: 0 });
        let mut grants = Vec::new();
        for i in 0..6 {
            m.ecm_heartbeat("ecm:1", None);
            let mut a = ask(&BASE);
            a.labels.insert("reuseExclusion", "*".to_string()).expect("label");
            let g = m.ask(&a).await.expect("grant");
            if i % 2 == 0 {
                m.unlock(&g).await;
            }
            grants.push(g);
        }
        let tickets: Vec<String> = grants.iter().map(|g| g.ticket_id.clone()).collect();
        let watchers: Vec<_> = tickets.iter().map(|t| m.watch_engine(t).expect("watch")).collect();
        m.ecm_heartbeat("ecm:1", None);
        // The host falls silent; the monitor runs every 5 ms while other
        // ends race it, each after its own delay (shifted every round).
        let mut set = tokio::task::JoinSet::new();
        let mon = m.clone();
        set.spawn(async move {
            for _ in 0..40 {
                mon.monitor_once();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        for (i, g) in grants.iter().enumerate() {
            let (m, g) = (m.clone(), g.clone());
            let delay = Duration::from_millis((round * 7 + i as u64 * 13) % 90);
            set.spawn(async move {
                tokio::time::sleep(delay).await;
                match i % 3 {
                    0 => m.on_engine_exited(&g.ticket_id, "process exited".into()),
                    1 => {
                        let exiting = EngineToManager::Exiting {
                            ticket_id: g.ticket_id.clone(),
                            status: NodeStatus::Success,
                            reason: "idle".into(),
                        };
                        m.on_engine_message(exiting, Some(g.key.expose()));
                    }
                    _ => m.unlock(&g).await,
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("task");
        }
        assert!(m.list_engines().is_empty(), "round {round}: every engine ended");
        assert_all_free(&m);
        assert_eq!(m.stats.ecms_lost.load(Ordering::SeqCst), 1, "round {round}: the host is written off once");
        let ended: Vec<NodeStatus> = watchers.iter().map(|w| w.borrow().status).collect();
        assert!(ended.iter().all(|s| s.is_completed()), "round {round}: {ended:?}");
        let ecm = m.list_ecms().into_iter().find(|e| e.instance == "ecm:1").expect("ecm");
        assert_eq!(ecm.status, NodeStatus::Failed, "a lost ECM takes no engine");
        // Heartbeats of a written-off ECM are refused: it must register again.
        assert!(!m.ecm_heartbeat("ecm:1", None));
        let mut listed = tickets.clone();
        listed.push("not-known-here".into());
        let reply = m.on_ecm_register("ecm:1", LabelSet::default(), Resource::new(64 << 30, 64, 64), listed);
        let mut stop = reply.stop.clone();
        stop.sort();
        let mut want = tickets.clone();
        want.sort();
        assert_eq!(stop, want, "round {round}: the written-off engines are stopped, an unknown one may rejoin");
        assert!(m.ecm_heartbeat("ecm:1", None), "registered again");
        assert_all_free(&m);
    }
}
