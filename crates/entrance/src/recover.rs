//! After a restart: jobs an earlier process accepted are never dropped.
//! A job that was running is re-attached to its engine (see `job.rs`); a job
//! still waiting for one is queued again from its stored record; only a job
//! whose secret parameters were not kept on disk ends Failed, saying so.

use std::path::PathBuf;
use std::sync::Arc;

use hangar_protocol::logline::Level;
use hangar_protocol::{ErrorCode, HangarError, JobStatus, LabelSet, now_ms};
use hangar_store::JobRecord;
use serde_json::Value;

use crate::job::{Prepared, append_log_line, str_map};
use crate::{Entrance, Group, lock};

impl Entrance {
    /// Jobs left unfinished by an earlier process: running ones re-attach to
    /// their engines, waiting ones are queued again. Returns `(re-attached,
    /// re-queued, ended)`. Call before serving HTTP.
    pub async fn recover(self: &Arc<Self>) -> Result<(usize, usize, usize), HangarError> {
        let mut jobs = self.store.unfinished_jobs().await?;
        // Running jobs first: they take their groups' running slots back
        // before any queued job of the same group is started again.
        jobs.sort_by_key(|j| (j.status != JobStatus::Running, j.id));
        // Their engines rejoin before any new engine is made (so a new job
        // cannot take the limits a running job's engine needs back).
        let tickets = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Running)
            .filter_map(|j| j.ticket_id.clone())
            .collect::<Vec<_>>();
        self.manager.expect_rejoins(tickets, self.cfg.reattach_timeout);
        let (mut reattached, mut requeued, mut ended) = (0, 0, 0);
        for j in jobs {
            if j.status == JobStatus::Running
                && let (Some(_), Some(_)) = (&j.engine_instance, &j.ticket_id)
            {
                self.reattach(j);
                reattached += 1;
                continue;
            }
            let (id, log_path) = (j.id, j.log_path.clone());
            match self.prepare_again(j) {
                Ok(prepared) => {
                    let msg = "the server restarted before this job reached an engine; it is queued again";
                    append_log_line(&log_path, Level::Warn, msg).await;
                    self.start(prepared);
                    requeued += 1;
                }
                Err(why) => {
                    ended += 1;
                    let reason =
                        format!("the server restarted before this job reached an engine and {why}; submit it again");
                    append_log_line(&log_path, Level::Error, &reason).await;
                    let err = Some((ErrorCode::EngineLost.number(), reason.as_str()));
                    self.store.update_status(id, JobStatus::Failed, None, err, None, now_ms()).await?;
                }
            }
        }
        Ok((reattached, requeued, ended))
    }

    /// A stored job as it was queued at submit (its code already has its
    /// variables substituted). Err: why it cannot run again.
    fn prepare_again(&self, j: JobRecord) -> Result<Prepared, String> {
        let bad = |what: &str| format!("its stored {what} cannot be read");
        let labels: LabelSet = serde_json::from_str(&j.labels).map_err(|_| bad("labels"))?;
        let params: Value = serde_json::from_str(&j.params).map_err(|_| bad("parameters"))?;
        let conf = params.get("configuration");
        let startup = str_map(conf.and_then(|c| c.get("startup")), "startup").map_err(|_| bad("parameters"))?;
        let runtime = str_map(conf.and_then(|c| c.get("runtime")), "runtime").map_err(|_| bad("parameters"))?;
        // Secrets are masked in the store: such a job cannot run as it was asked.
        let masked = |v: &String| v.contains("***");
        if startup.values().chain(runtime.values()).any(masked) {
            return Err("its secret parameters are not kept on disk".into());
        }
        let uc = labels.user_creator().map_err(|e| e.message)?;
        let et = labels.engine_type().map_err(|e| e.message)?;
        let group = format!("{}_{}_{}", uc.creator, uc.user, et.engine);
        {
            let mut groups = lock(&self.groups);
            let g = groups.entry(group.clone()).or_insert_with(|| Group {
                slots: Arc::new(tokio::sync::Semaphore::new(self.cfg.max_running_per_group.max(1))),
                queued: 0,
            });
            g.queued += 1;
        }
        Ok(Prepared {
            feed: tokio::sync::broadcast::channel(1024).0,
            task_id: j.id,
            exec_id: j.exec_id,
            user: j.execute_user,
            labels,
            run_type: j.run_type,
            code: j.code,
            startup,
            runtime,
            log_path: PathBuf::from(j.log_path),
            result_dir: PathBuf::from(j.result_location.trim_start_matches("file://")),
            group,
        })
    }
}
