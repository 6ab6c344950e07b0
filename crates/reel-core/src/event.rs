use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use bytes::Bytes;

use crate::{Position, ReelError, StreamName, StreamVersion, Timestamp};

/// The id of an event: a UUID, and the event's idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A new time-ordered id (UUIDv7), which keeps index inserts sequential.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    /// The 16 bytes of the UUID.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// From 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for EventId {
    type Err = ReelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EventId).map_err(|e| ReelError::InvalidArgument(format!("{s:?} is not a UUID: {e}")))
    }
}

/// An event to append. Without an `id`, the store assigns a UUIDv7.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Idempotency key; supply it to make retries safe.
    pub id: Option<EventId>,
    /// What happened, e.g. `DoorOpened`. Not empty.
    pub event_type: String,
    /// The payload; JSON by convention.
    pub data: Vec<u8>,
    /// Correlation, causation, device, occurred_at … as a JSON object.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Tags such as `locker:7`, which queries and append conditions select events by across
    /// streams (see [`crate::Query`]). Stored in the given order.
    pub tags: Vec<String>,
}

impl NewEvent {
    /// An event with raw bytes as payload and no metadata.
    pub fn new(event_type: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            id: None,
            event_type: event_type.into(),
            data: data.into(),
            metadata: Default::default(),
            tags: Vec::new(),
        }
    }

    /// An event whose payload is `value` serialized as JSON.
    pub fn json(event_type: impl Into<String>, value: &impl Serialize) -> Result<Self, ReelError> {
        let data = serde_json::to_vec(value)
            .map_err(|e| ReelError::InvalidArgument(format!("event data does not serialize: {e}")))?;
        Ok(Self::new(event_type, data))
    }

    /// Sets the idempotency key.
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the metadata object.
    pub fn with_metadata(mut self, metadata: serde_json::Map<String, serde_json::Value>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Adds tags (checked when the event is appended).
    pub fn with_tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Bytes this event occupies for the size limit: type, data, serialized metadata and tags.
    pub fn size_bytes(&self) -> usize {
        let metadata = if self.metadata.is_empty() {
            2
        } else {
            serde_json::to_vec(&self.metadata).map(|m| m.len()).unwrap_or(usize::MAX / 4)
        };
        self.event_type.len() + self.data.len() + metadata + self.tags.iter().map(String::len).sum::<usize>()
    }
}

/// An event as stored: what was appended plus where and when.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    /// Global position, gap-free from 1.
    pub position: Position,
    /// The stream it belongs to.
    pub stream: StreamName,
    /// Its version within the stream, from 0.
    pub stream_version: StreamVersion,
    /// Its id (idempotency key).
    pub id: EventId,
    /// Its type.
    pub event_type: String,
    /// Its payload. Cheap to clone; a store may hand out the payloads of one page as slices of
    /// one buffer, which stays allocated while any of them is held (copy with
    /// `Vec::from(&event.data[..])` to keep one payload for long on its own).
    pub data: Bytes,
    /// Its metadata object.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Its tags, in the order they were appended.
    pub tags: Vec<String>,
    /// When the store committed it.
    pub recorded_at: Timestamp,
}

impl RecordedEvent {
    /// Decodes the payload as JSON into `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, ReelError> {
        serde_json::from_slice(&self.data).map_err(|e| ReelError::InvalidEvent {
            index: None,
            reason: format!(
                "event {} ({} at position {}) does not decode: {e}",
                self.id, self.event_type, self.position
            ),
        })
    }

    /// Whether this stored event has the same id and content as `new`.
    pub fn same_content_as(&self, new: &NewEvent) -> bool {
        new.id == Some(self.id)
            && new.event_type == self.event_type
            && new.data == self.data
            && new.metadata == self.metadata
            && new.tags == self.tags
    }

    /// The event as it would be appended again (same id, type, data, metadata and tags).
    pub fn to_new_event(&self) -> NewEvent {
        NewEvent {
            id: Some(self.id),
            event_type: self.event_type.clone(),
            data: self.data.to_vec(),
            metadata: self.metadata.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// JSON form: `position, stream, stream_version, id, type, data, metadata, tags, recorded_at`
/// (`tags` only when there are any).
/// `data` is inlined when it is JSON; otherwise it is written as `data_base64`.
/// Written by [`crate::EventView`]'s `Serialize`, so a scan writes the same lines.
impl Serialize for RecordedEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::EventView::of(self).serialize(serializer)
    }
}

/// Reads the JSON form written by `Serialize` (what the HTTP API returns).
impl<'de> Deserialize<'de> for RecordedEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            position: Position,
            stream: StreamName,
            stream_version: StreamVersion,
            id: EventId,
            #[serde(rename = "type")]
            event_type: String,
            #[serde(default)]
            data: Option<Box<serde_json::value::RawValue>>,
            #[serde(default)]
            data_base64: Option<String>,
            #[serde(default)]
            metadata: serde_json::Map<String, serde_json::Value>,
            #[serde(default)]
            tags: Vec<String>,
            recorded_at: Timestamp,
        }
        let wire = Wire::deserialize(deserializer)?;
        let data = match (wire.data, wire.data_base64) {
            (Some(raw), _) => raw.get().as_bytes().to_vec(),
            (None, Some(encoded)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(encoded).map_err(serde::de::Error::custom)?
            }
            (None, None) => Vec::new(),
        };
        Ok(RecordedEvent {
            position: wire.position,
            stream: wire.stream,
            stream_version: wire.stream_version,
            id: wire.id,
            event_type: wire.event_type,
            data: data.into(),
            metadata: wire.metadata,
            tags: wire.tags,
            recorded_at: wire.recorded_at,
        })
    }
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(data: &[u8]) -> RecordedEvent {
        RecordedEvent {
            position: Position(5),
            stream: StreamName::new("unit-1").unwrap(),
            stream_version: StreamVersion(2),
            id: EventId::new_v7(),
            event_type: "Opened".into(),
            data: Bytes::copy_from_slice(data),
            metadata: Default::default(),
            tags: vec!["locker:7".into()],
            recorded_at: Timestamp::from_unix_micros(0),
        }
    }

    #[test]
    fn json_data_is_inlined_and_bytes_are_base64() {
        let json = serde_json::to_value(recorded(br#"{"a":1}"#)).unwrap();
        assert_eq!(json["data"]["a"], 1);
        assert_eq!(json["position"], 5);
        assert_eq!(json["type"], "Opened");
        assert_eq!(json["tags"][0], "locker:7");
        let json = serde_json::to_value(recorded(&[0xff, 0x00])).unwrap();
        assert_eq!(json["data_base64"], "/wA=");
        assert!(json.get("data").is_none());
    }

    #[test]
    fn the_json_form_reads_back() {
        for data in [&br#"{"b":2,"a":1}"#[..], &[0xff, 0x00][..]] {
            let event = recorded(data);
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<RecordedEvent>(&json).unwrap(), event);
        }
    }

    #[test]
    fn v7_ids_are_time_ordered() {
        let a = EventId::new_v7();
        let b = EventId::new_v7();
        assert!(a < b);
        assert!("not-a-uuid".parse::<EventId>().is_err());
    }
}
