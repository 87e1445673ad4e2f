//! The ResourceManager: per-label max / used / locked accounting.
//!
//! Every engine's resource is charged to several labels at once (its ECM,
//! its `userCreator,engineType` pair, and for a Spark engine its executors'
//! share to a cluster queue's label, each label its own amount). A reservation checks and charges all of
//! them in one critical section, so no label ever goes over its max or below
//! zero, whatever the interleaving. Each ticket moves Locked -> Used ->
//! released exactly once; a release of an unknown or already released ticket
//! is a no-op.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hangar_protocol::{ErrorCode, HangarError, Resource};
use serde::Serialize;

/// Accounting of one label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LabelResource {
    pub max: Resource,
    pub used: Resource,
    pub locked: Resource,
}

impl LabelResource {
    pub fn left(&self) -> Resource {
        self.max - self.used - self.locked
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TicketState {
    Locked,
    Used,
}

#[derive(Debug, Clone)]
struct Ticket {
    /// Each label and what this ticket charges it.
    charges: Vec<(String, Resource)>,
    state: TicketState,
    since: Instant,
}

#[derive(Debug, Default)]
struct State {
    labels: HashMap<String, LabelResource>,
    tickets: HashMap<String, Ticket>,
}

#[derive(Debug, Default)]
pub struct ResourceManager {
    state: Mutex<State>,
}

impl ResourceManager {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation below checks before it writes, so a panic elsewhere
        // cannot leave a half-applied change behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget every label and ticket (the manager stepped down: another
    /// instance accounts for these engines now).
    pub fn clear(&self) {
        *self.state() = State::default();
    }

    /// Create a label or change its max (used and locked are kept).
    pub fn set_max(&self, label: &str, max: Resource) {
        self.state().labels.entry(label.to_string()).or_default().max = max;
    }

    /// Check every label and charge each its amount, or none.
    pub fn reserve(&self, ticket: &str, charges: &[(String, Resource)]) -> Result<(), HangarError> {
        let mut s = self.state();
        if s.tickets.contains_key(ticket) {
            return Err(HangarError::internal(format!("ticket {ticket} already holds a reservation")));
        }
        let mut labels: Vec<&str> = charges.iter().map(|(l, _)| l.as_str()).collect();
        labels.sort_unstable();
        if labels.windows(2).any(|w| w[0] == w[1]) {
            return Err(HangarError::internal(format!("ticket {ticket} charges a label twice")));
        }
        for (label, req) in charges {
            let req = *req;
            let Some(lr) = s.labels.get(label) else {
                return Err(HangarError::internal(format!("resource label {label} is not registered")));
            };
            let left = lr.left();
            if !left.not_less(&req) {
                return Err(HangarError::new(
                    ErrorCode::NotEnoughResource,
                    format!(
                        "not enough resource for label {label}: {} (max {}, used {}, locked {})",
                        Resource::shortfall(&left, &req).join("; "),
                        lr.max,
                        lr.used,
                        lr.locked
                    ),
                ));
            }
        }
        for (label, req) in charges {
            if let Some(lr) = s.labels.get_mut(label) {
                lr.locked = lr.locked + *req;
            }
        }
        s.tickets.insert(
            ticket.to_string(),
            Ticket { charges: charges.to_vec(), state: TicketState::Locked, since: Instant::now() },
        );
        Ok(())
    }

    /// The engine is up: its resource moves from locked to used. False when
    /// the ticket is unknown (already released) or already confirmed.
    pub fn confirm(&self, ticket: &str) -> bool {
        let mut s = self.state();
        let Some(t) = s.tickets.get_mut(ticket) else { return false };
        if t.state != TicketState::Locked {
            return false;
        }
        t.state = TicketState::Used;
        let charges = t.charges.clone();
        for (label, r) in &charges {
            if let Some(lr) = s.labels.get_mut(label) {
                lr.locked = lr.locked - *r;
                lr.used = lr.used + *r;
            }
        }
        true
    }

    /// Give a ticket's resource back. True only the first time.
    pub fn release(&self, ticket: &str) -> bool {
        let mut s = self.state();
        let Some(t) = s.tickets.remove(ticket) else { return false };
        for (label, r) in &t.charges {
            if let Some(lr) = s.labels.get_mut(label) {
                match t.state {
                    TicketState::Locked => lr.locked = lr.locked - *r,
                    TicketState::Used => lr.used = lr.used - *r,
                }
            }
        }
        true
    }

    /// Tickets locked longer than `deadline` without being confirmed.
    pub fn expired(&self, deadline: Duration) -> Vec<String> {
        self.state()
            .tickets
            .iter()
            .filter(|(_, t)| t.state == TicketState::Locked && t.since.elapsed() >= deadline)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn label(&self, label: &str) -> Option<LabelResource> {
        self.state().labels.get(label).copied()
    }

    pub fn snapshot(&self) -> Vec<(String, LabelResource)> {
        let mut v: Vec<_> = self.state().labels.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// What a ticket charges each of its labels.
    pub fn ticket_charges(&self, ticket: &str) -> Option<Vec<(String, Resource)>> {
        self.state().tickets.get(ticket).map(|t| t.charges.clone())
    }

    /// Every label's used + locked equals the sum over its live tickets and
    /// stays within max. Used by tests after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let s = self.state();
        let mut sums: HashMap<&str, (Resource, Resource)> = HashMap::new();
        for t in s.tickets.values() {
            for (l, r) in &t.charges {
                let e = sums.entry(l.as_str()).or_default();
                match t.state {
                    TicketState::Locked => e.1 = e.1 + *r,
                    TicketState::Used => e.0 = e.0 + *r,
                }
            }
        }
        for (name, lr) in &s.labels {
            let (used, locked) = sums.get(name.as_str()).copied().unwrap_or_default();
            if lr.used != used || lr.locked != locked {
                return Err(format!(
                    "label {name}: recorded used {} locked {}, tickets say {used} / {locked}",
                    lr.used, lr.locked
                ));
            }
            if !lr.max.not_less(&(lr.used + lr.locked)) {
                return Err(format!("label {name} is over its max: {lr:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn r(m: u64, c: u32, i: u32) -> Resource {
        Resource::new(m, c, i)
    }

    #[test]
    fn reserve_confirm_release_once() {
        let rm = ResourceManager::new();
        rm.set_max("ecm", r(10, 10, 2));
        rm.set_max("user", r(10, 10, 1));
        let charge = |res: Resource| vec![("ecm".to_string(), res), ("user".to_string(), res)];
        rm.reserve("t1", &charge(r(4, 1, 1))).expect("fits");
        let err = rm.reserve("t2", &charge(r(4, 1, 1))).expect_err("user has 1 instance");
        assert_eq!(err.code, ErrorCode::NotEnoughResource);
        assert!(
            err.message.contains("label user") && err.message.contains("instances: requested 1, left 0"),
            "{}",
            err.message
        );
        assert_eq!(rm.label("ecm").expect("ecm").locked, r(4, 1, 1), "failed reserve charged nothing");
        assert!(rm.confirm("t1"));
        assert!(!rm.confirm("t1"));
        assert_eq!(rm.label("user").expect("u").used, r(4, 1, 1));
        assert!(rm.release("t1"));
        assert!(!rm.release("t1"));
        assert_eq!(rm.label("user").expect("u"), LabelResource { max: r(10, 10, 1), ..Default::default() });
        rm.check_invariants().expect("ok");
    }

    #[test]
    fn a_queue_charge_is_its_own_amount_and_released_with_the_ticket() {
        let rm = ResourceManager::new();
        rm.set_max("ecm", r(10, 10, 5));
        rm.set_max("queue", r(16, 8, 4));
        let charges = |exec: Resource| vec![("ecm".to_string(), r(2, 1, 1)), ("queue".to_string(), exec)];
        rm.reserve("t1", &charges(r(12, 6, 3))).expect("fits");
        let err = rm.reserve("t2", &charges(r(8, 2, 2))).expect_err("the queue has 4 left");
        assert!(err.message.contains("label queue") && err.message.contains("memory"), "{}", err.message);
        assert_eq!(rm.label("ecm").expect("ecm").locked, r(2, 1, 1));
        assert!(rm.confirm("t1"));
        assert_eq!(rm.label("queue").expect("q").used, r(12, 6, 3));
        assert!(rm.release("t1"));
        assert!(!rm.release("t1"));
        assert!(rm.label("queue").expect("q").used.is_zero());
        assert!(rm.reserve("t3", &[("ecm".into(), r(1, 1, 1)), ("ecm".into(), r(1, 1, 1))]).is_err());
        rm.check_invariants().expect("ok");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u8, u8, u64, u32),
        Confirm(u8),
        Release(u8),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..32, 0u8..4, 1u64..6, 0u32..3).prop_map(|(t, l, m, c)| Op::Reserve(t, l, m, c)),
            (0u8..32).prop_map(Op::Confirm),
            (0u8..32).prop_map(Op::Release),
            Just(Op::Expire),
        ]
    }

    const LABELS: [&str; 5] = ["ecm-a", "ecm-b", "user-x", "user-y", "queue"];

    fn apply(rm: &ResourceManager, op: &Op) {
        match op {
            Op::Reserve(t, l, m, c) => {
                let ecm = LABELS[(*l % 2) as usize].to_string();
                let user = LABELS[2 + (*l / 2) as usize].to_string();
                let mut charges = vec![(ecm, r(*m, *c, 1)), (user, r(*m, *c, 1))];
                // Odd tickets are Spark-like: executors charged to the queue, another amount.
                if t % 2 == 1 {
                    charges.push((LABELS[4].to_string(), r(*m * 2, *c + 1, 2)));
                }
                let _ = rm.reserve(&format!("t{t}"), &charges);
            }
            Op::Confirm(t) => {
                rm.confirm(&format!("t{t}"));
            }
            Op::Release(t) => {
                rm.release(&format!("t{t}"));
            }
            Op::Expire => {
                for t in rm.expired(Duration::ZERO) {
                    rm.release(&t);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Four threads apply random interleaved operations (engine deaths are
        /// releases from another thread, expiries release every locked ticket);
        /// the invariants hold after every step and everything drains to zero.
        #[test]
        fn concurrent_random_ops_keep_invariants(ops in proptest::collection::vec(proptest::collection::vec(op(), 50..200), 4)) {
            let rm = Arc::new(ResourceManager::new());
            rm.set_max("ecm-a", r(20, 6, 5));
            rm.set_max("ecm-b", r(12, 4, 3));
            rm.set_max("user-x", r(16, 5, 4));
            rm.set_max("user-y", r(16, 5, 4));
            rm.set_max("queue", r(24, 8, 6));
            let handles: Vec<_> = ops.into_iter().map(|thread_ops| {
                let rm = rm.clone();
                std::thread::spawn(move || {
                    for op in &thread_ops {
                        apply(&rm, op);
                        rm.check_invariants()?;
                    }
                    Ok::<(), String>(())
                })
            }).collect();
            for h in handles {
                let res = h.join().expect("thread");
                prop_assert!(res.is_ok(), "{:?}", res);
            }
            for t in 0..32 {
                rm.release(&format!("t{t}"));
            }
            rm.check_invariants().map_err(TestCaseError::fail)?;
            for (name, lr) in rm.snapshot() {
                prop_assert!(lr.used.is_zero() && lr.locked.is_zero(), "{} not drained: {:?}", name, lr);
            }
        }
    }
}
