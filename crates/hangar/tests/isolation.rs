//! Tenant isolation, attacked through the real binary: user bob's jobs (and a
//! leaked key of bob's own engine) against user alice's job, engine, files and
//! the server's secrets. As root (CI) engines run as one unprivileged account
//! per user; as a normal user the environment and `/proc` attacks still run.

mod common;

use std::time::Duration;

use common::{FAST, Server, TOKEN};
use hangar_protocol::credential::{EngineBinding, engine_key};
use hangar_protocol::rpc::{
    ENTRANCE_RPC_PATH, EngineMetrics, EngineRequest, EngineToManager, MANAGER_RPC_PATH, RPC_TOKEN_HEADER, RPC_VERSION,
    TaskEvent, TaskEventBatch,
};
use hangar_protocol::{JobStatus, LabelSet, NodeStatus, Resource};
use serde_json::{Value, json};

const ADMIN_PW: &str = "admin-pw-3b9e41";
const RPC: &str = "rpc-secret-51c0d7";

async fn server() -> Server {
    Server::start_env(
        "",
        &format!("rpc_token = \"{RPC}\""),
        FAST,
        &[("HANGAR_ADMIN_USER", "admin"), ("HANGAR_ADMIN_PASSWORD", ADMIN_PW), ("HANGAR_AUTH_TOKEN", TOKEN)],
    )
    .await
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The server's secrets and every credential derived from them.
fn secrets() -> Vec<String> {
    vec![ADMIN_PW.into(), RPC.into(), TOKEN.into(), hangar_protocol::credential::derived_token(RPC.as_bytes(), "ecm")]
}

async fn output(s: &Server, user: &str, code: &str) -> (String, String, i64) {
    let (exec, task) = s.shell(user, code).await;
    let status = s.wait_done(user, &exec).await;
    let rows = s.results(user, task).await;
    let text: Vec<String> = rows
        .iter()
        .flat_map(|r| r["fileContent"].as_array().cloned().unwrap_or_default())
        .map(|line| line[0].as_str().unwrap_or_default().to_string())
        .collect();
    (status, text.join("\n"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_secret_reaches_a_job() {
    no_secret_in_a_job(server().await).await;
}

/// The same attacks on a server that is not root (its engines run as its
/// own account): started under an unprivileged OS user by a root test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_secret_reaches_a_job_of_a_non_root_server() {
    if !root() {
        // Not root already: the test above is this one.
        return;
    }
    assert!(common::os_user("hangarsrv1"));
    let s = Server::start_as(
        "hangarsrv1",
        &format!("rpc_token = \"{RPC}\""),
        FAST,
        &[("HANGAR_ADMIN_USER", "admin"), ("HANGAR_ADMIN_PASSWORD", ADMIN_PW), ("HANGAR_AUTH_TOKEN", TOKEN)],
    )
    .await;
    let (_, out, _) = output(&s, "bob", "id -un").await;
    assert_eq!(out, "hangarsrv1", "a non-root server's engines run as its own account");
    no_secret_in_a_job(s).await;
}

async fn no_secret_in_a_job(s: Server) {
    let pid = s.pid();
    let code = format!(
        "env; echo ---; cat /proc/$PPID/environ /proc/{pid}/environ /proc/{pid}/cmdline 2>&1 | tr '\\0' '\\n'; \
         cat {d}/rpc-token {d}/hangar.db 2>&1 | head -c 2000; ps -eo args 2>/dev/null | head -200; true",
        d = s.data_dir.display()
    );
    let (status, out, _) = output(&s, "bob", &code).await;
    assert_eq!(status, "Succeed", "{out}");
    assert!(out.contains("PATH="), "the job ran env: {out}");
    for secret in secrets() {
        assert!(!out.contains(&secret), "a server secret reached the job:\n{out}");
    }
    for name in ["HANGAR_ADMIN_PASSWORD", "HANGAR_AUTH_RPC_TOKEN", "HANGAR_AUTH_TOKEN", "HANGAR_RPC_TOKEN"] {
        assert!(!out.contains(name), "{name} reached the job:\n{out}");
    }
    // The engine's own environment and memory are not the job's to read.
    assert!(out.contains("Permission denied"), "{out}");
}

/// An engine as the operator API lists it, with the key bob's engine holds.
struct EngineRec {
    ticket: String,
    instance: String,
    key: String,
    labels: LabelSet,
    resource: Resource,
    ecm: String,
}

async fn engine_of(s: &Server, user: &str) -> EngineRec {
    let v = s.call("GET", "/linkisManager/listAllEngines", "admin", None).await;
    let e = v["data"]["engines"]
        .as_array()
        .expect("engines")
        .iter()
        .find(|e| e["owner"] == user)
        .cloned()
        .unwrap_or_else(|| panic!("no engine of {user}: {v}"));
    let pairs: Vec<String> = e["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| format!("{}={}", l["labelKey"].as_str().expect("k"), l["stringValue"].as_str().expect("v")))
        .collect();
    let labels = LabelSet::from_pairs(pairs.iter().map(String::as_str)).expect("labels");
    let r = &e["resource"];
    let memory = hangar_protocol::resource::parse_bytes(r["memory"].as_str().expect("memory")).expect("bytes");
    let resource =
        Resource::new(memory, r["cpu"].as_u64().expect("cpu") as u32, r["instance"].as_u64().expect("i") as u32);
    let (ticket, ecm) =
        (e["ticketId"].as_str().expect("t").to_string(), e["emInstance"].as_str().expect("em").to_string());
    let key = engine_key(
        RPC.as_bytes(),
        &EngineBinding {
            ticket_id: &ticket,
            user,
            labels: &labels,
            ecm_instance: &ecm,
            resource: &resource,
            cluster: None,
        },
    );
    EngineRec { ticket, instance: e["instance"].as_str().expect("instance").to_string(), key, labels, resource, ecm }
}

async fn post(url: &str, key: &str, body: &impl serde::Serialize) -> u16 {
    let r = reqwest::Client::new().post(url).header(RPC_TOKEN_HEADER, key).json(body).send().await.expect("post");
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_engine_key_acts_for_no_other_engine_job_or_user() {
    let s = server().await;
    // bob's engine exists (and its key leaks: derived here as the manager does).
    let (st, _, _) = output(&s, "bob", "echo warm").await;
    assert_eq!(st, "Succeed");
    let bob = engine_of(&s, "bob").await;
    // alice's job runs meanwhile.
    let (exec_a, task_a) = s.shell("alice", "sleep 3; echo alice-own-output").await;
    s.wait_status("alice", &exec_a, &["Running"], Duration::from_secs(20)).await;
    let alice = engine_of(&s, "alice").await;
    assert_ne!(alice.key, bob.key);

    let forged = vec![
        TaskEvent::Log { task_id: task_a, lines: vec!["forged by bob".into()] },
        TaskEvent::Status { task_id: task_a, status: JobStatus::Succeed, error: None, exit_code: None },
    ];
    let entrance = format!("{}{ENTRANCE_RPC_PATH}", s.base);
    // Task events for her task from bob's engine, and in her engine's name.
    let own = TaskEventBatch { ticket_id: bob.ticket.clone(), events: forged.clone() };
    assert_eq!(post(&entrance, &bob.key, &own).await, 403);
    let hers = TaskEventBatch { ticket_id: alice.ticket.clone(), events: forged.clone() };
    assert_eq!(post(&entrance, &bob.key, &hers).await, 401);
    assert_eq!(post(&entrance, "", &hers).await, 401);
    // Lock, Execute and Kill on her engine.
    let engine = format!("http://{}/rpc", alice.instance);
    assert_eq!(post(&engine, &bob.key, &EngineRequest::Lock { timeout_ms: 1000 }).await, 401);
    assert_eq!(post(&engine, &bob.key, &EngineRequest::Kill { task_id: task_a }).await, 401);
    let execute = hangar_protocol::rpc::TaskExecuteRequest {
        task_id: 999_999,
        exec_id: "forged".into(),
        code: "touch /tmp/forged-by-bob".into(),
        lock: "any".into(),
        run_type: "shell".into(),
        user: "alice".into(),
        properties: Default::default(),
        callback_url: s.base.clone(),
        max_result_set_bytes: 0,
        unlock_when_done: false,
    };
    assert_eq!(post(&engine, &bob.key, &EngineRequest::Execute(execute)).await, 401);
    assert_eq!(post(&engine, RPC, &EngineRequest::Kill { task_id: task_a }).await, 401);
    // Exiting, heartbeats and Rejoin for her ticket.
    let manager = format!("{}{MANAGER_RPC_PATH}", s.base);
    let exiting = EngineToManager::Exiting {
        ticket_id: alice.ticket.clone(),
        status: NodeStatus::Success,
        reason: "forged".into(),
    };
    assert_eq!(post(&manager, &bob.key, &exiting).await, 401);
    let hb = EngineToManager::Heartbeat {
        ticket_id: alice.ticket.clone(),
        status: NodeStatus::Unlock,
        metrics: EngineMetrics::default(),
    };
    assert_eq!(post(&manager, &bob.key, &hb).await, 401);
    // bob's own ticket, rejoining as alice's engine: the key binds the record.
    let rejoin = EngineToManager::Rejoin {
        ticket_id: bob.ticket.clone(),
        instance: bob.instance.clone(),
        pid: 1,
        user: "alice".into(),
        labels: alice.labels.clone(),
        resource: bob.resource,
        cluster: None,
        ecm_instance: bob.ecm.clone(),
        status: NodeStatus::Unlock,
        metrics: EngineMetrics::default(),
        rpc_version: RPC_VERSION,
        account: None,
    };
    assert_eq!(post(&manager, &bob.key, &rejoin).await, 401);
    let smaller = EngineToManager::Rejoin {
        ticket_id: bob.ticket.clone(),
        instance: bob.instance.clone(),
        pid: 1,
        user: "bob".into(),
        labels: bob.labels.clone(),
        resource: Resource::new(0, 0, 0),
        cluster: None,
        ecm_instance: bob.ecm.clone(),
        status: NodeStatus::Unlock,
        metrics: EngineMetrics::default(),
        rpc_version: RPC_VERSION,
        account: None,
    };
    assert_eq!(post(&manager, &bob.key, &smaller).await, 401);

    // alice's job ends with her own output, nothing forged, her engine alive.
    assert_eq!(s.wait_done("alice", &exec_a).await, "Succeed", "{}", s.server_log());
    let rows = s.results("alice", task_a).await;
    assert_eq!(rows[0]["fileContent"], json!([["alice-own-output"]]));
    assert!(!s.full_log("alice", &exec_a).await.contains("forged"));
    let still = s.call("GET", "/linkisManager/listAllEngines", "admin", None).await;
    assert!(still.to_string().contains(&alice.ticket), "alice's engine was stopped: {still}");
    // Her job, results and log are not bob's to read either.
    let job = s.job("alice", task_a).await;
    let other = s.call("GET", &format!("/jobhistory/{task_a}/get"), "bob", None).await;
    assert_ne!(other["status"], 0, "{other}");
    let loc = job["resultLocation"].as_str().expect("loc");
    let f = s
        .call("GET", &format!("/filesystem/openFile?path={}", common::enc(&format!("{loc}/_0.dolphin"))), "bob", None)
        .await;
    assert!(f["message"].as_str().unwrap_or_default().contains("does not exist or is not yours"), "{f}");
    let missing = s
        .call("GET", &format!("/filesystem/openFile?path={}", common::enc(&format!("{loc}/_9.dolphin"))), "bob", None)
        .await;
    assert_eq!(f["message"].as_str().map(|m| m.replace("_0", "_9")), missing["message"].as_str().map(String::from));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_run_as_unprivileged_accounts_and_cannot_reach_each_other() {
    if !root() {
        eprintln!("skipped: engines switch accounts only under a root server; CI runs as root");
        return;
    }
    let s = server().await;
    let (st, out, task_a) = output(&s, "alice", "id -u; id -un; echo alice-secret-result").await;
    assert_eq!(st, "Succeed", "{out}");
    let mut lines = out.lines();
    let uid: u32 = lines.next().expect("uid").parse().expect("number");
    assert!(uid >= 1000, "alice's engine runs as uid {uid}");
    assert_eq!(lines.next(), Some("hangar-alice"));
    let job_a = s.job("alice", task_a).await;
    let loc = job_a["resultLocation"].as_str().expect("loc").trim_start_matches("file://").to_string();
    let log_a = job_a["logPath"].as_str().expect("log").to_string();
    let alice = engine_of(&s, "alice").await;
    let d = s.data_dir.display().to_string();
    // Everything of alice's and the server's, tried from bob's job.
    let code = format!(
        "for f in {d}/hangar.db {d}/rpc-token {loc}/_0.dolphin {log_a} /proc/{pid}/environ; do cat \"$f\" 2>&1 | head -c 300; echo; done; \
         ls {d}/engineconn/alice {d}/results/alice {d}/logs 2>&1; \
         ls {d}/engineconn/alice/*/shell 2>&1; echo done",
        pid = s.pid()
    );
    let (st, out, _) = output(&s, "bob", &code).await;
    assert_eq!(st, "Succeed", "{out}");
    assert!(out.contains("done"), "{out}");
    assert!(!out.contains("alice-secret-result") && !out.contains(&alice.ticket), "bob read alice's files:\n{out}");
    for secret in secrets() {
        assert!(!out.contains(&secret), "bob read a server secret:\n{out}");
    }
    assert!(out.matches("Permission denied").count() >= 6, "{out}");

    // Token-User: root runs as an unprivileged account, never uid 0.
    let (st, out, _) = output(&s, "root", "id -u").await;
    assert_eq!(st, "Succeed");
    assert_ne!(out.trim(), "0", "a job of user 'root' ran as root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_symlinks_get_no_chown_and_no_read() {
    if !root() {
        eprintln!("skipped: needs a root server (CI runs as root)");
        return;
    }
    let s = server().await;
    let (st, out, task) = output(&s, "bob", "echo first").await;
    assert_eq!(st, "Succeed", "{out}");
    let loc =
        s.job("bob", task).await["resultLocation"].as_str().expect("loc").trim_start_matches("file://").to_string();
    let parent = std::path::Path::new(&loc).parent().expect("parent").display().to_string();
    let victim = tempfile::tempdir().expect("victim");
    std::fs::write(victim.path().join("secret"), "root-only-data").expect("w");
    // The next task's folder as a link to a root-owned folder; a link to a
    // root-only file in bob's own result folder.
    let code = format!(
        "ln -s {v} {parent}/{next}; ln -s {v}/secret {loc}/_7.dolphin; echo planted",
        v = victim.path().display(),
        next = task + 2
    );
    let (exec, _) = s.shell("bob", &code).await;
    s.wait_done("bob", &exec).await;
    let log = s.full_log("bob", &exec).await;
    assert!(log.contains("Permission denied"), "bob could write the server's result folders: {log}");
    // The next job (whose folder bob tried to plant) runs normally, in a folder of its own.
    let (st, out, _) = output(&s, "bob", "echo third").await;
    assert_eq!((st.as_str(), out.as_str()), ("Succeed", "third"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(victim.path()).expect("md").uid(), 0, "a root folder was handed to bob");
    let f = s
        .call("GET", &format!("/filesystem/openFile?path={}", common::enc(&format!("{loc}/_7.dolphin"))), "bob", None)
        .await;
    assert_ne!(f["status"], 0, "{f}");
    assert!(!f.to_string().contains("root-only-data"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_user_refuses_root_and_system_accounts() {
    if !root() {
        eprintln!("skipped: needs a root server (CI runs as root)");
        return;
    }
    let s = Server::start(&FAST.replace("[ecm]\n", "[ecm]\nrun_as = \"user\"\n")).await;
    for (user, why) in [("root", "uid 0"), ("daemon", "ecm.min_uid")] {
        let (exec, task) = s.shell(user, "id -u").await;
        assert_eq!(s.wait_done(user, &exec).await, "Failed");
        let desc: Value = s.job(user, task).await["errDesc"].clone();
        assert!(desc.as_str().unwrap_or_default().contains(why), "{user}: {desc}");
    }
}

/// A password inside a startup parameter (a JDBC URL) reaches the engine
/// only on its standard input: not its command line, environment or script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_a_startup_url_stays_off_command_lines_and_disk() {
    let s = server().await;
    let body = json!({
        "executionContent": {"code": "echo ok", "runType": "shell"},
        "params": {"configuration": {"startup": {"jdbc.url": "postgresql://u:pw-7c1e9@db.example/x?password=pw-7c1e9"}}},
        "labels": {"engineType": "shell-1", "userCreator": "bob-IDE"},
    });
    let (exec, task) = s.submit_json("bob", &body).await;
    assert_eq!(s.wait_done("bob", &exec).await, "Succeed");
    let job = s.job("bob", task).await;
    assert!(!job.to_string().contains("pw-7c1e9"), "job history: {job}");
    let wd = std::path::Path::new(job["engineLogPath"].as_str().expect("log path")).parent().expect("wd").to_path_buf();
    let script = std::fs::read_to_string(wd.join("engineConnExec.sh")).expect("script");
    assert!(script.contains("--ticket-id") && !script.contains("pw-7c1e9"), "{script}");
    for pid in common::engine_pids(&s.data_dir) {
        for f in ["cmdline", "environ"] {
            let text =
                String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default()).to_string();
            assert!(!text.contains("pw-7c1e9"), "/proc/{pid}/{f}: {text}");
        }
    }
    assert!(!s.full_log("bob", &exec).await.contains("pw-7c1e9"));
}
