//! Versioned schema migrations.
//!
//! The schema is a numbered list of migrations; `hangar_schema_version`
//! records which ones a store has had. Opening a store applies the missing
//! ones in order, all in one transaction, under a PostgreSQL advisory lock
//! (SQLite: its write lock), so instances starting together against one
//! database migrate it once and the rest wait and see it done. A store that a
//! newer Hangar migrated further is refused rather than used half-understood.
//!
//! Migration 1 is the schema as it stood before versions were recorded; its
//! statements are idempotent, so stores made then are adopted as version 1.
//! New migrations are appended, never edited.

use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::{Backend, Result, StoreError, bml, engine_history, history};

/// The advisory lock key migrations hold on PostgreSQL.
const LOCK_KEY: i64 = 7_262_024;

struct Migration {
    version: i64,
    name: &'static str,
    statements: fn(Backend) -> Vec<String>,
}

fn baseline(backend: Backend) -> Vec<String> {
    let id = match backend {
        Backend::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "id BIGSERIAL PRIMARY KEY",
    };
    let mut v = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS hangar_job (
                {id},
                exec_id TEXT NOT NULL DEFAULT '',
                submit_user TEXT NOT NULL,
                execute_user TEXT NOT NULL,
                creator TEXT NOT NULL,
                status TEXT NOT NULL,
                progress DOUBLE PRECISION NOT NULL DEFAULT 0,
                engine_type TEXT NOT NULL,
                run_type TEXT NOT NULL,
                labels TEXT NOT NULL,
                params TEXT NOT NULL,
                source TEXT NOT NULL,
                code TEXT NOT NULL,
                log_path TEXT NOT NULL DEFAULT '',
                result_location TEXT NOT NULL DEFAULT '',
                err_code BIGINT,
                err_desc TEXT,
                created_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL,
                engine_instance TEXT,
                ecm_instance TEXT,
                ticket_id TEXT,
                is_reuse BIGINT,
                metrics TEXT NOT NULL DEFAULT '{{}}'
            )"
        ),
        "CREATE INDEX IF NOT EXISTS hangar_job_status ON hangar_job(status)".to_string(),
    ];
    v.extend(bml::DDL.iter().chain(history::DDL.iter()).map(|s| s.to_string()));
    v
}

/// Each job's owner (the Entrance instance running or queueing it) and until
/// when that instance's lease on it holds.
fn job_leases(_: Backend) -> Vec<String> {
    vec![
        "ALTER TABLE hangar_job ADD COLUMN owner TEXT NOT NULL DEFAULT ''".into(),
        "ALTER TABLE hangar_job ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0".into(),
        "CREATE INDEX IF NOT EXISTS hangar_job_owner ON hangar_job(owner)".into(),
    ]
}

/// Several control-plane instances on one store: login sessions every
/// instance honours, the instances and their heartbeats, the elected
/// manager's lease, and per job its consumer group, whether it holds one of
/// the group's running slots, and a kill asked for on another instance.
fn control_planes(_: Backend) -> Vec<String> {
    vec![
        "CREATE TABLE IF NOT EXISTS hangar_session (
            ticket_hash TEXT PRIMARY KEY,
            user_name TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            last_ms BIGINT NOT NULL
        )"
        .into(),
        "CREATE TABLE IF NOT EXISTS hangar_instance (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            started_ms BIGINT NOT NULL,
            heartbeat_ms BIGINT NOT NULL
        )"
        .into(),
        "CREATE TABLE IF NOT EXISTS hangar_leader (
            role TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            url TEXT NOT NULL,
            until_ms BIGINT NOT NULL,
            epoch BIGINT NOT NULL
        )"
        .into(),
        "ALTER TABLE hangar_job ADD COLUMN grp TEXT NOT NULL DEFAULT ''".into(),
        "ALTER TABLE hangar_job ADD COLUMN slot BIGINT NOT NULL DEFAULT 0".into(),
        "ALTER TABLE hangar_job ADD COLUMN kill_requested BIGINT NOT NULL DEFAULT 0".into(),
        "CREATE INDEX IF NOT EXISTS hangar_job_grp ON hangar_job(grp, slot)".into(),
    ]
}

/// Parameter configuration (the console's settings): one value per user,
/// creator, engine type (`spark-3.4.4`, or `*`) and key, `*` standing for
/// every user / creator / engine; and a generation every save bumps, so each
/// instance's cache sees a save made on any of them.
fn parameter_configuration(_: Backend) -> Vec<String> {
    vec![
        "CREATE TABLE IF NOT EXISTS hangar_config_value (
            user_name TEXT NOT NULL,
            creator TEXT NOT NULL,
            engine_type TEXT NOT NULL,
            config_key TEXT NOT NULL,
            config_value TEXT NOT NULL,
            updated_ms BIGINT NOT NULL,
            updated_by TEXT NOT NULL,
            PRIMARY KEY (user_name, creator, engine_type, config_key)
        )"
        .into(),
        "CREATE TABLE IF NOT EXISTS hangar_config_generation (
            id BIGINT PRIMARY KEY,
            generation BIGINT NOT NULL
        )"
        .into(),
        "INSERT INTO hangar_config_generation (id, generation) VALUES (1, 0) ON CONFLICT (id) DO NOTHING".into(),
    ]
}

/// Every migration, in order. Append only.
const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "jobs, material versions, job history indexes", statements: baseline },
    Migration { version: 2, name: "job owners and leases", statements: job_leases },
    Migration {
        version: 3,
        name: "sessions, instances, manager lease, group slots, kill requests",
        statements: control_planes,
    },
    Migration { version: 4, name: "engine history", statements: engine_history::ddl },
    Migration { version: 5, name: "parameter configuration values", statements: parameter_configuration },
];

/// The newest schema version this build knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The versions of every migration, in order (numbers may skip: a migration
/// numbered on another branch arrives with it).
#[cfg(test)]
pub(crate) fn versions() -> Vec<i64> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

/// Bring the store to [`latest_version`]; returns the versions applied now.
pub(crate) async fn migrate(pool: &AnyPool, backend: Backend, now_ms: i64) -> Result<Vec<i64>> {
    let mut tx = pool.begin().await?;
    if backend == Backend::Postgres {
        sqlx::query(AssertSqlSafe(format!("SELECT pg_advisory_xact_lock({LOCK_KEY})"))).execute(&mut *tx).await?;
    }
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS hangar_schema_version (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            applied_ms BIGINT NOT NULL
        )",
    )
    .execute(&mut *tx)
    .await?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM hangar_schema_version")
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    let latest = latest_version();
    if current > latest {
        return Err(StoreError(format!(
            "the store's schema is at version {current}, made by a newer Hangar; this one knows versions up to \
             {latest}: run the newer Hangar (or a backup of the store from before it)"
        )));
    }
    // Every migration not recorded yet (not only those above the newest
    // recorded): a store migrated by a build that lacked a lower-numbered one
    // gets it later.
    let recorded: Vec<i64> = sqlx::query("SELECT version FROM hangar_schema_version")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<std::result::Result<_, _>>()?;
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !recorded.contains(&m.version)) {
        for statement in (m.statements)(backend) {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError(format!("schema migration {} ({}) failed: {e}", m.version, m.name)))?;
        }
        sqlx::query("INSERT INTO hangar_schema_version (version, name, applied_ms) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        applied.push(m.version);
    }
    tx.commit().await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "store schema migrated to version {latest}");
    }
    Ok(applied)
}
