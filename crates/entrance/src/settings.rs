//! The catalogue of parameter-configuration settings (Linkis's
//! `linkis_ps_configuration_config_key` rows, as code): key, name,
//! description, default, validation and where it shows in the console.
//! Only keys Hangar applies are here (docs/configuration.md lists them); a
//! save of any other key is refused.
//!
//! The validation is Linkis's `validateType` / `validateRange` as the
//! console sees them (`None`, `NumInterval [a,b]`, `Regex`, `OFT ["a","b"]`);
//! the check behind each is exact (a size or duration is parsed and its range
//! compared), so an error names the key and the allowed range in words.

use hangar_protocol::HangarError;
use hangar_protocol::resource::{format_bytes, parse_bytes};

/// `wds.linkis.rm.instance`: a consumer group's running maximum.
pub(crate) const RM_INSTANCE: &str = "wds.linkis.rm.instance";
/// The engine's idle time before it exits (Linkis's name).
pub(crate) const MAX_FREE_TIME: &str = "wds.linkis.engineconn.max.free.time";
/// What the engine reads: the idle time in milliseconds.
pub(crate) const MAX_FREE_TIME_MS: &str = "hangar.engineconn.max_free_time_ms";
/// The engine type of the global settings (every engine).
pub(crate) const ALL: &str = "*";

const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;

/// How a value is checked.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Check {
    /// Any text.
    None,
    /// A whole number in `[min, max]`.
    Int(i64, i64),
    /// A size in `[min, max]` bytes (`512m`, `2g`; a bare number is GB when `bare_gb`).
    Memory { min: u64, max: u64, bare_gb: bool },
    /// A duration (`30s`, `5m`, `1h`) in `[min, max]` seconds.
    Duration(u64, u64),
    /// One of these (Linkis's OFT; no setting Hangar applies needs it yet).
    #[allow(dead_code)]
    OneOf(&'static [&'static str]),
    /// `k=v;k=v`, no key twice.
    Pairs,
}

/// One setting of the catalogue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    pub key: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    /// Shown as `defaultValue` when nothing is configured; empty means the
    /// server's own setting applies (named in the description).
    pub default: &'static str,
    pub check: Check,
    pub unit: &'static str,
    /// `*` (global settings) or an engine type without version (`spark`).
    pub engine: &'static str,
    pub tree: &'static str,
    pub level: i32,
    pub advanced: bool,
}

#[allow(clippy::too_many_arguments)]
const fn s(
    key: &'static str,
    name: &'static str,
    description: &'static str,
    default: &'static str,
    check: Check,
    unit: &'static str,
    engine: &'static str,
    tree: &'static str,
) -> Setting {
    Setting { key, name, description, default, check, unit, engine, tree, level: 1, advanced: false }
}

const QUEUE: &str = "Queue resources";
const RESOURCES: &str = "Engine resources";
const ENGINE: &str = "Engine settings";

const fn instance(engine: &'static str) -> Setting {
    s(
        RM_INSTANCE,
        "Running jobs per group",
        "How many jobs of one creator, user and engine type run at once (the rest wait in their queue); \
         default: the server's entrance.max_running_per_group",
        "",
        Check::Int(1, 100),
        "",
        engine,
        QUEUE,
    )
}

const fn memory(engine: &'static str, default: &'static str) -> Setting {
    s(
        hangar_engineconn_plugin::LINKIS_MEMORY_KEY,
        "Engine memory",
        "Memory accounted per engine (hangar.engineconn.memory when set wins)",
        default,
        Check::Memory { min: 64 * MB, max: 64 * GB, bare_gb: false },
        "",
        engine,
        RESOURCES,
    )
}

const fn cores(engine: &'static str) -> Setting {
    s(
        hangar_engineconn_plugin::CORES_KEY,
        "Engine cores",
        "Cores accounted per engine",
        "1",
        Check::Int(1, 64),
        "",
        engine,
        RESOURCES,
    )
}

const fn free_time(engine: &'static str) -> Setting {
    s(
        MAX_FREE_TIME,
        "Engine idle time",
        "An engine without a task this long exits (30s, 10m, 1h); default: the server's engineconn.max_free_time_ms",
        "",
        Check::Duration(1, 12 * 3600),
        "",
        engine,
        ENGINE,
    )
}

const POOL: &str = "Warm pool";

const fn pool_max(engine: &'static str) -> Setting {
    s(
        hangar_manager::POOL_MAX_KEY,
        "Pooled idle engines",
        "Most idle engines the warm pool keeps ready for one label set, ahead of demand (0: no pool); \
         default: the server's manager.pool_max_per_label_set when manager.pool_enabled, else 0",
        "",
        Check::Int(0, 64),
        "",
        engine,
        POOL,
    )
}

const fn pool_min_idle(engine: &'static str) -> Setting {
    s(
        hangar_manager::POOL_MIN_IDLE_KEY,
        "Pooled engines kept when quiet",
        "Idle engines the warm pool keeps after demand dropped, while the label set had an ask within \
         manager.pool_memory_ms (at most the pooled maximum); default: the server's manager.pool_min_idle",
        "",
        Check::Int(0, 64),
        "",
        engine,
        POOL,
    )
}

/// Every setting.
pub(crate) const CATALOGUE: &[Setting] = &[
    instance(ALL),
    s(
        "wds.linkis.rm.yarnqueue",
        "Queue",
        "The cluster queue Spark executors are charged to (cluster masters)",
        "default",
        Check::None,
        "",
        ALL,
        QUEUE,
    ),
    instance("shell"),
    memory("shell", "256m"),
    cores("shell"),
    free_time("shell"),
    pool_max("shell"),
    pool_min_idle("shell"),
    instance("python"),
    memory("python", "512m"),
    cores("python"),
    free_time("python"),
    pool_max("python"),
    pool_min_idle("python"),
    instance("jdbc"),
    memory("jdbc", "256m"),
    cores("jdbc"),
    free_time("jdbc"),
    pool_max("jdbc"),
    pool_min_idle("jdbc"),
    s("jdbc.url", "Database URL", "The PostgreSQL database jobs connect to", "", Check::None, "", "jdbc", ENGINE),
    s("jdbc.username", "Database user", "The user jobs connect as", "", Check::None, "", "jdbc", ENGINE),
    instance("datafusion"),
    memory("datafusion", "1g"),
    cores("datafusion"),
    free_time("datafusion"),
    pool_max("datafusion"),
    pool_min_idle("datafusion"),
    instance("spark"),
    s(
        "spark.executor.instances",
        "Executors",
        "Executors per engine (cluster masters)",
        "2",
        Check::Int(1, 40),
        "",
        "spark",
        RESOURCES,
    ),
    s("spark.executor.cores", "Executor cores", "Cores per executor", "1", Check::Int(1, 8), "", "spark", RESOURCES),
    s(
        "spark.executor.memory",
        "Executor memory",
        "Memory per executor",
        "1g",
        Check::Memory { min: GB, max: 28 * GB, bare_gb: true },
        "G",
        "spark",
        RESOURCES,
    ),
    s(
        "spark.driver.cores",
        "Driver cores",
        "Cores of the driver (the engine)",
        "2",
        Check::Int(1, 8),
        "",
        "spark",
        RESOURCES,
    ),
    s(
        "spark.driver.memory",
        "Driver memory",
        "Memory of the driver (the engine)",
        "1g",
        Check::Memory { min: GB, max: 15 * GB, bare_gb: true },
        "G",
        "spark",
        RESOURCES,
    ),
    free_time("spark"),
    pool_max("spark"),
    pool_min_idle("spark"),
    s(
        "spark.conf",
        "Other Spark settings",
        "More Spark settings as k=v;k=v (a setting of its own wins over the same key here)",
        "",
        Check::Pairs,
        "",
        "spark",
        ENGINE,
    ),
];

/// The engine name of an engine type (`spark-3.4.4` → `spark`; `*` stays).
pub(crate) fn engine_name(engine_type: &str) -> &str {
    engine_type.split_once('-').map_or(engine_type, |(e, _)| e)
}

/// The settings of a tree: the global ones (`*`) or one engine's.
pub(crate) fn settings_of(engine: &str) -> impl Iterator<Item = &'static Setting> + '_ {
    CATALOGUE.iter().filter(move |s| s.engine == engine)
}

/// The setting `key` in the tree of `engine`.
pub(crate) fn find(engine: &str, key: &str) -> Option<&'static Setting> {
    settings_of(engine).find(|s| s.key == key)
}

/// A duration such as `30s`, `5m`, `1h` (a bare number is seconds), in seconds.
pub(crate) fn parse_duration(v: &str) -> Option<u64> {
    let t = v.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last()? {
        's' => (&t[..t.len() - 1], 1),
        'm' => (&t[..t.len() - 1], 60),
        'h' => (&t[..t.len() - 1], 3600),
        'd' => (&t[..t.len() - 1], 86_400),
        _ => (t.as_str(), 1),
    };
    num.trim().parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
}

fn human_secs(s: u64) -> String {
    match s {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl Setting {
    /// Linkis's `validateType`.
    pub(crate) fn validate_type(&self) -> &'static str {
        match self.check {
            Check::None | Check::Pairs => "None",
            Check::Int(..) => "NumInterval",
            Check::Memory { .. } | Check::Duration(..) => "Regex",
            Check::OneOf(_) => "OFT",
        }
    }

    /// Linkis's `validateRange` for that type.
    pub(crate) fn validate_range(&self) -> String {
        match self.check {
            Check::None | Check::Pairs => String::new(),
            Check::Int(a, b) => format!("[{a},{b}]"),
            Check::Memory { bare_gb: true, .. } => r"^\d+(\.\d+)?(m|M|g|G)?$".into(),
            Check::Memory { .. } => r"^\d+(\.\d+)?(m|M|g|G)$".into(),
            Check::Duration(..) => r"^\d+(s|m|h)$".into(),
            Check::OneOf(v) => serde_json::to_string(v).unwrap_or_default(),
        }
    }

    /// The allowed values in words.
    pub(crate) fn allowed(&self) -> String {
        match self.check {
            Check::None => "any text".into(),
            Check::Pairs => "k=v pairs separated by ';', no key twice".into(),
            Check::Int(a, b) => format!("a whole number from {a} to {b}"),
            Check::Memory { min, max, .. } => format!("a size from {} to {}", format_bytes(min), format_bytes(max)),
            Check::Duration(a, b) => {
                format!("a duration from {} to {} (e.g. 30s, 10m, 1h)", human_secs(a), human_secs(b))
            }
            Check::OneOf(v) => format!("one of {}", v.join(", ")),
        }
    }

    /// Check `value`; the error names the key, the value and what is allowed.
    pub(crate) fn validate(&self, value: &str) -> Result<(), HangarError> {
        let v = value.trim();
        let ok = match self.check {
            Check::None => true,
            Check::Int(a, b) => v.parse::<i64>().is_ok_and(|n| (a..=b).contains(&n)),
            Check::Memory { min, max, bare_gb } => {
                let text = if bare_gb && !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') {
                    format!("{v}g")
                } else {
                    v.to_string()
                };
                let unit = text.to_ascii_lowercase().ends_with(['m', 'g']);
                unit && parse_bytes(&text).is_ok_and(|b| (min..=max).contains(&b))
            }
            Check::Duration(a, b) => parse_duration(v).is_some_and(|n| (a..=b).contains(&n)),
            Check::OneOf(opts) => opts.contains(&v),
            Check::Pairs => pairs_ok(v),
        };
        if ok {
            Ok(())
        } else {
            Err(HangarError::invalid(format!(
                "{} = '{value}' is not allowed: it must be {} ({} {})",
                self.key,
                self.allowed(),
                self.validate_type(),
                self.validate_range()
            )))
        }
    }
}

/// `k=v;k=v` with no key twice (Linkis refuses a repeated key in `spark.conf`).
fn pairs_ok(v: &str) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    v.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .all(|p| p.split_once('=').is_some_and(|(k, _)| !k.trim().is_empty() && seen.insert(k.trim().to_string())))
}

/// The keys of a `spark.conf` value.
pub(crate) fn pair_keys(v: &str) -> Vec<String> {
    v.split(';')
        .filter_map(|p| p.split_once('='))
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_accept_the_range_and_name_the_key_otherwise() {
        let inst = find("spark", RM_INSTANCE).expect("rm.instance");
        assert!(inst.validate("1").is_ok() && inst.validate("100").is_ok());
        let e = inst.validate("0").expect_err("below");
        assert!(e.message.contains(RM_INSTANCE) && e.message.contains("from 1 to 100"), "{}", e.message);
        assert!(inst.validate("x").is_err());
        let mem = find("spark", "spark.executor.memory").expect("memory");
        assert!(mem.validate("2g").is_ok() && mem.validate("4").is_ok() && mem.validate("1024m").is_ok());
        let e = mem.validate("29g").expect_err("above");
        assert!(e.message.contains("spark.executor.memory") && e.message.contains("28.0 GB"), "{}", e.message);
        let shell = find("shell", hangar_engineconn_plugin::LINKIS_MEMORY_KEY).expect("shell memory");
        assert!(shell.validate("300m").is_ok());
        assert!(shell.validate("300").is_err(), "a bare number is ambiguous outside Spark");
        let idle = find("shell", MAX_FREE_TIME).expect("idle");
        assert!(idle.validate("30s").is_ok() && idle.validate("12h").is_ok());
        assert!(idle.validate("13h").is_err() && idle.validate("0s").is_err() && idle.validate("soon").is_err());
        let conf = find("spark", "spark.conf").expect("spark.conf");
        assert!(conf.validate("a=1; b=2").is_ok());
        assert!(conf.validate("a=1;a=2").is_err() && conf.validate("novalue").is_err());
        let oft = Setting { check: Check::OneOf(&["python2", "python3"]), ..*conf };
        assert!(oft.validate("python3").is_ok() && oft.validate("python4").is_err());
        assert_eq!((oft.validate_type(), oft.validate_range().as_str()), ("OFT", r#"["python2","python3"]"#));
    }

    #[test]
    fn every_key_is_once_per_tree_and_defaults_pass_their_own_check() {
        for st in CATALOGUE {
            assert_eq!(settings_of(st.engine).filter(|o| o.key == st.key).count(), 1, "{} twice", st.key);
            if !st.default.is_empty() {
                st.validate(st.default).unwrap_or_else(|e| panic!("default of {}: {}", st.key, e.message));
            }
        }
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(engine_name("spark-3.4.4"), "spark");
        assert_eq!(pair_keys("a=1; b=2;"), ["a", "b"]);
    }
}
