//! What every relayed message carries besides the event's data.

use reel_core::{Bytes, RecordedEvent};

/// The headers (or fields) of one relayed event; the payload is the event's data unchanged, or
/// a CloudEvent ([`Payload`]).
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
        if !event.tags.is_empty() {
            headers.push(("reel-tags", serde_json::to_string(&event.tags).unwrap_or_default()));
        }
        Self { headers }
    }
}

/// What a relayed message's payload holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Payload {
    /// The event's data, byte for byte (the headers carry everything else).
    #[default]
    Data,
    /// A CloudEvent 1.0 in structured JSON mode: `id` is the event id, `source` is `reel`,
    /// `subject` the stream, `type` the event type, `time` the recorded time, `data` the event's
    /// data (or `data_base64` when it is not JSON); the extension attributes `reelposition`,
    /// `reelstreamversion` and, when there is metadata, `reelmetadata` (JSON text), when there
    /// are tags, `reeltags` (a JSON array as text) follow.
    CloudEvent,
}

impl Payload {
    /// The payload of `event` in this form (the event's own buffer, not a copy, for `Data`).
    pub fn of(&self, event: &RecordedEvent) -> Bytes {
        match self {
            Payload::Data => event.data.clone(),
            Payload::CloudEvent => cloud_event(event).into(),
        }
    }

    /// The content type of the payload in this form, where the event's data is JSON.
    pub fn content_type(&self) -> &'static str {
        match self {
            Payload::Data => "application/json",
            Payload::CloudEvent => "application/cloudevents+json",
        }
    }
}

fn cloud_event(event: &RecordedEvent) -> Vec<u8> {
    use base64::Engine as _;
    let mut object = serde_json::Map::with_capacity(11);
    object.insert("specversion".into(), "1.0".into());
    object.insert("id".into(), event.id.to_string().into());
    object.insert("source".into(), "reel".into());
    object.insert("subject".into(), event.stream.as_str().into());
    object.insert("type".into(), event.event_type.clone().into());
    object.insert("time".into(), event.recorded_at.to_string().into());
    object.insert("reelposition".into(), event.position.0.into());
    object.insert("reelstreamversion".into(), event.stream_version.0.into());
    if !event.metadata.is_empty() {
        object.insert("reelmetadata".into(), serde_json::Value::Object(event.metadata.clone()).to_string().into());
    }
    if !event.tags.is_empty() {
        object.insert("reeltags".into(), serde_json::to_string(&event.tags).unwrap_or_default().into());
    }
    match serde_json::from_slice::<serde_json::Value>(&event.data) {
        Ok(data) => {
            object.insert("datacontenttype".into(), "application/json".into());
            object.insert("data".into(), data);
        }
        Err(_) => {
            object.insert("datacontenttype".into(), "application/octet-stream".into());
            let encoded = base64::engine::general_purpose::STANDARD.encode(&event.data);
            object.insert("data_base64".into(), encoded.into());
        }
    }
    serde_json::Value::Object(object).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_core::{EventId, Position, StreamName, StreamVersion, Timestamp};

    fn event(data: &[u8]) -> RecordedEvent {
        RecordedEvent {
            position: Position(42),
            stream: StreamName::new("unit-PL-7").unwrap(),
            stream_version: StreamVersion(3),
            id: EventId::new_v7(),
            event_type: "DoorOpened".into(),
            data: data.to_vec().into(),
            metadata: Default::default(),
            tags: Vec::new(),
            recorded_at: Timestamp::now(),
        }
    }

    #[test]
    fn data_is_passed_unchanged() {
        let event = event(b"{\"door\":3}");
        assert_eq!(Payload::Data.of(&event).as_ref(), b"{\"door\":3}");
    }

    #[test]
    fn a_cloud_event_carries_the_event_id_stream_position_and_data() {
        let event = event(b"{\"door\":3}");
        let cloud: serde_json::Value = serde_json::from_slice(&Payload::CloudEvent.of(&event)).unwrap();
        assert_eq!(cloud["specversion"], "1.0");
        assert_eq!(cloud["id"], event.id.to_string());
        assert_eq!(cloud["subject"], "unit-PL-7");
        assert_eq!(cloud["type"], "DoorOpened");
        assert_eq!(cloud["time"], event.recorded_at.to_string());
        assert_eq!(cloud["reelposition"], 42);
        assert_eq!(cloud["reelstreamversion"], 3);
        assert_eq!(cloud["data"], serde_json::json!({"door": 3}));
        assert!(cloud.get("reelmetadata").is_none());
    }

    #[test]
    fn data_that_is_not_json_goes_in_base64() {
        let event = event(&[0xff, 0x00, 0x01]);
        let cloud: serde_json::Value = serde_json::from_slice(&Payload::CloudEvent.of(&event)).unwrap();
        assert_eq!(cloud["data_base64"], "/wAB");
        assert_eq!(cloud["datacontenttype"], "application/octet-stream");
        assert!(cloud.get("data").is_none());
    }
}
