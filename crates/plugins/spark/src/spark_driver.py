# The Spark engine's setup for the Hangar python driver (appended to it and
# run as `_main(_spark_setup)`): the engine process owns this Python process,
# which owns the Spark driver JVM that pyspark starts.
#
# The setup line (read from the protocol channel, never from argv or the
# environment) carries:
#   {"setup": {"submit": ["--driver-memory", "1g", ...],   spark-submit options fixed at JVM start
#              "conf": {"spark.master": "local[2]", ...},  the rest, set over py4j
#              "info": {...}}}                             shown with the engine (static part)
#
# Cells: kind "python" runs PySpark code with `spark`, `sc`, `show(df)` and
# `show_table(df)` in the namespace; kind "sql" runs one Spark SQL statement
# and returns its rows as a TABLE result set (Spark's type names, NULLs kept).
# Each cell runs in its own job group; a progress thread reports completed
# over total tasks of the group's stages; an interrupt cancels the group first.

_SPARK_ROW_BATCH = 2000
_SPARK_PROGRESS_EVERY = 0.3


class _SparkSession(object):
    def __init__(self, driver, setup):
        import shlex

        self.driver = driver
        self.static_info = dict(setup.get("info") or {})
        submit = list(setup.get("submit") or [])
        os.environ["PYSPARK_SUBMIT_ARGS"] = " ".join(shlex.quote(a) for a in submit + ["pyspark-shell"])
        # The JVM inherits fds 1 and 2: its log goes to the engine's stderr
        # (the engine log), not into the cells' output.
        saved = (os.dup(1), os.dup(2))
        diag = driver.diag.fileno()
        os.dup2(diag, 1)
        os.dup2(diag, 2)
        try:
            from pyspark import SparkConf, SparkContext
            from pyspark.sql import SparkSession

            # The gateway first, without our conf: pyspark would put a conf
            # given here on the JVM's command line.
            SparkContext._ensure_initialized()
            conf = SparkConf()
            for k, v in (setup.get("conf") or {}).items():
                conf.set(k, v)
            self.sc = SparkContext(conf=conf)
            self.spark = SparkSession(self.sc)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        self.sc.setLogLevel(setup.get("log_level") or "WARN")
        # PySpark logs every failed query's JVM stack as one JSON line; the
        # job's error already says what failed.
        try:
            from pyspark.logger import PySparkLogger

            for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
                PySparkLogger.getLogger(name).disabled = True
        except Exception:
            pass
        self.group = None
        self.cell_no = 0
        self.cancel_at = None
        self.progress_stop = None
        self.progress_thread = None
        self.fixed_info = None
        self.local = True

        ns = driver.namespace
        ns["spark"] = self.spark
        ns["sc"] = self.sc
        ns["sqlContext"] = self.spark
        ns["show"] = self.show
        ns["show_table"] = self.show_table
        driver.kinds["sql"] = self.run_sql
        driver.before_cell.append(self.before_cell)
        driver.after_cell.append(self.after_cell)
        driver.on_interrupt = self.on_interrupt
        driver.info = self.info

    # --- session info ------------------------------------------------------

    def info(self):
        """What the engine shows about itself; one py4j call at most (the
        executor count of a cluster master), the rest read once."""
        if self.fixed_info is None:
            sc = self.sc
            conf = sc.getConf()
            fixed = dict(self.static_info)
            fixed["spark.version"] = sc.version
            fixed["spark.app.id"] = sc.applicationId
            fixed["spark.master"] = sc.master
            if sc.uiWebUrl:
                fixed["spark.ui.url"] = sc.uiWebUrl
            fixed["spark.executor.memory"] = conf.get("spark.executor.memory", "1g")
            fixed["spark.executor.cores"] = conf.get("spark.executor.cores", "1")
            self.local = sc.master.startswith("local")
            self.fixed_info = fixed
        out = dict(self.fixed_info)
        if self.local:
            out["spark.executors"] = "1"
        else:
            try:
                # Block managers: the driver's and one per executor.
                managers = self.sc._jsc.sc().getExecutorMemoryStatus().size()
            except Exception:
                managers = 1
            out["spark.executors"] = str(max(managers - 1, 0))
        return out

    # --- job groups, progress, cancel --------------------------------------

    def before_cell(self, req):
        self.cell_no += 1
        self.group = "linkis-spark-mix-code-%s-%d" % (req.get("task", 0), self.cell_no)
        self.cancel_at = None
        self.sc.setJobGroup(self.group, req.get("code", "")[:200], True)
        self.progress_stop = threading.Event()
        self.progress_thread = threading.Thread(
            target=self.report_progress, args=(self.group, self.progress_stop), name="hangar-progress", daemon=True
        )
        self.progress_thread.start()

    def after_cell(self, req):
        if self.progress_stop is not None:
            self.progress_stop.set()
            self.progress_thread.join(2.0)
            self.progress_stop = None
        try:
            self.sc.clearJobGroup()
        except Exception:
            pass
        self.group = None

    def report_progress(self, group, stop):
        tracker = self.sc.statusTracker()
        last, last_infos = -1.0, None
        while not stop.wait(_SPARK_PROGRESS_EVERY):
            try:
                total = done = 0
                infos = []
                for job_id in sorted(tracker.getJobIdsForGroup(group)):
                    job = tracker.getJobInfo(job_id)
                    if job is None:
                        continue
                    j_total = j_running = j_failed = j_done = 0
                    for stage_id in job.stageIds:
                        st = tracker.getStageInfo(stage_id)
                        if st is None:
                            continue
                        j_total += st.numTasks
                        j_running += st.numActiveTasks
                        j_failed += st.numFailedTasks
                        j_done += st.numCompletedTasks
                    if job.status not in ("RUNNING", "SUCCEEDED"):
                        continue
                    infos.append(
                        {
                            "id": "jobId-%d(%s)" % (job_id, group),
                            "total": j_total,
                            "running": j_running,
                            "failed": j_failed,
                            "succeed": j_done,
                        }
                    )
                    total += j_total
                    done += j_done
                if not total:
                    continue
                p = max(last, min(done / float(total), 0.99))
                if stop.is_set():
                    return
                if p != last or infos != last_infos:
                    last, last_infos = p, infos
                    self.driver.send({"t": "progress", "p": p, "info": infos})
            except Exception as e:
                self.driver.diag.write("hangar spark: progress: %s\n" % e)

    def on_interrupt(self):
        """First interrupt of a cell: cancel its job group from another thread
        (the main thread may be inside a py4j call) and let the cell end by
        itself; if it has not within 1.5 s, a later interrupt raises."""
        now = time.monotonic()
        if self.cancel_at is None:
            self.cancel_at = now
            group = self.group
            if group is not None:
                threading.Thread(target=self.cancel_group, args=(group,), name="hangar-cancel", daemon=True).start()
            return True
        return now - self.cancel_at < 1.5

    def cancel_group(self, group):
        try:
            self.sc.cancelJobGroup(group)
        except Exception as e:
            self.driver.diag.write("hangar spark: cancelling %s failed: %s\n" % (group, e))

    # --- results -------------------------------------------------------------

    def is_dataframe(self, obj):
        from pyspark.sql import DataFrame

        return isinstance(obj, DataFrame)

    def emit_df(self, df, limit=0, max_rows=0):
        from pyspark.sql import functions as F

        fields = df.schema.fields
        names, seen = [], {}
        for f in fields:
            n = f.name
            if n in seen:
                seen[n] += 1
                n = "%s_%d" % (n, seen[n])
            else:
                seen[n] = 0
            names.append(n)
        types_ = [f.dataType.simpleString() for f in fields]
        cap = 0
        if limit and limit > 0:
            cap = limit
        if max_rows and max_rows > 0:
            # One row more than kept: the engine counts it as cut.
            cap = min(cap, max_rows + 1) if cap else max_rows + 1
        if cap:
            df = df.limit(cap)
        if all(t in _SPARK_PLAIN_TYPES for t in types_):
            # Values whose Python form prints as Spark's: no second plan.
            rows = [[_spark_plain(v) for v in r] for r in df.collect()]
        else:
            # Spark's own text form of every value (dates, decimals, doubles,
            # arrays, maps); NULL stays None.
            tmp = ["c%d" % i for i in range(len(fields))]
            strings = df.toDF(*tmp).select([F.col(c).cast("string") for c in tmp])
            rows = [list(r) for r in strings.collect()]

        def batches():
            for i in range(0, len(rows), _SPARK_ROW_BATCH):
                yield rows[i : i + _SPARK_ROW_BATCH]

        self.driver.emit_table(names, types_, batches())
        return len(rows)

    def show(self, df, limit=None):
        """Show a DataFrame (or anything show_table takes) as a TABLE result set."""
        if self.is_dataframe(df):
            req = self.driver.current or {}
            self.emit_df(df, limit or 0, req.get("max_rows") or 0)
        else:
            self.driver.show_table(df)

    def show_table(self, data, columns=None):
        if self.is_dataframe(data):
            return self.show(data)
        return self.driver.show_table(data, columns)

    def run_sql(self, req):
        code = req["code"]
        try:
            df = self.spark.sql(code)
            if not df.schema.fields:
                return
            n = self.emit_df(df, req.get("limit") or 0, req.get("max_rows") or 0)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            raise CellFailure(_spark_error(e))
        sys.stderr.write("Fetched %d col(s) : %d row(s)\n" % (len(df.schema.fields), n))


_SPARK_PLAIN_TYPES = frozenset(("tinyint", "smallint", "int", "bigint", "string", "boolean"))


def _spark_plain(v):
    if v is None:
        return None
    if v is True:
        return "true"
    if v is False:
        return "false"
    return str(v)


def _spark_error(e):
    """A Spark failure in a line or few: the exception's class and message,
    without the JVM stack."""
    name = type(e).__name__
    text = str(e)
    cut = text.find("\n\tat ")
    if cut > 0:
        text = text[:cut]
    text = text.strip()
    if len(text) > 4000:
        text = text[:4000] + " ..."
    return "%s: %s" % (name, text)


def _spark_setup(driver):
    setup = driver.read_setup()
    _SparkSession(driver, setup)
