//! The python engine (`engineType=python-python3`, `codeType=python` or `py`):
//! one long-lived Python interpreter per engine, in its own process group,
//! running the driver in `driver.py`. Every task's code is one cell executed in
//! the same namespace, so variables, imports and functions persist from task to
//! task on the same engine.
//!
//! The driver speaks JSON lines on private duplicates of the interpreter's
//! stdin/stdout (see `driver.py`): user stdout lines become a TEXT result set,
//! stderr lines the task log as they are produced, `show_table(...)` a TABLE
//! result set, and a failing cell fails the task with its Python traceback. A
//! kill interrupts the cell with SIGINT (`KeyboardInterrupt`) and keeps the
//! session; an interpreter that does not answer within two seconds is killed
//! and the session reports itself unhealthy, as it does when the interpreter
//! dies, so the engine exits.

mod cell;
mod interp;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hangar_engineconn_plugin::{
    EngineConnBuildRequest, EngineConnLaunchRequest, EngineConnPlugin, EngineConnSession, EngineCreationContext,
    EngineResourceRequest, Executor, executor_for, resource_from,
};
use hangar_protocol::{HangarError, Resource};

pub use cell::CellExecutor;
pub use interp::{DRIVER, Interpreter, InterpreterSpec};

/// Startup parameter: the python interpreter to run (a path or a command on `PATH`).
pub const PYTHON_PATH_KEY: &str = "hangar.python.path";
/// Linkis's name for the interpreter; honoured when it is a path.
pub const LINKIS_PYTHON_VERSION_KEY: &str = "python.version";
/// Startup parameter: colon-separated folders put in front of `sys.path`.
pub const PYTHON_PATHS_KEY: &str = "hangar.python.paths";
pub use hangar_engineconn_plugin::REQUIRED_ENV_KEY;

const DEFAULT_PYTHON: &str = "python3";
/// The real interpreter behind `python3`, found by [`PythonPlugin::prepare`].
static RESOLVED_PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// How the ECM hands that path to the engine process.
const RESOLVED_PYTHON_ENV: &str = "HANGAR_PYTHON_RESOLVED";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an interrupted cell may take to stop before the interpreter is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// The python EngineConnPlugin.
pub struct PythonPlugin;

#[async_trait]
impl EngineConnPlugin for PythonPlugin {
    fn engine_type(&self) -> &'static str {
        "python"
    }

    fn versions(&self) -> &'static [&'static str] {
        &["python3"]
    }

    fn run_types(&self) -> &'static [&'static str] {
        &["python", "py"]
    }

    fn create_engine_resource(&self, req: &EngineResourceRequest<'_>) -> Result<Resource, HangarError> {
        resource_from(req.properties, "512m", 1)
    }

    /// Resolve `python3` on `PATH` to the real interpreter once: version
    /// managers put a shell-script shim there (pyenv's costs ~150 ms a start).
    fn prepare(&self) {
        let out = std::process::Command::new(DEFAULT_PYTHON).args(["-c", "import sys; print(sys.executable)"]).output();
        if let Ok(out) = out
            && out.status.success()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !path.is_empty() && std::path::Path::new(&path).is_file() {
                let _ = RESOLVED_PYTHON.set(path);
            }
        }
    }

    fn build_launch(&self, req: &EngineConnBuildRequest) -> Result<EngineConnLaunchRequest, HangarError> {
        let mut launch = hangar_engineconn_plugin::same_binary_launch(req)?;
        if let Some(p) = RESOLVED_PYTHON.get() {
            launch.environment.insert(RESOLVED_PYTHON_ENV.to_string(), p.clone());
        }
        Ok(launch)
    }

    async fn create_engine_conn(&self, ctx: &EngineCreationContext) -> Result<Arc<dyn EngineConnSession>, HangarError> {
        let python = python_command(&ctx.options);
        // The plugin's `lib` and the user's localized `resources` are importable.
        let mut paths: Vec<String> = ctx
            .options
            .get(PYTHON_PATHS_KEY)
            .map(|p| p.trim().to_string())
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        for d in ["lib", "resources"] {
            let dir = ctx.work_dir.join(d);
            if dir.is_dir() {
                paths.push(dir.display().to_string());
            }
        }
        let interp = Interpreter::start(InterpreterSpec {
            name: "python interpreter",
            python,
            paths: paths.join(":"),
            cwd: ctx.work_dir.clone(),
            env: BTreeMap::new(),
            program: "_main()".into(),
            start_timeout: START_TIMEOUT,
            interrupt_grace: INTERRUPT_GRACE,
            interrupt_note: "KeyboardInterrupt",
            setup_line: None,
        })
        .await?;
        let interp = Arc::new(interp);
        let executor = Arc::new(CellExecutor::new(interp.clone(), "python", false, Default::default()));
        Ok(Arc::new(PythonSession { interp, executor }))
    }
}

/// The interpreter to run: `hangar.python.path`, else Linkis's `python.version`
/// when it names a path, else `python3` from `PATH` (as resolved by the server
/// when the engine's account can run that).
fn python_command(options: &BTreeMap<String, String>) -> String {
    options
        .get(PYTHON_PATH_KEY)
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .or_else(|| options.get(LINKIS_PYTHON_VERSION_KEY).map(|p| p.trim().to_string()).filter(|p| p.contains('/')))
        // The server's interpreter, when this engine's account may run it (an
        // engine running as another account looks `python3` up on PATH).
        .or_else(|| {
            std::env::var(RESOLVED_PYTHON_ENV)
                .ok()
                .filter(|p| !p.is_empty() && nix::unistd::access(p.as_str(), nix::unistd::AccessFlags::X_OK).is_ok())
        })
        .unwrap_or_else(|| DEFAULT_PYTHON.to_string())
}

struct PythonSession {
    interp: Arc<Interpreter>,
    executor: Arc<CellExecutor>,
}

impl EngineConnSession for PythonSession {
    fn executor(&self, run_type: &str) -> Result<Arc<dyn Executor>, HangarError> {
        executor_for("python", PythonPlugin.run_types(), run_type, self.executor.clone())
    }

    fn healthy(&self) -> Result<(), String> {
        match self.interp.dead() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
