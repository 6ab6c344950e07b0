//! What the client writes (append bodies) and how it reads error answers; the response bodies
//! themselves are `reel_core::api`, shared with the server.

use base64::Engine as _;
use reel_core::{AppendCondition, EventId, ExpectedVersion, NewEvent, ReelError, StreamName, StreamVersion};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
struct AppendBody<'a> {
    expected_version: ExpectedVersion,
    events: Vec<WireEvent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    condition: Option<&'a AppendCondition>,
}

#[derive(Serialize)]
struct WireEvent<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    metadata: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
}

/// The append body. A JSON payload goes as `data`, written verbatim (its bytes, key order
/// included, are what the server stores); anything else as `data_base64`.
pub fn append_body(
    expected: ExpectedVersion,
    events: &[NewEvent],
    condition: Option<&AppendCondition>,
) -> Result<Vec<u8>, ReelError> {
    let events = events
        .iter()
        .map(|e| {
            let data = serde_json::from_slice::<&RawValue>(&e.data).ok();
            WireEvent {
                event_type: &e.event_type,
                data,
                data_base64: data.is_none().then(|| base64::engine::general_purpose::STANDARD.encode(&e.data)),
                id: e.id.map(|id| id.to_string()),
                metadata: &e.metadata,
                tags: &e.tags,
            }
        })
        .collect();
    serde_json::to_vec(&AppendBody { expected_version: expected, events, condition })
        .map_err(|e| ReelError::storage("encoding an append", e))
}

/// The typed error for an error answer.
pub fn error(status: StatusCode, body: &[u8], stream: Option<&StreamName>) -> ReelError {
    let Ok(body) = serde_json::from_slice::<reel_core::api::ErrorBody>(body) else {
        return ReelError::storage(
            format!("calling the server (HTTP {status})"),
            String::from_utf8_lossy(body).chars().take(200).collect::<String>(),
        );
    };
    let stream = || stream.cloned().unwrap_or_else(|| StreamName::new("unknown").expect("valid"));
    match body.error.as_str() {
        "wrong_expected_version" => ReelError::WrongExpectedVersion {
            stream: stream(),
            expected: match body.expected {
                Some(serde_json::Value::Number(n)) => ExpectedVersion::Exact(StreamVersion(n.as_u64().unwrap_or(0))),
                Some(serde_json::Value::String(s)) => s.parse().unwrap_or(ExpectedVersion::Any),
                _ => ExpectedVersion::Any,
            },
            actual: body.actual.map(StreamVersion),
        },
        "duplicate_event_id" => {
            ReelError::DuplicateEventId { stream: stream(), id: EventId(uuid::Uuid::nil()), reason: body.message }
        }
        "condition_failed" => {
            ReelError::ConditionFailed { stream: stream(), position: reel_core::Position(body.position.unwrap_or(0)) }
        }
        "stream_not_found" => ReelError::StreamNotFound { stream: stream() },
        "subscription_not_found" => ReelError::SubscriptionNotFound { id: body.message },
        "invalid_stream_name" => ReelError::InvalidStreamName { name: stream().to_string(), reason: body.message },
        "invalid_event" => ReelError::InvalidEvent { index: body.index, reason: body.reason.unwrap_or(body.message) },
        "too_large" => ReelError::TooLarge {
            what: body.what.unwrap_or(body.message),
            size: body.size.unwrap_or(0),
            limit: body.limit.unwrap_or(0),
        },
        _ if status.is_client_error() => {
            ReelError::InvalidArgument(format!("the server refused the call ({status}): {}", body.message))
        }
        _ => ReelError::storage(format!("calling the server (HTTP {status})"), body.message),
    }
}
