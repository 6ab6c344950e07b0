//! Events as JSON from outside the process: the form `reel append --file`, `reel import` and the
//! HTTP API read. One parser, so every edge validates the same way.

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{EventId, NewEvent, ReelError};

/// An incoming event: `type` and `data` (any JSON) or `data_base64` (bytes), optional `id` (a
/// UUID, the idempotency key) and `metadata` (a JSON object). Exported events also carry `stream`
/// and `stream_version`, which an import uses; other fields are ignored.
#[derive(Deserialize, Debug, Clone)]
pub struct EventInput {
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload as JSON, stored as written.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// The payload as base64 bytes, for payloads that are not JSON.
    #[serde(default)]
    pub data_base64: Option<String>,
    /// Idempotency key.
    #[serde(default)]
    pub id: Option<String>,
    /// Correlation, causation, device …: a JSON object.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Tags such as `locker:7`, for queries and append conditions.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// The stream, in exported events.
    #[serde(default)]
    pub stream: Option<String>,
    /// The version in its stream, in exported events.
    #[serde(default)]
    pub stream_version: Option<u64>,
}

impl EventInput {
    /// The event to append, every field validated; `index` is its place in a batch, for errors.
    pub fn to_new_event(&self, index: Option<usize>) -> Result<NewEvent, ReelError> {
        let invalid = |reason: String| ReelError::InvalidEvent { index, reason };
        let data = match (&self.data, &self.data_base64) {
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| invalid(format!("data_base64 is not base64: {e}")))?,
            (Some(_), Some(_)) => return Err(invalid("give data or data_base64, not both".into())),
            (None, None) => return Err(invalid("missing field `data`".into())),
        };
        let mut event = NewEvent::new(self.event_type.clone(), data);
        if let Some(id) = &self.id {
            event.id = Some(id.parse::<EventId>().map_err(|e| invalid(e.to_string()))?);
        }
        if let Some(metadata) = &self.metadata {
            event.metadata = metadata_object(metadata.clone()).map_err(invalid)?;
        }
        if let Some(tags) = &self.tags {
            event.tags = tags.clone();
        }
        Ok(event)
    }
}

/// Metadata must be a JSON object.
pub fn metadata_object(value: serde_json::Value) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match value {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(format!("metadata must be a JSON object, got {}", json_kind(&other))),
    }
}

/// Refuses a batch that carries one event id twice: it can never be stored as given.
pub fn check_unique_ids(events: &[NewEvent]) -> Result<(), ReelError> {
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        if let Some(id) = event.id {
            if !seen.insert(id) {
                return Err(ReelError::InvalidEvent {
                    index: Some(index),
                    reason: format!("event id {id} appears twice in this batch"),
                });
            }
        }
    }
    Ok(())
}

/// Percent-encodes text for one URL path segment or query value (everything but `A-Z a-z 0-9
/// - . _ ~`), as the API's links and the HTTP client write stream names.
pub fn encode_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// Everything but RFC 3986's unreserved characters is escaped in a path segment or query value.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The JSON kind of a value, for messages.
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NewEvent, ReelError> {
        serde_json::from_str::<EventInput>(json).unwrap().to_new_event(Some(0))
    }

    #[test]
    fn accepts_json_or_base64_data() {
        assert_eq!(parse(r#"{"type":"A","data":{"x":1}}"#).unwrap().data, br#"{"x":1}"#);
        assert_eq!(parse(r#"{"type":"A","data_base64":"AAE="}"#).unwrap().data, vec![0, 1]);
        assert_eq!(parse(r#"{"type":"A","data":1,"tags":["a","b"]}"#).unwrap().tags, vec!["a", "b"]);
    }

    #[test]
    fn refuses_bad_fields_with_reasons() {
        for (json, reason) in [
            (r#"{"type":"A"}"#, "missing field `data`"),
            (r#"{"type":"A","data":1,"data_base64":"AA=="}"#, "not both"),
            (r#"{"type":"A","data_base64":"!!"}"#, "not base64"),
            (r#"{"type":"A","data":1,"id":"nope"}"#, "id"),
            (r#"{"type":"A","data":1,"metadata":[1]}"#, "metadata must be a JSON object, got an array"),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(e.contains(reason), "{json}: {e}");
        }
    }

    #[test]
    fn a_repeated_id_in_one_batch_is_refused() {
        let id = EventId::new_v7();
        let events = vec![NewEvent::new("A", "1").with_id(id), NewEvent::new("B", "2").with_id(id)];
        assert!(check_unique_ids(&events).unwrap_err().to_string().contains("appears twice"));
        assert!(check_unique_ids(&events[..1]).is_ok());
    }
}
