//! ECM restart: engines launched by an earlier ECM process are found by their
//! `engine.json` (pid + start time + ticket), checked by identity, and either
//! re-adopted (watched again, killable again) or stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{Ecm, EcmEvent, ProcessRecord, TICKET_ENV, process};

const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// `<root>/<user>/<day>/<type>/<ticket>` of a ticket, if it exists.
pub(crate) fn find_work_dir(root: &Path, ticket: &str) -> Option<PathBuf> {
    work_dirs(root).into_iter().find(|d| d.file_name().and_then(|n| n.to_str()) == Some(ticket))
}

fn subdirs(p: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default()
}

fn work_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for user in subdirs(root) {
        for day in subdirs(&user) {
            for et in subdirs(&day) {
                out.extend(subdirs(&et));
            }
        }
    }
    out
}

impl Ecm {
    /// Find engines of an earlier ECM process. Live ones are re-adopted (or
    /// stopped when `adopt_on_restart` is off); dead ones are reported ended.
    /// Returns the tickets now owned by this ECM.
    pub async fn recover(self: &Arc<Self>) -> Vec<String> {
        self.materials.clean_leftovers().await;
        let root = self.cfg.engineconn_root.clone();
        let found = tokio::task::spawn_blocking(move || {
            work_dirs(&root)
                .into_iter()
                .filter_map(|d| {
                    // The work dir is the engine account's: never follow its links.
                    let text = hangar_fsguard::read_tail(&d, Path::new("engine.json"), 64 * 1024).ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
                    let ticket = v.get("ticketId")?.as_str()?.to_string();
                    let pid = u32::try_from(v.get("pid")?.as_u64()?).ok()?;
                    let start = v.get("startTime")?.as_u64()?;
                    let alive = process::same_process(pid, start)
                        && (process::cmdline_has_ticket(pid, &ticket)
                            || process::environ_has(pid, TICKET_ENV, &ticket));
                    Some((d, ticket, pid, start, alive))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut adopted = Vec::new();
        for (dir, ticket, pid, start, alive) in found {
            if self.engines().contains_key(&ticket) {
                continue;
            }
            if !alive {
                let _ = tokio::fs::remove_file(dir.join("engine.json")).await;
                let _ = self.events.send(EcmEvent::EngineExited {
                    ticket_id: ticket,
                    description: format!(
                        "engine process {pid} ended while its ECM was down; logs: {}",
                        dir.join("logs").display()
                    ),
                });
                continue;
            }
            let (tx, rx) = watch::channel(false);
            self.engines().insert(
                ticket.clone(),
                ProcessRecord { pid, start_time: start, killing: false, work_dir: dir.clone(), exited: rx },
            );
            if !self.cfg.adopt_on_restart {
                tracing::info!(%ticket, pid, "stopping an engine left by an earlier ECM process");
                let this = self.clone();
                let t = ticket.clone();
                tokio::spawn(watch_adopted(this.clone(), t.clone(), pid, start, tx));
                let _ = this.kill(&t).await;
                continue;
            }
            tracing::info!(%ticket, pid, "re-adopted an engine left by an earlier ECM process");
            tokio::spawn(watch_adopted(self.clone(), ticket.clone(), pid, start, tx));
            adopted.push(ticket);
        }
        adopted
    }
}

/// An adopted engine is not our child: poll its identity until it is gone.
async fn watch_adopted(ecm: Arc<Ecm>, ticket: String, pid: u32, start: u64, exited: watch::Sender<bool>) {
    while process::same_process(pid, start) {
        tokio::time::sleep(ADOPTED_POLL).await;
    }
    let _ = exited.send(true);
    ecm.report_exit(&ticket, pid, "an unknown status (adopted after an ECM restart)", true).await;
}
