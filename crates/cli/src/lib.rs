//! The `hangar` client: a typed client of the Linkis-compatible REST API and
//! the user commands built on it (`run`, `status`, `log`, `result`, `kill`).

use std::io::Write;
use std::time::Duration;

pub mod linkis_cli;
mod materials;

pub use materials::{MaterialCmd, material};

use anyhow::{Context, bail};
use hangar_protocol::Envelope;
use serde_json::{Value, json};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9001";
/// The token a fresh server accepts for local use (see README).
pub const DEFAULT_TOKEN: &str = "HANGAR-LOCAL-AUTH";
const PREFIX: &str = "/api/rest_j/v1";

/// Connection settings shared by every client command.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: String,
    pub user: String,
    pub token: String,
    /// A login session cookie (`name=value`); when set it is sent instead of the token.
    pub cookie: Option<String>,
}

pub struct Client {
    http: reqwest::Client,
    conn: Connection,
}

impl Client {
    pub fn new(conn: Connection) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().tcp_nodelay(true).timeout(Duration::from_secs(30)).build()?;
        Ok(Self { http, conn })
    }

    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = self.authed(req).send().await.with_context(|| {
            format!("cannot reach the Hangar server at {} (is `hangar serve` running?)", self.conn.server)
        })?;
        let status = resp.status();
        let text = resp.text().await.context("cannot read the server's answer")?;
        let env: Envelope =
            serde_json::from_str(&text).with_context(|| format!("{what}: unexpected answer ({status}): {text}"))?;
        env.into_result().map_err(|e| anyhow::anyhow!("{what}: {}", e.message))
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.conn.cookie {
            Some(c) => req.header("Cookie", c),
            None => req.header("Token-User", &self.conn.user).header("Token-Code", &self.conn.token),
        }
    }

    /// `POST /user/login`; on success later calls use the session cookie.
    pub async fn login(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        let url = format!("{}{PREFIX}/user/login", self.conn.server.trim_end_matches('/'));
        let resp = self
            .http
            .post(url)
            .json(&json!({"userName": user, "password": password}))
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.conn.server))?;
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        let env: Envelope = resp.json().await.context("bad login answer")?;
        env.into_result().map_err(|e| anyhow::anyhow!("login failed: {}", e.message))?;
        self.conn.cookie = Some(cookie.context("the server set no session cookie")?);
        self.conn.user = user.to_string();
        Ok(())
    }

    pub fn user(&self) -> &str {
        &self.conn.user
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let url = format!("{}{PREFIX}{path}", self.conn.server.trim_end_matches('/'));
        self.call(self.http.get(url).query(query), path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{PREFIX}{path}", self.conn.server.trim_end_matches('/'));
        self.call(self.http.post(url).json(body), path).await
    }

    /// Submit code; returns `(execID, taskID)`.
    pub async fn submit(&self, job: &JobSpec) -> anyhow::Result<(String, i64)> {
        let mut labels = serde_json::Map::new();
        labels.insert("engineType".into(), json!(job.engine_type));
        labels.insert("userCreator".into(), json!(format!("{}-{}", self.conn.user, job.creator)));
        for (k, v) in &job.labels {
            labels.insert(k.clone(), json!(v));
        }
        let run_type = job.run_type.clone().unwrap_or_else(|| default_run_type(&job.engine_type));
        let body = json!({
            "executionContent": {"code": job.code, "runType": run_type},
            "params": {"variable": {}, "configuration": {"startup": job.startup, "runtime": job.runtime}},
            "source": {"scriptPath": "hangar-cli"},
            "labels": labels,
        });
        let data = self.post("/entrance/submit", &body).await?;
        let exec = data.get("execID").and_then(Value::as_str).context("submit answer has no execID")?.to_string();
        let task = data.get("taskID").and_then(Value::as_i64).context("submit answer has no taskID")?;
        Ok((exec, task))
    }

    /// The jobhistory `task` view of a taskID.
    pub async fn job(&self, task_id: i64) -> anyhow::Result<Value> {
        let data = self.get(&format!("/jobhistory/{task_id}/get"), &[]).await?;
        data.get("task").cloned().context("jobhistory answer has no task")
    }

    /// Accept an execID or a taskID; return both.
    pub async fn resolve(&self, id: &str) -> anyhow::Result<(String, i64)> {
        if id.starts_with("exec_id") {
            let parsed = hangar_protocol::exec_id::parse(id).map_err(|e| anyhow::anyhow!(e.message))?;
            return Ok((id.to_string(), parsed.task_id));
        }
        let task_id: i64 = id.parse().with_context(|| format!("'{id}' is neither an execID nor a numeric taskID"))?;
        let job = self.job(task_id).await?;
        let exec = job.get("strongerExecId").and_then(Value::as_str).context("job has no execID")?.to_string();
        Ok((exec, task_id))
    }

    pub async fn status(&self, exec_id: &str) -> anyhow::Result<String> {
        let data = self.get(&format!("/entrance/{}/status", enc(exec_id)), &[]).await?;
        Ok(data.get("status").and_then(Value::as_str).unwrap_or("").to_string())
    }

    /// Log lines from `from`; returns the lines (ALL level) and the next offset.
    pub async fn log(&self, exec_id: &str, from: u64) -> anyhow::Result<(String, u64)> {
        let q = [("fromLine", from.to_string()), ("size", "-1".to_string())];
        let data = self.get(&format!("/entrance/{}/log", enc(exec_id)), &q).await?;
        let all = data.pointer("/log/3").and_then(Value::as_str).unwrap_or("").to_string();
        let next = data.get("fromLine").and_then(Value::as_u64).unwrap_or(from);
        Ok((all, next))
    }

    pub async fn kill(&self, exec_id: &str) -> anyhow::Result<()> {
        self.get(&format!("/entrance/{}/kill", enc(exec_id)), &[]).await.map(|_| ())
    }

    /// Every result set of a job, each as (type, column names, rows).
    pub async fn results(&self, task_id: i64) -> anyhow::Result<Vec<ResultSet>> {
        let job = self.job(task_id).await?;
        let location = job.get("resultLocation").and_then(Value::as_str).unwrap_or("");
        if location.is_empty() {
            return Ok(Vec::new());
        }
        let tree = match self.get("/filesystem/getDirFileTrees", &[("path", location.to_string())]).await {
            Ok(t) => t,
            // No result folder: the job wrote no result set.
            Err(e) if e.to_string().contains("does not exist") => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let children = tree.pointer("/dirFileTrees/children").and_then(Value::as_array).cloned().unwrap_or_default();
        for child in children {
            let Some(path) = child.get("path").and_then(Value::as_str) else { continue };
            let mut rs = ResultSet::default();
            let mut page = 1;
            loop {
                let q = [("path", path.to_string()), ("page", page.to_string()), ("pageSize", "5000".into())];
                let data = self.get("/filesystem/openFile", &q).await?;
                rs.rs_type = data.get("type").and_then(Value::as_str).unwrap_or("1").to_string();
                if let Some(cols) = data.get("metadata").and_then(Value::as_array) {
                    rs.columns = cols
                        .iter()
                        .map(|c| c.get("columnName").and_then(Value::as_str).unwrap_or("").to_string())
                        .collect();
                }
                for row in data.get("fileContent").and_then(Value::as_array).cloned().unwrap_or_default() {
                    rs.rows.push(
                        row.as_array()
                            .map(|r| r.iter().map(|c| c.as_str().unwrap_or("").to_string()).collect())
                            .unwrap_or_default(),
                    );
                }
                let total_page = data.get("totalPage").and_then(Value::as_u64).unwrap_or(1);
                if page as u64 >= total_page {
                    break;
                }
                page += 1;
            }
            out.push(rs);
        }
        Ok(out)
    }
}

fn enc(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F").replace('?', "%3F").replace('#', "%23")
}

/// What `hangar run` submits.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    pub engine_type: String,
    pub code: String,
    pub run_type: Option<String>,
    pub creator: String,
    pub labels: Vec<(String, String)>,
    pub startup: serde_json::Map<String, Value>,
    pub runtime: serde_json::Map<String, Value>,
}

/// Run type for an engine type when none is given.
pub fn default_run_type(engine_type: &str) -> String {
    match engine_type.split('-').next().unwrap_or("") {
        "python" => "python".into(),
        "jdbc" => "jdbc".into(),
        "shell" => "shell".into(),
        _ => "sql".into(),
    }
}

#[derive(Debug, Clone, Default)]
pub struct ResultSet {
    pub rs_type: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Print result sets: TEXT lines as they are, TABLE rows tab-separated under a header.
pub fn print_results(out: &mut impl Write, sets: &[ResultSet]) -> std::io::Result<()> {
    for (i, rs) in sets.iter().enumerate() {
        if sets.len() > 1 {
            writeln!(out, "==== result set {} ====", i + 1)?;
        }
        if rs.rs_type == "2" {
            writeln!(out, "{}", rs.columns.join("\t"))?;
        }
        for row in &rs.rows {
            writeln!(out, "{}", row.join("\t"))?;
        }
    }
    Ok(())
}

/// `hangar run`: submit, stream the log to stderr, print the results to
/// stdout; the exit code is 0 only when the job Succeeded.
pub async fn run(client: &Client, spec: &JobSpec, detach: bool) -> anyhow::Result<i32> {
    if spec.code.trim().is_empty() {
        bail!("the code is empty: pass --code, --file or pipe it on standard input");
    }
    let (exec, task_id) = client.submit(spec).await?;
    eprintln!("submitted job {task_id} ({exec})");
    if detach {
        println!("{task_id}");
        return Ok(0);
    }
    let status = follow(client, &exec).await?;
    finish(client, task_id, &status).await
}

/// Stream a job's log until it ends; returns its final status. Uses the
/// server's event stream, and polling when the stream is not available.
pub async fn follow(client: &Client, exec: &str) -> anyhow::Result<String> {
    // Subscribe first, then print what was logged before: `next` is the first
    // line not printed yet, so nothing is missed or printed twice.
    let mut events = match client.open_events(exec).await {
        Ok(Some(ev)) => ev,
        Ok(None) | Err(_) => return follow_polling(client, exec, 0).await,
    };
    let (head, mut next) = client.log(exec, 0).await?;
    eprint!("{head}");
    loop {
        let Some(v) = events.next().await? else { return follow_polling(client, exec, next).await };
        match v["type"].as_str() {
            Some("log") => {
                let from = v["fromLine"].as_u64().unwrap_or(0);
                if from > next {
                    let (gap, to) = client.log(exec, next).await?;
                    eprint!("{gap}");
                    next = to;
                }
                for (i, l) in v["lines"].as_array().cloned().unwrap_or_default().iter().enumerate() {
                    if from + i as u64 == next {
                        eprintln!("{}", l.as_str().unwrap_or(""));
                        next += 1;
                    }
                }
            }
            Some("end") => {
                let (tail, _) = client.log(exec, next).await?;
                eprint!("{tail}");
                return Ok(v["status"].as_str().unwrap_or("").to_string());
            }
            _ => {}
        }
    }
}

/// An open `/entrance/{execID}/events` stream.
pub struct EventStream {
    resp: reqwest::Response,
    buf: String,
}

impl EventStream {
    /// The next event's JSON; `None` when the stream ends.
    pub async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> =
                    event.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if data.is_empty() {
                    continue;
                }
                return Ok(Some(serde_json::from_str(&data.join("\n")).unwrap_or(Value::Null)));
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                None => return Ok(None),
            }
        }
    }
}

impl Client {
    /// Subscribe to a job's events; `None` when the server has no event stream.
    pub async fn open_events(&self, exec: &str) -> anyhow::Result<Option<EventStream>> {
        let url = format!("{}{PREFIX}/entrance/{}/events", self.conn.server.trim_end_matches('/'), enc(exec));
        let resp = self.authed(self.http.get(url).timeout(Duration::from_secs(7 * 24 * 3600))).send().await?;
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !sse {
            let text = resp.text().await.unwrap_or_default();
            let env: Envelope = serde_json::from_str(&text).with_context(|| format!("unexpected answer: {text}"))?;
            env.into_result().map_err(|e| anyhow::anyhow!(e.message))?;
            return Ok(None);
        }
        Ok(Some(EventStream { resp, buf: String::new() }))
    }
}

async fn follow_polling(client: &Client, exec: &str, from: u64) -> anyhow::Result<String> {
    let mut from = from;
    let mut delay = Duration::from_millis(20);
    loop {
        let status = client.status(exec).await?;
        let (text, next) = client.log(exec, from).await?;
        from = next;
        if !text.is_empty() {
            eprint!("{text}");
        }
        if matches!(status.as_str(), "Succeed" | "Failed" | "Cancelled" | "Timeout") {
            let (text, _) = client.log(exec, from).await?;
            eprint!("{text}");
            return Ok(status);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

async fn finish(client: &Client, task_id: i64, status: &str) -> anyhow::Result<i32> {
    if status == "Succeed" {
        let sets = client.results(task_id).await?;
        print_results(&mut std::io::stdout().lock(), &sets)?;
        return Ok(0);
    }
    let job = client.job(task_id).await?;
    let desc = job.get("errDesc").and_then(Value::as_str).unwrap_or("no reason recorded");
    eprintln!("job {task_id} {status}: {desc}");
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_print_as_text_and_tables() {
        let sets = vec![
            ResultSet { rs_type: "1".into(), columns: vec![], rows: vec![vec!["hi".into()]] },
            ResultSet {
                rs_type: "2".into(),
                columns: vec!["a".into(), "b".into()],
                rows: vec![vec!["1".into(), "x".into()]],
            },
        ];
        let mut out = Vec::new();
        print_results(&mut out, &sets).expect("print");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "==== result set 1 ====\nhi\n==== result set 2 ====\na\tb\n1\tx\n"
        );
    }
}

/// Print rows as an aligned table under a header.
pub fn print_table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header.iter().map(|h| h.to_string()).collect()))?;
    for r in rows {
        writeln!(out, "{}", line(r.clone()))?;
    }
    Ok(())
}

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn res(v: &Value, ptr: &str) -> String {
    format!(
        "{} / {} cores / {} inst",
        s(v, &format!("{ptr}/memory")),
        s(v, &format!("{ptr}/cpu")),
        s(v, &format!("{ptr}/instance"))
    )
}

/// Operator views as tables.
pub async fn ops(client: &Client, what: OpsView, out: &mut impl Write) -> anyhow::Result<()> {
    type RowFn = fn(&Value) -> Vec<String>;
    let (path, key, headers, row): (&str, &str, &[&str], RowFn) = match what {
        OpsView::Ecms => {
            ("/linkisManager/listAllEMs", "EMs", &["INSTANCE", "STATUS", "ENGINES", "USED", "LOCKED", "MAX"], |e| {
                vec![
                    s(e, "/instance"),
                    s(e, "/nodeStatus"),
                    s(e, "/engineCount"),
                    res(e, "/usedResource"),
                    res(e, "/lockedResource"),
                    res(e, "/maxResource"),
                ]
            })
        }
        OpsView::Engines { all } => (
            if all { "/linkisManager/listAllEngines" } else { "/linkisManager/listUserEngines" },
            "engines",
            &["INSTANCE", "TYPE", "OWNER", "STATUS", "ECM", "PID", "TICKET"],
            |e| {
                ["/instance", "/engineType", "/owner", "/nodeStatus", "/emInstance", "/pid", "/ticketId"]
                    .iter()
                    .map(|p| s(e, p))
                    .collect()
            },
        ),
        OpsView::Resources => (
            "/linkisManager/rm/userresources",
            "userResources",
            &["USER-CREATOR", "ENGINE", "USED", "LOCKED", "MAX"],
            |r| {
                vec![
                    s(r, "/userCreator"),
                    s(r, "/engineTypeWithVersion"),
                    res(r, "/usedResource"),
                    res(r, "/lockedResource"),
                    res(r, "/maxResource"),
                ]
            },
        ),
    };
    let d = client.get(path, &[]).await?;
    let rows: Vec<Vec<String>> = d[key].as_array().map(|a| a.iter().map(row).collect()).unwrap_or_default();
    print_table(out, headers, &rows)?;
    Ok(())
}

/// What `hangar ecms|engines|resources` shows.
#[derive(Debug, Clone, Copy)]
pub enum OpsView {
    Ecms,
    Engines { all: bool },
    Resources,
}

/// Kill an engine by instance (`host:port`) or ticket.
pub async fn kill_engine(client: &Client, id: &str) -> anyhow::Result<()> {
    let body = if id.contains(':') {
        json!({"applicationName": "linkis-cg-engineconn", "instance": id})
    } else {
        json!({"ticketId": id})
    };
    client.post("/linkisManager/killEngineConn", &body).await.map(|_| ())
}
