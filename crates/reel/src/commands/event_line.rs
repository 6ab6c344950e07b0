//! One event as a JSON line: the form `append --file` reads and `export`/`import` use.

use anyhow::{anyhow, bail, Result};
use reel_core::wire::EventInput;
use reel_core::{EventId, NewEvent, StreamName, StreamVersion};

use crate::exit::InvalidInput;

/// An event line: an [`EventInput`] (`type`, `data` or `data_base64`, optional `id` and
/// `metadata`; exported lines also carry `stream` and `stream_version`).
pub struct EventLine {
    pub event: EventInput,
}

impl EventLine {
    /// Parses one line; errors name the line number.
    pub fn parse(line: &str, number: usize) -> Result<Self> {
        let event = serde_json::from_str(line).map_err(|e| anyhow!(InvalidInput(format!("line {number}: {e}"))))?;
        Ok(Self { event })
    }

    /// The event to append, with every field validated.
    pub fn to_new_event(&self, number: usize) -> Result<NewEvent> {
        self.event.to_new_event(None).map_err(|e| anyhow!(InvalidInput(format!("line {number}: {e}"))))
    }

    /// `stream` and `stream_version`, required for import.
    pub fn position_in_stream(&self, number: usize) -> Result<(StreamName, StreamVersion)> {
        let (Some(stream), Some(version)) = (&self.event.stream, self.event.stream_version) else {
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
    reel_core::wire::metadata_object(value).map_err(|reason| anyhow!(InvalidInput(reason)))
}
