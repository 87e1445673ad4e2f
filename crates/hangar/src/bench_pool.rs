//! `hangar bench` (and `bench --pool`): warm engine pools, each figure
//! beside its same-run baseline on one server. Two label sets differ only in
//! `hangar.pool.max` (20 for the pooled one, pools off for the other):
//! * ask -> engine granted (the job's `requestECTime`) of single jobs spaced
//!   past the engines' idle exit: a pooled set against an unpooled one;
//! * a burst of 20 concurrent jobs after a quiet period (5 minutes; `--quick`
//!   20 s with the half-life scaled alike), pooled against unpooled;
//! * the memory the pools hold afterwards, beside the idle server's RSS.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::bench::{BenchServer, Dist, Row, row};

const BURST: usize = 20;

/// The pool measurements; rows for the table and the JSON report.
pub(crate) async fn run(quick: bool, rows: &mut Vec<Row>) -> anyhow::Result<Value> {
    let quiet = if quick { Duration::from_secs(20) } else { Duration::from_secs(300) };
    // The default half-life (10 minutes) against the 5 quiet minutes, scaled for --quick.
    let half_life = quiet * 2;
    let idle_exit = quiet * 4 / 5;
    let manager = format!(
        "pool_max_total = 48\npool_interval_ms = 200\npool_half_life_ms = {}\npool_memory_ms = {}",
        half_life.as_millis(),
        (quiet * 6).as_millis()
    );
    let server = BenchServer::start_keys(&manager, "").await?;
    let server_rss = crate::bench::rss_kb(server.child.id()).unwrap_or(0);

    // 1. Single asks spaced past the idle exit (1 s): the unpooled set starts cold each time.
    let spaced = |pool: &str| json!({"hangar.pool.max": pool, "hangar.engineconn.max_free_time_ms": "1000"});
    let singles = if quick { 6 } else { 20 };
    let (mut pooled, mut unpooled) = (Vec::new(), Vec::new());
    for i in 0..=singles {
        let p = job(&server, "bench-POOL1", &spaced("2"), "true").await?;
        let u = job(&server, "bench-NOPOOL1", &spaced("0"), "true").await?;
        if i > 0 {
            pooled.push(p.1);
            unpooled.push(u.1);
        }
        tokio::time::sleep(Duration::from_millis(1600)).await;
    }
    let (pooled, unpooled) = (Dist(pooled), Dist(unpooled));
    rows.push(row(
        "pooled label set, ask -> engine granted (p50)",
        pooled.pct(0.5),
        unpooled.pct(0.5),
        "unpooled label set",
        "much shorter",
    ));

    // 2. A burst of 20 after a quiet period, pools on and off.
    let burst_startup = |pool: &str| json!({"hangar.pool.max": pool, "hangar.engineconn.max_free_time_ms": idle_exit.as_millis().to_string()});
    for (uc, pool) in [("bench-BURSTP", "20"), ("bench-BURSTN", "0")] {
        burst(&server, uc, &burst_startup(pool)).await?;
    }
    eprintln!(
        "bench: quiet for {} s before the second bursts{}",
        quiet.as_secs(),
        if quick { " (--quick: 20 s, half-life scaled alike; the full run waits 5 minutes)" } else { "" }
    );
    tokio::time::sleep(quiet).await;
    let held_before = metric(&server, "hangar_pool_idle_engines").await?;
    let on = burst(&server, "bench-BURSTP", &burst_startup("20")).await?;
    let off = burst(&server, "bench-BURSTN", &burst_startup("0")).await?;
    let what = format!("burst of {BURST} after {} s quiet", quiet.as_secs());
    for (label, q) in [("p50", 0.5), ("p95", 0.95)] {
        rows.push(row(
            &format!("{what}, pools on, ask -> granted ({label})"),
            on.ask.pct(q),
            off.ask.pct(q),
            "pools off",
            "-",
        ));
    }
    rows.push(row(&format!("{what}, pools on, all {BURST} done"), on.wall_ms, off.wall_ms, "pools off", "-"));

    // 3. What the pools hold now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = metric(&server, "hangar_pool_idle_engines").await?;
    let rss = metric(&server, "hangar_pool_idle_rss_bytes").await? / (1 << 20) as f64;
    let accounted = metric(&server, "hangar_pool_idle_memory_bytes").await? / (1 << 20) as f64;
    rows.push(Row {
        name: format!("memory the pools hold ({idle:.0} idle engines)"),
        value: format!("{rss:.1} MB RSS ({accounted:.0} MB accounted)"),
        baseline: format!("{:.1} MB (idle server RSS)", server_rss as f64 / 1024.0),
        ratio: format!("{:.1}x", rss / (server_rss as f64 / 1024.0)),
        target: "-".into(),
    });
    Ok(json!({
        "quiet_s": quiet.as_secs(),
        "half_life_s": half_life.as_secs(),
        "single_ask_to_grant": {"pooled": pooled.json(), "unpooled": unpooled.json()},
        "burst_after_quiet": {
            "pooled_engines_held_before": held_before,
            "pools_on": {"ask_to_grant": on.ask.json(), "reused": on.reused, "wall_ms": on.wall_ms},
            "pools_off": {"ask_to_grant": off.ask.json(), "reused": off.reused, "wall_ms": off.wall_ms},
        },
        "pools_hold": {"idle_engines": idle, "rss_mb": rss, "accounted_mb": accounted, "server_idle_rss_kb": server_rss},
        "hits_total": metric(&server, "hangar_pool_hits_total").await?,
        "creations_total": metric(&server, "hangar_pool_creations_total").await?,
    }))
}

/// One job to its end: (isReuse, requestECTime ms).
async fn job(server: &BenchServer, uc: &str, startup: &Value, code: &str) -> anyhow::Result<(bool, f64)> {
    let labels = json!({"engineType": "shell-1", "userCreator": uc});
    let (exec, task) = server.submit_as(code, "shell", &labels, startup).await?;
    server.wait_done(&exec).await?;
    let j = server.job(task).await?;
    let metrics: Value = match &j["metrics"] {
        Value::String(t) => serde_json::from_str(t).unwrap_or_default(),
        v => v.clone(),
    };
    let ask = metrics["requestECTime"].as_f64().context("a job without requestECTime")?;
    Ok((j["isReuse"] == json!(true), ask))
}

struct Burst {
    ask: Dist,
    reused: usize,
    wall_ms: f64,
}

/// `BURST` concurrent jobs that each hold their engine a moment.
async fn burst(server: &BenchServer, uc: &str, startup: &Value) -> anyhow::Result<Burst> {
    let t0 = Instant::now();
    let all = futures_util::future::join_all((0..BURST).map(|_| job(server, uc, startup, "sleep 0.3"))).await;
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    let done: Vec<(bool, f64)> = all.into_iter().collect::<anyhow::Result<_>>()?;
    Ok(Burst { reused: done.iter().filter(|d| d.0).count(), ask: Dist(done.iter().map(|d| d.1).collect()), wall_ms })
}

async fn metric(server: &BenchServer, name: &str) -> anyhow::Result<f64> {
    let text = server.http.get(format!("{}/metrics", server.base)).send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("no metric {name}"))
}
