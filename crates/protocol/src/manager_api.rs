//! The Entrance → LinkisManager interface as it crosses processes: an
//! Entrance on a control-plane instance that is not the elected manager asks
//! the one that is (`POST MANAGER_API_PATH`, with the control plane's peer
//! token). In one process the same calls are plain method calls.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::credential::Secret;
use crate::rpc::OsAccount;
use crate::{ErrorCode, LabelSet, NodeStatus};

/// Where the elected manager takes the Entrance's calls.
pub const MANAGER_API_PATH: &str = "/rpc/manager/api";
/// The header a forwarded call carries (the instance that forwarded it), so
/// a call is forwarded at most once.
pub const FORWARDED_HEADER: &str = "x-hangar-forwarded-by";
/// What the peer token (instance to instance) is derived for.
pub const PEER_TOKEN_PURPOSE: &str = "control-plane-peer";

/// An ask (Linkis `EngineAskRequest`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AskRequest {
    pub user: String,
    pub labels: LabelSet,
    /// Startup parameters.
    pub properties: BTreeMap<String, String>,
    pub timeout: Duration,
}

/// An engine locked for one caller (Linkis `EngineCreateSuccess` + lock).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineGrant {
    pub ticket_id: String,
    /// The engine's own key, for the caller's requests to it.
    pub key: Secret,
    /// The OS account the engine runs as (its task's result folder is handed to it).
    pub account: Option<OsAccount>,
    pub instance: String,
    pub ecm_instance: String,
    pub lock: String,
    pub reused: bool,
    pub log_dir: String,
}

/// Where an engine stands, as the manager knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state")]
pub enum EngineState {
    Live {
        status: NodeStatus,
    },
    /// The manager ended it (its resources are released), for this reason.
    Ended {
        reason: String,
    },
    /// Not known: after a manager restart or failover, until it rejoins.
    Unknown,
}

/// One call of the Entrance on the manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call")]
pub enum ManagerCall {
    Ask(AskRequest),
    Unlock(EngineGrant),
    /// The engine gave the grant's lock back itself: only the record changes.
    Released(EngineGrant),
    Engines {
        tickets: Vec<String>,
    },
    EngineKey {
        ticket_id: String,
    },
    ExpectRejoins {
        tickets: Vec<String>,
        within_ms: u64,
    },
}

/// The manager's answer to a [`ManagerCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer")]
pub enum ManagerAnswer {
    Grant(EngineGrant),
    Done,
    Engines { states: Vec<EngineState> },
    Key { key: Option<Secret> },
    Error { code: ErrorCode, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_answers_round_trip() {
        let ask = AskRequest {
            user: "alice".into(),
            labels: LabelSet::from_pairs(["engineType=shell-1", "userCreator=alice-IDE"]).expect("labels"),
            properties: BTreeMap::from([("k".into(), "v".into())]),
            timeout: Duration::from_millis(1500),
        };
        let text = serde_json::to_string(&ManagerCall::Ask(ask.clone())).expect("json");
        match serde_json::from_str::<ManagerCall>(&text).expect("parse") {
            ManagerCall::Ask(a) => assert_eq!(a, ask),
            other => panic!("{other:?}"),
        }
        let states = vec![
            EngineState::Live { status: NodeStatus::Busy },
            EngineState::Ended { reason: "idle".into() },
            EngineState::Unknown,
        ];
        let text = serde_json::to_string(&ManagerAnswer::Engines { states: states.clone() }).expect("json");
        match serde_json::from_str::<ManagerAnswer>(&text).expect("parse") {
            ManagerAnswer::Engines { states: s } => assert_eq!(s, states),
            other => panic!("{other:?}"),
        }
    }
}
