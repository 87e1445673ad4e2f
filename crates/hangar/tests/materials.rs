//! Material localization through the real binary: plugin `conf`/`lib` and
//! user resources uploaded through the BML API are fetched once per host into
//! a checksum-keyed cache, shared read-only, linked into every work dir, and
//! refetched when an entry is corrupted. Also across processes: a remote ECM
//! fetches from the control plane over HTTP.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{FAST, Server, TOKEN};
use serde_json::{Value, json};

/// A plugin home with `shell/dist/v1/{conf,lib}`.
fn plugin_home(root: &Path) -> PathBuf {
    let home = root.join("plugins");
    let v1 = home.join("shell/dist/v1");
    std::fs::create_dir_all(v1.join("conf")).expect("conf");
    std::fs::create_dir_all(v1.join("lib/bin")).expect("lib");
    std::fs::write(
        v1.join("conf/linkis-engineconn.properties"),
        "# plugin defaults\nhangar.test.from_plugin=plugin\nhangar.test.overridden=plugin\n",
    )
    .expect("props");
    let tool = v1.join("lib/bin/tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho \"tool from the plugin lib: $1\"\n").expect("tool");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    home
}

/// POST a file as multipart/form-data, built by hand as a browser would send it.
async fn multipart(
    s: &Server,
    path: &str,
    user: &str,
    file_name: &str,
    bytes: &[u8],
    fields: &[(&str, &str)],
) -> Value {
    let boundary = "----hangar-test-boundary-7d93";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let resp = reqwest::Client::new()
        .post(format!("{}/api/rest_j/v1{path}", s.base))
        .header("Token-User", user)
        .header("Token-Code", TOKEN)
        .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .expect("upload");
    resp.json().await.expect("json")
}

async fn run(s: &Server, user: &str, creator: &str, code: &str, startup: Value) -> (String, Value, String) {
    let body = json!({
        "executionContent": {"code": code, "runType": "shell"},
        "params": {"configuration": {"startup": startup}},
        "labels": {"engineType": "shell-1", "userCreator": format!("{user}-{creator}")},
    });
    let v = s.call("POST", "/entrance/submit", user, Some(&body.to_string())).await;
    assert_eq!(v["status"], 0, "{v}");
    let exec = v["data"]["execID"].as_str().expect("exec").to_string();
    let task = v["data"]["taskID"].as_i64().expect("task");
    let status = s.wait_done(user, &exec).await;
    let job = s.job(user, task).await;
    let out = if status == "Succeed" {
        s.results(user, task)
            .await
            .iter()
            .flat_map(|r| r["fileContent"].as_array().cloned().unwrap_or_default())
            .map(|row| row[0].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        String::new()
    };
    (status, job, out)
}

fn work_dir(s: &Server, job: &Value) -> PathBuf {
    let ticket = job["ticketId"].as_str().expect("ticket");
    let root = s.data_dir.join("engineconn");
    find_dir(&root, ticket).unwrap_or_else(|| panic!("no work dir for {ticket} under {}", root.display()))
}

fn find_dir(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_type().ok()?.is_dir() {
            if e.file_name() == name {
                return Some(p);
            }
            if let Some(found) = find_dir(&p, name) {
                return Some(found);
            }
        }
    }
    None
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_and_user_materials_are_localized_shared_and_refetched_when_corrupt() {
    let tmp = tempfile::tempdir().expect("tmp");
    let home = plugin_home(tmp.path());
    let s = Server::start(&format!(
        "{FAST}\n[materials]\nengineconn_home = \"{}\"\nmax_upload_size = \"64k\"\n",
        home.display()
    ))
    .await;

    // A user resource, in two versions.
    let up = multipart(&s, "/bml/upload", "alice", "data.csv", b"id,name\n1,first\n", &[("system", "IDE")]).await;
    assert_eq!(up["status"], 0, "{up}");
    let rid = up["data"]["resourceId"].as_str().expect("resourceId").to_string();
    assert_eq!(up["data"]["version"], "v000001");
    let up2 = multipart(
        &s,
        &format!("/bml/updateVersion?resourceId={rid}"),
        "alice",
        "data.csv",
        b"id,name\n2,second\n",
        &[],
    )
    .await;
    assert_eq!(up2["data"]["version"], "v000002", "{up2}");
    let versions = s.call("GET", &format!("/bml/getVersions?resourceId={rid}"), "alice", None).await;
    assert_eq!(versions["data"]["ResourceVersions"]["versions"].as_array().map(Vec::len), Some(2), "{versions}");
    let dl = reqwest::Client::new()
        .get(format!("{}/api/rest_j/v1/bml/download?resourceId={rid}&version=v000001", s.base))
        .header("Token-User", "alice")
        .header("Token-Code", TOKEN)
        .send()
        .await
        .expect("download");
    assert_eq!(dl.bytes().await.expect("bytes").as_ref(), b"id,name\n1,first\n");

    // Bad input: someone else's resource, a file over the limit, no file, path-like names.
    let theirs = s.call("GET", &format!("/bml/download?resourceId={rid}"), "bob", None).await;
    assert_ne!(theirs["status"], 0, "{theirs}");
    assert!(theirs["message"].as_str().unwrap_or_default().contains("no resource"), "{theirs}");
    let big = multipart(&s, "/bml/upload", "alice", "big.bin", &vec![7u8; 100 * 1024], &[]).await;
    assert_ne!(big["status"], 0, "{big}");
    let bob_update = multipart(&s, &format!("/bml/updateVersion?resourceId={rid}"), "bob", "data.csv", b"x", &[]).await;
    assert_ne!(bob_update["status"], 0, "{bob_update}");
    let dotted = multipart(&s, "/bml/upload", "alice", "..", b"x", &[]).await;
    assert_ne!(dotted["status"], 0, "{dotted}");

    // 1. A plain engine: plugin conf sets defaults (startup parameters win), lib is runnable.
    let (st, job1, out) =
        run(&s, "alice", "IDE", "\"$HANGAR_LIB_DIR/bin/tool.sh\" one", json!({"hangar.test.overridden": "user"})).await;
    assert_eq!(st, "Succeed", "{job1}");
    assert_eq!(out, "tool from the plugin lib: one");
    let wd1 = work_dir(&s, &job1);
    let script = std::fs::read_to_string(wd1.join("engineConnExec.sh")).expect("script");
    assert!(script.contains("hangar.test.from_plugin=plugin"), "{script}");
    assert!(script.contains("hangar.test.overridden=user") && !script.contains("overridden=plugin"), "{script}");
    let cache = s.data_dir.join("engineconn-public");
    let lib_target = std::fs::read_link(wd1.join("lib")).expect("lib is a link into the cache");
    assert!(lib_target.starts_with(&cache), "{}", lib_target.display());
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&lib_target.join("bin/tool.sh")), 0o555, "shared read-only, still executable");
    assert_eq!(mode(&lib_target.join("bin")), 0o555);

    // 2. Naming the resource: a new engine (the first one lacks the file), the file linked in.
    let (st, job2, out) =
        run(&s, "alice", "IDE", "cat \"$HANGAR_RESOURCES_DIR/data.csv\"", json!({"hangar.engineconn.resources": rid}))
            .await;
    assert_eq!(st, "Succeed", "{job2}");
    assert_eq!(out, "id,name\n2,second");
    assert_ne!(job2["ticketId"], job1["ticketId"], "an engine without the resource is not reused");
    let wd2 = work_dir(&s, &job2);
    assert_eq!(std::fs::read_link(wd2.join("lib")).expect("link"), lib_target, "engines share one cache entry");
    // An exact version, and reuse of the engine that has it.
    let (st, job3, out) = run(
        &s,
        "alice",
        "IDE",
        "cat \"$HANGAR_RESOURCES_DIR/data.csv\"",
        json!({"hangar.engineconn.resources": format!("{rid}@v000001")}),
    )
    .await;
    assert_eq!((st.as_str(), out.as_str()), ("Succeed", "id,name\n1,first"), "{job3}");
    let (st, job4, _) =
        run(&s, "alice", "IDE", "true", json!({"hangar.engineconn.resources": format!("{rid}@v000001")})).await;
    assert_eq!(st, "Succeed");
    assert_eq!(job4["ticketId"], job3["ticketId"], "an engine with the same files is reused");

    // Someone else naming alice's resource: a clear failure.
    let (st, job, _) = run(&s, "bob", "IDE", "true", json!({"hangar.engineconn.resources": rid})).await;
    assert_eq!(st, "Failed");
    let err = job["errDesc"].as_str().unwrap_or_default();
    assert!(err.contains("hangar.engineconn.resources") && err.contains("no resource"), "{err}");

    // Three engines starting at once with a new file: one fetch (single-flight per digest).
    let up3 = multipart(&s, "/bml/upload", "alice", "burst.txt", b"burst\n", &[]).await;
    let rid3 = up3["data"]["resourceId"].as_str().expect("resourceId").to_string();
    let code = "cat \"$HANGAR_RESOURCES_DIR/burst.txt\"";
    let startup = json!({"hangar.engineconn.resources": rid3});
    let (b1, b2, b3) = tokio::join!(
        run(&s, "alice", "B1", code, startup.clone()),
        run(&s, "alice", "B2", code, startup.clone()),
        run(&s, "alice", "B3", code, startup.clone())
    );
    for (st, job, out) in [b1, b2, b3] {
        assert_eq!((st.as_str(), out.as_str()), ("Succeed", "burst"), "{job}");
    }
    assert_eq!(count(&s.server_log(), "material localized"), 5, "{}", s.server_log());

    // Fetched once each: conf, lib, the two versions of data.csv, burst.txt.
    let log = s.server_log();
    assert_eq!(count(&log, "material localized"), 5, "{log}");

    // 3. Corrupt the cached tool (same size, other bytes): the next engine finds it and refetches.
    let tool = lib_target.join("bin/tool.sh");
    let original = std::fs::read(&tool).expect("read");
    std::fs::set_permissions(lib_target.join("bin"), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut bad = original.clone();
    bad[12] ^= 0x20;
    std::fs::write(&tool, &bad).expect("corrupt");
    let (st, job5, out) = run(&s, "alice", "Other", "\"$HANGAR_LIB_DIR/bin/tool.sh\" two", json!({})).await;
    assert_eq!(st, "Succeed", "{job5}");
    assert_eq!(out, "tool from the plugin lib: two");
    assert_eq!(std::fs::read(&tool).expect("read"), original, "the entry was refetched");
    let log = s.server_log();
    assert_eq!(count(&log, "corrupt; fetching it again"), 1, "{log}");
    // A vanished entry is fetched again too.
    let conf_target = std::fs::read_link(wd1.join("conf")).expect("conf link");
    let entry = conf_target.parent().expect("entry").to_path_buf();
    let mut perms = vec![entry.clone()];
    perms.push(conf_target.clone());
    for p in &perms {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::remove_dir_all(&entry).expect("remove entry");
    let (st, _, _) = run(&s, "alice", "Third", "true", json!({})).await;
    assert_eq!(st, "Succeed");
    assert!(conf_target.join("linkis-engineconn.properties").is_file(), "conf is back");

    // A new plugin conf takes effect for new engines after an admin's refreshAll.
    std::fs::write(home.join("shell/dist/v1/conf/linkis-engineconn.properties"), "hangar.test.from_plugin=refreshed\n")
        .expect("props");
    let refused = s.call("GET", "/engineplugin/refreshAll", "alice", None).await;
    assert_ne!(refused["status"], 0, "{refused}");
    let refreshed = s.call("GET", "/engineplugin/refreshAll", "admin", None).await;
    assert_eq!(refreshed["status"], 0, "{refreshed}");
    let (st, job6, _) = run(&s, "alice", "Fourth", "true", json!({})).await;
    assert_eq!(st, "Succeed");
    let script = std::fs::read_to_string(work_dir(&s, &job6).join("engineConnExec.sh")).expect("script");
    assert!(script.contains("hangar.test.from_plugin=refreshed"), "{script}");

    // The ECM's counters reach /metrics with its next heartbeat.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = reqwest::get(format!("{}/metrics", s.base)).await.expect("metrics").text().await.expect("text");
        if metrics.contains("kind=\"refetch\"} 1") && metrics.contains("kind=\"all\"} 8") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.contains("kind=\"refetch\"} 1") && metrics.contains("kind=\"all\"} 8"), "{metrics}");

    // The resource list, and deletion.
    let mine = s.call("GET", "/bml/getResources", "alice", None).await;
    assert_eq!(mine["data"]["Resources"].as_array().map(Vec::len), Some(2), "{mine}");
    let del = s.call("POST", "/bml/deleteResource", "bob", Some(&json!({"resourceId": rid}).to_string())).await;
    assert_ne!(del["status"], 0, "bob cannot delete alice's resource");
    let del = s.call("POST", "/bml/deleteResource", "alice", Some(&json!({"resourceId": rid}).to_string())).await;
    assert_eq!(del["status"], 0, "{del}");
    let gone = s.call("GET", &format!("/bml/getVersions?resourceId={rid}"), "alice", None).await;
    assert_ne!(gone["status"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_ecm_fetches_materials_from_the_control_plane() {
    let tmp = tempfile::tempdir().expect("tmp");
    let home = plugin_home(tmp.path());
    let cp = Server::control_plane(&format!("{FAST}\n[materials]\nengineconn_home = \"{}\"\n", home.display())).await;
    let ecm = Server::ecm(&cp, "").await;
    for _ in 0..400 {
        let v = cp.call("GET", "/linkisManager/listAllEMs", "admin", None).await;
        if v["data"]["EMs"].as_array().map_or(0, Vec::len) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let up = multipart(&cp, "/bml/upload", "alice", "hello.txt", b"hello from the library\n", &[]).await;
    let rid = up["data"]["resourceId"].as_str().expect("resourceId").to_string();
    let (st, job, out) = run(
        &cp,
        "alice",
        "IDE",
        "\"$HANGAR_LIB_DIR/bin/tool.sh\" remote; cat \"$HANGAR_RESOURCES_DIR/hello.txt\"",
        json!({"hangar.engineconn.resources": rid}),
    )
    .await;
    assert_eq!(st, "Succeed", "{job}\nECM log:\n{}", ecm.server_log());
    assert_eq!(out, "tool from the plugin lib: remote\nhello from the library");
    assert_eq!(count(&ecm.server_log(), "material localized"), 3, "conf, lib, hello.txt");
    assert!(ecm.data_dir.join("engineconn-public").is_dir());

    // The material endpoint wants the ECM token (the control plane's own secret is not it).
    let sha = up["data"]["sha256"].as_str().expect("sha");
    let url = format!("{}/rpc/manager/materials/{sha}", cp.base);
    let denied = reqwest::Client::new().get(&url).send().await.expect("get");
    assert_eq!(denied.status(), 401);
    let wrong = reqwest::Client::new()
        .get(&url)
        .header(hangar_protocol::rpc::RPC_TOKEN_HEADER, common::RPC_SECRET)
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), 401);
    let ok = reqwest::Client::new()
        .get(&url)
        .header(hangar_protocol::rpc::RPC_TOKEN_HEADER, common::ECM_TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(ok.bytes().await.expect("bytes").as_ref(), b"hello from the library\n");
    let missing = reqwest::Client::new()
        .get(format!("{}/rpc/manager/materials/{}", cp.base, "0".repeat(64)))
        .header(hangar_protocol::rpc::RPC_TOKEN_HEADER, common::ECM_TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_running_as_its_user_reads_materials_but_cannot_change_the_cache() {
    let user = "hangarrun2";
    if !common::os_user(user) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = plugin_home(tmp.path());
    let s = Server::start(&format!(
        "{}\n[materials]\nengineconn_home = \"{}\"\n",
        FAST.replace("[ecm]\n", "[ecm]\nrun_as = \"user\"\n"),
        home.display()
    ))
    .await;
    std::fs::set_permissions(s.data_dir.parent().expect("root"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let up = multipart(&s, "/bml/upload", user, "note.txt", b"for hangarrun2\n", &[]).await;
    let rid = up["data"]["resourceId"].as_str().expect("resourceId").to_string();
    let code = "id -un; \"$HANGAR_LIB_DIR/bin/tool.sh\" as-user; cat \"$HANGAR_RESOURCES_DIR/note.txt\"; \
                (echo x >> \"$HANGAR_LIB_DIR/bin/tool.sh\") 2>/dev/null && echo changed || echo refused";
    let (st, job, out) = run(&s, user, "IDE", code, json!({"hangar.engineconn.resources": rid})).await;
    assert_eq!(st, "Succeed", "{job}\n{}", s.server_log());
    assert_eq!(out, format!("{user}\ntool from the plugin lib: as-user\nfor hangarrun2\nrefused"));
    // The work dir is the user's; the cache stays the ECM's.
    use std::os::unix::fs::MetadataExt;
    let wd = work_dir(&s, &job);
    let uid = nix::unistd::User::from_name(user).ok().flatten().expect("user").uid.as_raw();
    assert_eq!(std::fs::metadata(wd.join("logs")).expect("logs").uid(), uid);
    let cached = std::fs::read_link(wd.join("lib")).expect("link").join("bin/tool.sh");
    assert_eq!(std::fs::metadata(&cached).expect("cached").uid(), 0, "the cache was not handed to the user");
}
