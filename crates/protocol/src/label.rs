//! Labels: the routing and accounting keys of every ask, engine and ECM.
//!
//! Values use Linkis's string forms (`userCreator=hadoop-IDE`,
//! `engineType=spark-2.4.3`). A [`LabelSet`] is validated on construction, so
//! code that holds one never meets a malformed value.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::HangarError;

pub const USER_CREATOR: &str = "userCreator";
pub const ENGINE_TYPE: &str = "engineType";
pub const CODE_TYPE: &str = "codeType";
pub const EXECUTE_ONCE: &str = "executeOnce";
pub const TENANT: &str = "tenant";
pub const ENGINE_CONN_MODE: &str = "engineConnMode";
pub const REUSE_EXCLUSION: &str = "reuseExclusion";
pub const EM_INSTANCE: &str = "emInstance";
/// A session: jobs with the same value share one engine (Linkis `FixedEngineConnLabel`).
pub const FIXED_ENGINE_CONN: &str = "fixedEngineConn";
pub const ENGINE_INSTANCE: &str = "engineInstance";

/// Label keys whose Feature is CORE in Linkis: an engine is reusable for an
/// ask only when the CORE key sets are equal and every value matches.
const CORE_KEYS: &[&str] = &[
    USER_CREATOR,
    ENGINE_TYPE,
    EXECUTE_ONCE,
    TENANT,
    ENGINE_CONN_MODE,
    "yarnCluster",
    "envType",
    FIXED_ENGINE_CONN,
    "engingeConnRuntimeMode",
];

/// Labels the manager or ECM sets itself; a client may not send them.
const RESERVED_KEYS: &[&str] = &[EM_INSTANCE, ENGINE_INSTANCE];

const ENGINE_CONN_MODES: &[&str] = &["computation", "once", "cluster", "computation_once", "once_cluster"];

const MAX_VALUE_LEN: usize = 256;

/// `user-creator`, e.g. `alice-IDE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserCreator {
    pub user: String,
    pub creator: String,
}

impl UserCreator {
    pub fn parse(value: &str) -> Result<Self, HangarError> {
        let parts: Vec<&str> = value.split('-').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(HangarError::invalid(format!(
                "label userCreator must be <user>-<creator> with exactly one '-', got '{value}'"
            )));
        }
        for p in &parts {
            if !p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@')) {
                return Err(HangarError::invalid(format!(
                    "label userCreator '{value}' may hold only letters, digits, '_', '.' and '@' around its '-'"
                )));
            }
            // User and creator become path segments (logs, results, work dirs): no `.`, `..` or hidden names.
            if p.starts_with('.') {
                return Err(HangarError::invalid(format!(
                    "label userCreator '{value}': user and creator may not start with '.' (got '{p}')"
                )));
            }
        }
        Ok(Self { user: parts[0].to_string(), creator: parts[1].to_string() })
    }
}

impl fmt::Display for UserCreator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.user, self.creator)
    }
}

/// `type-version`, e.g. `shell-1`, `python-python3`; split on the first '-'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EngineType {
    pub engine: String,
    pub version: String,
}

impl EngineType {
    pub fn parse(value: &str) -> Result<Self, HangarError> {
        let Some((engine, version)) = value.split_once('-') else {
            return Err(HangarError::invalid(format!(
                "label engineType must be <type>-<version>, e.g. shell-1, got '{value}'"
            )));
        };
        if engine.is_empty()
            || version.is_empty()
            || !engine.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || !version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(HangarError::invalid(format!(
                "label engineType '{value}' is malformed: expected <type>-<version> of letters, digits, '.', '_'"
            )));
        }
        Ok(Self { engine: engine.to_string(), version: version.to_string() })
    }
}

impl fmt::Display for EngineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.engine, self.version)
    }
}

/// A validated set of labels, ordered by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabelSet(BTreeMap<String, String>);

impl LabelSet {
    /// Parse the `labels` object of a submit or ask, validating every known key.
    pub fn from_json(labels: &serde_json::Map<String, Value>) -> Result<Self, HangarError> {
        let mut set = LabelSet::default();
        for (key, value) in labels {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                _ => {
                    return Err(HangarError::invalid(format!("label '{key}' must be a string, got {value}")));
                }
            };
            if RESERVED_KEYS.contains(&key.as_str()) {
                return Err(HangarError::invalid(format!(
                    "label '{key}' is set by the manager and may not be sent by a client"
                )));
            }
            set.insert(key, value)?;
        }
        Ok(set)
    }

    /// Insert one label after validating it.
    pub fn insert(&mut self, key: &str, value: String) -> Result<(), HangarError> {
        validate(key, &value)?;
        self.0.insert(key.to_string(), value);
        Ok(())
    }

    /// Parse `key=value` pairs (CLI and EngineConn arguments).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, HangarError> {
        let mut set = LabelSet::default();
        for pair in pairs {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| HangarError::invalid(format!("label '{pair}' must be key=value")))?;
            set.insert(k, v.to_string())?;
        }
        Ok(set)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn user_creator(&self) -> Result<UserCreator, HangarError> {
        let v = self.get(USER_CREATOR).ok_or_else(|| {
            HangarError::invalid("label userCreator is required (e.g. \"userCreator\": \"alice-IDE\")")
        })?;
        UserCreator::parse(v)
    }

    pub fn engine_type(&self) -> Result<EngineType, HangarError> {
        let v = self
            .get(ENGINE_TYPE)
            .ok_or_else(|| HangarError::invalid("label engineType is required (e.g. \"engineType\": \"shell-1\")"))?;
        EngineType::parse(v)
    }

    /// The CORE labels: the reuse key of an engine.
    pub fn core(&self) -> BTreeMap<&str, &str> {
        self.iter().filter(|(k, _)| CORE_KEYS.contains(k)).collect()
    }

    pub fn execute_once(&self) -> bool {
        self.contains(EXECUTE_ONCE)
    }

    /// Instances named by `reuseExclusion` (`*` excludes every engine).
    pub fn reuse_excluded(&self, instance: &str) -> bool {
        match self.get(REUSE_EXCLUSION) {
            None => false,
            Some("*") => true,
            Some(list) => list.split(';').any(|i| i.trim() == instance),
        }
    }

    /// The Linkis `combined_userCreator_engineType` accounting key.
    pub fn combined_user_engine(&self) -> Result<String, HangarError> {
        Ok(format!("{},{}", self.user_creator()?, self.engine_type()?))
    }

    /// `["engineType:shell-1", ...]` as jobhistory shows labels.
    pub fn to_linkis_list(&self) -> Vec<String> {
        self.iter().map(|(k, v)| format!("{k}:{v}")).collect()
    }

    /// `key=value` pairs, the form engine arguments use.
    pub fn to_pairs(&self) -> Vec<String> {
        self.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

fn validate(key: &str, value: &str) -> Result<(), HangarError> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.')) {
        return Err(HangarError::invalid(format!("label key '{key}' is not a valid label name")));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(HangarError::invalid(format!("label '{key}' is longer than {MAX_VALUE_LEN} bytes")));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(HangarError::invalid(format!("label '{key}' holds control characters")));
    }
    match key {
        USER_CREATOR => UserCreator::parse(value).map(|_| ()),
        ENGINE_TYPE => EngineType::parse(value).map(|_| ()),
        CODE_TYPE | TENANT if value.is_empty() || value.contains(char::is_whitespace) => {
            Err(HangarError::invalid(format!("label '{key}' must be a non-empty word, got '{value}'")))
        }
        ENGINE_CONN_MODE if !ENGINE_CONN_MODES.contains(&value) => Err(HangarError::invalid(format!(
            "label engineConnMode must be one of {ENGINE_CONN_MODES:?}, got '{value}'"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(v: Value) -> Result<LabelSet, HangarError> {
        LabelSet::from_json(v.as_object().expect("object"))
    }

    #[test]
    fn parses_linkis_forms() {
        let s =
            set(json!({"engineType": "python-python3", "userCreator": "alice-IDE", "executeOnce": ""})).expect("valid");
        assert_eq!(s.engine_type().expect("et").engine, "python");
        assert_eq!(s.engine_type().expect("et").version, "python3");
        assert_eq!(s.user_creator().expect("uc").creator, "IDE");
        assert!(s.execute_once());
        assert_eq!(s.combined_user_engine().expect("c"), "alice-IDE,python-python3");
        assert_eq!(s.core().len(), 3);
    }

    #[test]
    fn rejects_bad_values_with_a_reason() {
        for (labels, needle) in [
            (json!({"userCreator": "alice"}), "exactly one '-'"),
            (json!({"userCreator": "a-b-c"}), "exactly one '-'"),
            (json!({"userCreator": "alice-"}), "exactly one '-'"),
            (json!({"userCreator": "-IDE"}), "exactly one '-'"),
            (json!({"userCreator": "alice-.."}), "may not start with '.'"),
            (json!({"userCreator": "alice-."}), "may not start with '.'"),
            (json!({"userCreator": "..-IDE"}), "may not start with '.'"),
            (json!({"userCreator": "alice-.hidden"}), "may not start with '.'"),
            (json!({"userCreator": "alice-a/b"}), "may hold only"),
            (json!({"userCreator": "al/ice-IDE"}), "may hold only"),
            (json!({"engineType": "shell"}), "<type>-<version>"),
            (json!({"engineType": "-1"}), "malformed"),
            (json!({"engineType": {"x": 1}}), "must be a string"),
            (json!({"emInstance": "x"}), "set by the manager"),
            (json!({"engineConnMode": "weird"}), "engineConnMode"),
            (json!({"bad key": "x"}), "not a valid label name"),
        ] {
            let err = set(labels.clone()).expect_err("must fail");
            assert!(err.message.contains(needle), "{labels}: {}", err.message);
        }
    }

    #[test]
    fn dotted_names_inside_are_fine() {
        let uc = UserCreator::parse("a.b-my.app").expect("valid");
        assert_eq!((uc.user.as_str(), uc.creator.as_str()), ("a.b", "my.app"));
    }

    #[test]
    fn codetype_is_not_core() {
        let s = set(json!({"engineType": "shell-1", "userCreator": "a-b", "codeType": "shell"})).expect("valid");
        assert!(!s.core().contains_key("codeType"));
    }

    #[test]
    fn reuse_exclusion() {
        let s = set(json!({"reuseExclusion": "h:1;h:2"})).expect("valid");
        assert!(s.reuse_excluded("h:2"));
        assert!(!s.reuse_excluded("h:3"));
        assert!(set(json!({"reuseExclusion": "*"})).expect("v").reuse_excluded("any"));
    }
}
