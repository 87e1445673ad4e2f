//! The Spark engine through the real binary, on real Spark (pyspark from
//! PyPI, installed by `scripts/test` with `hangar spark install --dir
//! target/spark`): Spark SQL with types and NULLs, a PySpark session kept
//! across jobs, progress mid-job, kill by job group, a failing query's error,
//! 100,000 rows paged, scratch files kept in the work dir; then a standalone
//! master with two workers running two users' engines apart, with their
//! executors charged to the queue and released once.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FAST, Server, enc, engine_pids, spark_home, wait_until};
use serde_json::{Value, json};

/// FAST, with time for a JVM to start, `engineconn` keys and `[spark]` keys.
fn spark_toml(engineconn: &str, spark: &str) -> String {
    let base = FAST
        .replace("engine_start_timeout_ms = 20000", "engine_start_timeout_ms = 150000")
        .replace("[engineconn]\n", &format!("[engineconn]\n{engineconn}"));
    format!("{base}\n[spark]\nhome = \"{}\"\n{spark}", spark_home().display())
}

const START: Duration = Duration::from_secs(180);

async fn spark(s: &Server, user: &str, creator: &str, run_type: &str, code: &str) -> (String, i64) {
    let body = json!({
        "executionContent": {"code": code, "runType": run_type},
        "labels": {"engineType": "spark-3.2.1", "userCreator": format!("{user}-{creator}")},
    });
    s.submit_json(user, &body).await
}

async fn done(s: &Server, user: &str, exec: &str) -> String {
    s.wait_status(user, exec, &["Succeed", "Failed", "Cancelled", "Timeout"], START).await
}

async fn ok(s: &Server, user: &str, exec: &str) {
    let st = done(s, user, exec).await;
    assert_eq!(st, "Succeed", "{}", s.full_log(user, exec).await);
}

fn table(rs: &[Value]) -> &Value {
    rs.iter().find(|r| r["type"] == "2").unwrap_or_else(|| panic!("no TABLE result set: {rs:?}"))
}

fn columns(t: &Value) -> Vec<(String, String)> {
    t["metadata"]
        .as_array()
        .expect("metadata")
        .iter()
        .map(|c| (c["columnName"].as_str().expect("n").to_string(), c["dataType"].as_str().expect("t").to_string()))
        .collect()
}

async fn engines(s: &Server, user: &str) -> Vec<Value> {
    let v = s.call("GET", "/linkisManager/listUserEngines", user, None).await;
    assert_eq!(v["status"], 0, "{v}");
    v["data"]["engines"].as_array().expect("engines").clone()
}

fn tmp_entries() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spark_an_ask_fails_at_once_saying_how_to_install_it() {
    let s = Server::start(&format!("{FAST}\n[spark]\nhome = \"/nonexistent/spark\"\n")).await;
    let body = json!({
        "executionContent": {"code": "select 1", "runType": "sql"},
        "labels": {"engineType": "spark-3.2.1", "userCreator": "alice-IDE"},
    });
    let t0 = Instant::now();
    let v = s.call("POST", "/entrance/submit", "alice", Some(&body.to_string())).await;
    let message = if v["status"] == 0 {
        let exec = v["data"]["execID"].as_str().expect("execID").to_string();
        assert_eq!(s.wait_done("alice", &exec).await, "Failed");
        let task = v["data"]["taskID"].as_i64().expect("taskID");
        s.job("alice", task).await["errDesc"].as_str().unwrap_or_default().to_string()
    } else {
        v["message"].as_str().unwrap_or_default().to_string()
    };
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert!(message.contains("hangar spark install") && message.contains("/nonexistent/spark"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_sql_and_pyspark_on_a_local_master() {
    let before_tmp = tmp_entries();
    let s = Server::start(&spark_toml("max_result_rows = 200000\n", "")).await;

    // SQL with types and NULLs; the Linkis client's spark-3.2.1 runs the installed Spark.
    let sql = "create table t (id int, name string, score double, born date, tags array<string>) using parquet;\n\
               insert into t values (1, 'a', 1.5, date'2020-01-02', array('x','y')), (2, null, null, null, null);\n\
               select * from t order by id";
    let (e1, t1) = spark(&s, "alice", "IDE", "sql", sql).await;
    ok(&s, "alice", &e1).await;
    let rs = s.results("alice", t1).await;
    assert_eq!(rs.len(), 1, "only the select makes a result set: {rs:?}");
    let t = table(&rs);
    let cols: Vec<(String, String)> = columns(t);
    let want = [("id", "int"), ("name", "string"), ("score", "double"), ("born", "date"), ("tags", "array<string>")];
    assert_eq!(cols, want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>());
    assert_eq!(
        t["fileContent"],
        json!([["1", "a", "1.5", "2020-01-02", "[x, y]"], ["2", "NULL", "NULL", "NULL", "NULL"]])
    );
    let job = s.job("alice", t1).await;
    let engine = job["engineInstance"].clone();
    let listed = engines(&s, "alice").await;
    let e = listed.iter().find(|e| e["instance"] == engine).unwrap_or_else(|| panic!("engine listed: {listed:?}"));
    let version = e["engineType"].as_str().expect("engineType").to_string();
    assert!(version.starts_with("spark-4."), "the alias runs the installed Spark: {e}");
    // The driver is charged on the ECM: local[2] takes 2 cores; no queue for a local master.
    assert_eq!(e["resource"]["cpu"], 2, "{e}");
    assert!(e.get("clusterResource").is_none(), "{e}");
    let ui =
        e["engineInfo"]["spark.ui.url"].as_str().unwrap_or_else(|| panic!("Spark UI URL in the engine's info: {e}"));
    assert_eq!(e["engineInfo"]["spark.master"], "local[2]");
    let page = reqwest::get(format!("{ui}/jobs/")).await.expect("Spark UI").status();
    assert!(page.is_success(), "Spark UI at {ui}: {page}");

    // A failing query: its error in errDesc; the engine goes on.
    let (e2, t2) = spark(&s, "alice", "IDE", "sql", "select * from no_such_table").await;
    assert_eq!(done(&s, "alice", &e2).await, "Failed");
    let desc = s.job("alice", t2).await["errDesc"].as_str().expect("errDesc").to_string();
    assert!(desc.contains("TABLE_OR_VIEW_NOT_FOUND") && desc.contains("no_such_table"), "{desc}");
    assert!(!desc.contains("\tat org.apache"), "no JVM stack in errDesc: {desc}");

    // PySpark: state across jobs (and seen from SQL on the same engine).
    let (e3, _) = spark(
        &s,
        "alice",
        "IDE",
        "py",
        "df = spark.range(5).withColumnRenamed('id', 'n')\ndf.createOrReplaceTempView('v')\nprint(sc.master)",
    )
    .await;
    ok(&s, "alice", &e3).await;
    let (e4, t4) = spark(&s, "alice", "IDE", "pyspark", "show(df.filter('n > 2'))").await;
    ok(&s, "alice", &e4).await;
    let rs = s.results("alice", t4).await;
    assert_eq!(columns(table(&rs)), vec![("n".to_string(), "bigint".to_string())]);
    assert_eq!(table(&rs)["fileContent"], json!([["3"], ["4"]]));
    let (e5, t5) = spark(&s, "alice", "IDE", "sql", "select count(*) as c, sum(n) as s from v").await;
    ok(&s, "alice", &e5).await;
    assert_eq!(table(&s.results("alice", t5).await)["fileContent"], json!([["5", "10"]]));
    assert_eq!(s.job("alice", t5).await["engineInstance"], engine, "one engine for sql and py");

    // Progress: reported mid-job from the job group's stages, never backwards, below 1 until the end.
    let code = "import time\nprint(sc.parallelize(range(48), 48).map(lambda x: time.sleep(0.25) or x).sum())";
    let (e6, t6) = spark(&s, "alice", "IDE", "python", code).await;
    let mut seen: Vec<f64> = Vec::new();
    let mut infos = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = s.call("GET", &format!("/entrance/{e6}/progress"), "alice", None).await;
        let p = v["data"]["progress"].as_f64().unwrap_or(0.0);
        let st = s.status("alice", &e6).await;
        if st == "Running" {
            seen.push(p);
            if v["data"]["progressInfo"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|i| i["id"].as_str().unwrap_or("").contains("linkis-spark-mix-code") && i["totalTasks"] == 48)
            }) {
                infos += 1;
            }
        }
        if ["Succeed", "Failed", "Cancelled"].contains(&st.as_str()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    ok(&s, "alice", &e6).await;
    assert_eq!(s.results("alice", t6).await[0]["fileContent"], json!([["1128"]]));
    let mid: Vec<f64> = seen.iter().copied().filter(|p| *p > 0.1 && *p < 1.0).collect();
    assert!(mid.len() >= 2, "progress seen mid-job: {seen:?}");
    assert!(seen.windows(2).all(|w| w[1] >= w[0]), "progress never moves back: {seen:?}");
    assert!(infos > 0, "per-job progress info with the job group");

    // Kill cancels the job group within 3 s; the engine serves the next job.
    let (e7, _) = spark(&s, "alice", "IDE", "py", "spark.range(10**12).count()").await;
    s.wait_status("alice", &e7, &["Running"], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let v = s.call("GET", &format!("/entrance/{e7}/kill"), "alice", None).await;
    assert_eq!(v["status"], 0, "{v}");
    assert_eq!(done(&s, "alice", &e7).await, "Cancelled");
    assert!(t0.elapsed() < Duration::from_secs(3), "kill took {:?}", t0.elapsed());
    let t0 = Instant::now();
    let (e8, t8) = spark(&s, "alice", "IDE", "sql", "select count(*) from range(1000)").await;
    ok(&s, "alice", &e8).await;
    assert!(t0.elapsed() < Duration::from_secs(10), "the next job waited {:?}: the killed job still ran", t0.elapsed());
    assert_eq!(s.job("alice", t8).await["engineInstance"], engine);

    // IDE SQL gets Linkis's default limit (5000); 100,000 rows from PySpark are paged through openFile.
    let (e9, t9) = spark(&s, "alice", "IDE", "sql", "select id from range(6000)").await;
    ok(&s, "alice", &e9).await;
    let job = s.job("alice", t9).await;
    let loc = job["resultLocation"].as_str().expect("resultLocation").to_string();
    let f = s
        .call(
            "GET",
            &format!("/filesystem/openFile?path={}&page=1&pageSize=10000", enc(&format!("{loc}/_0.dolphin"))),
            "alice",
            None,
        )
        .await;
    assert_eq!(f["data"]["fileContent"].as_array().expect("rows").len(), 5000, "IDE limit");
    let (e10, t10) =
        spark(&s, "alice", "IDE", "py", "show(spark.range(100000).selectExpr('id', 'id * 2 as twice'))").await;
    ok(&s, "alice", &e10).await;
    let loc = s.job("alice", t10).await["resultLocation"].as_str().expect("loc").to_string();
    let path = enc(&format!("{loc}/_0.dolphin"));
    let mut rows = 0;
    for page in 1..=20 {
        let f =
            s.call("GET", &format!("/filesystem/openFile?path={path}&page={page}&pageSize=5000"), "alice", None).await;
        assert_eq!(f["status"], 0, "{f}");
        let got = f["data"]["fileContent"].as_array().expect("rows");
        assert_eq!(got.len(), 5000, "page {page}");
        let first = (page - 1) * 5000;
        assert_eq!(got[0], json!([first.to_string(), (first * 2).to_string()]), "page {page}");
        rows += got.len();
    }
    assert_eq!(rows, 100_000);

    // Spark's scratch files stayed in the engine's work dir.
    let listed = engines(&s, "alice").await;
    assert_eq!(listed.len(), 1, "one Spark engine served everything: {listed:?}");
    let logs = PathBuf::from(listed[0]["engineLogPath"].as_str().expect("engineLogPath"));
    let work = logs.parent().expect("work dir").to_path_buf();
    assert!(work.join("tmp/spark-local").is_dir(), "block manager dirs in {}", work.display());
    assert!(work.join("spark-warehouse/t").is_dir(), "the warehouse in {}", work.display());
    let new_tmp: Vec<String> = tmp_entries()
        .into_iter()
        .filter(|n| !before_tmp.contains(n))
        .filter(|n| {
            n.starts_with("blockmgr-")
                || n.starts_with("spark-")
                || n.starts_with("hsperfdata_hangar")
                || n == "derby.log"
        })
        .collect();
    assert!(new_tmp.is_empty(), "Spark wrote to /tmp: {new_tmp:?}");
}

/// A standalone master and its workers, from the same pyspark package.
struct Standalone {
    procs: Vec<Child>,
    master: String,
    ui: String,
    work: tempfile::TempDir,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// The value after `marker` in a log, up to the next whitespace.
fn after(log: &str, marker: &str) -> Option<String> {
    let rest = log.split(marker).nth(1)?;
    Some(rest.split_whitespace().next()?.trim_end_matches(['.', ',']).to_string())
}

async fn standalone(workers: usize) -> Standalone {
    let home = spark_home();
    let work = tempfile::tempdir().expect("tmp");
    let class = |args: &[String], log: &str| -> Child {
        let log = std::fs::File::create(work.path().join(log)).expect("log");
        Command::new(home.join("bin/spark-class"))
            .args(args)
            .env("SPARK_HOME", &home)
            .env("SPARK_LOCAL_IP", "127.0.0.1")
            .env("SPARK_WORKER_DIR", work.path().join("worker"))
            .env("SPARK_LAUNCHER_OPTS", "-XX:-UsePerfData")
            .env("SPARK_DAEMON_JAVA_OPTS", format!("-XX:-UsePerfData -Djava.io.tmpdir={}", work.path().display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spark-class")
    };
    // Port 0 everywhere: the master says which ports it took (a port picked
    // here and handed over could be taken by then).
    let master_args =
        ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "0", "--webui-port", "0"];
    let mut procs = vec![class(&master_args.map(String::from), "master.log")];
    let deadline = Instant::now() + Duration::from_secs(120);
    let (master, ui) = loop {
        let log = std::fs::read_to_string(work.path().join("master.log")).unwrap_or_default();
        if let (Some(m), Some(p)) =
            (after(&log, "Starting Spark master at "), after(&log, "Successfully started service 'MasterUI' on port "))
        {
            break (m, format!("http://127.0.0.1:{p}"));
        }
        assert!(Instant::now() < deadline, "the standalone master did not start: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for i in 0..workers {
        let dir = work.path().join(format!("worker-{i}"));
        std::fs::create_dir_all(&dir).expect("worker dir");
        let args = [
            "org.apache.spark.deploy.worker.Worker",
            "--host",
            "127.0.0.1",
            "--cores",
            "2",
            "--memory",
            "2g",
            "--webui-port",
            "0",
            "--work-dir",
            &dir.display().to_string(),
            &master,
        ]
        .map(String::from);
        procs.push(class(&args, &format!("worker-{i}.log")));
    }
    let s = Standalone { procs, master, ui, work };
    loop {
        if let Ok(r) = reqwest::get(format!("{}/json/", s.ui)).await
            && let Ok(v) = r.json::<Value>().await
            && v["aliveworkers"].as_u64() == Some(workers as u64)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standalone cluster did not come up: {}\n{}",
            std::fs::read_to_string(s.work.path().join("master.log")).unwrap_or_default(),
            std::fs::read_to_string(s.work.path().join("worker-0.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    s
}

async fn queues(s: &Server) -> Vec<Value> {
    let v = s.call("GET", "/linkisManager/rm/queueresources", "alice", None).await;
    assert_eq!(v["status"], 0, "{v}");
    v["data"]["queues"].as_array().expect("queues").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_a_standalone_cluster_kept_apart() {
    let cluster = standalone(2).await;
    let s = Server::start(&spark_toml(
        "",
        &format!(
            "master = \"{}\"\nqueue_max_memory = \"4g\"\nqueue_max_cores = 4\nqueue_max_instances = 4\n",
            cluster.master
        ),
    ))
    .await;
    let code = |user: &str| {
        format!(
            "spark.range(0, 1000000, 1, 8).createOrReplaceTempView('{user}_view')\n\
             show(spark.sql('select count(*) as c, sum(id) as s from {user}_view'))"
        )
    };
    let (ea, ta) = spark(&s, "alice", "IDE", "py", &code("alice")).await;
    let (eb, tb) = spark(&s, "bob", "IDE", "py", &code("bob")).await;
    ok(&s, "alice", &ea).await;
    ok(&s, "bob", &eb).await;
    for (u, t) in [("alice", ta), ("bob", tb)] {
        assert_eq!(table(&s.results(u, t).await)["fileContent"], json!([["1000000", "499999500000"]]), "{u}");
    }

    // Two engines, two Spark applications on the cluster, executors on the workers.
    let (a, b) = (engines(&s, "alice").await, engines(&s, "bob").await);
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
    assert_ne!(a[0]["instance"], b[0]["instance"]);
    assert_ne!(a[0]["engineInfo"]["spark.app.id"], b[0]["engineInfo"]["spark.app.id"]);
    for e in [&a[0], &b[0]] {
        assert_eq!(e["engineInfo"]["spark.master"], json!(cluster.master), "{e}");
        let n: u32 = e["engineInfo"]["spark.executors"].as_str().unwrap_or("0").parse().unwrap_or(0);
        assert!(n >= 1, "executors registered: {e}");
        assert_eq!(e["clusterResource"]["queue"], json!(format!("sparkQueue=default@{}", cluster.master)), "{e}");
        assert_eq!(e["clusterResource"]["resource"]["cpu"], 2, "2 executors x 1 core: {e}");
    }
    let apps: Value = reqwest::get(format!("{}/json/", cluster.ui)).await.expect("master").json().await.expect("json");
    let running: Vec<&Value> = apps["activeapps"].as_array().expect("apps").iter().collect();
    assert_eq!(running.len(), 2, "{apps}");
    let worker_apps: usize = (0..2)
        .map(|i| std::fs::read_dir(cluster.work.path().join(format!("worker-{i}"))).map(|d| d.count()).unwrap_or(0))
        .sum();
    assert!(worker_apps >= 2, "executors ran in the workers' dirs");

    // Each queue charge once: 2 engines x (2 executors x 1g, 2 x 1 core, 2 instances).
    let q = queues(&s).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["usedResources"], json!({"instance": 4, "memory": "4.0 GB", "cpu": 4}), "{q:?}");
    // Apart: bob sees neither alice's view, nor her job, nor her engine.
    let (eb2, tb2) = spark(&s, "bob", "IDE", "sql", "select count(*) from alice_view").await;
    assert_eq!(done(&s, "bob", &eb2).await, "Failed");
    let desc = s.job("bob", tb2).await["errDesc"].as_str().unwrap_or_default().to_string();
    assert!(desc.contains("alice_view"), "{desc}");
    assert_eq!(s.job("bob", tb2).await["engineInstance"], b[0]["instance"], "bob's own engine");
    let body = json!({"instance": a[0]["instance"]}).to_string();
    let v = s.call("POST", "/linkisManager/killEngineConn", "bob", Some(&body)).await;
    assert_ne!(v["status"], 0, "bob stopped alice's engine: {v}");
    let v = s.call("GET", &format!("/jobhistory/{ta}/get"), "bob", None).await;
    assert_ne!(v["status"], 0, "bob read alice's job: {v}");
    let pids = engine_pids(&s.data_dir);
    let uids: std::collections::BTreeSet<String> = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|st| st.lines().find(|l| l.starts_with("Uid:")).map(str::to_string))
        .collect();
    assert_eq!(uids.len(), 2, "the two engines run as two accounts: {uids:?}");

    // Stopping the engines gives the queue back, once each.
    for (u, e) in [("alice", &a[0]), ("bob", &b[0])] {
        let body = json!({"instance": e["instance"]}).to_string();
        let v = s.call("POST", "/linkisManager/killEngineConn", u, Some(&body)).await;
        assert_eq!(v["status"], 0, "{v}");
    }
    wait_until("both engines to exit", Duration::from_secs(30), || engine_pids(&s.data_dir).is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = queues(&s).await;
        if q[0]["usedResources"] == json!({"instance": 0, "memory": "0 B", "cpu": 0})
            && q[0]["lockedResources"] == json!({"instance": 0, "memory": "0 B", "cpu": 0})
        {
            break;
        }
        assert!(Instant::now() < deadline, "the queue was not given back: {q:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
