//! `hangar bench`: the speed, scale and footprint benchmark.
//!
//! It starts the real server (this binary, `serve`) on a free port with a
//! temporary data dir and measures, each next to a baseline taken in the same
//! run on the same machine:
//! * cold shell engine start (ask -> granted, and submit -> result) vs spawning `/bin/true`;
//! * warm task round trip through the REST API vs a raw loopback HTTP round trip;
//! * throughput with concurrent clients on warm engines, and an N-job run that
//!   checks every job reached a terminal state;
//! * warm pools (`bench_pool.rs`): pooled against unpooled label sets, a burst after a quiet period;
//! * manager heartbeat handling with thousands of simulated engines (in process);
//! * RSS of the idle server and of an idle shell engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

const TOKEN: &str = "bench-token";

#[derive(Debug, Clone)]
pub struct BenchOpts {
    pub quick: bool,
    /// The Python of a venv with Jupyter Kernel Gateway (the peer baseline).
    pub jkg_python: Option<std::path::PathBuf>,
    /// Only the warm-pool measurements (`bench --pool`).
    pub pool_only: bool,
}

struct Sizes {
    cold: usize,
    warm: usize,
    clients: usize,
    throughput_jobs: usize,
    bulk_jobs: usize,
    sim_engines: usize,
    heartbeats: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                cold: 5,
                warm: 50,
                clients: 4,
                throughput_jobs: 200,
                bulk_jobs: 500,
                sim_engines: 1_000,
                heartbeats: 5_000,
            }
        } else {
            Sizes {
                cold: 30,
                warm: 500,
                clients: 8,
                throughput_jobs: 2_000,
                bulk_jobs: 10_000,
                sim_engines: 10_000,
                heartbeats: 50_000,
            }
        }
    }
}

/// One measured distribution, in milliseconds.
#[derive(Debug, Clone)]
pub(crate) struct Dist(pub(crate) Vec<f64>);

impl Dist {
    pub(crate) fn pct(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let idx = ((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
        v[idx]
    }
    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::max)
    }
    pub(crate) fn json(&self) -> Value {
        json!({"n": self.0.len(), "p50_ms": self.pct(0.5), "p95_ms": self.pct(0.95), "p99_ms": self.pct(0.99), "max_ms": self.max()})
    }
}

pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) baseline: String,
    pub(crate) ratio: String,
    pub(crate) target: String,
}

pub async fn run(opts: BenchOpts) -> anyhow::Result<Value> {
    let sizes = Sizes::new(opts.quick);
    let mut report = serde_json::Map::new();
    let mut rows: Vec<Row> = Vec::new();
    if opts.pool_only {
        report.insert("pools".into(), crate::bench_pool::run(opts.quick, &mut rows).await?);
        print_table(&rows);
        return Ok(Value::Object(report));
    }

    // Baselines.
    let spawn_true = Dist(time_n(sizes.cold.max(20), || Command::new("/bin/true").status().map(|_| ()))?);
    let spawn_python = Dist(time_n(5, || Command::new("python3").args(["-c", "pass"]).status().map(|_| ()))?);
    let raw_http = raw_http_rtt(sizes.warm.max(200)).await?;
    report.insert("baseline".into(), json!({"spawn_bin_true": spawn_true.json(), "spawn_python3": spawn_python.json(), "loopback_http_rtt": raw_http.json()}));

    let server = BenchServer::start().await?;
    let idle_rss = rss_kb(server.child.id()).unwrap_or(0);

    let mut python_figures: Option<(Dist, Dist)> = None;
    let mut busy_shell_rss = 0;
    // Cold start: every executeOnce job gets a fresh engine; then warm round trips on one engine.
    for (engine, code, base, base_name, cold_target, warm_p50, warm_p99) in [
        ("shell-1", "echo cold", &spawn_true, "spawn /bin/true", "<= 25 ms ask->granted", "<= 3 ms", "<= 15 ms"),
        ("python-python3", "print(1)", &spawn_python, "spawn python3 -c pass", "<= 150 ms submit->result", "-", "-"),
    ] {
        let kind = engine.split('-').next().unwrap_or(engine);
        let mut ask = Vec::new();
        let mut first_result = Vec::new();
        for _ in 0..sizes.cold {
            let labels = json!({"engineType": engine, "userCreator": "bench-COLD", "executeOnce": ""});
            let t0 = Instant::now();
            let (exec, task) = server.submit(code, &labels).await?;
            server.wait_done(&exec).await?;
            first_result.push(t0.elapsed().as_secs_f64() * 1e3);
            let job = server.job(task).await?;
            if job["isReuse"] != json!(false) {
                bail!("cold start measured a reused engine");
            }
            ask.push(job["metrics"]["requestECTime"].as_f64().unwrap_or(f64::NAN));
        }
        let (ask, first_result) = (Dist(ask), Dist(first_result));
        rows.push(row(
            &format!("{kind} cold start, ask -> engine granted (p50)"),
            ask.pct(0.5),
            base.pct(0.5),
            base_name,
            cold_target,
        ));
        rows.push(row(
            &format!("{kind} cold start, submit -> result (p50)"),
            first_result.pct(0.5),
            base.pct(0.5),
            base_name,
            "-",
        ));
        report.insert(
            format!("cold_{kind}"),
            json!({"ask_to_grant": ask.json(), "submit_to_result": first_result.json()}),
        );

        let warm_labels = json!({"engineType": engine, "userCreator": "bench-WARM"});
        let trivial = if kind == "python" { "pass" } else { "true" };
        let (exec, _) = server.submit(trivial, &warm_labels).await?;
        server.wait_done(&exec).await?;
        let mut warm = Vec::new();
        for _ in 0..sizes.warm {
            let t0 = Instant::now();
            let (exec, _) = server.submit(trivial, &warm_labels).await?;
            server.wait_done(&exec).await?;
            warm.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let warm = Dist(warm);
        rows.push(row(
            &format!("warm {kind} task via REST (p50)"),
            warm.pct(0.5),
            raw_http.pct(0.5),
            "loopback HTTP RTT",
            warm_p50,
        ));
        rows.push(row(
            &format!("warm {kind} task via REST (p99)"),
            warm.pct(0.99),
            raw_http.pct(0.99),
            "loopback HTTP RTT",
            warm_p99,
        ));
        report.insert(format!("warm_{kind}_rtt"), warm.json());
        if kind == "python" {
            python_figures = Some((first_result, warm));
        } else {
            // Right after its tasks: the engine and its spare shell.
            busy_shell_rss = server.engine_rss_kb("shell");
        }
    }
    // The peer: Jupyter Kernel Gateway, beside Hangar's Python engine.
    if let Some((cold_submit_to_result, warm)) = python_figures {
        let hangar = crate::bench_jkg::HangarPython { cold_submit_to_result, warm };
        let python = crate::bench_jkg::python(opts.jkg_python.as_deref());
        let (peer_rows, peer) = crate::bench_jkg::rows(python, sizes.cold, sizes.warm, &hangar).await;
        rows.extend(peer_rows);
        report.insert("peer_jupyter_kernel_gateway".into(), peer);
    }
    // Idle: once a shell engine's spare shell (kept ready for the next task) was stopped.
    tokio::time::sleep(hangar_plugin_shell::SPARE_IDLE + Duration::from_millis(500)).await;
    let (engine_rss, python_rss) = (server.engine_rss_kb("shell"), server.engine_rss_kb("python"));

    // Throughput with concurrent clients on warm (concurrent) engines.
    let tp = throughput(&server, sizes.clients, sizes.throughput_jobs).await?;
    rows.push(Row {
        name: format!("throughput, {} clients, trivial shell jobs", sizes.clients),
        value: format!("{tp:.0} jobs/s"),
        baseline: format!("{:.0} spawns/s", 1e3 / spawn_true.pct(0.5)),
        ratio: format!("{:.2}", tp / (1e3 / spawn_true.pct(0.5))),
        target: ">= 1000 jobs/s".into(),
    });
    report.insert("throughput_jobs_per_s".into(), json!(tp));

    // Bulk run: every job reaches a terminal state, none lost.
    let (bulk_secs, bulk) = bulk_run(&server, sizes.bulk_jobs, sizes.clients).await?;
    rows.push(Row {
        name: format!("{} jobs submitted at once", sizes.bulk_jobs),
        value: format!("{} succeeded, {} other terminal, {} lost, {:.1} s", bulk.0, bulk.1, bulk.2, bulk_secs),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "all terminal, none lost".into(),
    });
    report.insert("bulk".into(), json!({"jobs": sizes.bulk_jobs, "succeeded": bulk.0, "other_terminal": bulk.1, "lost": bulk.2, "seconds": bulk_secs}));
    let busy_rss = rss_kb(server.child.id()).unwrap_or(0);

    // Footprint.
    rows.push(Row {
        name: "idle all-in-one server RSS".into(),
        value: format!("{:.1} MB", idle_rss as f64 / 1024.0),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "<= 40 MB".into(),
    });
    rows.push(Row {
        name: "idle shell engine RSS".into(),
        value: format!("{:.1} MB", engine_rss as f64 / 1024.0),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "<= 10 MB".into(),
    });
    rows.push(Row {
        name: "shell engine RSS right after a task (+ its spare shell)".into(),
        value: format!("{:.1} MB", busy_shell_rss as f64 / 1024.0),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    rows.push(Row {
        name: "idle python engine RSS (engine + interpreter)".into(),
        value: format!("{:.1} MB", python_rss as f64 / 1024.0),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.insert(
        "rss_kb".into(),
        json!({"server_idle": idle_rss, "server_after_load": busy_rss, "shell_engine_idle": engine_rss, "shell_engine_after_task": busy_shell_rss, "python_engine_idle": python_rss}),
    );
    drop(server);

    // Warm pools: pooled against unpooled label sets, a burst after a quiet period.
    report.insert("pools".into(), crate::bench_pool::run(opts.quick, &mut rows).await?);

    // Manager capacity with simulated engines.
    let hb = crate::bench_manager::heartbeats(sizes.sim_engines, sizes.heartbeats).await?;
    rows.push(Row {
        name: format!("manager heartbeat handling, {} engines (p99)", sizes.sim_engines),
        value: format!("{:.2} ms ({:.0}/s)", hb.latency.pct(0.99), hb.per_s),
        baseline: format!("{:.2} ms", raw_http.pct(0.99)),
        ratio: format!("{:.2}", hb.latency.pct(0.99) / raw_http.pct(0.99)),
        target: "< 5 ms".into(),
    });
    report.insert(
        "manager_heartbeats".into(),
        json!({"engines": sizes.sim_engines, "heartbeats": sizes.heartbeats, "latency": hb.latency.json(), "per_s": hb.per_s, "cpu_s": hb.cpu_s, "rss_kb": hb.rss_kb}),
    );

    print_table(&rows);
    Ok(Value::Object(report))
}

pub(crate) fn row(name: &str, v: f64, base: f64, base_name: &str, target: &str) -> Row {
    Row {
        name: name.into(),
        value: format!("{v:.2} ms"),
        baseline: format!("{base:.2} ms ({base_name})"),
        ratio: format!("{:.1}x", v / base),
        target: target.into(),
    }
}

pub(crate) fn print_table(rows: &[Row]) {
    let header = ["measurement", "value", "baseline (same run)", "ratio", "target"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| [r.name.clone(), r.value.clone(), r.baseline.clone(), r.ratio.clone(), r.target.clone()])
        .collect();
    let mut w = header.map(str::len);
    for c in &cells {
        for i in 0..5 {
            w[i] = w[i].max(c[i].len());
        }
    }
    let line = |c: [&str; 5]| {
        println!(
            "| {:<a$} | {:<b$} | {:<c$} | {:<d$} | {:<e$} |",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4]
        )
    };
    line(header);
    println!("|{}|", w.iter().map(|n| "-".repeat(n + 2)).collect::<Vec<_>>().join("|"));
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3], &c[4]]);
    }
}

fn time_n(n: usize, mut f: impl FnMut() -> std::io::Result<()>) -> anyhow::Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        f()?;
        v.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(v)
}

/// Round trip of a trivial HTTP request to an in-process server on loopback.
async fn raw_http_rtt(n: usize) -> anyhow::Result<Dist> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let url = format!("http://{addr}/ping");
    http.get(&url).send().await?.text().await?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        http.get(&url).send().await?.text().await?;
        v.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    server.abort();
    Ok(Dist(v))
}

pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) struct BenchServer {
    pub(crate) child: Child,
    pub(crate) base: String,
    data_dir: PathBuf,
    pub(crate) http: reqwest::Client,
    _tmp: PathBuf,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._tmp);
    }
}

impl BenchServer {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with("").await
    }

    /// A server with `extra` TOML sections after the benchmark's own.
    pub(crate) async fn start_with(extra: &str) -> anyhow::Result<Self> {
        Self::start_keys("", extra).await
    }

    /// As [`Self::start_with`], with `manager` keys added to its `[manager]` section.
    pub(crate) async fn start_keys(manager: &str, extra: &str) -> anyhow::Result<Self> {
        let tmp = std::env::temp_dir().join(format!("hangar-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let data_dir = tmp.join("data");
        let cfg = tmp.join("bench.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nport = 0\ndata_dir = \"{}\"\nlog_level = \"warn\"\n[auth]\ntoken = \"{TOKEN}\"\n\
                 [entrance]\nmax_running_per_group = 64\nmax_queued_per_group = 100000\n\
                 [manager]\nuser_max_instances = 64\nuser_max_cores = 64\nuser_max_memory = \"64g\"\n{manager}\n\
                 [engineconn]\nlog_push_interval_ms = 5\nrunning_info_interval_ms = 1000\n{extra}",
                data_dir.display()
            ),
        )?;
        let log = tmp.join("server.log");
        let child = Command::new(std::env::current_exe()?)
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start the server")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let base = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The whole line: the log may be read while it is being written.
            if let Some(rest) = text.split("listening on ").nth(1)
                && let Some((line, _)) = rest.split_once('\n')
                && let Some(url) = line.split_whitespace().next()
            {
                break url.to_string();
            }
            if Instant::now() > deadline {
                bail!("server did not start: {text}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(256).build()?;
        Ok(Self { child, base, data_dir, http, _tmp: tmp })
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let v: Value = req.header("Token-User", "bench").header("Token-Code", TOKEN).send().await?.json().await?;
        if v["status"] != 0 {
            bail!("server error: {v}");
        }
        Ok(v["data"].clone())
    }

    async fn submit(&self, code: &str, labels: &Value) -> anyhow::Result<(String, i64)> {
        self.submit_with(code, labels, &json!({})).await
    }

    async fn submit_with(&self, code: &str, labels: &Value, startup: &Value) -> anyhow::Result<(String, i64)> {
        let run_type =
            if labels["engineType"].as_str().is_some_and(|e| e.starts_with("python")) { "python" } else { "shell" };
        self.submit_as(code, run_type, labels, startup).await
    }

    pub(crate) async fn submit_as(
        &self,
        code: &str,
        run_type: &str,
        labels: &Value,
        startup: &Value,
    ) -> anyhow::Result<(String, i64)> {
        let body = json!({"executionContent": {"code": code, "runType": run_type}, "labels": labels, "params": {"configuration": {"startup": startup}}});
        let d = self.call(self.http.post(format!("{}/api/rest_j/v1/entrance/submit", self.base)).json(&body)).await?;
        Ok((d["execID"].as_str().unwrap_or_default().to_string(), d["taskID"].as_i64().unwrap_or_default()))
    }

    /// Wait for the job's `end` event on its event stream (no polling).
    pub(crate) async fn wait_done(&self, exec: &str) -> anyhow::Result<String> {
        let s = wait_end(&self.http, &self.base, exec).await?;
        if s != "Succeed" {
            bail!("job {exec} ended {s}");
        }
        Ok(s)
    }

    pub(crate) async fn job(&self, task: i64) -> anyhow::Result<Value> {
        Ok(self.call(self.http.get(format!("{}/api/rest_j/v1/jobhistory/{task}/get", self.base))).await?["task"]
            .clone())
    }

    /// RSS of the smallest live engine of a type under this server's data dir
    /// (for Python: the engine plus its interpreter).
    fn engine_rss_kb(&self, engine: &str) -> u64 {
        let mut best = u64::MAX;
        for pid in engine_pids(&self.data_dir) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !cmd.windows(engine.len() + 11).any(|w| w == format!("engineType={engine}").as_bytes()) {
                continue;
            }
            let own = rss_kb(pid).unwrap_or(0);
            let children: u64 = child_pids(pid).into_iter().filter_map(rss_kb).sum();
            best = best.min(own + children);
        }
        if best == u64::MAX { 0 } else { best }
    }
}

fn child_pids(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s[s.rfind(')')? + 2..].split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

fn engine_pids(data_dir: &Path) -> Vec<u32> {
    let needle = format!("TMPDIR={}", data_dir.join("engineconn").display());
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            cmd.windows(10).any(|w| w == b"engineconn")
                && env.split(|b| *b == 0).any(|kv| kv.starts_with(needle.as_bytes()))
        })
        .collect()
}

/// Jobs per second with `clients` concurrent submitters on warm concurrent engines.
async fn throughput(server: &BenchServer, clients: usize, jobs: usize) -> anyhow::Result<f64> {
    let labels = json!({"engineType": "shell-1", "userCreator": "bench-TP"});
    let startup = json!({"hangar.engineconn.concurrency": "16"});
    let (exec, _) = server.submit_with("true", &labels, &startup).await?;
    server.wait_done(&exec).await?;
    let server = Arc::new(ServerRef { base: server.base.clone(), http: server.http.clone() });
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (server, next, labels, startup) = (server.clone(), next.clone(), labels.clone(), startup.clone());
        set.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let exec = server.submit(&labels, &startup).await?;
                server.wait_done(&exec).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(jobs as f64 / t0.elapsed().as_secs_f64())
}

/// A cheap clone of what the concurrent clients need.
struct ServerRef {
    base: String,
    http: reqwest::Client,
}

impl ServerRef {
    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let v: Value = req.header("Token-User", "bench").header("Token-Code", TOKEN).send().await?.json().await?;
        if v["status"] != 0 {
            bail!("server error: {v}");
        }
        Ok(v["data"].clone())
    }

    async fn submit(&self, labels: &Value, startup: &Value) -> anyhow::Result<String> {
        let body = json!({"executionContent": {"code": "true", "runType": "shell"}, "labels": labels, "params": {"configuration": {"startup": startup}}});
        let d = self.call(self.http.post(format!("{}/api/rest_j/v1/entrance/submit", self.base)).json(&body)).await?;
        Ok(d["execID"].as_str().unwrap_or_default().to_string())
    }

    async fn wait_done(&self, exec: &str) -> anyhow::Result<String> {
        wait_end(&self.http, &self.base, exec).await
    }
}

/// Read a job's event stream to its `end` event; returns the final status.
async fn wait_end(http: &reqwest::Client, base: &str, exec: &str) -> anyhow::Result<String> {
    let body = http
        .get(format!("{base}/api/rest_j/v1/entrance/{exec}/events"))
        .header("Token-User", "bench")
        .header("Token-Code", TOKEN)
        .timeout(Duration::from_secs(600))
        .send()
        .await?
        .text()
        .await?;
    let end = body
        .split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data:")))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v["type"] == "end")
        .with_context(|| format!("job {exec}: event stream ended without an end event"))?;
    Ok(end["status"].as_str().unwrap_or_default().to_string())
}

/// Submit `n` jobs as fast as possible, then wait for all; returns
/// (seconds, (succeeded, other terminal, lost)).
async fn bulk_run(server: &BenchServer, n: usize, clients: usize) -> anyhow::Result<(f64, (usize, usize, usize))> {
    let labels = json!({"engineType": "shell-1", "userCreator": "bench-BULK"});
    let startup = json!({"hangar.engineconn.concurrency": "16"});
    let server = Arc::new(ServerRef { base: server.base.clone(), http: server.http.clone() });
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (server, next, labels, startup) = (server.clone(), next.clone(), labels.clone(), startup.clone());
        set.spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                mine.push(server.submit(&labels, &startup).await?);
            }
            anyhow::Ok(mine)
        });
    }
    let mut execs = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        execs.extend(r??);
    }
    let mut outcome: BTreeMap<String, usize> = BTreeMap::new();
    let chunks: Vec<Vec<String>> = execs.chunks(execs.len().div_ceil(clients).max(1)).map(<[String]>::to_vec).collect();
    let mut set = tokio::task::JoinSet::new();
    for chunk in chunks {
        let server = server.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for e in chunk {
                let s = server.wait_done(&e).await.unwrap_or_else(|_| "lost".into());
                if s != "Succeed" && s != "lost" {
                    let task = hangar_protocol::exec_id::parse(&e).map(|p| p.task_id).unwrap_or(0);
                    if let Ok(d) = server
                        .call(server.http.get(format!("{}/api/rest_j/v1/jobhistory/{task}/get", server.base)))
                        .await
                    {
                        eprintln!("bench: job {task} ended {s}: {}", d["task"]["errDesc"]);
                    }
                }
                out.push(s);
            }
            out
        });
    }
    while let Some(r) = set.join_next().await {
        for s in r? {
            *outcome.entry(s).or_default() += 1;
        }
    }
    let ok = outcome.get("Succeed").copied().unwrap_or(0);
    let lost = outcome.get("lost").copied().unwrap_or(0) + n.saturating_sub(execs.len());
    Ok((t0.elapsed().as_secs_f64(), (ok, n - ok - lost, lost)))
}
