//! The EngineConn runtime: the process an ECM launches for one engine.
//!
//! Start-up follows the engineconn-design seed: an [`EngineCreationContext`]
//! from the launch arguments, the plugin's session (EngineConnFactory), an
//! HTTP endpoint for the accessible executor (lock, execute, kill, status,
//! shutdown), then the ready report to the LinkisManager (status Unlock).
//! While it lives it heartbeats on an interval and on every status change,
//! pushes each task's logs, result sets and combined running-info reports to
//! the task's Entrance, and exits when idle, orphaned, told to, or when an
//! executeOnce engine has served its task.

mod options;
mod outbound;
mod routes;
mod server;
mod state;
mod task;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hangar_engineconn_plugin::{EngineConnPlugin, EngineCreationContext, find_plugin};
use hangar_protocol::rpc::{EngineToManager, RPC_VERSION};
use hangar_protocol::{LabelSet, NodeStatus};

pub use options::EngineOptions;

/// Every process of an engine carries its ticket in this variable, so the ECM
/// can find and kill left-over children by identity rather than by name.
pub const TICKET_ENV: &str = "HANGAR_ENGINE_TICKET";

/// The launch arguments of an engine process.
#[derive(Debug, Clone)]
pub struct EngineConnArgs {
    pub ticket_id: String,
    pub user: String,
    /// The control plane's base URLs, comma-separated (tried in turn).
    pub manager_url: String,
    pub labels: Vec<String>,
    pub conf: Vec<String>,
    pub work_dir: PathBuf,
    /// This engine's own key (never in the environment or on the command line).
    pub engine_key: String,
}

/// The command line an ECM starts an engine with, after the program's own
/// `engineconn` word (shared by every engine binary).
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    #[arg(long)]
    pub ticket_id: String,
    #[arg(long)]
    pub user: String,
    /// The control plane's base URLs, comma-separated: messages to the
    /// manager go to the one that answered last, the next when it fails.
    #[arg(long)]
    pub manager_url: String,
    #[arg(long)]
    pub work_dir: PathBuf,
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[arg(long = "conf")]
    pub conf: Vec<String>,
}

impl LaunchArgs {
    /// Complete the arguments with the secrets the ECM writes to standard
    /// input (read to the end, once, before anything else runs), and make the
    /// process non-dumpable so code it runs cannot read them from its memory.
    pub fn into_args(self) -> anyhow::Result<EngineConnArgs> {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
            .context("cannot read the engine's secrets from standard input")?;
        let secrets: hangar_protocol::credential::EngineSecrets = serde_json::from_str(&text)
            .context("standard input carries no engine secrets: engines are started by an EngineConnManager")?;
        harden_process();
        EngineConnArgs::from_launch(
            self.ticket_id,
            self.user,
            self.manager_url,
            self.work_dir,
            self.labels,
            self.conf,
            secrets,
        )
    }
}

/// The OS account this engine runs as.
pub(crate) fn own_account() -> hangar_protocol::rpc::OsAccount {
    hangar_protocol::rpc::OsAccount { uid: nix::unistd::getuid().as_raw(), gid: nix::unistd::getgid().as_raw() }
}

/// Other processes of the engine's account (the user code it runs) may not
/// read this process's memory or `/proc` entries, nor attach to it.
fn harden_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the engine process non-dumpable");
    }
}

impl EngineConnArgs {
    /// The arguments an ECM launched this process with, completed with the
    /// secrets it handed over: the engine key and the secret options.
    pub fn from_launch(
        ticket_id: String,
        user: String,
        manager_url: String,
        work_dir: PathBuf,
        labels: Vec<String>,
        mut conf: Vec<String>,
        secrets: hangar_protocol::credential::EngineSecrets,
    ) -> anyhow::Result<Self> {
        if secrets.engine_key.is_empty() {
            anyhow::bail!("the engine's secrets carry no engine key");
        }
        conf.extend(secrets.conf.into_iter().map(|(k, v)| format!("{k}={v}")));
        Ok(Self { ticket_id, user, manager_url, labels, conf, work_dir, engine_key: secrets.engine_key })
    }
}

/// Structured logs to stderr for every Hangar process (the server, and each
/// engine, whose stderr is its `logs/stderr`); `HANGAR_LOG` overrides `default`.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANGAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Run an engine until it exits; the error, if any, has already been reported
/// to the manager when that was possible.
pub async fn run(args: EngineConnArgs, plugins: Vec<Arc<dyn EngineConnPlugin>>) -> anyhow::Result<()> {
    let outbound = outbound::Outbound::new(&args.manager_url, args.engine_key.clone())?;
    match start(&args, &plugins, &outbound).await {
        Ok(engine) => {
            let reason = engine.run_until_exit().await;
            tracing::info!(ticket = %args.ticket_id, %reason, "engine exiting");
            Ok(())
        }
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::error!(ticket = %args.ticket_id, %reason, "engine start failed");
            let msg = EngineToManager::StartFailed { ticket_id: args.ticket_id.clone(), reason: reason.clone() };
            let _ = outbound.to_manager(&msg).await;
            Err(e)
        }
    }
}

async fn start(
    args: &EngineConnArgs,
    plugins: &[Arc<dyn EngineConnPlugin>],
    outbound: &outbound::Outbound,
) -> anyhow::Result<Arc<state::Engine>> {
    let labels = LabelSet::from_pairs(args.labels.iter().map(String::as_str)).context("bad --label argument")?;
    let mut options = BTreeMap::new();
    for kv in &args.conf {
        let (k, v) = kv.split_once('=').with_context(|| format!("--conf '{kv}' must be key=value"))?;
        options.insert(k.to_string(), v.to_string());
    }
    let opts = EngineOptions::from_map(&options)?;
    let ctx = EngineCreationContext {
        user: args.user.clone(),
        ticket_id: args.ticket_id.clone(),
        labels: labels.clone(),
        options,
        work_dir: args.work_dir.clone(),
    };
    let plugin = find_plugin(plugins, &labels)?.clone();
    let hooks = plugin.hooks();
    for h in &hooks {
        h.before_create_engine_conn(&ctx).await.with_context(|| format!("hook {} before engine creation", h.name()))?;
    }
    let session = plugin.create_engine_conn(&ctx).await.context("engine session creation failed")?;
    for h in &hooks {
        h.after_create_engine_conn(&ctx).await.with_context(|| format!("hook {} after engine creation", h.name()))?;
    }
    // ExecutorManager: the executor of the engine's own code type is created up front.
    for h in &hooks {
        h.before_executor_init(&ctx).await.with_context(|| format!("hook {} before executor init", h.name()))?;
    }
    let run_type = labels.get(hangar_protocol::label::CODE_TYPE).or(plugin.run_types().first().copied()).unwrap_or("");
    let executor = session.executor(run_type).with_context(|| format!("executor for codeType '{run_type}'"))?;
    let concurrency = opts.concurrency.unwrap_or_else(|| executor.concurrency()).max(1);
    for h in &hooks {
        h.after_executor_init(&ctx).await.with_context(|| format!("hook {} after executor init", h.name()))?;
    }
    tracing::info!(ticket = %ctx.ticket_id, %run_type, concurrency, "engine session and executor ready");

    let listener = tokio::net::TcpListener::bind((opts.bind_host.as_str(), 0))
        .await
        .with_context(|| format!("cannot listen on {}", opts.bind_host))?;
    let addr = listener.local_addr()?;
    // `ip:port` (`[v6]:port`) as bound: what the control plane calls.
    let instance = addr.to_string();
    let engine = state::Engine::new(ctx.clone(), instance.clone(), session, concurrency, opts, outbound.clone());
    server::spawn(listener, engine.clone(), args.engine_key.clone());

    let ready = EngineToManager::Ready {
        ticket_id: args.ticket_id.clone(),
        instance,
        pid: std::process::id(),
        rpc_version: RPC_VERSION,
        account: Some(own_account()),
    };
    // Ready means lockable: become Unlock before telling the manager, which
    // locks the engine as soon as it hears.
    engine.set_status(NodeStatus::Unlock);
    let reply = tokio::time::timeout(Duration::from_secs(30), outbound.to_manager(&ready))
        .await
        .context("the manager did not answer the ready report in 30 s")??;
    if !reply.known {
        anyhow::bail!("the manager does not know ticket {}", args.ticket_id);
    }
    for h in &hooks {
        h.after_ready(&ctx).await.with_context(|| format!("hook {} after ready", h.name()))?;
    }
    tracing::info!(ticket = %args.ticket_id, "engine is ready (Unlock)");
    Ok(engine)
}
