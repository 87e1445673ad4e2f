//! The `hangar` binary: thin dispatch to the component crates.
//!
//! * `hangar serve` runs Entrance + LinkisManager + ECM in one process;
//! * `hangar engineconn ...` is the engine process an ECM launches;
//! * `hangar run|status|log|result|kill` are the client commands.

mod address;
mod bench;
mod bench_jkg;
mod bench_manager;
mod bench_pool;
mod bench_spark;
mod cluster;
mod commands;
mod config;
mod datadir;
mod ecm_link;
mod engine_history;
mod exposure;
mod forward;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use commands::*;
use hangar_engineconn_plugin::EngineConnPlugin;

/// Every engine plugin this build knows; one line per plugin. Spark's has
/// the server's settings (an engine process finds Spark in `SPARK_HOME`).
fn plugins(spark: hangar_plugin_spark::SparkPlugin) -> Vec<Arc<dyn EngineConnPlugin>> {
    vec![
        Arc::new(hangar_plugin_shell::ShellPlugin),
        Arc::new(hangar_plugin_python::PythonPlugin),
        Arc::new(hangar_plugin_jdbc::JdbcPlugin),
        Arc::new(hangar_plugin_sql::SqlPlugin),
        Arc::new(spark),
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
    /// A job's state, reason, duration and progress (by taskID or execID).
    Status(ShowArgs),
    /// Your jobs, newest first (filters: --status, --engine, --since, ...).
    Jobs(JobsArgs),
    /// Print a job's log.
    Log(LogArgs),
    /// Print a job's result sets.
    Result(ShowArgs),
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
    /// Parameter configuration: get, set and list settings per creator and engine type.
    Config(ConfigArgs),
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
    /// Install Spark for the spark engine (pyspark from PyPI into a virtual environment).
    Spark {
        #[command(subcommand)]
        command: SparkCommand,
    },
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
    /// Host other hosts reach this server at (overrides server.advertise_host).
    #[arg(long)]
    advertise_host: Option<String>,
    /// Data folder: store, engine work dirs, logs, results (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<String>,
    /// Roles of this process: all, entrance,manager or ecm (overrides server.roles).
    #[arg(long)]
    roles: Option<String>,
    /// Control-plane URL(s) an ECM registers with, comma-separated (overrides server.manager_url).
    #[arg(long)]
    manager: Option<String>,
}

#[derive(Subcommand)]
enum SparkCommand {
    /// Install pyspark (Spark's jars and scripts, from PyPI) into `<dir>/venv`;
    /// the server finds it there when `<dir>` is `<data_dir>/spark`.
    Install {
        /// Where to install (default: `<data_dir>/spark`, data dir from the config).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The pyspark version.
        #[arg(long, default_value = hangar_plugin_spark::install::DEFAULT_PYSPARK_VERSION)]
        version: String,
        /// TOML configuration file (for server.data_dir).
        #[arg(long, env = "HANGAR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Say where the server finds Spark and which version it is.
    Status {
        #[arg(long, env = "HANGAR_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// A short run (CI smoke).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only the warm-pool measurements (with --quick: a 20 s quiet period instead of 5 minutes).
    #[arg(long)]
    pool: bool,
    /// Measure the Spark engine instead (against spark-sql and a bare PySpark session).
    #[arg(long)]
    spark: bool,
    /// With --spark: where Spark is (default: spark.home, SPARK_HOME, ./hangar-data/spark).
    #[arg(long, default_value = "")]
    spark_home: String,
    /// The Python of a venv with Jupyter Kernel Gateway, measured as the peer
    /// baseline (default: target/bench-venv/bin/python, made by scripts/bench-peers).
    #[arg(long)]
    jkg_python: Option<PathBuf>,
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
        Command::Spark { command } => cmd_spark(command),
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
        Command::Jobs(a) => client_runtime().and_then(|rt| rt.block_on(cmd_jobs(a))),
        Command::Log(a) => client_runtime().and_then(|rt| rt.block_on(cmd_log(a))),
        Command::Result(a) => client_runtime().and_then(|rt| rt.block_on(cmd_result(a))),
        Command::Kill(a) => client_runtime().and_then(|rt| rt.block_on(cmd_kill(a))),
        Command::Ecms(a) => {
            client_runtime().and_then(|rt| rt.block_on(cmd_ops(&a.conn, &a.out, hangar_cli::OpsView::Ecms)))
        }
        Command::Engines(a) => client_runtime()
            .and_then(|rt| rt.block_on(cmd_ops(&a.conn, &a.out, hangar_cli::OpsView::Engines { all: a.all }))),
        Command::Resources(a) => {
            client_runtime().and_then(|rt| rt.block_on(cmd_ops(&a.conn, &a.out, hangar_cli::OpsView::Resources)))
        }
        Command::Material(a) => client_runtime().and_then(|rt| rt.block_on(cmd_material(a))),
        Command::Config(a) => client_runtime().and_then(|rt| rt.block_on(cmd_config(a))),
        Command::KillEngine(a) => client_runtime().and_then(|rt| {
            rt.block_on(async {
                hangar_cli::kill_engine(&client(&a.conn).await?, &a.id).await?;
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

fn cmd_serve(a: ServeArgs) -> anyhow::Result<()> {
    config::check_env_names(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))?;
    let mut cfg = config::Config::load(a.config.as_deref(), &|k| std::env::var(k).ok())?;
    if let Some(p) = a.port {
        cfg.server.port = p;
    }
    if let Some(b) = a.bind {
        cfg.server.bind = b;
    }
    if let Some(h) = a.advertise_host {
        cfg.server.advertise_host = h;
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
    let spark = hangar_plugin_spark::SparkPlugin::new(cfg.spark.clone(), PathBuf::from(&cfg.server.data_dir));
    rt.block_on(serve::serve(cfg, plugins(spark)))
}

fn cmd_engineconn(a: hangar_engineconn::LaunchArgs) -> anyhow::Result<()> {
    hangar_engineconn::init_tracing("info");
    let args = a.into_args()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(hangar_engineconn::run(args, plugins(Default::default())))
}

fn cmd_spark(c: SparkCommand) -> anyhow::Result<i32> {
    let load = |config: Option<&std::path::Path>| config::Config::load(config, &|k| std::env::var(k).ok());
    match c {
        SparkCommand::Install { dir, version, config } => {
            let cfg = load(config.as_deref())?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&cfg.server.data_dir).join("spark"));
            let found = hangar_plugin_spark::install::install(&dir, &version).map_err(anyhow::Error::msg)?;
            println!(
                "Spark {} installed: SPARK_HOME={} python={}",
                found.version,
                found.home.display(),
                found.python.display()
            );
            if dir != PathBuf::from(&cfg.server.data_dir).join("spark") {
                println!("tell the server: [spark] home = \"{}\" (or HANGAR_SPARK_HOME)", found.home.display());
            }
            println!(
                "Linkis clients may ask for spark-{} or one of the aliases {:?}",
                found.version, cfg.spark.version_aliases
            );
            Ok(0)
        }
        SparkCommand::Status { config } => {
            let cfg = load(config.as_deref())?;
            let plugin = hangar_plugin_spark::SparkPlugin::new(cfg.spark.clone(), PathBuf::from(&cfg.server.data_dir));
            match plugin.installed() {
                Ok(f) => {
                    println!("Spark {}: SPARK_HOME={} python={}", f.version, f.home.display(), f.python.display());
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{}", e.message);
                    Ok(1)
                }
            }
        }
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn cmd_bench(a: BenchArgs) -> anyhow::Result<i32> {
    hangar_engineconn::init_tracing("warn");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = if a.spark {
        rt.block_on(bench_spark::run(&a.spark_home))?
    } else {
        rt.block_on(bench::run(bench::BenchOpts { quick: a.quick, pool_only: a.pool, jkg_python: a.jkg_python }))?
    };
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
