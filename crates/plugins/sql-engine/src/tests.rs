//! The executor against files in a temp dir, as the engine runtime drives it.

use std::time::{Duration, Instant};

use hangar_engineconn_plugin::testing::{TaskRun as Run, TaskSpec, run_task};
use hangar_protocol::dolphin;

use super::*;

struct Engine {
    session: SqlSession,
    dir: tempfile::TempDir,
    tasks: i64,
    max_rows: u64,
}

impl Engine {
    fn new() -> Engine {
        let settings =
            Settings::from_options(&BTreeMap::from([(PARTITIONS_KEY.to_string(), "2".to_string())])).expect("settings");
        Engine {
            session: SqlSession::new(&settings).expect("session"),
            dir: tempfile::tempdir().expect("tmp"),
            tasks: 0,
            max_rows: 100,
        }
    }

    /// Run every statement of `code` as the runtime does; cancel after `kill_after`.
    async fn run(&mut self, code: &str, kill_after: Option<Duration>) -> Run {
        self.tasks += 1;
        let exec = self.session.executor("sql").expect("executor");
        let spec = TaskSpec {
            task_id: self.tasks,
            properties: BTreeMap::new(),
            result_dir: self.dir.path().join(self.tasks.to_string()),
            max_rows: self.max_rows,
            cancel_after: kill_after,
        };
        run_task(exec.as_ref(), spec, code).await
    }

    fn csv(&self) -> String {
        let path = self.dir.path().join("people.csv");
        std::fs::write(&path, "id,name,score\n1,ann,1.5\n2,bob,\n3,cid,3\n").expect("csv");
        path.display().to_string()
    }
}

fn column_types(rs: &dolphin::ResultSet) -> Vec<(String, String)> {
    rs.columns.iter().map(|c| (c.name.clone(), c.data_type.clone())).collect()
}

fn cells(rows: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
    rows.iter().map(|r| r.iter().map(|c| c.map(str::to_string)).collect()).collect()
}

#[test]
fn settings_from_startup_options() {
    let s = Settings::from_options(&BTreeMap::new()).expect("defaults");
    assert_eq!(s.memory, 1 << 30);
    assert!(s.partitions >= 1);
    let opts = BTreeMap::from([(MEMORY_KEY.to_string(), "256m".to_string()), (PARTITIONS_KEY.to_string(), "3".into())]);
    let s = Settings::from_options(&opts).expect("set");
    assert_eq!((s.memory, s.partitions), (256 << 20, 3));
    let bad = BTreeMap::from([(PARTITIONS_KEY.to_string(), "0".to_string())]);
    assert!(Settings::from_options(&bad).expect_err("0").contains(PARTITIONS_KEY));
    let bad = BTreeMap::from([(MEMORY_KEY.to_string(), "lots".to_string())]);
    assert!(Settings::from_options(&bad).expect_err("lots").contains(MEMORY_KEY));
}

#[tokio::test]
async fn statements_on_a_csv_file_and_the_session_lives_on() {
    let mut e = Engine::new();
    let csv = e.csv();
    let code = format!(
        "CREATE EXTERNAL TABLE people STORED AS CSV LOCATION '{csv}' OPTIONS ('format.has_header' 'true');\n\
         SELECT name, score FROM people ORDER BY id"
    );
    let r = e.run(&code, None).await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    let sets = r.result_sets();
    assert_eq!(sets.len(), 1, "the DDL makes no result set: {sets:?}");
    assert_eq!(sets[0].rs_type, dolphin::TABLE);
    assert_eq!(column_types(&sets[0]), [("name".into(), "string".into()), ("score".into(), "double".into())]);
    assert_eq!(sets[0].rows, cells(&[&[Some("ann"), Some("1.5")], &[Some("bob"), None], &[Some("cid"), Some("3.0")]]));
    assert!(r.logs().contains("no result set") && r.logs().contains("3 rows fetched"), "{}", r.logs());

    // The table is still there for the next task; so are CREATE TABLE AS and views; files by path work.
    let r = e
        .run(
            &format!(
                "CREATE TABLE top AS SELECT * FROM people WHERE score > 1; CREATE VIEW v AS SELECT count(*) AS n FROM top;\
                 SELECT n FROM v; SELECT count(*) AS c FROM '{csv}'; SELECT * FROM people WHERE false"
            ),
            None,
        )
        .await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    let sets = r.result_sets();
    assert_eq!(sets.len(), 3, "{sets:?}");
    assert_eq!(
        (column_types(&sets[0]), sets[0].rows.clone()),
        (vec![("n".into(), "bigint".into())], cells(&[&[Some("2")]]))
    );
    assert_eq!(sets[1].rows, cells(&[&[Some("3")]]));
    assert_eq!((sets[2].columns.len(), sets[2].rows.len()), (3, 0), "an empty result is an empty TABLE");
}

#[tokio::test]
async fn errors_carry_datafusion_messages_and_rows_stop_at_the_limit() {
    let mut e = Engine::new();
    let r = e.run("select 1; select * from no_such_table; select 2", None).await;
    let err = r.res.clone().expect_err("fails");
    assert!(err.contains("no_such_table") && err.contains("not found"), "{err}");
    assert_eq!(r.result_sets().len(), 1, "the statement after the failure did not run");
    let r = e.run("selec 1 from", None).await;
    let err = r.res.clone().expect_err("syntax");
    assert!(err.starts_with("SQL syntax error: ") && !err.contains("ParserError("), "{err}");

    e.max_rows = 5;
    let started = Instant::now();
    let r = e.run("select value from range(100000000000)", None).await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    assert!(started.elapsed() < Duration::from_secs(10), "stopped pulling at the limit");
    assert_eq!(r.result_sets()[0].rows, cells(&[&[Some("0")], &[Some("1")], &[Some("2")], &[Some("3")], &[Some("4")]]));
    assert!(r.logs().contains("kept its first 5 rows; the rest was not read (the row limit)"), "{}", r.logs());
}

#[tokio::test]
async fn kill_stops_a_long_query_and_the_session_goes_on() {
    let mut e = Engine::new();
    let started = Instant::now();
    let r = e.run(LONG_QUERY, Some(Duration::from_millis(1500))).await;
    assert_eq!(r.res, Err("killed".into()));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_millis(2500), "killed after {took:?}");
    assert!(r.result_sets().is_empty());
    let r = e.run("select 'after' as a", None).await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    assert_eq!(r.result_sets()[0].rows, cells(&[&[Some("after")]]));
}

/// Runs for minutes: count over a cross join, with a filter so no statistic answers it.
const LONG_QUERY: &str = "select count(*) from range(1000000000) a, range(1000) b where a.value + b.value > 0";
