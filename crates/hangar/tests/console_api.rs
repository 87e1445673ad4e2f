//! The management console's REST against a real server with real shell
//! engines: job history filters and paging, undone jobs, resources per
//! application and per user, engine kills, an ECM's idle engines killed,
//! ECM labels and health changed, and the engine history.

mod common;

use std::time::Duration;

use common::{FAST, Server, enc};
use serde_json::{Value, json};

async fn ok(s: &Server, method: &str, path: &str, user: &str, body: Option<&str>) -> Value {
    let v = s.call(method, path, user, body).await;
    assert_eq!(v["status"], 0, "{method} {path} as {user}: {v}");
    v["data"].clone()
}

async fn refused(s: &Server, method: &str, path: &str, user: &str, body: Option<&str>) -> Value {
    let v = s.call(method, path, user, body).await;
    assert_ne!(v["status"], 0, "{method} {path} as {user} must be refused: {v}");
    v
}

async fn total(s: &Server, user: &str, query: &str) -> i64 {
    ok(s, "GET", &format!("/jobhistory/list?{query}"), user, None).await["totalPage"].as_i64().expect("totalPage")
}

fn sum(engines: &[Value], field: &str) -> u64 {
    engines.iter().map(|e| e["resource"][field].as_u64().expect("resource field")).sum()
}

/// Wait until `f` answers Some.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_history_resources_kills_and_engine_history() {
    let s = Server::start(FAST).await;
    let t0 = hangar_protocol::now_ms();
    let (e1, t1) = s.shell("alice", "echo a").await;
    assert_eq!(s.wait_done("alice", &e1).await, "Succeed");
    let (e2, _) = s.shell("alice", "exit 3").await;
    assert_eq!(s.wait_done("alice", &e2).await, "Failed");
    let nb = json!({"engineType": "shell-1", "userCreator": "alice-NB"});
    let (e3, _) = s.submit("alice", "echo nb", nb).await;
    assert_eq!(s.wait_done("alice", &e3).await, "Succeed");
    let (e4, t4) = s.shell("bob", "echo bob").await;
    assert_eq!(s.wait_done("bob", &e4).await, "Succeed");

    // Job history: each filter the console sends.
    assert_eq!(total(&s, "alice", "").await, 3);
    assert_eq!(total(&s, "alice", "status=Failed").await, 1);
    assert_eq!(total(&s, "alice", "creator=NB").await, 1);
    assert_eq!(total(&s, "alice", "runType=shell&executeApplicationName=shell").await, 3);
    assert_eq!(total(&s, "alice", "executeApplicationName=python").await, 0);
    assert_eq!(total(&s, "alice", &format!("startDate={t0}&endDate={t0}")).await, 3, "start == end: that day");
    assert_eq!(total(&s, "alice", &format!("startDate=0&endDate={t0}")).await, 0);
    let page = ok(&s, "GET", "/jobhistory/list?pageSize=1&pageNow=2", "alice", None).await;
    assert_eq!((page["totalPage"].as_i64(), page["tasks"].as_array().map(Vec::len)), (Some(3), Some(1)));
    // taskID drops every other filter, never the user.
    assert_eq!(total(&s, "alice", &format!("taskID={t1}&status=Failed&creator=NB")).await, 1);
    assert_eq!(total(&s, "alice", &format!("taskID={t4}")).await, 0, "bob's job is not alice's");
    let j1 = s.job("alice", t1).await;
    let engine = j1["engineInstance"].as_str().expect("engineInstance").to_string();
    let on_engine = ok(&s, "GET", &format!("/jobhistory/list?engineInstance={}", enc(&engine)), "alice", None).await;
    assert_eq!(on_engine["totalPage"], 2, "the IDE jobs ran on one engine: {on_engine}");
    let instance = j1["instance"].as_str().expect("the Entrance instance").to_string();
    assert_eq!(total(&s, "alice", &format!("instance={}", enc(&instance))).await, 3);
    assert_eq!(total(&s, "alice", "instance=elsewhere").await, 0);
    refused(&s, "GET", "/jobhistory/list?creator=a%27b", "alice", None).await;
    assert_eq!(total(&s, "admin", "isAdminView=true&proxyUser=bob").await, 1);
    assert_eq!(total(&s, "admin", "isAdminView=true").await, 4);
    assert_eq!(total(&s, "alice", "isAdminView=true").await, 3, "not a history admin: own jobs only");

    let g = ok(&s, "GET", "/jobhistory/governanceStationAdmin", "alice", None).await;
    assert_eq!((g["admin"].as_bool(), g["historyAdmin"].as_bool()), (Some(false), Some(false)));
    assert!(g["canResultSet"].is_boolean() && g["deptAdmin"].is_boolean() && g["errorMsgTip"].is_string());
    assert_eq!(ok(&s, "GET", "/jobhistory/governanceStationAdmin", "admin", None).await["historyAdmin"], true);

    // A running job: undone count, resources, then its engine killed the console's way.
    assert_eq!(ok(&s, "GET", "/jobhistory/listundone", "alice", None).await["totalPage"], 0);
    let (slow, _) = s.shell("alice", "sleep 30").await;
    s.wait_status("alice", &slow, &["Running"], Duration::from_secs(20)).await;
    assert_eq!(ok(&s, "GET", "/jobhistory/listundone", "alice", None).await["totalPage"], 1);
    assert_eq!(ok(&s, "GET", "/jobhistory/listundone?creator=NB", "alice", None).await["totalPage"], 0);
    assert_eq!(ok(&s, "GET", "/jobhistory/listundone", "bob", None).await["totalPage"], 0);

    let body = r#"{"userCreator":"alice-IDE"}"#;
    let apps = ok(&s, "POST", "/linkisManager/rm/applicationlist", "alice", Some(body)).await;
    let app = &apps["applications"][0];
    assert_eq!(app["creator"], "IDE", "{apps}");
    let engines = app["applicationList"]["engineInstances"].as_array().expect("engineInstances").clone();
    assert_eq!(engines.len(), 1, "one IDE engine: {apps}");
    assert_eq!(engines[0]["instance"], engine.as_str());
    assert_eq!((engines[0]["label"].as_str(), engines[0]["owner"].as_str()), (Some("shell-1"), Some("alice")));
    let used = &app["applicationList"]["usedResource"];
    assert_eq!(used["memory"].as_u64(), Some(sum(&engines, "memory")), "{apps}");
    assert_eq!(used["cores"].as_u64(), Some(sum(&engines, "cores")));
    assert_eq!(used["instance"].as_u64(), Some(1));
    let typed = r#"{"userCreator":"alice-IDE","engineType":"python"}"#;
    let none = ok(&s, "POST", "/linkisManager/rm/applicationlist", "alice", Some(typed)).await;
    assert_eq!(none["applications"][0]["applicationList"]["engineInstances"], json!([]));
    refused(&s, "POST", "/linkisManager/rm/applicationlist", "alice", Some(r#"{"userCreator":"bob-IDE"}"#)).await;

    let all = ok(&s, "GET", "/linkisManager/rm/allUserResource?username=alice", "admin", None).await;
    assert_eq!(all["total"], 2, "alice-IDE and alice-NB: {all}");
    let ide = all["resources"].as_array().expect("resources").iter().find(|r| r["creator"] == "IDE").expect("IDE");
    assert_eq!((ide["username"].as_str(), ide["engineTypeWithVersion"].as_str()), (Some("alice"), Some("shell-1")));
    assert_eq!(ide["usedResource"], *used, "the same numbers as applicationlist");
    assert_eq!(ide["resourceType"], "LoadInstance");
    assert!(ide["leftResource"]["memory"].is_u64() && ide["loadResourceStatus"].is_string());
    let paged = ok(&s, "GET", "/linkisManager/rm/allUserResource?page=2&size=2", "admin", None).await;
    assert_eq!((paged["total"].as_u64(), paged["resources"].as_array().map(Vec::len)), (Some(3), Some(1)));
    refused(&s, "GET", "/linkisManager/rm/allUserResource", "alice", None).await;
    let types = ok(&s, "GET", "/linkisManager/rm/engineType", "alice", None).await;
    assert!(types["engineType"].as_array().expect("engineType").contains(&json!("shell")), "{types}");

    // The ECM's engines, filtered.
    let ems = ok(&s, "GET", "/linkisManager/listAllEMs", "admin", None).await;
    let ecm = ems["EMs"][0]["instance"].as_str().expect("ECM").to_string();
    let by_owner = json!({"em": {"serviceInstance": {"applicationName": "linkis-cg-engineconnmanager", "instance": ecm}},
        "owner": "alice"});
    let listed = ok(&s, "POST", "/linkisManager/listEMEngines", "admin", Some(&by_owner.to_string())).await;
    assert_eq!(listed["engines"].as_array().map(Vec::len), Some(2), "alice's two engines: {listed}");
    let by_status = json!({"emInstance": ecm, "nodeStatus": "Busy"});
    let busy = ok(&s, "POST", "/linkisManager/listEMEngines", "admin", Some(&by_status.to_string())).await;
    assert!(busy["engines"].as_array().expect("engines").iter().all(|e| e["nodeStatus"] == "Busy"), "{busy}");

    // enginekill with the console's `engineType` key: owner or admin only.
    let kill = json!([{"engineType": "linkis-cg-engineconn", "engineInstance": engine}]).to_string();
    refused(&s, "POST", "/linkisManager/rm/enginekill", "bob", Some(&kill)).await;
    let killed = ok(&s, "POST", "/linkisManager/rm/enginekill", "alice", Some(&kill)).await;
    assert_eq!(killed["killed"], json!([engine]));
    let end = s.wait_done("alice", &slow).await;
    assert_ne!(end, "Succeed");

    // The engine history lists it once it ended.
    let q = format!("/linkisManager/ecinfo/ecrHistoryList?instance={}", enc(&engine));
    let rec = eventually("the killed engine in the engine history", async || {
        let h = ok(&s, "GET", &q, "alice", None).await;
        (h["totalPage"] == 1).then(|| h["engineList"][0].clone())
    })
    .await;
    assert_eq!((rec["createUser"].as_str(), rec["serviceInstance"].as_str()), (Some("alice"), Some(engine.as_str())));
    assert_eq!((rec["engineType"].as_str(), rec["status"].as_str()), (Some("shell"), Some("Failed")));
    assert_eq!(
        (rec["labelValue"].as_str(), rec["ecmInstance"].as_str()),
        (Some("alice-IDE,shell-1"), Some(ecm.as_str()))
    );
    let res: Value = serde_json::from_str(rec["usedResource"].as_str().expect("usedResource")).expect("JSON");
    assert_eq!(res["memory"].as_u64(), Some(sum(&engines, "memory")));
    assert!(rec["usedTimes"].as_i64() >= Some(1) && rec["releaseTime"].as_i64() >= rec["createTime"].as_i64());
    assert!(rec["ticketId"].is_string() && rec["logDirSuffix"].as_str().is_some_and(|d| d.contains("alice")));
    assert_eq!(ok(&s, "GET", &q, "bob", None).await["totalPage"], 0, "bob sees only his own");
    assert_eq!(ok(&s, "GET", &format!("{q}&creator=alice"), "admin", None).await["totalPage"], 1);
    assert_eq!(ok(&s, "GET", &format!("{q}&status=Success"), "alice", None).await["totalPage"], 0);
    let fmt = |ms: i64| {
        use chrono::TimeZone;
        chrono::Local.timestamp_millis_opt(ms).single().expect("time").format("%Y-%m-%d %H:%M:%S").to_string()
    };
    let now = hangar_protocol::now_ms();
    let window = format!("{q}&startDate={}&endDate={}", enc(&fmt(t0 - 1000)), enc(&fmt(now)));
    assert_eq!(ok(&s, "GET", &window, "alice", None).await["totalPage"], 1);
    let before = format!("{q}&endDate={}", enc(&fmt(t0 - 60_000)));
    assert_eq!(ok(&s, "GET", &before, "alice", None).await["totalPage"], 0);
    refused(&s, "GET", &format!("{q}&startDate=yesterday"), "alice", None).await;

    // The ECM's idle engines: alice-NB's and bob's.
    let body = json!({"instance": ecm}).to_string();
    refused(&s, "POST", "/linkisManager/rm/killUnlockEngineByEM", "alice", Some(&body)).await;
    let idle = ok(&s, "GET", "/linkisManager/listAllEngines", "admin", None).await["engines"].clone();
    let idle = idle.as_array().expect("engines").clone();
    assert_eq!(idle.len(), 2, "{idle:?}");
    let r = ok(&s, "POST", "/linkisManager/rm/killUnlockEngineByEM", "admin", Some(&body)).await;
    assert_eq!(r["result"]["killEngineNum"], 2, "{r}");
    let bytes: u64 = idle
        .iter()
        .map(|e| hangar_protocol::resource::parse_bytes(e["resource"]["memory"].as_str().expect("m")).expect("b"))
        .sum();
    assert_eq!(r["result"]["memory"].as_u64(), Some(bytes));
    assert_eq!(
        r["result"]["cores"].as_u64(),
        Some(idle.iter().map(|e| e["resource"]["cpu"].as_u64().expect("c")).sum())
    );
    assert_eq!(ok(&s, "GET", "/linkisManager/listAllEngines", "admin", None).await["engines"], json!([]));
    eventually("three ended engines recorded", async || {
        let h = ok(&s, "GET", "/linkisManager/ecinfo/ecrHistoryList", "admin", None).await;
        (h["totalPage"] == 3).then_some(())
    })
    .await;

    let states = ok(&s, "GET", "/linkisManager/listAllNodeHealthyStatus", "alice", None).await;
    assert_eq!(states["nodeStatus"].as_array().map(Vec::len), Some(9));
    let health = ok(&s, "GET", "/linkisManager/listAllECMHealthyStatus?onlyEditable=true", "admin", None).await;
    assert_eq!(health["nodeHealthy"], json!(["Healthy", "UnHealthy", "WARN", "StockAvailable", "StockUnavailable"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_em_info_relabels_the_ecm_and_an_unhealthy_one_gets_no_engine() {
    let s = Server::start(&format!("{FAST}\n[entrance]\nask_timeout_ms = 8000\n")).await;
    let ems = ok(&s, "GET", "/linkisManager/listAllEMs", "admin", None).await["EMs"].clone();
    let ecm = ems[0]["instance"].as_str().expect("ECM").to_string();
    let count = async |q: &str| {
        let v = ok(&s, "GET", &format!("/linkisManager/listAllEMs?{q}"), "admin", None).await;
        v["EMs"].as_array().map_or(0, Vec::len)
    };
    let part = &ecm[ecm.len() - 3..];
    assert_eq!(count(&format!("instance={}", enc(part))).await, 1);
    assert_eq!(count("instance=nowhere").await, 0);
    assert_eq!(count("nodeHealthy=Healthy").await, 1);
    assert_eq!(count("nodeHealthy=UnHealthy").await, 0);
    assert_eq!(count("owner=no-such-owner").await, 0);
    let owner = ems[0]["owner"].as_str().expect("owner").to_uppercase();
    assert_eq!(count(&format!("owner={}", enc(&owner))).await, 1, "owner is case-insensitive");
    refused(&s, "GET", "/linkisManager/listAllEMs", "alice", None).await;

    let modify = |v: Value| v.to_string();
    let tenant =
        modify(json!({"applicationName": "linkis-cg-engineconnmanager", "instance": ecm, "emStatus": "Healthy",
        "labels": [{"labelKey": "tenant", "stringValue": "teamA"}], "description": "team A only"}));
    refused(&s, "PUT", "/linkisManager/modifyEMInfo", "alice", Some(&tenant)).await;
    let twice = modify(json!({"instance": ecm,
        "labels": [{"labelKey": "tenant", "stringValue": "a"}, {"labelKey": "tenant", "stringValue": "b"}]}));
    let v = refused(&s, "PUT", "/linkisManager/modifyEMInfo", "admin", Some(&twice)).await;
    assert!(v["message"].as_str().is_some_and(|m| m.contains("twice")), "{v}");
    ok(&s, "PUT", "/linkisManager/modifyEMInfo", "admin", Some(&tenant)).await;
    assert_eq!(count("tenantLabel=teamA").await, 1);
    let listed = ok(&s, "GET", "/linkisManager/listAllEMs", "admin", None).await["EMs"][0].clone();
    assert_eq!(listed["description"], "team A only");
    assert!(listed["labels"].as_array().expect("labels").iter().any(|l| l["labelKey"] == "tenant"), "{listed}");

    // The manager selects ECMs by the new labels: an ask for team A lands, one without waits and fails.
    let team = json!({"engineType": "shell-1", "userCreator": "alice-IDE", "tenant": "teamA"});
    let (e1, _) = s.submit("alice", "echo team", team.clone()).await;
    assert_eq!(s.wait_done("alice", &e1).await, "Succeed");
    let (e2, _) = s.shell("alice", "echo plain").await;
    assert_eq!(s.wait_done("alice", &e2).await, "Failed");

    // UnHealthy: no new engine, and the reason says so.
    let sick = modify(json!({"instance": ecm, "emStatus": "UnHealthy", "labels": []}));
    ok(&s, "PUT", "/linkisManager/modifyEMInfo", "admin", Some(&sick)).await;
    assert_eq!(count("nodeHealthy=UnHealthy").await, 1);
    let bob = json!({"engineType": "shell-1", "userCreator": "bob-IDE"});
    let (e3, _) = s.submit("bob", "echo sick", bob.clone()).await;
    assert_eq!(s.wait_done("bob", &e3).await, "Failed");
    let log = s.full_log("bob", &e3).await;
    assert!(log.contains("UnHealthy"), "the reason names the ECM's health: {log}");
    let well = modify(json!({"instance": ecm, "emStatus": "Healthy"}));
    ok(&s, "PUT", "/linkisManager/modifyEMInfo", "admin", Some(&well)).await;
    let (e4, _) = s.submit("bob", "echo well", bob).await;
    assert_eq!(s.wait_done("bob", &e4).await, "Succeed");
    refused(&s, "PUT", "/linkisManager/modifyEMInfo", "admin", Some(&modify(json!({"instance": "nowhere:1"})))).await;
    refused(
        &s,
        "PUT",
        "/linkisManager/modifyEMInfo",
        "admin",
        Some(&modify(json!({"instance": ecm, "emStatus": "Sick"}))),
    )
    .await;
}
