//! Contract crate for engines: the EngineConnPlugin trait and what an
//! Executor sees while it runs a task.
//!
//! A plugin answers, per engine type, the seeds' four questions:
//! * default labels ([`EngineConnPlugin::default_labels`]);
//! * EngineResourceFactory: what an engine costs ([`EngineConnPlugin::create_engine_resource`]);
//! * EngineConnLaunchBuilder: how to start its process ([`EngineConnPlugin::build_launch`]);
//! * EngineConnFactory: inside the engine process, the session and its
//!   executors ([`EngineConnPlugin::create_engine_conn`]).
//!
//! The manager and the ECM call the first three; the EngineConn runtime calls
//! the last. Nothing here knows about HTTP or the store.

pub mod code;
mod context;
pub mod testing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use hangar_protocol::resource::parse_bytes;
use hangar_protocol::{HangarError, LabelSet, Resource};

pub use hangar_protocol::resource::ClusterCharge;

pub use context::{
    CancelSignal, ExecutionContext, ExecutorEvent, INLINE_RESULT_MAX_BYTES, ROW_LIMIT_SETTING, ResultSetData,
    ResultSetWriter,
};
pub use hangar_protocol::rpc::EngineConnBuildRequest;

/// What the manager knows when it asks a plugin for an engine's resource.
#[derive(Debug, Clone)]
pub struct EngineResourceRequest<'a> {
    pub user: &'a str,
    pub labels: &'a LabelSet,
    /// Startup parameters (`params.configuration.startup`).
    pub properties: &'a BTreeMap<String, String>,
}

/// How to start the engine's process (Linkis `EngineConnLaunchRequest`). The
/// ECM adds the common arguments (ticket, labels, manager address) and the
/// common environment, writes the start-up script and runs it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EngineConnLaunchRequest {
    /// Program and its own arguments.
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// Variables that must be set in the ECM's environment; the launch fails
    /// naming the first one missing.
    pub necessary_environment: Vec<String>,
}

/// Everything an engine process knows about itself at start-up (Linkis `EngineCreationContext`).
#[derive(Debug, Clone)]
pub struct EngineCreationContext {
    pub user: String,
    pub ticket_id: String,
    pub labels: LabelSet,
    /// All `--conf key=value` options.
    pub options: BTreeMap<String, String>,
    pub work_dir: PathBuf,
}

/// An engine type's plugin.
#[async_trait]
pub trait EngineConnPlugin: Send + Sync + 'static {
    /// The `type` part of `engineType=type-version`.
    fn engine_type(&self) -> &'static str;

    /// Versions this plugin can start; the first is the default.
    fn versions(&self) -> &'static [&'static str];

    /// The version an ask's `engineType=<type>-<version>` means here: the
    /// version itself when the plugin runs it, the installed one a configured
    /// alias stands for, or an error a user can act on (unknown version, the
    /// engine not installed). Plugins whose version is found at run time
    /// (Spark) override this and [`EngineConnPlugin::default_version`].
    fn resolve_version(&self, asked: &str) -> Result<String, HangarError> {
        if self.versions().contains(&asked) {
            Ok(asked.to_string())
        } else {
            Err(HangarError::new(
                hangar_protocol::ErrorCode::UnknownEngineType,
                format!(
                    "engine type '{}' has no version '{asked}'; available: {}",
                    self.engine_type(),
                    self.versions().join(", ")
                ),
            ))
        }
    }

    /// The version asks without one get, and the listings show.
    fn default_version(&self) -> String {
        self.versions().first().copied().unwrap_or("1").to_string()
    }

    /// Run types (`codeType`) its executors accept.
    fn run_types(&self) -> &'static [&'static str];

    /// Default labels, at least `engineType=<type>-<default version>`.
    fn default_labels(&self) -> LabelSet {
        let mut labels = LabelSet::default();
        let version = self.default_version();
        // A plugin's own type and version are valid labels by construction.
        let _ = labels.insert(hangar_protocol::label::ENGINE_TYPE, format!("{}-{}", self.engine_type(), version));
        labels
    }

    /// EngineResourceFactory: the resource one engine of this type holds.
    fn create_engine_resource(&self, req: &EngineResourceRequest<'_>) -> Result<Resource, HangarError>;

    /// What an engine takes beyond its own process, from a queue of a cluster
    /// (Spark executors: Linkis's DriverAndYarnResource, whose driver part is
    /// [`EngineConnPlugin::create_engine_resource`]). Charged to the queue's
    /// label with the engine's resource, released with it.
    fn cluster_resource(&self, _req: &EngineResourceRequest<'_>) -> Result<Option<ClusterCharge>, HangarError> {
        Ok(None)
    }

    /// EngineConnLaunchBuilder: the process to start for a build request.
    fn build_launch(&self, req: &EngineConnBuildRequest) -> Result<EngineConnLaunchRequest, HangarError>;

    /// Called once when a server that launches engines starts, on a blocking
    /// thread: a place for slow one-off discovery (e.g. resolving an
    /// interpreter). Launches must work, perhaps slower, before it finishes.
    fn prepare(&self) {}

    /// Hooks run around the engine's start-up phases, in order.
    fn hooks(&self) -> Vec<Arc<dyn EngineConnHook>> {
        Vec::new()
    }

    /// EngineConnFactory: create the engine's session inside the engine process.
    async fn create_engine_conn(&self, ctx: &EngineCreationContext) -> Result<Arc<dyn EngineConnSession>, HangarError>;
}

/// The engine's session with its underlying engine (a shell, an interpreter,
/// a database connection) and the factory of its executors.
pub trait EngineConnSession: Send + Sync {
    /// The executor for one run type (Linkis `ExecutorManager`).
    fn executor(&self, run_type: &str) -> Result<Arc<dyn Executor>, HangarError>;

    /// `Err(reason)` once the underlying engine is gone for good (an
    /// interpreter died, a connection broke beyond repair): the runtime then
    /// reports the reason and the engine exits.
    fn healthy(&self) -> Result<(), String> {
        Ok(())
    }

    /// What the session says about itself (Spark: UI URL, application id,
    /// executors): shown with the engine's metrics.
    fn info(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

/// Runs code. One executor may be asked to run several tasks over its life.
#[async_trait]
pub trait Executor: Send + Sync {
    /// How many tasks may run at once (1 = sync executor).
    fn concurrency(&self) -> usize {
        1
    }

    /// Split a task's code into the statements [`Executor::execute`] runs one
    /// by one (Linkis CodeParser); the runtime reports progress per statement.
    /// The default runs the code as one statement.
    fn split(&self, code: &str) -> Vec<String> {
        vec![code.to_string()]
    }

    /// Run one statement. Logs, progress and result sets go through `ctx`.
    /// When `ctx.cancelled()` fires the executor must stop the code promptly
    /// and return; the runtime reports the task as Cancelled.
    async fn execute(&self, ctx: &mut ExecutionContext, code: &str) -> Result<(), String>;
}

/// Startup parameter: memory accounted per engine.
pub const MEMORY_KEY: &str = "hangar.engineconn.memory";
/// Startup parameter: cores accounted per engine.
pub const CORES_KEY: &str = "hangar.engineconn.cores";
/// Linkis's name for the memory setting, honoured too.
pub const LINKIS_MEMORY_KEY: &str = "wds.linkis.engineconn.java.driver.memory";

/// Resource from the startup properties, with per-plugin defaults.
pub fn resource_from(
    props: &BTreeMap<String, String>,
    default_memory: &str,
    default_cores: u32,
) -> Result<Resource, HangarError> {
    let memory =
        props.get(MEMORY_KEY).or_else(|| props.get(LINKIS_MEMORY_KEY)).map(String::as_str).unwrap_or(default_memory);
    let memory = parse_bytes(memory)?;
    let cores = match props.get(CORES_KEY) {
        Some(c) => c.trim().parse::<u32>().map_err(|_| {
            HangarError::invalid(format!("startup parameter {CORES_KEY} must be a whole number, got '{c}'"))
        })?,
        None => default_cores,
    };
    Ok(Resource::new(memory, cores, 1))
}

/// Startup parameter: comma-separated environment variables the engine's host
/// must have (checked by the ECM before launch, naming the first one missing).
pub const REQUIRED_ENV_KEY: &str = "hangar.engineconn.required_env";

/// `PATH` plus the variables a build request asks for in [`REQUIRED_ENV_KEY`].
pub fn required_env(req: &EngineConnBuildRequest) -> Vec<String> {
    std::iter::once("PATH".to_string())
        .chain(
            req.properties
                .get(REQUIRED_ENV_KEY)
                .into_iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
        )
        .collect()
}

/// The launch of an engine that runs inside this very binary (`<exe> engineconn`).
pub fn same_binary_launch(req: &EngineConnBuildRequest) -> Result<EngineConnLaunchRequest, HangarError> {
    let exe =
        std::env::current_exe().map_err(|e| HangarError::internal(format!("cannot find the hangar binary: {e}")))?;
    Ok(EngineConnLaunchRequest {
        command: vec![exe.display().to_string(), "engineconn".into()],
        environment: BTreeMap::new(),
        necessary_environment: required_env(req),
    })
}

/// A line read from a child's output (with `read_until(b'\n')`) as text,
/// its line ending dropped, invalid UTF-8 replaced; the buffer is emptied.
pub fn take_line(buf: &mut Vec<u8>) -> String {
    let mut end = buf.len();
    while end > 0 && matches!(buf[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let line = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.clear();
    line
}

/// For a session with one executor for all its run types: that executor, or
/// an error naming the run types the engine takes.
pub fn executor_for(
    engine: &str,
    run_types: &[&str],
    run_type: &str,
    executor: Arc<dyn Executor>,
) -> Result<Arc<dyn Executor>, HangarError> {
    if run_types.contains(&run_type) {
        Ok(executor)
    } else {
        Err(HangarError::invalid(format!(
            "the {engine} engine runs codeType {}, not '{run_type}'",
            run_types.join(", ")
        )))
    }
}

/// Look up a plugin by engine type, or fail naming the ones available; the
/// label's version must mean something to it ([`EngineConnPlugin::resolve_version`]).
pub fn find_plugin<'a>(
    plugins: &'a [Arc<dyn EngineConnPlugin>],
    labels: &LabelSet,
) -> Result<&'a Arc<dyn EngineConnPlugin>, HangarError> {
    let et = labels.engine_type()?;
    let plugin = plugins.iter().find(|p| p.engine_type() == et.engine).ok_or_else(|| {
        let known: Vec<String> =
            plugins.iter().map(|p| format!("{}-{}", p.engine_type(), p.default_version())).collect();
        HangarError::new(
            hangar_protocol::ErrorCode::UnknownEngineType,
            format!("unknown engine type '{et}'; available: {}", known.join(", ")),
        )
    })?;
    plugin.resolve_version(&et.version)?;
    Ok(plugin)
}

/// The labels with `engineType` naming the version the plugin runs (an alias
/// such as Linkis's `spark-3.2.1` becomes the installed Spark's version), so
/// asks for the same engine share engines.
pub fn canonical_labels(plugins: &[Arc<dyn EngineConnPlugin>], labels: &LabelSet) -> Result<LabelSet, HangarError> {
    let et = labels.engine_type()?;
    let plugin = find_plugin(plugins, labels)?;
    let version = plugin.resolve_version(&et.version)?;
    if version == et.version {
        return Ok(labels.clone());
    }
    let mut out = labels.clone();
    out.insert(hangar_protocol::label::ENGINE_TYPE, format!("{}-{version}", et.engine))?;
    Ok(out)
}

/// Work around the start-up phases of an engine (Linkis `EngineConnHook`).
/// An error in any phase ends the start: the manager gets the reason and the
/// engine exits.
#[async_trait]
pub trait EngineConnHook: Send + Sync {
    fn name(&self) -> &'static str;
    async fn before_create_engine_conn(&self, _ctx: &EngineCreationContext) -> Result<(), HangarError> {
        Ok(())
    }
    async fn after_create_engine_conn(&self, _ctx: &EngineCreationContext) -> Result<(), HangarError> {
        Ok(())
    }
    async fn before_executor_init(&self, _ctx: &EngineCreationContext) -> Result<(), HangarError> {
        Ok(())
    }
    async fn after_executor_init(&self, _ctx: &EngineCreationContext) -> Result<(), HangarError> {
        Ok(())
    }
    async fn after_ready(&self, _ctx: &EngineCreationContext) -> Result<(), HangarError> {
        Ok(())
    }
}
