//! The JDBC engine (`engineType=jdbc-4`, `codeType=jdbc`, `sql` or `psql`):
//! SQL against PostgreSQL. A task's code is split into statements; each runs on
//! a connection the engine keeps per database URL and user, reused by later
//! tasks and replaced when it broke.
//!
//! Where to connect comes from the task's runtime parameters `jdbc.url`,
//! `jdbc.username`, `jdbc.password` (or `jdbc.datasource=NAME`), else from the
//! same keys in the engine's startup options (see [`settings`]).
//!
//! Statements are split by `split_sql`, with PostgreSQL's dollar-quoted
//! bodies (`$$ ... $$`) kept whole. Each statement is first described (Parse/Describe, nothing runs), then run
//! through the simple query protocol, so PostgreSQL renders every value as
//! text. A statement with result columns becomes a TABLE result set (Linkis
//! type names, NULL cells as NULL, rows streamed up to the engine's row
//! limit); any other statement logs `N rows affected`. A SQL error fails the
//! task with the server's message. A kill cancels the running statement on the
//! server (`pg_cancel_backend` from a second, short connection) and keeps the
//! connection. Passwords are masked in every message the engine produces.

pub mod settings;
pub mod split;
pub mod types;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use hangar_engineconn_plugin::{
    EngineConnBuildRequest, EngineConnLaunchRequest, EngineConnPlugin, EngineConnSession, EngineCreationContext,
    EngineResourceRequest, ExecutionContext, Executor, ResultSetWriter, executor_for, resource_from,
};
use hangar_protocol::dolphin::Column;
use hangar_protocol::{ErrorCode, HangarError, Resource};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgTypeInfo};
use sqlx::{AssertSqlSafe, Column as _, Connection, Either, Executor as _, Row, SqlSafeStr, Statement as _};

pub use settings::Target;

pub use hangar_engineconn_plugin::REQUIRED_ENV_KEY;

const RUN_TYPES: &[&str] = &["jdbc", "sql", "psql"];
/// How long connecting (and a health check) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cancelled statement may take to stop before its connection is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// SQLSTATE of "current transaction is aborted".
const IN_FAILED_TRANSACTION: &str = "25P02";

/// The JDBC EngineConnPlugin.
pub struct JdbcPlugin;

#[async_trait]
impl EngineConnPlugin for JdbcPlugin {
    fn engine_type(&self) -> &'static str {
        "jdbc"
    }

    fn versions(&self) -> &'static [&'static str] {
        &["4"]
    }

    fn run_types(&self) -> &'static [&'static str] {
        RUN_TYPES
    }

    fn create_engine_resource(&self, req: &EngineResourceRequest<'_>) -> Result<Resource, HangarError> {
        resource_from(req.properties, "256m", 1)
    }

    fn build_launch(&self, req: &EngineConnBuildRequest) -> Result<EngineConnLaunchRequest, HangarError> {
        hangar_engineconn_plugin::same_binary_launch(req)
    }

    async fn create_engine_conn(&self, ctx: &EngineCreationContext) -> Result<Arc<dyn EngineConnSession>, HangarError> {
        // Connections are opened by the first task that needs them; settings
        // given at start-up are checked now so a typo fails the start.
        let startup = &ctx.options;
        if [settings::URL_KEY, settings::DATASOURCE_KEY].iter().any(|k| startup.contains_key(*k)) {
            Target::resolve(&BTreeMap::new(), startup)
                .map_err(|e| HangarError::new(ErrorCode::EngineStartFailed, format!("jdbc engine: {e}")))?;
        }
        Ok(Arc::new(JdbcSession {
            executor: Arc::new(JdbcExecutor { startup: startup.clone(), conns: Mutex::new(HashMap::new()) }),
        }))
    }
}

struct JdbcSession {
    executor: Arc<JdbcExecutor>,
}

impl EngineConnSession for JdbcSession {
    fn executor(&self, run_type: &str) -> Result<Arc<dyn Executor>, HangarError> {
        executor_for("jdbc", RUN_TYPES, run_type, self.executor.clone())
    }
}

/// An open connection and what it was opened with.
struct Conn {
    conn: PgConnection,
    /// The server process serving it, for `pg_cancel_backend`.
    pid: i32,
    target: Target,
    opts: PgConnectOptions,
}

/// Connections are keyed by the URL without its password and the user.
type ConnKey = (String, String);

struct JdbcExecutor {
    startup: BTreeMap<String, String>,
    /// Idle connections; a running statement has taken its connection out.
    conns: Mutex<HashMap<ConnKey, Conn>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a statement failed.
struct StmtError {
    msg: String,
    /// The connection is no longer usable (I/O or protocol error, abandoned mid-result).
    broken: bool,
}

impl StmtError {
    fn sql(e: sqlx::Error) -> StmtError {
        match &e {
            sqlx::Error::Database(db) => StmtError { msg: describe_db_error(db.as_ref()), broken: false },
            _ => StmtError { msg: format!("the database connection failed: {e}"), broken: true },
        }
    }

    fn output(msg: String) -> StmtError {
        StmtError { msg, broken: true }
    }
}

/// A server error as PostgreSQL's clients show it: severity, message, detail, hint, position.
fn describe_db_error(db: &dyn sqlx::error::DatabaseError) -> String {
    let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else { return format!("ERROR: {}", db.message()) };
    let mut out = format!("ERROR: {} (SQLSTATE {})", pg.message(), pg.code());
    if let Some(d) = pg.detail() {
        out.push_str(&format!("\n  Detail: {d}"));
    }
    if let Some(h) = pg.hint() {
        out.push_str(&format!("\n  Hint: {h}"));
    }
    if let Some(sqlx::postgres::PgErrorPosition::Original(p)) = pg.position() {
        out.push_str(&format!("\n  Position: {p}"));
    }
    out
}

fn is_sqlstate(e: &sqlx::Error, code: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(code))
}

/// How a statement's run ended.
enum Ran {
    Done(Result<(), StmtError>),
    /// Killed; `None` when the statement did not stop within the grace time.
    Killed(Option<Result<(), StmtError>>, Result<bool, String>),
}

#[async_trait]
impl Executor for JdbcExecutor {
    fn split(&self, code: &str) -> Vec<String> {
        split::split_statements(code)
    }

    async fn execute(&self, ctx: &mut ExecutionContext, code: &str) -> Result<(), String> {
        let target = Target::resolve(&ctx.properties, &self.startup)?;
        let cancel = ctx.cancel_signal();
        let mut conn = tokio::select! {
            c = self.checkout(&target, ctx) => c?,
            _ = cancel.cancelled() => return Err("killed".into()),
        };
        let pid = conn.pid;
        let ran = {
            let work = run_statement(&mut conn.conn, ctx, code);
            tokio::pin!(work);
            tokio::select! {
                r = &mut work => Ran::Done(r),
                _ = cancel.cancelled() => {
                    // Wait for the cancel request too: a late one must not hit the next statement.
                    let (sent, stopped) =
                        tokio::join!(cancel_backend(&conn.opts, pid), tokio::time::timeout(CANCEL_GRACE, &mut work));
                    Ran::Killed(stopped.ok(), sent)
                }
            }
        };
        match ran {
            Ran::Done(Ok(())) => {
                self.checkin(conn);
                Ok(())
            }
            Ran::Done(Err(e)) => {
                let msg = target.scrub(&e.msg);
                if e.broken {
                    tracing::warn!(pid, "dropping the connection to {}: {msg}", target.display);
                } else {
                    self.recover(conn, ctx).await;
                }
                Err(msg)
            }
            Ran::Killed(stopped, sent) => {
                if let Err(e) = &sent {
                    ctx.warn(
                        &target.scrub(&format!("cannot cancel the statement on the server (backend pid {pid}): {e}")),
                    );
                }
                match stopped {
                    Some(Ok(())) => {
                        ctx.info(&format!("the statement had finished when it was cancelled (backend pid {pid})"));
                        self.checkin(conn);
                    }
                    Some(Err(StmtError { broken: false, .. })) => {
                        ctx.info(&format!("the statement was cancelled on the server (backend pid {pid})"));
                        self.recover(conn, ctx).await;
                    }
                    Some(Err(_)) => {}
                    None => {
                        ctx.warn(&format!(
                            "the statement did not stop within {} s of its cancel; its connection (backend pid {pid}) \
                             is closed and the backend terminated",
                            CANCEL_GRACE.as_secs()
                        ));
                        let (opts, target) = (conn.opts.clone(), target.clone());
                        drop(conn);
                        tokio::spawn(async move {
                            if let Err(e) = terminate_backend(&opts, pid).await {
                                let e = target.scrub(&e);
                                tracing::warn!(pid, "cannot terminate the backend of a cancelled statement: {e}");
                            }
                        });
                    }
                }
                Err("killed".into())
            }
        }
    }
}

impl JdbcExecutor {
    /// The idle connection for this target, checked, or a new one.
    async fn checkout(&self, target: &Target, ctx: &ExecutionContext) -> Result<Conn, String> {
        let key = (target.display.clone(), target.user());
        let cached = lock(&self.conns).remove(&key);
        if let Some(mut c) = cached {
            if c.target.credentials_match(target) {
                match tokio::time::timeout(PING_TIMEOUT, c.conn.ping()).await {
                    Ok(Ok(())) => return Ok(c),
                    Ok(Err(e)) => ctx.warn(
                        &target.scrub(&format!("the connection to {} was lost ({e}); reconnecting", target.display)),
                    ),
                    Err(_) => ctx.warn(&format!(
                        "the connection to {} did not answer within {} s; reconnecting",
                        target.display,
                        PING_TIMEOUT.as_secs()
                    )),
                }
            }
            // Credentials changed or the connection broke: close it in the background.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(PING_TIMEOUT, c.conn.close()).await;
            });
        }
        self.connect(target, ctx).await
    }

    async fn connect(&self, target: &Target, ctx: &ExecutionContext) -> Result<Conn, String> {
        let opts = target.connect_options()?;
        let user = opts.get_username().to_string();
        if !target.ignored.is_empty() {
            ctx.warn(&format!(
                "ignoring JDBC URL parameters this engine does not support: {}",
                target.ignored.join(", ")
            ));
        }
        ctx.info(&format!("connecting to {} as {user} ({})", target.display, target.origin));
        let fail = |e: String| target.scrub(&format!("cannot connect to {} as {user}: {e}", target.display));
        let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => return Err(fail(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))),
        };
        let pid = match backend_pid(&mut conn).await {
            Ok(p) => p,
            Err(e) => return Err(fail(format!("cannot read the backend pid: {e}"))),
        };
        let version = conn.server_version_num().map(|v| format!("PostgreSQL {}.{}", v / 10000, v % 10000));
        ctx.info(&format!(
            "connected to {} as {user} ({}backend pid {pid})",
            target.display,
            version.map(|v| format!("{v}, ")).unwrap_or_default()
        ));
        Ok(Conn { conn, pid, target: target.clone(), opts })
    }

    fn checkin(&self, conn: Conn) {
        let key = (conn.target.display.clone(), conn.target.user());
        lock(&self.conns).insert(key, conn);
    }

    /// After a failed or cancelled statement: roll back a transaction it
    /// aborted (or the connection would refuse every later statement), then
    /// keep the connection if it still works.
    async fn recover(&self, mut conn: Conn, ctx: &ExecutionContext) {
        let probe = tokio::time::timeout(CANCEL_GRACE, sqlx::raw_sql("SELECT 1").execute(&mut conn.conn)).await;
        let usable = match probe {
            Ok(Ok(_)) => true,
            Ok(Err(e)) if is_sqlstate(&e, IN_FAILED_TRANSACTION) => {
                let rb = tokio::time::timeout(CANCEL_GRACE, sqlx::raw_sql("ROLLBACK").execute(&mut conn.conn)).await;
                let ok = matches!(rb, Ok(Ok(_)));
                if ok {
                    ctx.warn("the open transaction was aborted by the failure and has been rolled back");
                }
                ok
            }
            Ok(Err(sqlx::Error::Database(_))) => true,
            _ => false,
        };
        if usable {
            self.checkin(conn);
        } else {
            tracing::warn!(pid = conn.pid, "dropping the connection to {}: it no longer answers", conn.target.display);
        }
    }
}

async fn backend_pid(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    let row = sqlx::raw_sql("SELECT pg_backend_pid()").fetch_one(conn).await?;
    row.try_get::<i32, _>(0)
}

/// Ask the server to cancel what `pid` runs, from a short connection of its own.
/// `Ok(true)` when the server signalled the backend.
async fn cancel_backend(opts: &PgConnectOptions, pid: i32) -> Result<bool, String> {
    signal_backend(opts, pid, "SELECT pg_cancel_backend($1)").await
}

async fn terminate_backend(opts: &PgConnectOptions, pid: i32) -> Result<bool, String> {
    signal_backend(opts, pid, "SELECT pg_terminate_backend($1)").await
}

async fn signal_backend(opts: &PgConnectOptions, pid: i32, sql: &'static str) -> Result<bool, String> {
    let run = async {
        let mut c = PgConnection::connect_with(opts).await?;
        let r = sqlx::query_scalar::<_, bool>(sql).bind(pid).persistent(false).fetch_one(&mut c).await;
        let _ = c.close().await;
        r
    };
    match tokio::time::timeout(CANCEL_GRACE, run).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CANCEL_GRACE.as_secs())),
    }
}

/// Describe, then run one statement: rows to a TABLE result set, otherwise the
/// affected row count to the log.
async fn run_statement(conn: &mut PgConnection, ctx: &mut ExecutionContext, sql: &str) -> Result<(), StmtError> {
    let columns = describe(conn, sql).await?;
    let mut stream = sqlx::raw_sql(AssertSqlSafe(sql.to_string())).fetch_many(&mut *conn);
    if columns.is_empty() {
        let mut affected = 0u64;
        while let Some(item) = stream.try_next().await.map_err(StmtError::sql)? {
            if let Either::Left(done) = item {
                affected += done.rows_affected();
            }
        }
        ctx.info(&format!("{} affected", rows(affected)));
        return Ok(());
    }
    let meta: Vec<Column> = columns
        .iter()
        .map(|(name, ty)| Column {
            name: name.clone(),
            data_type: types::linkis_type(ty).into(),
            comment: "NULL".into(),
        })
        .collect();
    let booleans: Vec<bool> = columns.iter().map(|(_, ty)| types::is_bool(ty)).collect();
    // Opened with the first row (or at the end), so a statement that fails or
    // is killed before returning anything leaves no result file behind.
    let mut writer: Option<ResultSetWriter> = None;
    let mut fetched = 0u64;
    while let Some(item) = stream.try_next().await.map_err(StmtError::sql)? {
        let Either::Right(row) = item else { continue };
        fetched += 1;
        let cells: Vec<_> =
            (0..meta.len()).map(|i| if i < row.len() { types::cell(&row, i, booleans[i]) } else { None }).collect();
        let refs: Vec<Option<&str>> = cells.iter().map(|c| c.as_deref()).collect();
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(ctx.table_writer(&meta).await.map_err(StmtError::output)?),
        };
        w.add_row(&refs).await.map_err(StmtError::output)?;
    }
    let writer = match writer {
        Some(w) => w,
        None => ctx.table_writer(&meta).await.map_err(StmtError::output)?,
    };
    let stored = writer.rows();
    writer.close().await.map_err(StmtError::output)?;
    if stored < fetched {
        ctx.info(&format!("{} fetched, {stored} stored", rows(fetched)));
    } else {
        ctx.info(&format!("{} fetched", rows(fetched)));
    }
    Ok(())
}

fn rows(n: u64) -> String {
    if n == 1 { "1 row".into() } else { format!("{n} rows") }
}

/// The result columns of a statement, from Parse/Describe without running it.
/// The prepared statement is closed at once: a cached description would go
/// stale when a table changes.
async fn describe(conn: &mut PgConnection, sql: &str) -> Result<Vec<(String, PgTypeInfo)>, StmtError> {
    let prepared = conn.prepare(AssertSqlSafe(sql.to_string()).into_sql_str()).await;
    let closed = conn.clear_cached_statements().await;
    let stmt = prepared.map_err(StmtError::sql)?;
    closed.map_err(StmtError::sql)?;
    Ok(stmt.columns().iter().map(|c| (c.name().to_string(), c.type_info().clone())).collect())
}

#[cfg(test)]
mod tests;
