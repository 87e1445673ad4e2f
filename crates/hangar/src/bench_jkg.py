# The peer baseline of `hangar bench`: Jupyter Kernel Gateway, measured the
# way the benchmark measures Hangar's Python engine. Run by `hangar bench`
# with the Python of a venv holding jupyter_kernel_gateway and
# websocket-client (scripts/bench-peers makes one).
#   cold: POST /api/kernels -> the first `pass` executed (execute_reply), a new
#         kernel each time (the gateway itself already runs, as Hangar does)
#   warm: `pass` executed on one kernel over its websocket, request -> reply
# Prints one JSON object: {"cold_ms": [...], "warm_ms": [...], "version": "..."}.
import json, os, socket, subprocess, sys, tempfile, time, urllib.request, uuid

import websocket  # websocket-client
import kernel_gateway

n_cold, n_warm = int(sys.argv[1]), int(sys.argv[2])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
base = f"http://127.0.0.1:{port}"
log = tempfile.TemporaryFile()
gw = subprocess.Popen(
    [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}"],
    stdout=log, stderr=log, stdin=subprocess.DEVNULL,
)


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read()
        return json.loads(text) if text else None


def execute(ws, session, code):
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "bench", "session": session, "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    while True:
        m = json.loads(ws.recv())
        if m.get("msg_type") == "execute_reply" and m.get("parent_header", {}).get("msg_id") == msg_id:
            return m["content"]["status"]


def kernel():
    k = call("POST", "/api/kernels", {"name": "python3"})
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{k['id']}/channels", timeout=60)
    ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return k["id"], ws


try:
    deadline = time.time() + 60
    while True:
        try:
            call("GET", "/api")
            break
        except OSError:
            if time.time() > deadline or gw.poll() is not None:
                log.seek(0)
                sys.exit(f"kernel gateway did not start: {log.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.05)
    cold = []
    for _ in range(n_cold):
        t0 = time.perf_counter()
        kid, ws = kernel()
        status = execute(ws, uuid.uuid4().hex, "pass")
        cold.append((time.perf_counter() - t0) * 1e3)
        assert status == "ok", status
        ws.close()
        call("DELETE", f"/api/kernels/{kid}")
    kid, ws = kernel()
    session = uuid.uuid4().hex
    for _ in range(5):
        execute(ws, session, "pass")
    warm = []
    for _ in range(n_warm):
        t0 = time.perf_counter()
        execute(ws, session, "pass")
        warm.append((time.perf_counter() - t0) * 1e3)
    ws.close()
    call("DELETE", f"/api/kernels/{kid}")
    print(json.dumps({"cold_ms": cold, "warm_ms": warm, "version": getattr(kernel_gateway, "__version__", "?")}))
finally:
    gw.terminate()
    try:
        gw.wait(10)
    except subprocess.TimeoutExpired:
        gw.kill()
