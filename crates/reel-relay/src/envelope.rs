//! What every relayed message carries besides the event's data.

use reel_core::RecordedEvent;

/// The headers (or fields) of one relayed event; the payload is the event's data unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Name and value pairs, in this order: event id, stream, type, stream version, position,
    /// recorded at (RFC 3339, microseconds), and the metadata as JSON when there is any.
    pub headers: Vec<(&'static str, String)>,
}

impl Envelope {
    /// The envelope of `event`.
    pub fn of(event: &RecordedEvent) -> Self {
        let mut headers = vec![
            ("reel-event-id", event.id.to_string()),
            ("reel-stream", event.stream.as_str().to_string()),
            ("reel-type", event.event_type.clone()),
            ("reel-stream-version", event.stream_version.0.to_string()),
            ("reel-position", event.position.0.to_string()),
            ("reel-recorded-at", event.recorded_at.to_string()),
        ];
        if !event.metadata.is_empty() {
            headers.push(("reel-metadata", serde_json::Value::Object(event.metadata.clone()).to_string()));
        }
        Self { headers }
    }
}
