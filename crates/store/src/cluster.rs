//! The control-plane instances sharing a store: each one's address and
//! heartbeat (so any instance can forward a call to the one that owns a job),
//! and the elected manager's lease (one active LinkisManager at a time).
//!
//! The manager lease is one row per role: an instance takes it when it is
//! free or expired and keeps it by renewing before it ends; a renewal that
//! fails means the lease is another's now. Each new holder bumps `epoch`.

use sqlx::Row;

use crate::{Result, Store};

/// A control-plane instance as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub id: String,
    /// Its base URL (`http://host:port`), as other instances reach it.
    pub url: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
}

/// Who holds a role's lease (the manager's), until when.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderRecord {
    pub holder: String,
    pub url: String,
    pub until_ms: i64,
    pub epoch: i64,
}

fn instance_from_row(r: &sqlx::any::AnyRow) -> Result<InstanceRecord> {
    Ok(InstanceRecord {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        started_ms: r.try_get("started_ms")?,
        heartbeat_ms: r.try_get("heartbeat_ms")?,
    })
}

fn leader_from_row(r: &sqlx::any::AnyRow) -> Result<LeaderRecord> {
    Ok(LeaderRecord {
        holder: r.try_get("holder")?,
        url: r.try_get("url")?,
        until_ms: r.try_get("until_ms")?,
        epoch: r.try_get("epoch")?,
    })
}

impl Store {
    /// Record that instance `id` is alive at `url` (and since when, when `started`).
    pub async fn heartbeat_instance(&self, id: &str, url: &str, now: i64, started: bool) -> Result<()> {
        let sql = if started {
            "INSERT INTO hangar_instance (id, url, started_ms, heartbeat_ms) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, started_ms = excluded.started_ms,
                 heartbeat_ms = excluded.heartbeat_ms"
        } else {
            "INSERT INTO hangar_instance (id, url, started_ms, heartbeat_ms) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, heartbeat_ms = excluded.heartbeat_ms"
        };
        sqlx::query(sql).bind(id).bind(url).bind(now).execute(&self.pool).await?;
        Ok(())
    }

    /// Every instance that ever registered, oldest first.
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>> {
        let rows = sqlx::query("SELECT id, url, started_ms, heartbeat_ms FROM hangar_instance ORDER BY started_ms, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(instance_from_row).collect()
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        let row = sqlx::query("SELECT id, url, started_ms, heartbeat_ms FROM hangar_instance WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// An instance that stops cleanly says so: it is not waited for.
    pub async fn instance_stopped(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE hangar_instance SET heartbeat_ms = 0 WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// The engines that jobs run on now (a new manager expects them to rejoin).
    pub async fn running_tickets(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT ticket_id FROM hangar_job WHERE status = 'Running' AND ticket_id IS NOT NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    }

    /// Take or keep `role`'s lease for `holder` (reached at `url`) until
    /// `until`: granted when `holder` has it, or it is free or expired at
    /// `now`, or held by an earlier process of the same instance (a holder
    /// named `<instance>/...`, passed as `instance`: that process is gone,
    /// since one data dir runs one process). Returns the lease as it stands
    /// after the attempt.
    pub async fn acquire_lease(
        &self,
        role: &str,
        holder: &str,
        url: &str,
        now: i64,
        until: i64,
        instance: &str,
    ) -> Result<Option<LeaderRecord>> {
        sqlx::query(
            "INSERT INTO hangar_leader (role, holder, url, until_ms, epoch) VALUES ($1, '', '', 0, 0)
             ON CONFLICT (role) DO NOTHING",
        )
        .bind(role)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "UPDATE hangar_leader SET
                 epoch = CASE WHEN holder = $2 THEN epoch ELSE epoch + 1 END,
                 holder = $2, url = $3, until_ms = $5
             WHERE role = $1 AND (holder = $2 OR until_ms < $4 OR (holder LIKE $6 AND $6 <> '/%'))
             RETURNING holder, url, until_ms, epoch",
        )
        .bind(role)
        .bind(holder)
        .bind(url)
        .bind(now)
        .bind(until)
        .bind(format!("{instance}/%"))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some(leader_from_row(&r)?)),
            None => self.lease(role).await,
        }
    }

    /// `role`'s lease as it stands (its holder may have let it expire).
    pub async fn lease(&self, role: &str) -> Result<Option<LeaderRecord>> {
        let row = sqlx::query("SELECT holder, url, until_ms, epoch FROM hangar_leader WHERE role = $1")
            .bind(role)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(leader_from_row).transpose()
    }

    /// Give `role`'s lease up (a clean stop), so another takes it at once.
    pub async fn release_lease(&self, role: &str, holder: &str) -> Result<()> {
        sqlx::query("UPDATE hangar_leader SET until_ms = 0 WHERE role = $1 AND holder = $2")
            .bind(role)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_new_epoch_per_holder() {
        for (s, _dir, tag) in crate::lease::tests::stores().await {
            let role = format!("manager-{tag}");
            let a = s.acquire_lease(&role, "a/1", "http://a", 100, 1_100, "a").await.expect("a").expect("row");
            assert_eq!((a.holder.as_str(), a.epoch), ("a/1", 1));
            // b cannot take a live lease; it sees a's.
            let b = s.acquire_lease(&role, "b/1", "http://b", 500, 1_500, "b").await.expect("b").expect("row");
            assert_eq!((b.holder.as_str(), b.url.as_str()), ("a/1", "http://a"));
            // a renews and keeps its epoch.
            let a2 = s.acquire_lease(&role, "a/1", "http://a", 900, 1_900, "a").await.expect("a2").expect("row");
            assert_eq!((a2.holder.as_str(), a2.epoch, a2.until_ms), ("a/1", 1, 1_900));
            // Expired: b takes it, with a new epoch; a's renewal now fails.
            let b2 = s.acquire_lease(&role, "b/1", "http://b", 2_000, 3_000, "b").await.expect("b2").expect("row");
            assert_eq!((b2.holder.as_str(), b2.epoch), ("b/1", 2));
            let a3 = s.acquire_lease(&role, "a/1", "http://a", 2_100, 3_100, "a").await.expect("a3").expect("row");
            assert_eq!(a3.holder, "b/1");
            // A clean stop hands it over at once.
            s.release_lease(&role, "b/1").await.expect("release");
            let a4 = s.acquire_lease(&role, "a/1", "http://a", 2_200, 3_200, "a").await.expect("a4").expect("row");
            assert_eq!((a4.holder.as_str(), a4.epoch), ("a/1", 3));
            // A restarted a (a new process of the same instance) takes its old process's live lease at once.
            let a5 = s.acquire_lease(&role, "a/2", "http://a", 2_300, 3_300, "a").await.expect("a5").expect("row");
            assert_eq!((a5.holder.as_str(), a5.epoch), ("a/2", 4));
            // ...which b still cannot.
            let b3 = s.acquire_lease(&role, "b/2", "http://b", 2_400, 3_400, "b").await.expect("b3").expect("row");
            assert_eq!(b3.holder, "a/2");
        }
    }

    #[tokio::test]
    async fn instances_heartbeat_and_stop() {
        for (s, _dir, tag) in crate::lease::tests::stores().await {
            let id = format!("i-{tag}");
            s.heartbeat_instance(&id, "http://x:1", 10, true).await.expect("hb");
            s.heartbeat_instance(&id, "http://x:2", 20, false).await.expect("hb");
            let i = s.instance(&id).await.expect("get").expect("some");
            assert_eq!((i.url.as_str(), i.started_ms, i.heartbeat_ms), ("http://x:2", 10, 20));
            s.instance_stopped(&id).await.expect("stop");
            assert_eq!(s.instance(&id).await.expect("get").expect("some").heartbeat_ms, 0);
            assert!(s.instances().await.expect("all").iter().any(|x| x.id == id));
            let _: &Store = &s;
        }
    }
}
