//! The writer task: group commit under the head-row lock.
//!
//! Concurrent appends of this process are gathered into one transaction. The transaction starts
//! by locking the head row, which every appender of every process must do, so transactions that
//! append commit one after another in position order: positions are gap-free and a follower can
//! never see position p + 1 before p. The lock is taken once per group, not once per append.

use std::collections::HashMap;
use std::sync::Arc;

use reel_core::idempotency::{check_recent, retry_start, same_append, RecentIds, StoredForRetry, RECENT_ID_WINDOW};
use reel_core::{
    AppendRequest, AppendResult, EventId, HeadNotifier, NewEvent, Position, ReelError, StreamName, StreamVersion,
    Timestamp,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Transaction};

/// Appends submitted together, answered together.
pub struct WriteJob {
    pub requests: Vec<AppendRequest>,
    pub reply: oneshot::Sender<Vec<Result<AppendResult, ReelError>>>,
}

/// Most jobs in one transaction.
const MAX_GROUP: usize = 512;

/// Statements prepared on the writer's connection, by SQL text: each statement then costs one
/// round trip instead of two (prepare, execute).
type Statements = HashMap<String, tokio_postgres::Statement>;

async fn prepared(
    tx: &Transaction<'_>,
    cache: &mut Statements,
    sql: String,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    if let Some(statement) = cache.get(&sql) {
        return Ok(statement.clone());
    }
    let statement = tx.prepare(&sql).await?;
    cache.insert(sql, statement.clone());
    Ok(statement)
}

/// Runs until every sender is dropped. Reconnects with `connect` when the connection is lost.
pub async fn run_writer<C, F>(
    mut client: Client,
    schema: String,
    mut jobs: mpsc::Receiver<WriteJob>,
    head: Arc<HeadNotifier>,
    connect: C,
) where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<Client, ReelError>>,
{
    let mut statements = Statements::new();
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if client.is_closed() {
            match connect().await {
                Ok(fresh) => {
                    client = fresh;
                    statements.clear();
                }
                Err(e) => {
                    for job in group {
                        let _ = job.reply.send(job.requests.iter().map(|_| Err(e.clone())).collect());
                    }
                    continue;
                }
            }
        }
        let requests: Vec<&AppendRequest> = group.iter().flat_map(|job| job.requests.iter()).collect();
        let mut results = commit_group(&mut client, &mut statements, &schema, &requests, &head).await.into_iter();
        for job in group {
            let answers: Vec<_> = results.by_ref().take(job.requests.len()).collect();
            let _ = job.reply.send(answers);
        }
    }
}

async fn commit_group(
    client: &mut Client,
    statements: &mut Statements,
    schema: &str,
    requests: &[&AppendRequest],
    notifier: &HeadNotifier,
) -> Vec<Result<AppendResult, ReelError>> {
    let fail_all = |e: ReelError| requests.iter().map(|_| Err(e.clone())).collect::<Vec<_>>();
    let storage = |what: &str, e: tokio_postgres::Error| ReelError::storage(what.to_string(), e);
    let now = Timestamp::now();
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(storage("starting an append transaction", e)),
    };
    let lock = prepared(&tx, statements, format!("SELECT position FROM {schema}.head FOR UPDATE")).await;
    let head = match async { tx.query_one(&lock?, &[]).await }.await {
        Ok(row) => Position(row.get::<_, i64>(0) as u64),
        Err(e) => return fail_all(storage("locking the head", e)),
    };
    let mut head_after = head;
    // Rows changed by earlier requests of this group.
    let mut rows: HashMap<StreamName, (i64, u64)> = HashMap::new();
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        match append_one(&tx, statements, schema, request, &mut rows, &mut head_after, now).await {
            Ok(result) => results.push(Ok(result)),
            Err(Rejected::Check(e)) => results.push(Err(e)),
            Err(Rejected::Write(e)) => return fail_all(e),
        }
    }
    if head_after != head {
        let moved = async {
            let update = prepared(&tx, statements, format!("UPDATE {schema}.head SET position = $1")).await?;
            tx.execute(&update, &[&(head_after.0 as i64)]).await?;
            // Delivered at commit, to every listener on this schema's channel.
            let notify = prepared(&tx, statements, "SELECT pg_notify($1, $2)".to_string()).await?;
            tx.execute(&notify, &[&channel(schema), &head_after.0.to_string()]).await
        };
        if let Err(e) = moved.await {
            return fail_all(storage("moving the head", e));
        }
    }
    if let Err(e) = tx.commit().await {
        return fail_all(storage("committing appends", e));
    }
    notifier.advance(head_after);
    results
}

/// The LISTEN/NOTIFY channel of a schema.
pub fn channel(schema: &str) -> String {
    format!("reel_head_{schema}")
}

enum Rejected {
    Check(ReelError),
    Write(ReelError),
}

impl From<ReelError> for Rejected {
    fn from(e: ReelError) -> Self {
        Rejected::Check(e)
    }
}

async fn append_one(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    schema: &str,
    request: &AppendRequest,
    rows: &mut HashMap<StreamName, (i64, u64)>,
    head: &mut Position,
    now: Timestamp,
) -> Result<AppendResult, Rejected> {
    let stream = &request.stream;
    let events = &request.events;
    let err = |e: tokio_postgres::Error| ReelError::storage(format!("appending to {stream}"), e);
    let row = match rows.get(stream) {
        Some(row) => Some(*row),
        None => {
            let lookup =
                prepared(tx, statements, format!("SELECT stream_id, version FROM {schema}.streams WHERE name = $1"))
                    .await
                    .map_err(err)?;
            tx.query_opt(&lookup, &[&stream.as_str()])
                .await
                .map_err(err)?
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1) as u64))
        }
    };
    let actual = row.map(|(_, v)| StreamVersion(v));
    if !request.expected.is_satisfied_by(actual) {
        if let (Some((stream_id, _)), Some(start), Some(first_id)) = (row, retry_start(request.expected), events[0].id)
        {
            let stored = stored_from(tx, statements, schema, stream_id, start, events.len()).await?;
            if stored.first().map(|s| s.id) == Some(first_id) {
                return Ok(same_append(stream, &stored, events)?);
            }
        }
        return Err(
            ReelError::WrongExpectedVersion { stream: stream.clone(), expected: request.expected, actual }.into()
        );
    }
    if let Some((stream_id, version)) = row {
        if events.iter().any(|e| e.id.is_some()) {
            let start = version.saturating_sub(RECENT_ID_WINDOW - 1) as i64;
            let recent_sql = format!(
                "SELECT event_id, stream_version FROM {schema}.events WHERE stream_id = $1 AND stream_version >= $2"
            );
            let recent_statement = prepared(tx, statements, recent_sql).await.map_err(err)?;
            let recent: HashMap<EventId, u64> = tx
                .query(&recent_statement, &[&stream_id, &start])
                .await
                .map_err(err)?
                .iter()
                .map(|r| (EventId(r.get(0)), r.get::<_, i64>(1) as u64))
                .collect();
            if let RecentIds::RetryFrom(from) = check_recent(stream, &recent, events)? {
                let stored = stored_from(tx, statements, schema, stream_id, from, events.len()).await?;
                return Ok(same_append(stream, &stored, events)?);
            }
        }
    }
    insert(tx, statements, schema, stream, row, events, head, now)
        .await
        .map(|(result, row)| {
            rows.insert(stream.clone(), row);
            result
        })
        .map_err(Rejected::Write)
}

#[allow(clippy::too_many_arguments)]
async fn insert(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    schema: &str,
    stream: &StreamName,
    row: Option<(i64, u64)>,
    events: &[NewEvent],
    head: &mut Position,
    now: Timestamp,
) -> Result<(AppendResult, (i64, u64)), ReelError> {
    let err = |e: tokio_postgres::Error| ReelError::storage(format!("appending to {stream}"), e);
    let n = events.len() as u64;
    let first_version = row.map_or(0, |(_, v)| v + 1);
    let last_version = first_version + n - 1;
    let stream_id: i64 = match row {
        Some((id, _)) => {
            tx.execute(
                &format!("UPDATE {schema}.streams SET version = $1 WHERE stream_id = $2"),
                &[&(last_version as i64), &id],
            )
            .await
            .map_err(err)?;
            id
        }
        None => tx
            .query_one(
                &format!(
                    "INSERT INTO {schema}.streams (name, category, version) VALUES ($1, $2, $3) RETURNING stream_id"
                ),
                &[&stream.as_str(), &stream.category(), &(last_version as i64)],
            )
            .await
            .map_err(err)?
            .get(0),
    };
    let first_position = head.next();
    let positions: Vec<i64> = (0..n).map(|i| (first_position.0 + i) as i64).collect();
    let versions: Vec<i64> = (0..n).map(|i| (first_version + i) as i64).collect();
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.id.unwrap_or_else(EventId::new_v7).0).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let data: Vec<&[u8]> = events.iter().map(|e| e.data.as_slice()).collect();
    let metadata: Vec<Option<serde_json::Value>> = events
        .iter()
        .map(|e| (!e.metadata.is_empty()).then(|| serde_json::Value::Object(e.metadata.clone())))
        .collect();
    // One round trip for the whole batch.
    let sql = format!(
        "INSERT INTO {schema}.events (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at)
         SELECT p, $2, v, i, t, d, m, $8 FROM UNNEST($1::bigint[], $3::bigint[], $4::uuid[], $5::text[], $6::bytea[], $7::jsonb[]) AS x(p, v, i, t, d, m)"
    );
    let insert_events = prepared(tx, statements, sql).await.map_err(err)?;
    tx.execute(
        &insert_events,
        &[&positions, &stream_id, &versions, &ids, &types, &data, &metadata, &now.unix_micros()],
    )
    .await
    .map_err(err)?;
    *head = Position(head.0 + n);
    let result = AppendResult { first_position, last_position: *head, next_version: StreamVersion(last_version) };
    Ok((result, (stream_id, last_version)))
}

async fn stored_from(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    schema: &str,
    stream_id: i64,
    start: u64,
    limit: usize,
) -> Result<Vec<StoredForRetry>, ReelError> {
    let sql = format!(
        "SELECT position, stream_version, event_id, event_type, data, metadata FROM {schema}.events
         WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3"
    );
    let fail = |e| ReelError::storage("checking for a retried append", e);
    let statement = prepared(tx, statements, sql).await.map_err(fail)?;
    let rows = tx.query(&statement, &[&stream_id, &(start as i64), &(limit as i64)]).await.map_err(fail)?;
    Ok(rows
        .iter()
        .map(|r| StoredForRetry {
            position: Position(r.get::<_, i64>(0) as u64),
            version: r.get::<_, i64>(1) as u64,
            id: EventId(r.get(2)),
            event_type: r.get(3),
            data: r.get(4),
            metadata: match r.get::<_, Option<serde_json::Value>>(5) {
                Some(serde_json::Value::Object(map)) => map,
                _ => Default::default(),
            },
        })
        .collect())
}
