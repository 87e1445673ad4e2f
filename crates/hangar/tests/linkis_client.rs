//! A client written only from Linkis's documented client API (the UJES
//! sequence): login with a password, submit, poll status and the log with
//! `fromLine`, read jobhistory, list and page the result sets, kill, logout.

mod common;

use std::time::{Duration, Instant};

use common::{FAST, Server};
use serde_json::{Value, json};

struct LinkisClient {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

impl LinkisClient {
    async fn send(&mut self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let req = match &self.cookie {
            Some(c) => req.header("Cookie", c),
            None => req,
        };
        let resp = req.send().await.expect("request");
        let code = resp.status().as_u16();
        if let Some(sc) = resp.headers().get("set-cookie").and_then(|v| v.to_str().ok()) {
            let kv = sc.split(';').next().unwrap_or_default().to_string();
            self.cookie = if kv.ends_with('=') { None } else { Some(kv) };
        }
        let v: Value = resp.json().await.expect("json body");
        assert!(v["status"].is_i64(), "status is an int: {v}");
        (code, v)
    }
    async fn get(&mut self, path: &str) -> Value {
        let url = format!("{}/api/rest_j/v1{path}", self.base);
        let req = self.http.get(url);
        self.send(req).await.1
    }
    async fn post(&mut self, path: &str, body: Value) -> Value {
        let url = format!("{}/api/rest_j/v1{path}", self.base);
        let req = self.http.post(url).json(&body);
        self.send(req).await.1
    }
}

fn hash(pw: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(format!("{pw}\n").as_bytes()).expect("write");
    String::from_utf8(child.wait_with_output().expect("wait").stdout).expect("utf8").trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_documented_linkis_client_works_unchanged() {
    let auth = format!("users = [\"hadoop:{}\"]", hash("hadoop-pw"));
    let s = Server::start_custom("", &auth, FAST).await;
    let mut c = LinkisClient { base: s.base.clone(), http: reqwest::Client::new(), cookie: None };

    // Not logged in: -1.
    assert_eq!(c.get("/jobhistory/1/get").await["status"], -1);
    let v = c.post("/user/login", json!({"userName": "hadoop", "password": "wrong"})).await;
    assert_eq!(v["status"], -1, "{v}");
    assert!(c.cookie.is_none());
    let v = c.post("/user/login", json!({"userName": "hadoop", "password": "hadoop-pw"})).await;
    assert_eq!(v["status"], 0, "{v}");
    assert_eq!(v["data"]["userName"], "hadoop");
    assert!(c.cookie.as_deref().is_some_and(|k| k.starts_with("linkis_user_session_ticket_id_v1=")));
    let again = c.post("/user/login", json!({"userName": "hadoop", "password": "hadoop-pw"})).await;
    assert!(again["message"].as_str().expect("m").contains("already logged in"), "{again}");

    // Submit with a custom variable and a built-in one.
    let v = c
        .post(
            "/entrance/submit",
            json!({
                "executionContent": {"code": "echo hello ${who}; echo day=${run_date_std}; echo to-stderr >&2", "runType": "shell"},
                "params": {"variable": {"who": "linkis"}, "configuration": {"startup": {}, "runtime": {}}},
                "source": {"scriptPath": "file:///tmp/hadoop/test.sh"},
                "labels": {"engineType": "shell-1", "userCreator": "hadoop-IDE"},
            }),
        )
        .await;
    assert_eq!(v["status"], 0, "{v}");
    assert_eq!(v["method"], "/api/entrance/submit");
    let exec = v["data"]["execID"].as_str().expect("execID").to_string();
    let task = v["data"]["taskID"].as_i64().expect("taskID");
    assert!(exec.starts_with("exec_id018"), "{exec}");

    // Poll status and the log with fromLine, as linkis-cli does.
    let mut from = 0;
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.get(&format!("/entrance/{exec}/status")).await;
        assert_eq!(st["data"]["execID"], exec.as_str());
        let l = c.get(&format!("/entrance/{exec}/log?fromLine={from}&size=100")).await;
        assert_eq!(l["data"]["log"].as_array().expect("4 levels").len(), 4);
        log.push_str(l["data"]["log"][3].as_str().expect("all"));
        from = l["data"]["fromLine"].as_u64().expect("fromLine");
        let p = c.get(&format!("/entrance/{exec}/progress")).await;
        assert!(p["data"]["progress"].as_f64().is_some(), "{p}");
        if st["data"]["status"] == "Succeed" {
            break;
        }
        assert!(Instant::now() < deadline, "job did not finish: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let l = c.get(&format!("/entrance/{exec}/log?fromLine={from}&size=100")).await;
    log.push_str(l["data"]["log"][3].as_str().expect("all"));
    assert!(log.contains("to-stderr") && log.contains("ended Succeed"), "{log}");
    assert_eq!(
        log.lines().count() as u64,
        l["data"]["fromLine"].as_u64().expect("n"),
        "offsets add up without gaps or repeats"
    );

    // jobhistory, result tree, result pages.
    let t = c.get(&format!("/jobhistory/{task}/get")).await["data"]["task"].clone();
    assert_eq!(t["status"], "Succeed");
    assert_eq!(t["umUser"], "hadoop");
    assert_eq!(t["strongerExecId"], exec.as_str());
    assert!(t["executionCode"].as_str().expect("code").contains("echo hello linkis"), "variables substituted: {t}");
    let loc = t["resultLocation"].as_str().expect("loc").to_string();
    let tree = c.get(&format!("/filesystem/getDirFileTrees?path={}", common::enc(&loc))).await;
    let child = tree["data"]["dirFileTrees"]["children"][0].clone();
    assert_eq!(child["name"], "_0.dolphin");
    assert_eq!(child["isLeaf"], true);
    let f = c
        .get(&format!(
            "/filesystem/openFile?path={}&page=1&pageSize=5000",
            common::enc(child["path"].as_str().expect("p"))
        ))
        .await;
    assert_eq!(f["data"]["fileContent"][0], json!(["hello linkis"]));
    assert!(f["data"]["fileContent"][1][0].as_str().expect("day").starts_with("day=20"));
    let ol = c.get(&format!("/filesystem/openLog?path={}", common::enc(t["logPath"].as_str().expect("logPath")))).await;
    assert!(ol["data"]["log"][3].as_str().expect("all").contains("ended Succeed"));

    // Kill a long job; killJobs for a finished one reports per job.
    let v = c
        .post("/entrance/submit", json!({"executionContent": {"code": "sleep 30", "runType": "shell"}, "labels": {"engineType": "shell-1", "userCreator": "hadoop-IDE"}}))
        .await;
    let long = v["data"]["execID"].as_str().expect("e").to_string();
    s.wait_status("hadoop", &long, &["Running"], Duration::from_secs(20)).await;
    let k = c.get(&format!("/entrance/{long}/kill")).await;
    assert_eq!(k["status"], 0, "{k}");
    s.wait_status("hadoop", &long, &["Cancelled"], Duration::from_secs(5)).await;
    let kj = c.post(&format!("/entrance/{long}/killJobs"), json!({"idList": [long, exec]})).await;
    let msgs = kj["data"]["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 2);
    assert!(msgs.iter().all(|m| m["status"] != 0), "both already ended: {kj}");

    // Logout ends the session.
    let v = c.get("/user/logout").await;
    assert_eq!(v["status"], 0);
    assert!(c.cookie.is_none());
    assert_eq!(c.get(&format!("/jobhistory/{task}/get")).await["status"], -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkis_cli_scripts_run_unchanged() {
    let auth = format!("users = [\"hadoop:{}\"]", hash("pw"));
    let s = Server::start_custom("", &auth, FAST).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cli = dir.path().join("linkis-cli");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hangar"), &cli).expect("symlink");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli).args(args).output().expect("linkis-cli");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let gw = s.base.as_str();
    // Token strategy, as Linkis's default properties have it.
    let (code, out, err) = run(&[
        "--gatewayUrl",
        gw,
        "--authStg",
        "token",
        "--authKey",
        "Validation-Code",
        "--authVal",
        common::TOKEN,
        "-submitUser",
        "alice",
        "-engineType",
        "shell-1",
        "-codeType",
        "shell",
        "-code",
        "echo hello ${who}",
        "-varMap",
        "who=cli",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("connecting to linkis gateway:") && out.contains("JobId:") && out.contains("ExecId:exec_id"),
        "{out}"
    );
    assert!(out.contains("============ RESULT SET 1 ============\nhello cli\n------------------------"), "{out}");
    assert!(out.trim_end().ends_with("############Execute Success!!!########"), "{out}");
    let task: i64 = out.lines().find_map(|l| l.strip_prefix("TaskId:")).expect("TaskId").parse().expect("n");
    let job = s.job("alice", task).await;
    assert_eq!(job["requestApplicationName"], "LINKISCLI");
    assert!(
        job["labels"].as_array().expect("labels").iter().any(|l| l == "executeOnce:"),
        "fresh engine per job like linkis-cli: {job}"
    );

    // Static strategy logs in; a failing job exits 255 with Linkis's banner.
    let (code, out, _) = run(&[
        "--gatewayUrl",
        gw,
        "--authStg",
        "static",
        "--authKey",
        "hadoop",
        "--authVal",
        "pw",
        "-engineType",
        "shell-1",
        "-codeType",
        "shell",
        "-code",
        "exit 3",
    ]);
    assert_eq!(code, Some(255), "{out}");
    assert!(out.contains("exit code 3") && out.contains("############Execute Error!!!########"), "{out}");
    let (code, _, err) = run(&[
        "--gatewayUrl",
        gw,
        "--authStg",
        "static",
        "--authKey",
        "hadoop",
        "--authVal",
        "nope",
        "-engineType",
        "shell-1",
        "-codeType",
        "shell",
        "-code",
        "true",
    ]);
    assert_eq!(code, Some(255));
    assert!(err.contains("login failed"), "{err}");

    // Async submit, then --status / --result by taskID.
    let (code, out, _) = run(&[
        "--gatewayUrl",
        gw,
        "--authVal",
        common::TOKEN,
        "-submitUser",
        "alice",
        "--async",
        "-engineType",
        "shell-1",
        "-codeType",
        "shell",
        "-code",
        "echo later",
    ]);
    assert_eq!(code, Some(0));
    let task = out.lines().find_map(|l| l.strip_prefix("TaskId:")).expect("TaskId").to_string();
    let exec = out.lines().find_map(|l| l.strip_prefix("ExecId:")).expect("ExecId").to_string();
    s.wait_done("alice", &exec).await;
    let (_, out, _) = run(&["--gatewayUrl", gw, "--authVal", common::TOKEN, "-submitUser", "alice", "--status", &task]);
    assert!(out.contains("Status:Succeed"), "{out}");
    let (code, out, _) =
        run(&["--gatewayUrl", gw, "--authVal", common::TOKEN, "-submitUser", "alice", "--result", &task]);
    assert_eq!(code, Some(0));
    assert!(out.contains("later"), "{out}");
    // Bad flags are refused with the usage.
    let (code, _, err) = run(&["-engineTyp", "shell-1"]);
    assert_eq!(code, Some(255));
    assert!(err.contains("unknown option") && err.contains("Usage: linkis-cli"), "{err}");
}
