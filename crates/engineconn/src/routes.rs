//! Where each task's events go. A task's events go to the Entrance that sent
//! it (`TaskExecuteRequest.callback_url`) until a `TaskStatus` request names
//! another (the control-plane instance that took the job over when the first
//! died); from then on they go there, those already queued or being retried
//! too, since every delivery attempt asks this table.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::watch;

/// Redirected tasks remembered; the oldest redirect is forgotten first (its
/// task ended long ago: an engine runs one task, or a few, at a time).
const MAX_ROUTES: usize = 1024;

pub(crate) struct Routes {
    table: Mutex<Table>,
    /// Bumped on every redirect: a delivery waiting to retry tries again at once.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Table {
    by_task: HashMap<i64, String>,
    order: VecDeque<i64>,
}

impl Routes {
    pub(crate) fn new() -> Self {
        Self { table: Mutex::new(Table::default()), changed: watch::Sender::new(0) }
    }

    /// From now on, `task_id`'s events go to `url`.
    pub(crate) fn redirect(&self, task_id: i64, url: &str) {
        let url = url.trim_end_matches('/').to_string();
        {
            let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if t.by_task.insert(task_id, url).is_none() {
                t.order.push_back(task_id);
                while t.order.len() > MAX_ROUTES {
                    if let Some(old) = t.order.pop_front() {
                        t.by_task.remove(&old);
                    }
                }
            }
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Where `task_id`'s events go now: its redirect, else `sent_from` (the
    /// Entrance that sent the task).
    pub(crate) fn resolve(&self, task_id: i64, sent_from: &str) -> String {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match t.by_task.get(&task_id) {
            Some(url) => url.clone(),
            None => sent_from.trim_end_matches('/').to_string(),
        }
    }

    /// Resolves when a redirect happened since the last `borrow_and_update`.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_moves_one_task_only() {
        let r = Routes::new();
        let mut rx = r.subscribe();
        rx.borrow_and_update();
        assert_eq!(r.resolve(1, "http://a:1/"), "http://a:1");
        r.redirect(1, "http://b:2/");
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(r.resolve(1, "http://a:1"), "http://b:2");
        assert_eq!(r.resolve(2, "http://a:1"), "http://a:1");
        r.redirect(1, "http://c:3");
        assert_eq!(r.resolve(1, "http://a:1"), "http://c:3");
    }

    #[test]
    fn the_table_stays_bounded() {
        let r = Routes::new();
        for t in 0..(MAX_ROUTES as i64 + 10) {
            r.redirect(t, "http://b:2");
        }
        let t = r.table.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!((t.by_task.len(), t.order.len()), (MAX_ROUTES, MAX_ROUTES));
        assert!(!t.by_task.contains_key(&0) && t.by_task.contains_key(&(MAX_ROUTES as i64 + 9)));
    }
}
