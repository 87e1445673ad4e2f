//! The executor against the test PostgreSQL (`HANGAR_TEST_POSTGRES_URL`, set by scripts/test).

use std::time::Instant;

use hangar_engineconn_plugin::testing::{TaskRun as Run, TaskSpec, run_task};
use hangar_protocol::LabelSet;

use super::*;

const PASSWORD: &str = "secret-pw-123";

fn pg_url() -> String {
    std::env::var("HANGAR_TEST_POSTGRES_URL").expect(
        "HANGAR_TEST_POSTGRES_URL is not set: the jdbc engine tests need a PostgreSQL server \
         (run scripts/test, or eval \"$(scripts/pg-start DIR)\" first)",
    )
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("t").as_nanos();
    format!("{prefix}_{n:x}_{}", std::process::id())
}

struct Engine {
    exec: JdbcExecutor,
    dir: tempfile::TempDir,
    tasks: i64,
    props: BTreeMap<String, String>,
    max_rows: u64,
}

impl Engine {
    fn new(props: &[(&str, &str)]) -> Engine {
        Engine {
            exec: JdbcExecutor { startup: BTreeMap::new(), conns: Mutex::new(HashMap::new()) },
            dir: tempfile::tempdir().expect("tmp"),
            tasks: 0,
            props: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            max_rows: 100,
        }
    }

    fn postgres() -> Engine {
        let url = pg_url();
        Engine::new(&[("jdbc.url", url.as_str()), ("jdbc.username", "postgres"), ("jdbc.password", PASSWORD)])
    }

    /// Run every statement of `code` as the runtime does; cancel after `kill_after`.
    async fn run(&mut self, code: &str, kill_after: Option<Duration>) -> Run {
        self.tasks += 1;
        let spec = TaskSpec {
            task_id: self.tasks,
            properties: self.props.clone(),
            result_dir: self.dir.path().join(self.tasks.to_string()),
            max_rows: self.max_rows,
            cancel_after: kill_after,
        };
        run_task(&self.exec, spec, code).await
    }

    fn pids(&self) -> Vec<i32> {
        lock(&self.exec.conns).values().map(|c| c.pid).collect()
    }
}

#[tokio::test]
async fn rows_become_a_typed_table_and_dml_logs_counts() {
    let mut e = Engine::postgres();
    let t = unique("t_types");
    let code = format!(
        "create table {t}(id int, name text, score double precision, ok boolean, d date, big bigint, n numeric(5,2), \
         v varchar(3), c char(2), ts timestamp, b bytea, j jsonb, arr int[], s smallint, r real);\n\
         insert into {t} values (1,'a',1.5,true,'2024-01-02',9000000000,3.14,'xy','z','2024-01-02 03:04:05','\\x0102',\
         '{{\"k\": 1}}','{{1,2}}',7,0.5),(2,null,null,false,null,null,null,null,null,null,null,null,null,null,null);\n\
         select * from {t} order by id;\n\
         select * from {t} where false;\n\
         update {t} set score = 2 where id <= 2;\n\
         drop table {t}"
    );
    let r = e.run(&code, None).await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    let logs = r.logs();
    assert!(logs.contains("2 rows affected"), "{logs}");
    assert!(logs.contains("connected to") && !logs.contains(PASSWORD), "{logs}");
    let sets = r.result_sets();
    assert_eq!(sets.len(), 2, "one TABLE per row-returning statement");
    let types: Vec<&str> = sets[0].columns.iter().map(|c| c.data_type.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "int",
            "string",
            "double",
            "boolean",
            "date",
            "bigint",
            "decimal",
            "varchar",
            "char",
            "timestamp",
            "binary",
            "string",
            "array",
            "short",
            "float"
        ]
    );
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        sets[0].rows[0],
        vec![
            s("1"),
            s("a"),
            s("1.5"),
            s("true"),
            s("2024-01-02"),
            s("9000000000"),
            s("3.14"),
            s("xy"),
            s("z "),
            s("2024-01-02 03:04:05"),
            s("\\x0102"),
            s("{\"k\": 1}"),
            s("{1,2}"),
            s("7"),
            s("0.5")
        ]
    );
    let second = &sets[0].rows[1];
    assert_eq!(second[..4], [s("2"), None, None, s("false")]);
    assert!(second[4..].iter().all(Option::is_none), "{second:?}");
    // A query without rows still has its columns.
    assert_eq!(sets[1].columns.len(), 15);
    assert!(sets[1].rows.is_empty());
}

#[tokio::test]
async fn show_explain_values_and_unknown_types_are_tables() {
    let mut e = Engine::postgres();
    let r = e
        .run(
            "show server_encoding; explain select 1; values (1, 'x'); \
             select '1 day'::interval as i, 'pg_class'::regclass::oid as o, '(1,2)'::point as p, gen_random_uuid() is not null as u",
            None,
        )
        .await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    let sets = r.result_sets();
    assert_eq!(sets.len(), 4);
    assert_eq!(sets[0].rows, vec![vec![Some("UTF8".to_string())]]);
    assert_eq!(sets[0].columns[0].name, "server_encoding");
    assert!(sets[1].rows[0][0].as_deref().is_some_and(|l| l.starts_with("Result")), "{:?}", sets[1].rows);
    assert_eq!(sets[2].columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["column1", "column2"]);
    assert_eq!(sets[3].rows[0][0].as_deref(), Some("1 day"));
    assert_eq!(sets[3].rows[0][2].as_deref(), Some("(1,2)"));

    // Enums and domains resolve without a panic: an enum is a string, a domain its base type.
    let (mood, pos) = (unique("mood"), unique("pos"));
    let r = e
        .run(
            &format!(
                "create type {mood} as enum ('sad', 'ok'); create domain {pos} as int check (value > 0); \
                 select 'ok'::{mood} as m, 5::{pos} as p, array['sad'::{mood}] as a; drop type {mood}; drop domain {pos}"
            ),
            None,
        )
        .await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    let set = &r.result_sets()[0];
    assert_eq!(set.columns.iter().map(|c| c.data_type.as_str()).collect::<Vec<_>>(), ["string", "int", "array"]);
    assert_eq!(set.rows[0], vec![Some("ok".to_string()), Some("5".to_string()), Some("{sad}".to_string())]);
}

#[tokio::test]
async fn sql_errors_fail_with_the_server_message_and_the_connection_stays() {
    let mut e = Engine::postgres();
    let r = e.run("select 1; select * from nope_xyz; select 2", None).await;
    let err = r.res.clone().expect_err("fails");
    assert!(err.contains("relation \"nope_xyz\" does not exist"), "{err}");
    assert_eq!(r.result_sets().len(), 1, "the statement after the failing one did not run");
    let pids = e.pids();
    assert_eq!(pids.len(), 1);

    // A failure inside a transaction rolls it back, so later tasks work.
    let t = unique("t_tx");
    let r = e.run(&format!("create table {t}(id int); begin; insert into {t} values (1); select 1/0"), None).await;
    assert!(r.res.as_ref().expect_err("division by zero").contains("division by zero"));
    assert!(r.logs().contains("rolled back"), "{}", r.logs());
    let r = e.run(&format!("select count(*) from {t}; drop table {t}"), None).await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    assert_eq!(r.result_sets()[0].rows, vec![vec![Some("0".to_string())]]);
    assert_eq!(e.pids(), pids, "one connection serves every task");
}

#[tokio::test]
async fn kill_cancels_the_query_on_the_server_and_keeps_the_connection() {
    let mut e = Engine::postgres();
    let r = e.run("select 1", None).await;
    assert_eq!(r.res, Ok(()));
    let pids = e.pids();
    let start = Instant::now();
    let r = e.run("select pg_sleep(60)", Some(Duration::from_millis(300))).await;
    assert_eq!(r.res, Err("killed".to_string()));
    assert!(start.elapsed() < Duration::from_secs(2), "kill took {:?}", start.elapsed());
    assert!(r.logs().contains("cancelled on the server"), "{}", r.logs());
    assert_eq!(e.pids(), pids, "the connection is kept");
    let r = e.run("select 'after'", None).await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    assert_eq!(r.result_sets()[0].rows, vec![vec![Some("after".to_string())]]);
}

#[tokio::test]
async fn a_broken_connection_is_replaced() {
    let mut e = Engine::postgres();
    assert_eq!(e.run("select 1", None).await.res, Ok(()));
    let old = e.pids();
    let mut other = PgConnection::connect(&pg_url()).await.expect("connect");
    sqlx::query("select pg_terminate_backend($1)").bind(old[0]).execute(&mut other).await.expect("terminate");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = e.run("select 'again'", None).await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    assert!(r.logs().contains("reconnecting"), "{}", r.logs());
    assert_ne!(e.pids(), old);
}

#[tokio::test]
async fn rows_beyond_the_limit_are_not_stored() {
    let mut e = Engine::postgres();
    e.max_rows = 3;
    let r = e.run("select g from generate_series(1, 10) g", None).await;
    assert_eq!(r.res, Ok(()));
    assert_eq!(r.result_sets()[0].rows.len(), 3);
    assert!(r.logs().contains("10 rows fetched, 3 stored"), "{}", r.logs());
}

#[tokio::test]
async fn settings_errors_name_the_key_and_hide_the_password() {
    let mut e = Engine::new(&[]);
    let err = e.run("select 1", None).await.res.expect_err("no url");
    assert!(err.contains("jdbc.url"), "{err}");

    // Nothing listens on port 1: the error names the URL without the password.
    let mut e = Engine::new(&[("jdbc.url", "jdbc:postgresql://127.0.0.1:1/db"), ("jdbc.password", PASSWORD)]);
    let r = e.run("select 1", None).await;
    let err = r.res.clone().expect_err("refused");
    assert!(err.contains("cannot connect to postgres://127.0.0.1:1/db"), "{err}");
    assert!(!err.contains(PASSWORD) && !r.logs().contains(PASSWORD));
    let mut e = Engine::new(&[("jdbc.url", "postgres://u:url-pw-77@127.0.0.1:1/db")]);
    let r = e.run("select 1", None).await;
    let err = r.res.clone().expect_err("refused");
    assert!(err.contains("postgres://u:***@127.0.0.1:1/db") && !err.contains("url-pw-77"), "{err}");
    assert!(!r.logs().contains("url-pw-77"));
}

#[tokio::test]
async fn the_plugin_checks_startup_settings_and_run_types() {
    let ctx = |options: &[(&str, &str)]| EngineCreationContext {
        user: "alice".into(),
        ticket_id: "t-1".into(),
        labels: LabelSet::default(),
        options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        work_dir: std::env::temp_dir(),
    };
    let session = JdbcPlugin.create_engine_conn(&ctx(&[])).await.expect("lazy session");
    for rt in ["jdbc", "sql", "psql"] {
        assert!(session.executor(rt).is_ok());
    }
    assert!(session.executor("python").is_err());
    let Err(err) = JdbcPlugin.create_engine_conn(&ctx(&[("jdbc.url", "jdbc:mysql://h/db")])).await else {
        panic!("a mysql URL is refused at start-up")
    };
    assert!(err.message.contains("jdbc.url"), "{err:?}");
    assert_eq!(JdbcPlugin.default_labels().get("engineType"), Some("jdbc-4"));
}

#[tokio::test]
async fn function_bodies_with_semicolons_run_whole() {
    let mut e = Engine::postgres();
    let f = unique("f_answer");
    let code = format!(
        "create function {f}() returns int language plpgsql as $$\nbegin\n  perform 1;\n  return 41 + 1;\nend $$;\n\
         do $body$ begin perform {f}(); end $body$;\n\
         select {f}() as answer;\n\
         drop function {f}()"
    );
    let r = e.run(&code, None).await;
    assert_eq!(r.res, Ok(()), "{}", r.logs());
    assert_eq!(r.result_sets()[0].rows, vec![vec![Some("42".to_string())]]);
}
