//! A `linkis-cli` compatible front: Linkis's flags, output and exit codes,
//! so scripts written for Linkis's CLI run unchanged against Hangar.
//!
//! Flags (one or two dashes): `--gatewayUrl`, `--authStg token|static`,
//! `--authKey`, `--authVal`, `-engineType`, `-codeType`, `-code`, `-codePath`
//! (or a positional script file), `-submitUser`, `-proxyUser`, `-creator`,
//! `-confMap k=v`, `-runtimeMap k=v`, `-varMap k=v`, `-labelMap k=v`,
//! `-sourceMap k=v`, `--async`, `--status|--log|--result|--kill <taskId>`,
//! `--help`, `--version`. Like Linkis's CLI each job gets a fresh engine
//! (label `executeOnce`) unless `-labelMap executeOnce=false` says otherwise.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::{Client, Connection, DEFAULT_SERVER, DEFAULT_TOKEN};

const USAGE: &str = "Usage: linkis-cli [--gatewayUrl URL] [--authStg token|static --authKey KEY --authVal VALUE]
       -engineType TYPE-VERSION -codeType TYPE (-code CODE | -codePath FILE | FILE)
       [-submitUser U] [-proxyUser U] [-creator C] [-confMap k=v] [-runtimeMap k=v]
       [-varMap k=v] [-labelMap k=v] [-sourceMap k=v] [--async]
   or: linkis-cli [--gatewayUrl URL] (--status | --log | --result | --kill) TASK_ID";

#[derive(Debug, Default)]
struct Args {
    gateway: Option<String>,
    auth_stg: Option<String>,
    auth_key: Option<String>,
    auth_val: Option<String>,
    engine_type: Option<String>,
    code_type: Option<String>,
    code: Option<String>,
    code_path: Option<String>,
    submit_user: Option<String>,
    proxy_user: Option<String>,
    creator: Option<String>,
    maps: BTreeMap<&'static str, Vec<(String, String)>>,
    is_async: bool,
    manage: Option<(&'static str, String)>,
    help: bool,
    version: bool,
}

fn parse(argv: &[String]) -> anyhow::Result<Args> {
    let mut a = Args::default();
    let mut it = argv.iter();
    while let Some(raw) = it.next() {
        let name = raw.trim_start_matches('-');
        if !raw.starts_with('-') {
            if a.code_path.is_none() && a.code.is_none() {
                a.code_path = Some(raw.clone());
                // Extra positional args after a script are passed as `extraArguments`.
                let rest: Vec<String> = it.by_ref().cloned().collect();
                if !rest.is_empty() {
                    a.maps.entry("runtimeMap").or_default().push(("extraArguments".into(), rest.join(" ")));
                }
                continue;
            }
            bail!("unexpected argument '{raw}'\n{USAGE}");
        }
        let mut value = || it.next().cloned().with_context(|| format!("{raw} needs a value\n{USAGE}"));
        match name {
            "gatewayUrl" => a.gateway = Some(value()?),
            "authStg" => a.auth_stg = Some(value()?),
            "authKey" => a.auth_key = Some(value()?),
            "authVal" => a.auth_val = Some(value()?),
            "engineType" => a.engine_type = Some(value()?),
            "codeType" => a.code_type = Some(value()?),
            "code" => a.code = Some(value()?),
            "codePath" => a.code_path = Some(value()?),
            "submitUser" => a.submit_user = Some(value()?),
            "proxyUser" => a.proxy_user = Some(value()?),
            "creator" => a.creator = Some(value()?),
            "scriptPath" => a.maps.entry("sourceMap").or_default().push(("scriptPath".into(), value()?)),
            m @ ("confMap" | "runtimeMap" | "varMap" | "labelMap" | "sourceMap" | "jobContentMap") => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').with_context(|| format!("-{m} takes key=value, got '{kv}'"))?;
                let key: &'static str = match m {
                    "confMap" => "confMap",
                    "runtimeMap" => "runtimeMap",
                    "varMap" => "varMap",
                    "labelMap" => "labelMap",
                    "sourceMap" => "sourceMap",
                    _ => "jobContentMap",
                };
                a.maps.entry(key).or_default().push((k.to_string(), v.to_string()));
            }
            "async" => a.is_async = true,
            "mode" => {
                let m = value()?;
                if m != "ujes" {
                    bail!("--mode {m} is not supported; only ujes");
                }
            }
            "userConf" => bail!("--userConf is not supported: pass the settings as flags"),
            op @ ("status" | "log" | "result" | "kill") => {
                if a.manage.is_some() {
                    bail!("give only one of --status, --log, --result, --kill");
                }
                let id = value()?;
                a.manage = Some((
                    match op {
                        "status" => "status",
                        "log" => "log",
                        "result" => "result",
                        _ => "kill",
                    },
                    id,
                ));
            }
            "help" | "h" => a.help = true,
            "version" => a.version = true,
            other => bail!("unknown option -{other}\n{USAGE}"),
        }
    }
    Ok(a)
}

fn map_json(a: &Args, key: &str) -> Map<String, Value> {
    a.maps.get(key).into_iter().flatten().map(|(k, v)| (k.clone(), json!(v))).collect()
}

/// Run the linkis-cli front; returns the process exit code (0, or 255 on failure like Linkis).
pub async fn main(argv: &[String], out: &mut impl Write) -> anyhow::Result<i32> {
    let a = parse(argv)?;
    if a.help {
        writeln!(out, "{USAGE}")?;
        return Ok(0);
    }
    if a.version {
        writeln!(out, "linkis-cli (Hangar {})", env!("CARGO_PKG_VERSION"))?;
        return Ok(0);
    }
    let server =
        a.gateway.clone().or_else(|| std::env::var("HANGAR_SERVER").ok()).unwrap_or_else(|| DEFAULT_SERVER.into());
    let os_user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "hangar".into());
    let user = a.proxy_user.clone().or(a.submit_user.clone()).unwrap_or(os_user);
    let mut client = match a.auth_stg.as_deref().unwrap_or("token") {
        "token" => {
            let token = a
                .auth_val
                .clone()
                .or_else(|| std::env::var("HANGAR_TOKEN").ok())
                .unwrap_or_else(|| DEFAULT_TOKEN.into());
            Client::new(Connection { server: server.clone(), user: user.clone(), token, cookie: None })?
        }
        _ => {
            let mut c = Client::new(Connection {
                server: server.clone(),
                user: user.clone(),
                token: String::new(),
                cookie: None,
            })?;
            let login_user = a.auth_key.clone().context("--authStg static needs --authKey USER --authVal PASSWORD")?;
            let pw = a.auth_val.clone().context("--authStg static needs --authVal PASSWORD")?;
            c.login(&login_user, &pw).await?;
            c
        }
    };
    writeln!(out, "connecting to linkis gateway:{server}")?;
    if let Some((op, id)) = &a.manage {
        return manage(&client, op, id, out).await;
    }
    let engine = a.engine_type.clone().context(format!("-engineType is required\n{USAGE}"))?;
    let code_type = a.code_type.clone().context(format!("-codeType is required\n{USAGE}"))?;
    let code = match (&a.code, &a.code_path) {
        (Some(_), Some(_)) => bail!("give only one of -code and -codePath"),
        (Some(c), None) => c.clone(),
        (None, Some(p)) => std::fs::read_to_string(p).with_context(|| format!("cannot read {p}"))?,
        (None, None) => bail!("one of -code, -codePath or a script file is required\n{USAGE}"),
    };
    let creator =
        a.creator.clone().unwrap_or_else(|| if a.is_async { "LINKISCLIASYNC".into() } else { "LINKISCLI".into() });
    let mut labels = map_json(&a, "labelMap");
    labels.insert("engineType".into(), json!(engine));
    labels.insert("codeType".into(), json!(code_type));
    labels.entry("userCreator").or_insert_with(|| json!(format!("{}-{creator}", client.user())));
    match labels.get("executeOnce").and_then(Value::as_str) {
        Some("false") => {
            labels.remove("executeOnce");
        }
        _ => {
            labels.insert("executeOnce".into(), json!(""));
        }
    }
    let mut source = map_json(&a, "sourceMap");
    source.entry("scriptPath").or_insert_with(|| json!("LinkisCli"));
    source.insert("cli.version".into(), json!(env!("CARGO_PKG_VERSION")));
    let mut runtime = map_json(&a, "runtimeMap");
    runtime.insert("hive.resultset.use.unique.column.names".into(), json!("true"));
    let body = json!({
        "executionContent": {"code": code, "runType": code_type},
        "params": {"variable": map_json(&a, "varMap"), "configuration": {"startup": map_json(&a, "confMap"), "runtime": runtime}},
        "source": source,
        "labels": labels,
        "executeUser": client.user(),
    });
    let data = client.post("/entrance/submit", &body).await?;
    let exec = data["execID"].as_str().context("submit answer has no execID")?.to_string();
    let task = data["taskID"].as_i64().context("submit answer has no taskID")?;
    writeln!(out, "JobId:{task}\nTaskId:{task}\nExecId:{exec}")?;
    writeln!(out, "Job is successfully submitted!")?;
    if a.is_async {
        return Ok(0);
    }
    let mode = crate::FollowMode { verbose: true, live_output: false, ctrl_c_kills: true };
    let outcome = crate::follow(&client, &exec, task, mode).await?;
    if outcome.left_running {
        return Ok(130);
    }
    let code = print_outcome(&client, task, &outcome.status, out).await?;
    let _ = &mut client;
    Ok(code)
}

async fn print_outcome(client: &Client, task: i64, status: &str, out: &mut impl Write) -> anyhow::Result<i32> {
    if status == "Succeed" {
        for (i, rs) in client.results(task).await?.iter().enumerate() {
            writeln!(out, "============ RESULT SET {} ============", i + 1)?;
            if rs.rs_type == "2" {
                writeln!(out, "----------- META DATA ------------")?;
                writeln!(out, "{}", rs.columns.join("\t"))?;
                writeln!(out, "------------ END OF META DATA ------------")?;
            }
            for row in &rs.rows {
                writeln!(out, "{}", row.join("\t"))?;
            }
            writeln!(out, "------------------------")?;
        }
        writeln!(out, "############Execute Success!!!########")?;
        return Ok(0);
    }
    let job = client.job(task).await?;
    writeln!(out, "Job {task} {status}: {}", job["errDesc"].as_str().unwrap_or("no reason recorded"))?;
    writeln!(out, "############Execute Error!!!########")?;
    Ok(255)
}

async fn manage(client: &Client, op: &str, id: &str, out: &mut impl Write) -> anyhow::Result<i32> {
    let (exec, task) = client.resolve(id).await?;
    match op {
        "status" => {
            let job = client.job(task).await?;
            writeln!(out, "TaskId:{task}\nExecId:{exec}\nStatus:{}", job["status"].as_str().unwrap_or(""))?;
            if let Some(d) = job["errDesc"].as_str() {
                writeln!(out, "ErrDesc:{d}")?;
            }
        }
        "log" => {
            let (log, _) = client.log(&exec, 0).await?;
            write!(out, "{log}")?;
        }
        "result" => {
            let status = client.status(&exec).await?;
            return print_outcome(client, task, &status, out).await;
        }
        _ => {
            client.kill(&exec).await?;
            writeln!(out, "Kill job {task} successfully")?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_linkis_flags() {
        let a = parse(&args(&[
            "--gatewayUrl",
            "http://h:1",
            "-engineType",
            "shell-1",
            "-codeType",
            "shell",
            "-code",
            "echo",
            "-varMap",
            "a=b",
            "-labelMap",
            "tenant=t1",
            "--async",
            "-submitUser",
            "hadoop",
        ]))
        .expect("parse");
        assert_eq!(a.gateway.as_deref(), Some("http://h:1"));
        assert_eq!(a.engine_type.as_deref(), Some("shell-1"));
        assert!(a.is_async);
        assert_eq!(map_json(&a, "varMap")["a"], "b");
        assert_eq!(map_json(&a, "labelMap")["tenant"], "t1");
        let a = parse(&args(&["--status", "42"])).expect("parse");
        assert_eq!(a.manage, Some(("status", "42".to_string())));
        let a = parse(&args(&["-engineType", "shell-1", "script.sh", "x", "y"])).expect("parse");
        assert_eq!(a.code_path.as_deref(), Some("script.sh"));
        assert_eq!(map_json(&a, "runtimeMap")["extraArguments"], "x y");
        assert!(parse(&args(&["-bogus"])).is_err());
        assert!(parse(&args(&["-code"])).is_err());
        assert!(parse(&args(&["--status", "1", "--kill", "2"])).is_err());
        assert!(parse(&args(&["-confMap", "novalue"])).is_err());
    }
}
