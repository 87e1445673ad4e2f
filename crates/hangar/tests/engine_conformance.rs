//! The engine conformance suite: every engine plugin, run as the real
//! `hangar engineconn` process against a fake manager + Entrance, must pass it.
//! It also counts the engine's messages: a running task produces combined
//! running-info reports at the configured rate, and nothing else but logs,
//! result sets and status changes.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::routing::{post, put};
use hangar_protocol::rpc::{
    ENTRANCE_RESULT_PATH, ENTRANCE_RPC_PATH, EngineReply, EngineRequest, EngineToManager, MANAGER_RPC_PATH,
    ManagerReply, RPC_TOKEN_HEADER, TICKET_HEADER, TaskEvent, TaskEventBatch, TaskExecuteRequest,
};
use hangar_protocol::{JobStatus, NodeStatus};

const TOKEN: &str = "conformance-secret";

#[derive(Default)]
struct Seen {
    manager: Vec<EngineToManager>,
    events: Vec<(Instant, TaskEvent)>,
    /// Result sets the engine streamed, by (task, alias).
    results: std::collections::HashMap<(i64, u32), Vec<u8>>,
    /// Events that reached the second Entrance (a task redirected there).
    moved: Vec<TaskEvent>,
}

type Shared = Arc<Mutex<Seen>>;

async fn manager_rpc(State(seen): State<Shared>, body: Bytes) -> axum::Json<ManagerReply> {
    let msg: EngineToManager = serde_json::from_slice(&body).expect("engine message");
    seen.lock().expect("seen").manager.push(msg);
    axum::Json(ManagerReply::known(true))
}

async fn entrance_rpc(State(seen): State<Shared>, body: Bytes) -> &'static str {
    let batch: TaskEventBatch = serde_json::from_slice(&body).expect("task events");
    let now = Instant::now();
    seen.lock().expect("seen").events.extend(batch.events.into_iter().map(|e| (now, e)));
    "ok"
}

/// The Entrance a task's job moved to: its events land here too.
async fn moved_entrance_rpc(State(seen): State<Shared>, body: Bytes) -> &'static str {
    let batch: TaskEventBatch = serde_json::from_slice(&body).expect("task events");
    let now = Instant::now();
    let mut seen = seen.lock().expect("seen");
    seen.moved.extend(batch.events.iter().cloned());
    seen.events.extend(batch.events.into_iter().map(|e| (now, e)));
    "ok"
}

/// A result set arrives before its event, with the engine's ticket and key.
async fn entrance_result(
    State(seen): State<Shared>,
    UrlPath((task, alias)): UrlPath<(i64, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    assert_eq!(headers.get(TICKET_HEADER).and_then(|v| v.to_str().ok()), Some("t-1"));
    assert_eq!(headers.get(RPC_TOKEN_HEADER).and_then(|v| v.to_str().ok()), Some(TOKEN));
    seen.lock().expect("seen").results.insert((task, alias), body.to_vec());
    "ok"
}

struct Harness {
    seen: Shared,
    base: String,
    /// A second Entrance, where a task can be redirected.
    moved_base: String,
    child: Child,
    instance: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(
        program: &std::path::Path,
        labels: &[&str],
        conf: &[String],
        env: &[(String, String)],
        start_within: Duration,
    ) -> Harness {
        let seen: Shared = Arc::default();
        let app = Router::new()
            .route(MANAGER_RPC_PATH, post(manager_rpc))
            .route(ENTRANCE_RPC_PATH, post(entrance_rpc))
            .route(&format!("{ENTRANCE_RESULT_PATH}/{{task}}/{{alias}}"), put(entrance_result))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let moved = Router::new().route(ENTRANCE_RPC_PATH, post(moved_entrance_rpc)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let moved_base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, moved).await });
        // Several control-plane URLs, the first dead: the engine finds the live one.
        let dead = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            format!("http://{}", l.local_addr().expect("addr"))
        };
        let manager_urls = format!("{dead},{base}");
        let dir = tempfile::tempdir().expect("tmp");
        let mut cmd = Command::new(program);
        cmd.args(["engineconn", "--ticket-id", "t-1", "--user", "alice", "--manager-url", &manager_urls, "--work-dir"])
            .arg(dir.path())
            .args(["--conf", "hangar.engineconn.running_info_interval_ms=100"])
            .args(["--conf", "hangar.engineconn.heartbeat_interval_ms=200"])
            .args(["--conf", "hangar.engineconn.log_push_interval_ms=20"])
            .env("HANGAR_ENGINE_TICKET", "t-1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr"));
        for l in labels {
            cmd.args(["--label", l]);
        }
        for c in conf {
            cmd.args(["--conf", c]);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("spawn engine");
        // The engine's key arrives on standard input, as an ECM hands it over.
        let secrets = hangar_protocol::credential::EngineSecrets { engine_key: TOKEN.into(), conf: Default::default() };
        let mut stdin = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, &serde_json::to_vec(&secrets).expect("json")).expect("write secrets");
        drop(stdin);
        let deadline = Instant::now() + start_within;
        let (instance, pid) = loop {
            let ready = seen.lock().expect("seen").manager.iter().find_map(|m| match m {
                EngineToManager::Ready { instance, pid, .. } => Some((instance.clone(), *pid)),
                _ => None,
            });
            if let Some(r) = ready {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "no Ready: {}",
                std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(pid, child.id(), "Ready carries the engine's own pid");
        Harness { seen, base, moved_base, child, instance, http: reqwest::Client::new(), _dir: dir }
    }

    async fn call_raw(&self, token: &str, req: &EngineRequest) -> (u16, EngineReply) {
        let r = self
            .http
            .post(format!("http://{}/rpc", self.instance))
            .header(RPC_TOKEN_HEADER, token)
            .json(req)
            .send()
            .await
            .expect("engine rpc");
        let code = r.status().as_u16();
        (code, r.json().await.expect("reply"))
    }

    async fn call(&self, req: &EngineRequest) -> EngineReply {
        self.call_raw(TOKEN, req).await.1
    }

    async fn status(&self) -> NodeStatus {
        match self.call(&EngineRequest::Status).await {
            EngineReply::Status { status, .. } => status,
            other => panic!("status: {other:?}"),
        }
    }

    fn task(&self, task_id: i64, code: &str, lock: &str, run_type: &str) -> EngineRequest {
        EngineRequest::Execute(TaskExecuteRequest {
            task_id,
            exec_id: format!("e{task_id}"),
            code: code.into(),
            lock: lock.into(),
            run_type: run_type.into(),
            user: "alice".into(),
            properties: Default::default(),
            callback_url: self.base.clone(),
            max_result_set_bytes: 0,
            unlock_when_done: false,
        })
    }

    fn events(&self, task_id: i64) -> Vec<(Instant, TaskEvent)> {
        self.seen.lock().expect("seen").events.iter().filter(|(_, e)| e.task_id() == task_id).cloned().collect()
    }

    async fn final_status(&self, task_id: i64, within: Duration) -> (JobStatus, Option<String>, Instant) {
        let deadline = Instant::now() + within;
        loop {
            let done = self.events(task_id).into_iter().find_map(|(at, e)| match e {
                TaskEvent::Status { status, error, .. } if status.is_completed() => Some((status, error, at)),
                _ => None,
            });
            if let Some(d) = done {
                return d;
            }
            assert!(Instant::now() < deadline, "task {task_id} did not end");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an engine type must provide to be checked.
struct EngineCase {
    labels: &'static [&'static str],
    run_type: &'static str,
    /// Code that succeeds and prints `expected` as its first result row.
    ok_code: &'static str,
    expected: &'static str,
    /// Code that fails.
    bad_code: &'static str,
    /// Code that runs for many seconds until killed.
    long_code: &'static str,
    /// Startup options taken from the environment: `(key, VARIABLE)` passes
    /// `--conf key=$VARIABLE`; the variable must be set.
    env_conf: &'static [(&'static str, &'static str)],
    /// The engine process's own environment (Spark: `SPARK_HOME`) and options.
    env: Vec<(String, String)>,
    conf: Vec<String>,
    /// How long the engine may take to report Ready.
    start_within: Duration,
}

async fn assert_engine_conformance(case: EngineCase) {
    assert_engine_conformance_of(std::path::Path::new(env!("CARGO_BIN_EXE_hangar")), case).await
}

/// The suite against an engine binary other than `hangar` (same `engineconn` arguments).
async fn assert_engine_conformance_of(program: &std::path::Path, case: EngineCase) {
    let mut conf: Vec<String> = case
        .env_conf
        .iter()
        .map(|(key, var)| match std::env::var(var) {
            Ok(v) if !v.is_empty() => format!("{key}={v}"),
            _ => panic!(
                "{var} is not set: this engine's conformance run needs it for --conf {key} (scripts/test sets it)"
            ),
        })
        .collect();
    conf.extend(case.conf.iter().cloned());
    let h = Harness::start(program, case.labels, &conf, &case.env, case.start_within).await;
    assert_eq!(h.status().await, NodeStatus::Unlock, "ready engines are Unlock");

    // Internal auth.
    let (code, _) = h.call_raw("wrong", &EngineRequest::Status).await;
    assert_eq!(code, 401);

    // The lock: granted once, required and checked on every task.
    let EngineReply::Lock { lock: Some(lock), .. } = h.call(&EngineRequest::Lock { timeout_ms: 60_000 }).await else {
        panic!("an Unlock engine grants its lock")
    };
    assert!(matches!(h.call(&EngineRequest::Lock { timeout_ms: 1 }).await, EngineReply::Lock { lock: None, .. }));
    assert_eq!(h.status().await, NodeStatus::Idle);
    let wrong = h.call(&h.task(1, case.ok_code, "not-the-lock", case.run_type)).await;
    assert!(matches!(wrong, EngineReply::Error { code: hangar_protocol::ErrorCode::LockRejected, .. }), "{wrong:?}");
    let blank = h.call(&h.task(1, "  ", &lock, case.run_type)).await;
    assert!(matches!(blank, EngineReply::Error { .. }), "{blank:?}");

    // A task that succeeds: ordered events, the final status last.
    assert_eq!(h.call(&h.task(1, case.ok_code, &lock, case.run_type)).await, EngineReply::Submitted { task_id: 1 });
    let (st, _, _) = h.final_status(1, Duration::from_secs(20)).await;
    assert_eq!(st, JobStatus::Succeed);
    let ev: Vec<TaskEvent> = h.events(1).into_iter().map(|(_, e)| e).collect();
    assert!(matches!(ev.first(), Some(TaskEvent::Status { status: JobStatus::Running, .. })), "{ev:?}");
    assert!(matches!(ev.last(), Some(TaskEvent::Status { status: JobStatus::Succeed, .. })), "{ev:?}");
    let (alias, inline) = ev
        .iter()
        .find_map(|e| match e {
            TaskEvent::ResultSet { alias, inline, .. } => Some((*alias, inline.clone())),
            _ => None,
        })
        .expect("a result set");
    // Small result sets come inside the event, larger ones were streamed before it.
    let bytes = match inline {
        Some(text) => text.into_bytes(),
        None => h.seen.lock().expect("seen").results.get(&(1, alias)).cloned().expect("the result set's bytes"),
    };
    let rs = hangar_protocol::dolphin::decode(&bytes).expect("dolphin");
    assert_eq!(rs.rows.first().and_then(|r| r.first().cloned().flatten()).as_deref(), Some(case.expected));
    assert!(
        ev.iter().any(|e| matches!(e, TaskEvent::RunningInfo(i) if i.progress >= 1.0 && i.metrics.ticket_id == "t-1"))
    );

    // A task that fails reports Failed with a reason; the engine stays usable.
    h.call(&h.task(2, case.bad_code, &lock, case.run_type)).await;
    let (st, err, _) = h.final_status(2, Duration::from_secs(20)).await;
    assert_eq!(st, JobStatus::Failed);
    assert!(err.is_some_and(|e| !e.is_empty()));

    // A long task: combined running-info reports at the configured rate
    // (100 ms), then a kill ends it Cancelled within a second.
    h.call(&h.task(3, case.long_code, &lock, case.run_type)).await;
    assert_eq!(h.status().await, NodeStatus::Busy);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let infos: Vec<Instant> =
        h.events(3).into_iter().filter(|(_, e)| matches!(e, TaskEvent::RunningInfo(_))).map(|(t, _)| t).collect();
    assert!((8..=22).contains(&infos.len()), "{} running-info reports in 1.5 s at a 100 ms interval", infos.len());
    // Its job moves to another Entrance: the task's events follow it from now on.
    let moved = EngineRequest::TaskStatus { task_id: 3, callback_url: Some(h.moved_base.clone()) };
    assert!(
        matches!(h.call(&moved).await, EngineReply::TaskStatus { status: Some(JobStatus::Running), .. }),
        "a running task is redirected"
    );
    let killed_at = Instant::now();
    assert_eq!(
        h.call(&EngineRequest::Kill { task_id: 3 }).await,
        EngineReply::Ack,
        "{:?}",
        h.events(3).iter().rev().take(3).collect::<Vec<_>>()
    );
    let (st, err, at) = h.final_status(3, Duration::from_secs(5)).await;
    assert_eq!(st, JobStatus::Cancelled, "{err:?}");
    let moved: Vec<TaskEvent> = h.seen.lock().expect("seen").moved.clone();
    assert!(moved.iter().all(|e| e.task_id() == 3), "only the redirected task's events move");
    assert!(
        moved.iter().any(|e| matches!(e, TaskEvent::Status { status: JobStatus::Cancelled, .. })),
        "the final status went to the new Entrance: {moved:?}"
    );
    assert!(at.duration_since(killed_at) < Duration::from_secs(1), "cancelled in {:?}", at.duration_since(killed_at));
    // Only four kinds of task messages exist; every one seen is of those kinds.
    for (_, e) in h.events(3) {
        assert!(matches!(
            e,
            TaskEvent::Status { .. } | TaskEvent::Log { .. } | TaskEvent::RunningInfo(_) | TaskEvent::ResultSet { .. }
        ));
    }

    // Still usable after the kill.
    h.call(&h.task(4, case.ok_code, &lock, case.run_type)).await;
    assert_eq!(h.final_status(4, Duration::from_secs(20)).await.0, JobStatus::Succeed);

    // Unlock, then heartbeats report it; shutdown reports Exiting and ends the process.
    assert_eq!(h.call(&EngineRequest::Unlock { lock: lock.clone() }).await, EngineReply::Unlocked { unlocked: true });
    assert_eq!(h.status().await, NodeStatus::Unlock);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        h.seen
            .lock()
            .expect("seen")
            .manager
            .iter()
            .any(|m| matches!(m, EngineToManager::Heartbeat { status: NodeStatus::Unlock, .. }))
    );
    let mut h = h;
    assert_eq!(h.call(&EngineRequest::Shutdown { reason: "test over".into() }).await, EngineReply::Ack);
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(st) = h.child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "engine did not exit after Shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(code.success());
    assert!(h.seen.lock().expect("seen").manager.iter().any(
        |m| matches!(m, EngineToManager::Exiting { status: NodeStatus::Success, reason, .. } if reason == "test over")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_engine_conformance() {
    assert_engine_conformance(EngineCase {
        labels: &["engineType=shell-1", "userCreator=alice-IDE", "codeType=shell"],
        run_type: "shell",
        ok_code: "echo conform",
        expected: "conform",
        bad_code: "exit 7",
        long_code: "sleep 30",
        env_conf: &[],
        env: vec![],
        conf: vec![],
        start_within: Duration::from_secs(20),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_engine_conformance() {
    assert_engine_conformance(EngineCase {
        labels: &["engineType=python-python3", "userCreator=alice-IDE", "codeType=python"],
        run_type: "python",
        ok_code: "print('conform')",
        expected: "conform",
        bad_code: "raise ValueError('boom')",
        long_code: "import time\nwhile True: time.sleep(0.01)",
        env_conf: &[],
        env: vec![],
        conf: vec![],
        start_within: Duration::from_secs(20),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_engine_conformance() {
    assert_engine_conformance(EngineCase {
        labels: &["engineType=jdbc-4", "userCreator=alice-IDE", "codeType=jdbc"],
        run_type: "jdbc",
        ok_code: "select 'conform' as c",
        expected: "conform",
        bad_code: "select * from no_such_table_xyz",
        long_code: "select pg_sleep(60)",
        env_conf: &[("jdbc.url", "HANGAR_TEST_POSTGRES_URL")],
        env: vec![],
        conf: vec![],
        start_within: Duration::from_secs(20),
    })
    .await;
}

/// `hangar-sql-engine`, built next to `hangar` (integration tests only see their
/// own package's binaries through `CARGO_BIN_EXE_*`).
fn sql_engine_binary() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_hangar")).with_file_name("hangar-sql-engine");
    assert!(
        bin.is_file(),
        "{} does not exist: build it first with `cargo build -p hangar-sql-engine` \
         (`cargo test --workspace` and scripts/test build it)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_engine_conformance() {
    assert_engine_conformance_of(
        &sql_engine_binary(),
        EngineCase {
            labels: &["engineType=datafusion-1", "userCreator=alice-IDE", "codeType=sql"],
            run_type: "sql",
            ok_code: "select 'conform' as c",
            expected: "conform",
            bad_code: "select * from no_such_table",
            // Minutes of work: a filter keeps statistics from answering the count.
            long_code: "select count(*) from range(1000000000) a, range(1000) b where a.value + b.value > 0",
            env_conf: &[],
            env: vec![],
            conf: vec![],
            start_within: Duration::from_secs(20),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_engine_conformance() {
    let home = common::spark_home();
    // <venv>/lib/python3.X/site-packages/pyspark -> <venv>/bin/python
    let venv = home.ancestors().nth(4).expect("venv").to_path_buf();
    assert_engine_conformance(EngineCase {
        labels: &["engineType=spark-3.2.1", "userCreator=alice-IDE", "codeType=sql"],
        run_type: "sql",
        ok_code: "select 'conform' as c",
        expected: "conform",
        bad_code: "select * from no_such_table",
        long_code: "select max(id) from range(1000000000000)",
        env_conf: &[],
        env: vec![("SPARK_HOME".into(), home.display().to_string())],
        conf: vec![format!("hangar.spark.python={}", venv.join("bin/python").display())],
        start_within: Duration::from_secs(120),
    })
    .await;
}
