//! Several hosts: Linux network namespaces joined by a bridge (root only;
//! CI runs as root). The control plane runs on host 0 (with an ECM of its
//! own for the `zone=cp` label), an ECM on each of hosts 1 and 2. Jobs land
//! by labels and free resources, results and logs come back over the
//! network, a remote ECM restart re-adopts its engines, partitions heal, a
//! lost host fails its jobs naming it, and the timings are printed beside
//! the control-plane host's own.

mod common;

use std::time::{Duration, Instant};

use common::netns::Net;
use common::{ECM_TOKEN, RPC_SECRET, Server, wait_until};
use serde_json::{Value, json};

/// Heartbeats of 1 s: a host is lost after 3 s of silence. Engines beat
/// every 20 s (and on every status change), so a cut host is noticed through
/// its ECM, and after a heal its ECM (not the engine's own next heartbeat)
/// stops what was written off.
const CP: &str = r#"
[manager]
user_max_memory = "8g"
[engineconn]
heartbeat_interval_ms = 20000
orphan_timeout_ms = 60000
log_push_interval_ms = 20
running_info_interval_ms = 100
max_result_rows = 100000
[ecm]
heartbeat_interval_ms = 1000
kill_grace_ms = 1000
labels = ["zone=cp"]
memory = "4g"
"#;

struct Hosts {
    net: Net,
    cp: Server,
    ecms: Vec<Server>,
}

async fn start_ecm(net: &Net, host: usize, cp: &Server, ecm_keys: &str) -> Server {
    // Host 1 is given two control-plane URLs, the first one dead (nothing
    // listens on port 1): it, its engines and its material fetches go past it.
    let manager_url = if host == 1 { format!("http://{}:1,{}", net.addr(0), cp.base) } else { cp.base.clone() };
    let server_keys = format!("roles = \"ecm\"\nmanager_url = \"{manager_url}\"\nbind = \"{}\"", net.addr(host));
    let extra = format!("[ecm]\nheartbeat_interval_ms = 1000\nkill_grace_ms = 1000\n{ecm_keys}\n");
    Server::start_in(net.ns(host), &server_keys, &format!("ecm_token = \"{ECM_TOKEN}\""), &extra).await
}

async fn hosts(net: Net) -> Hosts {
    let auth = format!("rpc_token = \"{RPC_SECRET}\"\necm_token = \"{ECM_TOKEN}\"");
    let cp = Server::start_in(net.ns(0), &format!("bind = \"{}\"", net.addr(0)), &auth, CP).await;
    let h1 = start_ecm(&net, 1, &cp, "labels = [\"zone=a\"]\nmemory = \"4g\"").await;
    let h2 = start_ecm(&net, 2, &cp, "memory = \"2g\"").await;
    let hosts = Hosts { net, cp, ecms: vec![h1, h2] };
    wait_ecm_count(&hosts.cp, 3).await;
    hosts
}

fn inst(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_string()
}

async fn ems(cp: &Server) -> Vec<Value> {
    let v = cp.call("GET", "/linkisManager/listAllEMs", "admin", None).await;
    v["data"]["EMs"].as_array().cloned().unwrap_or_default()
}

async fn wait_ecm_count(cp: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ems(cp).await.iter().filter(|e| e["nodeStatus"] == "Running").count() != n {
        assert!(Instant::now() < deadline, "{n} ECMs did not register; log:\n{}", cp.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn em(cp: &Server, instance: &str) -> Value {
    ems(cp).await.into_iter().find(|e| e["instance"] == instance).unwrap_or_default()
}

fn labels(user: &str, zone: Option<&str>) -> Value {
    let mut l = json!({"engineType": "shell-1", "userCreator": format!("{user}-IDE")});
    if let Some(z) = zone {
        l["zone"] = json!(z);
    }
    l
}

async fn submit(cp: &Server, user: &str, code: &str, labels: Value, memory: &str) -> (String, i64) {
    submit_with(cp, user, code, labels, json!({"hangar.engineconn.memory": memory})).await
}

async fn submit_with(cp: &Server, user: &str, code: &str, labels: Value, startup: Value) -> (String, i64) {
    let body = json!({
        "executionContent": {"code": code, "runType": "shell"},
        "params": {"configuration": {"startup": startup}},
        "labels": labels,
    });
    cp.submit_json(user, &body).await
}

/// Upload a file to the material library (multipart, as a browser sends it); its resourceId.
async fn upload(cp: &Server, user: &str, name: &str, bytes: &[u8]) -> String {
    let boundary = "----hangar-multihost-7d93";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let v: Value = reqwest::Client::new()
        .post(format!("{}/api/rest_j/v1/bml/upload", cp.base))
        .header("Token-User", user)
        .header("Token-Code", common::TOKEN)
        .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    v["data"]["resourceId"].as_str().unwrap_or_else(|| panic!("upload: {v}")).to_string()
}

async fn run(cp: &Server, user: &str, code: &str, labels: Value, memory: &str) -> (String, Value) {
    let (exec, task) = submit(cp, user, code, labels, memory).await;
    let status =
        cp.wait_status(user, &exec, &["Succeed", "Failed", "Cancelled", "Timeout"], Duration::from_secs(60)).await;
    (status, cp.job(user, task).await)
}

/// The text of every result set of a job.
async fn output(cp: &Server, user: &str, task: i64) -> String {
    cp.results(user, task).await.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}

/// Engines the manager lists on an ECM.
async fn engines_on(cp: &Server, ecm: &str) -> i64 {
    let v = cp.call("GET", "/linkisManager/listAllEngines", "admin", None).await;
    v["data"]["engines"].as_array().into_iter().flatten().filter(|e| e["emInstance"] == ecm).count() as i64
}

async fn used_instances(cp: &Server, user: &str) -> i64 {
    let v = cp.call("GET", "/linkisManager/rm/userresources", user, None).await;
    v["data"]["userResources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["usedResource"]["instance"].as_i64().unwrap_or(0))
        .sum()
}

const WHERE: &str = "ip -o -4 addr show scope global | awk '{print $4}'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_place_ship_restart_partition_and_lose() {
    let Some(net) = Net::new(7, 3) else { return };
    let mut h = hosts(net).await;
    let (cp_i, h1_i, h2_i) = (inst(&h.cp), inst(&h.ecms[0]), inst(&h.ecms[1]));
    for i in [&cp_i, &h1_i, &h2_i] {
        assert!(!i.starts_with("127."), "every party advertises a reachable address: {i}");
    }

    // Placement by labels: a zone-less ask only matches host 2 (the others
    // carry zone labels); zone=cp only the control plane's own ECM.
    let (st, alice) = run(&h.cp, "alice", &format!("echo alice on; {WHERE}"), labels("alice", None), "1g").await;
    assert_eq!(st, "Succeed", "{alice}");
    assert_eq!(alice["ecmInstance"], h2_i, "{alice}");
    assert!(output(&h.cp, "alice", alice["taskID"].as_i64().unwrap_or(0)).await.contains(&h.net.addr(2)));
    assert!(alice["engineInstance"].as_str().unwrap_or("").starts_with(&h.net.addr(2)), "{alice}");
    let (_, dave) = run(&h.cp, "dave", WHERE, labels("dave", Some("cp")), "512m").await;
    assert_eq!(dave["ecmInstance"], cp_i, "{dave}");
    // ...and by free resources: 3g fits host 1 only; then host 2 has the
    // larger free share (1g of 2g against 1g of 4g).
    let (_, bob) = run(&h.cp, "bob", WHERE, labels("bob", Some("a")), "3g").await;
    assert_eq!(bob["ecmInstance"], h1_i, "{bob}");
    assert!(output(&h.cp, "bob", bob["taskID"].as_i64().unwrap_or(0)).await.contains(&h.net.addr(1)));
    let (_, carol) = run(&h.cp, "carol", WHERE, labels("carol", Some("a")), "1g").await;
    assert_eq!(carol["ecmInstance"], h2_i, "{carol}");

    // Reuse per host, logs and progress over the network.
    let (exec, task) = submit(&h.cp, "alice", "echo again", labels("alice", None), "1g").await;
    h.cp.wait_done("alice", &exec).await;
    let again = h.cp.job("alice", task).await;
    assert_eq!(
        (again["isReuse"].clone(), again["engineInstance"].clone()),
        (json!(true), alice["engineInstance"].clone())
    );
    assert!(h.cp.full_log("alice", &exec).await.contains("runs task"), "the engine's log lines came back");
    assert_eq!(again["progress"].as_f64(), Some(1.0), "{again}");
    // The remote engine's own log and its kill go through its ECM.
    let carol_ticket = carol["ticketId"].as_str().expect("ticket").to_string();
    let log = h
        .cp
        .call("GET", &format!("/linkisManager/openEngineLog?ticketId={carol_ticket}&logType=stderr"), "carol", None)
        .await;
    assert_eq!(log["status"], 0, "{log}");
    let killed = h
        .cp
        .call("POST", "/linkisManager/killEngineConn", "carol", Some(&json!({"ticketId": carol_ticket}).to_string()))
        .await;
    assert_eq!(killed["status"], 0, "{killed}");
    // Host 2 keeps its ECM and alice's engine.
    wait_until("carol's remote engine to be killed", Duration::from_secs(10), || h.net.pids(2).len() == 2).await;

    // A user's file reaches a remote engine: its ECM fetches it from the manager.
    let rid = upload(&h.cp, "alice", "greeting.txt", b"hello from the library\n").await;
    let startup = json!({"hangar.engineconn.resources": rid, "hangar.engineconn.memory": "512m"});
    let (exec, task) =
        submit_with(&h.cp, "alice", "cat \"$HANGAR_RESOURCES_DIR/greeting.txt\"", labels("alice", None), startup).await;
    assert_eq!(h.cp.wait_done("alice", &exec).await, "Succeed", "{}", h.cp.server_log());
    assert_eq!(h.cp.job("alice", task).await["ecmInstance"], h2_i);
    assert!(output(&h.cp, "alice", task).await.contains("hello from the library"));
    assert!(h.ecms[1].server_log().contains("material localized"), "{}", h.ecms[1].server_log());

    // Measured: warm submit → result on host 2 against the control plane's host.
    let mut timings = Vec::new();
    for (who, zone) in [("alice", None), ("dave", Some("cp"))] {
        let mut ms = Vec::new();
        for i in 0..15 {
            let t = Instant::now();
            let (exec, task) = submit(&h.cp, who, &format!("echo {i}"), labels(who, zone), "512m").await;
            h.cp.wait_done(who, &exec).await;
            assert!(output(&h.cp, who, task).await.contains(&i.to_string()));
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        // 100 MB of output shipped as a result set, against the same job writing to /dev/null.
        let make = "head -c 100000000 /dev/zero | tr '\\0' a | fold -w 100000";
        let t = Instant::now();
        let (st, _) = run(&h.cp, who, &format!("{make} > /dev/null"), labels(who, zone), "512m").await;
        assert_eq!(st, "Succeed");
        let base = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (st, j) = run(&h.cp, who, make, labels(who, zone), "512m").await;
        assert_eq!(st, "Succeed", "{j}");
        let shipped = t.elapsed().as_secs_f64();
        timings.push((
            if zone.is_none() { "remote host" } else { "control-plane host" },
            ms[ms.len() / 2],
            ms[ms.len() - 2],
            base,
            shipped,
        ));
    }
    for (place, p50, p90, base, shipped) in &timings {
        println!(
            "MEASURED {place}: warm submit->result p50 {p50:.1} ms, p90 {p90:.1} ms; 100 MB result: {shipped:.2} s against {base:.2} s to /dev/null (+{:.2} s)",
            shipped - base
        );
    }

    // A remote ECM restart re-adopts its engines: the job running there ends well.
    let (exec, task) = submit(&h.cp, "alice", "sleep 3; echo survived", labels("alice", None), "1g").await;
    h.cp.wait_status("alice", &exec, &["Running"], Duration::from_secs(20)).await;
    let h2 = h.ecms.remove(1);
    let h2 = h2.restart().await;
    h.ecms.push(h2);
    assert_eq!(h.cp.wait_done("alice", &exec).await, "Succeed");
    assert!(output(&h.cp, "alice", task).await.contains("survived"));
    wait_until("the restarted ECM to say it re-adopted", Duration::from_secs(10), || {
        h.ecms[1].server_log().contains("adopt")
    })
    .await;
    let (_, j) = run(&h.cp, "alice", "echo after restart", labels("alice", None), "1g").await;
    assert_eq!((j["isReuse"].clone(), j["ecmInstance"].clone()), (json!(true), json!(h2_i)), "an adopted engine: {j}");

    // A partition shorter than the loss timeout: the job carries on, nothing is written off.
    let (exec, task) = submit(&h.cp, "alice", "sleep 2; echo healed", labels("alice", None), "1g").await;
    h.cp.wait_status("alice", &exec, &["Running"], Duration::from_secs(20)).await;
    h.net.cut(2);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    h.net.heal(2);
    assert_eq!(h.cp.wait_done("alice", &exec).await, "Succeed", "{}", h.cp.server_log());
    assert!(output(&h.cp, "alice", task).await.contains("healed"));
    assert!(!h.cp.server_log().contains("ECM lost"), "no host was written off");
    let listed = engines_on(&h.cp, &h2_i).await;
    assert!(listed >= 1);
    assert_eq!(em(&h.cp, &h2_i).await["usedResource"]["instance"], listed, "each engine counted once");

    // A partition longer than the loss timeout: the job fails naming the
    // host, the resources come back once, and after the heal the ECM
    // registers again and its written-off engine is stopped.
    let marker = std::env::temp_dir().join(format!("hangar-mh-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let code = format!("sleep 8; touch {}", marker.display());
    let (exec, task) = submit(&h.cp, "alice", &code, labels("alice", None), "1g").await;
    h.cp.wait_status("alice", &exec, &["Running"], Duration::from_secs(20)).await;
    let cut_at = Instant::now();
    h.net.cut(2);
    assert_eq!(h.cp.wait_status("alice", &exec, &["Failed"], Duration::from_secs(10)).await, "Failed");
    let noticed = cut_at.elapsed();
    let desc = h.cp.job("alice", task).await["errDesc"].as_str().unwrap_or_default().to_string();
    assert!(desc.contains(&format!("host {} lost", h.net.addr(2))), "{desc}");
    assert!(noticed < Duration::from_millis(4500), "lost after {noticed:?} (3 heartbeats = 3 s)");
    assert_eq!(used_instances(&h.cp, "alice").await, 0, "alice's engine was released");
    h.net.heal(2);
    wait_ecm_count(&h.cp, 3).await;
    wait_until("the written-off engines to stop", Duration::from_secs(15), || h.net.pids(2).len() == 1).await;
    assert!(h.ecms[1].server_log().contains("stopping an engine the manager wrote off"), "{}", h.ecms[1].server_log());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!marker.exists(), "the written-off engine's job went on running");
    assert_eq!(em(&h.cp, &h2_i).await["usedResource"]["instance"], 0, "nothing counted twice");
    assert_eq!(engines_on(&h.cp, &h2_i).await, 0);
    let (st, j) = run(&h.cp, "alice", "echo back", labels("alice", None), "1g").await;
    assert_eq!((st.as_str(), j["ecmInstance"].clone()), ("Succeed", json!(h2_i)));

    // Host loss: everything on host 1 is SIGKILLed mid-job.
    let (exec, task) = submit(&h.cp, "bob", "sleep 30", labels("bob", Some("a")), "3g").await;
    h.cp.wait_status("bob", &exec, &["Running"], Duration::from_secs(20)).await;
    let killed_at = Instant::now();
    h.net.kill_host(1);
    assert_eq!(h.cp.wait_status("bob", &exec, &["Failed"], Duration::from_secs(10)).await, "Failed");
    let noticed = killed_at.elapsed();
    let desc = h.cp.job("bob", task).await["errDesc"].as_str().unwrap_or_default().to_string();
    assert!(desc.contains(&format!("host {} lost", h.net.addr(1))), "{desc}");
    assert!(noticed < Duration::from_millis(4500), "lost after {noticed:?}");
    assert_eq!(used_instances(&h.cp, "bob").await, 0);
    assert_eq!(em(&h.cp, &h1_i).await["nodeStatus"], "Failed");
    let (st, j) = run(&h.cp, "bob", "echo survivor", labels("bob", Some("a")), "1g").await;
    assert_eq!((st.as_str(), j["ecmInstance"].clone()), ("Succeed", json!(h2_i)), "new jobs go to the surviving host");
    println!("MEASURED host loss noticed after {:.2} s (ECM heartbeat 1 s)", noticed.as_secs_f64());
}
