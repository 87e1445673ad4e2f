//! Faults and shortages through the real binary: a shortage makes a job
//! wait (WaitForRetry, the reason in its log) instead of failing; an ask that
//! can never be served fails at once naming why; a job killed while it waits
//! leaves no engine behind.

mod common;

use std::time::{Duration, Instant};

use common::{FAST, Server};
use serde_json::json;

/// One engine slot on the only ECM, and engines that leave soon when idle.
fn one_slot() -> String {
    FAST.replace("[ecm]\n", "[ecm]\ninstances = 1\n")
        .replace("[engineconn]\n", "[engineconn]\nmax_free_time_ms = 1000\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortage_makes_a_job_wait_not_fail() {
    let s = Server::start(&one_slot()).await;
    let (a, _) = s.shell("alice", "sleep 2; echo a").await;
    s.wait_status("alice", &a, &["Running"], Duration::from_secs(20)).await;
    // bob's job needs an engine of its own: none can be had until alice's leaves.
    let (b, task_b) = s.shell("bob", "echo b").await;
    s.wait_status("bob", &b, &["WaitForRetry"], Duration::from_secs(10)).await;
    assert_eq!(s.wait_done("alice", &a).await, "Succeed");
    let st = s.wait_status("bob", &b, &["Succeed", "Failed"], Duration::from_secs(30)).await;
    assert_eq!(st, "Succeed", "{}", s.full_log("bob", &b).await);
    let log = s.full_log("bob", &b).await;
    assert!(log.contains("no engine can be had now, waiting and asking again"), "{log}");
    assert!(log.contains("instances"), "the log names what is short: {log}");
    assert_eq!(s.results("bob", task_b).await[0]["fileContent"], json!([["b"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_that_can_never_be_served_fails_at_once() {
    let s = Server::start(&FAST.replace("[ecm]\n", "[ecm]\nmemory = \"2g\"\n")).await;
    let body = json!({
        "executionContent": {"code": "echo x", "runType": "shell"},
        "params": {"configuration": {"startup": {"hangar.engineconn.memory": "64g"}}},
        "labels": {"engineType": "shell-1", "userCreator": "alice-IDE"},
    });
    let t0 = Instant::now();
    let (exec, task) = s.submit_json("alice", &body).await;
    assert_eq!(s.wait_done("alice", &exec).await, "Failed");
    assert!(t0.elapsed() < Duration::from_secs(5), "failed in {:?}", t0.elapsed());
    let desc = s.job("alice", task).await["errDesc"].as_str().unwrap_or_default().to_string();
    assert!(desc.contains("can never be served"), "{desc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_while_it_waits_for_an_engine_leaves_nothing_behind() {
    let s = Server::start(&one_slot()).await;
    let (a, _) = s.shell("alice", "sleep 3").await;
    s.wait_status("alice", &a, &["Running"], Duration::from_secs(20)).await;
    let (b, _) = s.shell("bob", "echo b").await;
    s.wait_status("bob", &b, &["WaitForRetry"], Duration::from_secs(10)).await;
    let k = s.call("GET", &format!("/entrance/{b}/kill"), "bob", None).await;
    assert_eq!(k["status"], 0, "{k}");
    assert_eq!(
        s.wait_status("bob", &b, &["Cancelled", "Failed", "Succeed"], Duration::from_secs(5)).await,
        "Cancelled"
    );
    assert_eq!(s.wait_done("alice", &a).await, "Succeed");
    // Once alice's engine has left, nothing of bob's holds a slot or resources.
    common::wait_until("engines to leave", Duration::from_secs(10), || common::engine_pids(&s.data_dir).is_empty())
        .await;
    let engines = s.call("GET", "/linkisManager/listAllEngines", "admin", None).await;
    assert_eq!(engines["data"]["engines"], json!([]), "{engines}");
    let r = s.call("GET", "/linkisManager/rm/userresources", "bob", None).await;
    assert!(!r.to_string().contains("\"instance\":1"), "bob still holds resources: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_of_the_wrong_type_are_refused_naming_them() {
    let s = Server::start(FAST).await;
    let base = json!({"executionContent": {"code": "echo x", "runType": "shell"}, "labels": {"engineType": "shell-1"}});
    for (field, value, named) in [
        ("params", json!([1]), "params must be a JSON object"),
        ("params", json!({"configuration": "x"}), "params.configuration must be a JSON object"),
        ("params", json!({"variable": [1]}), "params.variable must be a JSON object"),
        ("executeUser", json!(5), "executeUser must be a string"),
        ("source", json!("x"), "source must be a JSON object"),
    ] {
        let mut body = base.clone();
        body[field] = value;
        let v = s.call("POST", "/entrance/submit", "alice", Some(&body.to_string())).await;
        assert_eq!(v["status"], 2, "{field}: {v}");
        assert!(v["message"].as_str().unwrap_or_default().contains(named), "{field}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_log_cannot_be_written_says_so() {
    let s = Server::start(FAST).await;
    // Today's log folder cannot be made (a file is in its way).
    let day = String::from_utf8(std::process::Command::new("date").arg("+%Y-%m-%d").output().expect("date").stdout)
        .expect("utf8");
    std::fs::write(s.data_dir.join("logs").join(day.trim()), b"not a folder").expect("block");
    let (exec, task) = s.shell("alice", "echo fine").await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    let job = s.job("alice", task).await;
    let desc = job["errDesc"].as_str().unwrap_or_default();
    assert!(desc.contains("cannot open the job log"), "the job says its log was lost: {job}");
    assert!(s.server_log().contains("cannot open the job log"), "and the server log says so");
    assert_eq!(s.results("alice", task).await[0]["fileContent"], json!([["fine"]]));
}

/// The user's limit is at capacity with two running jobs when the server is
/// killed; new jobs arriving right after the restart must not take the slots
/// the running jobs' engines need to rejoin (three restarts in a row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_every_limit_at_capacity_lose_no_running_job() {
    let cfg = FAST.replace("[manager]\n", "[manager]\nuser_max_instances = 2\n");
    let mut s = Server::start(&cfg).await;
    let mut running = Vec::new();
    for i in 0..2 {
        let (exec, task) = s.shell("alice", &format!("sleep 4; echo old{i}")).await;
        running.push((exec, task, format!("old{i}")));
    }
    for (exec, _, _) in &running {
        s.wait_status("alice", exec, &["Running"], Duration::from_secs(20)).await;
    }
    let mut fresh = Vec::new();
    for round in 0..3 {
        s = s.restart().await;
        for i in 0..2 {
            let (exec, task) = s.shell("alice", &format!("echo new{round}{i}")).await;
            fresh.push((exec, task, format!("new{round}{i}")));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (exec, task, want) in running.iter().chain(fresh.iter()) {
        let st = s.wait_status("alice", exec, &["Succeed", "Failed", "Cancelled"], Duration::from_secs(60)).await;
        let job = s.job("alice", *task).await;
        // Jobs queued when the server died end with that reason; every job
        // whose engine was alive (the running ones) succeeds.
        if want.starts_with("old") {
            assert_eq!(st, "Succeed", "{want}: {job}\n{}", s.server_log());
            assert_eq!(s.results("alice", *task).await[0]["fileContent"], json!([[want]]));
        } else {
            assert!(st == "Succeed" || job["errDesc"].as_str().is_some_and(|d| !d.is_empty()), "{want}: {job}");
        }
    }
}

/// One code-size limit, at submit; below it every size runs (a shell job of
/// 3.5 MB once failed with "Argument list too long").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_up_to_the_limit_runs_and_above_it_is_refused_at_submit() {
    let s = Server::start(FAST).await;
    let filler = format!("# {}\n", "x".repeat(1000));
    let mut code = String::new();
    while code.len() < (4 << 20) - 2000 {
        code.push_str(&filler);
    }
    code.push_str("echo big-ok\n");
    let (exec, task) = s.shell("alice", &code).await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed", "{}", s.full_log("alice", &exec).await);
    assert_eq!(s.results("alice", task).await[0]["fileContent"], json!([["big-ok"]]));
    let too_big = format!("{code}{}", "# more\n".repeat(400));
    let body = json!({"executionContent": {"code": too_big, "runType": "shell"}, "labels": {"engineType": "shell-1"}});
    let v = s.call("POST", "/entrance/submit", "alice", Some(&body.to_string())).await;
    assert_eq!(v["status"], 2, "{}", v["message"]);
    assert!(
        v["message"].as_str().unwrap_or_default().contains("more than the limit of 4194304 bytes"),
        "{}",
        v["message"]
    );
}

/// A full disk: submits are refused naming the cause (nothing stored, no id
/// handed out twice), a running job ends with the reason, and once there is
/// room again everything works without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_submits_loses_nothing_and_recovers() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small file system needs root (CI runs as root)");
        return;
    }
    let mut mounted = None;
    let s = Server::start_prepared(FAST, |dir| {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|st| st.success());
        assert!(ok, "mount a tmpfs on {}", dir.display());
        mounted = Some(dir.to_path_buf());
    })
    .await;
    let dir = mounted.expect("mounted");
    let (first, first_task) = s.shell("alice", "echo before").await;
    assert_eq!(s.wait_done("alice", &first).await, "Succeed");
    let (running, running_task) = s.shell("alice", "sleep 2; echo during").await;
    s.wait_status("alice", &running, &["Running"], Duration::from_secs(20)).await;
    // Fill the disk.
    let fill = dir.join("fill");
    let _ = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", fill.display()))
        .arg("bs=64k")
        .output();
    let body =
        json!({"executionContent": {"code": "echo refused", "runType": "shell"}, "labels": {"engineType": "shell-1"}});
    for _ in 0..3 {
        let v = s.call("POST", "/entrance/submit", "alice", Some(&body.to_string())).await;
        assert_ne!(v["status"], 0, "a submit on a full disk was accepted: {v}");
        assert!(v["message"].as_str().unwrap_or_default().contains("could not be stored"), "{v}");
    }
    // Room again: the running job has an end with a reason, new jobs run,
    // and no id was handed out twice.
    std::fs::remove_file(&fill).expect("free");
    let st = s.wait_status("alice", &running, &["Succeed", "Failed"], Duration::from_secs(30)).await;
    let job = s.job("alice", running_task).await;
    assert!(st == "Succeed" || job["errDesc"].as_str().is_some_and(|d| !d.is_empty()), "{job}");
    let (after, after_task) = s.shell("alice", "echo after").await;
    assert_eq!(s.wait_done("alice", &after).await, "Succeed");
    assert!(after_task > running_task && running_task > first_task);
    assert_eq!(s.results("alice", after_task).await[0]["fileContent"], json!([["after"]]));
    drop(s);
    let _ = std::process::Command::new("umount").arg("-l").arg(&dir).status();
}

/// A SIGSTOPped engine is declared lost after three missed heartbeats; its
/// job ends then with that reason (not when the kill's grace runs out), and
/// the stopped process is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_is_lost_and_its_job_ends_at_once() {
    let s = Server::start(&FAST.replace("kill_grace_ms = 1000", "kill_grace_ms = 5000")).await;
    let (exec, task) = s.shell("alice", "sleep 30").await;
    s.wait_status("alice", &exec, &["Running"], Duration::from_secs(20)).await;
    let job = s.job("alice", task).await;
    let wd = std::path::Path::new(job["engineLogPath"].as_str().expect("log")).parent().expect("wd").to_path_buf();
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(wd.join("engine.json")).expect("engine.json")).expect("json");
    let pid = nix::unistd::Pid::from_raw(record["pid"].as_u64().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop");
    let t0 = Instant::now();
    assert_eq!(s.wait_status("alice", &exec, &["Failed", "Succeed"], Duration::from_secs(20)).await, "Failed");
    // Heartbeats every 200 ms: lost after ~600 ms, well before the 5 s grace.
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the job ended {:?} after its engine stopped\n{}",
        t0.elapsed(),
        s.server_log()
    );
    let desc = s.job("alice", task).await["errDesc"].as_str().unwrap_or_default().to_string();
    assert!(desc.contains("lost") || desc.contains("no heartbeat"), "{desc}");
    common::wait_until("the stopped engine to be killed", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
}

/// Two control planes on one PostgreSQL store: the second one's start takes
/// none of the first one's live jobs (it used to re-attach or fail every
/// unfinished job in the store); each job runs on the instance that accepted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_one_store_leaves_the_first_ones_jobs_alone() {
    let Ok(pg) = std::env::var("HANGAR_TEST_POSTGRES_URL") else {
        panic!("HANGAR_TEST_POSTGRES_URL is not set: scripts/test starts a private PostgreSQL for this test");
    };
    let db = format!("hangar_two_{}", std::process::id());
    let out = std::process::Command::new("psql").args([pg.as_str(), "-qc", &format!("create database {db}")]).output();
    assert!(out.is_ok_and(|o| o.status.success()), "cannot create {db}");
    let base = pg.rsplit_once('/').map(|(b, _)| b.to_string()).expect("url with a database");
    let store = format!("store_url = \"{base}/{db}\"");
    let a = Server::start_custom(&store, "", FAST).await;
    let (running, task_running) = a.shell("alice", "sleep 4; echo from-a").await;
    a.wait_status("alice", &running, &["Running"], Duration::from_secs(20)).await;
    let b = Server::start_custom(&store, "", FAST).await;
    assert!(!b.server_log().contains("re-attached"), "b took a's jobs: {}", b.server_log());
    // b serves its own jobs; a's job ends on a, with its own output.
    let (other, _) = b.shell("bob", "echo from-b").await;
    assert_eq!(b.wait_done("bob", &other).await, "Succeed");
    assert_eq!(a.wait_done("alice", &running).await, "Succeed", "{}", a.full_log("alice", &running).await);
    let rs = a.results("alice", task_running).await;
    assert_eq!(rs[0]["fileContent"], json!([["from-a"]]));
}
