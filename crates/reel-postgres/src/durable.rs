//! The durable head: how far the log is known to be flushed to disk.
//!
//! Append transactions hold the head row lock, and PostgreSQL releases a row lock only when the
//! transaction ends, which for a durable commit is after its WAL flush. If appends waited for
//! their flush under the lock, commits from different processes would flush one after another.
//! So every append commits without waiting for the flush (`synchronous_commit = off` for that
//! transaction only), which releases the lock as soon as the commit record is written, and its
//! writer then runs a *barrier*: a tiny durable write that
//! records the head it can see. WAL is flushed in order, so when the barrier's commit is flushed,
//! every commit it could see is flushed too, and barriers of many processes share one flush
//! (PostgreSQL's own group commit). The one-call append (`append_group_v5`, migrations 7, 10 and 11) sends
//! its barrier right behind the call, in the same round trip.
//!
//! An append is answered only after its durable commit or its barrier (invariant 5). Readers read
//! only up to the durable head, the highest position a barrier's row or a durable commit (in the
//! head row's `durable`) records, so nobody ever sees an
//! event that a crash of the database could still take back; positions committed but not yet
//! confirmed stay invisible until their barrier (invariant 4 is unchanged: the durable head only
//! moves forward, and everything below it is committed). A crash of the database loses at most a
//! suffix of unconfirmed, unanswered appends, because commit order is position order.
//!
//! Each writer connection writes its own row (keyed by its backend pid), so barriers never wait
//! for each other's locks. Rows of connections that are gone are swept when a writer connects.

use reel_core::{Position, ReelError};
use tokio_postgres::Client;

use crate::writer::{prepared, Statements};

/// SQL for the durable head, as a scalar subquery: the highest position a barrier recorded, or
/// a durable commit recorded in the head row (migration 11), whichever is greater.
pub(crate) fn durable_head_sql(schema: &str) -> String {
    format!(
        "(SELECT greatest(coalesce(max(d.position), 0), (SELECT h.durable FROM {schema}.head h))
          FROM {schema}.durable_head d)"
    )
}

/// Confirms every commit this connection can see: records the current head in the
/// connection's row with a durable commit, and returns the durable head.
pub(crate) async fn confirm(client: &Client, statements: &mut Statements, schema: &str) -> Result<Position, ReelError> {
    let barrier = barrier(client, statements, schema).await?;
    run_barrier(client, &barrier).await
}

/// The barrier statement, prepared on this connection, for callers that pipeline it behind a
/// write of their own (it then confirms that write too).
pub(crate) async fn barrier(
    client: &Client,
    statements: &mut Statements,
    schema: &str,
) -> Result<tokio_postgres::Statement, ReelError> {
    prepared(client, statements, barrier_sql(schema)).await.map_err(barrier_failed)
}

/// Runs the barrier; the durable head it returns covers every commit the connection made before.
pub(crate) async fn run_barrier(client: &Client, barrier: &tokio_postgres::Statement) -> Result<Position, ReelError> {
    let row = client.query_one(barrier, &[]).await.map_err(barrier_failed)?;
    Ok(Position(row.get::<_, i64>(0) as u64))
}

fn barrier_failed(e: tokio_postgres::Error) -> ReelError {
    crate::storage_error("confirming that appends are on disk", e)
}

/// The error for appends that committed but could not be confirmed on disk: not an
/// acknowledgement (invariant 5), and a retry with the same event ids is recognised exactly.
pub(crate) fn unconfirmed(cause: ReelError) -> ReelError {
    ReelError::storage("appending (the outcome is unknown; retry with event ids)", cause)
}

/// The barrier statement: a durable write of the head as this connection sees it.
fn barrier_sql(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.durable_head AS d (connection_pid, position)
         SELECT pg_backend_pid(), h.position FROM {schema}.head h
         ON CONFLICT (connection_pid) DO UPDATE SET position = greatest(d.position, excluded.position)
         RETURNING d.position"
    )
}

/// Tells every listener of the schema that the log is durable up to `position`: a `NOTIFY` in a
/// transaction of its own that does not wait for a flush (it writes nothing that needs one).
/// NOTIFY takes a database-wide lock until its transaction ends, so it is in neither the
/// barrier's transaction (the lock would be held across the flush, serialising every process's
/// barriers) nor the append's (signalling every listener would lengthen the head lock: measured
/// as twice the p50 with 16 processes). Each process announces from its listening connection
/// (listener.rs), and only what no announcement it has heard covers yet.
pub(crate) async fn announce(
    client: &Client,
    statements: &mut Statements,
    schema: &str,
    position: Position,
) -> Result<(), ReelError> {
    let fail = |e| crate::storage_error("announcing the durable head", e);
    let sql = "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)".to_string();
    let statement = prepared(client, statements, sql).await.map_err(fail)?;
    client.query_one(&statement, &[&crate::writer::channel(schema), &position.0.to_string()]).await.map_err(fail)?;
    Ok(())
}

/// Removes the rows of connections that no longer exist, never the highest one (the durable head
/// must not move back).
pub(crate) async fn sweep(client: &Client, schema: &str) -> Result<u64, ReelError> {
    client
        .execute(
            &format!(
                "DELETE FROM {schema}.durable_head
                 WHERE connection_pid <> ALL (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
                   AND position < {}",
                durable_head_sql(schema)
            ),
            &[],
        )
        .await
        .map_err(|e| crate::storage_error("sweeping durable-head rows of closed connections", e))
}

/// The head row and the durable head: when the first is ahead for long, a writer stopped between
/// its commit and its barrier (a crash of that process), and someone else must confirm.
pub(crate) async fn heads(client: &Client, schema: &str) -> Result<(Position, Position), ReelError> {
    let row = client
        .query_one(&format!("SELECT (SELECT position FROM {schema}.head), {}", durable_head_sql(schema)), &[])
        .await
        .map_err(|e| crate::storage_error("reading the head position", e))?;
    Ok((Position(row.get::<_, i64>(0) as u64), Position(row.get::<_, i64>(1) as u64)))
}
