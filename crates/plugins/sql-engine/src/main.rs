//! `hangar-sql-engine engineconn ...`: the DataFusion engine process an ECM
//! launches (the launch command of `hangar_plugin_sql::SqlPlugin`). It takes
//! the same arguments and environment as `hangar engineconn`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hangar_sql_engine::FullSqlPlugin;

#[derive(Parser)]
#[command(name = "hangar-sql-engine", version, about = "Hangar's embedded SQL engine (DataFusion), started by an ECM")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as an engine process (started by an EngineConnManager).
    Engineconn(hangar_engineconn::LaunchArgs),
}

fn main() -> ExitCode {
    let Command::Engineconn(a) = Cli::parse().command;
    match cmd_engineconn(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn cmd_engineconn(a: hangar_engineconn::LaunchArgs) -> anyhow::Result<()> {
    hangar_engineconn::init_tracing("info");
    let args = a.into_args()?;
    // The engine's own runtime (RPC endpoint, heartbeats, result writing);
    // queries run on a runtime of their own inside the session.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(hangar_engineconn::run(args, vec![Arc::new(FullSqlPlugin)]))
}
