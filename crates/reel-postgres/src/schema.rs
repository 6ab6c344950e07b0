//! Schema name validation and versioned migrations, applied under an advisory lock.

use reel_core::ReelError;
use tokio_postgres::Client;

/// Migrations in order; `{s}` is the schema name. Migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: streams, events and the head row. Appends lock the head row (`FOR UPDATE`) for their
    // whole transaction, so positions are assigned in commit order: gap-free, and a reader never
    // finds an event below a position it has passed (a bigserial alone cannot promise that).
    "CREATE TABLE {s}.streams (
        stream_id bigserial PRIMARY KEY,
        name      text NOT NULL UNIQUE,
        category  text NOT NULL,
        version   bigint NOT NULL
     );
     CREATE INDEX streams_by_category ON {s}.streams (category, name);
     CREATE TABLE {s}.events (
        position       bigint PRIMARY KEY,
        stream_id      bigint NOT NULL,
        stream_version bigint NOT NULL,
        event_id       uuid NOT NULL,
        event_type     text NOT NULL,
        data           bytea NOT NULL,
        metadata       jsonb,
        recorded_at    bigint NOT NULL,
        UNIQUE (stream_id, stream_version)
     );
     CREATE TABLE {s}.head (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        position  bigint NOT NULL
     );
     INSERT INTO {s}.head (singleton, position) VALUES (true, 0);",
    // 2: subscriptions (leases and compare-and-swap revisions) and parked events.
    "CREATE TABLE {s}.subscriptions (
        id                    text PRIMARY KEY,
        group_name            text NOT NULL,
        run_mode              text NOT NULL,
        status                text NOT NULL,
        position              bigint NOT NULL,
        retry_attempt         integer NOT NULL,
        error_message         text,
        error_previous_status text,
        paused_from           text,
        last_saved_at         bigint NOT NULL,
        error_position        bigint,
        lease_owner           text,
        lease_expires_at      bigint,
        revision              bigint NOT NULL DEFAULT 0
     );
     CREATE TABLE {s}.parked_events (
        subscription_id text NOT NULL,
        position        bigint NOT NULL,
        event_id        uuid NOT NULL,
        event_type      text NOT NULL,
        error           text NOT NULL,
        parked_at       bigint NOT NULL,
        PRIMARY KEY (subscription_id, position)
     );",
    // 3: the latest aggregate snapshot per stream.
    "CREATE TABLE {s}.snapshots (
        stream         text PRIMARY KEY,
        version        bigint NOT NULL,
        schema_version integer NOT NULL,
        data           bytea NOT NULL,
        taken_at       bigint NOT NULL
     );",
    // 4: when a lease holder last renewed (shown to operators beside the owner).
    "ALTER TABLE {s}.subscriptions ADD COLUMN lease_renewed_at bigint;",
];

/// Newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// A schema name: 1–63 characters of `a-z 0-9 _`, not starting with a digit.
pub fn validate_schema(name: &str) -> Result<(), ReelError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(ReelError::InvalidArgument(format!(
            "schema name {name:?} must be 1-63 characters of a-z, 0-9 and _, not starting with a digit"
        )))
    }
}

/// Creates the schema if needed and applies missing migrations; refuses a newer schema.
pub async fn migrate(client: &mut Client, schema: &str) -> Result<(), ReelError> {
    let err = |e: tokio_postgres::Error| crate::storage_error(format!("migrating schema {schema}"), e);
    let tx = client.transaction().await.map_err(err)?;
    // One migrator at a time, whichever process starts first.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("reel:{schema}")]).await.map_err(err)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.reel_schema (version integer NOT NULL);"
    ))
    .await
    .map_err(err)?;
    let version: i32 = tx
        .query_opt(&format!("SELECT version FROM {schema}.reel_schema"), &[])
        .await
        .map_err(err)?
        .map_or(0, |row| row.get(0));
    if version > SCHEMA_VERSION {
        return Err(ReelError::SchemaTooNew { found: version as u32, supported: SCHEMA_VERSION as u32 });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tracing::info!(schema, to = index + 1, "migrating store schema");
        tx.batch_execute(&sql.replace("{s}", schema)).await.map_err(err)?;
    }
    tx.execute(&format!("DELETE FROM {schema}.reel_schema"), &[]).await.map_err(err)?;
    tx.execute(&format!("INSERT INTO {schema}.reel_schema (version) VALUES ($1)"), &[&SCHEMA_VERSION])
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)
}
