//! The parameter configuration a job's engine is asked with.
//!
//! A key's value for user U, creator C and engine type E (`spark-3.4.4`) is
//! the first one stored at, in order (docs/configuration.md):
//!
//! 1. `U, C, E` — the user's own value for this creator and engine;
//! 2. `*, C, E` — the creator's default for the engine;
//! 3. `U, *, E` — the user's value for the engine, any creator;
//! 4. `*, *, E` — the engine's default;
//! 5. to 8. the same four with engine `*` (the global settings);
//!
//! else nothing is sent and the engine's own default (the catalogue's
//! `defaultValue`) applies. Explicit startup parameters of the job
//! (`params.configuration.startup`) win over all of these.
//!
//! Values are read in one query per (user, creator, engine type) and cached
//! by the store's configuration generation, which every save bumps: an ask
//! costs one primary-key read while nothing changed, and a save on any
//! instance sharing the store is seen by the next ask on all of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hangar_protocol::{HangarError, LabelSet};
use hangar_store::{ConfigScope, ConfigValue, Store};

use crate::settings::{self, ALL, MAX_FREE_TIME, MAX_FREE_TIME_MS, RM_INSTANCE};
use crate::{Entrance, lock};

/// Entries kept before the cache starts over.
const MAX_ENTRIES: usize = 4096;

type Key = (String, String, String);
/// A generation and the resolved values read at it.
type Entries = (i64, HashMap<Key, Arc<BTreeMap<String, String>>>);

/// Resolved values per (user, creator, engine type), valid for one generation.
#[derive(Default)]
pub(crate) struct Cache {
    state: std::sync::Mutex<Entries>,
}

/// The levels of the module doc, most specific first.
pub(crate) fn levels<'a>(user: &'a str, creator: &'a str, engine_type: &'a str) -> [(&'a str, &'a str, &'a str); 8] {
    let [e, a] = [engine_type, ALL];
    [
        (user, creator, e),
        (ALL, creator, e),
        (user, ALL, e),
        (ALL, ALL, e),
        (user, creator, a),
        (ALL, creator, a),
        (user, ALL, a),
        (ALL, ALL, a),
    ]
}

/// The value of every catalogue key that applies, from `values` (those
/// stored at the levels of the scope), by the order of the module doc;
/// `skip` leaves out one level (the console's own row when it shows what
/// applies without it).
pub(crate) fn resolve(
    values: &[ConfigValue],
    scope: ConfigScope<'_>,
    skip: Option<(&str, &str, &str)>,
) -> BTreeMap<String, String> {
    let engine = settings::engine_name(scope.engine_type);
    let mut out = BTreeMap::new();
    for level in levels(scope.user, scope.creator, scope.engine_type) {
        if Some(level) == skip {
            continue;
        }
        let tree = if level.2 == ALL { ALL } else { engine };
        for v in values.iter().filter(|v| (v.user.as_str(), v.creator.as_str(), v.engine_type.as_str()) == level) {
            if settings::find(tree, &v.key).is_some() {
                out.entry(v.key.clone()).or_insert_with(|| v.value.clone());
            }
        }
    }
    out
}

/// What a job's ask gets from the configuration.
pub(crate) struct Applied {
    /// The startup parameters: configured values, the job's own over them.
    pub startup: BTreeMap<String, String>,
    /// The group's running maximum (`wds.linkis.rm.instance`, else the server's).
    pub max_running: usize,
}

impl Cache {
    /// The resolved values for `scope`, read again when the generation moved.
    pub(crate) async fn get(
        &self,
        store: &Store,
        scope: ConfigScope<'_>,
    ) -> Result<Arc<BTreeMap<String, String>>, HangarError> {
        let generation = store.config_generation().await?;
        let key = (scope.user.to_string(), scope.creator.to_string(), scope.engine_type.to_string());
        {
            let mut st = lock(&self.state);
            if st.0 != generation {
                *st = (generation, HashMap::new());
            }
            if let Some(v) = st.1.get(&key) {
                return Ok(v.clone());
            }
        }
        let values = store.config_values_for(scope).await?;
        let resolved = Arc::new(resolve(&values, scope, None));
        let mut st = lock(&self.state);
        if st.0 == generation {
            if st.1.len() >= MAX_ENTRIES {
                st.1.clear();
            }
            st.1.insert(key, resolved.clone());
        }
        Ok(resolved)
    }
}

impl Entrance {
    /// The engine type as configured values are keyed: its version resolved
    /// by its plugin (an alias means the version it stands for).
    pub(crate) fn canonical_engine_type(&self, engine: &str, version: &str) -> String {
        let version = self
            .plugins
            .iter()
            .find(|p| p.engine_type() == engine)
            .and_then(|p| p.resolve_version(version).ok())
            .unwrap_or_else(|| version.to_string());
        format!("{engine}-{version}")
    }

    /// The configuration applied to a job with `labels` and explicit `startup`.
    pub(crate) async fn applied(
        &self,
        labels: &LabelSet,
        startup: &BTreeMap<String, String>,
    ) -> Result<Applied, HangarError> {
        let uc = labels.user_creator()?;
        let et = labels.engine_type()?;
        let engine_type = self.canonical_engine_type(&et.engine, &et.version);
        let scope = ConfigScope { user: &uc.user, creator: &uc.creator, engine_type: &engine_type };
        let resolved = self.conf_cache.get(&self.store, scope).await?;
        Ok(apply(&resolved, startup, self.cfg.max_running_per_group))
    }
}

/// Configured values under the job's own startup parameters, and the
/// group's maximum. `wds.linkis.engineconn.max.free.time` (from either) is
/// also handed to the engine in the form it reads, unless the job gave that.
pub(crate) fn apply(
    resolved: &BTreeMap<String, String>,
    startup: &BTreeMap<String, String>,
    server_max: usize,
) -> Applied {
    let mut out: BTreeMap<String, String> = resolved.clone();
    let max_running = out.remove(RM_INSTANCE).and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(server_max);
    out.extend(startup.iter().map(|(k, v)| (k.clone(), v.clone())));
    if !startup.contains_key(MAX_FREE_TIME_MS)
        && let Some(secs) = out.get(MAX_FREE_TIME).and_then(|v| settings::parse_duration(v))
    {
        out.insert(MAX_FREE_TIME_MS.into(), secs.saturating_mul(1000).to_string());
    }
    Applied { startup: out, max_running: max_running.max(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(user: &str, creator: &str, engine_type: &str, key: &str, value: &str) -> ConfigValue {
        ConfigValue {
            user: user.into(),
            creator: creator.into(),
            engine_type: engine_type.into(),
            key: key.into(),
            value: value.into(),
            updated_ms: 0,
            updated_by: "t".into(),
        }
    }

    #[test]
    fn the_most_specific_level_wins_and_unknown_keys_are_ignored() {
        let scope = ConfigScope { user: "alice", creator: "IDE", engine_type: "spark-3.4.4" };
        let mem = "spark.executor.memory";
        let mut values = vec![
            v("*", "*", "*", RM_INSTANCE, "8"),
            v("alice", "*", "*", RM_INSTANCE, "7"),
            v("*", "*", "spark-3.4.4", mem, "2g"),
            v("alice", "*", "spark-3.4.4", mem, "3g"),
            v("*", "IDE", "spark-3.4.4", mem, "4g"),
            v("*", "*", "*", mem, "9g"),
            v("alice", "IDE", "spark-3.4.4", "not.a.setting", "x"),
        ];
        let r = resolve(&values, scope, None);
        assert_eq!(r[mem], "4g", "the creator's default beats the user's any-creator value");
        assert_eq!(r[RM_INSTANCE], "7", "global levels: the user's over everyone's");
        assert!(!r.contains_key("not.a.setting"));
        values.push(v("alice", "IDE", "spark-3.4.4", mem, "5g"));
        values.push(v("*", "*", "spark-3.4.4", RM_INSTANCE, "2"));
        let r = resolve(&values, scope, None);
        assert_eq!((r[mem].as_str(), r[RM_INSTANCE].as_str()), ("5g", "2"), "engine levels before the global ones");
        let without_own = resolve(&values, scope, Some(("alice", "IDE", "spark-3.4.4")));
        assert_eq!(without_own[mem], "4g");
    }

    #[test]
    fn explicit_startup_wins_and_the_idle_time_is_translated() {
        let resolved: BTreeMap<String, String> = [
            (RM_INSTANCE.to_string(), "1".to_string()),
            (MAX_FREE_TIME.to_string(), "2m".to_string()),
            ("spark.executor.memory".to_string(), "2g".to_string()),
        ]
        .into();
        let a = apply(&resolved, &BTreeMap::new(), 10);
        assert_eq!(a.max_running, 1);
        assert_eq!(a.startup[MAX_FREE_TIME_MS], "120000");
        assert!(!a.startup.contains_key(RM_INSTANCE));
        let startup: BTreeMap<String, String> = [
            ("spark.executor.memory".to_string(), "6g".to_string()),
            (MAX_FREE_TIME_MS.to_string(), "5000".to_string()),
        ]
        .into();
        let a = apply(&resolved, &startup, 10);
        assert_eq!((a.startup["spark.executor.memory"].as_str(), a.startup[MAX_FREE_TIME_MS].as_str()), ("6g", "5000"));
        assert_eq!(apply(&BTreeMap::new(), &BTreeMap::new(), 10).max_running, 10);
    }
}
