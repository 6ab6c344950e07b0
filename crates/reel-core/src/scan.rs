//! A scan of the whole log that hands each event to a visitor without building it.
//!
//! [`AllReader`](crate::AllReader) hands out pages of owned [`RecordedEvent`]s, which a follower
//! keeps, retries and passes on. Loading a read model into memory at start-up, a checksum or a
//! count only looks at each event once, and for those building the events and handing pages
//! between threads is most of the cost. [`scan_all`] calls a visitor with an [`EventView`]
//! borrowed from the row being read, on the thread that reads it.

use std::any::Any;
use std::ops::ControlFlow;

use serde::ser::SerializeMap;
use serde::Serialize;

use crate::{
    EventId, EventStore, Position, ReadAllFilter, RecordedEvent, ReelError, StreamName, StreamVersion, Timestamp,
};

/// One stored event as a scan sees it: borrowed from the row being read, valid during one call
/// of the visitor. [`EventView::to_recorded`] copies it out.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    /// Global position.
    pub position: Position,
    /// The stream it belongs to.
    pub stream: &'a StreamName,
    /// Its version within the stream.
    pub stream_version: StreamVersion,
    /// Its id.
    pub id: EventId,
    /// Its type.
    pub event_type: &'a str,
    /// Its payload.
    pub data: &'a [u8],
    /// When the store committed it.
    pub recorded_at: Timestamp,
    details: Details<'a>,
}

/// Metadata and tags: as the store keeps them (decoded only when asked for), or from an event
/// that is already built.
#[derive(Debug, Clone, Copy)]
enum Details<'a> {
    /// JSON texts: an object of metadata and an array of tags (`None`: none).
    Stored {
        metadata: Option<&'a str>,
        tags: Option<&'a str>,
    },
    Built(&'a RecordedEvent),
}

impl<'a> EventView<'a> {
    /// A view of a stored row whose metadata and tags are JSON texts (an object and an array of
    /// strings), decoded only when asked for. For backends.
    #[allow(clippy::too_many_arguments)]
    pub fn stored(
        position: Position,
        stream: &'a StreamName,
        stream_version: StreamVersion,
        id: EventId,
        event_type: &'a str,
        data: &'a [u8],
        recorded_at: Timestamp,
        metadata: Option<&'a str>,
        tags: Option<&'a str>,
    ) -> Self {
        let details = Details::Stored { metadata, tags };
        Self { position, stream, stream_version, id, event_type, data, recorded_at, details }
    }

    /// A view of an event that is already built.
    pub fn of(event: &'a RecordedEvent) -> Self {
        Self {
            position: event.position,
            stream: &event.stream,
            stream_version: event.stream_version,
            id: event.id,
            event_type: &event.event_type,
            data: &event.data,
            recorded_at: event.recorded_at,
            details: Details::Built(event),
        }
    }

    /// Its metadata object (decoded on each call).
    pub fn metadata(&self) -> Result<serde_json::Map<String, serde_json::Value>, ReelError> {
        match self.details {
            Details::Built(event) => Ok(event.metadata.clone()),
            Details::Stored { metadata: None, .. } => Ok(Default::default()),
            Details::Stored { metadata: Some(text), .. } => {
                serde_json::from_str(text).map_err(|e| ReelError::storage("decoding stored metadata", e))
            }
        }
    }

    /// Its tags, in the order they were appended (decoded on each call).
    pub fn tags(&self) -> Result<Vec<String>, ReelError> {
        match self.details {
            Details::Built(event) => Ok(event.tags.clone()),
            Details::Stored { tags: None, .. } => Ok(Vec::new()),
            Details::Stored { tags: Some(text), .. } => {
                serde_json::from_str(text).map_err(|e| ReelError::storage("decoding stored tags", e))
            }
        }
    }

    /// Decodes the payload as JSON into `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, ReelError> {
        serde_json::from_slice(self.data).map_err(|e| ReelError::InvalidEvent {
            index: None,
            reason: format!(
                "event {} ({} at position {}) does not decode: {e}",
                self.id, self.event_type, self.position
            ),
        })
    }

    /// The event as an owned [`RecordedEvent`].
    pub fn to_recorded(&self) -> Result<RecordedEvent, ReelError> {
        if let Details::Built(event) = self.details {
            return Ok(event.clone());
        }
        Ok(RecordedEvent {
            position: self.position,
            stream: self.stream.clone(),
            stream_version: self.stream_version,
            id: self.id,
            event_type: self.event_type.to_string(),
            data: crate::Bytes::copy_from_slice(self.data),
            metadata: self.metadata()?,
            tags: self.tags()?,
            recorded_at: self.recorded_at,
        })
    }
}

/// The JSON form of [`RecordedEvent`] (`position, stream, stream_version, id, type, data,
/// metadata, tags, recorded_at`; `tags` only when there are any; `data_base64` for a payload
/// that is not JSON). Stored metadata and tags are written as stored, without decoding them.
impl Serialize for EventView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde_json::value::RawValue;
        fn raw<E: serde::ser::Error>(text: &str) -> Result<&RawValue, E> {
            serde_json::from_str(text).map_err(E::custom)
        }
        let has_tags = match self.details {
            Details::Stored { tags, .. } => tags.is_some(),
            Details::Built(event) => !event.tags.is_empty(),
        };
        let mut map = serializer.serialize_map(Some(8 + usize::from(has_tags)))?;
        map.serialize_entry("position", &self.position)?;
        map.serialize_entry("stream", self.stream)?;
        map.serialize_entry("stream_version", &self.stream_version)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("type", self.event_type)?;
        match serde_json::from_slice::<&RawValue>(self.data) {
            Ok(data) => map.serialize_entry("data", data)?,
            Err(_) => map.serialize_entry("data_base64", &crate::event::base64_encode(self.data))?,
        }
        match self.details {
            Details::Built(event) => map.serialize_entry("metadata", &event.metadata)?,
            Details::Stored { metadata: None, .. } => map.serialize_entry("metadata", &serde_json::Map::new())?,
            Details::Stored { metadata: Some(text), .. } => map.serialize_entry("metadata", raw::<S::Error>(text)?)?,
        }
        match self.details {
            Details::Built(event) if has_tags => map.serialize_entry("tags", &event.tags)?,
            Details::Stored { tags: Some(text), .. } => map.serialize_entry("tags", raw::<S::Error>(text)?)?,
            _ => {}
        }
        map.serialize_entry("recorded_at", &self.recorded_at)?;
        map.end()
    }
}

/// What a scan calls for each event. Backends call it; applications use [`scan_all`].
pub trait ScanVisitor: Send + 'static {
    /// Called once per event, in position order. `Break` ends the scan after this event.
    fn visit(&mut self, event: &EventView<'_>) -> ControlFlow<()>;

    /// For [`scan_all`], which takes its state back when the scan ends.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// [`scan_all`]'s visitor: the caller's state and function.
struct Fold<S, F> {
    state: S,
    visit: F,
}

impl<S, F> ScanVisitor for Fold<S, F>
where
    S: Send + 'static,
    F: FnMut(&mut S, &EventView<'_>) -> ControlFlow<()> + Send + 'static,
{
    fn visit(&mut self, event: &EventView<'_>) -> ControlFlow<()> {
        (self.visit)(&mut self.state, event)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// How a scan ended: the visitor, and where a later scan would go on.
pub struct ScanEnd {
    /// The visitor the scan was given.
    pub visitor: Box<dyn ScanVisitor>,
    /// The position after the last event visited (the `from` of a scan that visited none).
    pub next: Position,
}

/// Events a default [`EventStore::scan`] reads per page.
const SCAN_PAGE: usize = 1_000;

/// The default [`EventStore::scan`]: pages of `read_all`, each event shown to the visitor as a
/// view of the built event, up to `until`.
pub(crate) async fn scan_in_pages<S: EventStore + ?Sized>(
    store: &S,
    from: Position,
    until: Position,
    mut visitor: Box<dyn ScanVisitor>,
) -> Result<ScanEnd, ReelError> {
    let mut next = Position(from.0.max(1));
    while next <= until {
        let limit = (until.0 - next.0 + 1).min(SCAN_PAGE as u64) as usize;
        let page = store.read_all(next, &ReadAllFilter::default(), limit).await?;
        if page.events.is_empty() {
            break;
        }
        for event in page.events.iter().take_while(|e| e.position <= until) {
            next = event.position.next();
            if visitor.visit(&EventView::of(event)).is_break() {
                return Ok(ScanEnd { visitor, next });
            }
        }
    }
    Ok(ScanEnd { visitor, next })
}

/// Calls `visit` with `state` and every event from position `from` up to the head as it was when
/// the scan began, in position order, and returns the state and the position after the last
/// event visited. `visit` returns `ControlFlow::Break(())` to stop early; events appended during
/// the scan are left for a scan from the returned position.
///
/// On SQLite `visit` runs on the blocking thread that reads the rows and the events are never
/// built; other stores read pages of `read_all` and call it on the task that awaits the scan.
/// Either way it should neither block for long nor wait on the async runtime: send what it
/// finds over a channel if something async must follow. Reading and `visit` take turns on one
/// thread, so a scan suits visitors that do little per event (counting, checksums, a read model
/// kept in memory); for work that costs as much as reading the row, [`crate::AllReader`] reads
/// the next page while the caller works on this one.
///
/// ```no_run
/// # async fn example(store: &dyn reel_core::EventStore) -> Result<(), reel_core::ReelError> {
/// use std::collections::HashMap;
/// use std::ops::ControlFlow;
///
/// // Count the events of each type.
/// let (counts, next) = reel_core::scan_all(store, reel_core::Position(1), HashMap::new(), |counts, event| {
///     *counts.entry(event.event_type.to_string()).or_insert(0u64) += 1;
///     ControlFlow::Continue(())
/// })
/// .await?;
/// println!("{counts:?}; the next scan starts at {next}");
/// # Ok(()) }
/// ```
pub async fn scan_all<S, F>(
    store: &(impl EventStore + ?Sized),
    from: Position,
    state: S,
    visit: F,
) -> Result<(S, Position), ReelError>
where
    S: Send + 'static,
    F: FnMut(&mut S, &EventView<'_>) -> ControlFlow<()> + Send + 'static,
{
    let end = store.scan(from, Box::new(Fold { state, visit })).await?;
    let fold =
        end.visitor.into_any().downcast::<Fold<S, F>>().map_err(|_| {
            ReelError::storage("scanning the log", "the store handed back a different visitor".to_string())
        })?;
    Ok((fold.state, end.next))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view of a stored row writes the same JSON as the event built from it, whether its
    /// metadata and tags are there or not and whether its payload is JSON or not.
    #[test]
    fn a_stored_view_serializes_as_the_event_built_from_it() {
        let stream = StreamName::new("unit-7").unwrap();
        let id = EventId::new_v7();
        let cases: [(&[u8], Option<&str>, Option<&str>); 3] = [
            (br#"{"door":3}"#, Some(r#"{"device":"d-7","n":1}"#), Some(r#"["locker:7","site:north"]"#)),
            (&[0, 159, 146, 150], None, None),
            (b"[1,2]", None, Some(r#"["a"]"#)),
        ];
        for (data, metadata, tags) in cases {
            let view = EventView::stored(
                Position(9),
                &stream,
                StreamVersion(2),
                id,
                "Opened",
                data,
                Timestamp::from_unix_micros(1_700_000_000_000_000),
                metadata,
                tags,
            );
            let built = view.to_recorded().unwrap();
            assert_eq!(built.tags.is_empty(), tags.is_none());
            assert_eq!(built.metadata.is_empty(), metadata.is_none());
            let (from_view, from_event) =
                (serde_json::to_string(&view).unwrap(), serde_json::to_string(&built).unwrap());
            assert_eq!(from_view, from_event);
            let back: RecordedEvent = serde_json::from_str(&from_view).unwrap();
            assert_eq!(back, built, "the JSON reads back as the event");
        }
    }
}
