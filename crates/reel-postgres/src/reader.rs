//! Read queries.

use reel_core::backend::PagePayloads;
use reel_core::{
    AllPage, Bytes, Direction, EventId, Position, Query, QueryPage, ReadAllFilter, RecordedEvent, ReelError,
    StoreStats, StreamInfo, StreamName, StreamVersion, Timestamp,
};
use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::durable::durable_head_sql;
use crate::tag_index::tags_from_json;

/// How many positions a filtered `read_all` scans before it returns a (possibly empty) page.
const FILTERED_SCAN_WINDOW: i64 = 65_536;

fn err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> ReelError {
    move |e| crate::storage_error(what, e)
}

const EVENT_COLUMNS: &str =
    "e.position, s.name, e.stream_version, e.event_id, e.event_type, e.data, e.metadata, e.recorded_at, e.tags";

/// The events of `rows`, whose column 1 is the stream's name.
fn events(rows: &[Row]) -> Result<Vec<RecordedEvent>, ReelError> {
    let streams = rows.iter().map(|row| StreamName::new(row.get::<_, String>(1))).collect::<Result<Vec<_>, _>>()?;
    Ok(events_of_streams(rows, streams))
}

/// The events of `rows`, in `streams` (one per row, in order), their payloads copied into shared
/// buffers (see [`PagePayloads`]).
fn events_of_streams(rows: &[Row], streams: Vec<StreamName>) -> Vec<RecordedEvent> {
    let mut payloads = PagePayloads::new();
    let mut events = rows
        .iter()
        .zip(streams)
        .map(|(row, stream)| {
            payloads.push(row.get(5));
            RecordedEvent {
                position: Position(row.get::<_, i64>(0) as u64),
                stream,
                stream_version: StreamVersion(row.get::<_, i64>(2) as u64),
                id: EventId(row.get(3)),
                event_type: row.get(4),
                data: Bytes::new(),
                metadata: metadata(row, 6),
                tags: tags_from_json(row.get(8)),
                recorded_at: Timestamp::from_unix_micros(row.get(7)),
            }
        })
        .collect::<Vec<_>>();
    payloads.fill_in(&mut events);
    events
}

fn metadata(row: &Row, index: usize) -> serde_json::Map<String, serde_json::Value> {
    match row.get::<_, Option<serde_json::Value>>(index) {
        Some(serde_json::Value::Object(map)) => map,
        _ => Default::default(),
    }
}

/// The durable head: readers never go past it (see durable.rs).
pub async fn head(client: &Client, schema: &str) -> Result<Position, ReelError> {
    let row = client
        .query_one(&format!("SELECT {}", durable_head_sql(schema)), &[])
        .await
        .map_err(err("reading the head position"))?;
    Ok(Position(row.get::<_, i64>(0) as u64))
}

pub async fn stream_version(
    client: &Client,
    schema: &str,
    stream: &StreamName,
) -> Result<Option<StreamVersion>, ReelError> {
    // The stream row's version may include an append not yet confirmed on disk; the newest event
    // at or below the durable head is what readers may see: one step backwards through the
    // stream's index. `+ 0` keeps that bound a filter: as an index condition PostgreSQL read the
    // whole primary key up to the durable head and intersected it with the stream's entries, a
    // cost that grew with the log (75–100 ms at 160,000 events, the largest share of a fleet's
    // reads, against 0.2 ms now).
    let row = client
        .query_opt(
            &format!(
                "SELECT (SELECT e.stream_version FROM {schema}.events e
                         WHERE e.stream_id = s.stream_id AND e.position + 0 <= {}
                         ORDER BY e.stream_version DESC LIMIT 1)
                 FROM {schema}.streams s WHERE s.name = $1",
                durable_head_sql(schema)
            ),
            &[&stream.as_str()],
        )
        .await
        .map_err(err("looking up a stream"))?;
    // A stream whose events are all beyond the durable head is not there yet for readers.
    Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)).map(|v| StreamVersion(v as u64)))
}

pub async fn read_stream(
    client: &Client,
    schema: &str,
    stream: &StreamName,
    from: StreamVersion,
    direction: Direction,
    limit: usize,
) -> Result<Vec<RecordedEvent>, ReelError> {
    let Some(row) = client
        .query_opt(&format!("SELECT stream_id FROM {schema}.streams WHERE name = $1"), &[&stream.as_str()])
        .await
        .map_err(err("looking up a stream"))?
    else {
        return Err(ReelError::StreamNotFound { stream: stream.clone() });
    };
    let stream_id: i64 = row.get(0);
    let from = from.0.min(i64::MAX as u64) as i64;
    let (comparison, order) = match direction {
        Direction::Forward => (">=", "ASC"),
        Direction::Backward => ("<=", "DESC"),
    };
    // The durable-head bound is a filter, not an index condition (see `stream_version`).
    let rows = client
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM {schema}.events e JOIN {schema}.streams s ON s.stream_id = e.stream_id
                 WHERE e.stream_id = $1 AND e.stream_version {comparison} $2 AND e.position + 0 <= {durable}
                 ORDER BY e.stream_version {order} LIMIT $3",
                durable = durable_head_sql(schema)
            ),
            &[&stream_id, &from, &(limit as i64)],
        )
        .await
        .map_err(err("reading a stream"))?;
    events(&rows)
}

/// Stream names by id, cached for the store's life (a stream's name never changes), so catch-up
/// reads need no join: a page costs one index range scan plus, for streams not seen yet, one
/// lookup of their names.
#[derive(Default)]
pub struct StreamNames {
    names: std::sync::RwLock<HashMap<i64, StreamName>>,
}

/// Names kept at most; past this the cache starts over (it only saves lookups).
const MAX_CACHED_NAMES: usize = 200_000;

impl StreamNames {
    async fn resolve(&self, client: &Client, schema: &str, ids: &[i64]) -> Result<Vec<StreamName>, ReelError> {
        let mut missing: Vec<i64> = {
            let names = self.names.read().unwrap_or_else(|e| e.into_inner());
            ids.iter().copied().filter(|id| !names.contains_key(id)).collect()
        };
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            let rows = client
                .query(&format!("SELECT stream_id, name FROM {schema}.streams WHERE stream_id = ANY($1)"), &[&missing])
                .await
                .map_err(err("looking up stream names"))?;
            let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
            if names.len() + rows.len() > MAX_CACHED_NAMES {
                names.clear();
            }
            for row in &rows {
                names.insert(row.get(0), StreamName::new(row.get::<_, String>(1))?);
            }
        }
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        ids.iter()
            .map(|id| {
                names
                    .get(id)
                    .cloned()
                    .ok_or_else(|| ReelError::storage("looking up stream names", format!("no stream row with id {id}")))
            })
            .collect()
    }
}

pub async fn read_all(
    client: &Client,
    schema: &str,
    names: &StreamNames,
    from: Position,
    filter: &ReadAllFilter,
    limit: usize,
) -> Result<AllPage, ReelError> {
    let from = from.0.max(1) as i64;
    if filter.is_empty() {
        // Positions are gap-free, so the page is exactly the range [from, from + limit).
        let rows = client
            .query(
                &format!(
                    "SELECT position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, tags
                     FROM {schema}.events WHERE position >= $1 AND position < $2 AND position <= {}
                     ORDER BY position",
                    durable_head_sql(schema)
                ),
                &[&from, &(from.saturating_add(limit as i64))],
            )
            .await
            .map_err(err("reading events"))?;
        let ids: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        let streams = names.resolve(client, schema, &ids).await?;
        let events = events_of_streams(&rows, streams);
        let next = events.last().map_or(Position(from as u64), |e| e.position.next());
        return Ok(AllPage { events, next });
    }
    // The window ends at the durable head, so `next` never passes an event that is not visible
    // (or not confirmed on disk) yet.
    let head = head(client, schema).await?.0 as i64;
    let window_end = (from + FILTERED_SCAN_WINDOW).min(head + 1).max(from);
    let categories: Vec<&str> = filter.categories.iter().map(String::as_str).collect();
    let types: Vec<&str> = filter.event_types.iter().map(String::as_str).collect();
    let prefix = filter.stream_prefix.clone().unwrap_or_default();
    let tags = serde_json::Value::Array(filter.tags.iter().cloned().map(serde_json::Value::String).collect());
    let params: [&(dyn ToSql + Sync); 8] =
        [&from, &window_end, &types, &categories, &prefix, &(limit as i64), &(prefix.len() as i32), &tags];
    // The log is walked in position order and each event's stream looked up by its key (the
    // lateral subquery with `OFFSET 0` keeps PostgreSQL from turning the join around). Left to
    // choose, it often started from the matching streams instead and, for each one, scanned the
    // whole position window: 859 streams × a window of 65,536 positions took seconds a page and
    // a projection's rebuild ran at 800 events/s.
    let rows = client
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM {schema}.events e
                 CROSS JOIN LATERAL (
                    SELECT name, category FROM {schema}.streams WHERE stream_id = e.stream_id OFFSET 0
                 ) s
                 WHERE e.position >= $1 AND e.position < $2
                   AND (cardinality($3::text[]) = 0 OR e.event_type = ANY($3))
                   AND (cardinality($4::text[]) = 0 OR s.category = ANY($4))
                   AND ($7 = 0 OR left(s.name, $7) = $5)
                   AND (jsonb_array_length($8::jsonb) = 0 OR e.tags @> $8::jsonb)
                 ORDER BY e.position LIMIT $6"
            ),
            &params,
        )
        .await
        .map_err(err("reading events"))?;
    let events = events(&rows)?;
    let next = if events.len() == limit {
        events.last().map_or(Position(window_end as u64), |e| e.position.next())
    } else {
        Position(window_end as u64)
    };
    Ok(AllPage { events, next })
}

/// A page of `query`'s events after `after`, up to the durable head, which is the page's head:
/// every event up to it is committed and stays as read, so it is what the page considered.
pub async fn read_query(
    client: &Client,
    schema: &str,
    query: &Query,
    after: Position,
    limit: usize,
) -> Result<QueryPage, ReelError> {
    // One round trip each (no prepare): the head first, then every item of the query pipelined.
    let head = client
        .query_typed_one(&format!("SELECT {}", durable_head_sql(schema)), &[])
        .await
        .map_err(err("reading the head position"))?;
    let head = Position(head.get::<_, i64>(0) as u64);
    let bound = format!("AND e.position <= {}", head.0);
    let rows = crate::tag_index::query_rows(client, schema, query, EVENT_COLUMNS, &bound, after, limit).await?;
    let events = events(&rows)?;
    Ok(QueryPage { events, head })
}

pub async fn streams(
    client: &Client,
    schema: &str,
    category: Option<&str>,
    after: Option<&StreamName>,
    limit: usize,
) -> Result<Vec<StreamInfo>, ReelError> {
    let after = after.map_or("", |a| a.as_str());
    let rows = client
        .query(
            &format!(
                "SELECT name, version FROM {schema}.streams WHERE ($1::text IS NULL OR category = $1) AND name > $2
                 ORDER BY name LIMIT $3"
            ),
            &[&category, &after, &(limit as i64)],
        )
        .await
        .map_err(err("listing streams"))?;
    rows.iter()
        .map(|r| {
            Ok(StreamInfo {
                stream: StreamName::new(r.get::<_, String>(0))?,
                version: StreamVersion(r.get::<_, i64>(1) as u64),
            })
        })
        .collect()
}

pub async fn stats(client: &Client, schema: &str) -> Result<StoreStats, ReelError> {
    let head = head(client, schema).await?;
    let row = client
        .query_one(&format!("SELECT count(*) FROM {schema}.streams"), &[])
        .await
        .map_err(err("reading statistics"))?;
    let size = client
        .query_one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&schema],
        )
        .await
        .map_err(err("reading statistics"))?;
    Ok(StoreStats {
        event_count: head.0,
        stream_count: row.get::<_, i64>(0) as u64,
        head,
        storage_bytes: Some(size.get::<_, i64>(0) as u64),
    })
}
