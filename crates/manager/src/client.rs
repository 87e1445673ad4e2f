//! The one interface the Entrance reaches the LinkisManager through.
//!
//! [`LocalManager`] is the manager in the same process (`--roles all`);
//! [`crate::ClusterManager`] is the elected manager of several control-plane
//! instances: called in process on the instance that holds the manager's
//! lease, over HTTP (`protocol::manager_api`) on the others.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hangar_protocol::HangarError;
use hangar_protocol::credential::Secret;
use tokio::sync::watch;

use crate::{AskRequest, EngineGrant, EngineState, EngineView, Manager};

#[async_trait]
pub trait ManagerClient: Send + Sync {
    /// Reuse or create an engine for the ask and lock it. The ask runs to its
    /// end even when the caller goes away; a grant nobody takes is unlocked.
    async fn ask(&self, req: AskRequest) -> Result<EngineGrant, HangarError>;
    /// Give the engine back after a job (Linkis `RequestManagerUnlock`).
    async fn unlock(&self, grant: &EngineGrant);
    /// The engine gave the grant's lock back itself when its task ended: the
    /// manager's record says so, the engine is not called.
    async fn released(&self, grant: &EngineGrant);
    /// A known engine's key (after a restart: once it rejoined).
    async fn engine_key(&self, ticket_id: &str) -> Result<Option<Secret>, HangarError>;
    /// Where one engine stands.
    async fn engine_state(&self, ticket_id: &str) -> Result<EngineState, HangarError>;
    /// Follow one engine's status (for a job running on it); its view ends
    /// completed, with the reason, when the engine ends. None: not known.
    fn watch_engine(&self, ticket_id: &str) -> Option<watch::Receiver<EngineView>>;
    /// These engines run jobs and will rejoin (after a restart or failover):
    /// no new engine is made before they have, or `within` passed.
    async fn expect_rejoins(&self, tickets: Vec<String>, within: Duration);
}

/// The manager of this process.
pub struct LocalManager(pub Arc<Manager>);

/// One ask that runs to its end even when its caller goes away; a grant
/// nobody takes any more is unlocked at once.
pub(crate) async fn ask_detached(manager: &Arc<Manager>, ask: AskRequest) -> Result<EngineGrant, HangarError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let m = manager.clone();
    tokio::spawn(async move {
        let r = m.ask(&ask).await;
        if let Err(Ok(grant)) = tx.send(r) {
            tracing::info!(ticket = %grant.ticket_id, "an engine granted after its job was killed is given back");
            m.unlock(&grant).await;
        }
    });
    rx.await.map_err(|_| HangarError::internal("the engine ask ended without an answer"))?
}

#[async_trait]
impl ManagerClient for LocalManager {
    async fn ask(&self, req: AskRequest) -> Result<EngineGrant, HangarError> {
        ask_detached(&self.0, req).await
    }

    async fn unlock(&self, grant: &EngineGrant) {
        self.0.unlock(grant).await
    }

    async fn released(&self, grant: &EngineGrant) {
        self.0.released(grant)
    }

    async fn engine_key(&self, ticket_id: &str) -> Result<Option<Secret>, HangarError> {
        Ok(self.0.engine_key(ticket_id).map(Secret))
    }

    async fn engine_state(&self, ticket_id: &str) -> Result<EngineState, HangarError> {
        Ok(self.0.engine_states(&[ticket_id.to_string()]).pop().unwrap_or(EngineState::Unknown))
    }

    fn watch_engine(&self, ticket_id: &str) -> Option<watch::Receiver<EngineView>> {
        self.0.watch_engine(ticket_id)
    }

    async fn expect_rejoins(&self, tickets: Vec<String>, within: Duration) {
        self.0.expect_rejoins(tickets, within)
    }
}
