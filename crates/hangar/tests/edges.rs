//! The edges of tenant isolation, through the real binary: no default token
//! beyond loopback, login hardening (body-only credentials, backoff, Secure
//! cookie), sessions shared by the instances of one store, `/metrics` access, `.`/`..` creators, and URL passwords kept out
//! of job history and the job log.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{FAST, Server, TOKEN};
use serde_json::{Value, json};

use common::hash_password as hash;

/// `hangar serve --bind 0.0.0.0` with `HANGAR_TOKEN` = `token` (none: the default token).
/// Returns its exit code (`None`: it was serving, and is stopped) and its stderr.
fn serve_beyond_loopback(token: Option<&str>) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = tmp.path().join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hangar"));
    cmd.args(["serve", "--bind", "0.0.0.0", "--port", "0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env_remove("HANGAR_TOKEN")
        .env_remove("HANGAR_AUTH_TOKEN")
        .env_remove("HANGAR_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    if let Some(t) = token {
        cmd.env("HANGAR_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(st) = child.try_wait().expect("wait") {
            return (st.code(), text);
        }
        if text.contains(" listening on ") || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_refuses_the_default_token_beyond_loopback() {
    let (code, err) = serve_beyond_loopback(None);
    assert!(code.is_some_and(|c| c != 0), "must exit non-zero, got {code:?}:\n{err}");
    assert!(err.contains("auth.token") && err.contains("HANGAR_TOKEN"), "names the setting:\n{err}");
    assert!(err.contains("0.0.0.0") && err.contains("127.0.0.1"), "says how to fix it:\n{err}");
    // With a token of its own it serves.
    let (code, out) = serve_beyond_loopback(Some("a-secret-of-our-own"));
    assert_eq!(code, None, "serves with its own token:\n{out}");
}

async fn login(http: &reqwest::Client, base: &str, query: &str, body: Value) -> (u16, Option<String>, Value) {
    let r =
        http.post(format!("{base}/api/rest_j/v1/user/login{query}")).json(&body).send().await.expect("login request");
    let code = r.status().as_u16();
    let cookie = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()).map(str::to_string);
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut v: Value = r.json().await.expect("json");
    assert!(v["status"].is_i64(), "{v}");
    if let Some(r) = retry {
        v["retryAfter"] = json!(r);
    }
    (code, cookie, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_take_credentials_from_the_body_only_and_back_off_after_failures() {
    let auth = format!("users = [\"hadoop:{}\"]\nsecure_cookie = true", hash("hadoop-pw"));
    let s = Server::start_custom("", &auth, FAST).await;
    let http = reqwest::Client::new();
    let good = json!({"userName": "hadoop", "password": "hadoop-pw"});
    let bad = json!({"userName": "hadoop", "password": "wrong"});

    // Credentials in the URL are refused even with a good body, and count as nothing.
    let (_, cookie, v) = login(&http, &s.base, "?userName=hadoop&password=hadoop-pw", good.clone()).await;
    assert_ne!(v["status"], 0, "{v}");
    assert!(v["message"].as_str().expect("m").contains("only in the JSON request body"), "{v}");
    assert!(cookie.is_none());
    let (_, _, v) = login(&http, &s.base, "?password=x", good.clone()).await;
    assert_ne!(v["status"], 0, "{v}");

    // A good login sets a Secure session cookie (auth.secure_cookie); log out again.
    let (_, cookie, v) = login(&http, &s.base, "", good.clone()).await;
    assert_eq!(v["status"], 0, "{v}");
    let cookie = cookie.expect("cookie");
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");

    // Five failures are answered one by one; then attempts wait, a right password too.
    for i in 0..5 {
        let (code, _, v) = login(&http, &s.base, "", bad.clone()).await;
        assert_eq!((code, v["status"].as_i64()), (401, Some(-1)), "attempt {i}: {v}");
        assert!(v["message"].as_str().expect("m").contains("wrong user name or password"), "{v}");
    }
    let (code, _, v) = login(&http, &s.base, "", bad.clone()).await;
    assert_eq!(code, 429, "{v}");
    assert_eq!(v["status"], -1, "{v}");
    let msg = v["message"].as_str().expect("m").to_string();
    assert!(msg.contains("too many failed logins") && msg.contains("try again in"), "{msg}");
    let wait: u64 = v["retryAfter"].as_str().expect("Retry-After").parse().expect("secs");
    assert!((1..=60).contains(&wait), "{wait}");
    let (code, cookie, v) = login(&http, &s.base, "", good.clone()).await;
    assert_eq!(code, 429, "the right password waits too: {v}");
    assert!(cookie.is_none());
    // The address waits as well: another (unknown) user from here.
    let (code, _, v) = login(&http, &s.base, "", json!({"userName": "nobody", "password": "x"})).await;
    assert_eq!(code, 429, "{v}");

    // After the window a good login works and clears the count.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)).await;
    let (code, _, v) = login(&http, &s.base, "", good.clone()).await;
    assert_eq!((code, v["status"].as_i64()), (200, Some(0)), "{v}");
    let (code, _, v) = login(&http, &s.base, "", bad.clone()).await;
    assert_eq!(code, 401, "counting starts over: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_fail_like_known_ones_and_are_counted() {
    let auth = format!("users = [\"hadoop:{}\"]", hash("hadoop-pw"));
    let s = Server::start_custom("", &auth, FAST).await;
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let (code, cookie, v) = login(&http, &s.base, "", json!({"userName": "ghost", "password": "x"})).await;
        assert_eq!(code, 401, "{v}");
        assert!(cookie.is_none() && v["message"].as_str().expect("m").contains("wrong user name or password"));
    }
    let (code, _, v) = login(&http, &s.base, "", json!({"userName": "ghost", "password": "x"})).await;
    assert_eq!(code, 429, "failures of unknown users count: {v}");
}

async fn user_info(http: &reqwest::Client, base: &str, cookie: &str) -> Value {
    let r = http.get(format!("{base}/api/rest_j/v1/user/userInfo")).header("Cookie", cookie).send().await;
    r.expect("userInfo").json().await.expect("json")
}

/// Two instances on one PostgreSQL store: a login on one is a session on
/// the other, a logout on the other ends it on both, and the store holds
/// only the ticket's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_on_one_instance_holds_on_another_and_a_logout_ends_it_on_both() {
    let Ok(pg) = std::env::var("HANGAR_TEST_POSTGRES_URL") else {
        eprintln!("skipped: HANGAR_TEST_POSTGRES_URL is not set (scripts/test sets it)");
        return;
    };
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("t").as_nanos();
    let db = format!("hangar_sessions_{n:x}_{}", std::process::id());
    let out = Command::new("psql").args([pg.as_str(), "-qc", &format!("create database {db}")]).output();
    assert!(out.is_ok_and(|o| o.status.success()), "cannot create {db}");
    let url = format!("{}/{db}", pg.rsplit_once('/').map(|(b, _)| b).expect("url with a database"));
    let store = format!("store_url = \"{url}\"");
    let auth = format!("users = [\"hadoop:{}\"]", hash("hadoop-pw"));
    let a = Server::start_custom(&store, &auth, FAST).await;
    let b = Server::start_custom(&store, &auth, FAST).await;
    let http = reqwest::Client::new();

    let (code, cookie, v) = login(&http, &a.base, "", json!({"userName": "hadoop", "password": "hadoop-pw"})).await;
    assert_eq!((code, v["status"].as_i64()), (200, Some(0)), "{v}");
    let cookie = cookie.expect("cookie");
    let kv = cookie.split(';').next().expect("kv").to_string();
    let ticket = kv.split_once('=').map(|(_, t)| t.to_string()).expect("ticket");
    assert_eq!(ticket.len(), 64, "{kv}");

    let v = user_info(&http, &b.base, &kv).await;
    assert_eq!((v["status"].as_i64(), v["data"]["userName"].as_str()), (Some(0), Some("hadoop")), "on b: {v}");
    // The store holds the session under a hash, never the cookie itself.
    let rows = Command::new("psql").args([url.as_str(), "-tAc", "select ticket_hash from hangar_session"]).output();
    let rows = String::from_utf8(rows.expect("psql").stdout).expect("utf8");
    assert_eq!(rows.lines().count(), 1, "{rows}");
    assert!(!rows.contains(&ticket) && rows.trim().len() == 64, "{rows}");

    let r = http.post(format!("{}/api/rest_j/v1/user/logout", b.base)).header("Cookie", &kv).send().await;
    let v: Value = r.expect("logout").json().await.expect("json");
    assert_eq!(v["status"], 0, "{v}");
    for s in [&a, &b] {
        let v = user_info(&http, &s.base, &kv).await;
        assert_ne!(v["status"], 0, "the session ended on every instance: {v}");
    }
    // Token auth is untouched.
    let v = a.call("GET", "/user/userInfo", "alice", None).await;
    assert_eq!(v["data"]["userName"], "alice", "{v}");
}

async fn metrics(base: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{base}/metrics"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("metrics");
    (r.status().as_u16(), r.text().await.expect("text"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_metrics_token_when_one_is_set() {
    let s = Server::start_custom("metrics_token = \"scrape-me\"", "", FAST).await;
    let (code, text) = metrics(&s.base, &[]).await;
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("Authorization: Bearer"), "{text}");
    let (code, _) = metrics(&s.base, &[("Authorization", "Bearer scrape-mE")]).await;
    assert_eq!(code, 401);
    // Client credentials are not the metrics token.
    let (code, _) = metrics(&s.base, &[("Token-User", "admin"), ("Token-Code", TOKEN)]).await;
    assert_eq!(code, 401);
    let (code, _) = metrics(&s.base, &[("Authorization", "Basic scrape-me")]).await;
    assert_eq!(code, 401);
    let (code, text) = metrics(&s.base, &[("Authorization", "Bearer scrape-me")]).await;
    assert_eq!(code, 200, "{text}");
    let (code, _) = metrics(&s.base, &[("Authorization", "bearer scrape-me")]).await;
    assert_eq!(code, 200, "the scheme is case-insensitive");
    assert!(text.contains("hangar_engine_asks_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_beyond_loopback_need_an_admin_and_stay_open_on_loopback() {
    let auth = format!("users = [\"admin:{}\", \"alice:{}\"]", hash("admin-pw"), hash("alice-pw"));
    let s = Server::start_custom("bind = \"0.0.0.0\"", &auth, FAST).await;
    let (code, text) = metrics(&s.base, &[]).await;
    assert_eq!(code, 401, "never open beyond loopback by default: {text}");
    assert!(text.contains("admin") && text.contains("server.metrics_token"), "{text}");
    let (code, text) = metrics(&s.base, &[("Token-User", "alice"), ("Token-Code", TOKEN)]).await;
    assert_eq!(code, 403, "{text}");
    let (code, text) = metrics(&s.base, &[("Token-User", "admin"), ("Token-Code", TOKEN)]).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("hangar_jobs_live"), "{text}");
    // An admin's session cookie works too.
    let http = reqwest::Client::new();
    let (_, cookie, v) = login(&http, &s.base, "", json!({"userName": "admin", "password": "admin-pw"})).await;
    assert_eq!(v["status"], 0, "{v}");
    let cookie = cookie.expect("cookie");
    assert!(!cookie.contains("Secure"), "auth.secure_cookie is off by default: {cookie}");
    let kv = cookie.split(';').next().expect("kv");
    let (code, _) = metrics(&s.base, &[("Cookie", kv)]).await;
    assert_eq!(code, 200);

    let local = Server::start(FAST).await;
    let (code, text) = metrics(&local.base, &[]).await;
    assert_eq!(code, 200, "open on loopback: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_creators_are_refused_and_url_passwords_stay_out_of_history_and_log() {
    let s = Server::start(FAST).await;
    for uc in ["alice-..", "alice-.", "..-IDE"] {
        let body = json!({"executionContent": {"code": "echo", "runType": "shell"},
            "labels": {"engineType": "shell-1", "userCreator": uc}});
        let v = s.call("POST", "/entrance/submit", "alice", Some(&body.to_string())).await;
        assert_ne!(v["status"], 0, "{uc}: {v}");
        let msg = v["message"].as_str().expect("m");
        assert!(msg.contains("userCreator") && msg.contains(uc), "{uc}: {msg}");
    }

    let body = json!({
        "executionContent": {"code": "echo done; echo 'connect postgresql://u:pw-in-log@db/x' >&2", "runType": "shell"},
        "params": {"configuration": {
            "startup": {"jdbc.url": "postgresql://u:s3cret-startup@db:5432/app"},
            "runtime": {"jdbc.url": "jdbc:postgresql://db/app?user=u&password=s3cret-runtime", "jdbc.password": "plain"}
        }},
        "labels": {"engineType": "shell-1", "userCreator": "alice-IDE"}
    });
    let (exec, task) = s.submit_json("alice", &body).await;
    assert_eq!(s.wait_done("alice", &exec).await, "Succeed");
    let job = s.job("alice", task).await;
    let params = job["paramsJson"].as_str().expect("paramsJson").to_string();
    for secret in ["s3cret-startup", "s3cret-runtime", "plain"] {
        assert!(!params.contains(secret), "{secret} in paramsJson: {params}");
    }
    assert!(params.contains("postgresql://u:***@db:5432/app"), "{params}");
    assert!(params.contains("password=***"), "{params}");
    let log = s.full_log("alice", &exec).await;
    assert!(log.contains("postgresql://u:***@db/x"), "engine output reaches the log masked: {log}");
    assert!(!log.contains("pw-in-log") && !log.contains("s3cret"), "{log}");
}
