//! The management console: plain HTML, CSS and JavaScript modules from
//! `crates/entrance/console/`, embedded in the binary (no build step, nothing
//! fetched at run time) and served at `/` and `/console/...`.
//!
//! These routes are not part of the Linkis API and stay out of the OpenAPI
//! document. Every answer carries a strict Content-Security-Policy (this
//! origin only, no inline script or style); the page holds no secret: it
//! reaches the API with the session cookie `user/login` sets.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, extract::Path};
use std::sync::{Arc, OnceLock};

use crate::Entrance;

/// Scripts, styles, images and API calls from this origin only; no inline
/// code, no plugins, no framing, forms post here only.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

macro_rules! assets {
    ($($name:literal => $mime:literal),* $(,)?) => {
        &[$(($name, $mime, include_bytes!(concat!("../console/", $name)) as &[u8])),*]
    };
}

/// Every file of the console: its path below `/console/`, type and bytes.
const ASSETS: &[(&str, &str, &[u8])] = assets! {
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "ui.js" => "text/javascript; charset=utf-8",
    "pages/login.js" => "text/javascript; charset=utf-8",
    "pages/history.js" => "text/javascript; charset=utf-8",
    "pages/job.js" => "text/javascript; charset=utf-8",
    "pages/editor.js" => "text/javascript; charset=utf-8",
    "pages/engines.js" => "text/javascript; charset=utf-8",
    "pages/ended.js" => "text/javascript; charset=utf-8",
    "pages/resources.js" => "text/javascript; charset=utf-8",
    "pages/ecms.js" => "text/javascript; charset=utf-8",
    "pages/config.js" => "text/javascript; charset=utf-8",
};

/// The console's routes, outside the documented API.
pub(crate) fn routes(r: Router<Arc<Entrance>>) -> Router<Arc<Entrance>> {
    r.route("/", get(index))
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// A strong validator per file: FNV-1a of its bytes (computed once).
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, bytes)| {
                let h = bytes
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
                format!("\"{h:016x}\"")
            })
            .collect()
    })
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|(name, _, _)| *name == path) else {
        return with_security(
            (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found").into_response(),
        );
    };
    let (_, mime, bytes) = ASSETS[i];
    let tag = etags().get(i).cloned().unwrap_or_default();
    // Revalidated on every load (names carry no hash), answered 304 when unchanged.
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, mime)], bytes).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    with_security(resp)
}

fn with_security(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_type_and_bytes() {
        for (name, mime, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{name} is empty");
            assert!(mime.contains('/'), "{name}: {mime}");
        }
        assert_eq!(etags().len(), ASSETS.len());
    }

    #[test]
    fn unknown_files_are_404_and_known_ones_revalidate() {
        let r = serve("nope.js", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = serve("app.js", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let tag = r.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(serve("app.js", &h).status(), StatusCode::NOT_MODIFIED);
    }
}
