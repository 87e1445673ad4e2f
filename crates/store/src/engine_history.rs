//! Engine history: one row per ended engine, with its resource, ticket,
//! ECM, user, labels, times and final status (Linkis's
//! `linkis_cg_ec_resource_info_record`, `ecinfo/ecrHistoryList`).
//!
//! Only the elected manager writes here (it is the one that ends engines);
//! a ticket is recorded once.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::{Backend, Result, Store};

/// Migration 4: the engine history table and its indexes.
pub(crate) fn ddl(backend: Backend) -> Vec<String> {
    let id = match backend {
        Backend::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "id BIGSERIAL PRIMARY KEY",
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS hangar_engine_history (
                {id},
                ticket_id TEXT NOT NULL UNIQUE,
                create_user TEXT NOT NULL,
                label_value TEXT NOT NULL,
                labels TEXT NOT NULL,
                service_instance TEXT NOT NULL,
                ecm_instance TEXT NOT NULL,
                engine_type TEXT NOT NULL,
                used_resource TEXT NOT NULL,
                request_resource TEXT NOT NULL,
                released_resource TEXT NOT NULL,
                request_times BIGINT NOT NULL,
                used_times BIGINT NOT NULL,
                release_times BIGINT NOT NULL,
                used_time_ms BIGINT,
                create_time_ms BIGINT NOT NULL,
                release_time_ms BIGINT NOT NULL,
                log_dir_suffix TEXT NOT NULL,
                status TEXT NOT NULL,
                reason TEXT NOT NULL
            )"
        ),
        "CREATE INDEX IF NOT EXISTS hangar_engine_history_user ON hangar_engine_history(create_user, create_time_ms)"
            .into(),
        "CREATE INDEX IF NOT EXISTS hangar_engine_history_created ON hangar_engine_history(create_time_ms)".into(),
    ]
}

/// An ended engine.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineRecord {
    /// Assigned by the store (0 when writing).
    pub id: i64,
    pub ticket_id: String,
    pub create_user: String,
    /// `user-creator,engineType-version`.
    pub label_value: String,
    /// JSON list of `key:value` strings.
    pub labels: String,
    /// The engine's `host:port` (empty if it never came up).
    pub service_instance: String,
    pub ecm_instance: String,
    /// The engine type without version (`shell`).
    pub engine_type: String,
    /// JSON of the resource it held (`{"memory":..,"cores":..,"instance":..}`).
    pub used_resource: String,
    pub request_resource: String,
    pub released_resource: String,
    pub request_times: i64,
    pub used_times: i64,
    pub release_times: i64,
    /// When it was first used (ready), epoch ms.
    pub used_time_ms: Option<i64>,
    pub create_time_ms: i64,
    pub release_time_ms: i64,
    /// The engine's work dir below the ECM's engine root.
    pub log_dir_suffix: String,
    /// Final NodeStatus (`Success`, `Failed`, ...).
    pub status: String,
    /// Why it ended.
    pub reason: String,
}

/// Which ended engines to list. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct EngineHistoryFilter {
    pub user: Option<String>,
    /// A substring of the engine's `host:port`.
    pub instance: Option<String>,
    pub engine_type: Option<String>,
    pub status: Option<String>,
    /// Created at or after (epoch ms).
    pub since_ms: Option<i64>,
    /// Created at or before (epoch ms).
    pub until_ms: Option<i64>,
    /// 1-based.
    pub page: u32,
    pub page_size: u32,
}

const COLUMNS: &str = "id, ticket_id, create_user, label_value, labels, service_instance, ecm_instance, engine_type, \
    used_resource, request_resource, released_resource, request_times, used_times, release_times, used_time_ms, \
    create_time_ms, release_time_ms, log_dir_suffix, status, reason";

enum Arg {
    Text(String),
    Int(i64),
}

fn like_escape(s: &str) -> String {
    s.replace(['%', '_', '\\'], "")
}

fn record_from_row(r: &AnyRow) -> Result<EngineRecord> {
    Ok(EngineRecord {
        id: r.try_get("id")?,
        ticket_id: r.try_get("ticket_id")?,
        create_user: r.try_get("create_user")?,
        label_value: r.try_get("label_value")?,
        labels: r.try_get("labels")?,
        service_instance: r.try_get("service_instance")?,
        ecm_instance: r.try_get("ecm_instance")?,
        engine_type: r.try_get("engine_type")?,
        used_resource: r.try_get("used_resource")?,
        request_resource: r.try_get("request_resource")?,
        released_resource: r.try_get("released_resource")?,
        request_times: r.try_get("request_times")?,
        used_times: r.try_get("used_times")?,
        release_times: r.try_get("release_times")?,
        used_time_ms: r.try_get("used_time_ms")?,
        create_time_ms: r.try_get("create_time_ms")?,
        release_time_ms: r.try_get("release_time_ms")?,
        log_dir_suffix: r.try_get("log_dir_suffix")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
    })
}

impl Store {
    /// Record an ended engine; a ticket recorded before is left as it was.
    pub async fn record_engine(&self, e: &EngineRecord) -> Result<()> {
        let sql = format!(
            "INSERT INTO hangar_engine_history ({}) VALUES \
             ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19) ON CONFLICT (ticket_id) DO NOTHING",
            COLUMNS.trim_start_matches("id, ")
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(e.ticket_id.clone())
            .bind(e.create_user.clone())
            .bind(e.label_value.clone())
            .bind(e.labels.clone())
            .bind(e.service_instance.clone())
            .bind(e.ecm_instance.clone())
            .bind(e.engine_type.clone())
            .bind(e.used_resource.clone())
            .bind(e.request_resource.clone())
            .bind(e.released_resource.clone())
            .bind(e.request_times)
            .bind(e.used_times)
            .bind(e.release_times)
            .bind(e.used_time_ms)
            .bind(e.create_time_ms)
            .bind(e.release_time_ms)
            .bind(e.log_dir_suffix.clone())
            .bind(e.status.clone())
            .bind(e.reason.clone())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One page of ended engines (newest first) and how many match in all.
    pub async fn list_engine_history(&self, f: &EngineHistoryFilter) -> Result<(Vec<EngineRecord>, i64)> {
        let mut clauses: Vec<String> = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        let mut push = |clause: &str, a: Arg| {
            args.push(a);
            clauses.push(clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(u) = &f.user {
            push("create_user = ?", Arg::Text(u.clone()));
        }
        if let Some(i) = &f.instance {
            push("service_instance LIKE ?", Arg::Text(format!("%{}%", like_escape(i))));
        }
        if let Some(t) = &f.engine_type {
            push("engine_type = ?", Arg::Text(t.clone()));
        }
        if let Some(s) = &f.status {
            push("status = ?", Arg::Text(s.clone()));
        }
        if let Some(t) = f.since_ms {
            push("create_time_ms >= ?", Arg::Int(t));
        }
        if let Some(t) = f.until_ms {
            push("create_time_ms <= ?", Arg::Int(t));
        }
        let filter = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
        let bind = |sql: String| {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for a in &args {
                q = match a {
                    Arg::Text(s) => q.bind(s.clone()),
                    Arg::Int(i) => q.bind(*i),
                };
            }
            q
        };
        let total: i64 = bind(format!("SELECT COUNT(*) AS n FROM hangar_engine_history{filter}"))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let size = i64::from(f.page_size.clamp(1, 1000));
        let offset = i64::from(f.page.max(1) - 1) * size;
        let sql = format!(
            "SELECT {COLUMNS} FROM hangar_engine_history{filter} ORDER BY id DESC LIMIT {size} OFFSET {offset}"
        );
        let rows = bind(sql).fetch_all(&self.pool).await?;
        let list = rows.iter().map(record_from_row).collect::<Result<Vec<_>>>()?;
        Ok((list, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ticket: &str, user: &str, instance: &str, status: &str, created: i64) -> EngineRecord {
        EngineRecord {
            ticket_id: ticket.into(),
            create_user: user.into(),
            label_value: format!("{user}-IDE,shell-1"),
            labels: "[]".into(),
            service_instance: instance.into(),
            ecm_instance: "ecm:1".into(),
            engine_type: "shell".into(),
            used_resource: "{}".into(),
            request_resource: "{}".into(),
            released_resource: "{}".into(),
            request_times: 1,
            used_times: 1,
            release_times: 1,
            used_time_ms: Some(created + 1),
            create_time_ms: created,
            release_time_ms: created + 10,
            log_dir_suffix: format!("{user}/{ticket}"),
            status: status.into(),
            reason: "idle".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn records_once_and_filters() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await.expect("open");
        s.record_engine(&rec("t1", "alice", "h:1001", "Success", 100)).await.expect("t1");
        s.record_engine(&rec("t2", "bob", "h:1002", "Failed", 200)).await.expect("t2");
        s.record_engine(&rec("t3", "alice", "h:2003", "Success", 300)).await.expect("t3");
        // Recorded once: a second end of the same ticket changes nothing.
        s.record_engine(&rec("t1", "alice", "h:9999", "Failed", 999)).await.expect("t1 again");
        let all = |f: EngineHistoryFilter| {
            let s = s.clone();
            async move { s.list_engine_history(&EngineHistoryFilter { page: 1, page_size: 20, ..f }).await }
        };
        let (v, n) = all(EngineHistoryFilter::default()).await.expect("all");
        assert_eq!((n, v.len(), v[0].ticket_id.as_str()), (3, 3, "t3"));
        let (v, n) = all(EngineHistoryFilter { user: Some("alice".into()), ..Default::default() }).await.expect("u");
        assert_eq!(n, 2);
        assert!(v.iter().all(|r| r.create_user == "alice"));
        let t1 = v.iter().find(|r| r.ticket_id == "t1").expect("t1");
        assert_eq!((t1.service_instance.as_str(), t1.status.as_str()), ("h:1001", "Success"));
        let (_, n) = all(EngineHistoryFilter { instance: Some(":100".into()), ..Default::default() }).await.expect("i");
        assert_eq!(n, 2);
        let (v, n) = all(EngineHistoryFilter { status: Some("Failed".into()), ..Default::default() }).await.expect("s");
        assert_eq!((n, v[0].ticket_id.as_str()), (1, "t2"));
        let (_, n) = all(EngineHistoryFilter { since_ms: Some(150), until_ms: Some(300), ..Default::default() })
            .await
            .expect("window");
        assert_eq!(n, 2);
        let (_, n) =
            all(EngineHistoryFilter { engine_type: Some("python".into()), ..Default::default() }).await.expect("type");
        assert_eq!(n, 0);
        let (v, n) = s
            .list_engine_history(&EngineHistoryFilter { page: 2, page_size: 2, ..Default::default() })
            .await
            .expect("page 2");
        assert_eq!((n, v.len(), v[0].ticket_id.as_str()), (3, 1, "t1"));
    }
}
