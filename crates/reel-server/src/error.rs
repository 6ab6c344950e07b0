//! Every error the API returns: a status and a JSON body `{error, message}` (plus details for
//! some codes). Handlers return `ApiError`; store errors convert with their stable codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reel_core::ReelError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `wrong_expected_version`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Extra fields merged into the body (e.g. `expected` and `actual` on a conflict).
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

pub use reel_core::api::ErrorBody;

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<ReelError> for ApiError {
    fn from(e: ReelError) -> Self {
        let status = match &e {
            ReelError::WrongExpectedVersion { .. }
            | ReelError::DuplicateEventId { .. }
            | ReelError::ConditionFailed { .. }
            | ReelError::IllegalTransition { .. }
            | ReelError::LeaseLost { .. }
            | ReelError::SubscriptionChanged { .. } => StatusCode::CONFLICT,
            ReelError::InvalidStreamName { .. } | ReelError::InvalidEvent { .. } | ReelError::InvalidArgument(_) => {
                StatusCode::BAD_REQUEST
            }
            ReelError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ReelError::StreamNotFound { .. } | ReelError::SubscriptionNotFound { .. } => StatusCode::NOT_FOUND,
            ReelError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            ReelError::SchemaTooNew { .. } | ReelError::Closed | ReelError::Storage { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ReelError::SubscriptionFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let details = match &e {
            ReelError::WrongExpectedVersion { stream, expected, actual } => {
                let mut map = serde_json::Map::new();
                map.insert("stream".into(), serde_json::json!(stream));
                map.insert("expected".into(), serde_json::json!(expected));
                map.insert("actual".into(), serde_json::json!(actual.map(|v| v.0)));
                Some(map)
            }
            ReelError::ConditionFailed { stream, position } => {
                let mut map = serde_json::Map::new();
                map.insert("stream".into(), serde_json::json!(stream));
                map.insert("position".into(), serde_json::json!(position.0));
                Some(map)
            }
            ReelError::InvalidEvent { index, reason } => {
                let mut map = serde_json::Map::new();
                map.insert("index".into(), serde_json::json!(index));
                map.insert("reason".into(), serde_json::json!(reason));
                Some(map)
            }
            ReelError::TooLarge { what, size, limit } => {
                let mut map = serde_json::Map::new();
                map.insert("what".into(), serde_json::json!(what));
                map.insert("size".into(), serde_json::json!(size));
                map.insert("limit".into(), serde_json::json!(limit));
                Some(map)
            }
            _ => None,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        Self { status, code: e.code(), message: e.to_string(), details }
    }
}

/// The response for an error.
pub fn respond(error: ApiError) -> Response {
    {
        let this = error;
        let mut body = this.details.unwrap_or_default();
        body.insert("error".into(), this.code.into());
        body.insert("message".into(), this.message.into());
        (this.status, axum::Json(serde_json::Value::Object(body))).into_response()
    }
}
