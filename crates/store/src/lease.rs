//! Job ownership: each unfinished job belongs to one Entrance instance, which
//! holds a lease on it (`owner`, `lease_until`) and renews it while it lives.
//! An instance claims at start the jobs it owned before (its id is stable
//! across restarts), jobs of no one, and jobs whose owner's lease ran out;
//! while it runs it takes over the jobs of instances whose leases ran out
//! (they died or stalled); never another live instance's. A claim is one
//! `UPDATE ... RETURNING`, so two instances claiming at once never both get
//! a job. Every status write is fenced by the owner (`lib.rs`): an instance
//! that lost a job's lease writes nothing more about it.
//!
//! Running slots: a job holds one of its consumer group's slots from
//! Scheduled until it ends (`slot = 1`, status not final). Taking one is a
//! conditional write that counts the group's holders in the same statement,
//! serialised per group (PostgreSQL: an advisory lock on the group inside
//! the transaction; SQLite: its single writer), so the group's maximum holds
//! across every instance sharing the store.

use sqlx::{AssertSqlSafe, Row};

use crate::{Backend, COLUMNS, JobRecord, Result, Store, TERMINAL, job_from_row};

/// What a lease renewal found: the unfinished jobs `owner` still owns, and
/// those of them whose kill was asked for elsewhere.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Renewed {
    pub owned: Vec<i64>,
    pub kill: Vec<i64>,
}

impl Store {
    /// Take the unfinished jobs `owner` may run at its start: its own,
    /// unowned ones and those whose lease ended before `now`; each now leased
    /// to `owner` until `until`. Waiting jobs give up the slot they held (they
    /// are queued again). Oldest first.
    pub async fn claim_unfinished(&self, owner: &str, now: i64, until: i64) -> Result<Vec<JobRecord>> {
        self.claim(owner, now, until, "(owner = $1 OR owner = '' OR lease_until < $2)").await
    }

    /// Take over, while running, the unfinished jobs of other instances whose
    /// leases ran out (and of no one).
    pub async fn claim_expired(&self, owner: &str, now: i64, until: i64) -> Result<Vec<JobRecord>> {
        self.claim(owner, now, until, "owner <> $1 AND (owner = '' OR lease_until < $2)").await
    }

    async fn claim(&self, owner: &str, now: i64, until: i64, which: &str) -> Result<Vec<JobRecord>> {
        let sql = format!(
            "UPDATE hangar_job SET owner = $1, lease_until = $3,
                 slot = CASE WHEN status = 'Running' THEN slot ELSE 0 END
             WHERE status NOT IN {TERMINAL} AND {which}
             RETURNING {COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(owner).bind(now).bind(until).fetch_all(&self.pool).await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Extend `owner`'s leases on its unfinished jobs to `until`.
    pub async fn renew_leases(&self, owner: &str, until: i64) -> Result<Renewed> {
        let sql = format!(
            "UPDATE hangar_job SET lease_until = $2 WHERE owner = $1 AND status NOT IN {TERMINAL}
             RETURNING id, kill_requested"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(owner).bind(until).fetch_all(&self.pool).await?;
        let mut r = Renewed::default();
        for row in rows {
            let id: i64 = row.try_get(0)?;
            if row.try_get::<i64, _>(1)? != 0 {
                r.kill.push(id);
            }
            r.owned.push(id);
        }
        Ok(r)
    }

    /// A clean stop of `owner`: its leases end now, so other instances take
    /// its jobs over at once.
    pub async fn release_leases(&self, owner: &str) -> Result<u64> {
        let sql = format!("UPDATE hangar_job SET lease_until = 0 WHERE owner = $1 AND status NOT IN {TERMINAL}");
        Ok(sqlx::query(AssertSqlSafe(sql)).bind(owner).execute(&self.pool).await?.rows_affected())
    }

    /// Ask whoever runs job `id` to kill it (its owner sees the request at
    /// its next lease renewal; an instance taking the job over, at once).
    /// False when the job already ended.
    pub async fn request_kill(&self, id: i64) -> Result<bool> {
        let sql = format!("UPDATE hangar_job SET kill_requested = 1 WHERE id = $1 AND status NOT IN {TERMINAL}");
        Ok(sqlx::query(AssertSqlSafe(sql)).bind(id).execute(&self.pool).await?.rows_affected() > 0)
    }

    /// Schedule job `id` (owned by `owner`) if its group has fewer than
    /// `max` other jobs holding a running slot: it then holds one until it
    /// ends. False when the group is full (or the job is not `owner`'s or
    /// ended).
    pub async fn take_slot(&self, id: i64, owner: &str, group: &str, max: i64, now: i64) -> Result<bool> {
        let sql = format!(
            "UPDATE hangar_job SET status = 'Scheduled', slot = 1, updated_ms = $4
             WHERE id = $1 AND owner = $2 AND status NOT IN {TERMINAL}
               AND (SELECT COUNT(*) FROM hangar_job o
                    WHERE o.grp = $3 AND o.slot = 1 AND o.id <> $1 AND o.status NOT IN {TERMINAL}) < $5"
        );
        let q = sqlx::query(AssertSqlSafe(sql)).bind(id).bind(owner).bind(group).bind(now).bind(max);
        let affected = match self.backend {
            Backend::Sqlite => q.execute(&self.pool).await?.rows_affected(),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(group).execute(&mut *tx).await?;
                let n = q.execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                n
            }
        };
        Ok(affected > 0)
    }

    /// Give back job `id`'s running slot (it waits again: re-queued).
    pub async fn release_slot(&self, id: i64, owner: &str) -> Result<()> {
        sqlx::query("UPDATE hangar_job SET slot = 0 WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many of `group`'s jobs hold a running slot now.
    pub async fn slots_held(&self, group: &str) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM hangar_job WHERE grp = $1 AND slot = 1 AND status NOT IN {TERMINAL}");
        Ok(sqlx::query(AssertSqlSafe(sql)).bind(group).fetch_one(&self.pool).await?.try_get(0)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::{JobPaths, NewJob, Store};

    use hangar_protocol::JobStatus;

    fn job(owner: &str, lease_until: i64) -> NewJob {
        NewJob { owner: owner.into(), lease_until, ..crate::tests::job() }
    }

    fn paths(id: i64) -> JobPaths {
        JobPaths { exec_id: format!("e{id}"), log_path: String::new(), result_location: String::new() }
    }

    /// A store of its own on SQLite, and on PostgreSQL (when
    /// `HANGAR_TEST_POSTGRES_URL` is set) a fresh database: claims by lease
    /// expiry reach every job of a store, so tests must not share one.
    pub(crate) async fn stores() -> Vec<(Store, Option<tempfile::TempDir>, String)> {
        let mut v = Vec::new();
        for (url, dir, tag) in store_urls().await {
            v.push((Store::open(&url).await.expect("store"), dir, tag));
        }
        v
    }

    /// The URLs of such stores (to open several pools on one, as several instances do).
    pub(crate) async fn store_urls() -> Vec<(String, Option<tempfile::TempDir>, String)> {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("l.db").display());
        // Unique per call, also for tests of several modules starting at once.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("t").as_nanos();
        let tag = format!("{now:x}_{n}");
        let mut v = vec![(url, Some(dir), tag.clone())];
        if let Ok(pg) = std::env::var("HANGAR_TEST_POSTGRES_URL") {
            let admin = Store::open(&pg).await.expect("postgres");
            let db = format!("hangar_lease_{tag}");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&admin.pool)
                .await
                .expect("create db");
            admin.close().await;
            let base = pg.rsplit_once('/').map(|(b, _)| b.to_string()).expect("url with a database");
            v.push((format!("{base}/{db}"), None, tag));
        }
        v
    }

    #[tokio::test]
    async fn an_instance_claims_its_own_unowned_and_expired_jobs_never_a_live_lease() {
        for (s, _dir, tag) in stores().await {
            let (a, b) = (format!("a-{tag}"), format!("b-{tag}"));
            let (mine, _) = s.insert_job(&job(&a, 1_000), paths).await.expect("a's");
            let (live, _) = s.insert_job(&job(&b, 5_000), paths).await.expect("b's, live");
            let (expired, _) = s.insert_job(&job(&b, 1_500), paths).await.expect("b's, expired");
            // A restarted `a` at t=2000 takes back its own and b's expired job, not b's live one.
            let got: Vec<i64> =
                s.claim_unfinished(&a, 2_000, 3_000).await.expect("claim").iter().map(|j| j.id).collect();
            assert!(got.contains(&mine) && got.contains(&expired) && !got.contains(&live), "{got:?}");
            // `b` renews its live job; the expired one is a's now.
            assert_eq!(s.renew_leases(&b, 9_000).await.expect("renew").owned, vec![live]);
            let got: Vec<i64> =
                s.claim_unfinished(&b, 2_500, 9_000).await.expect("claim").iter().map(|j| j.id).collect();
            assert!(got.contains(&live) && !got.contains(&expired) && !got.contains(&mine), "{got:?}");
            // Finished jobs are nobody's concern.
            let done = hangar_protocol::JobStatus::Succeed;
            for (id, o) in [(mine, &a), (live, &b), (expired, &a)] {
                assert!(
                    s.update_status(id, o, hangar_protocol::JobStatus::Scheduled, None, None, None, 3)
                        .await
                        .expect("s")
                );
                assert!(s.update_status(id, o, done, Some(1.0), None, None, 4).await.expect("done"));
            }
            // A fenced write: b no longer owns the expired job, so it cannot end it.
            assert!(!s.update_status(expired, &b, done, None, None, None, 5).await.expect("fenced"));
            assert!(
                s.claim_unfinished(&a, 99_999, 100_000)
                    .await
                    .expect("claim")
                    .iter()
                    .all(|j| ![mine, live, expired].contains(&j.id))
            );
        }
    }

    /// Instances claiming the expired jobs of a dead one at the same time:
    /// every job goes to exactly one of them.
    #[tokio::test]
    async fn concurrent_claims_give_each_job_to_one_instance() {
        for (s, _dir, tag) in stores().await {
            let dead = format!("dead-{tag}");
            let mut ids = Vec::new();
            for _ in 0..40 {
                ids.push(s.insert_job(&job(&dead, 100), paths).await.expect("job").0);
            }
            let mut set = tokio::task::JoinSet::new();
            for i in 0..4 {
                let s = s.clone();
                let me = format!("live{i}-{tag}");
                set.spawn(async move {
                    let mut got = Vec::new();
                    for _ in 0..5 {
                        got.extend(
                            s.claim_unfinished(&me, 1_000, 1_000_000)
                                .await
                                .expect("claim")
                                .into_iter()
                                .map(|j| (j.id, me.clone())),
                        );
                    }
                    got
                });
            }
            let mut owner_of = std::collections::BTreeMap::new();
            while let Some(r) = set.join_next().await {
                for (id, me) in r.expect("join") {
                    if ids.contains(&id) {
                        let prev = owner_of.insert(id, me.clone());
                        assert!(prev.is_none() || prev.as_ref() == Some(&me), "job {id} claimed by {prev:?} and {me}");
                    }
                }
            }
            assert_eq!(owner_of.len(), ids.len(), "every expired job claimed");
        }
    }

    /// Three instances (three pools on one store) scheduling jobs of two
    /// groups at once, some killed while they wait, one instance's jobs
    /// taken over midway: a group never has more slot holders than its
    /// maximum, and none once every job ended.
    #[tokio::test]
    async fn group_slots_hold_across_instances() {
        const MAX: i64 = 3;
        for (url, _dir, tag) in store_urls().await {
            let s = Store::open(&url).await.expect("store");
            let mut instances = Vec::new();
            for _ in 0..3 {
                instances.push(Store::open(&url).await.expect("another pool"));
            }
            let groups = [format!("g1-{tag}"), format!("g2-{tag}")];
            let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let checker = {
                let (s, groups, over, stop) = (s.clone(), groups.clone(), over.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut samples = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        for g in &groups {
                            if s.slots_held(g).await.expect("count") > MAX {
                                over.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                        samples += 1;
                        tokio::task::yield_now().await;
                    }
                    samples
                })
            };
            let mut set = tokio::task::JoinSet::new();
            for (i, inst) in instances.iter().enumerate() {
                for k in 0..8u64 {
                    let (st, g) = (inst.clone(), groups[(k % 2) as usize].clone());
                    let me = format!("i{i}-{tag}");
                    let over = over.clone();
                    set.spawn(async move {
                        let mut seed = (i as u64 + 1) * 7919 + k * 104_729;
                        let mut next = || {
                            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                            seed >> 33
                        };
                        for _ in 0..6 {
                            let new = NewJob {
                                owner: me.clone(),
                                lease_until: i64::MAX / 2,
                                group: g.clone(),
                                ..crate::tests::job()
                            };
                            let (id, _) = st.insert_job(&new, paths).await.expect("job");
                            let mut waited = 0;
                            loop {
                                if st.take_slot(id, &me, &g, MAX, 1).await.expect("take") {
                                    if st.slots_held(&g).await.expect("count") > MAX {
                                        over.store(true, std::sync::atomic::Ordering::SeqCst);
                                    }
                                    tokio::time::sleep(std::time::Duration::from_millis(next() % 5)).await;
                                    let end = if next() % 4 == 0 { JobStatus::Failed } else { JobStatus::Succeed };
                                    st.update_status(id, &me, end, None, None, None, 2).await.expect("end");
                                    break;
                                }
                                waited += 1;
                                if waited > 3 && next() % 5 == 0 {
                                    // Killed while it waited: it never held a slot.
                                    st.update_status(id, &me, JobStatus::Cancelled, None, None, None, 2)
                                        .await
                                        .expect("kill");
                                    break;
                                }
                                tokio::time::sleep(std::time::Duration::from_millis(1 + next() % 3)).await;
                            }
                        }
                    });
                }
            }
            while let Some(r) = set.join_next().await {
                r.expect("worker");
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let samples = checker.await.expect("checker");
            assert!(samples > 10, "the checker sampled while the workers ran ({samples})");
            assert!(!over.load(std::sync::atomic::Ordering::SeqCst), "a group had more than {MAX} slot holders");
            for g in &groups {
                assert_eq!(s.slots_held(g).await.expect("count"), 0, "slots drained");
            }
        }
    }
}
