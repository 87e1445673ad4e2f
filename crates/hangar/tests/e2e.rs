//! End-to-end tests through the real `hangar serve` binary and real engine processes.

mod common;

use std::time::{Duration, Instant};

use common::{FAST, Server, enc, engine_pids, wait_until};

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    )
}
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_jobs_reuse_the_engine_and_shutdown_leaves_nothing() {
    let mut s = Server::start(FAST).await;
    let (e1, t1) = s.shell("alice", "echo one; echo 'two, with comma'").await;
    assert_eq!(s.wait_done("alice", &e1).await, "Succeed");
    let rs = s.results("alice", t1).await;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0]["type"], "1");
    assert_eq!(rs[0]["fileContent"], json!([["one"], ["two, with comma"]]));
    assert_eq!(rs[0]["totalLine"], 2);

    let (e2, t2) = s.shell("alice", "echo again").await;
    assert_eq!(s.wait_done("alice", &e2).await, "Succeed");
    let (j1, j2) = (s.job("alice", t1).await, s.job("alice", t2).await);
    assert_eq!(j1["isReuse"], false);
    assert_eq!(j2["isReuse"], true, "second job must reuse: {j2}");
    assert_eq!(j1["engineInstance"], j2["engineInstance"]);
    assert_eq!(j2["status"], "Succeed");
    assert_eq!(j2["umUser"], "alice");
    assert!(j2["createdTime"].is_i64() && j2["updatedTime"].is_i64());
    assert_eq!(j2["strongerExecId"], e2);

    // Another userCreator gets its own engine.
    let (e3, t3) = s.shell("bob", "echo bob").await;
    assert_eq!(s.wait_done("bob", &e3).await, "Succeed");
    let j3 = s.job("bob", t3).await;
    assert_ne!(j3["engineInstance"], j1["engineInstance"]);
    assert_eq!(j3["isReuse"], false);
    // Same user, other creator: other engine too.
    let (e4, t4) = s.submit("alice", "echo nb", json!({"engineType": "shell-1", "userCreator": "alice-NB"})).await;
    assert_eq!(s.wait_done("alice", &e4).await, "Succeed");
    assert_ne!(s.job("alice", t4).await["engineInstance"], j1["engineInstance"]);

    assert_eq!(engine_pids(&s.data_dir).len(), 3, "three engines run");
    let st = s.stop();
    assert!(st.success(), "clean exit: {st:?}");
    assert!(
        common::engine_processes(&s.data_dir).is_empty(),
        "no engine process (nor spare shell) left after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_in_the_envelope() {
    let s = Server::start(FAST).await;
    let post = |body: &'static str| s.call("POST", "/entrance/submit", "alice", Some(body));
    for (body, want_status, needle) in [
        ("{not json", 2, "not valid JSON"),
        ("", 2, "empty"),
        ("[1,2]", 2, "JSON object"),
        (r#"{"executionContent":{"code":"echo","runType":"shell"}}"#, 2, "labels is null"),
        (r#"{"executionContent":{"code":"echo","runType":"shell"},"labels":{}}"#, 2, "labels is null"),
        (
            r#"{"executionContent":{"code":"echo","runType":"shell"},"labels":{"userCreator":"alice-IDE"}}"#,
            2,
            "engineType is required",
        ),
        (
            r#"{"executionContent":{"code":"echo","runType":"shell"},"labels":{"engineType":"shell"}}"#,
            2,
            "<type>-<version>",
        ),
        (
            r#"{"executionContent":{"code":"echo","runType":"shell"},"labels":{"engineType":"shell-1","userCreator":"alice"}}"#,
            2,
            "exactly one '-'",
        ),
        (
            r#"{"executionContent":{"code":"echo","runType":"sql"},"labels":{"engineType":"hive-2.3.3"}}"#,
            2,
            "unknown engine type 'hive-2.3.3'; available: shell-1",
        ),
        (
            r#"{"executionContent":{"code":"echo","runType":"shell"},"labels":{"engineType":"shell-9"}}"#,
            2,
            "no version '9'",
        ),
        (r#"{"executionContent":{"code":"   \n ","runType":"shell"},"labels":{"engineType":"shell-1"}}"#, 2, "blank"),
        (r#"{"executionContent":{"runType":"shell"},"labels":{"engineType":"shell-1"}}"#, 2, "code is required"),
        (r#"{"executionContent":{"code":"echo"},"labels":{"engineType":"shell-1"}}"#, 2, "runType"),
        (
            r#"{"executionContent":{"code":"echo","runType":"python"},"labels":{"engineType":"shell-1"}}"#,
            2,
            "does not run codeType 'python'",
        ),
        (
            r#"{"executionContent":{"code":"echo","runType":"shell"},"labels":{"engineType":"shell-1","userCreator":"bob-IDE"}}"#,
            3,
            "names user 'bob'",
        ),
        (
            r#"{"executionContent":{"code":"echo","runType":"shell"},"labels":{"engineType":"shell-1"},"executeUser":"bob"}"#,
            3,
            "may not execute as 'bob'",
        ),
        (
            r#"{"executionContent":{"code":"echo","runType":"shell"},"labels":{"engineType":"shell-1","emInstance":"x"}}"#,
            2,
            "set by the manager",
        ),
    ] {
        let v = post(body).await;
        assert_eq!(v["status"], want_status, "{body} -> {v}");
        let msg = v["message"].as_str().expect("message");
        assert!(msg.contains(needle), "{body}: message '{msg}' lacks '{needle}'");
        assert_eq!(v["method"], "/api/entrance/submit");
    }
    // Huge code.
    let huge = json!({"executionContent": {"code": "x".repeat(5 << 20), "runType": "shell"}, "labels": {"engineType": "shell-1"}}).to_string();
    let v = s.call("POST", "/entrance/submit", "alice", Some(&huge)).await;
    assert_eq!(v["status"], 2, "{}", v["message"]);
    assert!(v["message"].as_str().expect("m").contains("more than the limit"));

    // Unknown ids.
    for path in [
        "/entrance/exec_id018014linkis-cg-entrance127.0.0.1:9001IDE_alice_shell_999/status",
        "/entrance/nonsense/status",
        "/entrance/nonsense/log",
        "/jobhistory/999/get",
        "/jobhistory/abc/get",
        "/no/such/api",
    ] {
        let v = s.call("GET", path, "alice", None).await;
        assert_eq!(v["status"], 1, "{path} -> {v}");
        assert!(!v["message"].as_str().expect("m").is_empty());
    }

    // Auth: no token, bad token, wrong user name.
    for auth in [None, Some(("alice", "wrong")), Some(("../x", common::TOKEN))] {
        let v = s.call_with("GET", "/jobhistory/1/get", auth, None).await;
        assert_eq!(v["status"], -1, "{auth:?} -> {v}");
    }

    // Another user's job, log and result folder are refused; traversal too.
    let (exec, task) = s.shell("alice", "echo secret").await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    for path in [
        format!("/entrance/{exec}/status"),
        format!("/entrance/{exec}/log"),
        format!("/jobhistory/{task}/get"),
        format!("/entrance/{exec}/kill"),
    ] {
        let v = s.call("GET", &path, "mallory", None).await;
        assert_eq!(v["status"], 3, "{path} -> {v}");
    }
    let loc = s.job("alice", task).await["resultLocation"].as_str().expect("loc").to_string();
    let results_root = s.data_dir.join("results");
    for p in [
        loc.clone(),
        format!("{}/mallory/../alice", results_root.display()),
        "/etc/passwd".to_string(),
        format!("file://{}/../hangar.db", results_root.display()),
    ] {
        let v = s.call("GET", &format!("/filesystem/getDirFileTrees?path={}", enc(&p)), "mallory", None).await;
        assert!(v["status"] == 3 || v["status"] == 1, "{p} -> {v}");
        let v = s.call("GET", &format!("/filesystem/openFile?path={}/_0.dolphin", enc(&p)), "mallory", None).await;
        assert_ne!(v["status"], 0, "{p} -> {v}");
    }
    // The admin may read it.
    let v = s.call("GET", &format!("/filesystem/getDirFileTrees?path={}", enc(&loc)), "admin", None).await;
    assert_eq!(v["status"], 0, "{v}");
    // Nothing stored was damaged by all that.
    assert_eq!(s.job("alice", task).await["status"], "Succeed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_long_task_cancels_it_fast_and_the_engine_serves_the_next() {
    let s = Server::start(FAST).await;
    let (exec, task) = s.shell("alice", "echo start; sleep 60 & wait").await;
    s.wait_status("alice", &exec, &["Running"], Duration::from_secs(20)).await;
    let engine = s.job("alice", task).await["engineInstance"].clone();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let v = s.call("GET", &format!("/entrance/{exec}/kill"), "alice", None).await;
    assert_eq!(v["status"], 0, "{v}");
    assert!(v["message"].as_str().expect("m").contains("Successfully killed"));
    assert_eq!(s.wait_done("alice", &exec).await, "Cancelled");
    assert!(t0.elapsed() < Duration::from_secs(1), "kill took {:?}", t0.elapsed());
    // No sleep left behind.
    wait_until("task processes gone", Duration::from_secs(3), || {
        engine_pids(&s.data_dir)
            .iter()
            .all(|p| !std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().starts_with("sleep"))
    })
    .await;
    let (e2, t2) = s.shell("alice", "echo after").await;
    assert_eq!(s.wait_done("alice", &e2).await, "Succeed");
    assert_eq!(s.job("alice", t2).await["engineInstance"], engine, "same engine serves the next job");
    // The log was kept and is split by level.
    let v = s.call("GET", &format!("/entrance/{exec}/log?fromLine=0&size=-1"), "alice", None).await;
    let all = v["data"]["log"][3].as_str().expect("all");
    assert!(all.contains("kill requested"), "{all}");
    assert!(v["data"]["log"][1].as_str().expect("warn").contains("kill requested"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_engine_fails_its_job_with_the_engine_named_and_is_replaced() {
    let s = Server::start(FAST).await;
    let marker = std::env::temp_dir().join(format!("hangar-marker-{}", uuid_like()));
    let (exec, task) = s.shell("alice", &format!("sleep 3; touch {}", marker.display())).await;
    s.wait_status("alice", &exec, &["Running"], Duration::from_secs(20)).await;
    let job = s.job("alice", task).await;
    let instance = job["engineInstance"].as_str().expect("instance").to_string();
    let log_dir = job["metrics"]["engineLogPath"].as_str().expect("engineLogPath").to_string();
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(&log_dir).parent().expect("wd").join("engine.json"))
            .expect("engine.json"),
    )
    .expect("json");
    let pid = record["pid"].as_u64().expect("pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let t0 = Instant::now();
    assert_eq!(s.wait_done("alice", &exec).await, "Failed");
    assert!(t0.elapsed() < Duration::from_secs(3), "noticed in {:?}", t0.elapsed());
    let job = s.job("alice", task).await;
    let desc = job["errDesc"].as_str().expect("errDesc");
    assert!(desc.contains(&instance), "errDesc names the engine: {desc}");
    assert!(desc.contains("signal 9"), "errDesc says how it died: {desc}");
    // The task the engine had started dies with it: no process left, no marker.
    wait_until("the task's processes to end", Duration::from_secs(3), || engine_pids(&s.data_dir).is_empty()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!marker.exists(), "the task of a SIGKILLed engine kept running");
    let (e2, t2) = s.shell("alice", "echo fresh").await;
    assert_eq!(s.wait_done("alice", &e2).await, "Succeed");
    assert_ne!(s.job("alice", t2).await["engineInstance"].as_str(), Some(instance.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_manager_is_gone_exits_by_itself() {
    let mut s = Server::start(FAST).await;
    let (exec, _) = s.shell("alice", "echo hi").await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    let engines = engine_pids(&s.data_dir);
    assert_eq!(engines.len(), 1);
    s.kill9();
    // orphan_timeout_ms = 2000 in FAST.
    wait_until("the orphaned engine to exit", Duration::from_secs(8), || engine_pids(&s.data_dir).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_engine_exits_and_gives_its_resources_back() {
    let s = Server::start(&FAST.replace("[engineconn]\n", "[engineconn]\nmax_free_time_ms = 500\n")).await;
    let (exec, _) = s.shell("alice", "true").await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    wait_until("the idle engine to exit", Duration::from_secs(8), || engine_pids(&s.data_dir).is_empty()).await;
    let (e2, t2) = s.shell("alice", "echo new").await;
    assert_eq!(s.wait_done("alice", &e2).await, "Succeed");
    assert_eq!(s.job("alice", t2).await["isReuse"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reattaches_running_jobs_and_queues_waiting_ones_again() {
    let s =
        Server::start(&format!("{FAST}\n[entrance]\nmax_running_per_group = 1\nreattach_timeout_ms = 15000\n")).await;
    let (done, done_task) = s.shell("alice", "echo kept").await;
    assert_eq!(s.wait_done("alice", &done).await, "Succeed");
    // One job runs across the restart; one waits behind it in its group (max 1 running).
    let (long, long_task) = s.shell("alice", "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done").await;
    s.wait_status("alice", &long, &["Running"], Duration::from_secs(20)).await;
    let (queued, queued_task) = s.shell("alice", "echo queued-across-the-restart").await;
    // Another user's job whose engine dies while the server is down.
    let (doomed, doomed_task) = s.shell("bob", "sleep 30").await;
    s.wait_status("bob", &doomed, &["Running"], Duration::from_secs(20)).await;
    let doomed_pid = {
        let ticket = s.job("bob", doomed_task).await["ticketId"].as_str().expect("ticket").to_string();
        let dir =
            std::fs::read_dir(s.data_dir.join("engineconn/bob")).expect("bob").flatten().next().expect("day").path();
        let json = std::fs::read_to_string(dir.join("shell").join(&ticket).join("engine.json")).expect("engine.json");
        serde_json::from_str::<serde_json::Value>(&json).expect("json")["pid"].as_i64().expect("pid") as i32
    };
    let mut s = s;
    s.kill9();
    // The shell engine's process group: the engine and its `sleep`.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(doomed_pid), nix::sys::signal::Signal::SIGKILL);
    let s = s.restart().await;

    // The running job was re-attached and finished on its engine, every tick in its result.
    let st = s.wait_done("alice", &long).await;
    if st != "Succeed" {
        let job = s.job("alice", long_task).await;
        let ticket = job["ticketId"].as_str().unwrap_or_default().to_string();
        let mut stderr = String::new();
        for e in walk(&s.data_dir.join("engineconn")) {
            if e.to_string_lossy().contains(&ticket) && e.ends_with("stderr") {
                stderr = std::fs::read_to_string(&e).unwrap_or_default();
            }
        }
        panic!("{job}\nengine stderr:\n{stderr}\nserver:\n{}", s.server_log());
    }
    let ticks: Vec<String> = (1..=6).map(|i| format!("tick {i}")).collect();
    let rs = s.results("alice", long_task).await;
    assert_eq!(rs[0]["fileContent"], json!(ticks.iter().map(|t| vec![t.clone()]).collect::<Vec<_>>()));
    let all = s.full_log("alice", &long).await;
    assert!(all.contains("re-attaching to engine") && all.contains("re-attached: the task is Running"), "{all}");
    let job = s.job("alice", long_task).await;
    assert_eq!(job["status"], "Succeed", "{job}");
    // The queued job had no engine yet: it was queued again and ran.
    assert_eq!(s.wait_done("alice", &queued).await, "Succeed", "{}", s.full_log("alice", &queued).await);
    assert_eq!(s.results("alice", queued_task).await[0]["fileContent"], json!([["queued-across-the-restart"]]));
    assert!(s.full_log("alice", &queued).await.contains("it is queued again"));
    // The job whose engine died while the server was down: Failed, naming its engine.
    assert_eq!(s.wait_done("bob", &doomed).await, "Failed");
    let desc = s.job("bob", doomed_task).await["errDesc"].as_str().expect("d").to_string();
    assert!(desc.contains("ended while the server was down") || desc.contains("did not come back"), "{desc}");
    // Earlier results intact; the rejoined engine serves new jobs (reused, not a new one).
    assert_eq!(s.job("alice", done_task).await["status"], "Succeed");
    assert_eq!(s.results("alice", done_task).await[0]["fileContent"], json!([["kept"]]));
    let (again, again_task) = s.shell("alice", "echo after").await;
    assert_eq!(s.wait_done("alice", &again).await, "Succeed");
    let job = s.job("alice", again_task).await;
    assert_eq!(job["isReuse"], true, "{job}");
    let engines = s.call("GET", "/linkisManager/listUserEngines", "alice", None).await;
    assert_eq!(engines["data"]["engines"].as_array().map(Vec::len), Some(1), "{engines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_start_failure_reaches_the_client_with_its_reason() {
    let s = Server::start(FAST).await;
    let body = json!({
        "executionContent": {"code": "echo never", "runType": "shell"},
        "params": {"configuration": {"startup": {"hangar.shell.working_dir": "/no/such/folder"}}},
        "labels": {"engineType": "shell-1", "userCreator": "alice-IDE"},
    });
    let v = s.call("POST", "/entrance/submit", "alice", Some(&body.to_string())).await;
    let (exec, task) =
        (v["data"]["execID"].as_str().expect("exec").to_string(), v["data"]["taskID"].as_i64().expect("task"));
    assert_eq!(s.wait_done("alice", &exec).await, "Failed");
    let desc = s.job("alice", task).await["errDesc"].as_str().expect("errDesc").to_string();
    assert!(desc.contains("/no/such/folder") && desc.contains("failed to start"), "{desc}");
    // Its reservation came back: the user's resources are all free again.
    let r = s.call("GET", "/linkisManager/rm/userresources", "alice", None).await;
    assert_eq!(r["data"]["userResources"][0]["lockedResource"]["instance"], 0, "{r}");
    assert_eq!(r["data"]["userResources"][0]["usedResource"]["instance"], 0, "{r}");
    assert!(engine_pids(&s.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_engine_runs_jobs_side_by_side_and_execute_once_engines_retire() {
    let s = Server::start(FAST).await;
    let labels = json!({"engineType": "shell-1", "userCreator": "alice-IDE"});
    let body = |code: &str| {
        json!({
            "executionContent": {"code": code, "runType": "shell"},
            "params": {"configuration": {"startup": {"hangar.engineconn.concurrency": "3"}}},
            "labels": labels,
        })
        .to_string()
    };
    // Warm one concurrent engine, then run three one-second jobs on it at once.
    let v = s.call("POST", "/entrance/submit", "alice", Some(&body("echo warm"))).await;
    assert_eq!(s.wait_done("alice", v["data"]["execID"].as_str().expect("e")).await, "Succeed");
    let t0 = Instant::now();
    let mut jobs = Vec::new();
    for i in 0..3 {
        let v = s.call("POST", "/entrance/submit", "alice", Some(&body(&format!("sleep 1; echo {i}")))).await;
        jobs.push((v["data"]["execID"].as_str().expect("e").to_string(), v["data"]["taskID"].as_i64().expect("t")));
    }
    let mut instances = std::collections::HashSet::new();
    for (e, t) in &jobs {
        assert_eq!(s.wait_done("alice", e).await, "Succeed");
        instances.insert(s.job("alice", *t).await["engineInstance"].as_str().expect("i").to_string());
    }
    assert!(t0.elapsed() < Duration::from_millis(2900), "ran side by side: {:?}", t0.elapsed());
    assert_eq!(instances.len(), 1, "one engine served all three: {instances:?}");

    // executeOnce: a fresh engine that exits after its task.
    let before = engine_pids(&s.data_dir).len();
    let (e, t) = s
        .submit("alice", "echo once", json!({"engineType": "shell-1", "userCreator": "alice-IDE", "executeOnce": ""}))
        .await;
    assert_eq!(s.wait_done("alice", &e).await, "Succeed");
    assert_eq!(s.job("alice", t).await["isReuse"], false);
    wait_until("the executeOnce engine to exit", Duration::from_secs(5), || engine_pids(&s.data_dir).len() == before)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_file_reads_table_result_sets_with_types_nulls_and_pages() {
    use hangar_protocol::dolphin::{Column, TABLE, header, table_meta, table_row};
    let s = Server::start(FAST).await;
    let (exec, task) = s.shell("alice", "echo x").await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    let loc = s.job("alice", task).await["resultLocation"].as_str().expect("loc").to_string();
    let dir = std::path::PathBuf::from(loc.strip_prefix("file://").expect("file uri"));
    let cols = vec![
        Column { name: "id".into(), data_type: "int".into(), comment: "NULL".into() },
        Column { name: "name".into(), data_type: "string".into(), comment: "who".into() },
        Column { name: "score".into(), data_type: "double".into(), comment: "NULL".into() },
    ];
    let mut f = header(TABLE);
    f.extend(table_meta(&cols));
    let rows: Vec<[Option<&str>; 3]> = vec![
        [Some("1"), Some(""), Some("1.5")],
        [Some("2"), None, Some("2.0")],
        [Some("3"), Some("a,b\nc"), None],
        [Some("4"), Some("中文 ünï 🚀"), Some("-0.1")],
        [Some("5"), Some("last"), Some("5")],
    ];
    for r in &rows {
        f.extend(table_row(r));
    }
    std::fs::write(dir.join("_1.dolphin"), f).expect("write");
    let path = enc(&format!("file://{}", dir.join("_1.dolphin").display()));
    let v = s
        .call(
            "GET",
            &format!("/filesystem/openFile?path={path}&page=1&pageSize=3&nullValue=LINKIS_NULL"),
            "alice",
            None,
        )
        .await;
    assert_eq!(v["status"], 0, "{v}");
    let d = &v["data"];
    assert_eq!(d["type"], "2");
    assert_eq!(
        d["metadata"],
        json!([
            {"columnName": "id", "comment": "NULL", "dataType": "int"},
            {"columnName": "name", "comment": "who", "dataType": "string"},
            {"columnName": "score", "comment": "NULL", "dataType": "double"},
        ])
    );
    assert_eq!(
        d["fileContent"],
        json!([["1", "", "1.5"], ["2", "LINKIS_NULL", "2.0"], ["3", "a,b\nc", "LINKIS_NULL"]])
    );
    assert_eq!((d["totalLine"].as_i64(), d["totalPage"].as_i64(), d["page"].as_i64()), (Some(5), Some(2), Some(1)));
    let v = s.call("GET", &format!("/filesystem/openFile?path={path}&page=2&pageSize=3"), "alice", None).await;
    assert_eq!(v["data"]["fileContent"], json!([["4", "中文 ünï 🚀", "-0.1"], ["5", "last", "5"]]));
    // The tree lists both result sets, in order.
    let tree = s.call("GET", &format!("/filesystem/getDirFileTrees?path={}", enc(&loc)), "alice", None).await;
    let names: Vec<&str> = tree["data"]["dirFileTrees"]["children"]
        .as_array()
        .expect("c")
        .iter()
        .map(|c| c["name"].as_str().expect("n"))
        .collect();
    assert_eq!(names, vec!["_0.dolphin", "_1.dolphin"]);
    // A corrupt file is an error, not a crash.
    std::fs::write(dir.join("_2.dolphin"), b"dolphin0000000002garbage").expect("w");
    let v = s
        .call(
            "GET",
            &format!("/filesystem/openFile?path={}", enc(&format!("{}/_2.dolphin", dir.display()))),
            "alice",
            None,
        )
        .await;
    assert_eq!(v["status"], 1, "{v}");
    assert!(v["message"].as_str().expect("m").contains("corrupt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queueing_and_running_timeouts_from_labels() {
    let s = Server::start(&format!("{FAST}\n[entrance]\nmax_running_per_group = 1\n")).await;
    let t0 = Instant::now();
    let (slow, slow_task) =
        s.submit("alice", "sleep 30", json!({"engineType": "shell-1", "jobRunningTimeout": "1"})).await;
    s.wait_status("alice", &slow, &["Running"], Duration::from_secs(20)).await;
    // The group runs one job at a time: this one waits, and gives up after 0.3 s.
    let (queued, queued_task) =
        s.submit("alice", "echo never", json!({"engineType": "shell-1", "jobQueuingTimeout": "0.3"})).await;
    assert_eq!(s.wait_done("alice", &queued).await, "Timeout");
    assert!(s.job("alice", queued_task).await["errDesc"].as_str().expect("d").contains("jobQueuingTimeout"));
    assert_eq!(s.wait_done("alice", &slow).await, "Timeout");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(s.job("alice", slow_task).await["errDesc"].as_str().expect("d").contains("jobRunningTimeout = 1 s"));
    // The engine stopped the task and serves the next job.
    let (next, _) = s.shell("alice", "echo next").await;
    assert_eq!(s.wait_done("alice", &next).await, "Succeed");
    let v = s
        .call("POST", "/entrance/submit", "alice", Some(r#"{"executionContent":{"code":"echo","runType":"shell"},"labels":{"engineType":"shell-1","jobRunningTimeout":"soon"}}"#))
        .await;
    assert_eq!(v["status"], 2);
    assert!(v["message"].as_str().expect("m").contains("jobRunningTimeout must be a positive number"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_retire_after_max_tasks_and_full_queues_refuse_clearly() {
    let s = Server::start(&FAST.replace("[engineconn]\n", "[engineconn]\nmax_tasks = 2\n")).await;
    let mut engines = Vec::new();
    for i in 0..3 {
        let (e, t) = s.shell("alice", &format!("echo {i}")).await;
        assert_eq!(s.wait_done("alice", &e).await, "Succeed");
        engines.push(s.job("alice", t).await["engineInstance"].clone());
    }
    assert_eq!(engines[0], engines[1], "the first engine serves two tasks");
    assert_ne!(engines[1], engines[2], "then retires");
    drop(s);

    let s = Server::start(&format!("{FAST}\n[entrance]\nmax_running_per_group = 1\nmax_queued_per_group = 1\n")).await;
    let (running, _) = s.shell("alice", "sleep 30").await;
    s.wait_status("alice", &running, &["Running"], Duration::from_secs(20)).await;
    let (_queued, _) = s.shell("alice", "echo waiting").await;
    let body = json!({"executionContent": {"code": "echo", "runType": "shell"}, "labels": {"engineType": "shell-1"}})
        .to_string();
    let v = s.call("POST", "/entrance/submit", "alice", Some(&body)).await;
    assert_eq!(v["status"], 1, "{v}");
    assert!(v["message"].as_str().expect("m").contains("queue of group IDE_alice_shell is full"), "{v}");
    // Another user's group is not affected.
    let (other, _) = s.shell("bob", "echo free").await;
    assert_eq!(s.wait_done("bob", &other).await, "Succeed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_engine_kills_every_process_it_started() {
    let s = Server::start(FAST).await;
    // A task that escapes its process group and session on purpose.
    let (exec, task) = s.shell("alice", "setsid sleep 300 & sleep 300 & echo started; wait").await;
    s.wait_status("alice", &exec, &["Running"], Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticket = s.job("alice", task).await["ticketId"].as_str().expect("ticket").to_string();
    let tagged = || common::engine_pids(&s.data_dir);
    assert!(tagged().len() >= 4, "engine, bash and two sleeps: {:?}", tagged());
    let v =
        s.call("POST", "/linkisManager/killEngineConn", "alice", Some(&json!({"ticketId": ticket}).to_string())).await;
    assert_eq!(v["status"], 0, "{v}");
    wait_until("every process of the engine to be gone", Duration::from_secs(10), || tagged().is_empty()).await;
    assert_eq!(s.wait_done("alice", &exec).await, "Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_launch_command_fails_the_job_with_the_stderr_tail() {
    let s = Server::start(FAST).await;
    let dir = tempfile::tempdir().expect("tmp");
    let not_a_program = dir.path().join("not-a-program");
    std::fs::write(&not_a_program, "just text").expect("write");
    let body = json!({
        "executionContent": {"code": "select 1", "runType": "sql"},
        "params": {"configuration": {"startup": {"hangar.sql.engine_binary": not_a_program.display().to_string()}}},
        "labels": {"engineType": "datafusion-1", "userCreator": "alice-IDE"},
    });
    let v = s.call("POST", "/entrance/submit", "alice", Some(&body.to_string())).await;
    assert_eq!(v["status"], 0, "{v}");
    let (exec, task) = (v["data"]["execID"].as_str().expect("e").to_string(), v["data"]["taskID"].as_i64().expect("t"));
    assert_eq!(s.wait_done("alice", &exec).await, "Failed");
    let desc = s.job("alice", task).await["errDesc"].as_str().expect("errDesc").to_string();
    assert!(
        desc.contains("exit code 126") && desc.contains("last stderr lines") && desc.contains("Permission denied"),
        "{desc}"
    );
    assert!(desc.contains("logs: ") && desc.contains("a retry will likely fail the same way"), "{desc}");
    let r = s.call("GET", "/linkisManager/rm/userresources", "alice", None).await;
    assert_eq!(r["data"]["userResources"][0]["lockedResource"]["instance"], 0, "released: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_run_as_their_os_user_when_the_ecm_is_root() {
    let user = "hangarrun1";
    if !common::os_user(user) {
        return;
    }
    let s = Server::start(&FAST.replace("[ecm]\n", "[ecm]\nrun_as = \"user\"\n")).await;
    // The test's temp folder is private; let the engine's user through it.
    use std::os::unix::fs::PermissionsExt;
    let root = s.data_dir.parent().expect("tmp root");
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (exec, task) = s.shell(user, "id -un; echo written > $TMPDIR/f && cat $TMPDIR/f").await;
    assert_eq!(s.wait_done(user, &exec).await, "Succeed", "{}", s.server_log());
    assert_eq!(s.results(user, task).await[0]["fileContent"], json!([[user], ["written"]]));
    let (exec, task) = s.shell("nosuchuserx", "id -un").await;
    assert_eq!(s.wait_done("nosuchuserx", &exec).await, "Failed");
    let desc = s.job("nosuchuserx", task).await["errDesc"].as_str().expect("d").to_string();
    assert!(desc.contains("OS user 'nosuchuserx' does not exist"), "{desc}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
