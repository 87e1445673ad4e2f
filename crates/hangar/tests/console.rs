//! The management console: its files as served (types, cache headers, CSP),
//! and the console driven in a real browser (Debian's chromium through
//! playwright-core, both installed by `scripts/test-deps`) by
//! `tests/console/console.mjs`, which saves a screenshot of every page into
//! `$CARGO_TARGET_TMPDIR/console-screenshots`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{FAST, Server};
use serde_json::Value;

const ADMIN: &str = "ops";
const PASSWORD: &str = "console-test-pw";
/// A user who is not an admin (from `auth.users`).
const USER: &str = "bob";
const USER_PASSWORD: &str = "bob-console-pw";

use common::hash_password as hash;

fn admin_env() -> [(&'static str, &'static str); 2] {
    [("HANGAR_ADMIN_USER", ADMIN), ("HANGAR_ADMIN_PASSWORD", PASSWORD)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_files_are_served_with_their_types_a_strict_csp_and_revalidation() {
    let s = Server::start_env("", "", FAST, &admin_env()).await;
    let http = reqwest::Client::new();
    for (path, mime) in [
        ("/", "text/html"),
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/pages/job.js", "text/javascript"),
        ("/console/style.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let r = http.get(format!("{}{path}", s.base)).send().await.expect("get");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert!(h["content-type"].to_str().expect("ct").starts_with(mime), "{path}: {:?}", h["content-type"]);
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let tag = h["etag"].clone();
        let again = http.get(format!("{}{path}", s.base)).header("if-none-match", tag).send().await.expect("get");
        assert_eq!(again.status(), 304, "{path} revalidates");
    }
    // The page holds no secret and loads nothing from elsewhere.
    let html = http.get(format!("{}/", s.base)).send().await.expect("get").text().await.expect("text");
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script>"), "{html}");
    assert_eq!(http.get(format!("{}/console/nope.js", s.base)).send().await.expect("get").status(), 404);
    // Unknown API paths still answer the Linkis envelope.
    let r = http.get(format!("{}/api/rest_j/v1/no/such/thing", s.base)).send().await.expect("get");
    assert!(r.headers().get("content-security-policy").is_none(), "API answers are not console pages");
    let v: Value = r.json().await.expect("json");
    assert!(
        v["status"].as_i64().is_some_and(|s| s != 0)
            && v["message"].as_str().is_some_and(|m| m.contains("no such API")),
        "{v}"
    );
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_and_kills_jobs_and_engines_in_a_real_browser() {
    let node_dir = std::env::var_os("HANGAR_CONSOLE_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/console-node"));
    let chromium = std::env::var("HANGAR_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    // Never a silent pass: CI installs both with scripts/test-deps.
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/test-deps (installs Debian's chromium and playwright-core for this test)"
    );
    assert!(
        node_dir.join("node_modules/playwright-core/package.json").exists(),
        "{}/node_modules/playwright-core is missing: run scripts/test-deps",
        node_dir.display()
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node is missing: run scripts/test-deps");

    let users = format!("users = [\"{USER}:{}\"]", hash(USER_PASSWORD));
    let s = Server::start_env("", &users, FAST, &admin_env()).await;
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .args([s.base.as_str(), ADMIN, PASSWORD])
        .arg(&shots)
        .env("HANGAR_CONSOLE_NODE", &node_dir)
        .env("HANGAR_CHROMIUM", &chromium)
        .env("HANGAR_CONSOLE_USER2", format!("{USER}:{USER_PASSWORD}"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser run took over 5 min")
        .expect("node");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let log = s.server_log();
    let tail: String = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        out.status.success(),
        "console.mjs failed (screenshots in {}):\n{stdout}\n{stderr}\n--- server log tail ---\n{tail}",
        shots.display()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    for name in [
        "01-login",
        "03-job-python",
        "05-history",
        "08-admin-ecms",
        "08b-job-waiting-for-ecm",
        "08c-admin-ecms-unhealthy",
        "10a-admin-config-refused",
        "10-admin-config",
        "11-engines",
        "12b-engine-history",
        "13-non-admin",
    ] {
        assert!(shots.join(format!("{name}.png")).exists(), "no screenshot {name}.png:\n{stdout}");
    }
    println!("{stdout}\nscreenshots: {}", shots.display());
}
