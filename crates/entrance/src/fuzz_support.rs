//! Entry points for the fuzz targets (`fuzz/`) and their corpus replay
//! (`crates/hangar/tests/fuzz_corpus.rs`): the parsers a client's bytes reach.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Multipart};
use hangar_protocol::HangarError;

/// Variable substitution of submitted code (`${run_date-1}`, user variables).
pub fn substitute(code: &str, vars: &BTreeMap<String, String>, shell: bool) -> Result<String, HangarError> {
    crate::vars::substitute(code, vars, shell)
}

/// The BML upload's multipart reading, on a raw body with `boundary`.
pub fn read_multipart(boundary: &str, body: Vec<u8>, max: u64) -> Result<(String, Vec<u8>), HangarError> {
    let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| HangarError::internal(e.to_string()))?;
    rt.block_on(async move {
        let req = axum::http::Request::builder()
            .method("POST")
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(axum::body::Body::from(body))
            .map_err(|e| HangarError::invalid(e.to_string()))?;
        let mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| HangarError::invalid(format!("not multipart: {}", e.body_text())))?;
        let (name, bytes, _) = crate::bml::read_multipart(mp, max).await?;
        Ok((name, bytes))
    })
}
