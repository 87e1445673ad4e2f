//! Result sets on their way from an engine to the Entrance, which may be on
//! another host: each is streamed over HTTP, so a 1 GiB result set goes
//! through without the engine or the server holding it, `openFile` pages it
//! the same way, the per-file limit fails a job naming its key, and live
//! output stops at its allowance while the result set keeps everything.

mod common;

use std::time::{Duration, Instant};

use common::{Server, enc, engine_pids};
use serde_json::json;

fn config(max_result_set_size: &str) -> String {
    format!(
        "[entrance]\nmax_result_set_size = \"{max_result_set_size}\"\n\
         [engineconn]\nmax_result_rows = 100000\nlog_push_interval_ms = 20\nheartbeat_interval_ms = 500\n"
    )
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

async fn run(s: &Server, code: &str) -> (String, i64, String) {
    let (exec, task) = s.shell("alice", code).await;
    let st = s.wait_status("alice", &exec, &["Succeed", "Failed", "Cancelled"], Duration::from_secs(120)).await;
    (st, task, exec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_result_set_streams_through_and_pages() {
    let s = Server::start(&config("1100m")).await;
    // 1024 lines of 1 MiB: 1 GiB of output.
    let t = Instant::now();
    let (st, task, exec) = run(&s, "head -c 1073741824 /dev/zero | tr '\\0' a | fold -w 1048576").await;
    let took = t.elapsed();
    assert_eq!(st, "Succeed", "{}", s.server_log());
    let job = s.job("alice", task).await;
    let dir = job["resultLocation"].as_str().expect("location").trim_start_matches("file://").to_string();
    let file = std::path::Path::new(&dir).join("_0.dolphin");
    let size = std::fs::metadata(&file).expect("the stored result set").len();
    let log = s.full_log("alice", &exec).await;
    assert!(size > 1 << 30, "{size} bytes stored; the job's log:\n{log}");
    let server_peak = peak_rss_mib(s.pid());
    let engine_peak = engine_pids(&s.data_dir).into_iter().map(peak_rss_mib).max().unwrap_or(0);
    println!(
        "MEASURED 1 GiB result set: {:.1} s submit -> Succeed ({:.0} MB/s); peak RSS server {server_peak} MiB, engine {engine_peak} MiB",
        took.as_secs_f64(),
        size as f64 / 1e6 / took.as_secs_f64()
    );
    assert!(server_peak < 300, "the server held the result set: peak {server_peak} MiB");
    assert!(engine_peak < 300, "the engine held the result set: peak {engine_peak} MiB");
    // Live output stopped at its allowance (a 1 MiB line is no terminal line).
    assert!(log.contains("no longer shown live"), "{log}");

    // openFile reads one page of it, and counts every row.
    let path = format!("file://{}", file.display());
    let p =
        s.call("GET", &format!("/filesystem/openFile?path={}&page=700&pageSize=1", enc(&path)), "alice", None).await;
    assert_eq!(p["status"], 0, "{}", p["message"]);
    assert_eq!(p["data"]["totalLine"], 1024);
    assert_eq!(p["data"]["fileContent"][0][0].as_str().map(str::len), Some(1 << 20));
    let too_big =
        s.call("GET", &format!("/filesystem/openFile?path={}&pageSize=1000", enc(&path)), "alice", None).await;
    assert_ne!(too_big["status"], 0, "a 1 GiB page is refused, not built");
    assert!(too_big["message"].as_str().unwrap_or("").contains("pageSize"), "{too_big}");
    let server_peak = peak_rss_mib(s.pid());
    assert!(server_peak < 300, "reading pages held the file: peak {server_peak} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_set_over_the_limit_fails_its_job_and_leaves_nothing() {
    let s = Server::start(&config("10m")).await;
    let (st, task, _) = run(&s, "head -c 20000000 /dev/zero | tr '\\0' b | fold -w 10000").await;
    assert_eq!(st, "Failed");
    let job = s.job("alice", task).await;
    let desc = job["errDesc"].as_str().unwrap_or_default();
    assert!(desc.contains("entrance.max_result_set_size") && desc.contains("10485760 bytes"), "{desc}");
    let dir = job["resultLocation"].as_str().expect("location").trim_start_matches("file://").to_string();
    let left: Vec<_> =
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "nothing half-written stays: {left:?}");
    // The engine's spool is gone too, and the engine serves the next job.
    let (st, task, _) = run(&s, "echo fine").await;
    assert_eq!(st, "Succeed");
    let rows = s.results("alice", task).await;
    assert_eq!(rows[0]["fileContent"], json!([["fine"]]));
    let spooled = std::process::Command::new("find")
        .arg(s.data_dir.join("engineconn"))
        .args(["-path", "*/tmp/results/*", "-type", "f"])
        .output()
        .expect("find");
    assert!(spooled.stdout.is_empty(), "spool files left: {}", String::from_utf8_lossy(&spooled.stdout));
}
