//! The jdbc engine through the real `hangar serve` binary against the test
//! PostgreSQL (`HANGAR_TEST_POSTGRES_URL`, set by scripts/test): typed TABLE
//! result sets, SQL errors, kill by `pg_cancel_backend` with the connection
//! kept, and the runtime password kept out of logs, errors and results.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{FAST, Server};
use serde_json::{Value, json};

const PASSWORD: &str = "secret-pw-123";

fn pg_url() -> String {
    match std::env::var("HANGAR_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "HANGAR_TEST_POSTGRES_URL is not set: the jdbc engine tests need a PostgreSQL server \
             (scripts/test starts one; or eval \"$(scripts/pg-start DIR)\")"
        ),
    }
}

/// Submit SQL to the jdbc engine with the connection in the runtime parameters.
async fn sql(s: &Server, code: &str) -> (String, i64) {
    let body = json!({
        "executionContent": {"code": code, "runType": "jdbc"},
        "params": {"configuration": {"runtime": {
            "jdbc.url": pg_url(),
            "jdbc.username": "postgres",
            "jdbc.password": PASSWORD,
        }}},
        "labels": {"engineType": "jdbc-4", "userCreator": "alice-IDE"},
    });
    s.submit_json("alice", &body).await
}

/// One value from the test server through psql, on a connection of its own.
fn psql(query: &str) -> String {
    let out = Command::new("psql").args([pg_url().as_str(), "-Atc", query]).output().expect("psql");
    assert!(out.status.success(), "psql {query}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The job's result files as stored, byte for byte.
fn result_files(job: &Value) -> Vec<(String, Vec<u8>)> {
    let loc = job["resultLocation"].as_str().expect("resultLocation");
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(loc) {
        for e in dir.flatten() {
            out.push((e.path().display().to_string(), std::fs::read(e.path()).expect("result file")));
        }
    }
    out
}

/// The password is nowhere in what a client sees of a job: its log, its job
/// history (apart from the submitted parameters) and its result files.
async fn assert_no_password(s: &Server, exec: &str, task: i64) {
    let text = s.full_log("alice", exec).await;
    assert!(!text.contains(PASSWORD), "password in the job log:\n{text}");
    let job = s.job("alice", task).await;
    assert!(!job["errDesc"].as_str().unwrap_or_default().contains(PASSWORD), "password in errDesc: {job}");
    for (path, bytes) in result_files(&job) {
        assert!(!String::from_utf8_lossy(&bytes).contains(PASSWORD), "password in {path}");
    }
    // The whole job view, paramsJson included, is free of it.
    assert!(!job.to_string().contains(PASSWORD), "password in the job history: {job}");
    assert!(job["paramsJson"].as_str().unwrap_or_default().contains("******"), "redacted, not dropped: {job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_jobs_run_sql_on_postgres() {
    let s = Server::start(FAST).await;
    let t = format!(
        "t_{:x}_{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("t").as_nanos(),
        std::process::id()
    );

    // (a) Several statements: DDL and DML log their counts, the query is a typed TABLE.
    let code = format!(
        "create table {t}(id int, name text, score double precision, ok boolean, d date);\n\
         insert into {t} values (1,'a',1.5,true,'2024-01-02'),(2,null,null,false,null);\n\
         select * from {t} order by id"
    );
    let (e1, t1) = sql(&s, &code).await;
    assert_eq!(s.wait_done("alice", &e1).await, "Succeed", "{}", s.full_log("alice", &e1).await);
    let text = s.full_log("alice", &e1).await;
    assert!(text.contains("2 rows affected"), "{text}");
    let rs = s.results("alice", t1).await;
    assert_eq!(rs.len(), 1, "only the query makes a result set: {rs:?}");
    assert_eq!(rs[0]["type"], "2");
    let meta: Vec<(&str, &str)> = rs[0]["metadata"]
        .as_array()
        .expect("metadata")
        .iter()
        .map(|c| (c["columnName"].as_str().expect("name"), c["dataType"].as_str().expect("type")))
        .collect();
    assert_eq!(meta, vec![("id", "int"), ("name", "string"), ("score", "double"), ("ok", "boolean"), ("d", "date")]);
    assert_eq!(
        rs[0]["fileContent"],
        json!([["1", "a", "1.5", "true", "2024-01-02"], ["2", "NULL", "NULL", "false", "NULL"]])
    );
    let engine = s.job("alice", t1).await["engineInstance"].clone();
    let pid: i64 = text
        .split("backend pid ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no backend pid in the log:\n{text}"));
    assert_no_password(&s, &e1, t1).await;

    // (b) A SQL error fails the job with PostgreSQL's message; later statements do not run.
    let (e2, t2) = sql(&s, &format!("select * from nope_{t}; drop table {t}")).await;
    assert_eq!(s.wait_done("alice", &e2).await, "Failed");
    let job = s.job("alice", t2).await;
    let desc = job["errDesc"].as_str().expect("errDesc");
    assert!(desc.contains(&format!("relation \"nope_{t}\" does not exist")), "{desc}");
    assert_eq!(psql(&format!("select count(*) from pg_class where relname = '{t}'")), "1", "drop did not run");
    assert_no_password(&s, &e2, t2).await;

    // (c) A kill cancels the query on the server at once; the engine and its connection go on.
    let (e3, t3) = sql(&s, "select pg_sleep(60)").await;
    let active = format!("select count(*) from pg_stat_activity where pid = {pid} and state = 'active'");
    let deadline = Instant::now() + Duration::from_secs(20);
    while psql(&format!("{active} and query = 'select pg_sleep(60)'")) != "1" {
        assert!(Instant::now() < deadline, "the query never ran on backend {pid}:\n{}", s.full_log("alice", &e3).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now();
    let v = s.call("GET", &format!("/entrance/{e3}/kill"), "alice", None).await;
    assert_eq!(v["status"], 0, "{v}");
    assert_eq!(s.wait_done("alice", &e3).await, "Cancelled");
    assert!(t0.elapsed() < Duration::from_secs(3), "kill took {:?}", t0.elapsed());
    assert_eq!(psql(&active), "0", "backend {pid} still runs a query after the kill");
    let j3 = s.job("alice", t3).await;
    assert_eq!(j3["engineInstance"], engine);
    assert!(result_files(&j3).is_empty(), "a killed query leaves no result file");
    assert_no_password(&s, &e3, t3).await;

    let (e4, t4) = sql(&s, &format!("select count(*) as n from {t}; drop table {t}")).await;
    assert_eq!(s.wait_done("alice", &e4).await, "Succeed", "{}", s.full_log("alice", &e4).await);
    assert_eq!(s.results("alice", t4).await[0]["fileContent"], json!([["2"]]));
    let j4 = s.job("alice", t4).await;
    assert_eq!(j4["engineInstance"], engine, "the same engine serves the next job");
    assert!(!s.full_log("alice", &e4).await.contains("connecting to"), "the connection was reused");
    assert_no_password(&s, &e4, t4).await;

    // (d) Nothing the server wrote to its data folder holds the password, apart
    // from the job store (which keeps the submitted parameters).
    let mut stack = vec![s.data_dir.clone()];
    let mut scanned = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("data dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".db")) {
                let bytes = std::fs::read(&p).unwrap_or_default();
                assert!(!String::from_utf8_lossy(&bytes).contains(PASSWORD), "password in {}", p.display());
                scanned.push(p.display().to_string());
            }
        }
    }
    assert!(scanned.iter().any(|p| p.ends_with(".log")), "no job or engine log among {scanned:?}");
    assert!(!s.server_log().contains(PASSWORD), "password in the server log");
}
