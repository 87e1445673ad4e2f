//! This instance's leases on its jobs, kept alive while it runs, and the
//! jobs of instances that stopped renewing theirs, taken over.
//!
//! Every third of `entrance.job_lease_ms`: renew this instance's leases (the
//! store answers which unfinished jobs it still owns and which of them were
//! asked to be killed elsewhere); let go of jobs it no longer owns (it
//! stalled past its lease and another instance took them: their runners stop
//! without a write); kill the ones asked for; then claim the unfinished jobs
//! whose owner's lease ran out and run them here (re-attached to their
//! engines, or queued again).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hangar_protocol::now_ms;

use crate::{Entrance, lock};

impl Entrance {
    /// Keep the leases (see the module doc), for as long as the Entrance lives.
    pub(crate) async fn keep_leases(self: Arc<Self>) {
        let every = (self.cfg.job_lease / 3).max(Duration::from_millis(100));
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            tokio::time::sleep(every).await;
            let Some(e) = weak.upgrade() else { return };
            if *e.shutting_down.borrow() {
                return;
            }
            e.lease_tick().await;
        }
    }

    /// Stop taking jobs and hand every job of this instance to the others
    /// (a clean stop of one of several instances): runners stop without a
    /// write, a kill or an unlock, and the leases end now, so another
    /// instance re-attaches the running ones and queues the waiting ones.
    pub async fn hand_over(&self) {
        self.handing_over.store(true, Ordering::SeqCst);
        self.shutting_down.send_replace(true);
        for h in lock(&self.jobs).values() {
            h.lost.store(true, Ordering::SeqCst);
            h.kill.send_replace(true);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !lock(&self.jobs).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match self.store.release_leases(&self.cfg.owner_id).await {
            Ok(n) => tracing::info!(jobs = n, "handed this instance's jobs over to the other instances"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the jobs over: they are taken over when their leases end")
            }
        }
    }

    async fn lease_tick(self: &Arc<Self>) {
        let now = now_ms();
        let until = self.lease_until(now);
        match self.store.renew_leases(&self.cfg.owner_id, until).await {
            Ok(renewed) => {
                let owned: HashSet<i64> = renewed.owned.iter().copied().collect();
                let lost: Vec<i64> = {
                    let jobs = lock(&self.jobs);
                    jobs.iter()
                        .filter(|(id, h)| !owned.contains(id) && !h.lost.load(Ordering::SeqCst))
                        .map(|(id, _)| *id)
                        .collect()
                };
                for id in lost {
                    // Ended just now (its final status is stored), or taken over.
                    match self.store.get_job(id).await {
                        Ok(Some(j)) if !j.status.is_completed() && j.owner != self.cfg.owner_id => {
                            tracing::warn!(task_id = id, new_owner = %j.owner, "another instance took over this job");
                            if let Some(h) = lock(&self.jobs).get(&id) {
                                h.lost.store(true, Ordering::SeqCst);
                                h.kill.send_replace(true);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(task_id = id, error = %e, "cannot check a job's owner"),
                    }
                }
                for id in renewed.kill {
                    if self.kill(id) {
                        tracing::info!(task_id = id, "killing a job as asked on another instance");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the leases on this instance's jobs"),
        }
        match self.store.claim_expired(&self.cfg.owner_id, now, until).await {
            Ok(jobs) if !jobs.is_empty() => {
                let from: HashSet<String> = jobs.iter().map(|j| j.owner.clone()).collect();
                let cause = format!(
                    "the instance running it ({}) is gone (stopped, or silent past its lease); instance {} took it over",
                    from.into_iter().collect::<Vec<_>>().join(", "),
                    self.cfg.instance
                );
                match self.adopt(jobs, &cause).await {
                    Ok((reattached, requeued, ended)) => {
                        tracing::warn!(reattached, requeued, ended, "took over the jobs of a stopped instance")
                    }
                    Err(e) => tracing::error!(error = %e, "cannot take over a stopped instance's jobs"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim the jobs of stopped instances"),
        }
    }
}
