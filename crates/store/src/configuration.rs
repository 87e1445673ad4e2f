//! Parameter configuration (Linkis's console settings): one value per user,
//! creator, engine type and key. `*` stands for every user, creator or
//! engine type, so `(*, IDE, spark-3.4.4)` is the IDE creator's default for
//! Spark and `(*, *, *)` the global one. Which values win is the Entrance's
//! business; the store keeps them and a generation that every save bumps in
//! the same transaction, so a cache on any instance knows when to read again.

use sqlx::Row;

use crate::{Result, Store};

/// Where a value applies: a user (or `*`), a creator (or `*`) and an engine
/// type with its version (or `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigScope<'a> {
    pub user: &'a str,
    pub creator: &'a str,
    pub engine_type: &'a str,
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigValue {
    pub user: String,
    pub creator: String,
    pub engine_type: String,
    pub key: String,
    pub value: String,
    pub updated_ms: i64,
    pub updated_by: String,
}

const COLUMNS: &str = "user_name, creator, engine_type, config_key, config_value, updated_ms, updated_by";

fn value_of(r: &sqlx::any::AnyRow) -> Result<ConfigValue> {
    Ok(ConfigValue {
        user: r.try_get("user_name")?,
        creator: r.try_get("creator")?,
        engine_type: r.try_get("engine_type")?,
        key: r.try_get("config_key")?,
        value: r.try_get("config_value")?,
        updated_ms: r.try_get("updated_ms")?,
        updated_by: r.try_get("updated_by")?,
    })
}

impl Store {
    /// The generation of the stored values: it changes with every save.
    pub async fn config_generation(&self) -> Result<i64> {
        let g = sqlx::query("SELECT generation FROM hangar_config_generation WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?;
        Ok(g.unwrap_or(0))
    }

    /// Every value that may apply to `scope`: its own and those of `*` in
    /// any of its parts (one query; the caller orders them).
    pub async fn config_values_for(&self, scope: ConfigScope<'_>) -> Result<Vec<ConfigValue>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM hangar_config_value
             WHERE user_name IN ($1, '*') AND creator IN ($2, '*') AND engine_type IN ($3, '*')"
        )))
        .bind(scope.user)
        .bind(scope.creator)
        .bind(scope.engine_type)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(value_of).collect()
    }

    /// The values stored exactly at `scope`.
    pub async fn config_values_at(&self, scope: ConfigScope<'_>) -> Result<Vec<ConfigValue>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM hangar_config_value
             WHERE user_name = $1 AND creator = $2 AND engine_type = $3 ORDER BY config_key"
        )))
        .bind(scope.user)
        .bind(scope.creator)
        .bind(scope.engine_type)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(value_of).collect()
    }

    /// Set (`Some`) or clear (`None`: back to the default) values at `scope`,
    /// all in one transaction that also bumps the generation; returns the
    /// new generation.
    pub async fn save_config(
        &self,
        scope: ConfigScope<'_>,
        values: &[(String, Option<String>)],
        by: &str,
        now_ms: i64,
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        for (key, value) in values {
            match value {
                Some(v) => {
                    sqlx::query(
                        "INSERT INTO hangar_config_value (user_name, creator, engine_type, config_key, config_value, updated_ms, updated_by)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (user_name, creator, engine_type, config_key)
                         DO UPDATE SET config_value = excluded.config_value, updated_ms = excluded.updated_ms, updated_by = excluded.updated_by",
                    )
                    .bind(scope.user)
                    .bind(scope.creator)
                    .bind(scope.engine_type)
                    .bind(key)
                    .bind(v)
                    .bind(now_ms)
                    .bind(by)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "DELETE FROM hangar_config_value WHERE user_name = $1 AND creator = $2 AND engine_type = $3 AND config_key = $4",
                    )
                    .bind(scope.user)
                    .bind(scope.creator)
                    .bind(scope.engine_type)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        let g: i64 = sqlx::query(
            "UPDATE hangar_config_generation SET generation = generation + 1 WHERE id = 1 RETURNING generation",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        tx.commit().await?;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of its own on SQLite, and on PostgreSQL (when
    /// `HANGAR_TEST_POSTGRES_URL` is set) a fresh database: the generation
    /// is store-wide, so tests must not share one.
    async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
        crate::lease::tests::stores().await.into_iter().map(|(s, dir, _)| (s, dir)).collect()
    }

    fn scope<'a>(user: &'a str, creator: &'a str, engine_type: &'a str) -> ConfigScope<'a> {
        ConfigScope { user, creator, engine_type }
    }

    fn set(k: &str, v: &str) -> (String, Option<String>) {
        (k.to_string(), Some(v.to_string()))
    }

    #[tokio::test]
    async fn values_are_saved_updated_cleared_and_bump_the_generation() {
        for (s, _dir) in stores().await {
            assert_eq!(s.config_generation().await.expect("g"), 0);
            let alice = scope("alice", "IDE", "spark-3.4.4");
            let g1 = s
                .save_config(
                    alice,
                    &[set("spark.executor.memory", "2g"), set("wds.linkis.rm.instance", "3")],
                    "alice",
                    10,
                )
                .await
                .expect("save");
            assert_eq!(g1, 1);
            let g2 = s.save_config(alice, &[set("spark.executor.memory", "4g")], "alice", 20).await.expect("update");
            assert_eq!(g2, 2);
            assert_eq!(s.config_generation().await.expect("g"), 2);
            let at = s.config_values_at(alice).await.expect("at");
            assert_eq!(at.len(), 2);
            assert_eq!(
                (at[0].key.as_str(), at[0].value.as_str(), at[0].updated_ms),
                ("spark.executor.memory", "4g", 20)
            );
            s.save_config(alice, &[("wds.linkis.rm.instance".into(), None)], "alice", 30).await.expect("clear");
            let at = s.config_values_at(alice).await.expect("at");
            assert_eq!(at.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(), ["spark.executor.memory"]);
            assert_eq!(s.config_generation().await.expect("g"), 3);
        }
    }

    #[tokio::test]
    async fn values_for_a_scope_include_the_star_levels_only() {
        for (s, _dir) in stores().await {
            let k = "wds.linkis.rm.instance";
            for (u, c, e, v) in [
                ("alice", "IDE", "shell-1", "1"),
                ("*", "IDE", "shell-1", "2"),
                ("alice", "*", "shell-1", "3"),
                ("*", "*", "*", "4"),
                ("bob", "IDE", "shell-1", "5"),
                ("alice", "IDE", "python-python3", "6"),
                ("*", "nodeexecution", "*", "7"),
            ] {
                s.save_config(scope(u, c, e), &[set(k, v)], "admin", 1).await.expect("save");
            }
            let mut got: Vec<String> = s
                .config_values_for(scope("alice", "IDE", "shell-1"))
                .await
                .expect("for")
                .into_iter()
                .map(|v| v.value)
                .collect();
            got.sort();
            assert_eq!(got, ["1", "2", "3", "4"]);
            assert!(s.config_values_at(scope("carol", "IDE", "shell-1")).await.expect("at").is_empty());
        }
    }
}
