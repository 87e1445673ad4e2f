//! What a new user meets in the first hour: one server per data dir (and a
//! crash never leaves the data dir locked), a typo in a `HANGAR_*` variable
//! stops the server naming the right one, and sessions keep an
//! interpreter's state even when several engines of the same labels run.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{FAST, Server, TOKEN};

fn hangar(s: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_SERVER", &s.base)
        .env("HANGAR_USER", "alice")
        .env("HANGAR_TOKEN", TOKEN)
        .output()
        .expect("run hangar")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `hangar serve` on `data_dir` with extra environment; its exit code and stderr.
fn serve_once(data_dir: &std::path::Path, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hangar"));
    cmd.args(["serve", "--port", "0", "--data-dir"]).arg(data_dir).env_remove("HANGAR_CONFIG").stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    for _ in 0..200 {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (out.status.code(), text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    (None, text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_per_data_dir_and_a_crash_leaves_no_lock() {
    let s = Server::start(FAST).await;
    let out = hangar(&s, &["run", "-e", "python-python3", "-s", "work", "-c", "x = 41"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let (code, err) = serve_once(&s.data_dir, &[]);
    assert_eq!(code, Some(2), "a second server must refuse: {err}");
    assert!(err.contains("is in use by the Hangar server at") && err.contains(&s.base), "{err}");
    // The first server and its engine are untouched.
    let out = hangar(&s, &["run", "-e", "python-python3", "-s", "work", "-c", "print(x + 1)"]);
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "42\n".to_string()), "{}", text(&out.stderr));

    // kill -9 frees the lock: the restarted server takes the data dir and its engines back.
    let s = s.restart().await;
    let out = hangar(&s, &["run", "-e", "python-python3", "-s", "work", "-c", "print(x + 2)"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "43\n".to_string()),
        "{}\n{}",
        text(&out.stderr),
        s.server_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_user_or_hangar_user_the_client_acts_as_its_account() {
    let s = Server::start(FAST).await;
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).expect("getpwuid").expect("account").name;
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["run", "--code", "echo hi"])
        .env("HANGAR_SERVER", &s.base)
        .env("HANGAR_TOKEN", TOKEN)
        .env_remove("USER")
        .env_remove("HANGAR_USER")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let job = s.job(&me, 1).await;
    assert_eq!(job["executeUser"], me.as_str(), "{job}");
}

#[test]
fn a_misspelt_variable_stops_the_server_naming_the_right_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (code, err) = serve_once(&tmp.path().join("data"), &[("HANGAR_SERVER_PROT", "9002")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("unknown environment variable HANGAR_SERVER_PROT (did you mean HANGAR_SERVER_PORT?)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_engine_while_other_engines_of_the_same_labels_run() {
    let s = Server::start(FAST).await;
    let base = s.base.clone();
    let run = move |args: Vec<&'static str>| {
        let base = base.clone();
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_hangar"))
                .args(args)
                .env("HANGAR_SERVER", base)
                .env("HANGAR_USER", "alice")
                .env("HANGAR_TOKEN", TOKEN)
                .output()
                .expect("run")
        })
    };
    // The session's engine is busy; a plain job meanwhile gets an engine of its own.
    let first = run(vec!["run", "-e", "python-python3", "-s", "s1", "-c", "import time; x = 41; time.sleep(1.5)"]);
    std::thread::sleep(Duration::from_millis(700));
    let plain = run(vec!["run", "-e", "python-python3", "-c", "import time; time.sleep(1); print('plain')"]);
    std::thread::sleep(Duration::from_millis(300));
    // The session's next job waits for its engine instead of taking the free one.
    let second = run(vec!["run", "-e", "python-python3", "-s", "s1", "-c", "print(x + 1)"]);
    for (name, h) in [("first", first), ("plain", plain)] {
        let out = h.join().expect("join");
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
    }
    let out = second.join().expect("join");
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "42\n".to_string()), "{}", text(&out.stderr));
    let engines = text(&hangar(&s, &["engines", "--csv"]).stdout);
    assert_eq!(engines.lines().filter(|l| l.contains("python-python3")).count(), 2, "{engines}");
    // A plain job may go to either engine; the session's job always goes to its own.
    for _ in 0..3 {
        let out = hangar(&s, &["run", "-e", "python-python3", "-s", "s1", "-c", "print(x)"]);
        assert_eq!(text(&out.stdout), "41\n", "{}", text(&out.stderr));
    }
}
