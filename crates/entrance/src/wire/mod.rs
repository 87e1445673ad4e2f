//! The REST API's typed requests and answers. Handlers read bodies and query
//! strings into these types and answer with them, and the OpenAPI document
//! (`crate::openapi`) is derived from the same types, so the two cannot drift.

pub(crate) mod bml;
pub(crate) mod configuration;
pub(crate) mod console;
pub(crate) mod files;
pub(crate) mod jobs;
pub(crate) mod manager;

use axum::body::Bytes;
use axum::http::Uri;
use hangar_protocol::HangarError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

/// Read a JSON body into its type. A wrong type names the field:
/// `params.configuration must be a JSON object, got a string "x"`.
pub(crate) fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, HangarError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(HangarError::invalid("request body is empty; send a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() { field_error(&path, &inner.to_string()) } else { syntax_error(&inner) }
    })?;
    Ok(value)
}

fn syntax_error(e: &serde_json::Error) -> HangarError {
    HangarError::invalid(format!("request body is not valid JSON: {e}"))
}

/// Read a query string into its type; a value of the wrong kind names its parameter.
pub(crate) fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, HangarError> {
    let raw = uri.query().unwrap_or_default();
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        field_error(&format!("query parameter {path}"), &e.into_inner().to_string())
    })
}

/// `invalid type: integer `5`, expected a string` at `executeUser` becomes
/// `executeUser must be a string, got integer `5``.
fn field_error(path: &str, msg: &str) -> HangarError {
    let path = if path == "." { "request body" } else { path };
    let plain = |s: &str| match s {
        "a map" | "struct" => "a JSON object".to_string(),
        "a sequence" => "a JSON array".to_string(),
        s => s.to_string(),
    };
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    if let Some(rest) = msg.strip_prefix("invalid type: ").or_else(|| msg.strip_prefix("invalid value: "))
        && let Some((got, want)) = rest.split_once(", expected ")
    {
        return HangarError::invalid(format!("{path} must be {}, got {got}", plain(want)));
    }
    HangarError::invalid(format!("{path}: {msg}"))
}

/// A configuration or variable value: Linkis clients send strings, numbers
/// and booleans alike; each is used as its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a string, number or boolean")]
pub enum Scalar {
    Text(String),
    Number(serde_json::Number),
    Flag(bool),
    Null,
}

impl Scalar {
    pub(crate) fn into_text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Number(n) => n.to_string(),
            Scalar::Flag(b) => b.to_string(),
            Scalar::Null => String::new(),
        }
    }
}

impl PartialSchema for Scalar {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some("a string, number or boolean, used as its text"))
            .into()
    }
}

impl ToSchema for Scalar {}

/// `{}`: the answer of a call that has nothing to return.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Empty {}
