//! What the management console changes and records: ECM labels, health
//! and description (`modifyEMInfo`), killing an ECM's idle engines
//! (`killUnlockEngineByEM`), and the ended-engine records sent to the
//! engine history.

use hangar_protocol::label::EM_INSTANCE;
use hangar_protocol::{ErrorCode, HangarError, LabelSet, NodeStatus, Resource, now_ms};
use tokio::sync::mpsc;

use crate::nodes::EngineNode;
use crate::{Manager, lock};

/// An engine that ended, as the engine history keeps it.
#[derive(Debug, Clone)]
pub struct EndedEngine {
    pub ticket_id: String,
    /// `host:port`, if it ever came up.
    pub instance: Option<String>,
    pub user: String,
    pub labels: LabelSet,
    pub ecm_instance: String,
    pub resource: Resource,
    pub created_ms: i64,
    /// When it first reported ready.
    pub ready_ms: Option<i64>,
    pub ended_ms: i64,
    /// How many times it was taken for work.
    pub used_times: u32,
    pub status: NodeStatus,
    pub reason: String,
    pub log_dir: String,
}

/// What an admin changes on an ECM; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EcmChange {
    /// `(key, value)` pairs; `emInstance` is the ECM's own and is ignored.
    pub labels: Option<Vec<(String, String)>>,
    pub healthy: Option<bool>,
    pub description: Option<String>,
}

/// Labels an admin sets: validated, no key twice (Linkis error 210003).
fn admin_labels(pairs: &[(String, String)]) -> Result<LabelSet, HangarError> {
    let mut set = LabelSet::default();
    for (k, v) in pairs.iter().filter(|(k, _)| k != EM_INSTANCE) {
        if set.contains(k) {
            return Err(HangarError::invalid(format!("label key '{k}' is given twice (Linkis error 210003)")));
        }
        set.insert(k, v.clone())?;
    }
    Ok(set)
}

impl Manager {
    /// Send every engine that ends from now on to `tx` (the engine history).
    /// A full channel drops the record, never holds up `finish`.
    pub fn set_engine_history(&self, tx: mpsc::Sender<EndedEngine>) {
        *lock(&self.history) = Some(tx);
    }

    /// Stop sending ended engines (shutdown: the receiver then drains and ends).
    pub fn close_engine_history(&self) {
        lock(&self.history).take();
    }

    pub(crate) fn record_ended(&self, node: &EngineNode, status: NodeStatus, reason: String) {
        let Some(tx) = lock(&self.history).clone() else { return };
        let record = EndedEngine {
            ticket_id: node.ticket_id.clone(),
            instance: node.instance.clone(),
            user: node.user.clone(),
            labels: node.labels.clone(),
            ecm_instance: node.ecm_instance.clone(),
            resource: node.resource,
            created_ms: node.created_ms,
            ready_ms: node.ready_ms,
            ended_ms: now_ms(),
            used_times: node.used_times,
            status,
            reason,
            log_dir: node.log_dir.clone(),
        };
        if let Err(e) = tx.try_send(record) {
            tracing::warn!(ticket = %node.ticket_id, error = %e, "engine history: record dropped");
        }
    }

    /// An admin changes an ECM's labels, health or description. New asks
    /// select ECMs by the new labels and skip one marked UnHealthy.
    pub fn modify_ecm(&self, instance: &str, change: EcmChange) -> Result<(), HangarError> {
        let labels = change.labels.as_deref().map(admin_labels).transpose()?;
        let mut ecms = lock(&self.ecms);
        let ecm = ecms
            .iter_mut()
            .find(|e| e.instance == instance)
            .ok_or_else(|| HangarError::not_found(format!("no EngineConnManager {instance}")))?;
        if let Some(l) = labels {
            ecm.admin.labels = Some(l);
        }
        if let Some(h) = change.healthy {
            ecm.admin.unhealthy = !h;
        }
        if let Some(d) = change.description {
            ecm.admin.description = d;
        }
        tracing::info!(%instance, labels = ?ecm.labels().to_linkis_list(), unhealthy = ecm.admin.unhealthy, "ECM modified by an admin");
        Ok(())
    }

    /// End every free (Unlock or Idle, no running task) engine of one ECM;
    /// returns how many and the resource they held.
    pub fn kill_unlocked_engines(&self, ecm_instance: &str, by: &str) -> Result<(usize, Resource), HangarError> {
        if !lock(&self.ecms).iter().any(|e| e.instance == ecm_instance) {
            return Err(HangarError::new(ErrorCode::NotFound, format!("no EngineConnManager {ecm_instance}")));
        }
        let chosen: Vec<(String, Resource)> = lock(&self.engines)
            .values()
            .filter(|n| n.ecm_instance == ecm_instance && !n.reserved && n.metrics.running_tasks == 0)
            .filter(|n| matches!(n.status, NodeStatus::Unlock | NodeStatus::Idle))
            .map(|n| (n.ticket_id.clone(), n.resource))
            .collect();
        let mut total = Resource::default();
        for (ticket, r) in &chosen {
            self.finish(ticket, NodeStatus::Success, format!("idle engines of {ecm_instance} killed by {by}"), true);
            total = total + *r;
        }
        Ok((chosen.len(), total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_labels_refuse_duplicates_and_drop_em_instance() {
        let p = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let set = admin_labels(&p(&[("tenant", "teamA"), ("emInstance", "h:1")])).expect("labels");
        assert_eq!(set.to_linkis_list().len(), 1);
        assert_eq!(set.get("tenant"), Some("teamA"));
        let err = admin_labels(&p(&[("tenant", "a"), ("tenant", "b")])).expect_err("duplicate");
        assert!(err.message.contains("twice"), "{err}");
        assert!(admin_labels(&p(&[("bad key", "x")])).is_err());
    }
}
