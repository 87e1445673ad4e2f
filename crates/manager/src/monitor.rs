//! The lifecycle monitor: engines that never became ready or stopped
//! heartbeating, ECM hosts gone silent, reservations never confirmed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hangar_protocol::NodeStatus;

use crate::{Manager, lock};

impl Manager {
    /// One pass of the lifecycle monitor: start deadlines, lost heartbeats,
    /// stale reservations.
    pub fn monitor_once(&self) {
        let now = Instant::now();
        // Hosts first: engines on a lost host end with the host named.
        self.write_off_lost_hosts(now);
        let mut doomed = Vec::new();
        for n in lock(&self.engines).values() {
            if n.status == NodeStatus::Starting && now.duration_since(n.created_at) > self.cfg.engine_start_timeout {
                doomed.push((
                    n.ticket_id.clone(),
                    format!("engine did not become ready within {} ms", self.cfg.engine_start_timeout.as_millis()),
                ));
            } else if n.status != NodeStatus::Starting
                && now.duration_since(n.last_heartbeat) > self.cfg.heartbeat_timeout()
            {
                doomed.push((
                    n.ticket_id.clone(),
                    format!(
                        "engine {} lost: no heartbeat for {} ms",
                        n.instance.as_deref().unwrap_or(&n.ticket_id),
                        now.duration_since(n.last_heartbeat).as_millis()
                    ),
                ));
            }
        }
        for (ticket, reason) in doomed {
            self.stats.engines_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%ticket, %reason, "stopping engine");
            self.finish(&ticket, NodeStatus::Failed, reason, true);
        }
        for ticket in self.rm.expired(self.cfg.reservation_timeout) {
            if !lock(&self.engines).contains_key(&ticket) && self.rm.release(&ticket) {
                tracing::warn!(%ticket, "released a reservation that was never confirmed");
            }
        }
    }

    /// ECMs silent for 3 heartbeats: the host is lost. The ECM record fails
    /// (it takes no engine until it registers again) and every engine on it
    /// is written off: its jobs end with a reason naming the host, its
    /// resources come back once. Engines there that still run are stopped by
    /// their ECM when it registers again (`ManagerReply::stop`).
    fn write_off_lost_hosts(&self, now: Instant) {
        let timeout = self.cfg.ecm_heartbeat_interval * 3;
        let previous = lock(&self.last_monitor).replace(now);
        if previous.is_some_and(|p| now.duration_since(p) > self.cfg.ecm_heartbeat_interval) {
            // This process stalled: heartbeats may be waiting to be read.
            return;
        }
        let mut lost = Vec::new();
        for e in lock(&self.ecms).iter_mut() {
            let silent = now.duration_since(e.last_heartbeat);
            if e.status == NodeStatus::Running && e.client.remote() && silent > timeout {
                e.status = NodeStatus::Failed;
                let host = e.instance.rsplit_once(':').map_or(e.instance.as_str(), |(h, _)| h);
                lost.push((
                    e.instance.clone(),
                    format!("host {host} lost: its ECM {} sent no heartbeat for {} ms", e.instance, silent.as_millis()),
                ));
            }
        }
        for (instance, reason) in lost {
            tracing::warn!(ecm = %instance, %reason, "ECM lost; writing off its engines");
            self.stats.ecms_lost.fetch_add(1, Ordering::Relaxed);
            let tickets: Vec<String> = lock(&self.engines)
                .values()
                .filter(|n| n.ecm_instance == instance)
                .map(|n| n.ticket_id.clone())
                .collect();
            for ticket in tickets {
                self.stats.engines_lost.fetch_add(1, Ordering::Relaxed);
                self.finish(&ticket, NodeStatus::Failed, reason.clone(), false);
            }
        }
    }

    /// Run the monitor until the process ends.
    pub async fn monitor(self: Arc<Self>) {
        let every = self.cfg.engine_heartbeat_interval.min(self.cfg.ecm_heartbeat_interval) / 2;
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
        loop {
            tick.tick().await;
            self.monitor_once();
        }
    }
}
