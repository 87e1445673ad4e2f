//! The embedded DataFusion engine (`datafusion-1`) through the real `hangar
//! serve` binary: the server launches `hangar-sql-engine` from next to itself
//! (build it first: `cargo build -p hangar-sql-engine`; `cargo test
//! --workspace` and scripts/test do). Tables live as long as the engine, SQL
//! errors fail the job with DataFusion's message, a kill stops a query at once.

mod common;

use std::time::{Duration, Instant};

use common::{FAST, Server};
use serde_json::{Value, json};

/// The engine binary must be there before the server can launch it.
fn require_engine_binary() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_hangar")).with_file_name("hangar-sql-engine");
    assert!(
        bin.is_file(),
        "{} does not exist: build it first with `cargo build -p hangar-sql-engine` \
         (`cargo test --workspace` and scripts/test build it)",
        bin.display()
    );
}

async fn sql(s: &Server, code: &str) -> (String, i64) {
    let body = json!({
        "executionContent": {"code": code, "runType": "sql"},
        "labels": {"engineType": "datafusion-1", "userCreator": "alice-IDE"},
    });
    s.submit_json("alice", &body).await
}

fn metadata(rs: &Value) -> Vec<(String, String)> {
    rs["metadata"]
        .as_array()
        .expect("metadata")
        .iter()
        .map(|c| (c["columnName"].as_str().expect("name").into(), c["dataType"].as_str().expect("type").into()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_jobs_query_files_and_keep_tables() {
    require_engine_binary();
    let s = Server::start(FAST).await;
    let files = tempfile::tempdir().expect("tmp");
    let csv = files.path().join("people.csv");
    std::fs::write(&csv, "id,name,score\n1,ann,1.5\n2,bob,\n3,cid,3.25\n").expect("csv");

    // (a) DDL makes no result set; the query is a typed TABLE with NULL cells.
    let code = format!(
        "CREATE EXTERNAL TABLE people STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true');\n\
         SELECT name, score FROM people ORDER BY id",
        csv.display()
    );
    let (e1, t1) = sql(&s, &code).await;
    assert_eq!(s.wait_done("alice", &e1).await, "Succeed", "{}\n{}", s.full_log("alice", &e1).await, s.server_log());
    let rs = s.results("alice", t1).await;
    assert_eq!(rs.len(), 1, "only the query makes a result set: {rs:?}");
    assert_eq!(rs[0]["type"], "2");
    assert_eq!(metadata(&rs[0]), [("name".into(), "string".into()), ("score".into(), "double".into())]);
    assert_eq!(rs[0]["fileContent"], json!([["ann", "1.5"], ["bob", "NULL"], ["cid", "3.25"]]));
    let j1 = s.job("alice", t1).await;
    let engine = j1["engineInstance"].clone();
    assert_eq!(j1["isReuse"], false);

    // The table is still there for the next job on the same engine.
    let (e2, t2) = sql(&s, "SELECT count(*) AS n FROM people").await;
    assert_eq!(s.wait_done("alice", &e2).await, "Succeed", "{}", s.full_log("alice", &e2).await);
    let rs = s.results("alice", t2).await;
    assert_eq!(metadata(&rs[0]), [("n".into(), "bigint".into())]);
    assert_eq!(rs[0]["fileContent"], json!([["3"]]));
    let j2 = s.job("alice", t2).await;
    assert_eq!((j2["isReuse"].clone(), j2["engineInstance"].clone()), (json!(true), engine.clone()));

    // (b) A SQL error fails the job with DataFusion's message.
    let (e3, t3) = sql(&s, "SELECT * FROM no_such_table").await;
    assert_eq!(s.wait_done("alice", &e3).await, "Failed");
    let j3 = s.job("alice", t3).await;
    let desc = j3["errDesc"].as_str().expect("errDesc");
    assert!(desc.contains("no_such_table") && desc.contains("not found"), "{desc}");

    // (c) A long query is killed at once; the engine serves the next job.
    let (e4, t4) = sql(&s, "SELECT count(*) FROM range(1000000000) a, range(1000) b WHERE a.value + b.value > 0").await;
    s.wait_status("alice", &e4, &["Running"], Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        s.status("alice", &e4).await,
        "Running",
        "the query runs for minutes: {}",
        s.full_log("alice", &e4).await
    );
    let t0 = Instant::now();
    let v = s.call("GET", &format!("/entrance/{e4}/kill"), "alice", None).await;
    assert_eq!(v["status"], 0, "{v}");
    assert_eq!(s.wait_status("alice", &e4, &["Cancelled"], Duration::from_secs(5)).await, "Cancelled");
    assert!(t0.elapsed() < Duration::from_secs(2), "kill took {:?}", t0.elapsed());
    assert_eq!(s.job("alice", t4).await["engineInstance"], engine);

    let (e5, t5) = sql(&s, "SELECT name FROM people WHERE score IS NULL").await;
    assert_eq!(s.wait_done("alice", &e5).await, "Succeed", "{}", s.full_log("alice", &e5).await);
    assert_eq!(s.results("alice", t5).await[0]["fileContent"], json!([["bob"]]));
    assert_eq!(s.job("alice", t5).await["engineInstance"], engine, "the same engine after the kill");
}
