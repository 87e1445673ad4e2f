//! The REST API keeps its OpenAPI document, on a live server:
//! - the served document is the committed `docs/openapi.json`;
//! - every documented operation, called with real data (a job with results,
//!   a running engine, materials, a password login), answers status 0 with a
//!   body its schema accepts (`openapi_contract.py`);
//! - schemathesis (from PyPI, in the venv `scripts/test-deps` makes under
//!   `target/`) sends generated and wrong input to every operation, as a user
//!   and as an admin: no 5xx, no answer outside the schema, status codes and
//!   content types as documented, no operation that ignores authentication.
//!
//! Linkis answers invalid input with HTTP 200 and `status: 2`, so
//! schemathesis's `negative_data_rejection` (which wants a 4xx) is not run.
//! `HANGAR_SCHEMATHESIS_EXAMPLES` (default 15) and `HANGAR_SCHEMATHESIS_SEED`
//! (default 1) bound and fix a run.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{FAST, Server, TOKEN};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A program of the test venv (`HANGAR_TEST_VENV`, default `target/hangar-venv`).
fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("HANGAR_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/hangar-venv"));
    let bin = venv.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test-deps (it makes the test venv with schemathesis)",
        bin.display()
    );
    bin
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("--- {what}\n{text}");
    assert!(out.status.success(), "{what} failed:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_api_keeps_its_openapi_contract() {
    let envs = [("HANGAR_ADMIN_USER", "carol"), ("HANGAR_ADMIN_PASSWORD", "carol-contract-pw")];
    let s = Server::start_env("", "", FAST, &envs).await;
    let doc_url = format!("{}{}", s.base, hangar_entrance::OPENAPI_PATH);

    let served = reqwest::get(&doc_url).await.expect("get openapi.json").text().await.expect("body");
    let committed = std::fs::read_to_string(workspace().join("docs/openapi.json")).expect("docs/openapi.json");
    assert_eq!(served.trim_end(), committed.trim_end(), "the served document is not docs/openapi.json");

    let python = venv_bin("python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_contract.py");
    let base = s.base.clone();
    let examples = std::env::var("HANGAR_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
    let seed = std::env::var("HANGAR_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let work = tempfile::tempdir().expect("tmp");
    let work_dir = work.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        run(
            "real calls against their schemas",
            Command::new(&python)
                .arg(&script)
                .args([&base, TOKEN, "carol", "carol-contract-pw"])
                .current_dir(&work_dir),
        );
        let st = venv_bin("schemathesis");
        for user in ["alice", "admin"] {
            run(
                &format!("schemathesis as {user}"),
                Command::new(&st)
                    .args(["run", &doc_url, "--url", &base, "--no-color", "--generation-database", "none"])
                    .args(["--checks", "all", "--exclude-checks", "negative_data_rejection"])
                    .args(["--max-examples", &examples, "--seed", &seed, "--request-timeout", "30"])
                    .args(["-H", &format!("Token-Code: {TOKEN}"), "-H", &format!("Token-User: {user}")])
                    .current_dir(&work_dir),
            );
        }
    })
    .await
    .expect("contract run");
    let log = s.server_log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}
