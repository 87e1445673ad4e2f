//! The OpenAPI 3.1 document of the REST API. Paths and schemas come from the
//! handlers' `#[utoipa::path]` annotations and the `wire` types they read and
//! answer with; this module adds what every Linkis call shares: the error
//! envelope (Linkis answers most errors with HTTP 200 and `status` ≠ 0, and
//! 401 when not logged in) and the two ways to authenticate.
//!
//! `docs/openapi.json` is this document; a test fails when they differ
//! (`HANGAR_WRITE_OPENAPI=1 cargo test -p hangar-entrance openapi` rewrites it).

use hangar_protocol::{Envelope, ErrorData};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::AnyOfBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::{OpenApi as _, PartialSchema};

use crate::api::PREFIX;

const ERROR_ENVELOPE: &str = "ErrorEnvelope";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Hangar REST API",
        description = "Linkis-compatible job submission, job history, result sets, engine operations and \
                       the material library. Every answer is a Linkis envelope `{method, status, message, data}`: \
                       `status` 0 carries the documented `data`; any other status carries `ErrorData` \
                       (mostly with HTTP 200, as Linkis does; 401 when not logged in).",
        license(name = "Apache-2.0"),
    ),
    tags(
        (name = "entrance", description = "Submit jobs and follow them"),
        (name = "jobhistory", description = "Stored jobs"),
        (name = "filesystem", description = "Result sets and logs"),
        (name = "user", description = "Sessions"),
        (name = "linkisManager", description = "Engines, ECMs and resources"),
        (name = "bml", description = "The material library"),
        (name = "engineplugin", description = "Engine plugins"),
        (name = "configuration", description = "Parameter configuration per user, creator and engine type"),
    ),
)]
struct ApiDoc;

/// The document before the routes add their paths.
pub(crate) fn base() -> OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// What every Linkis call shares, added to each documented operation.
pub(crate) fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.schemas.insert(ERROR_ENVELOPE.into(), Envelope::<ErrorData>::schema());
    components.schemas.insert("ErrorData".into(), ErrorData::schema());
    let header = |name: &str| SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(name)));
    components.add_security_scheme("tokenCode", header("Token-Code"));
    components.add_security_scheme("tokenUser", header("Token-User"));
    let cookie = ApiKeyValue::with_description(crate::session::COOKIE, "the session of `POST /user/login`");
    components.add_security_scheme("session", SecurityScheme::ApiKey(ApiKey::Cookie(cookie)));
    doc.security = Some(vec![
        SecurityRequirement::new("tokenCode", Vec::<String>::new()).add("tokenUser", Vec::<String>::new()),
        SecurityRequirement::new("session", Vec::<String>::new()),
    ]);
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with(PREFIX) {
            continue;
        }
        let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            add_error_answers(op);
        }
    }
    doc
}

fn error_ref() -> RefOr<utoipa::openapi::Schema> {
    RefOr::Ref(Ref::from_schema_name(ERROR_ENVELOPE))
}

/// 200 may carry an error envelope instead of the data; 401 always can.
fn add_error_answers(op: &mut Operation) {
    let json = "application/json";
    if let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") {
        match ok.content.get_mut(json) {
            Some(RefOr::T(content)) => {
                if let Some(data) = content.schema.take() {
                    content.schema = Some(AnyOfBuilder::new().item(data).item(error_ref()).into());
                }
            }
            _ => {
                ok.content.insert(json.into(), RefOr::T(ContentBuilder::new().schema(Some(error_ref())).build()));
            }
        }
    }
    let unauthenticated = ResponseBuilder::new()
        .description("Not logged in: send Token-Code and Token-User, or the session cookie")
        .content(json, ContentBuilder::new().schema(Some(error_ref())).build())
        .build();
    op.responses.responses.entry("401".into()).or_insert(RefOr::T(unauthenticated));
}

/// The document as served, from a router built with any limits.
pub fn document() -> OpenApi {
    let (_, doc) = crate::api::documented(1 << 20, 1 << 20).split_for_parts();
    finish(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
    }

    /// The committed document is the generated one (CI fails on drift).
    #[test]
    fn openapi_document_has_not_drifted() {
        let generated = document().to_pretty_json().expect("json") + "\n";
        if std::env::var_os("HANGAR_WRITE_OPENAPI").is_some() {
            std::fs::write(committed_path(), &generated).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the API: run `HANGAR_WRITE_OPENAPI=1 cargo test -p hangar-entrance openapi` and commit it"
        );
    }

    #[test]
    fn every_operation_documents_its_answer_and_errors() {
        let doc = document();
        let mut n = 0;
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.post].into_iter().flatten() {
                n += 1;
                let r = &op.responses.responses;
                assert!(r.contains_key("200") && r.contains_key("401"), "{path}");
                assert!(op.tags.as_ref().is_some_and(|t| !t.is_empty()), "{path} has no tag");
            }
        }
        assert!(n >= 37, "only {n} operations documented");
    }
}
