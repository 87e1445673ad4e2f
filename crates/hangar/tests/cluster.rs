//! A control plane with several ECM processes: selection by labels and free
//! resource, precise rejections, reuse rules, engine and ECM deaths.

mod common;

use std::time::Duration;

use common::{Server, engine_pids, wait_until};
use serde_json::{Value, json};

/// Manager and ECM heartbeats fast, ECM settings per process.
const CP: &str = r#"
[manager]
engine_heartbeat_interval_ms = 200
user_max_memory = "6g"
[engineconn]
heartbeat_interval_ms = 200
orphan_timeout_ms = 3000
log_push_interval_ms = 20
[ecm]
heartbeat_interval_ms = 200
"#;

async fn wait_ecms(cp: &Server, n: usize) -> Value {
    for _ in 0..400 {
        let v = cp.call("GET", "/linkisManager/listAllEMs", "admin", None).await;
        if v["data"]["EMs"].as_array().map_or(0, Vec::len) == n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} ECMs did not register; manager log:\n{}", cp.server_log());
}

async fn run(cp: &Server, user: &str, code: &str, labels: Value, startup: Value) -> (String, Value) {
    let body = json!({"executionContent": {"code": code, "runType": "shell"}, "params": {"configuration": {"startup": startup}}, "labels": labels});
    let v = cp.call("POST", "/entrance/submit", user, Some(&body.to_string())).await;
    assert_eq!(v["status"], 0, "{v}");
    let exec = v["data"]["execID"].as_str().expect("exec").to_string();
    let status = cp.wait_done(user, &exec).await;
    let job = cp.job(user, v["data"]["taskID"].as_i64().expect("task")).await;
    (status, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ecms_selection_rejection_and_reuse() {
    let cp = Server::control_plane(CP).await;
    let a = Server::ecm(&cp, "labels = [\"tenant=t1\"]\nmemory = \"4g\"").await;
    let b = Server::ecm(&cp, "memory = \"8g\"").await;
    let c = Server::ecm(&cp, "memory = \"512m\"").await;
    wait_ecms(&cp, 3).await;
    let inst = |s: &Server| s.base.trim_start_matches("http://").to_string();
    let alice = json!({"engineType": "shell-1", "userCreator": "alice-IDE"});
    let alice_t1 = json!({"engineType": "shell-1", "userCreator": "alice-IDE", "tenant": "t1"});

    // Labels: a tenant ask lands on the tenant's ECM only.
    let (st, j) = run(&cp, "alice", "echo t1", alice_t1.clone(), json!({})).await;
    assert_eq!(st, "Succeed");
    assert_eq!(j["ecmInstance"], inst(&a), "{j}");
    // Free resource: 1g does not fit the 512m ECM, and B has the most free memory.
    let (st, j) = run(&cp, "alice", "echo big", alice.clone(), json!({"hangar.engineconn.memory": "1g"})).await;
    assert_eq!(st, "Succeed");
    assert_eq!(j["ecmInstance"], inst(&b), "{j}");
    let b_engine = j["engineInstance"].clone();
    // Reuse: same CORE labels reuse the Unlock engine (the startup memory does not matter for reuse)...
    let (_, j) = run(&cp, "alice", "echo again", alice.clone(), json!({})).await;
    assert_eq!((j["isReuse"].clone(), j["engineInstance"].clone()), (json!(true), b_engine.clone()));
    // ...and a different CORE-label set (tenant) never reuses it.
    let (_, j) = run(&cp, "alice", "echo t1 again", alice_t1.clone(), json!({})).await;
    assert_ne!(j["engineInstance"], b_engine);
    assert_eq!(j["ecmInstance"], inst(&a));

    // Asks that can never be served fail at once naming the limits; shortages
    // wait (tests/reliability.rs).
    let (st, j) = run(
        &cp,
        "alice",
        "echo huge",
        json!({"engineType": "shell-1", "userCreator": "alice-NB"}),
        json!({"hangar.engineconn.memory": "9g"}),
    )
    .await;
    assert_eq!(st, "Failed");
    let desc = j["errDesc"].as_str().expect("desc");
    assert!(desc.contains("can never be served") && desc.contains("memory 9.0 GB"), "{desc}");
    assert!(desc.contains(&format!("{}: memory 8.0 GB", inst(&b))), "the largest ECM's maximum: {desc}");
    assert!(desc.contains(&format!("{}: memory 512.0 MB", inst(&c))), "{desc}");
    assert!(!desc.contains(&inst(&a)), "the tenant ECM does not match: {desc}");
    let (st, j) = run(
        &cp,
        "alice",
        "echo over",
        json!({"engineType": "shell-1", "userCreator": "alice-NB"}),
        json!({"hangar.engineconn.memory": "7g"}),
    )
    .await;
    assert_eq!(st, "Failed");
    let desc = j["errDesc"].as_str().expect("desc");
    assert!(
        desc.contains("more than a user may hold") && desc.contains("memory 7.0 GB") && desc.contains("memory 6.0 GB"),
        "{desc}"
    );

    // Accounting per ECM is visible and consistent.
    let ems = wait_ecms(&cp, 3).await;
    let by_inst = |i: &str| {
        ems["data"]["EMs"].as_array().expect("ems").iter().find(|e| e["instance"] == i).cloned().expect("ecm")
    };
    assert_eq!(by_inst(&inst(&b))["usedResource"]["memory"], "1.0 GB");
    assert_eq!(by_inst(&inst(&a))["usedResource"]["instance"], 1);
    assert_eq!(by_inst(&inst(&c))["usedResource"]["instance"], 0);
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_and_ecm_deaths_keep_accounting_consistent() {
    let cp = Server::control_plane(CP).await;
    let mut ecm = Server::ecm(&cp, "memory = \"4g\"").await;
    wait_ecms(&cp, 1).await;
    let alice = json!({"engineType": "shell-1", "userCreator": "alice-IDE"});

    // A start failure comes back with the reason from the engine's stderr.
    let (st, j) = run(&cp, "alice", "echo", alice.clone(), json!({"hangar.engineconn.max_tasks": "many"})).await;
    assert_eq!(st, "Failed");
    assert!(j["errDesc"].as_str().expect("d").contains("hangar.engineconn.max_tasks must be a whole number"), "{j}");
    // A missing necessary environment variable is named.
    let (st, j) =
        run(&cp, "alice", "echo", alice.clone(), json!({"hangar.engineconn.required_env": "HANGAR_NOT_SET_ANYWHERE"}))
            .await;
    assert_eq!(st, "Failed");
    assert!(
        j["errDesc"].as_str().expect("d").contains("necessary environment variable HANGAR_NOT_SET_ANYWHERE is not set"),
        "{j}"
    );

    // An engine survives its ECM's SIGKILL (it talks to the manager itself)...
    let (st, j) = run(&cp, "alice", "echo one", alice.clone(), json!({})).await;
    assert_eq!(st, "Succeed");
    let engine = j["engineInstance"].clone();
    let ticket = j["ticketId"].as_str().expect("ticket").to_string();
    assert_eq!(engine_pids(&ecm.data_dir).len(), 1);
    let ecm_data = ecm.data_dir.clone();
    ecm = ecm.restart().await;
    assert_eq!(ecm.data_dir, ecm_data);
    wait_ecms(&cp, 1).await;
    let (_, j) = run(&cp, "alice", "echo two", alice.clone(), json!({})).await;
    assert_eq!((j["engineInstance"].clone(), j["isReuse"].clone()), (engine, json!(true)), "the engine served on");
    // ...and the restarted ECM re-adopted it: it reads its log and kills it.
    let v = cp
        .call(
            "GET",
            &format!("/linkisManager/openEngineLog?ticketId={ticket}&logType=stderr&fromLine=1&pageSize=5"),
            "alice",
            None,
        )
        .await;
    assert_eq!(v["status"], 0, "{v}");
    assert!(v["data"]["rows"].as_u64().expect("rows") > 0);
    let v =
        cp.call("POST", "/linkisManager/killEngineConn", "alice", Some(&json!({"ticketId": ticket}).to_string())).await;
    assert_eq!(v["status"], 0, "{v}");
    wait_until("the adopted engine to be killed", Duration::from_secs(5), || engine_pids(&ecm.data_dir).is_empty())
        .await;

    // A SIGKILLed engine is noticed and released at once.
    let (_, j) = run(&cp, "alice", "echo three", alice.clone(), json!({})).await;
    let work_dir =
        std::path::Path::new(j["metrics"]["engineLogPath"].as_str().expect("log")).parent().expect("wd").to_path_buf();
    let pid: i32 =
        serde_json::from_str::<Value>(&std::fs::read_to_string(work_dir.join("engine.json")).expect("record"))
            .expect("json")["pid"]
            .as_i64()
            .expect("pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    wait_until("resources released", Duration::from_secs(5), || {
        let r = futures_block(cp.call("GET", "/linkisManager/rm/userresources", "alice", None));
        r["data"]["userResources"][0]["usedResource"]["instance"] == 0
            && r["data"]["userResources"][0]["lockedResource"]["instance"] == 0
    })
    .await;
    let ems = cp.call("GET", "/linkisManager/listAllEMs", "admin", None).await;
    assert_eq!(ems["data"]["EMs"][0]["usedResource"]["instance"], 0, "{ems}");
    assert_eq!(ems["data"]["EMs"][0]["lockedResource"]["instance"], 0, "{ems}");
    assert!(engine_pids(&ecm.data_dir).is_empty(), "no orphans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restart_keeps_remote_engines_and_their_running_jobs() {
    let cp = Server::control_plane(CP).await;
    let ecm = Server::ecm(&cp, "memory = \"4g\"").await;
    wait_ecms(&cp, 1).await;
    let alice = json!({"engineType": "shell-1", "userCreator": "alice-IDE"});
    let body = json!({"executionContent": {"code": "sleep 2; echo survived", "runType": "shell"}, "labels": alice});
    let v = cp.call("POST", "/entrance/submit", "alice", Some(&body.to_string())).await;
    let exec = v["data"]["execID"].as_str().expect("exec").to_string();
    let task = v["data"]["taskID"].as_i64().expect("task");
    cp.wait_status("alice", &exec, &["Running"], Duration::from_secs(20)).await;
    let engine = cp.job("alice", task).await["engineInstance"].clone();

    // The control plane dies and comes back; the ECM and its engine never stopped.
    let cp = cp.restart().await;
    assert_eq!(cp.wait_done("alice", &exec).await, "Succeed", "{}", cp.server_log());
    assert_eq!(cp.results("alice", task).await[0]["fileContent"], json!([["survived"]]));
    // The engine rejoined: it is listed, charged on its ECM, and reused.
    let (st, j) = run(&cp, "alice", "echo again", alice.clone(), json!({})).await;
    assert_eq!(st, "Succeed");
    assert_eq!((j["engineInstance"].clone(), j["isReuse"].clone()), (engine, json!(true)), "{j}");
    let ems = cp.call("GET", "/linkisManager/listAllEMs", "admin", None).await;
    assert_eq!(ems["data"]["EMs"][0]["usedResource"]["instance"], 1, "{ems}");
    assert_eq!(engine_pids(&ecm.data_dir).len(), 1, "one engine, no duplicate");
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
