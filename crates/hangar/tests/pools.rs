//! Warm engine pools through the real binary and real shell engines: a burst
//! leaves a pool the next burst is served from, quiet shrinks it to nothing,
//! a pooled engine counts against its owner's limit, and nothing is pooled
//! for users without recent demand.

mod common;

use std::time::{Duration, Instant};

use common::{FAST, Server};
use serde_json::{Value, json};

/// FAST with pools: short half-life and memory, so a test sees them grow and shrink.
fn config(manager: &str, extra: &str) -> String {
    FAST.replace("[manager]\n", &format!("[manager]\n{manager}\n"))
        .replace("[engineconn]\n", "[engineconn]\nmax_free_time_ms = 1500\n")
        + extra
}

async fn metric(s: &Server, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", s.base)).await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

async fn engines(s: &Server) -> Vec<Value> {
    let v = s.call("GET", "/linkisManager/listAllEngines", "admin", None).await;
    assert_eq!(v["status"], 0, "listAllEngines: {v}");
    v["data"]["engines"].as_array().cloned().unwrap_or_default()
}

/// `n` concurrent jobs of `user`; returns their (isReuse, requestECTime ms).
async fn burst(s: &Server, user: &str, n: usize, code: &str, startup: &Value) -> Vec<(bool, f64)> {
    let mut execs = Vec::new();
    for _ in 0..n {
        let body = json!({
            "executionContent": {"code": code, "runType": "shell"},
            "labels": {"engineType": "shell-1", "userCreator": format!("{user}-IDE")},
            "params": {"configuration": {"startup": startup}},
        });
        execs.push(s.submit_json(user, &body).await);
    }
    let mut out = Vec::new();
    for (exec, task) in execs {
        assert_eq!(s.wait_done(user, &exec).await, "Succeed", "{}", s.server_log());
        let job = s.job(user, task).await;
        let metrics: Value = match &job["metrics"] {
            Value::String(t) => serde_json::from_str(t).unwrap_or_default(),
            v => v.clone(),
        };
        out.push((job["isReuse"] == json!(true), metrics["requestECTime"].as_f64().expect("requestECTime")));
    }
    out
}

fn median(v: &[(bool, f64)]) -> f64 {
    let mut t: Vec<f64> = v.iter().map(|x| x.1).collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

async fn resources_back(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(format!("{}/metrics", s.base)).await.expect("metrics").text().await.expect("text");
        let held: f64 = text
            .lines()
            .filter(|l| l.starts_with("hangar_ecm_resource{") && !l.contains("state=\"max\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if held == 0.0 && engines(s).await.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "resources still held: {held}\n{}", s.server_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_leaves_a_pool_the_next_burst_uses_and_quiet_gives_it_back() {
    let s = Server::start(&config(
        "pool_enabled = true\npool_max_per_label_set = 6\npool_max_total = 6\npool_half_life_ms = 4000\n\
         pool_memory_ms = 9000\npool_interval_ms = 100",
        "[entrance]\nmax_running_per_group = 10\n",
    ))
    .await;
    // A cold burst: every ask waits for a cold start (its own, or one the
    // pool started beside it once the first ask found no engine).
    let cold = burst(&s, "alice", 6, "sleep 1", &json!({})).await;
    assert_eq!(cold.len(), 6);
    // The asks' own engines exit after 1.5 s idle; the pool's stay (the decayed peak).
    wait_until_metric(&s, "hangar_pool_idle_engines", |v| v >= 3.0).await;
    let pooled: Vec<Value> = engines(&s).await.into_iter().filter(|e| e["pooled"] == json!(true)).collect();
    assert!(pooled.len() >= 3 && pooled.iter().all(|e| e["owner"] == "alice"), "{pooled:?}");
    let idle = metric(&s, "hangar_pool_idle_engines").await as usize;
    let before_hits = metric(&s, "hangar_pool_hits_total").await;
    // The next burst is served by the pooled engines, without a cold start.
    let warm = burst(&s, "alice", idle, "true", &json!({})).await;
    assert!(warm.iter().filter(|w| w.0).count() * 4 >= idle * 3, "mostly pooled engines: {warm:?}");
    assert!(metric(&s, "hangar_pool_hits_total").await - before_hits >= (idle * 3 / 4) as f64);
    let (cold_ms, warm_ms) = (median(&cold), median(&warm));
    eprintln!("ask -> granted, median: cold burst {cold_ms} ms, pooled burst {warm_ms} ms");
    assert!(warm_ms < cold_ms, "pooled asks are granted sooner: {warm_ms} ms vs {cold_ms} ms");
    // Demand stops: the pool gives its engines back, and every resource returns.
    wait_until_metric(&s, "hangar_pool_idle_engines", |v| v == 0.0).await;
    assert!(metric(&s, "hangar_pool_releases_total").await >= 1.0);
    resources_back(&s).await;
    // pool_memory_ms after its last ask, the quiet set is forgotten.
    wait_until_metric(&s, "hangar_pool_label_sets", |v| v == 0.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(engines(&s).await.is_empty(), "nothing is created for a forgotten set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_engine_counts_against_its_owner_and_only_asked_sets_are_pooled() {
    // Pools off by default; this creator and engine type asks for one (the
    // startup parameter is what the parameter configuration resolves to).
    let s = Server::start(&config(
        "user_max_instances = 2\npool_half_life_ms = 60000\npool_memory_ms = 60000\npool_interval_ms = 100",
        "[entrance]\nmax_running_per_group = 10\n",
    ))
    .await;
    let pool = json!({"hangar.pool.max": "4"});
    let watch = {
        let base = s.base.clone();
        tokio::spawn(async move {
            // The owner's limit holds at every moment, the pool's engines included.
            let http = reqwest::Client::new();
            let mut most = 0usize;
            for _ in 0..150 {
                let v: Value = http
                    .get(format!("{base}/api/rest_j/v1/linkisManager/listAllEngines"))
                    .header("Token-User", "admin")
                    .header("Token-Code", common::TOKEN)
                    .send()
                    .await
                    .expect("list")
                    .json()
                    .await
                    .expect("json");
                most = most.max(v["data"]["engines"].as_array().map_or(0, Vec::len));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            most
        })
    };
    let first = burst(&s, "carol", 3, "sleep 0.5", &pool).await;
    assert_eq!(first.len(), 3);
    // The asks' engines exit; the pool wants 3 but the owner may hold 2.
    wait_until_metric(&s, "hangar_pool_idle_engines", |v| v == 2.0).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(metric(&s, "hangar_pool_idle_engines").await, 2.0, "never over the owner's limit");
    let v = s.call("GET", "/linkisManager/rm/userresources", "carol", None).await;
    let used = &v["data"]["userResources"][0]["usedResource"];
    assert_eq!(used["instance"], 2, "the pooled engines are charged to carol: {v}");
    assert_eq!(metric(&s, "hangar_pool_creation_failures_total").await, 0.0, "the room is checked, not hit");
    let next = burst(&s, "carol", 1, "true", &pool).await;
    assert!(next[0].0, "served by a pooled engine");
    assert!(watch.await.expect("watch") <= 2, "at most 2 engines at any moment");
    // dave asks without a pool: nothing is kept for him, nor for anyone else.
    burst(&s, "dave", 1, "true", &json!({})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let owners: Vec<Value> = engines(&s).await.iter().map(|e| e["owner"].clone()).collect();
    assert!(owners.iter().all(|o| o == "carol"), "only carol's set is pooled: {owners:?}");
}

async fn wait_until_metric(s: &Server, name: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = metric(s, name).await;
        if ok(v) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {v}\n{}", s.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
