//! The `hangar-sql-engine` binary as an ECM runs it. Besides checking its
//! command line, this integration test makes `cargo test` build the binary
//! itself (`target/<profile>/hangar-sql-engine`), which the `hangar` package's
//! server tests launch from next to the `hangar` binary.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_hangar-sql-engine");

#[test]
fn takes_the_engineconn_arguments_and_needs_its_secrets_on_stdin() {
    let help = Command::new(BIN).args(["engineconn", "--help"]).output().expect("run");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for arg in ["--ticket-id", "--user", "--manager-url", "--work-dir", "--label", "--conf"] {
        assert!(text.contains(arg), "{arg} missing from:\n{text}");
    }

    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(BIN)
        .args(["engineconn", "--ticket-id", "t-1", "--user", "alice", "--manager-url", "http://127.0.0.1:9"])
        .arg("--work-dir")
        .arg(dir.path())
        .args(["--label", "engineType=datafusion-1", "--conf", "hangar.sql.memory=64m"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standard input carries no engine secrets"), "{err}");
}
