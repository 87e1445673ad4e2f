//! The Linkis REST envelope `{method, status, message, data}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::HangarError;

/// Linkis `MessageStatus` values carried in `status` (always an integer on the wire).
pub mod status {
    pub const NOT_LOGGED_IN: i32 = -1;
    pub const SUCCESS: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const VALIDATION_FAILED: i32 = 2;
    pub const AUTH_FAILED: i32 = 3;
    pub const WARNING: i32 = 4;
}

/// One REST response body, exactly as Linkis clients parse it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub method: Option<String>,
    pub status: i32,
    pub message: String,
    #[serde(default)]
    pub data: Value,
}

impl Envelope {
    /// A success envelope; `method` is the Linkis style `/api/<module>/<path>`.
    pub fn ok(method: impl Into<String>, data: Value) -> Self {
        Self { method: Some(method.into()), status: status::SUCCESS, message: "OK".into(), data }
    }

    /// A success envelope with a custom message.
    pub fn ok_msg(method: impl Into<String>, message: impl Into<String>, data: Value) -> Self {
        Self { method: Some(method.into()), status: status::SUCCESS, message: message.into(), data }
    }

    /// An error envelope built from a typed error: its code picks the status.
    pub fn error(method: impl Into<String>, err: &HangarError) -> Self {
        Self {
            method: Some(method.into()),
            status: err.code.linkis_status(),
            message: err.message.clone(),
            data: serde_json::json!({ "errorCode": err.code.number(), "errorName": err.code.name() }),
        }
    }

    /// Turn a parsed envelope into a result: `Ok(data)` when status is 0.
    pub fn into_result(self) -> Result<Value, HangarError> {
        if self.status == status::SUCCESS {
            return Ok(self.data);
        }
        let code = match self.status {
            status::NOT_LOGGED_IN => crate::ErrorCode::Unauthenticated,
            status::VALIDATION_FAILED => crate::ErrorCode::InvalidRequest,
            status::AUTH_FAILED => crate::ErrorCode::PermissionDenied,
            _ => self
                .data
                .get("errorCode")
                .and_then(Value::as_i64)
                .and_then(crate::ErrorCode::from_number)
                .unwrap_or(crate::ErrorCode::Internal),
        };
        Err(HangarError::new(code, self.message))
    }
}
