//! An ECM alone on its host and its link to the manager on another: it
//! registers (with the engines alive then), heartbeats, reports exits, and
//! stops the engines the manager wrote off while the host was unreachable.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use hangar_ecm::{Ecm, EcmEvent};
use hangar_protocol::rpc::{EcmToManager, MANAGER_ECM_RPC_PATH, ManagerReply, RPC_TOKEN_HEADER, RPC_VERSION};
use hangar_protocol::{LabelSet, Resource};
use tokio::sync::mpsc;

/// What an ECM registers as.
pub(crate) struct EcmIdentity {
    pub instance: String,
    pub labels: LabelSet,
    pub max: Resource,
}

/// An ECM's link to a remote manager: register, heartbeat, report exits.
#[derive(Clone)]
pub(crate) struct ManagerLink {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl ManagerLink {
    pub(crate) fn new(manager_url: String, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, url: format!("{}{MANAGER_ECM_RPC_PATH}", manager_url.trim_end_matches('/')), token })
    }

    async fn send(&self, msg: &EcmToManager) -> anyhow::Result<ManagerReply> {
        self.send_within(msg, Duration::from_secs(10)).await
    }

    async fn send_within(&self, msg: &EcmToManager, within: Duration) -> anyhow::Result<ManagerReply> {
        let r =
            self.http.post(&self.url).header(RPC_TOKEN_HEADER, &self.token).json(msg).timeout(within).send().await?;
        let status = r.status();
        if !status.is_success() {
            bail!("manager answered {status}: {}", r.text().await.unwrap_or_default());
        }
        Ok(r.json().await?)
    }

    pub(crate) async fn run(
        self,
        ecm: Arc<Ecm>,
        me: EcmIdentity,
        mut events: mpsc::UnboundedReceiver<EcmEvent>,
        every: Duration,
    ) {
        let instance = me.instance.clone();
        let mut registered = false;
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !registered {
                        // With the engines alive now: those of an earlier ECM
                        // process, and any that outlived a partition.
                        let register = EcmToManager::Register {
                            instance: me.instance.clone(),
                            labels: me.labels.clone(),
                            max: me.max,
                            rpc_version: RPC_VERSION,
                            engines: ecm.tickets(),
                        };
                        match self.send(&register).await {
                            Ok(reply) => {
                                registered = true;
                                tracing::info!("registered with the manager");
                                // Written off while this host was unreachable: nobody follows them.
                                for ticket in reply.stop {
                                    tracing::warn!(%ticket, "stopping an engine the manager wrote off");
                                    if let Err(e) = ecm.kill(&ticket).await {
                                        tracing::warn!(%ticket, error = %e, "cannot stop a written-off engine");
                                    }
                                }
                            }
                            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot register with the manager; retrying"),
                        }
                        continue;
                    }
                    let hb = EcmToManager::Heartbeat { instance: instance.clone(), health: ecm.health() };
                    // A heartbeat stuck in a partition must not hold back the next one.
                    match self.send_within(&hb, every.max(Duration::from_millis(500))).await {
                        Ok(r) if !r.known => {
                            // Forgotten or written off: register again now, not a tick later.
                            registered = false;
                            tick.reset_immediately();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "ECM heartbeat failed"),
                    }
                }
                ev = events.recv() => {
                    let Some(EcmEvent::EngineExited { ticket_id, description }) = ev else { return };
                    let msg = EcmToManager::EngineExited { instance: instance.clone(), ticket_id, description };
                    for attempt in 0..5u32 {
                        match self.send(&msg).await {
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!(error = %format!("{e:#}"), attempt, "cannot report an engine exit");
                                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                            }
                        }
                    }
                }
            }
        }
    }
}
