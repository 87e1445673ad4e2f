#![no_main]
//! The BML upload's multipart body reading.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hangar_entrance::fuzz_support::read_multipart("XyZ", data.to_vec(), 1 << 16);
});
