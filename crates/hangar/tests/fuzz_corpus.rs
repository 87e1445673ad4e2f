//! Every input in `fuzz/corpus/<target>/` (the seeds and what fuzzing kept)
//! replayed through the same parsers the fuzz targets drive: none may panic.
//! Fuzz for real with `cargo fuzz run <target>` in `fuzz/` (RELIABILITY.md).

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    assert!(!out.is_empty(), "no corpus in {}", dir.display());
    out.sort();
    // Every prefix of the first inputs too: truncation is the classic parser crash.
    let prefixes: Vec<Vec<u8>> =
        out.iter().take(32).flat_map(|d| (0..d.len().min(256)).map(|n| d[..n].to_vec())).collect();
    out.extend(prefixes);
    out
}

#[test]
fn labels() {
    for data in corpus("labels") {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(&data)
            && let Ok(l) = hangar_protocol::LabelSet::from_json(&m)
        {
            let _ = (l.user_creator(), l.engine_type(), l.combined_user_engine(), l.core(), l.to_linkis_list());
        }
        let _ = hangar_protocol::LabelSet::from_pairs(String::from_utf8_lossy(&data).split(','));
    }
}

#[test]
fn vars() {
    let mut vars = std::collections::BTreeMap::new();
    vars.insert("table".to_string(), "t1".to_string());
    for data in corpus("vars") {
        for shell in [false, true] {
            let _ = hangar_entrance::fuzz_support::substitute(&String::from_utf8_lossy(&data), &vars, shell);
        }
    }
}

#[test]
fn split() {
    for data in corpus("split") {
        let code = String::from_utf8_lossy(&data);
        let _ = hangar_engineconn_plugin::code::split_sql(&code);
        let _ = hangar_plugin_jdbc::split::split_statements(&code);
    }
}

#[test]
fn dolphin() {
    for data in corpus("dolphin") {
        let _ = hangar_protocol::dolphin::decode(&data);
    }
}

#[test]
fn logline() {
    for data in corpus("logline") {
        let text = String::from_utf8_lossy(&data);
        let _ = hangar_protocol::logline::split_levels(text.lines());
        let _ = hangar_protocol::exec_id::parse(&text);
    }
}

#[test]
fn multipart() {
    let mut whole = 0;
    for data in corpus("multipart") {
        if hangar_entrance::fuzz_support::read_multipart("XyZ", data, 1 << 16).is_ok() {
            whole += 1;
        }
    }
    assert!(whole > 0, "the seed upload parses");
}
