//! Read queries on a small pool of connections, run off the async threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use reel_core::backend::PagePayloads;
use reel_core::{
    AllPage, Bytes, Direction, EventId, EventView, Position, Query, QueryPage, ReadAllFilter, RecordedEvent, ReelError,
    ScanEnd, ScanVisitor, StoreStats, StreamInfo, StreamName, StreamVersion, Timestamp,
};
use rusqlite::{params_from_iter, types::Value, Connection};
use tokio::sync::Semaphore;

use crate::queries::{head, stream_row};
use crate::schema::{open_connection, READER_CACHE_KIB, SMALL_CACHE_KIB};

/// Most events a page is sized for before it is read (larger pages grow as they fill).
const MAX_PRESIZED: usize = 10_000;

/// How many positions a filtered `read_all` scans before it returns a (possibly empty) page.
const FILTERED_SCAN_WINDOW: u64 = 65_536;

/// Pooled read connections plus a cache of stream names by id (names never change).
pub struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    names: RwLock<HashMap<i64, StreamName>>,
}

impl ReaderPool {
    pub fn new(path: &Path, size: usize) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            names: RwLock::new(HashMap::new()),
        }
    }

    /// Runs `work` on a pooled connection in a blocking thread.
    pub async fn run<T, F>(self: &Arc<Self>, work: F) -> Result<T, ReelError>
    where
        T: Send + 'static,
        F: FnOnce(&ReaderPool, &Connection) -> Result<T, ReelError> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| ReelError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = match pool.idle.lock().map(|mut idle| idle.pop()) {
                Ok(Some(conn)) => conn,
                _ => open_connection(&pool.path, true)?,
            };
            let result = work(&pool, &conn);
            if let Ok(mut idle) = pool.idle.lock() {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| ReelError::storage("running a read", e))?
    }

    fn stream_name(&self, conn: &Connection, stream_id: i64) -> Result<StreamName, ReelError> {
        if let Some(name) = self.names.read().ok().and_then(|n| n.get(&stream_id).cloned()) {
            return Ok(name);
        }
        let text: String = conn
            .prepare_cached("SELECT name FROM streams WHERE stream_id = ?1")
            .and_then(|mut s| s.query_row([stream_id], |r| r.get(0)))
            .map_err(|e| ReelError::storage("reading a stream name", e))?;
        let name = StreamName::new(text)?;
        if let Ok(mut names) = self.names.write() {
            if names.len() > 200_000 {
                names.clear();
            }
            names.insert(stream_id, name.clone());
        }
        Ok(name)
    }

    /// The events `sql` selects; `expected` is how many it likely returns (the page is sized
    /// for it up front, so a large page is not copied as it grows).
    fn events(
        &self,
        conn: &Connection,
        sql: &str,
        args: Vec<Value>,
        expected: usize,
    ) -> Result<Vec<RecordedEvent>, ReelError> {
        let err = |e| ReelError::storage("reading events", e);
        let mut statement = conn.prepare_cached(sql).map_err(err)?;
        let mut rows = statement.query(params_from_iter(args)).map_err(err)?;
        let mut events = Vec::with_capacity(expected.min(MAX_PRESIZED));
        // Payloads go into a few shared buffers, not one allocation each (see `PagePayloads`).
        let mut payloads = PagePayloads::new();
        // Consecutive events often share a stream: skip the shared cache for those.
        let mut last_stream: Option<(i64, StreamName)> = None;
        while let Some(row) = rows.next().map_err(err)? {
            let stream_id: i64 = row.get(1).map_err(err)?;
            let stream = match &last_stream {
                Some((id, name)) if *id == stream_id => name.clone(),
                _ => {
                    let name = self.stream_name(conn, stream_id)?;
                    last_stream = Some((stream_id, name.clone()));
                    name
                }
            };
            let metadata: Option<String> = row.get(6).map_err(err)?;
            let metadata = match metadata {
                None => Default::default(),
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| ReelError::storage("decoding stored metadata", e))?
                }
            };
            events.push(RecordedEvent {
                position: Position(row.get::<_, i64>(0).map_err(err)? as u64),
                stream,
                stream_version: StreamVersion(row.get::<_, i64>(2).map_err(err)? as u64),
                id: EventId::from_bytes(row.get(3).map_err(err)?),
                event_type: row.get(4).map_err(err)?,
                data: {
                    payloads.push(row.get_ref(5).and_then(|v| Ok(v.as_blob()?)).map_err(err)?);
                    Bytes::new()
                },
                metadata,
                tags: crate::tag_index::tags_from_text(row.get(8).map_err(err)?)?,
                recorded_at: Timestamp::from_unix_micros(row.get(7).map_err(err)?),
            });
        }
        payloads.fill_in(&mut events);
        Ok(events)
    }
}

const EVENT_COLUMNS: &str =
    "position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, tags";

/// Positions a scan reads per statement. Each statement is a read transaction of its own, so a
/// long scan never keeps the WAL from starting over for more than one chunk.
pub const SCAN_CHUNK: u64 = 65_536;

/// Shows every event from `from` up to the head as it is now to `visitor`, each borrowed from
/// its row: nothing is built or handed to another thread (`EventStore::scan`). Reads `chunk`
/// positions per statement.
pub fn scan(
    pool: &ReaderPool,
    conn: &Connection,
    from: Position,
    mut visitor: Box<dyn ScanVisitor>,
    chunk: u64,
) -> Result<ScanEnd, ReelError> {
    let err = |e| ReelError::storage("scanning the log", e);
    // A scan reads every page once: the pooled connection's large cache only slows it down
    // (schema.rs). Its usual size comes back however the scan ends.
    struct CacheSize<'c>(&'c Connection);
    impl Drop for CacheSize<'_> {
        fn drop(&mut self) {
            let _ = self.0.pragma_update(None, "cache_size", -READER_CACHE_KIB);
        }
    }
    conn.pragma_update(None, "cache_size", -SMALL_CACHE_KIB).map_err(err)?;
    let _restore = CacheSize(conn);
    let until = head(conn)?.0;
    let mut next = from.0.max(1);
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position BETWEEN ?1 AND ?2 ORDER BY position");
    let mut statement = conn.prepare_cached(&sql).map_err(err)?;
    // Consecutive events often share a stream: skip the shared cache for those.
    let mut last_stream: Option<(i64, StreamName)> = None;
    while next <= until {
        let chunk_end = until.min(next + chunk.max(1) - 1);
        let mut rows = statement.query([next as i64, chunk_end as i64]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            let stream_id: i64 = row.get(1).map_err(err)?;
            if !matches!(&last_stream, Some((id, _)) if *id == stream_id) {
                last_stream = Some((stream_id, pool.stream_name(conn, stream_id)?));
            }
            let Some((_, stream)) = &last_stream else { continue };
            let id: [u8; 16] = row
                .get_ref(3)
                .and_then(|v| Ok(v.as_blob()?))
                .map_err(err)?
                .try_into()
                .map_err(|_| ReelError::storage("scanning the log", "an event id is not 16 bytes"))?;
            let position = row.get::<_, i64>(0).map_err(err)? as u64;
            let view = EventView::stored(
                Position(position),
                stream,
                StreamVersion(row.get::<_, i64>(2).map_err(err)? as u64),
                EventId::from_bytes(id),
                row.get_ref(4).and_then(|v| Ok(v.as_str()?)).map_err(err)?,
                row.get_ref(5).and_then(|v| Ok(v.as_blob()?)).map_err(err)?,
                Timestamp::from_unix_micros(row.get(7).map_err(err)?),
                row.get_ref(6).and_then(|v| Ok(v.as_str_or_null()?)).map_err(err)?,
                row.get_ref(8).and_then(|v| Ok(v.as_str_or_null()?)).map_err(err)?,
            );
            next = position + 1;
            if visitor.visit(&view).is_break() {
                return Ok(ScanEnd { visitor, next: Position(next) });
            }
        }
        if next <= chunk_end {
            // Positions below the head are gap-free, so a chunk always comes back whole.
            return Err(ReelError::storage("scanning the log", format!("position {next} is missing")));
        }
    }
    Ok(ScanEnd { visitor, next: Position(next) })
}

pub fn read_stream(
    pool: &ReaderPool,
    conn: &Connection,
    stream: &StreamName,
    from: StreamVersion,
    direction: Direction,
    limit: usize,
) -> Result<Vec<RecordedEvent>, ReelError> {
    let Some((stream_id, _)) = stream_row(conn, stream)? else {
        return Err(ReelError::StreamNotFound { stream: stream.clone() });
    };
    let from = from.0.min(i64::MAX as u64) as i64;
    let sql = match direction {
        Direction::Forward => format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ?1 AND stream_version >= ?2 ORDER BY stream_version LIMIT ?3"
        ),
        Direction::Backward => format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ?1 AND stream_version <= ?2 ORDER BY stream_version DESC LIMIT ?3"
        ),
    };
    pool.events(conn, &sql, vec![stream_id.into(), from.into(), (limit as i64).into()], limit.min(64))
}

pub fn stream_version(conn: &Connection, stream: &StreamName) -> Result<Option<StreamVersion>, ReelError> {
    Ok(stream_row(conn, stream)?.map(|(_, v)| StreamVersion(v)))
}

pub fn read_all(
    pool: &ReaderPool,
    conn: &Connection,
    from: Position,
    filter: &ReadAllFilter,
    limit: usize,
) -> Result<AllPage, ReelError> {
    let from = Position(from.0.max(1));
    if filter.is_empty() {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position >= ?1 ORDER BY position LIMIT ?2");
        // Positions are gap-free: a page of the whole log is full unless it reaches the head.
        let events = pool.events(conn, &sql, vec![(from.0 as i64).into(), (limit as i64).into()], limit)?;
        let next = events.last().map_or(from, |e| e.position.next());
        return Ok(AllPage { events, next });
    }
    // One read transaction so the head and the page come from the same snapshot.
    conn.execute_batch("BEGIN").map_err(|e| ReelError::storage("starting a read", e))?;
    let page = filtered_page(pool, conn, from, filter, limit);
    let _ = conn.execute_batch("COMMIT");
    page
}

fn filtered_page(
    pool: &ReaderPool,
    conn: &Connection,
    from: Position,
    filter: &ReadAllFilter,
    limit: usize,
) -> Result<AllPage, ReelError> {
    let head = head(conn)?;
    let window_end = from.0.saturating_add(FILTERED_SCAN_WINDOW).min(head.0 + 1).max(from.0);
    let (sql, args) = filtered_sql(from, window_end, filter, limit);
    let events = pool.events(conn, &sql, args, 64)?;
    let next = if events.len() == limit {
        events.last().map_or(Position(window_end), |e| e.position.next())
    } else {
        Position(window_end)
    };
    Ok(AllPage { events, next })
}

/// The query of one filtered page: positions `from..window_end`, in position order.
fn filtered_sql(from: Position, window_end: u64, filter: &ReadAllFilter, limit: usize) -> (String, Vec<Value>) {
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position >= ?1 AND position < ?2");
    let mut args: Vec<Value> = vec![(from.0 as i64).into(), (window_end as i64).into()];
    let placeholders = |values: &[String], args: &mut Vec<Value>| {
        let start = args.len();
        args.extend(values.iter().map(|v| Value::Text(v.clone())));
        (start + 1..=args.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
    };
    if !filter.event_types.is_empty() {
        let list = placeholders(&filter.event_types, &mut args);
        sql.push_str(&format!(" AND event_type IN ({list})"));
    }
    if !filter.categories.is_empty() {
        let list = placeholders(&filter.categories, &mut args);
        // `+stream_id`: never through the stream index. With it, SQLite would read every event
        // of the matching streams and sort them for each page (a page of a 1 M-event stream
        // read 1 M rows); the position range is always the way in.
        sql.push_str(&format!(" AND +stream_id IN (SELECT stream_id FROM streams WHERE category IN ({list}))"));
    }
    if let Some(prefix) = &filter.stream_prefix {
        args.push(Value::Integer(prefix.len() as i64));
        args.push(Value::Blob(prefix.as_bytes().to_vec()));
        let (len, text) = (args.len() - 1, args.len());
        sql.push_str(&format!(
            " AND +stream_id IN (SELECT stream_id FROM streams WHERE substr(CAST(name AS BLOB), 1, ?{len}) = ?{text})"
        ));
    }
    for tag in &filter.tags {
        args.push(Value::Text(tag.clone()));
        let tag = args.len();
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM event_tags t WHERE t.tag = ?{tag} AND t.position = events.position)"
        ));
    }
    args.push(Value::Integer(limit as i64));
    sql.push_str(&format!(" ORDER BY position LIMIT ?{}", args.len()));
    (sql, args)
}

/// Positions read per statement when a query's page is fetched (well under SQLite's limit on
/// arguments).
const POSITIONS_PER_READ: usize = 500;

/// A page of `query`'s events after `after` and the head, from one read transaction.
pub fn read_query(
    pool: &ReaderPool,
    conn: &Connection,
    query: &Query,
    after: Position,
    limit: usize,
) -> Result<QueryPage, ReelError> {
    conn.execute_batch("BEGIN").map_err(|e| ReelError::storage("starting a read", e))?;
    let page = (|| {
        let head = head(conn)?;
        let positions = crate::tag_index::matching_positions(conn, query, after, limit)?;
        let mut events = Vec::with_capacity(positions.len());
        for chunk in positions.chunks(POSITIONS_PER_READ) {
            let list = (1..=chunk.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position IN ({list}) ORDER BY position");
            let args = chunk.iter().map(|p| Value::Integer(*p as i64)).collect();
            events.extend(pool.events(conn, &sql, args, chunk.len())?);
        }
        Ok(QueryPage { events, head })
    })();
    let _ = conn.execute_batch("COMMIT");
    page
}

pub fn streams(
    conn: &Connection,
    category: Option<&str>,
    after: Option<&StreamName>,
    limit: usize,
) -> Result<Vec<StreamInfo>, ReelError> {
    let err = |e| ReelError::storage("listing streams", e);
    let after = after.map_or(String::new(), |a| a.as_str().to_string());
    let (sql, args): (&str, Vec<Value>) = match category {
        Some(category) => (
            "SELECT name, version FROM streams WHERE category = ?1 AND name > ?2 ORDER BY name LIMIT ?3",
            vec![category.to_string().into(), after.into(), (limit as i64).into()],
        ),
        None => (
            "SELECT name, version FROM streams WHERE name > ?1 ORDER BY name LIMIT ?2",
            vec![after.into(), (limit as i64).into()],
        ),
    };
    let mut statement = conn.prepare_cached(sql).map_err(err)?;
    let rows = statement
        .query_map(params_from_iter(args), |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(err)?;
    rows.into_iter()
        .map(|(name, version)| {
            Ok(StreamInfo { stream: StreamName::new(name)?, version: StreamVersion(version as u64) })
        })
        .collect()
}

pub fn stats(conn: &Connection, path: &Path) -> Result<StoreStats, ReelError> {
    let err = |e| ReelError::storage("reading store statistics", e);
    let stream_count: i64 = conn.query_row("SELECT count(*) FROM streams", [], |r| r.get(0)).map_err(err)?;
    let head = head(conn)?;
    let file_bytes = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::fs::metadata(name).map(|m| m.len()).unwrap_or(0)
    };
    Ok(StoreStats {
        // Positions are gap-free from 1, so the head is the event count.
        event_count: head.0,
        stream_count: stream_count as u64,
        head,
        storage_bytes: Some(file_bytes("") + file_bytes("-wal")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_core::{EventStore, ExpectedVersion, NewEvent};

    /// A filtered page is read through the position range, never through the stream index: with
    /// the index, SQLite reads every event of the matching streams and sorts them, for every
    /// page, which made a category subscription on a long stream quadratic.
    #[tokio::test]
    async fn a_filtered_page_is_read_by_position_range_not_by_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reel.db");
        let store = crate::SqliteStore::open(&path).unwrap();
        for stream in ["unit-1", "unit-2", "door-1"] {
            let stream = StreamName::new(stream).unwrap();
            store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("T", "{}")]).await.unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        let filters = [
            ReadAllFilter { categories: vec!["unit".into()], ..Default::default() },
            ReadAllFilter { stream_prefix: Some("unit-1".into()), ..Default::default() },
            ReadAllFilter { categories: vec!["unit".into()], event_types: vec!["T".into()], ..Default::default() },
        ];
        for filter in filters {
            let (sql, args) = filtered_sql(Position(1), 100, &filter, 10);
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let steps: Vec<String> = plan
                .query_map(params_from_iter(args), |row| row.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let events_step = steps.iter().find(|s| s.contains("events")).expect("a step on events");
            assert!(events_step.contains("INTEGER PRIMARY KEY"), "{filter:?}: {steps:?}");
            assert!(!steps.iter().any(|s| s.contains("events_by_stream")), "{filter:?}: {steps:?}");
            assert!(!steps.iter().any(|s| s.contains("TEMP B-TREE")), "no sort: {filter:?}: {steps:?}");
        }
    }

    /// A scan reads statement after statement of `chunk` positions, each its own read
    /// transaction: every event is shown once across their edges, and events appended while the
    /// scan runs (between two statements) are left for the next scan.
    #[tokio::test]
    async fn a_scan_crosses_its_chunks_and_stops_at_the_head_it_began_with() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reel.db");
        let store = crate::SqliteStore::open(&path).unwrap();
        let stream = StreamName::new("unit-1").unwrap();
        let batch = || (0..25).map(|i| NewEvent::new("T", format!("{{\"i\":{i}}}"))).collect::<Vec<_>>();
        store.append(&stream, ExpectedVersion::Any, batch()).await.unwrap();
        let pool = Arc::new(ReaderPool::new(&path, 1));
        let (appended_tx, appended_rx) = std::sync::mpsc::channel::<()>();
        let (at_first_tx, mut at_first_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        struct Positions {
            seen: Vec<u64>,
            at_first: tokio::sync::mpsc::UnboundedSender<()>,
            appended: std::sync::mpsc::Receiver<()>,
        }
        impl ScanVisitor for Positions {
            fn visit(&mut self, event: &EventView<'_>) -> std::ops::ControlFlow<()> {
                self.seen.push(event.position.0);
                if self.seen.len() == 1 {
                    // Let an append commit while the scan is between its first rows and its
                    // next statements.
                    let _ = self.at_first.send(());
                    let _ = self.appended.recv();
                }
                std::ops::ControlFlow::Continue(())
            }
            fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
                self
            }
        }
        let visitor = Box::new(Positions { seen: Vec::new(), at_first: at_first_tx, appended: appended_rx });
        let scan = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move |pool, conn| scan(pool, conn, Position(3), visitor, 7)).await })
        };
        at_first_rx.recv().await.unwrap();
        store.append(&stream, ExpectedVersion::Any, batch()).await.unwrap();
        appended_tx.send(()).unwrap();
        let end = scan.await.unwrap().unwrap();
        assert_eq!(end.next, Position(26));
        let visitor = end.visitor.into_any().downcast::<Positions>().ok().unwrap();
        assert_eq!(visitor.seen, (3..=25).collect::<Vec<_>>(), "each event once, none appended after the start");
    }
}
