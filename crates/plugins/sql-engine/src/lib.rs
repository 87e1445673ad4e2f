//! The embedded analytical SQL engine (`engineType=datafusion-1`,
//! `codeType=sql`) on Apache DataFusion, run as its own EngineConn binary
//! (`hangar-sql-engine engineconn ...`) so the `hangar` binary never links
//! DataFusion. The light half, [`hangar_plugin_sql::SqlPlugin`], tells the
//! manager what an engine costs and the ECM how to launch this binary.
//!
//! One DataFusion `SessionContext` lives as long as the engine: tables and
//! views a job creates (`CREATE EXTERNAL TABLE`, `CREATE TABLE AS`,
//! `CREATE VIEW`) are there for the next job on the same engine. Files can be
//! queried by path too (`SELECT * FROM '/data/x.parquet'`).
//!
//! A task's code is split by `split_sql`; each statement is planned and run
//! on a runtime of its own (so a CPU-bound query never delays the engine's
//! heartbeats, status answers or kill requests), and its rows stream into one
//! TABLE result set (Linkis type names, Arrow's display format, NULL cells as
//! NULL) up to the engine's row limit. A statement without result columns
//! (DDL, `SET`) makes no result set. A kill drops the query at once; the
//! session stays usable. Memory is bounded by a pool (`hangar.sql.memory`),
//! parallelism by `hangar.sql.partitions`.

pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures_util::StreamExt;
use hangar_engineconn_plugin::code::split_sql;
use hangar_engineconn_plugin::{
    EngineConnBuildRequest, EngineConnLaunchRequest, EngineConnPlugin, EngineConnSession, EngineCreationContext,
    EngineResourceRequest, ExecutionContext, Executor, ResultSetWriter, executor_for,
};
use hangar_plugin_sql::{DEFAULT_MEMORY, MEMORY_KEY, PARTITIONS_KEY, RUN_TYPES, SqlPlugin};
use hangar_protocol::dolphin::Column;
use hangar_protocol::resource::parse_bytes;
use hangar_protocol::{ErrorCode, HangarError, Resource};
use tokio::sync::mpsc;

/// The DataFusion plugin with its engine: [`SqlPlugin`] plus sessions.
pub struct FullSqlPlugin;

#[async_trait]
impl EngineConnPlugin for FullSqlPlugin {
    fn engine_type(&self) -> &'static str {
        SqlPlugin.engine_type()
    }

    fn versions(&self) -> &'static [&'static str] {
        SqlPlugin.versions()
    }

    fn run_types(&self) -> &'static [&'static str] {
        SqlPlugin.run_types()
    }

    fn create_engine_resource(&self, req: &EngineResourceRequest<'_>) -> Result<Resource, HangarError> {
        SqlPlugin.create_engine_resource(req)
    }

    fn build_launch(&self, req: &EngineConnBuildRequest) -> Result<EngineConnLaunchRequest, HangarError> {
        SqlPlugin.build_launch(req)
    }

    async fn create_engine_conn(&self, ctx: &EngineCreationContext) -> Result<Arc<dyn EngineConnSession>, HangarError> {
        let settings = Settings::from_options(&ctx.options)
            .map_err(|e| HangarError::new(ErrorCode::EngineStartFailed, format!("datafusion engine: {e}")))?;
        let session = SqlSession::new(&settings)
            .map_err(|e| HangarError::new(ErrorCode::EngineStartFailed, format!("datafusion engine: {e}")))?;
        tracing::info!(
            memory = settings.memory,
            partitions = settings.partitions,
            threads = settings.threads,
            "DataFusion session ready"
        );
        Ok(Arc::new(session))
    }
}

/// The engine's settings from its startup options.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Memory pool limit in bytes.
    pub memory: u64,
    /// DataFusion's target partitions.
    pub partitions: usize,
    /// Worker threads of the query runtime.
    pub threads: usize,
}

impl Settings {
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<Settings, String> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let memory = options.get(MEMORY_KEY).map(String::as_str).unwrap_or(DEFAULT_MEMORY);
        let memory = parse_bytes(memory).map_err(|e| format!("startup option {MEMORY_KEY}: {}", e.message))?;
        if memory == 0 {
            return Err(format!("startup option {MEMORY_KEY} must be more than 0"));
        }
        let partitions = match options.get(PARTITIONS_KEY) {
            Some(p) => p.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("startup option {PARTITIONS_KEY} must be a whole number of at least 1, got '{p}'")
            })?,
            None => cores,
        };
        Ok(Settings { memory, partitions, threads: cores.max(1) })
    }
}

/// The engine's session: one DataFusion context for the engine's life.
pub struct SqlSession {
    executor: Arc<SqlExecutor>,
}

impl SqlSession {
    pub fn new(settings: &Settings) -> Result<SqlSession, String> {
        let memory = usize::try_from(settings.memory).unwrap_or(usize::MAX);
        let runtime_env = RuntimeEnvBuilder::new()
            .with_memory_limit(memory, 1.0)
            .build_arc()
            .map_err(|e| format!("cannot create the DataFusion runtime: {}", e.strip_backtrace()))?;
        let config = SessionConfig::new().with_target_partitions(settings.partitions).with_information_schema(true);
        let ctx = SessionContext::new_with_config_rt(config, runtime_env).enable_url_table();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads)
            .thread_name("datafusion")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the query runtime: {e}"))?;
        Ok(SqlSession { executor: Arc::new(SqlExecutor { ctx, runtime: QueryRuntime(Some(runtime)) }) })
    }

    /// The DataFusion context (for tests and embedding).
    pub fn context(&self) -> &SessionContext {
        &self.executor.ctx
    }
}

impl EngineConnSession for SqlSession {
    fn executor(&self, run_type: &str) -> Result<Arc<dyn Executor>, HangarError> {
        executor_for("datafusion", RUN_TYPES, run_type, self.executor.clone())
    }
}

/// The runtime queries run on, apart from the engine's own: a CPU-bound plan
/// keeps its threads busy, never the engine's RPC endpoint or heartbeats.
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // Dropped from async code at engine exit: do not block on running queries.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Aborts the query task when the statement ends in any way (done, failed,
/// killed, or the executor's future dropped): dropping DataFusion's stream
/// stops every partition task it spawned.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a running statement sends back to the executor.
enum Out {
    /// The statement has result columns; rows follow.
    Columns(Vec<Column>),
    /// Rows of one record batch as text.
    Rows(Vec<Vec<Option<String>>>),
    /// A statement without result columns (DDL, SET) finished.
    NoResult,
    /// All rows sent.
    Done,
    Failed(String),
}

struct SqlExecutor {
    ctx: SessionContext,
    runtime: QueryRuntime,
}

#[async_trait]
impl Executor for SqlExecutor {
    fn split(&self, code: &str) -> Vec<String> {
        split_sql(code)
    }

    async fn execute(&self, ctx: &mut ExecutionContext, code: &str) -> Result<(), String> {
        let Some(rt) = &self.runtime.0 else { return Err("the query runtime is shut down".into()) };
        let started = Instant::now();
        // A small buffer: the query runs at most a couple of batches ahead of the writer.
        let (tx, mut rx) = mpsc::channel(2);
        let mut task = AbortOnDrop(rt.spawn(run_statement(self.ctx.clone(), code.to_string(), tx)));
        let cancel = ctx.cancel_signal();
        let mut columns: Option<Vec<Column>> = None;
        let mut writer: Option<ResultSetWriter> = None;
        let mut fetched = 0u64;
        let mut at_limit = false;
        loop {
            let msg = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err("killed".into()),
                m = rx.recv() => m,
            };
            match msg {
                Some(Out::Columns(c)) => columns = Some(c),
                Some(Out::Rows(rows)) => {
                    let w = match &mut writer {
                        Some(w) => w,
                        None => {
                            let cols = columns.as_deref().unwrap_or_default();
                            writer.insert(ctx.table_writer(cols).await?)
                        }
                    };
                    for row in &rows {
                        let before = w.rows();
                        let cells: Vec<Option<&str>> = row.iter().map(|c| c.as_deref()).collect();
                        w.add_row(&cells).await?;
                        if w.rows() == before {
                            w.stop_reading();
                            at_limit = true;
                            break;
                        }
                        fetched += 1;
                    }
                    if at_limit {
                        // Stop pulling batches: the task ends when it is aborted.
                        break;
                    }
                }
                Some(Out::NoResult) => {
                    ctx.info(&format!("statement done in {}, no result set", secs(started)));
                    return Ok(());
                }
                Some(Out::Done) => break,
                Some(Out::Failed(e)) => return Err(e),
                None => {
                    // The task ended without a word: it panicked.
                    let reason = match (&mut task.0).await {
                        Err(e) if e.is_panic() => panic_message(e.into_panic()),
                        Err(e) => e.to_string(),
                        Ok(()) => "no reason given".into(),
                    };
                    return Err(format!("the query stopped unexpectedly: {reason}"));
                }
            }
        }
        drop(task);
        let writer = match writer {
            Some(w) => w,
            None => ctx.table_writer(columns.as_deref().unwrap_or_default()).await?,
        };
        writer.close().await?;
        if at_limit {
            ctx.info(&format!("{} stored in {}; the query was stopped at the row limit", rows(fetched), secs(started)));
        } else {
            ctx.info(&format!("{} fetched in {}", rows(fetched), secs(started)));
        }
        Ok(())
    }
}

/// Plan and run one statement on the query runtime, sending its rows back.
async fn run_statement(ctx: SessionContext, sql: String, tx: mpsc::Sender<Out>) {
    let last = match produce(&ctx, &sql, &tx).await {
        Ok(true) => Out::Done,
        Ok(false) => Out::NoResult,
        Err(e) => Out::Failed(e),
    };
    // The executor may be gone (killed, row limit): nothing to tell then.
    let _ = tx.send(last).await;
}

/// `Ok(true)` when the statement had result columns, `Ok(false)` when not.
async fn produce(ctx: &SessionContext, sql: &str, tx: &mpsc::Sender<Out>) -> Result<bool, String> {
    // DDL and DML run here already (CREATE ... registers the table).
    let df = ctx.sql(sql).await.map_err(df_error)?;
    if df.schema().fields().is_empty() {
        return Ok(false);
    }
    let mut stream = df.execute_stream().await.map_err(df_error)?;
    if tx.send(Out::Columns(types::columns(&stream.schema()))).await.is_err() {
        return Ok(true);
    }
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(df_error)?;
        if batch.num_rows() == 0 {
            continue;
        }
        let rows = types::rows(&batch).map_err(|e| format!("cannot render a result row as text: {e}"))?;
        if tx.send(Out::Rows(rows)).await.is_err() {
            break;
        }
    }
    Ok(true)
}

/// A DataFusion error as a person reads it (DataFusion prints SQL syntax
/// errors as Rust debug text).
fn df_error(e: DataFusionError) -> String {
    use datafusion::sql::sqlparser::parser::ParserError;
    match e.find_root() {
        DataFusionError::SQL(pe, _) => match pe.as_ref() {
            ParserError::ParserError(msg) => format!("SQL syntax error: {msg}"),
            ParserError::TokenizerError(msg) => format!("SQL syntax error: {msg}"),
            ParserError::RecursionLimitExceeded => "SQL syntax error: the query is nested too deeply".into(),
        },
        _ => e.strip_backtrace(),
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

fn secs(since: Instant) -> String {
    format!("{:.3} s", since.elapsed().as_secs_f64())
}

fn rows(n: u64) -> String {
    if n == 1 { "1 row".into() } else { format!("{n} rows") }
}

#[cfg(test)]
mod tests;
