//! The Spark engine (`engineType=spark-<installed version>`): the engine
//! process owns a Python process running the Hangar driver with PySpark, and
//! that owns the Spark driver JVM (pyspark's gateway). Run types `sql` (one
//! TABLE result set per query, Spark's types, NULLs kept; IDE SQL limited as
//! Linkis does) and `py` / `pyspark` / `python` (a persistent PySpark session
//! with `spark` and `sc`, `show(df)` / `show_table(df)` for tables).
//!
//! Each statement runs in its own job group: its stages' completed over total
//! tasks are the task's progress, and a kill cancels the group. The driver
//! (memory, cores) is charged on the ECM; executors of a cluster master on
//! the queue's label ([`conf`]). Spark is found in `spark.home`, `SPARK_HOME`
//! or where `hangar spark install` puts it ([`install`]).

pub mod conf;
pub mod install;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hangar_engineconn_plugin::{
    ClusterCharge, EngineConnBuildRequest, EngineConnLaunchRequest, EngineConnPlugin, EngineConnSession,
    EngineCreationContext, EngineResourceRequest, Executor,
};
use hangar_plugin_python::{CellExecutor, Interpreter, InterpreterSpec};
use hangar_protocol::resource::parse_bytes;
use hangar_protocol::{ErrorCode, HangarError, Resource};
use serde::{Deserialize, Serialize};

pub use install::SparkInstall;

/// The Spark half of the driver program (see `spark_driver.py`).
const SPARK_PROGRAM: &str = include_str!("spark_driver.py");
const RUN_TYPES: &[&str] = &["sql", "py", "pyspark", "python"];
/// A Spark driver's start (JVM, SparkContext) may take a while on a busy host.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a killed cell may take to end once its job group is cancelled.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// Linkis's `wds.linkis.sql.default.limit` for IDE-creator SQL.
const DEFAULT_SQL_LIMIT: u64 = 5000;

/// The `[spark]` settings of a server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparkSettings {
    /// SPARK_HOME (a Spark distribution or a pyspark package folder, or a venv
    /// holding one); empty: `SPARK_HOME`, else `<data_dir>/spark/venv`.
    pub home: String,
    /// The Python that runs PySpark; empty: the venv's, else `python3`.
    pub python: String,
    /// Versions Linkis clients ask for that mean the installed Spark.
    pub version_aliases: Vec<String>,
    /// Default `spark.master`; empty: `local[<spark.driver.cores>]`.
    pub master: String,
    /// Each cluster queue's maximum, for executors (memory, cores, instances).
    pub queue_max_memory: String,
    pub queue_max_cores: u32,
    pub queue_max_instances: u32,
    /// Rows an IDE-creator SQL query returns at most (0: no limit).
    pub sql_default_limit: u64,
}

impl Default for SparkSettings {
    fn default() -> Self {
        Self {
            home: String::new(),
            python: String::new(),
            version_aliases: vec!["2.4.3".into(), "3.2.1".into(), "3.4.4".into()],
            master: String::new(),
            queue_max_memory: "16g".into(),
            queue_max_cores: 16,
            queue_max_instances: 8,
            sql_default_limit: DEFAULT_SQL_LIMIT,
        }
    }
}

/// The Spark EngineConnPlugin.
pub struct SparkPlugin {
    settings: SparkSettings,
    data_dir: PathBuf,
    /// Found once; looked for again while missing (an install needs no restart).
    found: Mutex<Option<SparkInstall>>,
}

impl Default for SparkPlugin {
    /// The plugin inside an engine process: Spark is where its ECM said (`SPARK_HOME`).
    fn default() -> Self {
        Self::new(SparkSettings::default(), PathBuf::from("."))
    }
}

impl SparkPlugin {
    pub fn new(settings: SparkSettings, data_dir: PathBuf) -> Self {
        Self { settings, data_dir, found: Mutex::new(None) }
    }

    /// The installed Spark, or how to install it.
    pub fn installed(&self) -> Result<SparkInstall, HangarError> {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = found.as_ref() {
            return Ok(f.clone());
        }
        let f = install::find(&self.settings.home, &self.settings.python, &self.data_dir)
            .map_err(|e| HangarError::new(ErrorCode::UnknownEngineType, e))?;
        *found = Some(f.clone());
        Ok(f)
    }

    /// Startup parameters with the server's default master.
    fn props(&self, props: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut p = props.clone();
        if !self.settings.master.trim().is_empty() {
            p.entry(conf::MASTER_KEY.to_string()).or_insert_with(|| self.settings.master.trim().to_string());
        }
        p
    }

    fn queue_max(&self) -> Result<Resource, HangarError> {
        let s = &self.settings;
        Ok(Resource::new(parse_bytes(&s.queue_max_memory)?, s.queue_max_cores, s.queue_max_instances))
    }
}

#[async_trait]
impl EngineConnPlugin for SparkPlugin {
    fn engine_type(&self) -> &'static str {
        "spark"
    }

    /// Found at run time: see [`EngineConnPlugin::resolve_version`].
    fn versions(&self) -> &'static [&'static str] {
        &[]
    }

    fn resolve_version(&self, asked: &str) -> Result<String, HangarError> {
        let installed = self.installed()?;
        if asked == installed.version || self.settings.version_aliases.iter().any(|a| a == asked) {
            return Ok(installed.version);
        }
        Err(HangarError::new(
            ErrorCode::UnknownEngineType,
            format!(
                "engine type 'spark' has no version '{asked}': this server runs Spark {} (spark-{}); {} are \
                 aliases of it (spark.version_aliases)",
                installed.version,
                installed.version,
                if self.settings.version_aliases.is_empty() {
                    "no versions".to_string()
                } else {
                    self.settings.version_aliases.join(", ")
                }
            ),
        ))
    }

    fn default_version(&self) -> String {
        self.installed().map(|i| i.version).unwrap_or_else(|_| install::DEFAULT_PYSPARK_VERSION.to_string())
    }

    fn run_types(&self) -> &'static [&'static str] {
        RUN_TYPES
    }

    fn create_engine_resource(&self, req: &EngineResourceRequest<'_>) -> Result<Resource, HangarError> {
        conf::driver_resource(&self.props(req.properties))
    }

    fn cluster_resource(&self, req: &EngineResourceRequest<'_>) -> Result<Option<ClusterCharge>, HangarError> {
        conf::executors(&self.props(req.properties), self.queue_max()?)
    }

    fn build_launch(&self, req: &EngineConnBuildRequest) -> Result<EngineConnLaunchRequest, HangarError> {
        let spark = self.installed().map_err(|e| HangarError::new(ErrorCode::EngineStartFailed, e.message))?;
        let mut launch = hangar_engineconn_plugin::same_binary_launch(req)?;
        launch.environment.insert("SPARK_HOME".into(), spark.home.display().to_string());
        if let Some(java_home) = std::env::var_os("JAVA_HOME").filter(|j| !j.is_empty()) {
            launch.environment.insert("JAVA_HOME".into(), java_home.to_string_lossy().into_owned());
        }
        let mut server_conf = vec![
            (conf::PYTHON_KEY, spark.python.display().to_string()),
            (conf::SQL_LIMIT_KEY, self.settings.sql_default_limit.to_string()),
        ];
        if !self.settings.master.trim().is_empty() {
            server_conf.push((conf::MASTER_KEY, self.settings.master.trim().to_string()));
        }
        for (k, v) in server_conf {
            launch.command.extend(["--conf".to_string(), format!("{k}={v}")]);
        }
        Ok(launch)
    }

    async fn create_engine_conn(&self, ctx: &EngineCreationContext) -> Result<Arc<dyn EngineConnSession>, HangarError> {
        let start_err = |m: String| HangarError::new(ErrorCode::EngineStartFailed, m);
        let home = std::env::var("SPARK_HOME")
            .map_err(|_| start_err(format!("SPARK_HOME is not set: {}", install::install_hint())))?;
        let python = ctx.options.get(conf::PYTHON_KEY).cloned().unwrap_or_else(|| "python3".into());
        let host =
            ctx.options.get(hangar_protocol::rpc::ENGINE_BIND_HOST_CONF).cloned().unwrap_or_else(|| "127.0.0.1".into());
        let creator = ctx.labels.user_creator().map(|uc| uc.creator).unwrap_or_default();
        let app_name = format!(
            "{}_{creator}",
            ctx.options.get("spark.app.name").map_or("Linkis-EngineConn-Spark", String::as_str)
        );
        let mut options = ctx.options.clone();
        options.remove("spark.app.name");
        let launch = conf::driver_launch(&options, &ctx.work_dir, &host, &app_name)?;
        let tmp = ctx.work_dir.join("tmp");
        if let Err(e) = std::fs::create_dir_all(&tmp) {
            return Err(start_err(format!("cannot create {}: {e}", tmp.display())));
        }

        // A Spark distribution (not a pip package) keeps pyspark in python/.
        let mut paths = Vec::new();
        let dist_python = PathBuf::from(&home).join("python");
        if dist_python.join("pyspark").is_dir() {
            paths.push(dist_python.display().to_string());
            if let Ok(entries) = std::fs::read_dir(dist_python.join("lib")) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("py4j") {
                        paths.push(e.path().display().to_string());
                    }
                }
            }
        }
        let env: BTreeMap<String, String> = [
            ("SPARK_HOME", home.clone()),
            ("SPARK_LOCAL_IP", host.clone()),
            // The launcher JVM too: no hsperfdata, temp files in the work dir.
            ("SPARK_LAUNCHER_OPTS", format!("-XX:-UsePerfData -Djava.io.tmpdir={}", tmp.display())),
            ("TMPDIR", tmp.display().to_string()),
            ("PYSPARK_PYTHON", python.clone()),
            ("PYSPARK_DRIVER_PYTHON", python.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut info = BTreeMap::new();
        info.insert("spark.home".to_string(), home.clone());
        let setup = serde_json::json!({ "setup": { "submit": launch.submit, "conf": launch.conf, "info": info } });
        let interp = Interpreter::start(InterpreterSpec {
            name: "Spark driver",
            python,
            paths: paths.join(":"),
            cwd: ctx.work_dir.clone(),
            env,
            program: format!("{SPARK_PROGRAM}\n_main(_spark_setup)"),
            start_timeout: START_TIMEOUT,
            interrupt_grace: INTERRUPT_GRACE,
            interrupt_note: "its Spark job group is cancelled; KeyboardInterrupt if it goes on",
            setup_line: Some(setup.to_string()),
        })
        .await?;
        let interp = Arc::new(interp);

        let limit = if creator == "IDE" {
            ctx.options.get(conf::SQL_LIMIT_KEY).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(DEFAULT_SQL_LIMIT)
        } else {
            0
        };
        let mut sql_extra = serde_json::Map::new();
        sql_extra.insert("limit".into(), serde_json::Value::from(limit));
        Ok(Arc::new(SparkSession {
            sql: Arc::new(CellExecutor::new(interp.clone(), "sql", true, sql_extra)),
            py: Arc::new(CellExecutor::new(interp.clone(), "python", false, serde_json::Map::new())),
            interp,
        }))
    }
}

struct SparkSession {
    interp: Arc<Interpreter>,
    sql: Arc<CellExecutor>,
    py: Arc<CellExecutor>,
}

impl EngineConnSession for SparkSession {
    fn executor(&self, run_type: &str) -> Result<Arc<dyn Executor>, HangarError> {
        match run_type {
            "sql" => Ok(self.sql.clone()),
            "py" | "pyspark" | "python" => Ok(self.py.clone()),
            other => Err(HangarError::invalid(format!(
                "the spark engine runs codeType {}, not '{other}' (scala needs a Scala REPL this engine does not ship)",
                RUN_TYPES.join(", ")
            ))),
        }
    }

    fn healthy(&self) -> Result<(), String> {
        match self.interp.dead() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn info(&self) -> BTreeMap<String, String> {
        self.interp.info()
    }
}
