//! `hangar config get|set|list`: parameter configuration (the console's
//! settings) for a creator and engine type, or the global settings.

use std::io::Write;

use anyhow::bail;
use serde_json::{Value, json};

use crate::{Client, print_table};

/// The scope a command reads or writes.
#[derive(Debug, Clone, Default)]
pub struct ConfigScope {
    /// `IDE`, ...; none: `IDE` with an engine, else the global settings.
    pub creator: Option<String>,
    /// `spark-3.4.4` (reads also take `spark`); none: the creator's global settings.
    pub engine: Option<String>,
    /// Admins: another user's values, or `*` for the defaults.
    pub for_user: Option<String>,
}

impl ConfigScope {
    fn creator(&self) -> String {
        match (&self.creator, &self.engine) {
            (Some(c), _) => c.clone(),
            (None, Some(_)) => "IDE".into(),
            (None, None) => "GlobalSettings".into(),
        }
    }

    fn what(&self) -> String {
        let user = self.for_user.as_deref().map(|u| format!(" of user {u}")).unwrap_or_default();
        match &self.engine {
            Some(e) => format!("{e} under creator {}{user}", self.creator()),
            None => format!("the global settings of {}{user}", self.creator()),
        }
    }
}

/// What to do.
pub enum ConfigCmd<'a> {
    Get { key: &'a str },
    Set { key: &'a str, value: &'a str },
    List,
}

fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

async fn settings(client: &Client, scope: &ConfigScope) -> anyhow::Result<Vec<Value>> {
    let mut q = vec![("creator", scope.creator())];
    if let Some(e) = &scope.engine {
        q.push(("engineType", e.clone()));
    }
    if let Some(u) = &scope.for_user {
        q.push(("user", u.clone()));
    }
    let d = client.get("/configuration/getFullTreesByAppName", &q).await?;
    Ok(d["fullTree"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["settings"].as_array().cloned().unwrap_or_default())
        .collect())
}

pub async fn config(
    client: &Client,
    scope: &ConfigScope,
    cmd: ConfigCmd<'_>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Get { key } => {
            let all = settings(client, scope).await?;
            let Some(s) = all.iter().find(|s| s["key"] == key) else {
                bail!("{key} is not a setting of {}: `hangar config list` shows them", scope.what())
            };
            let (own, default) = (text(s, "configValue"), text(s, "defaultValue"));
            if own.is_empty() {
                writeln!(out, "{default}")?;
            } else {
                writeln!(out, "{own}")?;
            }
        }
        ConfigCmd::Set { key, value } => {
            let mut body = json!({
                "creator": scope.creator(),
                "engineType": scope.engine,
                "fullTree": [{"name": "", "settings": [{"key": key, "configValue": value}]}],
            });
            if let Some(u) = &scope.for_user {
                body["user"] = json!(u);
            }
            client.post("/configuration/saveFullTree", &body).await?;
            if value.trim().is_empty() {
                writeln!(out, "{key} cleared for {}", scope.what())?;
            } else {
                writeln!(out, "{key} = {value} for {}", scope.what())?;
            }
        }
        ConfigCmd::List => {
            let rows: Vec<Vec<String>> = settings(client, scope)
                .await?
                .iter()
                .map(|s| {
                    let dash = |v: String| if v.is_empty() { "-".to_string() } else { v };
                    vec![
                        text(s, "key"),
                        dash(text(s, "configValue")),
                        dash(text(s, "defaultValue")),
                        text(s, "specialLimit"),
                    ]
                })
                .collect();
            print_table(out, &["KEY", "VALUE", "DEFAULT", "ALLOWED"], &rows)?;
        }
    }
    Ok(())
}
