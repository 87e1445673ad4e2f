//! The python engine through the real `hangar serve` binary: one stateful
//! interpreter per engine, tracebacks as errors, kill by KeyboardInterrupt,
//! TABLE result sets and streamed logs.

mod common;

use std::time::{Duration, Instant};

use common::{FAST, Server, engine_pids, wait_until};
use serde_json::{Value, json};

async fn python(s: &Server, code: &str) -> (String, i64) {
    let body = json!({
        "executionContent": {"code": code, "runType": "python"},
        "labels": {"engineType": "python-python3", "userCreator": "alice-IDE"},
    });
    s.submit_json("alice", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_jobs_share_one_interpreter_per_engine() {
    let mut s = Server::start(FAST).await;

    // (a) State set by one job is seen by the next on the same engine.
    let (e1, t1) = python(&s, "x = 41\ndef f(): return x + 1").await;
    assert_eq!(s.wait_done("alice", &e1).await, "Succeed", "{}", s.full_log("alice", &e1).await);
    let (e2, t2) = python(&s, "print(f())").await;
    assert_eq!(s.wait_done("alice", &e2).await, "Succeed", "{}", s.full_log("alice", &e2).await);
    let rs = s.results("alice", t2).await;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0]["type"], "1");
    assert_eq!(rs[0]["fileContent"], json!([["42"]]));
    let (j1, j2) = (s.job("alice", t1).await, s.job("alice", t2).await);
    assert_eq!(j2["isReuse"], true, "{j2}");
    assert_eq!(j1["engineInstance"], j2["engineInstance"]);
    let engine = j1["engineInstance"].clone();

    // (b) An exception fails the job with the Python traceback.
    let (e3, t3) = python(&s, "def g():\n    return 1 / 0\ng()").await;
    assert_eq!(s.wait_done("alice", &e3).await, "Failed");
    let desc = s.job("alice", t3).await["errDesc"].as_str().expect("errDesc").to_string();
    assert!(desc.contains("Traceback") && desc.contains("ZeroDivisionError"), "{desc}");

    // (c) A kill interrupts a long loop fast; the next job still sees `x`.
    let (e4, t4) = python(&s, "print('looping')\nwhile True: pass").await;
    s.wait_status("alice", &e4, &["Running"], Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let v = s.call("GET", &format!("/entrance/{e4}/kill"), "alice", None).await;
    assert_eq!(v["status"], 0, "{v}");
    assert_eq!(s.wait_done("alice", &e4).await, "Cancelled");
    assert!(t0.elapsed() < Duration::from_secs(2), "kill took {:?}", t0.elapsed());
    assert_eq!(s.job("alice", t4).await["engineInstance"], engine);
    let (e5, t5) = python(&s, "print(x)").await;
    assert_eq!(s.wait_done("alice", &e5).await, "Succeed", "{}", s.full_log("alice", &e5).await);
    assert_eq!(s.results("alice", t5).await[0]["fileContent"], json!([["41"]]));
    assert_eq!(s.job("alice", t5).await["engineInstance"], engine, "the same engine serves the next job");

    // (d) show_table makes a TABLE result set with types and NULLs.
    let (e6, t6) = python(&s, "show_table([[1,'a',None],[2,'b',1.5]], columns=['id','name','score'])").await;
    assert_eq!(s.wait_done("alice", &e6).await, "Succeed", "{}", s.full_log("alice", &e6).await);
    let rs = s.results("alice", t6).await;
    let table: &Value = rs.iter().find(|r| r["type"] == "2").unwrap_or_else(|| panic!("no TABLE result set: {rs:?}"));
    let meta: Vec<(&str, &str)> = table["metadata"]
        .as_array()
        .expect("metadata")
        .iter()
        .map(|c| (c["columnName"].as_str().expect("name"), c["dataType"].as_str().expect("type")))
        .collect();
    assert_eq!(meta, vec![("id", "int"), ("name", "string"), ("score", "double")]);
    assert_eq!(table["fileContent"], json!([["1", "a", "NULL"], ["2", "b", "1.5"]]));

    // An interpreter that dies fails its job with the reason; its engine exits
    // and the next job gets a fresh one.
    let (e7, t7) =
        python(&s, "import sys, os, time\nprint('bye', file=sys.stderr)\ntime.sleep(0.2)\nos._exit(3)").await;
    assert_eq!(s.wait_done("alice", &e7).await, "Failed");
    let desc = s.job("alice", t7).await["errDesc"].as_str().expect("errDesc").to_string();
    assert!(desc.contains("python interpreter exited: exit code 3") && desc.contains("bye"), "{desc}");
    wait_until("the engine of the dead interpreter to exit", Duration::from_secs(5), || {
        engine_pids(&s.data_dir).is_empty()
    })
    .await;
    let (e8, t8) = python(&s, "print('x' in globals())").await;
    assert_eq!(s.wait_done("alice", &e8).await, "Succeed", "{}", s.full_log("alice", &e8).await);
    assert_eq!(s.results("alice", t8).await[0]["fileContent"], json!([["False"]]));
    assert_eq!(s.job("alice", t8).await["isReuse"], false);

    // A clean shutdown leaves neither engine nor interpreter behind.
    assert_eq!(engine_pids(&s.data_dir).len(), 2, "an engine and its interpreter run");
    assert!(s.stop().success());
    wait_until("no engine or interpreter left", Duration::from_secs(3), || engine_pids(&s.data_dir).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_output_and_logs_stream_while_the_job_runs() {
    let s = Server::start(FAST).await;
    let code = "import sys, time\n\
                for i in range(3):\n    print('line', i)\n    print('warn', i, file=sys.stderr)\n    time.sleep(0.7)";
    let (exec, task) = python(&s, code).await;
    s.wait_status("alice", &exec, &["Running"], Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = s.full_log("alice", &exec).await;
        if text.contains("warn 0") {
            break;
        }
        assert!(Instant::now() < deadline, "no stderr line in the log while running:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.status("alice", &exec).await, "Running", "the stderr line was in the log before the end");
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    let text = s.full_log("alice", &exec).await;
    assert!(text.contains("warn 0") && text.contains("warn 2"), "{text}");
    let rs = s.results("alice", task).await;
    assert_eq!(rs[0]["fileContent"], json!([["line 0"], ["line 1"], ["line 2"]]));
}
