//! Parameter configuration end to end: saved through `saveFullTree`, read
//! back, refused out of range naming the key, applied to the next ask (engine
//! memory, idle time, the group's running maximum) under explicit startup
//! parameters, and the `hangar config` commands.

mod common;

use std::time::{Duration, Instant};

use common::{FAST, Server};
use serde_json::{Value, json};

const MEMORY: &str = "wds.linkis.engineconn.java.driver.memory";

async fn save(s: &Server, user: &str, body: Value) -> Value {
    s.call("POST", "/configuration/saveFullTree", user, Some(&body.to_string())).await
}

fn tree(creator: &str, engine: Option<&str>, settings: &[(&str, &str)]) -> Value {
    let settings: Vec<Value> = settings.iter().map(|(k, v)| json!({"key": k, "configValue": v})).collect();
    json!({"creator": creator, "engineType": engine, "fullTree": [{"name": "t", "settings": settings}]})
}

async fn setting(s: &Server, user: &str, query: &str, key: &str) -> Value {
    let v = s.call("GET", &format!("/configuration/getFullTreesByAppName?{query}"), user, None).await;
    assert_eq!(v["status"], 0, "{v}");
    v["data"]["fullTree"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["settings"].as_array().cloned().unwrap_or_default())
        .find(|x| x["key"] == key)
        .unwrap_or_else(|| panic!("{key} missing: {v}"))
}

/// The memory of `user`'s live engines of `user_creator`.
async fn engine_memory(s: &Server, user: &str, user_creator: &str) -> Vec<String> {
    let v = s.call("GET", "/linkisManager/listUserEngines", user, None).await;
    v["data"]["engines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["labels"].as_array().is_some_and(|l| l.iter().any(|l| l["stringValue"] == user_creator)))
        .map(|e| e["resource"]["memory"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn run(s: &Server, user: &str, creator: &str, code: &str, startup: Value) -> String {
    let body = json!({
        "executionContent": {"code": code, "runType": "shell"},
        "labels": {"engineType": "shell-1", "userCreator": format!("{user}-{creator}")},
        "params": {"configuration": {"startup": startup}},
    });
    s.submit_json(user, &body).await.0
}

use common::hangar_cli as hangar;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_saved_validated_and_applied_to_the_next_ask() {
    let s = Server::start(FAST).await;

    // Saved, read back; the next ask's engine has that memory.
    let v = save(&s, "alice", tree("IDE", Some("shell-1"), &[(MEMORY, "300m")])).await;
    assert_eq!(v["status"], 0, "{v}");
    let m = setting(&s, "alice", "creator=IDE&engineType=shell&version=1", MEMORY).await;
    assert_eq!((m["configValue"].as_str(), m["defaultValue"].as_str()), (Some("300m"), Some("256m")), "{m}");
    assert_eq!(m["validateType"], "Regex");
    let exec = run(&s, "alice", "IDE", "echo hi", json!({})).await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    assert_eq!(engine_memory(&s, "alice", "alice-IDE").await, ["300.0 MB"]);

    // Refused: out of range (naming the key and the range), unknown keys,
    // another user's values, a default by a non-admin.
    let v = save(&s, "alice", tree("IDE", Some("shell-1"), &[("wds.linkis.rm.instance", "500")])).await;
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(v["status"] != 0 && msg.contains("wds.linkis.rm.instance") && msg.contains("from 1 to 100"), "{v}");
    let v = save(&s, "alice", tree("IDE", Some("shell-1"), &[("spark.executor.memory", "2g")])).await;
    assert!(v["status"] != 0 && v["message"].as_str().unwrap_or_default().contains("spark.executor.memory"), "{v}");
    let mut other = tree("IDE", Some("shell-1"), &[(MEMORY, "1g")]);
    other["user"] = json!("*");
    assert_ne!(save(&s, "alice", other.clone()).await["status"], 0, "a default needs an admin");
    let v = save(&s, "admin", other).await;
    assert_eq!(v["status"], 0, "an admin saves the IDE creator's default: {v}");
    let m = setting(&s, "bob", "creator=IDE&engineType=shell-1", MEMORY).await;
    assert_eq!((m["configValue"].as_str(), m["defaultValue"].as_str()), (Some(""), Some("1g")), "{m}");

    // An explicit startup parameter wins over the configured value.
    assert_eq!(save(&s, "alice", tree("T2", Some("shell-1"), &[(MEMORY, "300m")])).await["status"], 0);
    let exec = run(&s, "alice", "T2", "echo hi", json!({MEMORY: "400m"})).await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    assert_eq!(engine_memory(&s, "alice", "alice-T2").await, ["400.0 MB"]);

    // The idle time: the engine exits a second after its job (the server's own is 5 minutes).
    let v = save(&s, "alice", tree("IDLE", Some("shell-1"), &[("wds.linkis.engineconn.max.free.time", "1s")])).await;
    assert_eq!(v["status"], 0, "{v}");
    let exec = run(&s, "alice", "IDLE", "echo hi", json!({})).await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine_memory(&s, "alice", "alice-IDLE").await.is_empty() {
        assert!(Instant::now() < deadline, "the engine did not exit when idle\n{}", s.server_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // wds.linkis.rm.instance = 1: the group's second job waits while the first runs.
    let v = save(&s, "alice", tree("Q", Some("shell-1"), &[("wds.linkis.rm.instance", "1")])).await;
    assert_eq!(v["status"], 0, "{v}");
    let first = run(&s, "alice", "Q", "sleep 2; echo one", json!({})).await;
    let second = run(&s, "alice", "Q", "echo two", json!({})).await;
    s.wait_status("alice", &first, &["Running"], Duration::from_secs(20)).await;
    for _ in 0..5 {
        let st = s.status("alice", &second).await;
        assert!(["Inited", "WaitForRetry"].contains(&st.as_str()), "second job {st} while the first runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.wait_done("alice", &first).await, "Succeed");
    assert_eq!(s.wait_done("alice", &second).await, "Succeed");

    // The CLI.
    let args = ["config", "set", "hangar.engineconn.cores", "3", "--creator", "IDE", "--engine", "shell-1"];
    let out = hangar(&s, "carol", &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = hangar(&s, "carol", &["config", "get", "hangar.engineconn.cores", "--engine", "shell-1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3", "{}", String::from_utf8_lossy(&out.stderr));
    let out = hangar(&s, "carol", &["config", "list", "--engine", "shell-1"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("KEY") && table.contains(MEMORY), "{table}");
    assert!(table.lines().any(|l| l.starts_with("hangar.engineconn.cores") && l.contains(" 3 ")), "{table}");
    let out = hangar(&s, "carol", &["config", "set", "wds.linkis.rm.instance", "0", "--engine", "shell-1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wds.linkis.rm.instance") && err.contains("from 1 to 100"), "{err}");
    let out = hangar(&s, "carol", &["config", "get", "no.such.key"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no.such.key"));
    let out = hangar(&s, "carol", &["config", "get", "wds.linkis.rm.instance"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10", "the global default is the server's");
}
