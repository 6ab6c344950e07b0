//! One event as a JSON line: the form `append --file` reads and `export`/`import` use.

use anyhow::{anyhow, bail, Result};
use base64::Engine;
use reel_core::{EventId, NewEvent, StreamName, StreamVersion};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::exit::InvalidInput;

/// An event line: `type` and `data` (or `data_base64`), optional `id` and `metadata`;
/// exported lines also carry `stream` and `stream_version` (and `position`, `recorded_at`, ignored).
#[derive(Deserialize)]
pub struct EventLine {
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Option<Box<RawValue>>,
    pub data_base64: Option<String>,
    pub id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub stream: Option<String>,
    pub stream_version: Option<u64>,
}

impl EventLine {
    /// Parses one line; errors name the line number.
    pub fn parse(line: &str, number: usize) -> Result<Self> {
        serde_json::from_str(line).map_err(|e| anyhow!(InvalidInput(format!("line {number}: {e}"))))
    }

    /// The event to append, with every field validated.
    pub fn to_new_event(&self, number: usize) -> Result<NewEvent> {
        let data = match (&self.data, &self.data_base64) {
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| anyhow!(InvalidInput(format!("line {number}: data_base64 is not base64: {e}"))))?,
            (Some(_), Some(_)) => bail!(InvalidInput(format!("line {number}: give data or data_base64, not both"))),
            (None, None) => bail!(InvalidInput(format!("line {number}: missing field `data`"))),
        };
        let mut event = NewEvent::new(self.event_type.clone(), data);
        if let Some(id) = &self.id {
            event.id = Some(parse_id(id).map_err(|e| anyhow!(InvalidInput(format!("line {number}: {e}"))))?);
        }
        if let Some(metadata) = &self.metadata {
            event.metadata =
                metadata_object(metadata.clone()).map_err(|e| anyhow!(InvalidInput(format!("line {number}: {e}"))))?;
        }
        Ok(event)
    }

    /// `stream` and `stream_version`, required for import.
    pub fn position_in_stream(&self, number: usize) -> Result<(StreamName, StreamVersion)> {
        let (Some(stream), Some(version)) = (&self.stream, self.stream_version) else {
            bail!(InvalidInput(format!(
                "line {number}: an import line needs `stream` and `stream_version` (as written by `reel export`)"
            )));
        };
        let stream =
            StreamName::new(stream.clone()).map_err(|e| anyhow!(InvalidInput(format!("line {number}: {e}"))))?;
        Ok((stream, StreamVersion(version)))
    }
}

/// Parses a UUID event id.
pub fn parse_id(text: &str) -> Result<EventId> {
    text.parse::<EventId>().map_err(|e| anyhow!(InvalidInput(e.to_string())))
}

/// Metadata must be a JSON object.
pub fn metadata_object(value: serde_json::Value) -> Result<serde_json::Map<String, serde_json::Value>> {
    match value {
        serde_json::Value::Object(map) => Ok(map),
        other => bail!(InvalidInput(format!("metadata must be a JSON object, got {}", json_kind(&other)))),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
