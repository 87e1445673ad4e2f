//! The client commands (`run`, `status`, `jobs`, `log`, `result`, `kill`,
//! the operator views, materials, `config`): their flags and their calls into `hangar_cli`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use hangar_cli::{Client, Connection, JobSpec};

#[derive(Args, Clone)]
pub(crate) struct ConnArgs {
    /// Hangar server URL.
    #[arg(long, env = "HANGAR_SERVER", default_value = hangar_cli::DEFAULT_SERVER, global = true)]
    pub(crate) server: String,
    /// User to act as (Token-User).
    #[arg(long, env = "HANGAR_USER", global = true)]
    pub(crate) user: Option<String>,
    /// Token (Token-Code).
    #[arg(long, env = "HANGAR_TOKEN", default_value = hangar_cli::DEFAULT_TOKEN, hide_env_values = true, global = true)]
    pub(crate) token: String,
}

#[derive(Args)]
pub(crate) struct MaterialArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(subcommand)]
    pub(crate) action: MaterialAction,
}

#[derive(Subcommand)]
pub(crate) enum MaterialAction {
    /// Upload a file as a new resource, or as the next version of one (`--update ID`).
    Upload {
        file: PathBuf,
        #[arg(long)]
        update: Option<String>,
    },
    /// Your resources, latest version of each.
    List,
    /// Every version of a resource.
    Versions { id: String },
    /// A resource's bytes (latest version unless `--version`), to stdout or `-o FILE`.
    Download {
        id: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Delete a resource, or one version of it.
    Delete {
        id: String,
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Args)]
pub(crate) struct ConfigArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(subcommand)]
    pub(crate) action: ConfigAction,
    /// Creator (IDE, nodeexecution, ...); default IDE with --engine, else the global settings.
    #[arg(long, global = true)]
    pub(crate) creator: Option<String>,
    /// Engine type and version, e.g. spark-3.4.4 (reads also take `spark`).
    #[arg(long, short = 'e', global = true)]
    pub(crate) engine: Option<String>,
    /// Admins: another user's values, or `*` for the creator's or the global defaults.
    #[arg(long = "for-user", global = true)]
    pub(crate) for_user: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum ConfigAction {
    /// The value that applies (yours, else the default).
    Get { key: String },
    /// Save a value (an empty VALUE clears yours: the default applies again).
    Set { key: String, value: String },
    /// Every setting with your value, the default and what is allowed.
    List,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Engine type, e.g. shell-1.
    #[arg(long, short = 'e', default_value = "shell-1")]
    pub(crate) engine: String,
    /// Code to run; `-` or no --code/--file reads standard input.
    #[arg(long, short = 'c', conflicts_with = "file")]
    pub(crate) code: Option<String>,
    /// File holding the code.
    #[arg(long, short = 'f')]
    pub(crate) file: Option<PathBuf>,
    /// Run type (codeType); defaults from the engine type.
    #[arg(long)]
    pub(crate) run_type: Option<String>,
    /// Creator part of userCreator.
    #[arg(long, default_value = "IDE")]
    pub(crate) creator: String,
    /// Extra label, key=value (repeatable).
    #[arg(long = "label", short = 'l')]
    pub(crate) labels: Vec<String>,
    /// Run in this session: every job of a session goes to one engine, so its
    /// state (variables, imports, working folder) is kept between jobs
    /// (Linkis's `fixedEngineConn` label).
    #[arg(long, short = 's')]
    pub(crate) session: Option<String>,
    /// Startup parameter, key=value (repeatable).
    #[arg(long = "startup")]
    pub(crate) startup: Vec<String>,
    /// Runtime parameter, key=value (repeatable).
    #[arg(long = "runtime")]
    pub(crate) runtime: Vec<String>,
    /// Submit and print the taskID without waiting.
    #[arg(long)]
    pub(crate) detach: bool,
    /// Also print the job's log (INFO lines) on stderr.
    #[arg(long, short = 'v')]
    pub(crate) verbose: bool,
}

#[derive(Args)]
pub(crate) struct LogArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// taskID or execID.
    pub(crate) id: String,
    /// Follow the log until the job ends (Ctrl-C stops following, not the job).
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
}

/// `--json` / `--csv` for scripts (aligned tables otherwise).
#[derive(Args)]
pub(crate) struct OutputArgs {
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    pub(crate) json: bool,
    /// Print CSV.
    #[arg(long)]
    pub(crate) csv: bool,
}

impl OutputArgs {
    pub(crate) fn format(&self) -> hangar_cli::Format {
        match (self.json, self.csv) {
            (true, _) => hangar_cli::Format::Json,
            (_, true) => hangar_cli::Format::Csv,
            _ => hangar_cli::Format::Table,
        }
    }
}

/// A job, and how to print it.
#[derive(Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// taskID or execID.
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) out: OutputArgs,
}

#[derive(Args)]
pub(crate) struct JobsArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Only jobs in this state (Succeed, Failed, Running, ...).
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// Only jobs of this engine type (shell, python-python3, ...).
    #[arg(long, short = 'e')]
    pub(crate) engine: Option<String>,
    /// Only jobs of this creator (the part after the user in userCreator).
    #[arg(long)]
    pub(crate) creator: Option<String>,
    /// Only jobs submitted within this age: 30m, 2h, 7d.
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Every user's jobs (admins).
    #[arg(long)]
    pub(crate) all: bool,
    /// This user's jobs (admins).
    #[arg(long = "of")]
    pub(crate) of_user: Option<String>,
    /// How many jobs per page.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub(crate) limit: u32,
    /// Which page (1 is the newest jobs).
    #[arg(long, default_value_t = 1)]
    pub(crate) page: u32,
    #[command(flatten)]
    pub(crate) out: OutputArgs,
}

#[derive(Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// taskID or execID.
    pub(crate) id: String,
}

#[derive(Args)]
pub(crate) struct ConnOnly {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(flatten)]
    pub(crate) out: OutputArgs,
}

#[derive(Args)]
pub(crate) struct EnginesArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Every user's engines (admin).
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) out: OutputArgs,
}

pub(crate) async fn cmd_material(a: MaterialArgs) -> anyhow::Result<i32> {
    use hangar_cli::MaterialCmd;
    let client = client(&a.conn).await?;
    let cmd = match &a.action {
        MaterialAction::Upload { file, update } => MaterialCmd::Upload { file, update: update.as_deref() },
        MaterialAction::List => MaterialCmd::List,
        MaterialAction::Versions { id } => MaterialCmd::Versions { id },
        MaterialAction::Download { id, version, output } => {
            MaterialCmd::Download { id, version: version.as_deref(), out: output.as_deref() }
        }
        MaterialAction::Delete { id, version } => MaterialCmd::Delete { id, version: version.as_deref() },
    };
    hangar_cli::material(&client, cmd, &mut std::io::stdout().lock()).await?;
    Ok(0)
}

pub(crate) async fn cmd_config(a: ConfigArgs) -> anyhow::Result<i32> {
    use hangar_cli::ConfigCmd;
    let client = client(&a.conn).await?;
    let scope =
        hangar_cli::ConfigScope { creator: a.creator.clone(), engine: a.engine.clone(), for_user: a.for_user.clone() };
    let cmd = match &a.action {
        ConfigAction::Get { key } => ConfigCmd::Get { key },
        ConfigAction::Set { key, value } => ConfigCmd::Set { key, value },
        ConfigAction::List => ConfigCmd::List,
    };
    hangar_cli::config(&client, &scope, cmd, &mut std::io::stdout().lock()).await?;
    Ok(0)
}

pub(crate) async fn client(c: &ConnArgs) -> anyhow::Result<Client> {
    let user = c
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(hangar_cli::default_user)
        .ok_or_else(|| anyhow::anyhow!("cannot tell which user you are: pass --user NAME or set HANGAR_USER"))?;
    Client::connect(Connection { server: c.server.clone(), user, token: c.token.clone(), cookie: None }).await
}

fn pairs(v: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    v.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--{what} '{kv}' must be key=value"))
        })
        .collect()
}

fn json_map(v: Vec<(String, String)>) -> serde_json::Map<String, serde_json::Value> {
    v.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect()
}

pub(crate) async fn cmd_run(a: RunArgs) -> anyhow::Result<i32> {
    let code = match (&a.code, &a.file) {
        (Some(c), _) if c != "-" => c.clone(),
        (_, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        _ => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read code from standard input")?;
            s
        }
    };
    let mut labels = pairs(&a.labels, "label")?;
    if let Some(session) = a.session {
        labels.push(("fixedEngineConn".into(), session));
    }
    let spec = JobSpec {
        engine_type: a.engine,
        code,
        run_type: a.run_type,
        creator: a.creator,
        labels,
        startup: json_map(pairs(&a.startup, "startup")?),
        runtime: json_map(pairs(&a.runtime, "runtime")?),
    };
    hangar_cli::run(&client(&a.conn).await?, &spec, a.detach, a.verbose).await
}

pub(crate) async fn cmd_status(a: ShowArgs) -> anyhow::Result<i32> {
    let c = client(&a.conn).await?;
    let (_, task_id) = c.resolve(&a.id).await?;
    hangar_cli::status(&c, task_id, a.out.format(), &mut std::io::stdout().lock()).await?;
    Ok(0)
}

pub(crate) async fn cmd_jobs(a: JobsArgs) -> anyhow::Result<i32> {
    let c = client(&a.conn).await?;
    let q = hangar_cli::JobsQuery {
        status: a.status,
        engine: a.engine,
        creator: a.creator,
        since: a.since,
        all: a.all,
        user: a.of_user,
        limit: a.limit,
        page: a.page,
    };
    hangar_cli::jobs(&c, &q, a.out.format(), &mut std::io::stdout().lock()).await?;
    Ok(0)
}

pub(crate) async fn cmd_log(a: LogArgs) -> anyhow::Result<i32> {
    let c = client(&a.conn).await?;
    let (exec, task_id) = c.resolve(&a.id).await?;
    if a.follow {
        let mode = hangar_cli::FollowMode { verbose: true, live_output: false, ctrl_c_kills: false };
        let o = hangar_cli::follow(&c, &exec, task_id, mode).await?;
        eprintln!("job {task_id} {}", o.status);
        return Ok(0);
    }
    let (text, _) = c.log(&exec, 0).await?;
    print!("{text}");
    Ok(0)
}

pub(crate) async fn cmd_result(a: ShowArgs) -> anyhow::Result<i32> {
    let c = client(&a.conn).await?;
    let (exec, task_id) = c.resolve(&a.id).await?;
    let status = c.status(&exec).await?;
    if !matches!(status.as_str(), "Succeed" | "Failed" | "Cancelled" | "Timeout") {
        anyhow::bail!(
            "job {task_id} is still {status}: its results are not complete yet (`hangar log -f {task_id}` follows it)"
        );
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    hangar_cli::print_results(&mut std::io::stdout().lock(), &c.results(task_id).await?, a.out.format(), terminal)?;
    let job = c.job(task_id).await?;
    for cut in job.pointer("/metrics/truncatedResults").and_then(serde_json::Value::as_array).into_iter().flatten() {
        let of = cut["total"].as_u64().map_or(String::new(), |t| format!(" of {t}"));
        eprintln!(
            "result set {}: {}{of} rows were kept (the row limit); raise {} to keep more",
            cut["alias"].as_u64().unwrap_or(0) + 1,
            cut["kept"],
            hangar_engineconn_plugin::ROW_LIMIT_SETTING
        );
    }
    Ok(0)
}

pub(crate) async fn cmd_kill(a: IdArgs) -> anyhow::Result<i32> {
    let c = client(&a.conn).await?;
    let (exec, _) = c.resolve(&a.id).await?;
    c.kill(&exec).await?;
    eprintln!("kill requested for {exec}");
    Ok(0)
}

pub(crate) async fn cmd_ops(conn: &ConnArgs, out: &OutputArgs, view: hangar_cli::OpsView) -> anyhow::Result<i32> {
    hangar_cli::ops(&client(conn).await?, view, out.format(), &mut std::io::stdout().lock()).await?;
    Ok(0)
}
