#![no_main]
//! Statement splitting of SQL code (the generic splitter and the JDBC one).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let code = String::from_utf8_lossy(data);
    let _ = hangar_engineconn_plugin::code::split_sql(&code);
    let _ = hangar_plugin_jdbc::split::split_statements(&code);
});
