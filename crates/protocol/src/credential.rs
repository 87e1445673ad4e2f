//! Internal credentials: one key per engine, derived from the control plane's
//! secret and bound to everything the manager knows the engine by.
//!
//! The control plane holds one secret (`auth.rpc_token`) that never leaves it.
//! Each engine gets `engine_key(secret, binding)`: an HMAC-SHA256 over its
//! ticket, user, labels, ECM and resource. The key authenticates the engine's
//! messages (Ready, heartbeats, Exiting, Rejoin, task events) and the control
//! plane's requests to that engine (Lock, Execute, Kill, ...). Knowing one
//! engine's key lets nobody act for another engine, and a Rejoin that claims
//! another user, other labels or a smaller resource does not match its key.
//! An ECM has a credential of its own (`auth.ecm_token`) and never sees the
//! control-plane secret.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::label::LabelSet;
use crate::resource::Resource;
use crate::secret::constant_time_eq;

/// What an engine key is bound to.
#[derive(Debug, Clone, Copy)]
pub struct EngineBinding<'a> {
    pub ticket_id: &'a str,
    pub user: &'a str,
    pub labels: &'a LabelSet,
    pub ecm_instance: &'a str,
    pub resource: &'a Resource,
    /// A cluster queue charge, when the engine has one.
    pub cluster: Option<&'a crate::resource::ClusterCharge>,
}

fn hmac_hex(secret: &[u8], parts: &[&str]) -> String {
    // A key of any length is accepted by HMAC.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return String::new() };
    for p in parts {
        // Length-prefixed, so no two different part lists hash alike.
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p.as_bytes());
    }
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of one engine.
pub fn engine_key(secret: &[u8], b: &EngineBinding<'_>) -> String {
    let labels = b.labels.to_pairs().join("\n");
    let resource = format!("{}/{}/{}", b.resource.memory, b.resource.cores, b.resource.instances);
    match b.cluster {
        None => hmac_hex(secret, &["hangar-engine-key-v1", b.ticket_id, b.user, &labels, b.ecm_instance, &resource]),
        Some(c) => {
            let r = &c.resource;
            let cluster = format!("{}={}/{}/{}", c.label, r.memory, r.cores, r.instances);
            let parts = ["hangar-engine-key-v1", b.ticket_id, b.user, &labels, b.ecm_instance, &resource, &cluster];
            hmac_hex(secret, &parts)
        }
    }
}

/// A credential derived from the control-plane secret for one purpose
/// (the all-in-one server's ECM token, for example).
pub fn derived_token(secret: &[u8], purpose: &str) -> String {
    hmac_hex(secret, &["hangar-derived-v1", purpose])
}

/// Whether a presented credential equals the expected one (constant time; an
/// empty expected credential never matches).
pub fn matches(expected: &str, presented: Option<&str>) -> bool {
    !expected.is_empty() && presented.is_some_and(|p| constant_time_eq(expected.as_bytes(), p.as_bytes()))
}

/// A credential that never shows in `Debug` output or logs.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(<empty>)" } else { "Secret(***)" })
    }
}

/// What an ECM hands its engine on standard input (never in the
/// environment, on the command line or on disk): the engine's key and its
/// secret startup options. The engine reads it once, to the end, at start.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineSecrets {
    pub engine_key: String,
    #[serde(default)]
    pub conf: BTreeMap<String, String>,
}

impl std::fmt::Debug for EngineSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSecrets").field("conf", &self.conf.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> LabelSet {
        LabelSet::from_pairs(s.split(',')).expect("labels")
    }

    #[test]
    fn a_key_binds_every_field() {
        let l = labels("engineType=shell-1,userCreator=alice-IDE");
        let r = Resource::new(512, 1, 1);
        let b = EngineBinding {
            ticket_id: "t1",
            user: "alice",
            labels: &l,
            ecm_instance: "h:1",
            resource: &r,
            cluster: None,
        };
        let k = engine_key(b"s", &b);
        assert_eq!(k.len(), 64);
        assert_eq!(k, engine_key(b"s", &b));
        assert_ne!(k, engine_key(b"other", &b));
        assert_ne!(k, engine_key(b"s", &EngineBinding { ticket_id: "t2", ..b }));
        assert_ne!(k, engine_key(b"s", &EngineBinding { user: "bob", ..b }));
        let l2 = labels("engineType=shell-1,userCreator=bob-IDE");
        assert_ne!(k, engine_key(b"s", &EngineBinding { labels: &l2, ..b }));
        assert_ne!(k, engine_key(b"s", &EngineBinding { ecm_instance: "h:2", ..b }));
        let r0 = Resource::new(0, 0, 0);
        assert_ne!(k, engine_key(b"s", &EngineBinding { resource: &r0, ..b }));
        let c = crate::resource::ClusterCharge { label: "q".into(), max: r, resource: r };
        assert_ne!(k, engine_key(b"s", &EngineBinding { cluster: Some(&c), ..b }));
        // Field boundaries count: "ab"+"c" is not "a"+"bc".
        assert_ne!(hmac_hex(b"s", &["ab", "c"]), hmac_hex(b"s", &["a", "bc"]));
    }

    #[test]
    fn matching_is_exact() {
        assert!(matches("abc", Some("abc")));
        assert!(!matches("abc", Some("abd")));
        assert!(!matches("abc", Some("ab")));
        assert!(!matches("abc", Some("abcd")));
        assert!(!matches("abc", None));
        assert!(!matches("", Some("")));
    }

    #[test]
    fn secrets_never_print_values() {
        let mut s = EngineSecrets { engine_key: "k3y".into(), ..Default::default() };
        s.conf.insert("jdbc.password".into(), "pw".into());
        let d = format!("{s:?}");
        assert!(!d.contains("k3y") && !d.contains("\"pw\""), "{d}");
    }
}
