"""Every documented operation, called with real data on a live server, answers
with status 0 and a body its OpenAPI schema accepts (the schemathesis run that
follows covers random and wrong input). Run by tests/openapi_contract.rs:

    python openapi_contract.py BASE_URL TOKEN LOGIN_USER LOGIN_PASSWORD
"""

import io
import sys
import time
import urllib.parse

import requests
import schemathesis

BASE, TOKEN, LOGIN_USER, LOGIN_PASSWORD = sys.argv[1:5]
API = "/api/rest_j/v1"
schema = schemathesis.openapi.from_url(f"{BASE}{API}/openapi.json")
seen = set()


def call(method, path, user="alice", template=None, ok=True, http=requests, **kw):
    """Call, check the answer against the operation's schema, return the JSON."""
    template = template or path.split("?")[0]
    op = schema[API + template][method]
    headers = {"Token-Code": TOKEN, "Token-User": user} if user else {}
    r = http.request(method, BASE + API + path, headers=headers, timeout=30, **kw)
    op.validate_response(r)
    seen.add((method, API + template))
    if r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        if ok:
            assert body["status"] == 0, f"{method} {path}: {body}"
        return body
    return r


def enc(s):
    return urllib.parse.quote(s, safe="")


def wait_done(exec_id):
    for _ in range(600):
        st = call("GET", f"/entrance/{exec_id}/status", template="/entrance/{id}/status")["data"]["status"]
        if st in ("Succeed", "Failed", "Cancelled", "Timeout"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"{exec_id} did not end")


labels = {"engineType": "shell-1", "userCreator": "alice-IDE"}
job = {"executionContent": {"code": "echo hello; printf 'a\\tb\\n1\\t2\\n'", "runType": "shell"},
       "labels": labels, "params": {"variable": {"n": 1}, "configuration": {"runtime": {"x": True}}}}
sub = call("POST", "/entrance/submit", json=job)["data"]
exec_id, task_id = sub["execID"], sub["taskID"]
assert wait_done(exec_id) == "Succeed"
legacy = {"executionCode": "echo legacy", "runType": "shell", "labels": labels}
assert wait_done(call("POST", "/entrance/execute", json=legacy)["data"]["execID"]) == "Succeed"

for p in ("status", "progress", "progressWithResource", "log"):
    call("GET", f"/entrance/{exec_id}/{p}", template=f"/entrance/{{id}}/{p}")
call("GET", f"/entrance/{exec_id}/log?fromLine=1&size=5&distinctLevel=false", template="/entrance/{id}/log")
events = call("GET", f"/entrance/{exec_id}/events", template="/entrance/{id}/events")
assert "event: end" in events.text, events.text
task = call("GET", f"/jobhistory/{task_id}/get", template="/jobhistory/{id}/get")["data"]["task"]
listed = call("GET", "/jobhistory/list?status=Succeed&pageSize=1&executeApplicationName=shell")["data"]
assert listed["totalPage"] >= 2 and len(listed["tasks"]) == 1, listed
call("GET", "/jobhistory/list?isAdminView=true&proxyUser=alice", user="admin")
tree = call("GET", f"/filesystem/getDirFileTrees?path={enc(task['resultLocation'])}")["data"]["dirFileTrees"]
assert tree["children"], tree
page = call("GET", f"/filesystem/openFile?path={enc(tree['children'][0]['path'])}&page=1&pageSize=10")
assert page["data"]["fileContent"], page
call("GET", f"/filesystem/openLog?path={enc(task['logPath'])}")

# A running job: its engine, the manager's views of it, then kills.
slow = {"executionContent": {"code": "sleep 30", "runType": "shell"}, "labels": labels}
running = call("POST", "/entrance/submit", json=slow)["data"]["execID"]
for _ in range(600):
    if call("GET", f"/entrance/{running}/status", template="/entrance/{id}/status")["data"]["status"] == "Running":
        break
    time.sleep(0.05)
engines = call("GET", "/linkisManager/listUserEngines")["data"]["engines"]
assert engines, "no engine listed"
ticket = engines[0]["ticketId"]
call("GET", "/linkisManager/listAllEngines", user="admin")
ems = call("GET", "/linkisManager/listAllEMs", user="admin")["data"]["EMs"]
call("POST", "/linkisManager/listEMEngines", user="admin",
     json={"em": {"serviceInstance": {"instance": ems[0]["instance"]}}})
call("GET", "/linkisManager/rm/userresources")
call("POST", "/linkisManager/rm/userresources", user="admin")
call("GET", "/linkisManager/rm/queueresources")
call("POST", "/linkisManager/rm/queueresources", user="admin")
call("GET", f"/linkisManager/openEngineLog?ticketId={enc(ticket)}&logType=stderr&fromLine=1&pageSize=10")
# The management console.
call("GET", "/jobhistory/listundone?creator=IDE&engineType=shell")
call("GET", "/jobhistory/governanceStationAdmin")
apps = call("POST", "/linkisManager/rm/applicationlist", json={"userCreator": "alice-IDE", "engineType": "shell"})
assert apps["data"]["applications"][0]["applicationList"]["engineInstances"], apps
call("GET", "/linkisManager/rm/allUserResource?username=alice&page=1&size=10", user="admin")
call("GET", "/linkisManager/rm/engineType")
call("GET", "/linkisManager/listAllEMs?nodeHealthy=Healthy&instance=:", user="admin")
call("PUT", "/linkisManager/modifyEMInfo", user="admin",
     json={"applicationName": "linkis-cg-engineconnmanager", "instance": ems[0]["instance"], "emStatus": "Healthy",
           "description": "contract"})
call("GET", "/linkisManager/listAllECMHealthyStatus?onlyEditable=true")
call("GET", "/linkisManager/listAllNodeHealthyStatus")
call("POST", "/linkisManager/rm/enginekill", json=[])
call(
    "POST", "/linkisManager/rm/enginekill", ok=False,
    json=[{"engineType": "linkis-cg-engineconn", "engineInstance": engines[0]["instance"]}], user="bob",
)
call("GET", f"/entrance/{running}/kill", template="/entrance/{id}/kill")
assert wait_done(running) == "Cancelled"
again = call("POST", "/entrance/submit", json=slow)["data"]["execID"]
killed = call("POST", f"/entrance/{again}/killJobs", template="/entrance/{id}/killJobs",
              json={"idList": [again, running], "taskIDList": [1]})["data"]["messages"]
assert killed[0]["status"] == 0 and killed[1]["status"] != 0, killed
call("POST", f"/entrance/{again}/kill", template="/entrance/{id}/kill", ok=False)
call("POST", "/linkisManager/killEngineConn", json={"ticketId": ticket})
call("POST", "/linkisManager/rm/killUnlockEngineByEM", user="admin", json={"instance": ems[0]["instance"]})
for _ in range(100):
    ended = call("GET", "/linkisManager/ecinfo/ecrHistoryList?pageNow=1&pageSize=5")["data"]
    if ended["totalPage"] >= 1:
        break
    time.sleep(0.05)
assert ended["engineList"], ended

# The material library.
up = call("POST", "/bml/upload", files={"file": ("a.txt", io.BytesIO(b"one"))})["data"]
rid = up["resourceId"]
call("POST", f"/bml/updateVersion?resourceId={rid}", files={"file": ("a.txt", io.BytesIO(b"two"))})
call("GET", f"/bml/getVersions?resourceId={rid}")
call("GET", "/bml/getResources")
call("GET", f"/bml/getBasic?resourceId={rid}")
assert call("GET", f"/bml/download?resourceId={rid}&version={up['version']}").content == b"one"
call("POST", "/bml/deleteVersion", json={"resourceId": rid, "version": up["version"]})
call("POST", "/bml/deleteResource", json={"resourceId": rid})
other = call("POST", "/bml/upload", files={"file": ("b.txt", io.BytesIO(b"x"))})["data"]["resourceId"]
call("POST", "/bml/deleteResources", json={"resourceIds": [other]})
call("GET", "/engineplugin/refreshAll", user="admin")
call("POST", "/engineplugin/refreshAll", user="admin")

# Parameter configuration: the tree, a save and read back, the engine types.
call("GET", "/configuration/getCategory")
call("GET", "/configuration/engineType")
call("POST", "/configuration/saveFullTree",
     json={"creator": "IDE", "engineType": "shell-1",
           "fullTree": [{"name": "Engine resources", "settings": [{"key": "hangar.engineconn.cores", "configValue": "1"}]}]})
tree = call("GET", "/configuration/getFullTreesByAppName?creator=IDE&engineType=shell&version=1")["data"]["fullTree"]
assert any(s["configValue"] == "1" for t in tree for s in t["settings"] if s["key"] == "hangar.engineconn.cores"), tree
call("GET", "/configuration/getFullTreesByAppName?creator=GlobalSettings")

# Users and sessions; then the errors every operation may answer with.
call("GET", "/user/userInfo")
assert call("POST", "/user/login", user=None, json={"userName": "alice", "password": "nope"}, ok=False)["status"] != 0
browser = requests.Session()
creds = {"userName": LOGIN_USER, "password": LOGIN_PASSWORD}
assert call("POST", "/user/login", user=None, http=browser, json=creds)["data"]["isAdmin"]
assert call("GET", "/user/userInfo", user=None, http=browser)["data"]["userName"] == LOGIN_USER
call("POST", "/user/login", user=None, http=browser, json=creds)  # already logged in
call("GET", "/user/logout", user=None, http=browser)
call("POST", "/user/logout", user=None)
assert call("GET", "/user/userInfo", user=None, ok=False)["status"] == -1
assert call("GET", f"/entrance/{exec_id}/status", user="bob", template="/entrance/{id}/status", ok=False)["status"] != 0

documented = {(m.upper(), p) for p, item in schema.raw_schema["paths"].items() for m in item}
missing = sorted(documented - seen)
assert not missing, f"not exercised with real data: {missing}"
print(f"contract: {len(seen)} operations answered with real data within their schemas")
