//! `hangar bench --spark`: the Spark engine against Spark itself, same run.
//!
//! * cold: submit -> result of `select 1` on a new engine (`executeOnce`),
//!   against `spark-sql -e 'select 1'` and against a bare PySpark
//!   `SparkSession` start + `select 1`, each as a fresh process;
//! * warm: `select count(*)` over a cached generated table on a warm engine,
//!   against the same query in a warm PySpark session.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::{BenchServer, Dist, print_table, row};

const COLD_RUNS: usize = 3;
const WARM_RUNS: usize = 30;
/// Queries run first on both sides, untimed (JIT, caches).
const WARMUP: usize = 5;
const TABLE: &str = "spark.range(0, 2000000, 1, 4).selectExpr('id', 'id % 100 as k').cache().createOrReplaceTempView('g')\n\
                     spark.table('g').count()";
const QUERY: &str = "select count(*) from g where k = 7";

pub async fn run(spark_home: &str) -> anyhow::Result<Value> {
    let spark = hangar_plugin_spark::install::find(spark_home, "", Path::new("hangar-data"))
        .map_err(anyhow::Error::msg)
        .context("the Spark benchmark needs Spark")?;
    let scratch = std::env::temp_dir().join(format!("hangar-bench-spark-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let env = |cmd: &mut Command| {
        cmd.env("SPARK_HOME", &spark.home)
            .env("SPARK_LOCAL_IP", "127.0.0.1")
            .env("PYSPARK_PYTHON", &spark.python)
            .current_dir(&scratch);
    };

    // Baselines: fresh processes, as a user without Hangar would run them.
    let java_opts = format!("-Djava.io.tmpdir={} -XX:-UsePerfData", scratch.display());
    let mut spark_sql = Vec::new();
    for _ in 0..COLD_RUNS {
        let mut cmd = Command::new(spark.home.join("bin/spark-sql"));
        env(&mut cmd);
        cmd.args(["--master", "local[2]", "--driver-java-options", &java_opts, "-e", "select 1"]);
        spark_sql.push(time(&mut cmd)?);
    }
    let bare = "import time, sys\nt0 = time.time()\nfrom pyspark.sql import SparkSession\n\
                s = SparkSession.builder.master('local[2]').getOrCreate()\ns.sql('select 1').collect()\n";
    let mut bare_session = Vec::new();
    for _ in 0..COLD_RUNS {
        let mut cmd = Command::new(&spark.python);
        env(&mut cmd);
        cmd.args(["-c", bare]);
        bare_session.push(time(&mut cmd)?);
    }
    let warm_script = format!(
        "import time, json\nfrom pyspark.sql import SparkSession\nspark = SparkSession.builder.master('local[2]').getOrCreate()\n\
         {TABLE}\nfor _ in range({WARMUP}):\n    spark.sql('{QUERY}').collect()\nts = []\nfor _ in range({WARM_RUNS}):\n    t0 = time.perf_counter()\n    spark.sql('{QUERY}').collect()\n    \
         ts.append((time.perf_counter() - t0) * 1e3)\nprint(json.dumps(ts))\n"
    );
    let mut cmd = Command::new(&spark.python);
    env(&mut cmd);
    let out = cmd.args(["-c", &warm_script]).output()?;
    if !out.status.success() {
        bail!("warm PySpark baseline failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("[]").to_string();
    let warm_base: Vec<f64> = serde_json::from_str(&last).context("warm baseline output")?;

    // Hangar.
    let server = BenchServer::start_with(&format!("[spark]\nhome = \"{}\"\n", spark.home.display())).await?;
    let mut cold = Vec::new();
    for _ in 0..COLD_RUNS {
        let labels = json!({"engineType": "spark-3.2.1", "userCreator": "bench-COLD", "executeOnce": ""});
        let t0 = Instant::now();
        let (exec, _) = server.submit_as("select 1", "sql", &labels, &json!({})).await?;
        server.wait_done(&exec).await?;
        cold.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let labels = json!({"engineType": "spark-3.2.1", "userCreator": "bench-WARM"});
    let (exec, _) = server.submit_as(TABLE, "py", &labels, &json!({})).await?;
    server.wait_done(&exec).await?;
    for _ in 0..WARMUP {
        let (exec, _) = server.submit_as(QUERY, "sql", &labels, &json!({})).await?;
        server.wait_done(&exec).await?;
    }
    let mut warm = Vec::new();
    for _ in 0..WARM_RUNS {
        let t0 = Instant::now();
        let (exec, _) = server.submit_as(QUERY, "sql", &labels, &json!({})).await?;
        server.wait_done(&exec).await?;
        warm.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);

    let (cold, spark_sql, bare_session) = (Dist(cold), Dist(spark_sql), Dist(bare_session));
    let (warm, warm_base) = (Dist(warm), Dist(warm_base));
    println!(
        "Spark {} ({}), local[2]; cold: {COLD_RUNS} runs each, p50; warm: {WARM_RUNS} runs, p50",
        spark.version,
        spark.home.display()
    );
    print_table(&[
        row("cold select 1, submit -> result", cold.pct(0.5), spark_sql.pct(0.5), "spark-sql -e 'select 1'", "-"),
        row(
            "cold select 1, submit -> result",
            cold.pct(0.5),
            bare_session.pct(0.5),
            "bare PySpark session + select 1",
            "-",
        ),
        row(
            &format!("warm `{QUERY}` (2M cached rows)"),
            warm.pct(0.5),
            warm_base.pct(0.5),
            "same query, warm PySpark",
            "-",
        ),
    ]);
    Ok(json!({
        "spark_version": spark.version,
        "cold_select1_submit_to_result": cold.json(),
        "baseline_spark_sql_e": spark_sql.json(),
        "baseline_bare_pyspark_session": bare_session.json(),
        "warm_count": warm.json(),
        "baseline_warm_pyspark_count": warm_base.json(),
    }))
}

fn time(cmd: &mut Command) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}
