//! Job ownership: each unfinished job belongs to one Entrance instance, which
//! holds a lease on it (`owner`, `lease_until`) and renews it while it lives.
//! An instance claims at start the jobs it owned before (its id is stable
//! across restarts), jobs of no one, and jobs whose owner's lease ran out;
//! never another live instance's. A claim is one `UPDATE ... RETURNING`, so
//! two instances claiming at once never both get a job.

use sqlx::AssertSqlSafe;

use crate::{COLUMNS, JobRecord, Result, Store, TERMINAL, job_from_row};

impl Store {
    /// Take the unfinished jobs `owner` may run: its own, unowned ones and
    /// those whose lease ended before `now`; each now leased to `owner`
    /// until `until`. Oldest first.
    pub async fn claim_unfinished(&self, owner: &str, now: i64, until: i64) -> Result<Vec<JobRecord>> {
        let sql = format!(
            "UPDATE hangar_job SET owner = $1, lease_until = $3
             WHERE status NOT IN {TERMINAL} AND (owner = $1 OR owner = '' OR lease_until < $2)
             RETURNING {COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(owner).bind(now).bind(until).fetch_all(&self.pool).await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Extend `owner`'s leases on its unfinished jobs to `until`; returns how many.
    pub async fn renew_leases(&self, owner: &str, until: i64) -> Result<u64> {
        let sql = format!("UPDATE hangar_job SET lease_until = $2 WHERE owner = $1 AND status NOT IN {TERMINAL}");
        Ok(sqlx::query(AssertSqlSafe(sql)).bind(owner).bind(until).execute(&self.pool).await?.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use crate::{JobPaths, NewJob, Store};

    fn job(owner: &str, lease_until: i64) -> NewJob {
        NewJob { owner: owner.into(), lease_until, ..crate::tests::job() }
    }

    fn paths(id: i64) -> JobPaths {
        JobPaths { exec_id: format!("e{id}"), log_path: String::new(), result_location: String::new() }
    }

    /// A store of its own on SQLite, and on PostgreSQL (when
    /// `HANGAR_TEST_POSTGRES_URL` is set) a fresh database: claims by lease
    /// expiry reach every job of a store, so tests must not share one.
    async fn stores() -> Vec<(Store, Option<tempfile::TempDir>, String)> {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("l.db").display());
        let tag =
            format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("t").as_nanos());
        let mut v = vec![(Store::open(&url).await.expect("sqlite"), Some(dir), tag.clone())];
        if let Ok(pg) = std::env::var("HANGAR_TEST_POSTGRES_URL") {
            let admin = Store::open(&pg).await.expect("postgres");
            let db = format!("hangar_lease_{tag}");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&admin.pool)
                .await
                .expect("create db");
            let base = pg.rsplit_once('/').map(|(b, _)| b.to_string()).expect("url with a database");
            v.push((Store::open(&format!("{base}/{db}")).await.expect("postgres db"), None, tag));
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
            assert_eq!(s.renew_leases(&b, 9_000).await.expect("renew"), 1);
            let got: Vec<i64> =
                s.claim_unfinished(&b, 2_500, 9_000).await.expect("claim").iter().map(|j| j.id).collect();
            assert!(got.contains(&live) && !got.contains(&expired) && !got.contains(&mine), "{got:?}");
            // Finished jobs are nobody's concern.
            let done = hangar_protocol::JobStatus::Succeed;
            for id in [mine, live, expired] {
                s.update_status(id, hangar_protocol::JobStatus::Scheduled, None, None, None, 3).await.expect("s");
                s.update_status(id, done, Some(1.0), None, None, 4).await.expect("done");
            }
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
}
