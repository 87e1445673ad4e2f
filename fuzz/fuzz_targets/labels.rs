#![no_main]
//! Labels from a submit's JSON object and from `key=value` pairs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(l) = hangar_protocol::LabelSet::from_json(&m)
    {
        let _ = (l.user_creator(), l.engine_type(), l.combined_user_engine(), l.core(), l.to_linkis_list());
    }
    let text = String::from_utf8_lossy(data);
    let _ = hangar_protocol::LabelSet::from_pairs(text.split(','));
});
