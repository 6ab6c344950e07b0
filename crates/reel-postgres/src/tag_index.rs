//! The tag index (`event_tags`, keyed by tag then position, migration 10) and the queries it
//! serves: pages of a [`Query`]'s events and the first event matching an append's condition.
//!
//! Each query item is one ordered range read: the index range of its first tag after the
//! position asked for, each candidate checked against the event row (its other tags with
//! `jsonb` containment, its type). Items run pipelined on one connection and are merged in
//! memory. An item that names types but no tag reads the log itself from the position on: cheap
//! for a condition whose `after` is recent, as docs/CONSISTENCY.md says.

use reel_core::{AppendCondition, Position, Query, QueryItem, ReelError};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

/// An item's SQL and its parameters; `columns` is what each matching row returns, `bound` an
/// extra condition on `e.position` (the durable head for readers).
pub struct ItemQuery {
    /// The statement.
    pub sql: String,
    first_tag: Option<String>,
    other_tags: serde_json::Value,
    types: Vec<String>,
    after: i64,
    limit: i64,
}

impl ItemQuery {
    /// The positions (or `columns`) of the item's events after `after`, in order, at most `limit`.
    pub fn new(schema: &str, item: &QueryItem, columns: &str, bound: &str, after: Position, limit: usize) -> Self {
        let (first_tag, sql) = match item.tags.split_first() {
            Some((first, _)) => (
                Some(first.clone()),
                format!(
                    "SELECT {columns} FROM {schema}.event_tags t0
                     JOIN {schema}.events e ON e.position = t0.position
                     JOIN {schema}.streams s ON s.stream_id = e.stream_id
                     WHERE t0.tag = $1 AND t0.position > $2 {bound}
                       AND (jsonb_array_length($3::jsonb) = 0 OR e.tags @> $3::jsonb)
                       AND (cardinality($4::text[]) = 0 OR e.event_type = ANY($4))
                     ORDER BY t0.position LIMIT $5"
                ),
            ),
            None => (
                None,
                format!(
                    "SELECT {columns} FROM {schema}.events e
                     JOIN {schema}.streams s ON s.stream_id = e.stream_id
                     WHERE ($1::text IS NULL) AND e.position > $2 {bound}
                       AND jsonb_array_length($3::jsonb) = 0
                       AND e.event_type = ANY($4)
                     ORDER BY e.position LIMIT $5"
                ),
            ),
        };
        let others = item.tags.iter().skip(1).cloned().map(serde_json::Value::String).collect();
        Self {
            sql,
            first_tag,
            other_tags: serde_json::Value::Array(others),
            types: item.types.clone(),
            after: after.0.min(i64::MAX as u64) as i64,
            limit: limit as i64,
        }
    }

    /// The statement's parameters with their types, in order: the statement runs in one round
    /// trip, without being prepared first.
    pub fn params(&self) -> [(&(dyn ToSql + Sync), Type); 5] {
        [
            (&self.first_tag, Type::TEXT),
            (&self.after, Type::INT8),
            (&self.other_tags, Type::JSONB),
            (&self.types, Type::TEXT_ARRAY),
            (&self.limit, Type::INT8),
        ]
    }
}

/// Runs every item of `query` (pipelined) and returns their rows, merged by position (column
/// 0), without repeats, at most `limit`.
pub async fn query_rows<C: GenericClient + Sync>(
    client: &C,
    schema: &str,
    query: &Query,
    columns: &str,
    bound: &str,
    after: Position,
    limit: usize,
) -> Result<Vec<tokio_postgres::Row>, ReelError> {
    let items: Vec<ItemQuery> =
        query.items.iter().map(|item| ItemQuery::new(schema, item, columns, bound, after, limit)).collect();
    let reads = items.iter().map(|item| async move { client.query_typed(&item.sql, &item.params()).await });
    let results = futures_util::future::join_all(reads).await;
    let mut rows = Vec::new();
    for result in results {
        rows.extend(result.map_err(|e| crate::storage_error("reading the tag index", e))?);
    }
    rows.sort_by_key(|row| row.get::<_, i64>(0));
    rows.dedup_by_key(|row| row.get::<_, i64>(0));
    rows.truncate(limit);
    Ok(rows)
}

/// The items of several conditions as parallel arrays, one element per item: what the
/// `condition_matches` function (migration 10) takes, besides `requests`, which maps its items
/// back to the requests they belong to.
#[derive(Default)]
pub struct ConditionRows {
    /// The index of the request the item's condition belongs to.
    pub requests: Vec<i32>,
    /// The item's first tag (`NULL`: a type-only item).
    pub first_tags: Vec<Option<String>>,
    /// Its other tags, a JSON array.
    pub other_tags: Vec<serde_json::Value>,
    /// Its types, a JSON array (empty: any type).
    pub types: Vec<serde_json::Value>,
    /// The condition's `after`.
    pub after: Vec<i64>,
}

impl ConditionRows {
    /// Adds the items of request `request`'s condition.
    pub fn add(&mut self, request: usize, condition: &AppendCondition) {
        let strings =
            |list: &[String]| serde_json::Value::Array(list.iter().cloned().map(serde_json::Value::String).collect());
        for item in &condition.fail_if_events_match.items {
            self.requests.push(request as i32);
            self.first_tags.push(item.tags.first().cloned());
            self.other_tags.push(strings(item.tags.get(1..).unwrap_or_default()));
            self.types.push(strings(&item.types));
            self.after.push(condition.after_position().0.min(i64::MAX as u64) as i64);
        }
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

/// The tags column as stored: a JSON array, `NULL` when there are none.
pub fn tags_json(tags: &[String]) -> Option<serde_json::Value> {
    (!tags.is_empty()).then(|| serde_json::Value::Array(tags.iter().cloned().map(serde_json::Value::String).collect()))
}

/// The tags a stored column holds.
pub fn tags_from_json(value: Option<serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::Array(tags)) => {
            tags.into_iter().filter_map(|t| if let serde_json::Value::String(s) = t { Some(s) } else { None }).collect()
        }
        _ => Vec::new(),
    }
}
