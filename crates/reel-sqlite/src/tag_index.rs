//! The tag index (`event_tags`, keyed by tag then position) and the queries it serves: pages of
//! a [`Query`]'s events and the first event matching an append's condition.
//!
//! Each query item is one ordered range read: the index range of its first tag after the
//! position asked for, joined (in that order, `CROSS JOIN` keeps SQLite from reordering) to its
//! other tags' index entries and, when it names types, to the event row. Items are merged in
//! memory. An item that names types but no tag reads the log itself from the position on; that
//! is cheap for a condition whose `after` is recent and is said so in docs/CONSISTENCY.md.

use reel_core::{Position, Query, QueryItem, ReelError};
use rusqlite::{params, params_from_iter, types::Value, Connection};

/// Index entries written per statement: one statement per entry costs more than the B-tree
/// insert itself.
const ENTRIES_PER_INSERT: usize = 64;

/// Writes the index entries of an append, `(tag, position)`, in key order (each index page is
/// then touched once, in turn). A tag listed twice on an event is indexed once.
pub fn insert_entries(conn: &Connection, entries: &mut [(&str, u64)]) -> rusqlite::Result<()> {
    entries.sort_unstable();
    let mut chunks = entries.chunks_exact(ENTRIES_PER_INSERT);
    if chunks.len() > 0 {
        let values = (0..ENTRIES_PER_INSERT).map(|i| format!("(?{}, ?{})", 2 * i + 1, 2 * i + 2)).collect::<Vec<_>>();
        let sql = format!("INSERT OR IGNORE INTO event_tags (tag, position) VALUES {}", values.join(", "));
        let mut statement = conn.prepare_cached(&sql)?;
        for chunk in chunks.by_ref() {
            let args = chunk
                .iter()
                .flat_map(|(tag, position)| [Value::Text(tag.to_string()), Value::Integer(*position as i64)]);
            statement.execute(params_from_iter(args))?;
        }
    }
    let mut statement = conn.prepare_cached("INSERT OR IGNORE INTO event_tags (tag, position) VALUES (?1, ?2)")?;
    for (tag, position) in chunks.remainder() {
        statement.execute(params![tag, *position as i64])?;
    }
    Ok(())
}

/// The tags column of an event: `NULL` when it has none, a JSON array otherwise.
pub fn tags_text(tags: &[String]) -> Option<String> {
    (!tags.is_empty()).then(|| serde_json::to_string(tags).unwrap_or_default())
}

/// The tags an event's column holds.
pub fn tags_from_text(text: Option<String>) -> Result<Vec<String>, ReelError> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| ReelError::storage("decoding stored tags", e)),
    }
}

/// The positions of one item's events after `after`, in order, at most `limit`: SQL and arguments.
pub fn item_sql(item: &QueryItem, after: Position, limit: usize) -> (String, Vec<Value>) {
    let mut args: Vec<Value> = vec![Value::Integer(after.0.min(i64::MAX as u64) as i64)];
    let sql = match item.tags.split_first() {
        Some((first, others)) => {
            let first = bind(&mut args, first);
            let mut sql = String::from("SELECT t0.position FROM event_tags t0");
            for (i, tag) in others.iter().enumerate() {
                let tag = bind(&mut args, tag);
                let t = i + 1;
                sql.push_str(&format!(
                    " CROSS JOIN event_tags t{t} ON t{t}.tag = {tag} AND t{t}.position = t0.position"
                ));
            }
            if !item.types.is_empty() {
                let list = bind_list(&mut args, &item.types);
                sql.push_str(&format!(" CROSS JOIN events e ON e.position = t0.position AND e.event_type IN ({list})"));
            }
            sql.push_str(&format!(" WHERE t0.tag = {first} AND t0.position > ?1 ORDER BY t0.position"));
            sql
        }
        None => {
            let list = bind_list(&mut args, &item.types);
            format!("SELECT position FROM events WHERE position > ?1 AND event_type IN ({list}) ORDER BY position")
        }
    };
    args.push(Value::Integer(limit as i64));
    (format!("{sql} LIMIT ?{}", args.len()), args)
}

/// Adds `value` as an argument; returns its placeholder.
fn bind(args: &mut Vec<Value>, value: &str) -> String {
    args.push(Value::Text(value.to_string()));
    format!("?{}", args.len())
}

/// Adds `values` as arguments; returns their placeholders, comma-separated.
fn bind_list(args: &mut Vec<Value>, values: &[String]) -> String {
    values.iter().map(|v| bind(args, v)).collect::<Vec<_>>().join(", ")
}

/// The positions of the query's events after `after`, in order, at most `limit`.
pub fn matching_positions(
    conn: &Connection,
    query: &Query,
    after: Position,
    limit: usize,
) -> Result<Vec<u64>, ReelError> {
    let err = |e| ReelError::storage("reading the tag index", e);
    let mut positions = Vec::new();
    for item in &query.items {
        let (sql, args) = item_sql(item, after, limit);
        let mut statement = conn.prepare_cached(&sql).map_err(err)?;
        let found = statement
            .query_map(params_from_iter(args), |r| r.get::<_, i64>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(err)?;
        positions.extend(found.into_iter().map(|p| p as u64));
    }
    positions.sort_unstable();
    positions.dedup();
    positions.truncate(limit);
    Ok(positions)
}

/// The first event matching the query after `after`, if any.
pub fn first_match(conn: &Connection, query: &Query, after: Position) -> Result<Option<Position>, ReelError> {
    Ok(matching_positions(conn, query, after, 1)?.first().map(|p| Position(*p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item is read through the tag index's range (or the position range for a type-only
    /// item), in index order: no scan of the log, no sort.
    #[test]
    fn items_are_read_through_the_index_without_a_sort() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::schema::open_and_migrate(&dir.path().join("reel.db")).unwrap();
        let items = [
            QueryItem::tags(["locker:7"]),
            QueryItem::tags(["locker:7", "customer:c-1"]),
            QueryItem::tags(["locker:7", "customer:c-1"]).with_types(["LockerReserved", "LockerReleased"]),
            QueryItem::types(["InvoiceCreated"]),
        ];
        for item in items {
            let (sql, args) = item_sql(&item, Position(10), 100);
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let steps: Vec<String> = plan
                .query_map(params_from_iter(args), |row| row.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let first = &steps[0];
            if item.tags.is_empty() {
                assert!(first.contains("SEARCH events USING INTEGER PRIMARY KEY (rowid>?)"), "{item:?}: {steps:?}");
            } else {
                assert!(first.contains("SEARCH t0 USING PRIMARY KEY (tag=? AND position>?)"), "{item:?}: {steps:?}");
            }
            assert!(steps.iter().all(|s| !s.starts_with("SCAN")), "no full scan: {item:?}: {steps:?}");
            assert!(steps.iter().all(|s| !s.contains("TEMP B-TREE")), "no sort: {item:?}: {steps:?}");
        }
    }

    /// An append with more entries than one insert statement takes (and a tag listed twice on
    /// an event) is indexed whole: every tag finds exactly its events.
    #[tokio::test]
    async fn a_large_append_is_indexed_whole() {
        use reel_core::{EventStore, ExpectedVersion, NewEvent, StreamName};
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SqliteStore::open(dir.path().join("reel.db")).unwrap();
        let events = (0..300u64)
            .map(|i| {
                NewEvent::new("T", "{}").with_tags([
                    format!("a:{}", i % 3),
                    format!("b:{}", i % 7),
                    format!("a:{}", i % 3),
                ])
            })
            .collect();
        store.append(&StreamName::new("many-1").unwrap(), ExpectedVersion::Any, events).await.unwrap();
        for (tag, every) in [("a:1", 3u64), ("b:6", 7)] {
            let query = Query::new(vec![QueryItem::tags([tag])]).unwrap();
            let page = store.read_query(&query, Position(0), 1000).await.unwrap();
            let want: Vec<u64> = (1..=300u64).filter(|p| (p - 1) % every == tag[2..].parse::<u64>().unwrap()).collect();
            assert_eq!(page.events.iter().map(|e| e.position.0).collect::<Vec<_>>(), want, "{tag}");
        }
    }
}
