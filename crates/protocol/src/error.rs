//! One error type at every crate boundary, mapped to one error code.
//!
//! The code decides the Linkis envelope `status` and the HTTP status, so the
//! REST API, the internal RPC and the CLI report the same failure the same way.

use serde::{Deserialize, Serialize};

use crate::envelope::status;

/// What went wrong, at the granularity a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Malformed body, missing or bad field, bad label value.
    InvalidRequest,
    /// No valid token or session.
    Unauthenticated,
    /// Authenticated but not allowed (another user's job or path).
    PermissionDenied,
    /// Unknown execID, taskID, engine or path.
    NotFound,
    /// No plugin for the requested engine type.
    UnknownEngineType,
    /// A label's max resource would be exceeded.
    NotEnoughResource,
    /// No EngineConnManager matches the labels or all are unavailable.
    NoEcm,
    /// An engine failed to start (exit during start, start deadline).
    EngineStartFailed,
    /// The engine refused the lock or the lock does not match.
    LockRejected,
    /// The engine exited or cannot be reached.
    EngineLost,
    /// A deadline passed.
    Timeout,
    /// A queue or limit is full.
    Overloaded,
    /// The server is shutting down.
    ShuttingDown,
    /// A bug or an I/O failure inside Hangar.
    Internal,
}

impl ErrorCode {
    /// The Linkis envelope status for this code.
    pub fn linkis_status(self) -> i32 {
        match self {
            ErrorCode::Unauthenticated => status::NOT_LOGGED_IN,
            ErrorCode::PermissionDenied => status::AUTH_FAILED,
            ErrorCode::InvalidRequest | ErrorCode::UnknownEngineType => status::VALIDATION_FAILED,
            _ => status::ERROR,
        }
    }

    /// The HTTP status; Linkis backends answer 200 with the status in the body
    /// except for authentication, which the gateway maps to 401.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthenticated => 401,
            _ => 200,
        }
    }

    /// A stable number, in the range of Linkis's error codes for the same cases.
    pub fn number(self) -> i64 {
        match self {
            ErrorCode::InvalidRequest => 10000,
            ErrorCode::Unauthenticated => 11000,
            ErrorCode::PermissionDenied => 11001,
            ErrorCode::NotFound => 10001,
            ErrorCode::UnknownEngineType => 10002,
            ErrorCode::NotEnoughResource => 11012,
            ErrorCode::NoEcm => 11013,
            ErrorCode::EngineStartFailed => 30002,
            ErrorCode::LockRejected => 30003,
            ErrorCode::EngineLost => 30004,
            ErrorCode::Timeout => 11055,
            ErrorCode::Overloaded => 11056,
            ErrorCode::ShuttingDown => 11057,
            ErrorCode::Internal => 20000,
        }
    }

    pub fn from_number(n: i64) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.number() == n)
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "InvalidRequest",
            ErrorCode::Unauthenticated => "Unauthenticated",
            ErrorCode::PermissionDenied => "PermissionDenied",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::UnknownEngineType => "UnknownEngineType",
            ErrorCode::NotEnoughResource => "NotEnoughResource",
            ErrorCode::NoEcm => "NoEcm",
            ErrorCode::EngineStartFailed => "EngineStartFailed",
            ErrorCode::LockRejected => "LockRejected",
            ErrorCode::EngineLost => "EngineLost",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Overloaded => "Overloaded",
            ErrorCode::ShuttingDown => "ShuttingDown",
            ErrorCode::Internal => "Internal",
        }
    }

    /// Whether asking again may succeed (drives the Entrance's ask retry).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotEnoughResource
                | ErrorCode::NoEcm
                | ErrorCode::LockRejected
                | ErrorCode::Timeout
                | ErrorCode::Overloaded
        )
    }

    const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::UnknownEngineType,
        ErrorCode::NotEnoughResource,
        ErrorCode::NoEcm,
        ErrorCode::EngineStartFailed,
        ErrorCode::LockRejected,
        ErrorCode::EngineLost,
        ErrorCode::Timeout,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ];
}

/// The error every Hangar crate returns across its boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct HangarError {
    pub code: ErrorCode,
    pub message: String,
}

impl HangarError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_are_unique() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_number(c.number()), Some(c));
        }
    }

    #[test]
    fn auth_maps_to_minus_one() {
        assert_eq!(ErrorCode::Unauthenticated.linkis_status(), -1);
        assert_eq!(ErrorCode::Unauthenticated.http_status(), 401);
        assert_eq!(ErrorCode::InvalidRequest.linkis_status(), 2);
    }
}
