//! Login sessions, in the store so that every control-plane instance on it
//! honours a login made on any of them, and a logout on one ends the session
//! on all. A session is keyed by the hash of its cookie (the caller hashes):
//! a copy of the store never yields a live cookie. A session idle longer than
//! the timeout is gone; its last use is written only when it is older than a
//! tenth of the timeout, so a busy client does not write on every request.

use sqlx::Row;

use crate::{Result, Store};

impl Store {
    /// Record a new session of `user`, last used `now_ms`.
    pub async fn open_session(&self, ticket_hash: &str, user: &str, now_ms: i64) -> Result<()> {
        sqlx::query("INSERT INTO hangar_session (ticket_hash, user_name, created_ms, last_ms) VALUES ($1, $2, $3, $3)")
            .bind(ticket_hash)
            .bind(user)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The user of a live session, or None. A session idle for
    /// `idle_timeout_ms` or longer is deleted; a live one's last use is
    /// refreshed when it is older than a tenth of the timeout.
    pub async fn session_user(&self, ticket_hash: &str, now_ms: i64, idle_timeout_ms: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT user_name, last_ms FROM hangar_session WHERE ticket_hash = $1")
            .bind(ticket_hash)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let user: String = row.try_get("user_name")?;
        let last: i64 = row.try_get("last_ms")?;
        let idle = now_ms.saturating_sub(last);
        if idle >= idle_timeout_ms {
            // Guarded by the age, so a refresh made meanwhile elsewhere stands.
            sqlx::query("DELETE FROM hangar_session WHERE ticket_hash = $1 AND last_ms <= $2")
                .bind(ticket_hash)
                .bind(now_ms.saturating_sub(idle_timeout_ms))
                .execute(&self.pool)
                .await?;
            return Ok(None);
        }
        if idle > idle_timeout_ms / 10 {
            sqlx::query("UPDATE hangar_session SET last_ms = $2 WHERE ticket_hash = $1 AND last_ms < $2")
                .bind(ticket_hash)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(user))
    }

    /// End a session; whether there was one.
    pub async fn close_session(&self, ticket_hash: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM hangar_session WHERE ticket_hash = $1")
            .bind(ticket_hash)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Delete the sessions idle for `idle_timeout_ms` or longer at `now_ms`; how many.
    pub async fn purge_sessions(&self, now_ms: i64, idle_timeout_ms: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM hangar_session WHERE last_ms <= $1")
            .bind(now_ms.saturating_sub(idle_timeout_ms))
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    /// A store of its own on SQLite, and on PostgreSQL (when
    /// `HANGAR_TEST_POSTGRES_URL` is set) a fresh database: a purge reaches
    /// every session of a store, so tests must not share one.
    async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
        crate::lease::tests::stores().await.into_iter().map(|(s, dir, _)| (s, dir)).collect()
    }

    async fn last_ms(s: &Store, hash: &str) -> Option<i64> {
        sqlx::query_scalar::<_, i64>("SELECT last_ms FROM hangar_session WHERE ticket_hash = $1")
            .bind(hash)
            .fetch_optional(&s.pool)
            .await
            .expect("last_ms")
    }

    #[tokio::test]
    async fn sessions_open_refresh_lazily_expire_and_close() {
        for (s, _dir) in stores().await {
            s.open_session("h1", "alice", 1_000).await.expect("open");
            assert_eq!(s.session_user("h1", 1_050, 1_000).await.expect("user").as_deref(), Some("alice"));
            assert_eq!(last_ms(&s, "h1").await, Some(1_000), "younger than a tenth of the timeout: no write");
            assert_eq!(s.session_user("h1", 1_500, 1_000).await.expect("user").as_deref(), Some("alice"));
            assert_eq!(last_ms(&s, "h1").await, Some(1_500), "refreshed");
            // Idle for the whole timeout since the refresh: gone, and deleted.
            assert_eq!(s.session_user("h1", 2_500, 1_000).await.expect("user"), None);
            assert_eq!(last_ms(&s, "h1").await, None);
            assert_eq!(s.session_user("unknown", 2_500, 1_000).await.expect("user"), None);

            s.open_session("h2", "bob", 3_000).await.expect("open");
            assert!(s.close_session("h2").await.expect("close"));
            assert!(!s.close_session("h2").await.expect("close again"));
            assert_eq!(s.session_user("h2", 3_001, 1_000).await.expect("user"), None);
        }
    }

    #[tokio::test]
    async fn purging_removes_only_expired_sessions() {
        for (s, _dir) in stores().await {
            s.open_session("old", "alice", 1_000).await.expect("open");
            s.open_session("new", "bob", 5_000).await.expect("open");
            assert_eq!(s.purge_sessions(5_500, 1_000).await.expect("purge"), 1);
            assert_eq!(last_ms(&s, "old").await, None);
            assert_eq!(s.session_user("new", 5_600, 1_000).await.expect("user").as_deref(), Some("bob"));
        }
    }
}
