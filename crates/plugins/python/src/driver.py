# The Hangar python driver, run by the python engine (and the engines built on
# it, Spark) as
#     python3 -u -c "<this file>\n<program>" <extra sys.path entries, os.pathsep-separated>
# where <program> ends by calling `_main(setup)`: `_main()` for plain Python.
#
# Protocol, one JSON object per line:
#   engine -> driver, on the original stdin:
#       {"setup": {...}}   once, first, only when the program's setup reads it (read_setup)
#       {"code": "...", "kind": "python", "task": 7, "max_rows": 5000, ...}   one per cell
#   driver -> engine, on the original stdout: {"t":"ready","info":{...}} once at start
#     (or {"t":"done","ok":false,"error":...} when the setup failed), then per cell any number of
#       {"t":"out","s":line}   a line the cell wrote to stdout
#       {"t":"err","s":line}   a line the cell wrote to stderr
#       {"t":"table","columns":[{"name":..,"type":..}],"rows":[[str or null, ...]],"more":false}
#       {"t":"rows","rows":[...],"more":bool}   further rows of a table sent with "more": true
#       {"t":"progress","p":0.4,"info":[{"id":..,"total":..,"running":..,"failed":..,"succeed":..}]}
#     and last one of
#       {"t":"done","ok":true,"info":{...}}
#       {"t":"done","ok":false,"error":"<traceback>"}
#       {"t":"done","cancelled":true}            (SIGINT -> KeyboardInterrupt)
#
# User code never touches the protocol channels: they are private duplicates of
# fds 0 and 1. Fd 0 becomes /dev/null; fds 1 and 2 become pipes read by threads
# of this driver that turn every line into an out/err message, so output of
# subprocesses and C extensions is captured and streamed too. All cells run in
# one persistent namespace, the `__main__` module.

import ast
import builtins
import io
import json
import linecache
import os
import signal
import sys
import threading
import time
import traceback
import types

_DRIVER_GLOBALS = globals()
_SYNC_TIMEOUT = 5.0


def _is_null(v):
    if v is None:
        return True
    if type(v).__name__ in ("NAType", "NaTType"):
        return True
    if isinstance(v, float):
        return v != v
    return False


def _kind_of(v):
    """The Linkis type name of one value."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "double"
    kind = getattr(getattr(v, "dtype", None), "kind", None)  # numpy scalars
    if kind == "b":
        return "boolean"
    if kind in ("i", "u"):
        return "int"
    if kind == "f":
        return "double"
    return "string"


def _infer(values):
    kind = None
    for v in values:
        if _is_null(v):
            continue
        k = _kind_of(v)
        if kind is None:
            kind = k
        elif kind != k:
            if set((kind, k)) == set(("int", "double")):
                kind = "double"
            else:
                return "string"
    return kind or "string"


def _cell(v, kind):
    if _is_null(v):
        return None
    if kind == "boolean" or isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


def _tabulate(data, columns=None):
    """(names, types, rows of str-or-None) of a table given as rows, dicts, a
    {column: values} dict or a DataFrame (duck-typed: .columns and .itertuples)."""
    given = [str(c) for c in columns] if columns is not None else []
    dtype_kinds = []
    if hasattr(data, "columns") and hasattr(data, "itertuples"):
        names = [str(c) for c in data.columns]
        rows = [list(r) for r in data.itertuples(index=False, name=None)]
        try:
            dtype_kinds = [getattr(t, "kind", None) for t in list(data.dtypes)]
        except Exception:
            dtype_kinds = []
        names = given + names[len(given):]
    elif isinstance(data, dict):
        names = [str(k) for k in data]
        cols = [list(v) for v in data.values()]
        n = max([len(c) for c in cols] or [0])
        rows = [[c[i] if i < len(c) else None for c in cols] for i in range(n)]
        names = given + names[len(given):]
    else:
        if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
            raise TypeError(
                "show_table() takes a list of rows, a list of dicts, a dict of columns or a DataFrame, not %s"
                % type(data).__name__
            )
        items = list(data)
        if items and all(isinstance(r, dict) for r in items):
            if given:
                keys = list(given)
            else:
                keys = []
                seen = set()
                for r in items:
                    for k in r:
                        if k not in seen:
                            seen.add(k)
                            keys.append(k)
            rows = [[r.get(k) for k in keys] for r in items]
            names = [str(k) for k in keys]
        else:
            rows = []
            for r in items:
                if isinstance(r, (str, bytes, dict)) or not hasattr(r, "__iter__"):
                    rows.append([r])
                else:
                    rows.append(list(r))
            names = list(given)
    width = max([len(names)] + [len(r) for r in rows])
    names = names + ["col_%d" % (i + 1) for i in range(len(names), width)]
    rows = [r + [None] * (width - len(r)) for r in rows]
    types_ = []
    for i in range(width):
        kind = dtype_kinds[i] if i < len(dtype_kinds) else None
        if kind == "b":
            types_.append("boolean")
        elif kind in ("i", "u"):
            types_.append("int")
        elif kind == "f":
            types_.append("double")
        else:
            types_.append(_infer(r[i] for r in rows))
    cells = [[_cell(v, types_[i]) for i, v in enumerate(r)] for r in rows]
    return names, types_, cells


class CellFailure(Exception):
    """A cell failed with a message that says it all (no traceback shown)."""


class _Driver(object):
    def __init__(self, extra_paths):
        # Cell kinds and their handlers (a request dict each); a setup adds more.
        self.kinds = {"python": self.run_python}
        # Called around every cell with its request (a setup's job groups, progress).
        self.before_cell = []
        self.after_cell = []
        # A setup's say on an interrupt: True when it handled it (no KeyboardInterrupt yet).
        self.on_interrupt = None
        # What the session says about itself, in `ready` and after each cell.
        self.info = None
        # The request of the cell running now.
        self.current = None
        self.send_lock = threading.Lock()
        self.in_cell = False
        self.emitting = False
        self.pending = False
        self.cells = 0
        self.marker = ("\x00hangar-sync-%s-" % os.urandom(8).hex()).encode("ascii")
        self.sync_cond = threading.Condition()
        self.sync_sent = 0
        self.sync_seen = {1: 0, 2: 0}

        # The protocol channels, private to the driver.
        self.proto_in = os.dup(0)
        self.proto_out = os.dup(1)
        # The interpreter's real stderr: driver diagnostics and fatal errors.
        self.diag = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
        try:
            import faulthandler

            faulthandler.enable(file=self.diag)
        except Exception:
            pass

        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, kind in ((1, "out"), (2, "err")):
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            threading.Thread(target=self.pump, args=(r, fd, kind), name="hangar-" + kind, daemon=True).start()
        threading.Thread(target=self.watch_parent, name="hangar-parent", daemon=True).start()

        self.stdin = io.open(0, "r", encoding="utf-8", closefd=False)
        self.stdout = io.open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        self.stderr = io.open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        self.reset_streams()

        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        main.__dict__["show_table"] = self.show_table
        sys.modules["__main__"] = main
        self.namespace = main.__dict__
        sys.argv = [""]
        sys.path[0:0] = [p for p in extra_paths.split(os.pathsep) if p]
        signal.signal(signal.SIGINT, self.on_sigint)

    def reset_streams(self):
        sys.stdin = sys.__stdin__ = self.stdin
        sys.stdout = sys.__stdout__ = self.stdout
        sys.stderr = sys.__stderr__ = self.stderr

    # --- protocol output -------------------------------------------------

    def send_many(self, msgs):
        data = "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in msgs).encode("utf-8", "replace")
        try:
            with self.send_lock:
                view = memoryview(data)
                while view:
                    n = os.write(self.proto_out, view)
                    view = view[n:]
        except OSError:
            # The engine is gone: nobody reads our answers any more.
            os._exit(75)

    def send(self, msg):
        self.send_many([msg])

    def send_from_cell(self, msg):
        """Send from user code, never torn by a KeyboardInterrupt."""
        main = threading.current_thread() is threading.main_thread()
        if main:
            self.emitting = True
        try:
            self.send(msg)
        finally:
            if main:
                self.emitting = False
        if main and self.pending and self.in_cell:
            self.pending = False
            raise KeyboardInterrupt

    def on_sigint(self, signum, frame):
        if not self.in_cell:
            return
        if self.emitting:
            self.pending = True
            return
        if self.on_interrupt is not None and self.on_interrupt():
            return
        raise KeyboardInterrupt

    # --- user output -------------------------------------------------------

    def pump(self, fd, stream, kind):
        rest = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                if rest:
                    self.send({"t": kind, "s": rest.decode("utf-8", "replace")})
                return
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            msgs = []
            for line in lines:
                i = line.find(self.marker)
                if i < 0:
                    msgs.append({"t": kind, "s": line.rstrip(b"\r").decode("utf-8", "replace")})
                    continue
                if i > 0:
                    msgs.append({"t": kind, "s": line[:i].rstrip(b"\r").decode("utf-8", "replace")})
                if msgs:
                    self.send_many(msgs)
                    msgs = []
                try:
                    seq = int(line[i + len(self.marker):])
                except ValueError:
                    continue
                with self.sync_cond:
                    self.sync_seen[stream] = max(self.sync_seen[stream], seq)
                    self.sync_cond.notify_all()
            if msgs:
                self.send_many(msgs)

    def sync(self):
        """Wait until everything written to fds 1 and 2 so far has been sent."""
        for f in (self.stdout, self.stderr):
            try:
                f.flush()
            except Exception:
                pass
        with self.sync_cond:
            self.sync_sent += 1
            seq = self.sync_sent
        data = self.marker + str(seq).encode("ascii") + b"\n"
        streams = []
        for fd in (1, 2):
            try:
                os.write(fd, data)
                streams.append(fd)
            except OSError:
                pass
        deadline = time.monotonic() + _SYNC_TIMEOUT
        with self.sync_cond:
            while any(self.sync_seen[fd] < seq for fd in streams):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.diag.write("hangar python driver: output sync timed out\n")
                    break
                self.sync_cond.wait(left)

    def watch_parent(self):
        parent = os.getppid()
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(70)

    # --- user API --------------------------------------------------------

    def show_table(self, data, columns=None):
        """Emit a TABLE result set: a list of rows (lists/tuples), a list of
        dicts, a dict of columns or a pandas DataFrame; None and NaN are NULL."""
        names, types_, rows = _tabulate(data, columns)
        self.emit_table(names, types_, [rows])

    def emit_table(self, names, types_, batches):
        """Send a TABLE result set whose rows (lists of str or None) come in
        batches (any iterable of lists of rows)."""
        columns = [{"name": n, "type": t} for n, t in zip(names, types_)]
        # Output printed before the table reaches the engine first.
        self.sync()
        self.send_from_cell({"t": "table", "columns": columns, "rows": [], "more": True})
        for rows in batches:
            if rows:
                self.send_from_cell({"t": "rows", "rows": rows, "more": True})
        self.send_from_cell({"t": "rows", "rows": [], "more": False})

    def read_setup(self):
        """The setup line the engine sends before any cell."""
        line = io.open(self.proto_in, "rb", closefd=False).readline()
        return json.loads(line.decode("utf-8"))["setup"]

    def session_info(self):
        if self.info is None:
            return None
        try:
            return {str(k): str(v) for k, v in self.info().items()}
        except Exception as e:
            self.diag.write("hangar driver: session info failed: %s\n" % e)
            return None

    # --- cells -------------------------------------------------------------

    def format_error(self, e):
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_globals is _DRIVER_GLOBALS:
            tb = tb.tb_next
        return "".join(traceback.format_exception(type(e), e, tb)).rstrip("\n")

    def run_python(self, req):
        code = req["code"]
        self.cells += 1
        name = "<cell-%d>" % self.cells
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        tree = compile(code, name, "exec", ast.PyCF_ONLY_AST, True)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, name, "exec", 0, True), self.namespace)
        if last is not None:
            value = eval(compile(last, name, "eval", 0, True), self.namespace)
            if value is not None:
                sys.displayhook(value)

    def run_cell(self, req):
        kind = req.get("kind") or "python"
        handler = self.kinds.get(kind)
        if handler is None:
            return {"t": "done", "ok": False, "error": "this engine runs no %s cells" % kind}
        self.reset_streams()
        signal.signal(signal.SIGINT, self.on_sigint)
        self.pending = False
        self.current = req
        try:
            for hook in self.before_cell:
                hook(req)
            self.in_cell = True
            try:
                handler(req)
            finally:
                self.in_cell = False
            return {"t": "done", "ok": True}
        except KeyboardInterrupt:
            self.in_cell = False
            return {"t": "done", "cancelled": True}
        except SystemExit as e:
            self.in_cell = False
            if e.code is None or e.code == 0:
                return {"t": "done", "ok": True}
            return {"t": "done", "ok": False, "error": self.format_error(e)}
        except CellFailure as e:
            self.in_cell = False
            return {"t": "done", "ok": False, "error": str(e)}
        except BaseException as e:
            self.in_cell = False
            return {"t": "done", "ok": False, "error": self.format_error(e)}
        finally:
            for hook in self.after_cell:
                try:
                    hook(req)
                except BaseException as e:
                    self.diag.write("hangar driver: after-cell hook failed: %s\n" % e)

    def serve(self):
        self.send(
            {
                "t": "ready",
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "executable": sys.executable,
                "info": self.session_info() or {},
            }
        )
        requests = io.open(self.proto_in, "rb", closefd=False)
        while True:
            line = requests.readline()
            if not line:
                return  # the engine closed our stdin: it is gone
            try:
                req = json.loads(line.decode("utf-8"))
                if not isinstance(req.get("code"), str):
                    raise TypeError("code must be a string")
            except Exception as e:
                outcome = {"t": "done", "ok": False, "error": "hangar python driver: unreadable request: %s" % e}
            else:
                try:
                    outcome = self.run_cell(req)
                except KeyboardInterrupt:
                    self.in_cell = False
                    outcome = {"t": "done", "cancelled": True}
                info = self.session_info()
                if info is not None:
                    outcome["info"] = info
            self.sync()
            self.send(outcome)


def _main(setup=None):
    """Run the driver; `setup(driver)` first prepares the session (it may add
    cell kinds, hooks and names), and a failing setup is reported instead of ready."""
    # The pump threads hand output to the protocol channel; a short switch
    # interval keeps those hand-offs from costing milliseconds each.
    sys.setswitchinterval(0.0005)
    paths = sys.argv[1] if len(sys.argv) > 1 else ""
    driver = _Driver(paths)
    if setup is not None:
        try:
            setup(driver)
        except BaseException as e:
            driver.sync()
            message = str(e) if isinstance(e, CellFailure) else driver.format_error(e)
            driver.send({"t": "done", "ok": False, "error": message})
            os._exit(1)
    driver.serve()
    os._exit(0)
