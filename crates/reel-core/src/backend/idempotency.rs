//! Recognising a retried append: the decisions every backend shares (backends only fetch rows).

use std::collections::HashMap;

use crate::{AppendResult, EventId, ExpectedVersion, NewEvent, Position, ReelError, StreamName, StreamVersion};

/// How many of a stream's latest events a retry is recognised among when its expected version no
/// longer says where its events sit.
pub const RECENT_ID_WINDOW: u64 = 1_000;

/// A stored event, as far as retry detection needs it.
#[derive(Clone, Debug)]
pub struct StoredForRetry {
    /// Global position.
    pub position: Position,
    /// Version in its stream.
    pub version: u64,
    /// Its id.
    pub id: EventId,
    /// Its type.
    pub event_type: String,
    /// Its payload.
    pub data: Vec<u8>,
    /// Its metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Its tags.
    pub tags: Vec<String>,
}

/// Where the events of an append with `expected` sit if it was stored before: right after the
/// expected version (`Exact`, `NoStream`); `None` when the expectation does not say.
pub fn retry_start(expected: ExpectedVersion) -> Option<u64> {
    match expected {
        ExpectedVersion::Exact(v) => v.0.checked_add(1),
        ExpectedVersion::NoStream => Some(0),
        _ => None,
    }
}

/// What the batch's ids say, given the stream's recent ids (id → version).
#[derive(Debug)]
pub enum RecentIds {
    /// None of the batch's ids is stored: a new append.
    New,
    /// The batch's first id is stored at this version: compare the stored events from there.
    RetryFrom(u64),
}

/// Classifies a batch against the recent ids; a later event's id being stored while the first's
/// is not is `DuplicateEventId`.
pub fn check_recent(
    stream: &StreamName,
    recent: &HashMap<EventId, u64>,
    events: &[NewEvent],
) -> Result<RecentIds, ReelError> {
    let first_known = events.iter().enumerate().find_map(|(i, e)| Some((i, e.id?, *recent.get(&e.id?)?)));
    match first_known {
        None => Ok(RecentIds::New),
        Some((0, _, version)) => Ok(RecentIds::RetryFrom(version)),
        Some((index, id, version)) => Err(ReelError::DuplicateEventId {
            stream: stream.clone(),
            id,
            reason: format!(
                "event #{index} is already stored at version {version}, but the batch is not a retry of that append"
            ),
        }),
    }
}

/// `stored` (the stream's events from where the earlier append began) must be exactly `events`:
/// same ids, same order, same content. Returns the earlier append's result.
pub fn same_append(
    stream: &StreamName,
    stored: &[StoredForRetry],
    events: &[NewEvent],
) -> Result<AppendResult, ReelError> {
    let duplicate = |id: EventId, reason: String| ReelError::DuplicateEventId { stream: stream.clone(), id, reason };
    let (Some(first), Some(first_new)) = (stored.first(), events.first()) else {
        let id = events.first().and_then(|e| e.id).unwrap_or(EventId(uuid::Uuid::nil()));
        return Err(duplicate(id, "the earlier append is not stored where expected".into()));
    };
    for (index, event) in events.iter().enumerate() {
        let Some(s) = stored.get(index) else {
            let id = event.id.or(first_new.id).unwrap_or(first.id);
            return Err(duplicate(
                id,
                format!("only the first {} events of this batch were stored by the earlier append", stored.len()),
            ));
        };
        if event.id != Some(s.id) {
            return Err(duplicate(
                s.id,
                format!("the earlier append stored a different event at version {}", s.version),
            ));
        }
        if event.event_type != s.event_type
            || event.data != s.data
            || event.metadata != s.metadata
            || event.tags != s.tags
        {
            return Err(duplicate(s.id, format!("already stored at version {} with different content", s.version)));
        }
    }
    let last = &stored[events.len() - 1];
    Ok(AppendResult {
        first_position: first.position,
        last_position: last.position,
        next_version: StreamVersion(last.version),
    })
}
