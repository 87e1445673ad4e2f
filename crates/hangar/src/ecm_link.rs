//! An ECM alone on its host and its link to the manager on another: it
//! registers (with the engines alive then), heartbeats, reports exits, and
//! stops the engines the manager wrote off while the host was unreachable.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use hangar_ecm::{Ecm, EcmEvent};
use hangar_protocol::endpoints::{Attempt, Endpoints, retry_elsewhere};
use hangar_protocol::rpc::{EcmToManager, MANAGER_ECM_RPC_PATH, ManagerReply, RPC_TOKEN_HEADER, RPC_VERSION};
use hangar_protocol::{LabelSet, Resource};
use tokio::sync::mpsc;

/// What an ECM registers as.
pub(crate) struct EcmIdentity {
    pub instance: String,
    pub labels: LabelSet,
    pub max: Resource,
}

/// The control-plane URLs an ECM reports to (`server.manager_url`, `--manager`):
/// base URLs joined by commas, each checked here, before the server starts.
pub(crate) fn manager_urls(list: &str) -> anyhow::Result<Endpoints> {
    if list.trim().is_empty() {
        bail!("server.manager_url (--manager) is required with --roles ecm");
    }
    Endpoints::parse(list).map_err(|e| anyhow::anyhow!("bad server.manager_url (--manager): {}", e.message))
}

/// An ECM's link to a remote manager: register, heartbeat, report exits.
/// Every message goes to the control-plane instance that answered last; one
/// that cannot be reached, times out or answers 5xx (it has no leader to
/// forward to) hands over to the next at once. A 4xx answer is final.
#[derive(Clone)]
pub(crate) struct ManagerLink {
    http: reqwest::Client,
    manager: Endpoints,
    token: String,
}

impl ManagerLink {
    pub(crate) fn new(manager: Endpoints, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, manager, token })
    }

    async fn send(&self, msg: &EcmToManager) -> anyhow::Result<ManagerReply> {
        self.send_within(msg, Duration::from_secs(10)).await
    }

    /// `within`: the time each instance has to answer.
    async fn send_within(&self, msg: &EcmToManager, within: Duration) -> anyhow::Result<ManagerReply> {
        self.manager
            .try_each(|base| {
                let url = format!("{base}{MANAGER_ECM_RPC_PATH}");
                async move {
                    let sent = self
                        .http
                        .post(&url)
                        .header(RPC_TOKEN_HEADER, &self.token)
                        .json(msg)
                        .timeout(within)
                        .send()
                        .await;
                    let r = match sent {
                        Ok(r) => r,
                        Err(e) => return Attempt::Next(anyhow::Error::new(e).context(format!("cannot reach {url}"))),
                    };
                    let status = r.status();
                    if !status.is_success() {
                        let e = anyhow::anyhow!("{url} answered {status}: {}", r.text().await.unwrap_or_default());
                        return if retry_elsewhere(status.as_u16()) { Attempt::Next(e) } else { Attempt::Final(e) };
                    }
                    match r.json().await {
                        Ok(reply) => Attempt::Done(reply),
                        Err(e) => Attempt::Final(anyhow::Error::new(e).context(format!("bad reply from {url}"))),
                    }
                }
            })
            .await
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::StatusCode;

    use super::*;

    /// A control-plane instance answering the ECM path with `status`.
    async fn instance(status: StatusCode) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().route(
            MANAGER_ECM_RPC_PATH,
            axum::routing::post(move || async move {
                h.fetch_add(1, Ordering::SeqCst);
                (status, axum::Json(ManagerReply::known(true)))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), hits)
    }

    fn heartbeat() -> EcmToManager {
        EcmToManager::Heartbeat { instance: "10.0.0.9:9102".into(), health: Default::default() }
    }

    #[test]
    fn the_list_is_checked_naming_the_bad_entry() {
        assert_eq!(manager_urls("http://10.0.0.1:9001, http://10.0.0.2:9001/").expect("ok").urls().len(), 2);
        let e = manager_urls("http://10.0.0.1:9001,10.0.0.2:9001").expect_err("no scheme");
        assert!(format!("{e}").contains("'10.0.0.2:9001'"), "{e}");
        assert!(format!("{}", manager_urls(" ").expect_err("empty")).contains("required"));
    }

    #[tokio::test]
    async fn messages_go_past_a_dead_instance_and_one_without_a_leader() {
        let dead = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            format!("http://{}", l.local_addr().expect("addr"))
        };
        let (no_leader, no_leader_hits) = instance(StatusCode::SERVICE_UNAVAILABLE).await;
        let (leader, leader_hits) = instance(StatusCode::OK).await;
        let (refusing, refusing_hits) = instance(StatusCode::UNAUTHORIZED).await;
        let link = ManagerLink::new(manager_urls(&format!("{dead},{no_leader},{leader}")).expect("urls"), "t".into())
            .expect("link");
        assert!(link.send(&heartbeat()).await.expect("reached the leader").known);
        link.send(&heartbeat()).await.expect("again");
        // The instance that answered is remembered.
        assert_eq!((no_leader_hits.load(Ordering::SeqCst), leader_hits.load(Ordering::SeqCst)), (1, 2));
        let link =
            ManagerLink::new(manager_urls(&format!("{refusing},{leader}")).expect("urls"), "t".into()).expect("link");
        let e = link.send(&heartbeat()).await.expect_err("a 401 is final");
        assert!(format!("{e:#}").contains("401"), "{e:#}");
        assert_eq!((refusing_hits.load(Ordering::SeqCst), leader_hits.load(Ordering::SeqCst)), (1, 2));
    }
}
