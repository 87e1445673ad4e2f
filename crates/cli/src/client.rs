//! The typed client of the REST API: one call per endpoint the commands use.

use std::time::Duration;

use anyhow::Context;
use hangar_protocol::Envelope;
use serde_json::{Value, json};

use crate::{JobSpec, PREFIX, default_run_type, enc};

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
    pub(crate) http: reqwest::Client,
    pub(crate) conn: Connection,
}

impl Client {
    pub fn new(conn: Connection) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().tcp_nodelay(true).timeout(Duration::from_secs(30)).build()?;
        Ok(Self { http, conn })
    }

    /// A client of the first of the servers in `conn.server` (several
    /// control-plane instances, joined by commas) that answers; any instance
    /// serves any call. With none answering, the first (the call says so).
    pub async fn connect(mut conn: Connection) -> anyhow::Result<Self> {
        let servers: Vec<String> =
            conn.server.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        anyhow::ensure!(!servers.is_empty(), "no server given: set HANGAR_SERVER or --server");
        conn.server = servers[0].clone();
        let mut client = Self::new(conn)?;
        if servers.len() > 1 {
            for s in &servers {
                let url = format!("{}/health", s.trim_end_matches('/'));
                let up = client.http.get(&url).timeout(Duration::from_secs(2)).send().await;
                if up.is_ok_and(|r| r.status().is_success()) {
                    client.conn.server = s.clone();
                    break;
                }
            }
        }
        Ok(client)
    }

    pub(crate) async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = self.authed(req).send().await.with_context(|| {
            format!("cannot reach the Hangar server at {} (is `hangar serve` running?)", self.conn.server)
        })?;
        let status = resp.status();
        let text = resp.text().await.context("cannot read the server's answer")?;
        let env: Envelope =
            serde_json::from_str(&text).with_context(|| format!("{what}: unexpected answer ({status}): {text}"))?;
        env.into_result().map_err(|e| anyhow::anyhow!("{what}: {}", e.message))
    }

    pub(crate) fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
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

#[derive(Debug, Clone, Default)]
pub struct ResultSet {
    pub rs_type: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
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
