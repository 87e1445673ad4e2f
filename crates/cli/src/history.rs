//! `hangar jobs` (job history, filtered, from `jobhistory/list`) and
//! `hangar status` (one job: state, reason, duration, progress).

use std::io::Write;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{Client, Format, emit, text_at};

/// What `hangar jobs` lists.
#[derive(Debug, Clone, Default)]
pub struct JobsQuery {
    pub status: Option<String>,
    pub engine: Option<String>,
    pub creator: Option<String>,
    /// Only jobs created this long ago or later, e.g. `30m`, `2h`, `7d`.
    pub since: Option<String>,
    /// Admins: every user's jobs (or `user`'s).
    pub all: bool,
    pub user: Option<String>,
    pub limit: u32,
    pub page: u32,
}

/// `30s`, `15m`, `2h`, `7d` as milliseconds.
pub fn parse_age(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().with_context(|| format!("'{s}' is not an age such as 30m, 2h or 7d"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" | "" => 86_400_000,
        _ => bail!("'{s}': the unit must be s, m, h or d"),
    };
    Ok(n.saturating_mul(ms))
}

/// Milliseconds as `850 ms`, `4.2 s`, `3 m 05 s`, `2 h 07 m`.
pub fn human_ms(ms: i64) -> String {
    match ms {
        ..=0 => "-".into(),
        1..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} m {:02} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {:02} m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

fn local_time(ms: i64) -> String {
    use chrono::TimeZone;
    chrono::Local
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// The first line of the code, cut to `max` characters.
fn code_head(code: &str, max: usize) -> String {
    let line = code.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let more = line.chars().count() > max || code.trim().lines().count() > 1;
    let mut head: String = line.chars().take(max).collect();
    if more {
        head.push('…');
    }
    head
}

/// `hangar jobs`.
pub async fn jobs(client: &Client, q: &JobsQuery, format: Format, out: &mut impl Write) -> anyhow::Result<()> {
    let mut params: Vec<(&str, String)> =
        vec![("pageSize", q.limit.clamp(1, 1000).to_string()), ("pageNow", q.page.max(1).to_string())];
    if let Some(s) = &q.status {
        params.push(("status", s.clone()));
    }
    if let Some(e) = &q.engine {
        params.push(("executeApplicationName", e.clone()));
    }
    if let Some(c) = &q.creator {
        params.push(("creator", c.clone()));
    }
    if let Some(age) = &q.since {
        let now = chrono::Utc::now().timestamp_millis();
        params.push(("startDate", (now - parse_age(age)?).to_string()));
    }
    if q.all || q.user.is_some() {
        params.push(("isAdminView", "true".into()));
    }
    if let Some(u) = &q.user {
        params.push(("proxyUser", u.clone()));
    }
    let data = client.get("/jobhistory/list", &params).await?;
    let tasks = data["tasks"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                text_at(t, "/taskID"),
                text_at(t, "/status"),
                text_at(t, "/engineType"),
                text_at(t, "/executeUser"),
                text_at(t, "/requestApplicationName"),
                local_time(t["createdTime"].as_i64().unwrap_or(0)),
                human_ms(t["costTime"].as_i64().unwrap_or(0)),
                code_head(t["executionCode"].as_str().unwrap_or(""), 40),
            ]
        })
        .collect();
    let header = ["ID", "STATUS", "ENGINE", "USER", "CREATOR", "SUBMITTED", "DURATION", "CODE"];
    emit(out, format, &header, &rows, &Value::Array(tasks))?;
    let total = data["totalPage"].as_i64().unwrap_or(0);
    if format == Format::Table && total > rows.len() as i64 {
        eprintln!("({} of {total} jobs; --limit and --page show more)", rows.len());
    }
    Ok(())
}

/// `hangar status`: the state on the first line (scripts can read just it),
/// then what a person wants to know.
pub async fn status(client: &Client, task_id: i64, format: Format, out: &mut impl Write) -> anyhow::Result<()> {
    let t = client.job(task_id).await?;
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&t)?)?;
        return Ok(());
    }
    let progress = t["progress"].as_f64().unwrap_or(0.0);
    let mut rows: Vec<(&str, String)> = vec![
        ("job", format!("{} ({})", task_id, text_at(&t, "/strongerExecId"))),
        ("engine", format!("{} on {}", text_at(&t, "/engineType"), text_at(&t, "/engineInstance"))),
        ("submitted", local_time(t["createdTime"].as_i64().unwrap_or(0))),
        ("duration", human_ms(t["costTime"].as_i64().unwrap_or(0))),
        ("progress", format!("{:.0}%", progress * 100.0)),
    ];
    if let Some(code) = t.pointer("/metrics/exitCode").and_then(Value::as_i64) {
        rows.push(("exit code", code.to_string()));
    }
    if let Some(reason) = t["errDesc"].as_str() {
        rows.push(("reason", reason.to_string()));
    }
    match format {
        Format::Csv => {
            let header: Vec<&str> = std::iter::once("status").chain(rows.iter().map(|(k, _)| *k)).collect();
            let values: Vec<String> =
                std::iter::once(text_at(&t, "/status")).chain(rows.into_iter().map(|(_, v)| v)).collect();
            emit(out, Format::Csv, &header, &[values], &Value::Null)?;
        }
        _ => {
            writeln!(out, "{}", text_at(&t, "/status"))?;
            for (k, v) in rows {
                let mut lines = v.lines();
                writeln!(out, "  {:<10} {}", format!("{k}:"), lines.next().unwrap_or(""))?;
                for more in lines {
                    writeln!(out, "  {:<10} {more}", "")?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_durations() {
        assert_eq!(parse_age("90s").expect("s"), 90_000);
        assert_eq!(parse_age("2h").expect("h"), 7_200_000);
        assert_eq!(parse_age("7").expect("d"), 7 * 86_400_000);
        assert!(parse_age("2 weeks").is_err() && parse_age("h").is_err());
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(4_200), "4.2 s");
        assert_eq!(human_ms(185_000), "3 m 05 s");
        assert_eq!(human_ms(7_620_000), "2 h 07 m");
        assert_eq!(code_head("\n  echo hi\necho more", 40), "echo hi…");
        assert_eq!(code_head("x = 1", 3), "x =…");
    }
}
