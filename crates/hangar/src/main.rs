//! The `hangar` binary: thin dispatch to the component crates.
//!
//! * `hangar serve` runs Entrance + LinkisManager + ECM in one process;
//! * `hangar engineconn ...` is the engine process an ECM launches;
//! * `hangar run|status|log|result|kill` are the client commands.

mod bench;
mod bench_manager;
mod config;
mod datadir;
mod exposure;
mod serve;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hangar_cli::{Client, Connection, JobSpec};
use hangar_engineconn_plugin::EngineConnPlugin;

/// Every engine plugin this build knows; one line per plugin.
fn plugins() -> Vec<Arc<dyn EngineConnPlugin>> {
    vec![
        Arc::new(hangar_plugin_shell::ShellPlugin),
        Arc::new(hangar_plugin_python::PythonPlugin),
        Arc::new(hangar_plugin_jdbc::JdbcPlugin),
        Arc::new(hangar_plugin_sql::SqlPlugin),
    ]
}

#[derive(Parser)]
#[command(name = "hangar", version, about = "Engine governance compatible with Apache Linkis clients")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Entrance + LinkisManager + EngineConnManager on one port.
    Serve(ServeArgs),
    /// Submit code, stream its log, print its result (exit 0 on success).
    Run(RunArgs),
    /// Print a job's status (by taskID or execID).
    Status(IdArgs),
    /// Print a job's log.
    Log(LogArgs),
    /// Print a job's result sets.
    Result(IdArgs),
    /// Kill a job.
    Kill(IdArgs),
    /// List the EngineConnManagers (admin).
    Ecms(ConnOnly),
    /// List your engines (`--all`: every engine, admin).
    Engines(EnginesArgs),
    /// Resources by userCreator and engine type.
    Resources(ConnOnly),
    /// Stop an engine by instance (host:port) or ticket.
    KillEngine(IdArgs),
    /// Your files in the material library (upload, list, versions, download, delete).
    Material(MaterialArgs),
    /// Linkis's `linkis-cli`, flag for flag (also run when this binary is called `linkis-cli`).
    #[command(name = "linkis-cli", disable_help_flag = true)]
    LinkisCli {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Print a password hash for `auth.users` (reads the password from standard input).
    HashPassword,
    /// Measure speed, scale and footprint against same-run baselines.
    Bench(BenchArgs),
    /// The engine process an EngineConnManager launches (not for direct use).
    #[command(hide = true)]
    Engineconn(hangar_engineconn::LaunchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (keys: docs/configuration.md).
    #[arg(long, env = "HANGAR_CONFIG")]
    config: Option<PathBuf>,
    /// Port of the REST API (overrides server.port).
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind (overrides server.bind).
    #[arg(long)]
    bind: Option<String>,
    /// Data folder: store, engine work dirs, logs, results (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<String>,
    /// Roles of this process: all, entrance,manager or ecm (overrides server.roles).
    #[arg(long)]
    roles: Option<String>,
    /// Manager URL an ECM registers with (overrides server.manager_url).
    #[arg(long)]
    manager: Option<String>,
}

#[derive(Args, Clone)]
struct ConnArgs {
    /// Hangar server URL.
    #[arg(long, env = "HANGAR_SERVER", default_value = hangar_cli::DEFAULT_SERVER, global = true)]
    server: String,
    /// User to act as (Token-User).
    #[arg(long, env = "HANGAR_USER", global = true)]
    user: Option<String>,
    /// Token (Token-Code).
    #[arg(long, env = "HANGAR_TOKEN", default_value = hangar_cli::DEFAULT_TOKEN, hide_env_values = true, global = true)]
    token: String,
}

#[derive(Args)]
struct MaterialArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    action: MaterialAction,
}

#[derive(Subcommand)]
enum MaterialAction {
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
struct RunArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Engine type, e.g. shell-1.
    #[arg(long, short = 'e', default_value = "shell-1")]
    engine: String,
    /// Code to run; `-` or no --code/--file reads standard input.
    #[arg(long, short = 'c', conflicts_with = "file")]
    code: Option<String>,
    /// File holding the code.
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Run type (codeType); defaults from the engine type.
    #[arg(long)]
    run_type: Option<String>,
    /// Creator part of userCreator.
    #[arg(long, default_value = "IDE")]
    creator: String,
    /// Extra label, key=value (repeatable).
    #[arg(long = "label", short = 'l')]
    labels: Vec<String>,
    /// Run in this session: every job of a session goes to one engine, so its
    /// state (variables, imports, working folder) is kept between jobs
    /// (Linkis's `fixedEngineConn` label).
    #[arg(long, short = 's')]
    session: Option<String>,
    /// Startup parameter, key=value (repeatable).
    #[arg(long = "startup")]
    startup: Vec<String>,
    /// Runtime parameter, key=value (repeatable).
    #[arg(long = "runtime")]
    runtime: Vec<String>,
    /// Submit and print the taskID without waiting.
    #[arg(long)]
    detach: bool,
    /// Also print the job's log (INFO lines) on stderr.
    #[arg(long, short = 'v')]
    verbose: bool,
}

#[derive(Args)]
struct LogArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// taskID or execID.
    id: String,
    /// Follow the log until the job ends (Ctrl-C stops following, not the job).
    #[arg(long, short = 'f')]
    follow: bool,
}

#[derive(Args)]
struct IdArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// taskID or execID.
    id: String,
}

#[derive(Args)]
struct BenchArgs {
    /// A short run (CI smoke).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ConnOnly {
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Args)]
struct EnginesArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Every user's engines (admin).
    #[arg(long)]
    all: bool,
}

fn main() -> ExitCode {
    // Called as `linkis-cli` (a link to this binary): Linkis's CLI front.
    let argv: Vec<String> = std::env::args().collect();
    let called = argv.first().and_then(|a| std::path::Path::new(a).file_name()).and_then(|n| n.to_str()).unwrap_or("");
    if called == "linkis-cli" {
        return linkis_cli(&argv[1..]);
    }
    let cli = Cli::parse();
    if let Command::LinkisCli { args } = &cli.command {
        return linkis_cli(args);
    }
    let result = match cli.command {
        Command::Serve(a) => cmd_serve(a).map(|()| 0),
        Command::Engineconn(a) => cmd_engineconn(a).map(|()| 0),
        Command::Bench(a) => cmd_bench(a),
        Command::LinkisCli { .. } => Ok(0),
        Command::HashPassword => {
            let mut pw = String::new();
            std::io::stdin().read_line(&mut pw).map_err(anyhow::Error::from).and_then(|_| {
                let pw = pw.trim_end_matches(['\n', '\r']);
                if pw.is_empty() {
                    anyhow::bail!("no password on standard input");
                }
                println!("{}", hangar_entrance::session::hash_password(pw));
                Ok(0)
            })
        }
        Command::Run(a) => client_runtime().and_then(|rt| rt.block_on(cmd_run(a))),
        Command::Status(a) => client_runtime().and_then(|rt| rt.block_on(cmd_status(a))),
        Command::Log(a) => client_runtime().and_then(|rt| rt.block_on(cmd_log(a))),
        Command::Result(a) => client_runtime().and_then(|rt| rt.block_on(cmd_result(a))),
        Command::Kill(a) => client_runtime().and_then(|rt| rt.block_on(cmd_kill(a))),
        Command::Ecms(a) => client_runtime().and_then(|rt| rt.block_on(cmd_ops(&a.conn, hangar_cli::OpsView::Ecms))),
        Command::Engines(a) => {
            client_runtime().and_then(|rt| rt.block_on(cmd_ops(&a.conn, hangar_cli::OpsView::Engines { all: a.all })))
        }
        Command::Resources(a) => {
            client_runtime().and_then(|rt| rt.block_on(cmd_ops(&a.conn, hangar_cli::OpsView::Resources)))
        }
        Command::Material(a) => client_runtime().and_then(|rt| rt.block_on(cmd_material(a))),
        Command::KillEngine(a) => client_runtime().and_then(|rt| {
            rt.block_on(async {
                hangar_cli::kill_engine(&client(&a.conn)?, &a.id).await?;
                eprintln!("engine {} stopped", a.id);
                Ok(0)
            })
        }),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn cmd_material(a: MaterialArgs) -> anyhow::Result<i32> {
    use hangar_cli::MaterialCmd;
    let client = client(&a.conn)?;
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

fn cmd_serve(a: ServeArgs) -> anyhow::Result<()> {
    config::check_env_names(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))?;
    let mut cfg = config::Config::load(a.config.as_deref(), &|k| std::env::var(k).ok())?;
    if let Some(p) = a.port {
        cfg.server.port = p;
    }
    if let Some(b) = a.bind {
        cfg.server.bind = b;
    }
    if let Some(d) = a.data_dir {
        cfg.server.data_dir = d;
    }
    if let Some(r) = a.roles {
        cfg.server.roles = r;
    }
    if let Some(m) = a.manager {
        cfg.server.manager_url = m;
    }
    hangar_engineconn::init_tracing(&cfg.server.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve::serve(cfg, plugins()))
}

fn cmd_engineconn(a: hangar_engineconn::LaunchArgs) -> anyhow::Result<()> {
    hangar_engineconn::init_tracing("info");
    let args = a.into_args()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(hangar_engineconn::run(args, plugins()))
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn client(c: &ConnArgs) -> anyhow::Result<Client> {
    let user = c
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(hangar_cli::default_user)
        .ok_or_else(|| anyhow::anyhow!("cannot tell which user you are: pass --user NAME or set HANGAR_USER"))?;
    Client::new(Connection { server: c.server.clone(), user, token: c.token.clone(), cookie: None })
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

async fn cmd_run(a: RunArgs) -> anyhow::Result<i32> {
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
    hangar_cli::run(&client(&a.conn)?, &spec, a.detach, a.verbose).await
}

async fn cmd_status(a: IdArgs) -> anyhow::Result<i32> {
    let c = client(&a.conn)?;
    let (exec, _) = c.resolve(&a.id).await?;
    println!("{}", c.status(&exec).await?);
    Ok(0)
}

async fn cmd_log(a: LogArgs) -> anyhow::Result<i32> {
    let c = client(&a.conn)?;
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

async fn cmd_result(a: IdArgs) -> anyhow::Result<i32> {
    let c = client(&a.conn)?;
    let (exec, task_id) = c.resolve(&a.id).await?;
    let status = c.status(&exec).await?;
    if !matches!(status.as_str(), "Succeed" | "Failed" | "Cancelled" | "Timeout") {
        anyhow::bail!(
            "job {task_id} is still {status}: its results are not complete yet (`hangar log -f {task_id}` follows it)"
        );
    }
    hangar_cli::print_results(&mut std::io::stdout().lock(), &c.results(task_id).await?)?;
    let job = c.job(task_id).await?;
    for cut in job.pointer("/metrics/truncatedResults").and_then(serde_json::Value::as_array).into_iter().flatten() {
        eprintln!(
            "result set {}: {} of {} rows were kept (the row limit); raise {} to keep more",
            cut["alias"].as_u64().unwrap_or(0) + 1,
            cut["kept"],
            cut["total"],
            hangar_engineconn_plugin::ROW_LIMIT_SETTING
        );
    }
    Ok(0)
}

async fn cmd_kill(a: IdArgs) -> anyhow::Result<i32> {
    let c = client(&a.conn)?;
    let (exec, _) = c.resolve(&a.id).await?;
    c.kill(&exec).await?;
    eprintln!("kill requested for {exec}");
    Ok(0)
}

async fn cmd_ops(conn: &ConnArgs, view: hangar_cli::OpsView) -> anyhow::Result<i32> {
    hangar_cli::ops(&client(conn)?, view, &mut std::io::stdout().lock()).await?;
    Ok(0)
}

fn cmd_bench(a: BenchArgs) -> anyhow::Result<i32> {
    hangar_engineconn::init_tracing("warn");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(bench::run(bench::BenchOpts { quick: a.quick }))?;
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(0)
}

fn linkis_cli(args: &[String]) -> ExitCode {
    let result =
        client_runtime().and_then(|rt| rt.block_on(hangar_cli::linkis_cli::main(args, &mut std::io::stdout().lock())));
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!("############Execute Error!!!########");
            ExitCode::from(255)
        }
    }
}
