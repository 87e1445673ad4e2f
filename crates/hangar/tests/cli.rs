//! The `hangar` client commands and the operator views, against a real server.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{FAST, Server, TOKEN, engine_pids, wait_until};

use common::hangar_cli as hangar;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_and_operator_views() {
    let s = Server::start(FAST).await;
    // Quiet by default: the program's stdout and stderr, nothing else.
    let out = hangar(&s, "alice", &["run", "--engine", "shell-1", "--code", "echo hi; echo note >&2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(text(&out.stderr), "note\n");
    // `-v` adds the job's log.
    let out = hangar(&s, "alice", &["run", "-v", "--code", "echo hi"]);
    let err = text(&out.stderr);
    assert!(err.contains("submitted job 2") && err.contains("ended Succeed"), "{err}");

    // A failure: its partial output, its reason once, the program's exit code.
    let out = hangar(&s, "alice", &["run", "--code", "echo part; echo bad >&2; exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(text(&out.stdout), "part\n");
    assert_eq!(text(&out.stderr), "bad\njob 3 Failed: shell script ended with exit code 4\n");

    let status = text(&hangar(&s, "alice", &["status", "1"]).stdout);
    assert!(
        status.starts_with("Succeed\n") && status.contains("duration:") && status.contains("progress:  100%"),
        "{status}"
    );
    let failed = text(&hangar(&s, "alice", &["status", "3"]).stdout);
    assert!(
        failed.starts_with("Failed\n") && failed.contains("exit code: 4") && failed.contains("reason:"),
        "{failed}"
    );
    let jobs = text(&hangar(&s, "alice", &["jobs", "--status", "Succeed", "--csv"]).stdout);
    assert_eq!(jobs.lines().count(), 3, "header and jobs 2, 1: {jobs}");
    assert!(jobs.starts_with("ID,STATUS") && jobs.lines().nth(1).is_some_and(|l| l.starts_with("2,Succeed")), "{jobs}");
    assert!(text(&hangar(&s, "bob", &["jobs"]).stdout).lines().count() == 1, "bob sees none of alice's jobs");
    assert_eq!(text(&hangar(&s, "alice", &["result", "1"]).stdout), "hi\n");
    assert!(text(&hangar(&s, "alice", &["log", "1"]).stdout).contains("ended Succeed"));
    let other = hangar(&s, "bob", &["status", "1"]);
    assert_eq!(other.status.code(), Some(2));
    assert!(text(&other.stderr).contains("belongs to another user"), "{}", text(&other.stderr));

    // Code from standard input.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["run"])
        .env("HANGAR_SERVER", &s.base)
        .env("HANGAR_USER", "alice")
        .env("HANGAR_TOKEN", TOKEN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(b"echo from-stdin\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(text(&out.stdout), "from-stdin\n", "{}", text(&out.stderr));

    let engines = text(&hangar(&s, "alice", &["engines"]).stdout);
    assert!(engines.starts_with("INSTANCE") && engines.contains("shell-1") && engines.contains("alice"), "{engines}");
    let instance = engines.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("row").to_string();
    let res = text(&hangar(&s, "alice", &["resources"]).stdout);
    assert!(res.contains("alice-IDE") && res.contains("shell-1") && res.contains("256.0 MB"), "{res}");
    let ecms = hangar(&s, "alice", &["ecms"]);
    assert_eq!(ecms.status.code(), Some(2), "ecms is for admins");
    let ecms = text(&hangar(&s, "admin", &["ecms"]).stdout);
    assert!(ecms.contains("Running") && ecms.lines().count() == 2, "{ecms}");

    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("hangar_engine_asks_total 4"), "{metrics}");
    assert!(metrics.contains("hangar_engine_reuse_hits_total 3"), "{metrics}");
    assert!(metrics.contains("hangar_engine_start_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("hangar_engines{status=\"Unlock\",engine_type=\"shell-1\"} 1"), "{metrics}");

    let denied = hangar(&s, "bob", &["kill-engine", &instance]);
    assert_eq!(denied.status.code(), Some(2));
    let killed = hangar(&s, "alice", &["kill-engine", &instance]);
    assert_eq!(killed.status.code(), Some(0), "{}", text(&killed.stderr));
    wait_until("engine process gone", Duration::from_secs(5), || engine_pids(&s.data_dir).is_empty()).await;
    assert_eq!(text(&hangar(&s, "alice", &["engines"]).stdout).lines().count(), 1, "only the header is left");
    let res = text(&hangar(&s, "alice", &["resources"]).stdout);
    assert!(res.contains("0 B / 0 cores / 0 inst  0 B / 0 cores / 0 inst"), "resources back to zero: {res}");
}

#[test]
fn a_client_without_a_server_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["run", "--server", "http://127.0.0.1:9", "--code", "echo"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot reach the Hangar server"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_carries_logs_progress_and_the_end_while_the_job_runs() {
    let s = Server::start(FAST).await;
    let conn = |user: &str| hangar_cli::Connection {
        server: s.base.clone(),
        user: user.into(),
        token: TOKEN.into(),
        cookie: None,
    };
    let client = hangar_cli::Client::new(conn("alice")).expect("client");
    let (exec, _) = s.shell("alice", "for i in 1 2 3; do echo line$i >&2; sleep 0.3; done; echo out").await;
    let mut ev = client.open_events(&exec).await.expect("open").expect("an event stream");
    let mut seen: Vec<(std::time::Instant, serde_json::Value)> = Vec::new();
    while let Some(v) = ev.next().await.expect("event") {
        let end = v["type"] == "end";
        seen.push((std::time::Instant::now(), v));
        if end {
            break;
        }
    }
    let (end_at, end) = seen.last().cloned().expect("events");
    assert_eq!(end["status"], "Succeed", "{seen:?}");
    let line1 = seen
        .iter()
        .find(|(_, v)| v["type"] == "log" && v["lines"].to_string().contains("line1"))
        .expect("line1 streamed");
    assert!(end_at.duration_since(line1.0) >= Duration::from_millis(300), "line1 arrived while running");
    assert!(seen.iter().any(|(_, v)| v["type"] == "progress"), "progress events");
    assert!(seen.iter().any(|(_, v)| v["type"] == "resultSet"), "result set event");
    // A finished job's stream is just its end; another user's is refused.
    let mut ev = client.open_events(&exec).await.expect("open").expect("stream");
    assert_eq!(ev.next().await.expect("e").expect("end")["type"], "end");
    let bob = hangar_cli::Client::new(conn("bob")).expect("client");
    assert!(bob.open_events(&exec).await.is_err());
    // `hangar run -v` follows through the stream and prints every log line once.
    let out = hangar(&s, "alice", &["run", "-v", "--code", "for i in 1 2 3; do echo e$i >&2; sleep 0.1; done"]);
    let err = text(&out.stderr);
    for l in [" INFO e1", " INFO e2", " INFO e3", "Your job is accepted", "ended Succeed"] {
        assert_eq!(err.lines().filter(|x| x.contains(l)).count(), 1, "{l} once in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn material_commands_upload_use_version_and_delete() {
    let s = Server::start(FAST).await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("words.txt");
    std::fs::write(&file, "first\n").expect("w");
    let f = file.to_str().expect("path");
    let out = hangar(&s, "alice", &["material", "upload", f]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let up = text(&out.stdout);
    let id = up.split_whitespace().nth(1).expect("resource id").to_string();
    assert!(up.contains("version v000001") && up.contains(&format!("hangar.engineconn.resources={id}")), "{up}");
    std::fs::write(&file, "second\n").expect("w");
    assert_eq!(hangar(&s, "alice", &["material", "upload", "--update", &id, f]).status.code(), Some(0));
    let versions = text(&hangar(&s, "alice", &["material", "versions", &id]).stdout);
    assert!(versions.contains("v000001") && versions.contains("v000002"), "{versions}");
    assert!(text(&hangar(&s, "alice", &["material", "list"]).stdout).contains(&id));
    let old = hangar(&s, "alice", &["material", "download", &id, "--version", "v000001"]);
    assert_eq!(text(&old.stdout), "first\n");

    let startup = format!("hangar.engineconn.resources={id}");
    let out = hangar(&s, "alice", &["run", "--startup", &startup, "--code", "cat \"$HANGAR_RESOURCES_DIR/words.txt\""]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "second\n");

    // Not bob's: every command says so and exits non-zero.
    let theirs = hangar(&s, "bob", &["material", "download", &id]);
    assert_ne!(theirs.status.code(), Some(0));
    assert!(text(&theirs.stderr).contains("no resource"), "{}", text(&theirs.stderr));
    assert_ne!(hangar(&s, "alice", &["material", "upload", "/nonexistent/file"]).status.code(), Some(0));
    assert_eq!(hangar(&s, "alice", &["material", "delete", &id]).status.code(), Some(0));
    assert_ne!(hangar(&s, "alice", &["material", "versions", &id]).status.code(), Some(0));
}
