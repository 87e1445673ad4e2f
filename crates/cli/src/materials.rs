//! `hangar material ...`: the user's side of the material library (Linkis BML).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{Client, PREFIX, print_table};

/// What to do with materials.
pub enum MaterialCmd<'a> {
    Upload { file: &'a Path, update: Option<&'a str> },
    List,
    Versions { id: &'a str },
    Download { id: &'a str, version: Option<&'a str>, out: Option<&'a Path> },
    Delete { id: &'a str, version: Option<&'a str> },
}

impl Client {
    /// POST one file as multipart/form-data.
    async fn upload_file(&self, path: &str, file_name: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
        let boundary = format!("hangar-{}", std::process::id());
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            file_name.replace(['"', '\r', '\n'], "_")
        )
        .into_bytes();
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!("{}{PREFIX}{path}", self.conn.server.trim_end_matches('/'));
        let req = self
            .http
            .post(url)
            .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
            .timeout(std::time::Duration::from_secs(600))
            .body(body);
        self.call(req, path).await
    }

    async fn download(&self, id: &str, version: Option<&str>) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{PREFIX}/bml/download", self.conn.server.trim_end_matches('/'));
        let mut q = vec![("resourceId", id.to_string())];
        if let Some(v) = version {
            q.push(("version", v.to_string()));
        }
        let resp = self.authed(self.http.get(url).query(&q)).send().await.context("cannot reach the server")?;
        let json = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
        let bytes = resp.bytes().await.context("download broke off")?.to_vec();
        if json {
            let env: hangar_protocol::Envelope = serde_json::from_slice(&bytes).context("unexpected answer")?;
            env.into_result().map_err(|e| anyhow::anyhow!("download: {}", e.message))?;
        }
        Ok(bytes)
    }
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub async fn material(client: &Client, cmd: MaterialCmd<'_>, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        MaterialCmd::Upload { file, update } => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                bail!("{} has no usable file name", file.display())
            };
            let path = match update {
                Some(id) => format!("/bml/updateVersion?resourceId={}", crate::enc(id)),
                None => "/bml/upload".to_string(),
            };
            let d = client.upload_file(&path, name, bytes).await?;
            writeln!(
                out,
                "resourceId {}  version {}  sha256 {}",
                s(&d, "resourceId"),
                s(&d, "version"),
                s(&d, "sha256")
            )?;
            writeln!(out, "use it in a job: --startup hangar.engineconn.resources={}", s(&d, "resourceId"))?;
        }
        MaterialCmd::List => {
            let d = client.get("/bml/getResources", &[]).await?;
            let rows: Vec<Vec<String>> = d["Resources"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| vec![s(r, "resourceId"), s(r, "version"), s(r, "fileName"), s(r, "size")])
                .collect();
            print_table(out, &["RESOURCE ID", "LATEST", "FILE", "BYTES"], &rows)?;
        }
        MaterialCmd::Versions { id } => {
            let d = client.get("/bml/getVersions", &[("resourceId", id.to_string())]).await?;
            let rows: Vec<Vec<String>> = d["ResourceVersions"]["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| vec![s(r, "version"), s(r, "fileName"), s(r, "size"), s(r, "sha256")])
                .collect();
            print_table(out, &["VERSION", "FILE", "BYTES", "SHA256"], &rows)?;
        }
        MaterialCmd::Download { id, version, out: target } => {
            let bytes = client.download(id, version).await?;
            match target {
                Some(p) => std::fs::write(p, &bytes).with_context(|| format!("cannot write {}", p.display()))?,
                None => out.write_all(&bytes)?,
            }
        }
        MaterialCmd::Delete { id, version } => {
            match version {
                Some(v) => client.post("/bml/deleteVersion", &json!({"resourceId": id, "version": v})).await?,
                None => client.post("/bml/deleteResource", &json!({"resourceId": id})).await?,
            };
            writeln!(out, "deleted {id}{}", version.map(|v| format!(" {v}")).unwrap_or_default())?;
        }
    }
    Ok(())
}
