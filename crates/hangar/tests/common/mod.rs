//! Test harness: the real `hangar serve` binary on a free port with a temp
//! data dir, and a small client of its REST API.

#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const TOKEN: &str = "test-token";
pub const RPC_SECRET: &str = "cluster-secret";
pub const ECM_TOKEN: &str = "ecm-secret";

pub struct Server {
    pub child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
    http: reqwest::Client,
    /// The network namespace ("host") it runs in, if not this one.
    pub netns: Option<String>,
}

/// With `HANGAR_TEST_STORE=postgres`, every server gets a fresh database on
/// the PostgreSQL server at `HANGAR_TEST_POSTGRES_URL` (scripts/test runs the
/// server suites once on SQLite and once so).
fn postgres_store_key() -> String {
    if std::env::var("HANGAR_TEST_STORE").as_deref() != Ok("postgres") {
        return String::new();
    }
    let url =
        std::env::var("HANGAR_TEST_POSTGRES_URL").expect("HANGAR_TEST_STORE=postgres needs HANGAR_TEST_POSTGRES_URL");
    let db = format!("hangar_t_{}", uuid_like());
    let out =
        Command::new("psql").args([url.as_str(), "-qc", &format!("create database {db}")]).output().expect("psql");
    assert!(out.status.success(), "cannot create {db}: {}", String::from_utf8_lossy(&out.stderr));
    let base = url.rsplit_once('/').map(|(b, _)| b).expect("url with a database");
    format!("store_url = \"{base}/{db}\"")
}

fn uuid_like() -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("t").as_nanos();
    format!("{:x}{:x}", n, std::process::id())
}

/// Settings most tests want: fast heartbeats so failures show quickly.
pub const FAST: &str = r#"
[manager]
engine_heartbeat_interval_ms = 200
engine_start_timeout_ms = 20000
[engineconn]
heartbeat_interval_ms = 200
running_info_interval_ms = 100
log_push_interval_ms = 20
orphan_timeout_ms = 2000
[ecm]
kill_grace_ms = 1000
# A loaded CI machine (a Spark suite just before) is no reason to refuse engines here.
protected_load = 1000.0
"#;

impl Server {
    pub async fn start(extra_toml: &str) -> Server {
        Self::start_custom("", "", extra_toml).await
    }

    /// `server_keys` go into `[server]`, `auth_keys` into `[auth]`.
    pub async fn start_custom(server_keys: &str, auth_keys: &str, extra_toml: &str) -> Server {
        Self::start_env(server_keys, auth_keys, extra_toml, &[]).await
    }

    /// As [`Server::start_custom`], with extra environment variables for the server process.
    pub async fn start_env(server_keys: &str, auth_keys: &str, extra_toml: &str, envs: &[(&str, &str)]) -> Server {
        Self::start_full(server_keys, auth_keys, extra_toml, envs, None).await
    }

    /// A server that runs as OS user `os_user` (not root), started by a root test.
    pub async fn start_as(os_user: &str, auth_keys: &str, extra_toml: &str, envs: &[(&str, &str)]) -> Server {
        let u = nix::unistd::User::from_name(os_user).expect("lookup").expect("os user");
        Self::start_full("", auth_keys, extra_toml, envs, Some((u.uid.as_raw(), u.gid.as_raw()))).await
    }

    /// A server whose data dir is first prepared by `prepare` (a test mounts
    /// a small file system there, say).
    pub async fn start_prepared(extra_toml: &str, prepare: impl FnOnce(&Path)) -> Server {
        Self::start_full_ns("", "", extra_toml, &[], None, prepare, None).await
    }

    async fn start_full(
        server_keys: &str,
        auth_keys: &str,
        extra_toml: &str,
        envs: &[(&str, &str)],
        as_user: Option<(u32, u32)>,
    ) -> Server {
        Self::start_full_ns(server_keys, auth_keys, extra_toml, envs, as_user, |_| {}, None).await
    }

    /// A server on another "host": in network namespace `netns`, with
    /// `server_keys` (its `bind` address, its role).
    pub async fn start_in(netns: &str, server_keys: &str, auth_keys: &str, extra_toml: &str) -> Server {
        Self::start_full_ns(server_keys, auth_keys, extra_toml, &[], None, |_| {}, Some(netns.to_string())).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_full_ns(
        server_keys: &str,
        auth_keys: &str,
        extra_toml: &str,
        envs: &[(&str, &str)],
        as_user: Option<(u32, u32)>,
        prepare: impl FnOnce(&Path),
        netns: Option<String>,
    ) -> Server {
        let server_keys = format!("{server_keys}\n{}", postgres_store_key());
        let tmp = tempfile::tempdir().expect("tmp");
        let data_dir = tmp.path().join("data");
        let cfg = tmp.path().join("hangar.toml");
        let toml = format!(
            "[server]\nport = 0\ndata_dir = \"{}\"\nlog_level = \"info\"\n{server_keys}\n[auth]\ntoken = \"{TOKEN}\"\nadmins = [\"admin\"]\n{auth_keys}\n{extra_toml}",
            data_dir.display()
        );
        std::fs::write(&cfg, toml).expect("config");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        prepare(&data_dir);
        let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some((uid, gid)) = as_user {
            for p in [tmp.path().to_path_buf(), cfg.clone(), data_dir.clone()] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
            }
        }
        Self::start_with(tmp, data_dir, cfg, &envs, as_user, netns).await
    }

    /// Entrance + manager without an ECM of their own.
    pub async fn control_plane(extra_toml: &str) -> Server {
        let auth = format!("rpc_token = \"{RPC_SECRET}\"\necm_token = \"{ECM_TOKEN}\"");
        Self::start_custom("roles = \"entrance,manager\"", &auth, extra_toml).await
    }

    /// An ECM process registered with `manager`.
    pub async fn ecm(manager: &Server, ecm_keys: &str) -> Server {
        let server_keys = format!("roles = \"ecm\"\nmanager_url = \"{}\"", manager.base);
        let extra =
            format!("[ecm]\nheartbeat_interval_ms = 200\nkill_grace_ms = 1000\nprotected_load = 1000.0\n{ecm_keys}\n");
        Self::start_custom(&server_keys, &format!("ecm_token = \"{ECM_TOKEN}\""), &extra).await
    }

    async fn start_with(
        tmp: tempfile::TempDir,
        data_dir: PathBuf,
        cfg: PathBuf,
        envs: &[(String, String)],
        as_user: Option<(u32, u32)>,
        netns: Option<String>,
    ) -> Server {
        let log = tmp.path().join(format!(
            "server-{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("t").as_nanos()
        ));
        let mut cmd = match as_user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--init-groups".into(), "--".into()]);
                c.arg(env!("CARGO_BIN_EXE_hangar"));
                c
            }
            None => match &netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns.as_str(), env!("CARGO_BIN_EXE_hangar")]);
                    c
                }
                None => Command::new(env!("CARGO_BIN_EXE_hangar")),
            },
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(&cfg)
            .env_remove("HANGAR_TOKEN")
            .env_remove("HANGAR_CONFIG")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn hangar serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        let base = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The whole line: the log may be read while it is being written.
            if let Some(rest) = text.split(" listening on ").nth(1)
                && let Some((line, _)) = rest.split_once('\n')
                && let Some(url) = line.split_whitespace().next()
            {
                break url.to_string();
            }
            assert!(Instant::now() < deadline, "server did not start:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Server { child: Some(child), base, data_dir, log, _tmp: tmp, http, netns }
    }

    /// Start a second server on the same data dir and config (after a crash).
    pub async fn restart(mut self) -> Server {
        self.kill9();
        let cfg = self._tmp.path().join("hangar.toml");
        // Come back on the same port, as a restarted service does.
        let port = self.base.rsplit(':').next().expect("port").to_string();
        let text = std::fs::read_to_string(&cfg).expect("cfg").replacen("port = 0", &format!("port = {port}"), 1);
        std::fs::write(&cfg, text).expect("cfg");
        let tmp = std::mem::replace(&mut self._tmp, tempfile::tempdir().expect("tmp"));
        // The engines outlive the old process: this Drop must not kill them.
        let data_dir = std::mem::replace(&mut self.data_dir, PathBuf::from("/nonexistent/hangar-test"));
        Self::start_with(tmp, data_dir, cfg, &[], None, self.netns.clone()).await
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .expect("sigterm");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn call(&self, method: &str, path: &str, user: &str, body: Option<&str>) -> Value {
        self.call_with(method, path, Some((user, TOKEN)), body).await
    }

    pub async fn call_with(&self, method: &str, path: &str, auth: Option<(&str, &str)>, body: Option<&str>) -> Value {
        let url = format!("{}/api/rest_j/v1{path}", self.base);
        let mut req = match method {
            "GET" => self.http.get(&url),
            "PUT" => self.http.put(&url).header("Content-Type", "application/json"),
            _ => self.http.post(&url).header("Content-Type", "application/json"),
        };
        if let Some((u, t)) = auth {
            req = req.header("Token-User", u).header("Token-Code", t);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let text = resp.text().await.expect("body");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        assert!(v.get("status").is_some_and(Value::is_i64), "status must be an integer: {v}");
        v
    }

    pub async fn submit(&self, user: &str, code: &str, labels: Value) -> (String, i64) {
        self.submit_json(user, &json!({"executionContent": {"code": code, "runType": "shell"}, "labels": labels})).await
    }

    /// Submit a whole request body; returns `(execID, taskID)`.
    pub async fn submit_json(&self, user: &str, body: &Value) -> (String, i64) {
        let v = self.call("POST", "/entrance/submit", user, Some(&body.to_string())).await;
        assert_eq!(v["status"], 0, "submit failed: {v}");
        (v["data"]["execID"].as_str().expect("execID").to_string(), v["data"]["taskID"].as_i64().expect("taskID"))
    }

    /// The whole log of a job (all levels).
    pub async fn full_log(&self, user: &str, exec: &str) -> String {
        let v = self.call("GET", &format!("/entrance/{exec}/log?fromLine=0&size=-1"), user, None).await;
        assert_eq!(v["status"], 0, "log: {v}");
        v["data"]["log"][3].as_str().unwrap_or_default().to_string()
    }

    pub async fn shell(&self, user: &str, code: &str) -> (String, i64) {
        self.submit(user, code, json!({"engineType": "shell-1", "userCreator": format!("{user}-IDE")})).await
    }

    pub async fn status(&self, user: &str, exec: &str) -> String {
        let v = self.call("GET", &format!("/entrance/{exec}/status"), user, None).await;
        assert_eq!(v["status"], 0, "status failed: {v}");
        v["data"]["status"].as_str().expect("status").to_string()
    }

    pub async fn wait_status(&self, user: &str, exec: &str, want: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status(user, exec).await;
            if want.contains(&s.as_str()) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "job {exec} is {s}, wanted {want:?}\nserver log:\n{}",
                self.server_log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_done(&self, user: &str, exec: &str) -> String {
        self.wait_status(user, exec, &["Succeed", "Failed", "Cancelled", "Timeout"], Duration::from_secs(30)).await
    }

    pub async fn job(&self, user: &str, task_id: i64) -> Value {
        let v = self.call("GET", &format!("/jobhistory/{task_id}/get"), user, None).await;
        assert_eq!(v["status"], 0, "jobhistory failed: {v}");
        v["data"]["task"].clone()
    }

    /// All rows of every result set of a job.
    pub async fn results(&self, user: &str, task_id: i64) -> Vec<Value> {
        let job = self.job(user, task_id).await;
        let loc = job["resultLocation"].as_str().expect("resultLocation").to_string();
        let tree = self.call("GET", &format!("/filesystem/getDirFileTrees?path={}", enc(&loc)), user, None).await;
        assert_eq!(tree["status"], 0, "tree: {tree}");
        let mut out = Vec::new();
        for child in tree["data"]["dirFileTrees"]["children"].as_array().expect("children") {
            let p = child["path"].as_str().expect("path");
            let f = self.call("GET", &format!("/filesystem/openFile?path={}", enc(p)), user, None).await;
            assert_eq!(f["status"], 0, "openFile: {f}");
            out.push(f["data"].clone());
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // Never leave engines behind, even when a test failed midway.
        kill_engines_under(&self.data_dir);
    }
}

pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Pids of live processes whose environment points into `data_dir` (every
/// engine and its children carry TMPDIR=<data_dir>/engineconn/...).
/// The processes of engines under `data_dir`: the engines and whatever they
/// run, but not a shell engine's idle spare shell (a `bash` started ahead of
/// the next task, waiting on its pipe for code: it runs nothing).
pub fn engine_pids(data_dir: &Path) -> Vec<u32> {
    engine_processes(data_dir).into_iter().filter(|pid| !idle_spare_shell(*pid)).collect()
}

fn idle_spare_shell(pid: u32) -> bool {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    cmd.ends_with(b"hangar-task\0") && wchan.contains("pipe_read")
}

/// Every process of engines under `data_dir`, spare shells too.
pub fn engine_processes(data_dir: &Path) -> Vec<u32> {
    let needle = format!("TMPDIR={}", data_dir.join("engineconn").display());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 2..i + 3].to_string()))
            .is_some_and(|st| st != "Z");
        if alive && env.split(|b| *b == 0).any(|kv| kv.starts_with(needle.as_bytes())) {
            pids.push(pid);
        }
    }
    pids
}

fn kill_engines_under(data_dir: &Path) {
    for pid in engine_pids(data_dir) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A `hangar hash-password` hash of `pw`, for `auth.users`.
pub fn hash_password(pw: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(format!("{pw}\n").as_bytes()).expect("write");
    String::from_utf8(child.wait_with_output().expect("wait").stdout).expect("utf8").trim().to_string()
}

/// The `hangar` client run against `s` as `user` (token auth).
pub fn hangar_cli(s: &Server, user: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_SERVER", &s.base)
        .env("HANGAR_USER", user)
        .env("HANGAR_TOKEN", TOKEN)
        .output()
        .expect("run hangar")
}

pub async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Make sure OS user `name` exists (creating it); false when not root, so
/// run-as-user tests skip.
pub fn os_user(name: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching engine accounts needs a root ECM; CI runs as root");
        return false;
    }
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        let st = Command::new("useradd").args(["-M", "-s", "/usr/sbin/nologin", name]).status().expect("useradd");
        assert!(st.success(), "useradd {name}");
    }
    true
}

/// The pyspark package the Spark tests run (`HANGAR_TEST_SPARK_HOME`, else
/// what `scripts/test` installs with `hangar spark install --dir target/spark`).
pub fn spark_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HANGAR_TEST_SPARK_HOME") {
        return PathBuf::from(h);
    }
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/spark/venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|d| {
        d.flatten().map(|e| e.path().join("site-packages/pyspark")).find(|p| p.join("bin/spark-submit").is_file())
    });
    let home = found.unwrap_or_else(|| {
        panic!(
            "Spark is not installed for the tests: run scripts/test, or `hangar spark install --dir target/spark` \
             (it looked in {})",
            lib.display()
        )
    });
    std::fs::canonicalize(home).expect("spark home")
}
