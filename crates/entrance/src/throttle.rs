//! Login backoff: after a few failed logins for one user name or from one
//! client address, further attempts are refused at once for a window that
//! doubles with every failure (capped), until a login succeeds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before attempts wait.
const FREE_FAILURES: u32 = 5;
/// The first window; each further failure doubles it ...
const FIRST_WINDOW: Duration = Duration::from_secs(2);
/// ... up to this.
const MAX_WINDOW: Duration = Duration::from_secs(60);
/// Entries with no failure for this long are forgotten.
const RETENTION: Duration = Duration::from_secs(15 * 60);
/// At most this many names and addresses are tracked.
const MAX_ENTRIES: usize = 10_000;

struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Failure counts by key (`user:<name>`, `addr:<ip>`), bounded in memory.
pub(crate) struct LoginThrottle {
    map: Mutex<HashMap<String, Entry>>,
    max_entries: usize,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self { map: Mutex::new(HashMap::new()), max_entries: MAX_ENTRIES }
    }
}

/// The window after `failures` failures, if attempts must wait.
fn window(failures: u32) -> Option<Duration> {
    let over = failures.checked_sub(FREE_FAILURES)?;
    Some(FIRST_WINDOW.saturating_mul(1u32.checked_shl(over).unwrap_or(u32::MAX)).min(MAX_WINDOW))
}

impl LoginThrottle {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the caller must wait before trying again, if any key is in its window.
    pub(crate) fn wait(&self, keys: &[String]) -> Option<Duration> {
        let now = Instant::now();
        let m = self.map();
        keys.iter()
            .filter_map(|k| m.get(k)?.blocked_until)
            .filter_map(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
            .max()
    }

    /// Count a failed login for every key.
    pub(crate) fn failure(&self, keys: &[String]) {
        let now = Instant::now();
        let mut m = self.map();
        if m.len() >= self.max_entries {
            m.retain(|_, e| now.duration_since(e.last) < RETENTION);
        }
        if m.len() >= self.max_entries {
            m.retain(|_, e| e.blocked_until.is_some_and(|u| u > now));
        }
        for k in keys {
            if !m.contains_key(k) && m.len() >= self.max_entries {
                tracing::warn!(key = %k, "login backoff table is full; this failure is not counted");
                continue;
            }
            let e = m.entry(k.clone()).or_insert(Entry { failures: 0, last: now, blocked_until: None });
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            e.blocked_until = window(e.failures).map(|w| now + w);
        }
    }

    /// A successful login clears its keys.
    pub(crate) fn success(&self, keys: &[String]) {
        let mut m = self.map();
        for k in keys {
            m.remove(k);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(user: &str, addr: &str) -> Vec<String> {
        vec![format!("user:{user}"), format!("addr:{addr}")]
    }

    #[test]
    fn windows_grow_and_cap() {
        assert_eq!(window(FREE_FAILURES - 1), None);
        assert_eq!(window(FREE_FAILURES), Some(FIRST_WINDOW));
        assert_eq!(window(FREE_FAILURES + 1), Some(FIRST_WINDOW * 2));
        assert_eq!(window(FREE_FAILURES + 40), Some(MAX_WINDOW));
        assert_eq!(window(u32::MAX), Some(MAX_WINDOW));
    }

    #[test]
    fn failures_block_by_user_and_by_address_until_success() {
        let t = LoginThrottle::default();
        for _ in 0..FREE_FAILURES - 1 {
            t.failure(&keys("alice", "10.0.0.1"));
        }
        assert_eq!(t.wait(&keys("alice", "10.0.0.1")), None);
        t.failure(&keys("alice", "10.0.0.1"));
        let w = t.wait(&keys("alice", "10.0.0.1")).expect("blocked");
        assert!(w > Duration::from_secs(1) && w <= FIRST_WINDOW, "{w:?}");
        // The same user from elsewhere, and anyone from that address, wait too.
        assert!(t.wait(&keys("alice", "10.0.0.2")).is_some());
        assert!(t.wait(&keys("bob", "10.0.0.1")).is_some());
        assert_eq!(t.wait(&keys("bob", "10.0.0.2")), None);
        t.success(&keys("alice", "10.0.0.1"));
        assert_eq!(t.wait(&keys("alice", "10.0.0.1")), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = LoginThrottle { max_entries: 8, ..Default::default() };
        for i in 0..100 {
            t.failure(&keys(&format!("u{i}"), &format!("a{i}")));
        }
        assert!(t.len() <= 8, "{}", t.len());
        // Blocked entries are kept over idle ones.
        for _ in 0..FREE_FAILURES {
            t.failure(&[String::from("user:u0")]);
        }
        for i in 100..200 {
            t.failure(&keys(&format!("u{i}"), &format!("a{i}")));
        }
        assert!(t.len() <= 8);
        assert!(t.wait(&[String::from("user:u0")]).is_some(), "a blocked name survives pruning");
    }
}
