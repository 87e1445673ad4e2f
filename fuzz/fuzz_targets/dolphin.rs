#![no_main]
//! The `.dolphin` result-set reader (a result file is the engine account's).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hangar_protocol::dolphin::decode(data);
});
