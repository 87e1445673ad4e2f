//! The peer baseline of `hangar bench`: Jupyter Kernel Gateway's cold start
//! (a new kernel to its first executed `pass`) and warm execute, measured by
//! `bench_jkg.py` in the same run as Hangar's Python engine and set beside it.
//! It needs a Python with `jupyter_kernel_gateway` and `websocket-client`
//! (`scripts/bench-peers` makes `target/bench-venv`); without one the rows
//! say how to get it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::{Dist, Row, row};

const SCRIPT: &str = include_str!("bench_jkg.py");

/// The Python to run the gateway with: `--jkg-python`, else the venv
/// `scripts/bench-peers` makes (next to the working directory's `target/`).
pub(crate) fn python(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let venv = PathBuf::from("target/bench-venv/bin/python");
    venv.exists().then_some(venv)
}

/// Hangar's Python figures of this run, to stand beside the gateway's.
pub(crate) struct HangarPython {
    pub cold_submit_to_result: Dist,
    pub warm: Dist,
}

/// Rows comparing the gateway with Hangar, and the raw figures for the JSON report.
pub(crate) async fn rows(
    python: Option<PathBuf>,
    cold: usize,
    warm: usize,
    hangar: &HangarPython,
) -> (Vec<Row>, Value) {
    let Some(python) = python else {
        let why = "not measured: run scripts/bench-peers (installs Jupyter Kernel Gateway into target/bench-venv) or pass --jkg-python";
        return (vec![skipped(why)], json!({"skipped": why}));
    };
    match measure(&python, cold, warm).await {
        Ok((jkg_cold, jkg_warm, version)) => {
            let rows = vec![
                row(
                    "python cold: Hangar submit -> result vs Kernel Gateway new kernel -> first execute (p50)",
                    hangar.cold_submit_to_result.pct(0.5),
                    jkg_cold.pct(0.5),
                    &format!("Jupyter Kernel Gateway {version}"),
                    "-",
                ),
                row(
                    "python warm: Hangar task via REST vs Kernel Gateway execute (p50)",
                    hangar.warm.pct(0.5),
                    jkg_warm.pct(0.5),
                    &format!("Jupyter Kernel Gateway {version}"),
                    "-",
                ),
            ];
            (
                rows,
                json!({"version": version, "cold_kernel_to_first_execute": jkg_cold.json(), "warm_execute": jkg_warm.json()}),
            )
        }
        Err(e) => {
            let why = format!("failed: {e:#}");
            (vec![skipped(&why)], json!({"failed": why}))
        }
    }
}

fn skipped(why: &str) -> Row {
    Row {
        name: "peer: Jupyter Kernel Gateway".into(),
        value: why.into(),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    }
}

async fn measure(python: &Path, cold: usize, warm: usize) -> anyhow::Result<(Dist, Dist, String)> {
    let run = tokio::process::Command::new(python)
        .args(["-c", SCRIPT, &cold.to_string(), &warm.to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .context("the gateway run took over 10 minutes")?
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).lines().rev().take(5).collect::<Vec<_>>().join(" / "));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("the gateway run printed no result")?;
    let dist =
        |k: &str| Dist(v[k].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default());
    Ok((dist("cold_ms"), dist("warm_ms"), v["version"].as_str().unwrap_or("?").to_string()))
}
