use std::time::Instant;

use hangar_engineconn_plugin::testing::{TaskRun as Run, TaskSpec, run_task};
use hangar_engineconn_plugin::{CancelSignal, ExecutionContext, ExecutorEvent};
use hangar_protocol::dolphin;
use hangar_protocol::{ErrorCode, LabelSet};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::*;

struct Engine {
    session: Arc<dyn EngineConnSession>,
    dir: tempfile::TempDir,
    tasks: i64,
}

async fn engine_with(options: &[(&str, &str)]) -> Result<Engine, HangarError> {
    let dir = tempfile::tempdir().expect("tmp");
    let ctx = EngineCreationContext {
        user: "alice".into(),
        ticket_id: "t-1".into(),
        labels: LabelSet::default(),
        options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        work_dir: dir.path().to_path_buf(),
    };
    let session = PythonPlugin.create_engine_conn(&ctx).await?;
    Ok(Engine { session, dir, tasks: 0 })
}

async fn engine() -> Engine {
    engine_with(&[]).await.expect("python engine starts")
}

impl Engine {
    /// A context whose events a test reads while the task runs.
    fn context(&mut self) -> (ExecutionContext, mpsc::UnboundedReceiver<ExecutorEvent>, CancelSignal) {
        self.tasks += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancelSignal::default();
        let res = self.dir.path().join(format!("res-{}", self.tasks));
        let ctx = ExecutionContext::new(self.tasks, "alice".into(), BTreeMap::new(), res, 1000, tx, cancel.clone());
        (ctx, rx, cancel)
    }

    async fn run_cancel(&mut self, code: &str, cancel_after: Option<Duration>) -> Run {
        self.tasks += 1;
        let exec = self.session.executor("python").expect("executor");
        let spec = TaskSpec {
            task_id: self.tasks,
            properties: BTreeMap::new(),
            result_dir: self.dir.path().join(format!("res-{}", self.tasks)),
            max_rows: 1000,
            cancel_after,
        };
        run_task(exec.as_ref(), spec, code).await
    }

    async fn run(&mut self, code: &str) -> Run {
        self.run_cancel(code, None).await
    }
}

#[tokio::test]
async fn state_persists_across_cells() {
    let mut e = engine().await;
    let r = e.run("import math\nx = 41\ndef f():\n    return x + 1\n").await;
    assert_eq!(r.res, Ok(()));
    // A cell without output still leaves an (empty) TEXT result set.
    assert_eq!(r.result_sets().len(), 1);
    let r = e.run("print(f())\nprint(math.floor(2.5), 'two words')").await;
    assert_eq!(r.res, Ok(()));
    assert_eq!(r.text(), vec!["42", "2 two words"]);
    // The value of a last bare expression is shown, as in a REPL.
    let r = e.run("x * 2").await;
    assert_eq!(r.text(), vec!["82"]);
    assert_eq!(e.session.healthy(), Ok(()));
}

#[tokio::test]
async fn a_failing_cell_reports_its_traceback_and_the_session_lives_on() {
    let mut e = engine().await;
    let r = e.run("y = 1\nprint('before')\ndef g():\n    return 1 / 0\ng()\n").await;
    let err = r.res.clone().expect_err("fails");
    assert!(err.starts_with("Traceback (most recent call last):"), "{err}");
    assert!(err.contains("ZeroDivisionError: division by zero"), "{err}");
    assert!(err.contains("return 1 / 0"), "source lines of the cell are shown: {err}");
    assert!(!err.contains("run_cell"), "driver frames are hidden: {err}");
    assert_eq!(r.text(), vec!["before"], "output before the error is kept");

    let r = e.run("def broken(:\n  pass").await;
    let err = r.res.expect_err("syntax error");
    assert!(err.contains("SyntaxError"), "{err}");

    let r = e.run("import sys\nsys.exit(3)").await;
    assert!(r.res.expect_err("exit 3").contains("SystemExit: 3"));
    let r = e.run("print(y)").await;
    assert_eq!((r.res.clone(), r.text()), (Ok(()), vec!["1".to_string()]));
}

#[tokio::test]
async fn stderr_goes_to_the_log_while_the_cell_runs() {
    let mut e = engine().await;
    let exec = e.session.executor("py").expect("py executor");
    let (mut ctx, mut rx, _cancel) = e.context();
    let code = "import sys, time, os\nprint('warn one', file=sys.stderr)\nos.system('echo from-a-subprocess >&2')\n\
                time.sleep(1.5)\nprint('out')";
    let started = Instant::now();
    let task = tokio::spawn(async move {
        let r = exec.execute(&mut ctx, code).await;
        (r, ctx)
    });
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a log line in time");
        if let Some(ExecutorEvent::Log(l)) = ev {
            seen.push(l);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(1), "streamed, not at the end: {:?}", started.elapsed());
    assert!(seen.iter().any(|l| l.ends_with("warn one")), "{seen:?}");
    assert!(seen.iter().any(|l| l.ends_with("from-a-subprocess")), "{seen:?}");
    let (r, ctx) = task.await.expect("join");
    assert_eq!(r, Ok(()));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    drop(ctx);
}

#[tokio::test]
async fn show_table_gives_a_typed_table_with_nulls() {
    let mut e = engine().await;
    let r = e
        .run(
            "print('first')\nshow_table([[1, 'a', None, True], (2, 'b', 1.5, False)], columns=['id', 'name', 'score'])",
        )
        .await;
    assert_eq!(r.res, Ok(()));
    let sets = r.result_sets();
    assert_eq!(sets.len(), 2, "a TEXT and a TABLE result set");
    assert_eq!(sets[0].rs_type, dolphin::TEXT, "output printed before the table comes first");
    let t = &sets[1];
    assert_eq!(t.rs_type, dolphin::TABLE);
    let cols: Vec<(&str, &str)> = t.columns.iter().map(|c| (c.name.as_str(), c.data_type.as_str())).collect();
    assert_eq!(cols, vec![("id", "int"), ("name", "string"), ("score", "double"), ("col_4", "boolean")]);
    let s = |v: &str| Some(v.to_string());
    assert_eq!(t.rows, vec![vec![s("1"), s("a"), None, s("true")], vec![s("2"), s("b"), s("1.5"), s("false")]]);

    // Dicts, and a DataFrame look-alike (duck-typed, pandas is optional).
    let r = e
        .run(
            "show_table([{'k': 'x', 'v': 1}, {'k': 'y', 'w': 2.5}])\n\
             class Kind:\n    def __init__(self, k): self.kind = k\n\
             class FakeFrame:\n    columns = ['n', 'f']\n    dtypes = [Kind('i'), Kind('f')]\n\
             \x20   def itertuples(self, index=True, name='Pandas'):\n        return iter([(1, 2.0), (2, float('nan'))])\n\
             show_table(FakeFrame())",
        )
        .await;
    assert_eq!(r.res, Ok(()));
    let sets = r.result_sets();
    assert_eq!(sets.len(), 2);
    let cols: Vec<(&str, &str)> = sets[0].columns.iter().map(|c| (c.name.as_str(), c.data_type.as_str())).collect();
    assert_eq!(cols, vec![("k", "string"), ("v", "int"), ("w", "double")]);
    assert_eq!(sets[0].rows, vec![vec![s("x"), s("1"), None], vec![s("y"), None, s("2.5")]]);
    let cols: Vec<(&str, &str)> = sets[1].columns.iter().map(|c| (c.name.as_str(), c.data_type.as_str())).collect();
    assert_eq!(cols, vec![("n", "int"), ("f", "double")]);
    assert_eq!(sets[1].rows, vec![vec![s("1"), s("2.0")], vec![s("2"), None]]);

    let r = e.run("show_table(42)").await;
    assert!(r.res.expect_err("bad data").contains("TypeError: show_table() takes"));
}

#[tokio::test]
async fn kill_interrupts_the_cell_and_keeps_the_session() {
    let mut e = engine().await;
    assert_eq!(e.run("x = 'kept'").await.res, Ok(()));
    let t0 = Instant::now();
    let r = e.run_cancel("print('spinning')\nwhile True: pass", Some(Duration::from_millis(300))).await;
    assert_eq!(r.res, Err("killed".to_string()));
    assert!(t0.elapsed() < Duration::from_secs(2), "killed in {:?}", t0.elapsed());
    assert_eq!(r.text(), vec!["spinning"]);
    assert_eq!(e.session.healthy(), Ok(()));
    let r = e.run("print(x)").await;
    assert_eq!((r.res.clone(), r.text()), (Ok(()), vec!["kept".to_string()]));

    // A blocking subprocess is interrupted too.
    let t0 = Instant::now();
    let r = e
        .run_cancel("import os\nos.system('sleep 30')\nimport time\ntime.sleep(30)", Some(Duration::from_millis(300)))
        .await;
    assert_eq!(r.res, Err("killed".to_string()));
    assert!(t0.elapsed() < Duration::from_secs(2), "killed in {:?}", t0.elapsed());
    assert_eq!(e.run("print(x)").await.text(), vec!["kept".to_string()]);
}

#[tokio::test]
async fn a_cell_that_ignores_the_interrupt_costs_the_session() {
    let mut e = engine().await;
    let t0 = Instant::now();
    let code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass";
    let r = e.run_cancel(code, Some(Duration::from_millis(200))).await;
    assert_eq!(r.res, Err("killed".to_string()));
    assert!(t0.elapsed() < Duration::from_secs(4), "gave up in {:?}", t0.elapsed());
    let reason = e.session.healthy().expect_err("the session is dead");
    assert!(reason.contains("did not stop"), "{reason}");
    let r = e.run("print(1)").await;
    assert!(r.res.is_err());
}

#[tokio::test]
async fn a_dead_interpreter_fails_the_task_and_the_session() {
    let mut e = engine().await;
    let r =
        e.run("import sys, os\nprint('last words', file=sys.stderr)\nimport time\ntime.sleep(0.3)\nos._exit(3)").await;
    let err = r.res.expect_err("fails");
    assert!(err.starts_with("python interpreter exited: exit code 3"), "{err}");
    assert!(err.contains("last stderr: last words"), "{err}");
    let reason = e.session.healthy().expect_err("unhealthy");
    assert!(reason.contains("exit code 3"), "{reason}");
    let r = e.run("print(1)").await;
    assert!(r.res.expect_err("still dead").contains("exit code 3"));
}

#[tokio::test]
async fn a_killed_interpreter_is_noticed_while_idle() {
    let mut e = engine().await;
    let r = e.run("import os\nprint(os.getpid())").await;
    let pid: i32 = r.text()[0].parse().expect("pid");
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    let t0 = Instant::now();
    while e.session.healthy().is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(3), "death not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reason = e.session.healthy().expect_err("dead");
    assert!(reason.starts_with("python interpreter exited: signal 9 (SIGKILL)"), "{reason}");
}

#[tokio::test]
async fn start_options_and_start_failures() {
    let Err(err) = engine_with(&[(PYTHON_PATH_KEY, "/no/such/python")]).await else {
        panic!("a missing interpreter cannot start")
    };
    assert_eq!(err.code, ErrorCode::EngineStartFailed);
    assert!(err.message.contains("cannot start python interpreter '/no/such/python'"), "{}", err.message);
    assert!(err.message.contains("No such file"), "{}", err.message);

    // Something that runs but is not a python: the handshake fails with its reason.
    let Err(err) = engine_with(&[(LINKIS_PYTHON_VERSION_KEY, "/bin/false")]).await else {
        panic!("/bin/false is no python")
    };
    assert!(err.message.contains("'/bin/false' did not start the hangar driver"), "{}", err.message);
    assert!(err.message.contains("exit code 1"), "{}", err.message);

    // Extra module paths come first in sys.path.
    let lib = tempfile::tempdir().expect("lib");
    std::fs::write(lib.path().join("hangar_test_mod.py"), "VALUE = 'from the lib'\n").expect("module");
    let paths = format!("/nonexistent:{}", lib.path().display());
    let mut e =
        engine_with(&[(PYTHON_PATHS_KEY, &paths), (LINKIS_PYTHON_VERSION_KEY, "python3")]).await.expect("starts");
    let r = e.run("import sys, hangar_test_mod\nprint(hangar_test_mod.VALUE)\nprint(sys.path[0])").await;
    assert_eq!(r.text(), vec!["from the lib".to_string(), "/nonexistent".to_string()]);
    assert!(e.session.executor("sql").is_err());
}

#[test]
fn plugin_basics() {
    let p = PythonPlugin;
    assert_eq!(p.default_labels().engine_type().expect("label").to_string(), "python-python3");
    let props = BTreeMap::new();
    let labels = LabelSet::default();
    let req = EngineResourceRequest { user: "alice", labels: &labels, properties: &props };
    assert_eq!(p.create_engine_resource(&req).expect("resource"), Resource::new(512 << 20, 1, 1));
    let mut opts = BTreeMap::new();
    assert_eq!(python_command(&opts), "python3");
    opts.insert(LINKIS_PYTHON_VERSION_KEY.to_string(), "python2".to_string());
    assert_eq!(python_command(&opts), "python3", "a bare version name is not a path");
    opts.insert(LINKIS_PYTHON_VERSION_KEY.to_string(), "/opt/py/bin/python3".to_string());
    assert_eq!(python_command(&opts), "/opt/py/bin/python3");
    opts.insert(PYTHON_PATH_KEY.to_string(), "/usr/bin/python3".to_string());
    assert_eq!(python_command(&opts), "/usr/bin/python3");
}

#[tokio::test]
async fn logs_mention_the_interrupt() {
    let mut e = engine().await;
    let r = e.run_cancel("import time\ntime.sleep(30)", Some(Duration::from_millis(200))).await;
    assert_eq!(r.res, Err("killed".to_string()));
    assert!(r.log_lines().iter().any(|l| l.contains("KeyboardInterrupt")), "{:?}", r.log_lines());
    // A KeyboardInterrupt raised by the cell itself is an ordinary failure.
    let r = e.run("raise KeyboardInterrupt").await;
    assert_eq!(r.res, Err("KeyboardInterrupt".to_string()));
}
