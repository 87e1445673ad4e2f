//! Several control-plane instances on one PostgreSQL: three `hangar serve
//! --roles entrance,manager`, two ECM processes given all three URLs, and a
//! mixed shell/Python load submitted to any live instance while the
//! instances are killed -9 one at a time and restarted. Every accepted job
//! ends, none runs twice, no engine process is left, the ECMs hold nothing
//! once the engines are gone. `HANGAR_TEST_CP_JOBS` sets the job count (300).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ECM_TOKEN, RPC_SECRET, Server, TOKEN};
use serde_json::{Value, json};

/// A fresh database on the test PostgreSQL, or None (the test is skipped).
fn fresh_database() -> Option<String> {
    let url = std::env::var("HANGAR_TEST_POSTGRES_URL").ok()?;
    let db = format!(
        "hangar_cp_{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("t").as_nanos()
    );
    let out = std::process::Command::new("psql").args([url.as_str(), "-qc", &format!("create database {db}")]).output();
    assert!(out.is_ok_and(|o| o.status.success()), "cannot create database {db}");
    let base = url.rsplit_once('/').map(|(b, _)| b.to_string()).expect("url with a database");
    Some(format!("{base}/{db}"))
}

const PLANE: &str = r#"
[manager]
engine_heartbeat_interval_ms = 200
engine_start_timeout_ms = 30000
leader_lease_ms = 1500
user_max_instances = 2
[engineconn]
heartbeat_interval_ms = 200
running_info_interval_ms = 200
log_push_interval_ms = 50
orphan_timeout_ms = 20000
max_free_time_ms = 4000
[entrance]
job_lease_ms = 3000
max_running_per_group = 3
ask_timeout_ms = 60000
reattach_timeout_ms = 30000
"#;

/// REST calls to whichever instance is up (never panics).
#[derive(Clone)]
struct Client {
    bases: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, method: &str, path: &str, user: &str, body: Option<&Value>, start: usize) -> Option<Value> {
        let bases = self.bases.lock().expect("bases").clone();
        for i in 0..bases.len() {
            let base = &bases[(start + i) % bases.len()];
            let url = format!("{base}/api/rest_j/v1{path}");
            let req = match method {
                "POST" => self.http.post(&url).json(body.unwrap_or(&json!({}))),
                _ => self.http.get(&url),
            };
            let Ok(r) = req.header("Token-User", user).header("Token-Code", TOKEN).send().await else { continue };
            if r.status().is_server_error() {
                continue;
            }
            if let Ok(v) = r.json::<Value>().await {
                return Some(v);
            }
        }
        None
    }
}

/// An accepted job: user, taskID, execID, its number in the load.
type Accepted = (String, i64, String, usize);

fn engine_processes(dirs: &[&Path]) -> usize {
    dirs.iter().map(|d| common::engine_pids(d).len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_lose_nothing_while_killed_one_at_a_time() {
    let Some(store) = fresh_database() else {
        eprintln!("skipped: HANGAR_TEST_POSTGRES_URL is not set (scripts/test sets it)");
        return;
    };
    let jobs: usize = std::env::var("HANGAR_TEST_CP_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let shared = tempfile::tempdir().expect("shared dir");
    // Each job notes here that it ran (a job run twice notes it twice).
    let runs = tempfile::tempdir().expect("runs dir");
    std::fs::set_permissions(runs.path(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).expect("mode");
    let keys = format!(
        "roles = \"entrance,manager\"\nstore_url = \"{store}\"\nshared_dir = \"{}\"",
        shared.path().join("jobs").display()
    );
    let auth = format!("rpc_token = \"{RPC_SECRET}\"\necm_token = \"{ECM_TOKEN}\"");
    let mut planes = Vec::new();
    for _ in 0..3 {
        planes.push(Server::start_custom(&keys, &auth, PLANE).await);
    }
    let urls: Vec<String> = planes.iter().map(|p| p.base.clone()).collect();
    let ecm_keys = format!("roles = \"ecm\"\nmanager_url = \"{}\"", urls.join(","));
    let ecm_extra =
        "[ecm]\nheartbeat_interval_ms = 200\nkill_grace_ms = 1000\ninstances = 40\nprotected_load = 1000.0\n";
    let mut ecms = Vec::new();
    for _ in 0..2 {
        ecms.push(Server::start_custom(&ecm_keys, &format!("ecm_token = \"{ECM_TOKEN}\""), ecm_extra).await);
    }
    let client = Client {
        bases: Arc::new(Mutex::new(urls.clone())),
        http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client"),
    };
    // Both ECMs registered with the elected manager (any instance answers).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ems = client.call("GET", "/linkisManager/listAllEMs", "admin", None, 0).await;
        if ems.as_ref().and_then(|v| v["data"]["EMs"].as_array()).is_some_and(|a| a.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "the ECMs did not register: {ems:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The load: submitted in the background to any live instance.
    let accepted: Arc<Mutex<Vec<Accepted>>> = Default::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    // The submissions span the faults (about 24 s).
    let pace = Duration::from_millis((24_000 / jobs.max(1)) as u64);
    let load = {
        let (client, accepted, refused) = (client.clone(), accepted.clone(), refused.clone());
        let runs = runs.path().to_path_buf();
        tokio::spawn(async move {
            for n in 0..jobs {
                let user = ["alice", "bob"][n % 2];
                let mark = runs.join(n.to_string());
                let (labels, code, run_type) = if n % 3 == 2 {
                    (
                        json!({"engineType": "python-python3", "userCreator": format!("{user}-IDE")}),
                        format!(
                            "open('{}', 'a').write('x\\n')\nimport time\ntime.sleep(0.{})\nprint('job', {n})",
                            mark.display(),
                            n % 5
                        ),
                        "python",
                    )
                } else {
                    (
                        json!({"engineType": "shell-1", "userCreator": format!("{user}-IDE")}),
                        format!("echo x >> {}\nsleep {}.{}\necho job {n}", mark.display(), n % 2, n % 7),
                        "shell",
                    )
                };
                let body = json!({"executionContent": {"code": code, "runType": run_type}, "labels": labels});
                match client.call("POST", "/entrance/submit", user, Some(&body), n).await {
                    Some(v) if v["status"] == 0 => {
                        let exec = v["data"]["execID"].as_str().unwrap_or_default().to_string();
                        let task = v["data"]["taskID"].as_i64().unwrap_or_default();
                        accepted.lock().expect("accepted").push((user.to_string(), task, exec, n));
                    }
                    _ => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(pace).await;
            }
        })
    };

    // The manager's ledger, sampled through any instance: never more engines
    // of one user and engine type than `user_max_instances` (2), across failovers.
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (client, stop) = (client.clone(), stop_sampling.clone());
        tokio::spawn(async move {
            let (mut most, mut samples) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(v) = client.call("GET", "/linkisManager/listAllEngines", "admin", None, samples).await
                    && let Some(list) = v["data"]["engines"].as_array()
                {
                    let mut per: HashMap<String, usize> = HashMap::new();
                    for e in list {
                        *per.entry(format!("{}/{}", e["owner"], e["engineType"])).or_default() += 1;
                    }
                    most = most.max(per.values().copied().max().unwrap_or(0));
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (most, samples)
        })
    };

    // The faults: each instance in turn killed -9, then restarted, while the load runs.
    let mut kills = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let i = round % 3;
        let leader = std::process::Command::new("psql")
            .args([store.as_str(), "-tAc", "select url from hangar_leader where until_ms > 0"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let role = if leader == planes[i].base { " (the elected manager)" } else { "" };
        planes[i].kill9();
        kills.push(format!("instance {}{role} killed -9 at {:.1} s", i + 1, started.elapsed().as_secs_f64()));
        // Down shorter than a job lease (it takes its jobs back), then longer (the others take them over).
        tokio::time::sleep(Duration::from_secs(if round == 0 { 2 } else { 5 })).await;
        let p = planes.remove(i);
        planes.insert(i, p.restart().await);
    }
    load.await.expect("load");
    let accepted = accepted.lock().expect("accepted").clone();
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let (most_engines, samples) = sampler.await.expect("sampler");

    // Every accepted job ends.
    let mut last: HashMap<i64, Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for (user, task, _, _) in &accepted {
            if last.get(task).is_some_and(is_final) {
                continue;
            }
            if let Some(v) = client.call("GET", &format!("/jobhistory/{task}/get"), user, None, *task as usize).await {
                last.insert(*task, v);
            }
        }
        let open = accepted.iter().filter(|(_, t, _, _)| !last.get(t).is_some_and(is_final)).count();
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = |t: &i64| last.get(t).and_then(|v| v["data"]["task"]["status"].as_str()).unwrap_or("").to_string();
    let count = |s: &str| accepted.iter().filter(|(_, t, _, _)| status(t) == s).count();
    let stuck = accepted.iter().filter(|(_, t, _, _)| !last.get(t).is_some_and(is_final)).count();
    let mut twice = 0;
    let mut succeeded_not_run = 0;
    for (_, t, _, n) in &accepted {
        let lines = std::fs::read_to_string(runs.path().join(n.to_string())).unwrap_or_default().lines().count();
        if lines > 1 {
            twice += 1;
        }
        if status(t) == "Succeed" && lines != 1 {
            succeeded_not_run += 1;
        }
    }
    let no_reason = accepted
        .iter()
        .filter(|(_, t, _, _)| matches!(status(t).as_str(), "Failed" | "Cancelled" | "Timeout"))
        .filter(|(_, t, _, _)| last[t]["data"]["task"]["errDesc"].as_str().is_none_or(str::is_empty))
        .count();
    // Results of the jobs that succeeded are where any instance finds them.
    let mut results_lost = 0;
    for (user, t, _, n) in accepted.iter().filter(|(_, t, _, _)| status(t) == "Succeed").take(40) {
        let loc = last[t]["data"]["task"]["resultLocation"].as_str().unwrap_or_default().to_string();
        let path = format!("/filesystem/openFile?path={}", common::enc(&format!("{loc}/_0.dolphin")));
        let f = client.call("GET", &path, user, None, *t as usize).await;
        if !f.is_some_and(|f| f["data"]["fileContent"].to_string().contains(&format!("job {n}"))) {
            results_lost += 1;
        }
    }
    // Idle engines exit (max_free_time_ms); then the ECMs hold nothing.
    let mut resources_left = i64::MAX;
    let quiet = Instant::now() + Duration::from_secs(60);
    while Instant::now() < quiet {
        let ems = client.call("GET", "/linkisManager/listAllEMs", "admin", None, 0).await.unwrap_or_default();
        let engines = client.call("GET", "/linkisManager/listAllEngines", "admin", None, 0).await.unwrap_or_default();
        let held: Option<i64> = ems["data"]["EMs"].as_array().map(|v| {
            v.iter()
                .map(|e| {
                    e["usedResource"]["instance"].as_i64().unwrap_or(0)
                        + e["lockedResource"]["instance"].as_i64().unwrap_or(0)
                })
                .sum()
        });
        let listed = engines["data"]["engines"].as_array().map(Vec::len);
        if let (Some(h), Some(0)) = (held, listed) {
            resources_left = h;
            if h == 0 && engine_processes(&[&ecms[0].data_dir, &ecms[1].data_dir]) == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let orphans = engine_processes(&[&ecms[0].data_dir, &ecms[1].data_dir]);
    // How the jobs of killed instances went on: their job logs say.
    let (mut taken_over, mut reclaimed) = (0, 0);
    for (_, t, _, _) in &accepted {
        let log_path = last.get(t).and_then(|v| v["data"]["task"]["logPath"].as_str()).unwrap_or_default().to_string();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        taken_over += usize::from(log.contains("took it over"));
        reclaimed += usize::from(log.contains("the server restarted"));
    }
    let reused = accepted.iter().filter(|(_, t, _, _)| last[t]["data"]["task"]["isReuse"] == json!(true)).count();
    let by_instance: BTreeMap<String, usize> = accepted.iter().fold(BTreeMap::new(), |mut m, (_, _, exec, _)| {
        let inst = urls.iter().position(|u| exec.contains(u.trim_start_matches("http://"))).map_or(0, |i| i + 1);
        *m.entry(format!("instance {inst}")).or_default() += 1;
        m
    });
    let rows = [
        ("submitted (accepted)", accepted.len()),
        ("refused at submit (no instance answered)", refused.load(std::sync::atomic::Ordering::Relaxed)),
        ("Succeed", count("Succeed")),
        ("Failed", count("Failed")),
        ("Cancelled", count("Cancelled")),
        ("Timeout", count("Timeout")),
        ("stuck", stuck),
        ("ran twice", twice),
        ("Succeed but did not run exactly once", succeeded_not_run),
        ("taken over by another instance (lease expired)", taken_over),
        ("taken back by their restarted instance", reclaimed),
        ("ran on a reused engine", reused),
        ("most engines of one user and type at once (max 2)", most_engines),
        ("ledger samples taken", samples),
        ("results lost (of 40 checked)", results_lost),
        ("Failed/Cancelled without a reason", no_reason),
        ("orphan engine processes", orphans),
        ("resources left on the ECMs after quiescence (engines)", resources_left.max(0) as usize),
    ];
    let mut table = format!(
        "control-plane run: {jobs} jobs, 3 instances + 2 ECMs on PostgreSQL, {:.0} s; {}\n\naccepted by {by_instance:?}\n\n| measure | count |\n|---|---|\n",
        started.elapsed().as_secs_f64(),
        kills.join("; ")
    );
    for (k, v) in rows {
        table.push_str(&format!("| {k} | {v} |\n"));
    }
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for (_, t, _, _) in
        accepted.iter().filter(|(_, t, _, _)| matches!(status(t).as_str(), "Failed" | "Cancelled" | "Timeout"))
    {
        let d = last[t]["data"]["task"]["errDesc"].as_str().unwrap_or_default();
        let short: String = d.lines().next().unwrap_or_default().chars().take(100).collect();
        let short = short.split(|c: char| c.is_ascii_digit()).collect::<Vec<_>>().join("#");
        *reasons.entry(short).or_default() += 1;
    }
    let mut reasons: Vec<(String, usize)> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    table.push_str("\n| why a job did not succeed (digits as #) | jobs |\n|---|---|\n");
    for (r, n) in reasons.iter().take(8) {
        table.push_str(&format!("| {} | {n} |\n", r.replace('|', "/")));
    }
    println!("{table}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("control-planes-table.md"), &table);
    if stuck + twice + succeeded_not_run + results_lost + no_reason + orphans > 0 || resources_left != 0 {
        for (i, p) in planes.iter().enumerate() {
            let log = p.server_log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- instance {} log tail:\n{}", i + 1, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
    assert_eq!((stuck, twice, succeeded_not_run, results_lost, no_reason, orphans), (0, 0, 0, 0, 0, 0), "{table}");
    assert_eq!(resources_left, 0, "{table}");
    assert!(most_engines <= 2 && samples > 20, "{table}");
    assert!(count("Succeed") * 10 >= accepted.len() * 9, "at least 90% succeed: {table}");
    assert!(taken_over > 0 && reclaimed > 0, "the faults missed the load (no job outlived its instance): {table}");
    drop(ecms);
}

fn is_final(v: &Value) -> bool {
    matches!(v["data"]["task"]["status"].as_str(), Some("Succeed" | "Failed" | "Cancelled" | "Timeout"))
}

/// Two instances and one ECM: every call about a job answered by the
/// instance that does not own it (status, progress, log, events, results,
/// kill), the operator API on both, a consumer group's running limit held
/// across the two, and a clean stop that hands its running job to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_instance_answers_any_call_and_a_clean_stop_hands_jobs_over() {
    let Some(store) = fresh_database() else {
        eprintln!("skipped: HANGAR_TEST_POSTGRES_URL is not set (scripts/test sets it)");
        return;
    };
    let shared = tempfile::tempdir().expect("shared dir");
    let keys = format!(
        "roles = \"entrance,manager\"\nstore_url = \"{store}\"\nshared_dir = \"{}\"",
        shared.path().join("jobs").display()
    );
    let auth = format!("rpc_token = \"{RPC_SECRET}\"\necm_token = \"{ECM_TOKEN}\"");
    let extra = PLANE.replace("max_running_per_group = 3", "max_running_per_group = 1");
    let mut a = Server::start_custom(&keys, &auth, &extra).await;
    let b = Server::start_custom(&keys, &auth, &extra).await;
    let ecm_keys = format!("roles = \"ecm\"\nmanager_url = \"{},{}\"", a.base, b.base);
    let ecm = Server::start_custom(
        &ecm_keys,
        &format!("ecm_token = \"{ECM_TOKEN}\""),
        "[ecm]\nheartbeat_interval_ms = 200\nkill_grace_ms = 1000\nprotected_load = 1000.0\n",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.call("GET", "/linkisManager/listAllEMs", "admin", None).await["data"]["EMs"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(Instant::now() < deadline, "the ECM did not register");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A long job on a, looked at through b.
    let (long, long_task) = a.shell("alice", "echo started; sleep 60").await;
    assert_eq!(b.wait_status("alice", &long, &["Running"], Duration::from_secs(30)).await, "Running");
    let progress = b.call("GET", &format!("/entrance/{long}/progress"), "alice", None).await;
    assert_eq!(progress["status"], 0, "{progress}");
    let log = b.call("GET", &format!("/entrance/{long}/log?fromLine=0&size=-1"), "alice", None).await;
    assert!(log.to_string().contains("Your job is accepted"), "{log}");
    // The events stream through b comes from a (the owner), output included.
    let http = reqwest::Client::new();
    let mut resp = http
        .get(format!("{}/api/rest_j/v1/entrance/{long}/events", b.base))
        .header("Token-User", "alice")
        .header("Token-Code", TOKEN)
        .send()
        .await
        .expect("events");
    let mut seen = String::new();
    let until = Instant::now() + Duration::from_secs(10);
    while !seen.contains("started") && Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
            Ok(Ok(Some(c))) => seen.push_str(&String::from_utf8_lossy(&c)),
            _ => break,
        }
    }
    assert!(seen.contains("event: status") && seen.contains("started"), "{seen}");
    drop(resp);

    // The group allows one running job across both instances: bob's does not wait, alice's second one does.
    let (second, second_task) = b.shell("alice", "echo second").await;
    let (bobs, _) = b.shell("bob", "echo bob").await;
    assert_eq!(b.wait_done("bob", &bobs).await, "Succeed");
    assert_eq!(b.status("alice", &second).await, "Inited", "alice's second job waits for the group's one slot");

    // A kill sent to b reaches the job on a.
    let t0 = Instant::now();
    let killed = b.call("GET", &format!("/entrance/{long}/kill"), "alice", None).await;
    assert_eq!(killed["status"], 0, "{killed}");
    assert_eq!(
        a.wait_status("alice", &long, &["Cancelled", "Failed", "Succeed"], Duration::from_secs(10)).await,
        "Cancelled"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "kill took {:?}", t0.elapsed());
    assert_eq!(a.wait_done("alice", &second).await, "Succeed");
    assert_eq!(a.results("alice", second_task).await[0]["fileContent"], json!([["second"]]));
    let _ = long_task;

    // The operator API answers the same on both (the non-manager forwards it).
    let (la, lb) = (engine_tickets(&a).await, engine_tickets(&b).await);
    assert!(!la.is_empty() && la == lb, "{la:?} vs {lb:?}");

    // A clean stop of a while its job runs: b takes it over at once, and it succeeds.
    let (handed, handed_task) = a.shell("carol", "sleep 3; echo handed").await;
    a.wait_status("carol", &handed, &["Running"], Duration::from_secs(30)).await;
    let t0 = Instant::now();
    assert!(a.stop().success(), "a clean stop");
    assert_eq!(b.wait_done("carol", &handed).await, "Succeed", "{}", b.full_log("carol", &handed).await);
    assert!(t0.elapsed() < Duration::from_secs(20), "hand-over took {:?}", t0.elapsed());
    assert_eq!(b.results("carol", handed_task).await[0]["fileContent"], json!([["handed"]]));
    let log = b.full_log("carol", &handed).await;
    assert!(log.contains("took it over"), "{log}");
    drop(ecm);
}

async fn engine_tickets(s: &Server) -> Vec<String> {
    let v = s.call("GET", "/linkisManager/listAllEngines", "admin", None).await;
    let mut t: Vec<String> = v["data"]["engines"]
        .as_array()
        .map_or(vec![], |a| a.iter().map(|e| e["ticketId"].as_str().unwrap_or_default().to_string()).collect());
    t.sort();
    t
}
