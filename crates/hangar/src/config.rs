//! Server configuration: built-in defaults, then a TOML file, then
//! environment variables `HANGAR_<SECTION>_<KEY>` (e.g. `HANGAR_SERVER_PORT`),
//! then command-line flags. Every key is documented in `docs/configuration.md`.

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub auth: Auth,
    pub entrance: Entrance,
    pub manager: Manager,
    pub ecm: Ecm,
    pub engineconn: EngineConn,
    pub materials: Materials,
    /// The Spark engine: where Spark is, version aliases, master, queues.
    pub spark: hangar_plugin_spark::SparkSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// `all`, `entrance,manager` or `ecm`.
    pub roles: String,
    /// The control plane an `ecm`-only server registers with: base URLs
    /// joined by commas (`http://10.0.0.1:9001,http://10.0.0.2:9001`).
    pub manager_url: String,
    pub bind: String,
    /// The host other hosts reach this server at; empty: the `bind` address,
    /// or when that is `0.0.0.0`/`::` the address of the route to the manager
    /// (ECMs) or of the first non-loopback interface.
    pub advertise_host: String,
    pub port: u16,
    pub data_dir: String,
    /// Empty: `sqlite://<data_dir>/hangar.db`.
    pub store_url: String,
    /// Job logs, result sets and material blobs: what every control-plane
    /// instance on one store must see (one folder they all mount). Empty:
    /// the data dir.
    pub shared_dir: String,
    pub log_level: String,
    /// When set, `/metrics` needs `Authorization: Bearer <metrics_token>`.
    pub metrics_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The control plane's secret engine keys are derived from (never leaves
    /// the control plane); empty = random and kept in the data dir, all-in-one only.
    pub rpc_token: String,
    /// What ECMs and the manager authenticate each other with; empty =
    /// derived from `rpc_token`, all-in-one only.
    pub ecm_token: String,
    pub token: String,
    pub token_users: Vec<String>,
    pub admins: Vec<String>,
    /// `name:hash` entries; hashes from `hangar hash-password`.
    pub users: Vec<String>,
    pub session_timeout_ms: u64,
    /// Session cookies get `Secure`: set when clients reach Hangar over HTTPS.
    pub secure_cookie: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entrance {
    pub max_running_per_group: usize,
    pub max_queued_per_group: usize,
    pub ask_timeout_ms: u64,
    pub ask_retries: u32,
    pub max_code_bytes: usize,
    /// Largest result set an engine may send (`2g`, `500m`).
    pub max_result_set_size: String,
    pub default_creator: String,
    pub reattach_timeout_ms: u64,
    /// How long this instance's lease on its unfinished jobs lasts without renewal.
    pub job_lease_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manager {
    pub user_max_memory: String,
    pub user_max_cores: u32,
    pub user_max_instances: u32,
    pub engine_start_timeout_ms: u64,
    pub engine_heartbeat_interval_ms: u64,
    pub reservation_timeout_ms: u64,
    pub engine_lock_timeout_ms: u64,
    pub max_concurrent_creations: usize,
    /// Control-plane instances on one store elect one active manager: the
    /// lease it holds in the store (renewed every quarter of it).
    pub leader_lease_ms: u64,
    /// Warm pools for every label set (else only for those whose parameter
    /// configuration sets `hangar.pool.max`).
    pub pool_enabled: bool,
    pub pool_max_per_label_set: u32,
    /// Idle or starting pooled engines in all; 0 turns pools off everywhere.
    pub pool_max_total: u32,
    pub pool_min_idle: u32,
    pub pool_half_life_ms: u64,
    pub pool_memory_ms: u64,
    pub pool_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ecm {
    /// Empty: the host's memory minus `protected_memory`.
    pub memory: String,
    pub protected_memory: String,
    /// No new engines while the host's 1-minute load average per core is above this.
    pub protected_load: f64,
    pub cores: u32,
    pub instances: u32,
    pub kill_grace_ms: u64,
    pub max_concurrent_launches: usize,
    pub launch_queue_timeout_ms: u64,
    pub adopt_on_restart: bool,
    /// `auto`, `server`, `user` or `account` (see docs/configuration.md).
    pub run_as: String,
    /// Prefix of the per-user engine accounts of `run_as = "account"`.
    pub account_prefix: String,
    /// Engines never run as an account with a smaller uid (nor as root).
    pub min_uid: u32,
    /// Let a root ECM run engines as root with `run_as = "server"`.
    pub allow_root_engines: bool,
    /// Variables engines inherit from the server's environment besides PATH, locale and TZ.
    pub engine_env_passthrough: Vec<String>,
    pub heartbeat_interval_ms: u64,
    /// `key=value` labels of this ECM; asks must carry the same to land here.
    pub labels: Vec<String>,
    /// Empty: `<data_dir>/engineconn-public`.
    pub material_cache_dir: String,
    pub material_cache_max_size: String,
}

/// The material library of the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Materials {
    /// Plugin materials `<type>/dist/<version>/{conf,lib}`; empty: `<data_dir>/engineconn-plugins`.
    pub engineconn_home: String,
    pub max_upload_size: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConn {
    pub max_free_time_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub orphan_timeout_ms: u64,
    pub lock_idle_release_ms: u64,
    pub running_info_interval_ms: u64,
    pub log_push_interval_ms: u64,
    pub log_push_lines: u64,
    pub max_result_rows: u64,
    pub max_tasks: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: Server {
                roles: "all".into(),
                manager_url: String::new(),
                bind: "127.0.0.1".into(),
                advertise_host: String::new(),
                port: 9001,
                data_dir: "./hangar-data".into(),
                store_url: String::new(),
                shared_dir: String::new(),
                log_level: "info".into(),
                metrics_token: String::new(),
            },
            auth: Auth {
                rpc_token: String::new(),
                ecm_token: String::new(),
                token: hangar_cli::DEFAULT_TOKEN.into(),
                token_users: vec!["*".into()],
                admins: vec![],
                users: vec![],
                session_timeout_ms: 7_200_000,
                secure_cookie: false,
            },
            entrance: Entrance {
                max_running_per_group: 10,
                max_queued_per_group: 1000,
                ask_timeout_ms: 300_000,
                ask_retries: 3,
                max_code_bytes: 4 << 20,
                max_result_set_size: "2g".into(),
                default_creator: "IDE".into(),
                reattach_timeout_ms: 30_000,
                job_lease_ms: 30_000,
            },
            manager: Manager {
                user_max_memory: "20g".into(),
                user_max_cores: 10,
                user_max_instances: 10,
                engine_start_timeout_ms: 60_000,
                engine_heartbeat_interval_ms: 3_000,
                reservation_timeout_ms: 120_000,
                engine_lock_timeout_ms: 300_000,
                max_concurrent_creations: 2,
                leader_lease_ms: 5_000,
                pool_enabled: false,
                pool_max_per_label_set: 4,
                pool_max_total: 16,
                pool_min_idle: 0,
                pool_half_life_ms: 600_000,
                pool_memory_ms: 1_800_000,
                pool_interval_ms: 1_000,
            },
            ecm: Ecm {
                memory: String::new(),
                protected_memory: "1g".into(),
                protected_load: 4.0,
                cores: 100,
                instances: 50,
                kill_grace_ms: 5_000,
                max_concurrent_launches: 8,
                launch_queue_timeout_ms: 30_000,
                adopt_on_restart: true,
                run_as: "auto".into(),
                account_prefix: "hangar-".into(),
                min_uid: 1000,
                allow_root_engines: false,
                engine_env_passthrough: Vec::new(),
                heartbeat_interval_ms: 1_000,
                labels: vec![],
                material_cache_dir: String::new(),
                material_cache_max_size: "10g".into(),
            },
            engineconn: EngineConn {
                max_free_time_ms: 300_000,
                heartbeat_interval_ms: 3_000,
                orphan_timeout_ms: 60_000,
                lock_idle_release_ms: 180_000,
                running_info_interval_ms: 1_000,
                log_push_interval_ms: 200,
                log_push_lines: 300,
                max_result_rows: 5_000,
                max_tasks: 0,
            },
            materials: Materials { engineconn_home: String::new(), max_upload_size: "100m".into() },
            spark: hangar_plugin_spark::SparkSettings::default(),
        }
    }
}

impl Config {
    /// Defaults < file < environment.
    pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut tree = toml::Value::try_from(Config::default()).context("default configuration")?;
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
            let file_tree: toml::Value =
                toml::from_str(&text).with_context(|| format!("config file {} is not valid TOML", path.display()))?;
            merge(&mut tree, file_tree);
        }
        apply_env(&mut tree, "HANGAR", env)?;
        if let Some(t) = env("HANGAR_TOKEN")
            && let Some(auth) = tree.get_mut("auth").and_then(toml::Value::as_table_mut)
        {
            auth.insert("token".into(), toml::Value::String(t));
        }
        let cfg: Config = tree.try_into().context("invalid configuration")?;
        Ok(cfg)
    }
}

/// Names Hangar reads besides `HANGAR_<SECTION>_<KEY>`: client settings, the
/// first admin, the log filter, and what an ECM gives its engines.
const OTHER_NAMES: &[&str] = &[
    "HANGAR_TOKEN",
    "HANGAR_SERVER",
    "HANGAR_USER",
    "HANGAR_CONFIG",
    "HANGAR_LOG",
    "HANGAR_ADMIN_USER",
    "HANGAR_ADMIN_PASSWORD",
    "HANGAR_ENGINE_TICKET",
    "HANGAR_RESOURCES_DIR",
    "HANGAR_LIB_DIR",
    "HANGAR_CONF_DIR",
    "HANGAR_PYTHON_RESOLVED",
];

/// The test suite's and the benchmark's own variables.
const OTHER_PREFIXES: &[&str] =
    &["HANGAR_TEST_", "HANGAR_CHAOS_", "HANGAR_SCHEMATHESIS_", "HANGAR_BENCH_", "HANGAR_WRITE_"];

/// A `HANGAR_*` variable the server does not know stops it, naming the
/// closest known one: a typo must not be ignored silently.
pub fn check_env_names(names: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let mut known: Vec<String> = OTHER_NAMES.iter().map(|s| s.to_string()).collect();
    if let Ok(tree) = toml::Value::try_from(Config::default()) {
        leaf_env_names(&tree, "HANGAR", &mut known);
    }
    for name in names {
        if !name.starts_with("HANGAR_") || known.contains(&name) || OTHER_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let closest = known.iter().min_by_key(|k| edit_distance(k, &name)).map(String::as_str).unwrap_or("");
        bail!(
            "unknown environment variable {name} (did you mean {closest}?); every setting and its variable is in \
             docs/configuration.md"
        );
    }
    Ok(())
}

fn leaf_env_names(tree: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = tree {
        for (k, v) in t {
            let name = format!("{prefix}_{}", k.to_ascii_uppercase());
            if v.is_table() {
                leaf_env_names(v, &name, out);
            } else {
                out.push(name);
            }
        }
    }
}

/// Levenshtein distance over bytes (names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Override every leaf `a.b` from `PREFIX_A_B`, parsed as the leaf's type.
fn apply_env(tree: &mut toml::Value, prefix: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let toml::Value::Table(t) = tree else { return Ok(()) };
    for (k, v) in t.iter_mut() {
        let name = format!("{prefix}_{}", k.to_ascii_uppercase());
        if v.is_table() {
            apply_env(v, &name, env)?;
            continue;
        }
        let Some(raw) = env(&name) else { continue };
        *v = match v {
            toml::Value::Integer(_) => toml::Value::Integer(
                raw.trim().parse().with_context(|| format!("{name} must be a whole number, got '{raw}'"))?,
            ),
            toml::Value::Boolean(_) => toml::Value::Boolean(
                raw.trim().parse().with_context(|| format!("{name} must be true or false, got '{raw}'"))?,
            ),
            toml::Value::Float(_) => {
                toml::Value::Float(raw.trim().parse().with_context(|| format!("{name} must be a number, got '{raw}'"))?)
            }
            toml::Value::Array(_) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.into()))
                    .collect(),
            ),
            _ => toml::Value::String(raw),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("h.toml");
        std::fs::write(&f, "[server]\nport = 9100\nbind = \"0.0.0.0\"\n[auth]\nadmins = [\"ops\"]\n").expect("w");
        let env: HashMap<&str, &str> = [
            ("HANGAR_SERVER_PORT", "9200"),
            ("HANGAR_TOKEN", "sekret"),
            ("HANGAR_AUTH_ADMINS", "a, b"),
            ("HANGAR_ENGINECONN_MAX_TASKS", "5"),
        ]
        .into();
        let cfg = Config::load(Some(&f), &|k| env.get(k).map(|v| v.to_string())).expect("load");
        assert_eq!(cfg.server.port, 9200);
        assert_eq!(cfg.server.bind, "0.0.0.0");
        assert_eq!(cfg.auth.token, "sekret");
        assert_eq!(cfg.auth.admins, vec!["a", "b"]);
        assert_eq!(cfg.engineconn.max_tasks, 5);
        assert_eq!(cfg.manager.user_max_instances, 10);
    }

    #[test]
    fn bad_values_are_named() {
        let env: HashMap<&str, &str> = [("HANGAR_SERVER_PORT", "nine")].into();
        let err = Config::load(None, &|k| env.get(k).map(|v| v.to_string())).expect_err("bad");
        assert!(format!("{err:#}").contains("HANGAR_SERVER_PORT"));
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("h.toml");
        std::fs::write(&f, "[server]\nprot = 1\n").expect("w");
        let err = Config::load(Some(&f), &|_| None).expect_err("unknown key");
        assert!(format!("{err:#}").contains("prot"), "{err:#}");
    }

    #[test]
    fn unknown_variables_name_the_closest_key() {
        let err = check_env_names(["HANGAR_SERVER_PROT".to_string()]).expect_err("typo");
        assert!(format!("{err}").contains("did you mean HANGAR_SERVER_PORT?"), "{err}");
        let err = check_env_names(["HANGAR_TOKN".to_string()]).expect_err("typo");
        assert!(format!("{err}").contains("HANGAR_TOKEN"), "{err}");
        let fine =
            ["HANGAR_SERVER_PORT", "HANGAR_TOKEN", "HANGAR_TEST_STORE", "PATH", "HANGAR_MANAGER_USER_MAX_INSTANCES"];
        check_env_names(fine.map(String::from)).expect("known names");
    }

    /// Every key is documented, and the example file parses.
    #[test]
    fn every_key_is_documented_and_the_example_loads() {
        let docs = include_str!("../../../docs/configuration.md");
        let tree = toml::Value::try_from(Config::default()).expect("tree");
        for (section, table) in tree.as_table().expect("table") {
            for key in table.as_table().expect("section").keys() {
                assert!(docs.contains(&format!("`{section}.{key}`")), "docs/configuration.md lacks {section}.{key}");
            }
        }
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../hangar.example.toml");
        Config::load(Some(Path::new(example)), &|_| None).expect("example config loads");
    }
}
