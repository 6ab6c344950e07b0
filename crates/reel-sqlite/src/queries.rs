//! Small queries both the writer and the readers run.

use reel_core::{Position, ReelError, StreamName};
use rusqlite::{Connection, OptionalExtension};

/// Position of the last event (0 when empty). Positions are gap-free, so this is also the count.
pub fn head(conn: &Connection) -> Result<Position, ReelError> {
    conn.prepare_cached("SELECT coalesce(max(position), 0) FROM events")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map(|p| Position(p as u64))
        .map_err(|e| ReelError::storage("reading the head position", e))
}

/// The stream's row id and current version, if it has events.
pub fn stream_row(conn: &Connection, stream: &StreamName) -> Result<Option<(i64, u64)>, ReelError> {
    conn.prepare_cached("SELECT stream_id, version FROM streams WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([stream.as_str()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))).optional()
        })
        .map_err(|e| ReelError::storage(format!("looking up stream {stream}"), e))
}
