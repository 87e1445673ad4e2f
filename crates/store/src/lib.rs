//! Durable job records: SQLite (WAL) by default, PostgreSQL by URL.
//!
//! One schema and one set of queries serve both backends (positional `$N`
//! parameters work on both). Status updates are guarded in SQL, so a job that
//! reached a final state is never moved again, whoever writes late.

mod bml;
mod cluster;
mod configuration;
mod engine_history;
mod history;
mod lease;
mod migrate;
mod session;

use std::str::FromStr;
use std::time::Duration;

use hangar_protocol::{HangarError, JobStatus};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
// Dynamic SQL here is only ever built from constants of this file.
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};

pub use bml::{MaterialVersion, version_name};
pub use cluster::{InstanceRecord, LeaderRecord};
pub use configuration::{ConfigScope, ConfigValue};
pub use engine_history::{EngineHistoryFilter, EngineRecord};
pub use history::JobFilter;
pub use lease::Renewed;
pub use migrate::latest_version as schema_version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<StoreError> for HangarError {
    fn from(e: StoreError) -> Self {
        HangarError::internal(e.to_string())
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// Where a job's records live, named by its id.
#[derive(Debug, Clone)]
pub struct JobPaths {
    pub exec_id: String,
    pub log_path: String,
    pub result_location: String,
}

/// A job as first stored at submit.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub submit_user: String,
    pub execute_user: String,
    pub creator: String,
    pub engine_type: String,
    pub run_type: String,
    /// JSON object of labels.
    pub labels: String,
    /// JSON of `params`.
    pub params: String,
    /// JSON of `source`.
    pub source: String,
    pub code: String,
    pub created_ms: i64,
    /// The Entrance instance that accepted it, and until when its lease holds.
    pub owner: String,
    pub lease_until: i64,
    /// Its consumer group (`creator_user_engine`): running slots are counted per group.
    pub group: String,
}

/// A stored job.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobRecord {
    pub id: i64,
    pub exec_id: String,
    pub submit_user: String,
    pub execute_user: String,
    pub creator: String,
    pub status: JobStatus,
    pub progress: f64,
    pub engine_type: String,
    pub run_type: String,
    pub labels: String,
    pub params: String,
    pub source: String,
    pub code: String,
    pub log_path: String,
    pub result_location: String,
    pub err_code: Option<i64>,
    pub err_desc: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub engine_instance: Option<String>,
    pub ecm_instance: Option<String>,
    pub ticket_id: Option<String>,
    pub is_reuse: Option<bool>,
    pub metrics: String,
    /// The instance that owns it (runs or queues it); empty when no one does.
    pub owner: String,
    /// A kill was asked for while another instance (or no one) ran it.
    pub kill_requested: bool,
}

/// The engine a job runs on.
#[derive(Debug, Clone, Copy)]
pub struct EngineAssignment<'a> {
    pub engine_instance: &'a str,
    pub ecm_instance: &'a str,
    pub ticket_id: &'a str,
    pub is_reuse: bool,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

pub(crate) const COLUMNS: &str = "id, exec_id, submit_user, execute_user, creator, status, progress, engine_type, run_type, labels, params, source, code, log_path, result_location, err_code, err_desc, created_ms, updated_ms, engine_instance, ecm_instance, ticket_id, is_reuse, metrics, owner, kill_requested";

const TERMINAL: &str = "('Succeed','Failed','Cancelled','Timeout')";

impl Store {
    /// Open `sqlite://<path>` (created if missing) or `postgres://...`, and
    /// create the schema.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError(format!("unsupported store URL '{url}': use sqlite://PATH or postgres://...")));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        opts = match backend {
            Backend::Sqlite => opts.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode=WAL").await?;
                    conn.execute("PRAGMA synchronous=NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout=10000").await?;
                    Ok(())
                })
            }),
            Backend::Postgres => opts.max_connections(8),
        };
        let pool = opts.connect(&url).await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        migrate::migrate(&pool, backend, now_ms).await?;
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Store a new job (status Inited) and return its taskID.
    /// Store a new job and its paths (which name its id) in one transaction:
    /// it returns only once the commit is durable, so an id the caller hands
    /// out is never lost nor handed out again. (`INSERT ... RETURNING` alone
    /// yields the row before SQLite commits; a full disk then failed the
    /// commit unseen.)
    pub async fn insert_job(&self, j: &NewJob, paths: impl FnOnce(i64) -> JobPaths) -> Result<(i64, JobPaths)> {
        let mut conn = self.pool.acquire().await?;
        conn.execute("BEGIN").await?;
        let done = async {
            let row = sqlx::query(
                "INSERT INTO hangar_job (submit_user, execute_user, creator, status, progress, engine_type, run_type, labels, params, source, code, created_ms, updated_ms, owner, lease_until, grp)
                 VALUES ($1, $2, $3, 'Inited', 0, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13) RETURNING id",
            )
            .bind(&j.submit_user)
            .bind(&j.execute_user)
            .bind(&j.creator)
            .bind(&j.engine_type)
            .bind(&j.run_type)
            .bind(&j.labels)
            .bind(&j.params)
            .bind(&j.source)
            .bind(&j.code)
            .bind(j.created_ms)
            .bind(&j.owner)
            .bind(j.lease_until)
            .bind(&j.group)
            .fetch_one(&mut *conn)
            .await?;
            let id = row.try_get::<i64, _>(0)?;
            let p = paths(id);
            sqlx::query("UPDATE hangar_job SET exec_id = $1, log_path = $2, result_location = $3 WHERE id = $4")
                .bind(&p.exec_id)
                .bind(&p.log_path)
                .bind(&p.result_location)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            conn.execute("COMMIT").await?;
            Ok::<_, sqlx::Error>((id, p))
        }
        .await;
        match done {
            Ok(v) => Ok(v),
            Err(e) => {
                // A failed commit (a full disk) can leave the transaction
                // open and the write lock held: roll back, or drop the
                // connection rather than return it to the pool so.
                if conn.execute("ROLLBACK").await.is_err() {
                    let _ = conn.close().await;
                }
                Err(e.into())
            }
        }
    }

    /// Move job `id` on, only while `owner` owns it (a fence: an instance
    /// whose lease was taken over writes nothing) and it is not final.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_status(
        &self,
        id: i64,
        owner: &str,
        status: JobStatus,
        progress: Option<f64>,
        error: Option<(i64, &str)>,
        metrics: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        // Only the columns that change are bound: a NULL bound where a value
        // is bound on the next call confuses PostgreSQL's prepared statements.
        let mut sets = vec!["status = $1".to_string()];
        let mut n = 2;
        if progress.is_some() {
            sets.push(format!("progress = ${n}"));
            n += 1;
        }
        if error.is_some() {
            sets.push(format!("err_code = ${n}, err_desc = ${}", n + 1));
            n += 2;
        }
        if metrics.is_some() {
            sets.push(format!("metrics = ${n}"));
            n += 1;
        }
        sets.push(format!("updated_ms = ${n}"));
        let sql = format!(
            "UPDATE hangar_job SET {} WHERE id = ${} AND owner = ${} AND status NOT IN {TERMINAL}",
            sets.join(", "),
            n + 1,
            n + 2
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(status.as_str());
        if let Some(p) = progress {
            q = q.bind(p);
        }
        if let Some((code, desc)) = error {
            q = q.bind(code).bind(desc.to_string());
        }
        if let Some(m) = metrics {
            q = q.bind(m.to_string());
        }
        let r = q.bind(now_ms).bind(id).bind(owner).execute(&self.pool).await?;
        Ok(r.rows_affected() > 0)
    }

    /// The job got its engine and runs: one write for status, engine and metrics.
    /// False when the job already ended.
    pub async fn set_running(
        &self,
        id: i64,
        owner: &str,
        engine: &EngineAssignment<'_>,
        metrics: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE hangar_job SET status = 'Running', progress = 0, engine_instance = $1, ecm_instance = $2, ticket_id = $3, \
             is_reuse = $4, metrics = $5, updated_ms = $6 WHERE id = $7 AND owner = $8 AND status NOT IN {TERMINAL}"
        );
        let r = sqlx::query(AssertSqlSafe(sql))
            .bind(engine.engine_instance)
            .bind(engine.ecm_instance)
            .bind(engine.ticket_id)
            .bind(i64::from(engine.is_reuse))
            .bind(metrics)
            .bind(now_ms)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_progress(&self, id: i64, owner: &str, progress: f64, metrics: &str, now_ms: i64) -> Result<()> {
        let sql = format!(
            "UPDATE hangar_job SET progress = $1, metrics = $2, updated_ms = $3 WHERE id = $4 AND owner = $5 \
             AND status NOT IN {TERMINAL}"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(progress)
            .bind(metrics)
            .bind(now_ms)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_job(&self, id: i64) -> Result<Option<JobRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM hangar_job WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| job_from_row(&r)).transpose()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn job_from_row(r: &AnyRow) -> Result<JobRecord> {
    let status: String = r.try_get("status")?;
    Ok(JobRecord {
        id: r.try_get("id")?,
        exec_id: r.try_get("exec_id")?,
        submit_user: r.try_get("submit_user")?,
        execute_user: r.try_get("execute_user")?,
        creator: r.try_get("creator")?,
        status: JobStatus::from_str(&status).map_err(|e| StoreError(e.message))?,
        progress: r.try_get("progress")?,
        engine_type: r.try_get("engine_type")?,
        run_type: r.try_get("run_type")?,
        labels: r.try_get("labels")?,
        params: r.try_get("params")?,
        source: r.try_get("source")?,
        code: r.try_get("code")?,
        log_path: r.try_get("log_path")?,
        result_location: r.try_get("result_location")?,
        err_code: r.try_get("err_code")?,
        err_desc: r.try_get("err_desc")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        engine_instance: r.try_get("engine_instance")?,
        ecm_instance: r.try_get("ecm_instance")?,
        ticket_id: r.try_get("ticket_id")?,
        is_reuse: r.try_get::<Option<i64>, _>("is_reuse")?.map(|v| v != 0),
        metrics: r.try_get("metrics")?,
        owner: r.try_get("owner")?,
        kill_requested: r.try_get::<i64, _>("kill_requested")? != 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn job() -> NewJob {
        NewJob {
            submit_user: "alice".into(),
            execute_user: "alice".into(),
            creator: "IDE".into(),
            engine_type: "shell-1".into(),
            run_type: "shell".into(),
            labels: "{}".into(),
            params: "{}".into(),
            source: "{}".into(),
            code: "echo 'hi'; -- \"quoted\" ünïcode".into(),
            created_ms: 1,
            owner: "a".into(),
            lease_until: 10,
            group: "IDE_alice_shell".into(),
        }
    }

    /// Runs against SQLite always and against PostgreSQL when
    /// `HANGAR_TEST_POSTGRES_URL` is set (`.ci/run` sets it).
    async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let mut v = vec![(Store::open(&url).await.expect("sqlite"), Some(dir))];
        if let Ok(pg) = std::env::var("HANGAR_TEST_POSTGRES_URL") {
            let s = Store::open(&pg).await.expect("postgres");
            v.push((s, None));
        }
        v
    }

    #[tokio::test]
    async fn job_lifecycle_and_final_states_stick() {
        for (s, _dir) in stores().await {
            let paths = |id: i64| JobPaths {
                exec_id: format!("exec{id}"),
                log_path: format!("/l/{id}.log"),
                result_location: format!("file:///r/{id}"),
            };
            let (id, _) = s.insert_job(&job(), paths).await.expect("insert");
            assert!(id > 0);
            let j = s.get_job(id).await.expect("get").expect("some");
            assert_eq!(j.status, JobStatus::Inited);
            assert_eq!(
                (j.exec_id.as_str(), j.log_path.as_str()),
                (format!("exec{id}").as_str(), format!("/l/{id}.log").as_str())
            );
            assert_eq!(j.code, job().code);
            assert!(s.update_status(id, "a", JobStatus::Scheduled, Some(0.1), None, None, 2).await.expect("u"));
            let engine = EngineAssignment {
                engine_instance: "127.0.0.1:1",
                ecm_instance: "ecm",
                ticket_id: "t",
                is_reuse: true,
            };
            assert!(s.set_running(id, "a", &engine, "{\"isReuse\":true}", 3).await.expect("running"));
            assert!(
                s.update_status(id, "a", JobStatus::Failed, None, Some((30004, "engine died")), None, 4)
                    .await
                    .expect("u")
            );
            assert!(
                !s.update_status(id, "a", JobStatus::Succeed, Some(1.0), None, None, 5).await.expect("u"),
                "final is final"
            );
            let j = s.get_job(id).await.expect("get").expect("some");
            assert_eq!(j.status, JobStatus::Failed);
            assert_eq!(j.err_desc.as_deref(), Some("engine died"));
            assert_eq!(j.is_reuse, Some(true));
            assert_eq!(j.metrics, "{\"isReuse\":true}");
            assert!(!s.set_running(id, "a", &engine, "{}", 6).await.expect("running"), "an ended job is not revived");
            assert_eq!(j.updated_ms, 4);
            assert!(s.get_job(id + 1000).await.expect("get").is_none());
            assert!(s.claim_unfinished("a", 0, 100).await.expect("u").iter().all(|j| j.id != id));
        }
    }

    #[tokio::test]
    async fn material_versions_count_up_per_resource() {
        for (s, _dir) in stores().await {
            let rid = uuid_like();
            let a = "a".repeat(64);
            let b = "b".repeat(64);
            let v1 = s.add_material_version(&rid, "alice", "x.py", &a, 3, 1).await.expect("v1");
            let v2 = s.add_material_version(&rid, "alice", "x.py", &b, 4, 2).await.expect("v2");
            assert_eq!((v1.version.as_str(), v2.version.as_str()), ("v000001", "v000002"));
            let all = s.material_versions(&rid).await.expect("versions");
            assert_eq!(all.iter().map(|v| v.sha256.clone()).collect::<Vec<_>>(), vec![a.clone(), b.clone()]);
            assert!(
                s.materials_of("alice")
                    .await
                    .expect("of")
                    .iter()
                    .any(|v| v.resource_id == rid && v.version == "v000002")
            );
            assert!(s.blob_in_use(&a).await.expect("in use"));
            assert_eq!(s.delete_material(&rid, Some("v000001")).await.expect("del"), 1);
            assert!(!s.blob_in_use(&a).await.expect("in use"));
            // Concurrent writers all get distinct versions.
            let mut set = tokio::task::JoinSet::new();
            for i in 0..4 {
                let s = s.clone();
                let rid = rid.clone();
                let b = b.clone();
                set.spawn(async move { s.add_material_version(&rid, "alice", "x.py", &b, 4, 10 + i).await });
            }
            let mut got = Vec::new();
            while let Some(r) = set.join_next().await {
                got.push(r.expect("join").expect("insert").version);
            }
            got.sort();
            got.dedup();
            assert_eq!(got.len(), 4);
            assert_eq!(s.delete_material(&rid, None).await.expect("del"), 5);
            assert!(s.material_versions(&rid).await.expect("none").is_empty());
        }
    }

    #[tokio::test]
    async fn migrations_are_recorded_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let s = Store::open(&url).await.expect("open");
        let versions = |s: Store| async move {
            sqlx::query("SELECT version FROM hangar_schema_version ORDER BY version")
                .fetch_all(&s.pool)
                .await
                .expect("versions")
                .iter()
                .map(|r| r.try_get::<i64, _>(0).expect("v"))
                .collect::<Vec<i64>>()
        };
        let want = migrate::versions();
        assert_eq!(versions(s.clone()).await, want);
        drop(s);
        let s = Store::open(&url).await.expect("reopen");
        assert_eq!(versions(s.clone()).await, want, "nothing applied twice");
        sqlx::query("INSERT INTO hangar_schema_version (version, name, applied_ms) VALUES ($1, 'future', 0)")
            .bind(schema_version() + 1)
            .execute(&s.pool)
            .await
            .expect("future");
        drop(s);
        let Err(err) = Store::open(&url).await else { panic!("a newer schema must be refused") };
        assert!(err.0.contains("made by a newer Hangar"), "{}", err.0);
    }

    /// Several instances opening one new PostgreSQL database at once: one
    /// migrates, the others wait and find it done; every one opens.
    #[tokio::test]
    async fn instances_starting_together_migrate_a_postgres_store_once() {
        let Ok(pg) = std::env::var("HANGAR_TEST_POSTGRES_URL") else {
            eprintln!("skipped: HANGAR_TEST_POSTGRES_URL is not set (scripts/test sets it)");
            return;
        };
        let admin = Store::open(&pg).await.expect("postgres");
        let db = format!("hangar_mig_{}", uuid_like());
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&admin.pool).await.expect("create db");
        let base = pg.rsplit_once('/').map(|(b, _)| b.to_string()).expect("url with a database");
        let url = format!("{base}/{db}");
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let url = url.clone();
            set.spawn(async move { Store::open(&url).await });
        }
        let mut stores = Vec::new();
        while let Some(r) = set.join_next().await {
            stores.push(r.expect("join").expect("every instance opens"));
        }
        let rows =
            sqlx::query("SELECT version FROM hangar_schema_version").fetch_all(&stores[0].pool).await.expect("v");
        assert_eq!(rows.len(), migrate::versions().len(), "each migration recorded once");
        for s in stores {
            s.pool.close().await;
        }
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE {db}"))).execute(&admin.pool).await.expect("drop db");
    }

    fn uuid_like() -> String {
        format!("r{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("t").as_nanos())
    }
}
