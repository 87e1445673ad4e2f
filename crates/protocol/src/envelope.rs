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

/// One REST response body, exactly as Linkis clients parse it: `status` 0
/// with the endpoint's `data`, or another status with [`ErrorData`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Envelope<T = Value> {
    /// `/api/<module>/<path>` of the call (absent on login answers).
    pub method: Option<String>,
    /// 0 success, -1 not logged in, 1 error, 2 validation failed, 3 permission denied, 4 warning.
    pub status: i32,
    pub message: String,
    #[serde(default)]
    pub data: T,
}

/// The `data` of an error envelope: Hangar's error number and name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ErrorData {
    pub error_code: i64,
    pub error_name: String,
}

impl<T> Envelope<T> {
    /// A success envelope; `method` is the Linkis style `/api/<module>/<path>`.
    pub fn ok(method: impl Into<String>, data: T) -> Self {
        Self { method: Some(method.into()), status: status::SUCCESS, message: "OK".into(), data }
    }

    /// A success envelope with a custom message.
    pub fn ok_msg(method: impl Into<String>, message: impl Into<String>, data: T) -> Self {
        Self { method: Some(method.into()), status: status::SUCCESS, message: message.into(), data }
    }
}

impl Envelope<ErrorData> {
    /// An error envelope built from a typed error: its code picks the status.
    pub fn error(method: impl Into<String>, err: &HangarError) -> Self {
        Self {
            method: Some(method.into()),
            status: err.code.linkis_status(),
            message: err.message.clone(),
            data: ErrorData { error_code: err.code.number(), error_name: err.code.name().to_string() },
        }
    }
}

impl Envelope {
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
