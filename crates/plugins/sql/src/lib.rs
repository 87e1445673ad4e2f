//! The embedded analytical SQL engine (`engineType=datafusion-1`,
//! `codeType=sql`), light half: what the manager and the ECM need to know
//! about it. The engine itself (Apache DataFusion) lives in the separate
//! `hangar-sql-engine` crate and binary, so the `hangar` binary never links
//! DataFusion; this plugin points the ECM at that binary.
//!
//! Startup options (`params.configuration.startup`):
//! * `hangar.sql.engine_binary`: the engine binary to launch; default
//!   `hangar-sql-engine` next to the running `hangar` binary;
//! * `hangar.sql.memory`: DataFusion's memory pool limit (default `1g`);
//! * `hangar.sql.partitions`: DataFusion's target partitions (default: the cores available).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use hangar_engineconn_plugin::{
    EngineConnBuildRequest, EngineConnLaunchRequest, EngineConnPlugin, EngineConnSession, EngineCreationContext,
    EngineResourceRequest, resource_from,
};
use hangar_protocol::{ErrorCode, HangarError, Resource};

/// The engine type (Linkis uses `sql` as a code type, so the engine is named after DataFusion).
pub const ENGINE_TYPE: &str = "datafusion";
/// Run types its executor accepts.
pub const RUN_TYPES: &[&str] = &["sql"];
/// The engine binary's file name.
pub const ENGINE_BINARY: &str = "hangar-sql-engine";
/// Startup option: the path of the engine binary to launch.
pub const ENGINE_BINARY_KEY: &str = "hangar.sql.engine_binary";
/// Startup option: DataFusion's memory pool limit (`512m`, `2g`, ...).
pub const MEMORY_KEY: &str = "hangar.sql.memory";
/// Default of [`MEMORY_KEY`].
pub const DEFAULT_MEMORY: &str = "1g";
/// Startup option: DataFusion's target partitions (parallelism of a query).
pub const PARTITIONS_KEY: &str = "hangar.sql.partitions";

/// The DataFusion EngineConnPlugin as the `hangar` binary knows it: resource
/// and launch only; sessions are created by `hangar-sql-engine`.
pub struct SqlPlugin;

impl SqlPlugin {
    /// The engine binary for these startup properties: the override, or
    /// `hangar-sql-engine` next to the current executable.
    pub fn engine_binary(properties: &BTreeMap<String, String>) -> Result<PathBuf, HangarError> {
        if let Some(p) = properties.get(ENGINE_BINARY_KEY).map(|p| p.trim()).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe()
            .map_err(|e| HangarError::internal(format!("cannot find the running binary: {e}")))?;
        let dir = exe.parent().unwrap_or_else(|| Path::new("."));
        Ok(dir.join(ENGINE_BINARY))
    }
}

#[async_trait]
impl EngineConnPlugin for SqlPlugin {
    fn engine_type(&self) -> &'static str {
        ENGINE_TYPE
    }

    fn versions(&self) -> &'static [&'static str] {
        &["1"]
    }

    fn run_types(&self) -> &'static [&'static str] {
        RUN_TYPES
    }

    fn create_engine_resource(&self, req: &EngineResourceRequest<'_>) -> Result<Resource, HangarError> {
        resource_from(req.properties, DEFAULT_MEMORY, 1)
    }

    fn build_launch(&self, req: &EngineConnBuildRequest) -> Result<EngineConnLaunchRequest, HangarError> {
        let bin = Self::engine_binary(&req.properties)?;
        if !bin.is_file() {
            let how = if req.properties.contains_key(ENGINE_BINARY_KEY) {
                format!("check the startup option {ENGINE_BINARY_KEY}")
            } else {
                format!(
                    "build it next to the hangar binary with `cargo build -p {ENGINE_BINARY}` \
                     (or `cargo build --release -p {ENGINE_BINARY}` for a release build), \
                     or set the startup option {ENGINE_BINARY_KEY}"
                )
            };
            return Err(HangarError::new(
                ErrorCode::EngineStartFailed,
                format!("the {ENGINE_TYPE} engine binary {} does not exist: {how}", bin.display()),
            ));
        }
        Ok(EngineConnLaunchRequest {
            command: vec![bin.display().to_string(), "engineconn".into()],
            environment: BTreeMap::new(),
            necessary_environment: Vec::new(),
        })
    }

    async fn create_engine_conn(
        &self,
        _ctx: &EngineCreationContext,
    ) -> Result<Arc<dyn EngineConnSession>, HangarError> {
        Err(HangarError::new(
            ErrorCode::EngineStartFailed,
            format!(
                "a {ENGINE_TYPE} engine session runs inside the {ENGINE_BINARY} binary, not inside `hangar engineconn`"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_protocol::LabelSet;

    fn request(props: &[(&str, &str)]) -> EngineConnBuildRequest {
        let mut labels = LabelSet::default();
        labels.insert(hangar_protocol::label::ENGINE_TYPE, "datafusion-1".to_string()).expect("label");
        EngineConnBuildRequest {
            ticket_id: "t".into(),
            user: "alice".into(),
            labels,
            resource: Resource::new(1, 1, 1),
            properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            materials: Vec::new(),
            engine_key: Default::default(),
            cluster: None,
        }
    }

    #[test]
    fn names_and_resource() {
        assert_eq!(SqlPlugin.default_labels().engine_type().expect("et").to_string(), "datafusion-1");
        assert_eq!(SqlPlugin.run_types(), &["sql"]);
        let props = BTreeMap::new();
        let labels = LabelSet::default();
        let r = SqlPlugin
            .create_engine_resource(&EngineResourceRequest { user: "alice", labels: &labels, properties: &props })
            .expect("resource");
        assert_eq!(r, Resource::new(1 << 30, 1, 1));
    }

    #[test]
    fn launch_needs_the_engine_binary() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("nope");
        let err = SqlPlugin
            .build_launch(&request(&[(ENGINE_BINARY_KEY, &missing.display().to_string())]))
            .expect_err("missing binary");
        assert_eq!(err.code, ErrorCode::EngineStartFailed);
        assert!(err.message.contains("does not exist"), "{}", err.message);

        let bin = dir.path().join(ENGINE_BINARY);
        std::fs::write(&bin, "").expect("bin");
        let launch = SqlPlugin.build_launch(&request(&[(ENGINE_BINARY_KEY, &bin.display().to_string())])).expect("ok");
        assert_eq!(launch.command, vec![bin.display().to_string(), "engineconn".to_string()]);

        // By default, next to the running binary (here the test binary, where no engine is built).
        let default = SqlPlugin::engine_binary(&BTreeMap::new()).expect("path");
        assert_eq!(default.file_name().and_then(|n| n.to_str()), Some(ENGINE_BINARY));
        if !default.exists() {
            let err = SqlPlugin.build_launch(&request(&[])).expect_err("not built here");
            assert!(err.message.contains("cargo build -p hangar-sql-engine"), "{}", err.message);
        }
    }
}
