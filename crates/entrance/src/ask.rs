//! Asking the LinkisManager for an engine on a job's behalf.
//!
//! A shortage that may pass (no ECM has room now, none is reachable now)
//! makes the job wait: status `WaitForRetry`, the reason in its log, asks
//! again with backoff until an engine is granted or the ask timeout passes.
//! Other passing failures (a lock refused, an overloaded ECM) are asked again
//! `entrance.ask_retries` times. An ask that can never be served (more than
//! any ECM's maximum, an unknown engine type) fails at once.
//!
//! The manager's ask runs in a task of its own: a job killed while it waits
//! never leaves an engine half-created; one granted after the kill is given
//! back at once.

use std::time::{Duration, Instant};

use hangar_manager::{AskRequest, EngineGrant};
use hangar_protocol::logline::Level;
use hangar_protocol::{ErrorCode, HangarError, JobStatus, now_ms};
use serde_json::json;

use crate::Entrance;
use crate::joblog::JobLog;

const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Whether a failed ask may be served later just by waiting.
fn shortage(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::NotEnoughResource | ErrorCode::NoEcm)
}

impl Entrance {
    /// An engine for job `task_id`, waiting out shortages (see the module doc).
    pub(crate) async fn ask_engine(
        &self,
        task_id: i64,
        ask: &AskRequest,
        log: &mut JobLog,
        feed: &crate::feed::Feed,
    ) -> Result<EngineGrant, HangarError> {
        let deadline = Instant::now() + ask.timeout;
        let mut backoff = Duration::from_millis(100);
        let mut retries = 0;
        let mut waiting_for: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = AskRequest { timeout: left, ..ask.clone() };
            let err = match self.manager.ask(attempt).await {
                Ok(g) => {
                    if waiting_for.is_some() {
                        self.store
                            .update_status(
                                task_id,
                                &self.cfg.owner_id,
                                JobStatus::Scheduled,
                                None,
                                None,
                                None,
                                now_ms(),
                            )
                            .await?;
                        feed.send(json!({"type": "status", "status": "Scheduled"}));
                        log.line(Level::Info, "an engine can be had now").await;
                    }
                    return Ok(g);
                }
                Err(e) => e,
            };
            let wait_more = Instant::now() + backoff < deadline;
            if shortage(err.code) && wait_more {
                if waiting_for.as_deref() != Some(err.message.as_str()) {
                    if waiting_for.is_none() {
                        self.store
                            .update_status(
                                task_id,
                                &self.cfg.owner_id,
                                JobStatus::WaitForRetry,
                                None,
                                None,
                                None,
                                now_ms(),
                            )
                            .await?;
                        feed.send(json!({"type": "status", "status": "WaitForRetry"}));
                    }
                    let secs = deadline.saturating_duration_since(Instant::now()).as_secs();
                    let msg = format!(
                        "no engine can be had now, waiting and asking again (up to {secs} s more): {}",
                        err.message
                    );
                    log.line(Level::Warn, &msg).await;
                    waiting_for = Some(err.message.clone());
                }
            } else if err.code.retryable() && !shortage(err.code) && retries < self.cfg.ask_retries && wait_more {
                retries += 1;
                tracing::debug!(error = %err, "engine ask failed; retrying");
            } else if shortage(err.code) {
                return Err(HangarError::new(
                    ErrorCode::Timeout,
                    format!(
                        "no engine could be had within the ask timeout ({} ms): {}",
                        ask.timeout.as_millis(),
                        err.message
                    ),
                ));
            } else {
                return Err(err);
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
