//! Output for people and scripts: result sets, aligned tables, the operator views.

use std::io::Write;

use serde_json::{Value, json};

use crate::{Client, ResultSet, text_at as s};

/// How a command prints: aligned tables for people (the default), JSON or
/// CSV for scripts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

/// Rows under a header in the chosen format; `raw` is what JSON prints.
pub fn emit(
    out: &mut impl Write,
    format: Format,
    header: &[&str],
    rows: &[Vec<String>],
    raw: &Value,
) -> std::io::Result<()> {
    match format {
        Format::Table => print_table(out, header, rows),
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(raw).unwrap_or_default()),
        Format::Csv => {
            writeln!(out, "{}", csv_line(header.iter().copied()))?;
            for r in rows {
                writeln!(out, "{}", csv_line(r.iter().map(String::as_str)))?;
            }
            Ok(())
        }
    }
}

fn csv_line<'a>(cells: impl Iterator<Item = &'a str>) -> String {
    cells
        .map(
            |c| {
                if c.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", c.replace('"', "\"\""))
                } else {
                    c.to_string()
                }
            },
        )
        .collect::<Vec<_>>()
        .join(",")
}

/// Print result sets: TEXT lines as they are; TABLE rows aligned under their
/// header on a terminal, tab-separated into a pipe; or JSON / CSV.
pub fn print_results(out: &mut impl Write, sets: &[ResultSet], format: Format, terminal: bool) -> std::io::Result<()> {
    if format == Format::Json {
        let v: Vec<Value> =
            sets.iter().map(|rs| json!({"type": rs.rs_type, "columns": rs.columns, "rows": rs.rows})).collect();
        return writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    for (i, rs) in sets.iter().enumerate() {
        if sets.len() > 1 && format == Format::Table {
            writeln!(out, "==== result set {} ====", i + 1)?;
        } else if i > 0 {
            writeln!(out)?;
        }
        let columns: Vec<&str> = rs.columns.iter().map(String::as_str).collect();
        match (rs.rs_type == "2", format) {
            (true, Format::Csv) => emit(out, Format::Csv, &columns, &rs.rows, &Value::Null)?,
            (true, _) if terminal => print_table(out, &columns, &rs.rows)?,
            (true, _) => {
                writeln!(out, "{}", rs.columns.join("\t"))?;
                for row in &rs.rows {
                    writeln!(out, "{}", row.join("\t"))?;
                }
            }
            (false, Format::Csv) => {
                for row in &rs.rows {
                    writeln!(out, "{}", csv_line(row.iter().map(String::as_str)))?;
                }
            }
            (false, _) => {
                for row in &rs.rows {
                    writeln!(out, "{}", row.join("\t"))?;
                }
            }
        }
    }
    Ok(())
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

fn res(v: &Value, ptr: &str) -> String {
    format!(
        "{} / {} cores / {} inst",
        s(v, &format!("{ptr}/memory")),
        s(v, &format!("{ptr}/cpu")),
        s(v, &format!("{ptr}/instance"))
    )
}

/// Operator views as tables.
pub async fn ops(client: &Client, what: OpsView, format: Format, out: &mut impl Write) -> anyhow::Result<()> {
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
    emit(out, format, headers, &rows, &d[key])?;
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
        print_results(&mut out, &sets, Format::Table, false).expect("print");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "==== result set 1 ====\nhi\n==== result set 2 ====\na\tb\n1\tx\n"
        );
        let mut out = Vec::new();
        print_results(&mut out, &sets[1..], Format::Table, true).expect("print");
        assert_eq!(String::from_utf8(out).expect("utf8"), "a  b\n1  x\n");
        let mut out = Vec::new();
        let rows = vec![vec!["1".to_string(), "say \"hi\", bye".to_string()]];
        emit(&mut out, Format::Csv, &["n", "text"], &rows, &Value::Null).expect("csv");
        assert_eq!(String::from_utf8(out).expect("utf8"), "n,text\n1,\"say \"\"hi\"\", bye\"\n");
    }
}
