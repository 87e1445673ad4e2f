//! A queued job's wait for a running slot of its consumer group
//! (`creator_user_engineType`, at most its configured `wds.linkis.rm.instance`,
//! else `entrance.max_running_per_group`, running): first one of this instance's (its FIFO queue), then one of the
//! group's in the store, which every instance sharing it counts (so the
//! maximum holds across instances); the store's slot is held until the job
//! ends.
//!
//! Also the fence of an instance that lost a job's lease: such a job's
//! runner stops without a write, a kill or an unlock (the job's new owner
//! carries on).

use std::sync::atomic::Ordering;
use std::time::Duration;

use hangar_protocol::{ErrorCode, HangarError, JobStatus, now_ms};
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::job::{Prepared, label_seconds};
use crate::run::fired;
use crate::{Entrance, lock};

/// The error a runner ends with when its instance lost the job's lease.
pub(crate) const LEASE_LOST: &str = "this instance lost the job's lease: another instance runs it now";

pub(crate) fn lease_lost() -> HangarError {
    HangarError::new(ErrorCode::ShuttingDown, LEASE_LOST)
}

pub(crate) fn is_lease_lost(e: &HangarError) -> bool {
    e.code == ErrorCode::ShuttingDown && e.message == LEASE_LOST
}

/// How a wait for a slot ended.
pub(crate) enum SlotWait {
    /// Scheduled: this instance's permit (dropped when the job ends).
    Got(Option<OwnedSemaphorePermit>),
    /// The job ends without running (killed, queue timeout).
    End(JobStatus, Option<HangarError>),
}

impl Entrance {
    /// Whether this instance lost job `task_id`'s lease.
    pub(crate) fn lost(&self, task_id: i64) -> bool {
        self.handing_over.load(Ordering::SeqCst)
            || lock(&self.jobs).get(&task_id).is_some_and(|h| h.lost.load(Ordering::SeqCst))
    }

    /// The job's kill (or the shutdown) fired: a real one, or the lease was lost.
    pub(crate) fn killed(&self, task_id: i64) -> Result<(), HangarError> {
        if self.lost(task_id) { Err(lease_lost()) } else { Ok(()) }
    }

    /// Wait until the job may run (see the module doc); counted as queued
    /// until then. On `Got`, the job is Scheduled in the store.
    pub(crate) async fn wait_for_slot(
        &self,
        job: &Prepared,
        max_running: usize,
        kill: &mut watch::Receiver<bool>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SlotWait, HangarError> {
        let r = self.wait_for_slot_inner(job, max_running, kill, shutdown).await;
        self.dequeue(&job.group);
        r
    }

    async fn wait_for_slot_inner(
        &self,
        job: &Prepared,
        max_running: usize,
        kill: &mut watch::Receiver<bool>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SlotWait, HangarError> {
        let queue_timeout = label_seconds(&job.labels, "jobQueuingTimeout")?;
        let deadline = queue_timeout.map(|d| tokio::time::Instant::now() + d);
        let queue_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(queue_deadline);
        let timed_out = || {
            let secs = queue_timeout.map_or(0, |d| d.as_secs());
            SlotWait::End(
                JobStatus::Timeout,
                Some(HangarError::new(
                    ErrorCode::Timeout,
                    format!("the job waited in its queue longer than jobQueuingTimeout = {secs} s"),
                )),
            )
        };
        let cancelled = || {
            SlotWait::End(
                JobStatus::Cancelled,
                Some(HangarError::new(ErrorCode::InvalidRequest, "killed by user before it was scheduled")),
            )
        };
        let down = || HangarError::new(ErrorCode::ShuttingDown, "the server shut down before the job was scheduled");
        let slots = lock(&self.groups).get_mut(&job.group).map(|g| {
            g.resize(max_running);
            g.slots.clone()
        });
        let permit = match slots {
            Some(s) => tokio::select! {
                p = s.acquire_owned() => p.ok(),
                _ = &mut queue_deadline => return Ok(timed_out()),
                _ = fired(kill) => { self.killed(job.task_id)?; return Ok(cancelled()); }
                _ = fired(shutdown) => { self.killed(job.task_id)?; return Err(down()) }
            },
            None => None,
        };
        let max = i64::try_from(max_running.max(1)).unwrap_or(i64::MAX);
        let mut backoff = Duration::from_millis(50);
        let mut told = false;
        loop {
            if self.store.take_slot(job.task_id, &self.cfg.owner_id, &job.group, max, now_ms()).await? {
                return Ok(SlotWait::Got(permit));
            }
            if self.lost(job.task_id) {
                return Err(lease_lost());
            }
            if !told {
                told = true;
                tracing::debug!(task_id = job.task_id, group = %job.group, "the group's running slots are taken on other instances; waiting");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut queue_deadline => return Ok(timed_out()),
                _ = fired(kill) => { self.killed(job.task_id)?; return Ok(cancelled()); }
                _ = fired(shutdown) => { self.killed(job.task_id)?; return Err(down()) }
            }
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}
