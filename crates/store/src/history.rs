//! Job history: a filtered, paged list of jobs, newest first (Linkis
//! `jobhistory/list`).

use hangar_protocol::JobStatus;
use sqlx::AssertSqlSafe;
use sqlx::Row;

use crate::{COLUMNS, JobRecord, Result, Store, job_from_row};

/// Indexes for listing a user's jobs by time.
pub(crate) const DDL: [&str; 2] = [
    "CREATE INDEX IF NOT EXISTS hangar_job_execute_user ON hangar_job(execute_user, id)",
    "CREATE INDEX IF NOT EXISTS hangar_job_created ON hangar_job(created_ms)",
];

/// Which jobs to list. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Jobs this user submitted or runs as; `None`: every user's.
    pub user: Option<String>,
    pub status: Option<JobStatus>,
    pub creator: Option<String>,
    /// Engine type (`shell`) or type and version (`shell-1`).
    pub engine: Option<String>,
    /// Created at or after (epoch ms).
    pub since_ms: Option<i64>,
    /// Created before (epoch ms).
    pub until_ms: Option<i64>,
    pub task_id: Option<i64>,
    /// The Entrance instance that owns (runs or queues) it.
    pub instance: Option<String>,
    /// The engine it ran on (`host:port`).
    pub engine_instance: Option<String>,
    pub run_type: Option<String>,
    /// Only jobs not in a final state.
    pub undone: bool,
    /// Only this taskID and later ones.
    pub min_task_id: Option<i64>,
    /// 1-based.
    pub page: u32,
    pub page_size: u32,
}

enum Arg {
    Text(String),
    Int(i64),
}

impl Store {
    /// How many jobs match (paging ignored).
    pub async fn count_jobs(&self, f: &JobFilter) -> Result<i64> {
        let f = JobFilter { page: 1, page_size: 1, ..f.clone() };
        Ok(self.list_jobs(&f).await?.1)
    }

    /// One page of matching jobs (newest first) and how many match in all.
    pub async fn list_jobs(&self, f: &JobFilter) -> Result<(Vec<JobRecord>, i64)> {
        let mut clauses: Vec<String> = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        let next = |a: Arg, args: &mut Vec<Arg>| {
            args.push(a);
            format!("${}", args.len())
        };
        if let Some(u) = &f.user {
            let a = next(Arg::Text(u.clone()), &mut args);
            let b = next(Arg::Text(u.clone()), &mut args);
            clauses.push(format!("(execute_user = {a} OR submit_user = {b})"));
        }
        if let Some(s) = f.status {
            clauses.push(format!("status = {}", next(Arg::Text(s.as_str().into()), &mut args)));
        }
        if let Some(c) = &f.creator {
            clauses.push(format!("creator = {}", next(Arg::Text(c.clone()), &mut args)));
        }
        if let Some(e) = &f.engine {
            let exact = next(Arg::Text(e.clone()), &mut args);
            let prefix = next(Arg::Text(format!("{}-%", e.replace(['%', '_'], ""))), &mut args);
            clauses.push(format!("(engine_type = {exact} OR engine_type LIKE {prefix})"));
        }
        if let Some(t) = f.since_ms {
            clauses.push(format!("created_ms >= {}", next(Arg::Int(t), &mut args)));
        }
        if let Some(t) = f.until_ms {
            clauses.push(format!("created_ms < {}", next(Arg::Int(t), &mut args)));
        }
        if let Some(id) = f.task_id {
            clauses.push(format!("id = {}", next(Arg::Int(id), &mut args)));
        }
        if let Some(i) = &f.instance {
            clauses.push(format!("owner = {}", next(Arg::Text(i.clone()), &mut args)));
        }
        if let Some(i) = &f.engine_instance {
            clauses.push(format!("engine_instance = {}", next(Arg::Text(i.clone()), &mut args)));
        }
        if let Some(r) = &f.run_type {
            clauses.push(format!("run_type = {}", next(Arg::Text(r.clone()), &mut args)));
        }
        if let Some(id) = f.min_task_id {
            clauses.push(format!("id >= {}", next(Arg::Int(id), &mut args)));
        }
        if f.undone {
            clauses.push(format!("status NOT IN {}", crate::TERMINAL));
        }
        let filter = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
        let bind = |sql: String, args: &[Arg]| {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for a in args {
                q = match a {
                    Arg::Text(s) => q.bind(s.clone()),
                    Arg::Int(i) => q.bind(*i),
                };
            }
            q
        };
        let total: i64 = bind(format!("SELECT COUNT(*) AS n FROM hangar_job{filter}"), &args)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let size = i64::from(f.page_size.clamp(1, 1000));
        let offset = i64::from(f.page.max(1) - 1) * size;
        let sql = format!("SELECT {COLUMNS} FROM hangar_job{filter} ORDER BY id DESC LIMIT {size} OFFSET {offset}");
        let rows = bind(sql, &args).fetch_all(&self.pool).await?;
        let jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        Ok((jobs, total))
    }
}
