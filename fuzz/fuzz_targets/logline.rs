#![no_main]
//! Log-line levels and execID parsing (both reach the API from user input).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = hangar_protocol::logline::split_levels(text.lines());
    let _ = hangar_protocol::exec_id::parse(&text);
});
