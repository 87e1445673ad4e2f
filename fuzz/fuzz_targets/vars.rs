#![no_main]
//! Variable substitution of submitted code, with and without shell rules.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let code = String::from_utf8_lossy(data);
    let mut vars = std::collections::BTreeMap::new();
    vars.insert("table".to_string(), "t1".to_string());
    for shell in [false, true] {
        let _ = hangar_entrance::fuzz_support::substitute(&code, &vars, shell);
    }
});
