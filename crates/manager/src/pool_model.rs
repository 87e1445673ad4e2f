//! The warm pool's arithmetic, free of I/O, locks and clocks: how a label
//! set's demand decays, how many engines its pool creates or gives back, and
//! how the global maximum is shared out. `pool.rs` feeds it what it sees.
//!
//! The target of one label set is the most of: the decayed peak of its
//! concurrent demand (asks in flight plus engines held by jobs), the recent
//! burst's peak while a burst is under way (so the first asks of a burst
//! bring the rest of it up at once), and the demand of this moment plus
//! `min_idle`. What it has is every engine of the set that is held, free,
//! or being created (by the pool or by an ask). The pool creates the
//! difference, never holding more than `max` free or starting engines of its
//! own, nor more than the owner's limit allows; it gives back only engines it
//! created, only when nothing is asked at the moment, and never below the
//! target (so never below `min_idle`).

use std::time::Duration;

/// `v` after `elapsed` with half-life `half_life` (a zero half-life forgets at once).
pub(crate) fn decay(v: f64, elapsed: Duration, half_life: Duration) -> f64 {
    if half_life.is_zero() || !v.is_finite() {
        return 0.0;
    }
    v * 0.5f64.powf(elapsed.as_secs_f64() / half_life.as_secs_f64())
}

/// What one label set has at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Supply {
    /// Engines held by jobs (Locked, Idle, Busy, Running).
    pub in_use: u32,
    /// Engines ready and free (Unlock), the pool's or not.
    pub idle: u32,
    /// Of those, the ones the pool created: the only ones it gives back.
    pub pooled_idle: u32,
    /// Creations of the pool under way.
    pub pending: u32,
    /// Asks under way (each needs an engine).
    pub in_flight: u32,
    /// Of those, the ones creating an engine of their own.
    pub asks_creating: u32,
    /// Engines the owner's limit (`userCreator,engineType` instances) still allows.
    pub user_room: u32,
}

/// What the pool of one label set aims for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Want {
    /// Decayed peak of concurrent demand.
    pub peak: f64,
    /// The recent burst's peak while a burst is under way, else 0.
    pub recall: u32,
    pub min_idle: u32,
    /// Most free or starting engines the pool holds for this set.
    pub max: u32,
}

/// Engines the set should have now.
pub(crate) fn target(w: &Want, s: &Supply) -> i64 {
    let peak = if w.peak.is_finite() && w.peak > 0.0 { w.peak.round().min(f64::from(u32::MAX)) as i64 } else { 0 };
    let now = i64::from(s.in_use) + i64::from(s.in_flight) + i64::from(w.min_idle.min(w.max));
    peak.max(i64::from(w.recall)).max(now)
}

/// How many engines the pool creates (> 0) or gives back (< 0) for one set.
pub(crate) fn change(w: &Want, s: &Supply) -> i64 {
    let pooled_idle = i64::from(s.pooled_idle.min(s.idle));
    let held = pooled_idle + i64::from(s.pending);
    let room = i64::from(w.max) - held;
    if room < 0 {
        // The maximum was lowered: back under it, whatever the demand.
        return -(-room).min(pooled_idle);
    }
    let have = i64::from(s.in_use) + i64::from(s.idle) + i64::from(s.pending) + i64::from(s.asks_creating);
    let target = target(w, s);
    if target > have {
        return (target - have).min(room).min(i64::from(s.user_room)).max(0);
    }
    if s.in_flight == 0 && w.recall == 0 {
        return -(have - target).min(pooled_idle);
    }
    0
}

/// Share the global maximum out: `held` engines the pools hold now (free or
/// starting), `asked[i]` the creations set i wants. One engine to each set
/// in turn, so a large set does not starve the others.
pub(crate) fn share(held: u32, asked: &[i64], max_total: u32) -> Vec<u32> {
    let mut budget = max_total.saturating_sub(held);
    let mut granted = vec![0u32; asked.len()];
    let mut progress = true;
    while budget > 0 && progress {
        progress = false;
        for (g, a) in granted.iter_mut().zip(asked) {
            if budget > 0 && i64::from(*g) < *a {
                *g += 1;
                budget -= 1;
                progress = true;
            }
        }
    }
    granted
}

/// Engines to give back per set when the pools hold more than `max_total`
/// in all (the maximum was lowered): from the sets holding most, one at a time.
pub(crate) fn trim(pooled_idle: &[u32], held: u32, max_total: u32) -> Vec<u32> {
    let mut over = held.saturating_sub(max_total);
    let mut back = vec![0u32; pooled_idle.len()];
    while over > 0 {
        let Some((i, _)) = pooled_idle
            .iter()
            .zip(&back)
            .enumerate()
            .filter(|(_, (p, b))| **p > **b)
            .max_by_key(|(_, (p, b))| **p - **b)
        else {
            break;
        };
        back[i] += 1;
        over -= 1;
    }
    back
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn supply() -> impl Strategy<Value = Supply> {
        (0u32..30, 0u32..30, 0u32..30, 0u32..10, 0u32..30, 0u32..10, 0u32..40).prop_map(
            |(in_use, idle, pooled, pending, in_flight, creating, user_room)| Supply {
                in_use,
                idle,
                pooled_idle: pooled.min(idle),
                pending,
                in_flight,
                asks_creating: creating.min(in_flight),
                user_room,
            },
        )
    }

    fn want() -> impl Strategy<Value = Want> {
        (0.0f64..40.0, 0u32..30, 0u32..6, 0u32..20).prop_map(|(peak, recall, min_idle, max)| Want {
            peak,
            recall,
            min_idle,
            max,
        })
    }

    /// What the set has after the pool's change is applied (creations start, releases end).
    fn apply(mut s: Supply, c: i64) -> Supply {
        if c > 0 {
            s.pending += c as u32;
            s.user_room -= c as u32;
        } else {
            let r = (-c) as u32;
            s.idle -= r;
            s.pooled_idle -= r;
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Creations stay within the set's max and the owner's room; releases
        /// only take the pool's own free engines and never go below target.
        #[test]
        fn one_change_keeps_the_bounds(w in want(), s in supply()) {
            let c = change(&w, &s);
            let held = i64::from(s.pooled_idle + s.pending);
            if c > 0 {
                prop_assert!(held + c <= i64::from(w.max), "held {held} + {c} over max {}", w.max);
                prop_assert!(c <= i64::from(s.user_room), "over the owner's room");
                let have = i64::from(s.in_use + s.idle + s.pending + s.asks_creating);
                prop_assert!(have + c <= target(&w, &s), "created past the target");
            } else {
                prop_assert!(-c <= i64::from(s.pooled_idle), "released engines it did not make");
                if held <= i64::from(w.max) && c < 0 {
                    let have = i64::from(s.in_use + s.idle + s.pending + s.asks_creating);
                    prop_assert!(have + c >= target(&w, &s), "released below target");
                    prop_assert!(s.in_flight == 0 && w.recall == 0, "released during demand");
                }
            }
            let after = apply(s, c);
            prop_assert!(after.idle <= s.idle + s.pending + c.max(0) as u32);
        }

        /// Applying the changes settles within a few steps, at a state the
        /// bounds hold in.
        #[test]
        fn changes_settle(w in want(), s in supply()) {
            let mut s = s;
            let mut steps = 0;
            loop {
                let c = change(&w, &s);
                if c == 0 { break; }
                s = apply(s, c);
                steps += 1;
                prop_assert!(steps <= 3, "did not settle: {w:?} {s:?}");
            }
            prop_assert!(s.pooled_idle + s.pending <= w.max || s.pooled_idle == 0);
        }

        /// The global maximum holds and no set gets more than it asked for.
        #[test]
        fn sharing_keeps_the_global_max(held in 0u32..40, asked in proptest::collection::vec(-5i64..20, 0..8), max in 0u32..40) {
            let g = share(held, &asked, max);
            let total: u32 = g.iter().sum();
            prop_assert!(held + total <= max.max(held), "over the global max");
            for (gi, ai) in g.iter().zip(&asked) {
                prop_assert!(i64::from(*gi) <= (*ai).max(0));
            }
            let wanted: i64 = asked.iter().map(|a| (*a).max(0)).sum();
            prop_assert!(i64::from(total) == wanted.min(i64::from(max.saturating_sub(held))), "budget left unused");
            let pooled: Vec<u32> = asked.iter().map(|a| a.unsigned_abs() as u32).collect();
            let sum: u32 = pooled.iter().sum();
            let back = trim(&pooled, sum, max);
            prop_assert!(back.iter().zip(&pooled).all(|(b, p)| b <= p));
            prop_assert!(sum - back.iter().sum::<u32>() <= max || back == pooled);
        }
    }

    /// A burst, then quiet: the pool holds the burst's peak, then decays to `min_idle`.
    #[test]
    fn quiet_shrinks_the_pool_to_min_idle() {
        let half = Duration::from_secs(60);
        // A burst of 8 concurrent jobs on engines the asks made.
        let peak = 8.0;
        let mut s = Supply { in_use: 8, user_room: 100, ..Default::default() };
        let w = Want { peak, recall: 0, min_idle: 2, max: 6 };
        let settle = |s: &mut Supply, c: i64| {
            *s = apply(*s, c);
            s.idle += s.pending;
            s.pooled_idle += s.pending;
            s.pending = 0;
        };
        let c = change(&w, &s);
        assert_eq!(c, 2, "min_idle free engines beside the busy ones");
        settle(&mut s, c);
        // The jobs end; the asks' own engines exit after their idle time.
        s.in_use = 0;
        let c = change(&w, &s);
        assert_eq!(c, 4, "the pool brings the peak back, up to its max");
        settle(&mut s, c);
        assert_eq!(s.pooled_idle, 6);
        for minute in 1..=20 {
            let w = Want { peak: decay(peak, half * minute, half), ..w };
            let c = change(&w, &s);
            assert!(c <= 0, "no creation while demand decays");
            s = apply(s, c);
        }
        assert_eq!((s.idle, s.pooled_idle), (2, 2), "down to min_idle");
        let w = Want { peak: 0.0, recall: 0, min_idle: 0, max: 6 };
        s = apply(s, change(&w, &s));
        assert_eq!(s.idle, 0, "min_idle 0: nothing kept");
        assert_eq!(decay(10.0, half, half), 5.0);
        assert_eq!(decay(10.0, half, Duration::ZERO), 0.0);
    }

    /// A burst after quiet: the first miss brings the recalled peak up at once.
    #[test]
    fn a_burst_recalls_the_last_peak() {
        let s = Supply { in_flight: 1, asks_creating: 1, user_room: 10, ..Default::default() };
        let w = Want { peak: 0.2, recall: 20, min_idle: 0, max: 8 };
        assert_eq!(change(&w, &s), 8, "up to the set's max");
        let w = Want { max: 30, ..w };
        assert_eq!(change(&w, &s), 10, "up to the owner's room");
        let s = Supply { user_room: 30, ..s };
        assert_eq!(change(&w, &s), 19, "the rest of the burst, beside the ask's own engine");
        assert_eq!(change(&Want { recall: 0, ..w }, &s), 0, "no burst: the ask's own engine covers it");
    }
}
