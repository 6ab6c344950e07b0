//! The subscription store in the same SQLite file as the events, and SQL projections that
//! commit their rows with their checkpoint.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use reel_core::backend::{settle_save, SaveOutcome, SubscriptionRow};
use reel_core::{
    BatchFailure, Checkpoint, HandlerError, ParkedEvent, Position, ProjectionStore, RecordedEvent, ReelError,
    Subscription, SubscriptionCriteria, SubscriptionId, SubscriptionStore, Timestamp,
};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use crate::connection::SharedConnection;

/// Subscriptions of one store file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteSubscriptionStore {
    conn: SharedConnection,
}

/// The state columns, in the order of [`state_values`] (`?1` … `?13`).
const STATE_COLUMNS: &str = "id, group_name, run_mode, status, position, retry_attempt, error_message,
    error_previous_status, paused_from, last_saved_at, error_position, warning_message, warning_at";
/// Everything [`from_row`] reads: leases are written only by the lease methods, the revision by every save.
const ALL_COLUMNS: &str = "id, group_name, run_mode, status, position, retry_attempt, error_message,
    error_previous_status, paused_from, last_saved_at, error_position, lease_owner, lease_renewed_at,
    lease_expires_at, revision, warning_message, warning_at";

/// A SQL projection whose rows commit in the same SQLite transaction as its checkpoint
/// (exactly-once effects). Turn it into a subscriber with
/// `reel_subscriptions::TransactionalProjector::new(spec, subscription_store, Arc::new(projection))`.
///
/// ```
/// use reel_core::{BatchFailure, HandlerError, RecordedEvent};
/// use reel_sqlite::SqliteProjection;
///
/// struct DoorsPerUnit;
///
/// impl SqliteProjection for DoorsPerUnit {
///     fn setup(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
///         tx.execute_batch("CREATE TABLE IF NOT EXISTS doors_1 (unit TEXT PRIMARY KEY, opened INTEGER NOT NULL)")?;
///         Ok(())
///     }
///     fn apply(&self, tx: &rusqlite::Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
///         for (index, event) in batch.iter().enumerate() {
///             tx.execute(
///                 "INSERT INTO doors_1 VALUES (?1, 1) ON CONFLICT (unit) DO UPDATE SET opened = opened + 1",
///                 [event.stream.id_part().unwrap_or("")],
///             )
///             .map_err(|e| BatchFailure::at(index, e))?;
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait SqliteProjection: Send + Sync + 'static {
    /// Creates the projection's tables (its own transaction). Keep it idempotent.
    fn setup(&self, _tx: &Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    /// Drops the projection's tables (its own transaction).
    fn teardown(&self, _tx: &Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    /// Applies a batch inside the transaction that also saves the checkpoint. An error rolls
    /// back the whole batch; its index says which event failed.
    fn apply(&self, tx: &Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure>;
}

impl SqliteSubscriptionStore {
    /// Writes the state columns if the stored revision is the one loaded (and, with `lease`,
    /// while that owner's lease is unexpired); says precisely why when it is not written.
    async fn write_state(
        &self,
        subscription: &mut Subscription,
        lease: Option<(String, Timestamp)>,
    ) -> Result<(), ReelError> {
        let row = state_values(subscription);
        let revision = subscription.revision;
        let leased = lease.is_some();
        let outcome = self.run("saving a subscription", move |conn| write_state_on(conn, row, revision, lease)).await?;
        settle_save(subscription, outcome, leased)
    }

    /// Runs `work` and saves `subscription` in one transaction: a projection's rows and its
    /// checkpoint commit together or not at all (exactly-once effects). `work` failing rolls
    /// everything back and comes back as `SubscriptionFailed`; a stale revision or a lost lease
    /// (with `lease_owner`) rolls back too and comes back as `SubscriptionChanged` / `LeaseLost`.
    /// [`SqliteProjection`] with `TransactionalProjector` is the usual way to use it.
    pub async fn save_with<F>(
        &self,
        subscription: &mut Subscription,
        lease_owner: Option<&str>,
        now: Timestamp,
        work: F,
    ) -> Result<(), ReelError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<(), HandlerError> + Send + 'static,
    {
        let id = subscription.id.to_string();
        self.transaction_with_checkpoint(subscription, lease_owner, now, move |tx| {
            work(tx).map_err(|e| BatchFailure::at(0, e))
        })
        .await
        .map_err(|failure| match failure.error.downcast::<ReelError>() {
            Ok(error) => *error,
            Err(error) => ReelError::SubscriptionFailed { id, message: error.to_string() },
        })
    }

    /// `work` and the compare-and-swap save of `subscription` in one transaction. A refused save
    /// comes back as a failure whose error is the `ReelError`.
    async fn transaction_with_checkpoint<F>(
        &self,
        subscription: &mut Subscription,
        lease_owner: Option<&str>,
        now: Timestamp,
        work: F,
    ) -> Result<(), BatchFailure>
    where
        F: FnOnce(&Transaction<'_>) -> Result<(), BatchFailure> + Send + 'static,
    {
        let row = state_values(subscription);
        let revision = subscription.revision;
        let lease = lease_owner.map(|owner| (owner.to_string(), now));
        let leased = lease.is_some();
        let outcome = self
            .run("saving a projection batch", move |conn| {
                let tx = conn.unchecked_transaction()?;
                if let Err(failure) = work(&tx) {
                    return Ok(Err(failure));
                }
                let outcome = write_state_on(&tx, row, revision, lease)?;
                if outcome == SaveOutcome::Written {
                    tx.commit()?;
                }
                Ok(Ok(outcome))
            })
            .await
            .map_err(|e| BatchFailure::at(0, e))??;
        settle_save(subscription, outcome, leased).map_err(|e| BatchFailure::at(0, e))
    }

    /// Runs `work` on this store's connection (create a projection's tables, query them).
    pub async fn with_connection<T, F>(&self, work: F) -> Result<T, ReelError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.run("running a projection query", work).await
    }

    /// Opens the subscription table of an already opened (and migrated) store file.
    pub(crate) fn open(path: &Path) -> Result<Self, ReelError> {
        // Checkpoints need consistency, not an fsync each: a power loss may forget the last few
        // checkpoint saves (those events are delivered again: at-least-once), but a projection's
        // rows and its checkpoint still commit or vanish together.
        Ok(Self { conn: SharedConnection::open(path)? })
    }

    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ReelError> {
        self.conn.run(what, work).await
    }

    /// Runs a projection's setup or teardown in a transaction of its own.
    async fn in_transaction(
        &self,
        what: &'static str,
        work: impl FnOnce(&Transaction<'_>) -> Result<(), HandlerError> + Send + 'static,
    ) -> Result<(), HandlerError> {
        let outcome = self
            .run(what, move |conn| {
                let tx = conn.unchecked_transaction()?;
                Ok(match work(&tx) {
                    Ok(()) => tx.commit().map_err(HandlerError::from),
                    Err(error) => Err(error),
                })
            })
            .await?;
        outcome
    }
}

#[async_trait]
impl ProjectionStore for SqliteSubscriptionStore {
    type Projection = dyn SqliteProjection;

    async fn setup_projection(&self, projection: &Arc<dyn SqliteProjection>) -> Result<(), HandlerError> {
        let projection = projection.clone();
        self.in_transaction("setting up a projection", move |tx| projection.setup(tx)).await
    }

    async fn teardown_projection(&self, projection: &Arc<dyn SqliteProjection>) -> Result<(), HandlerError> {
        let projection = projection.clone();
        self.in_transaction("tearing down a projection", move |tx| projection.teardown(tx)).await
    }

    async fn apply_with_checkpoint(
        &self,
        projection: &Arc<dyn SqliteProjection>,
        batch: Arc<[RecordedEvent]>,
        checkpoint: &mut Checkpoint,
    ) -> Result<(), BatchFailure> {
        // The connection lives on a blocking thread; the shared batch goes there without a copy.
        let projection = projection.clone();
        let Checkpoint { subscription, lease_owner, now } = checkpoint;
        self.transaction_with_checkpoint(subscription, lease_owner.as_deref(), *now, move |tx| {
            projection.apply(tx, &batch)
        })
        .await
    }
}

/// The state UPDATE, compare-and-swap on the revision (and the lease).
fn write_state_on(
    conn: &Connection,
    row: [Value; 13],
    revision: u64,
    lease: Option<(String, Timestamp)>,
) -> rusqlite::Result<SaveOutcome> {
    let mut params: Vec<Value> = row.into();
    params.push((revision as i64).into());
    let condition = match lease {
        None => "",
        Some((owner, now)) => {
            params.push(owner.into());
            params.push(now.unix_micros().into());
            " AND lease_owner = ?15 AND lease_expires_at > ?16"
        }
    };
    let id = params[0].clone();
    let updated = conn
        .prepare_cached(&format!(
            "UPDATE subscriptions SET group_name = ?2, run_mode = ?3, status = ?4, position = ?5,
               retry_attempt = ?6, error_message = ?7, error_previous_status = ?8, paused_from = ?9,
               last_saved_at = ?10, error_position = ?11, warning_message = ?12, warning_at = ?13,
               revision = revision + 1
             WHERE id = ?1 AND revision = ?14{condition}"
        ))?
        .execute(rusqlite::params_from_iter(params))?;
    if updated == 1 {
        return Ok(SaveOutcome::Written);
    }
    let stored: Option<i64> = conn
        .prepare_cached("SELECT revision FROM subscriptions WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    Ok(stored.map_or(SaveOutcome::Gone, |r| SaveOutcome::NotWritten { stored_revision: r as u64 }))
}

/// Reads a row selected with [`ALL_COLUMNS`].
fn from_row(row: &Row<'_>) -> rusqlite::Result<SubscriptionRow> {
    Ok(SubscriptionRow {
        id: row.get(0)?,
        group: row.get(1)?,
        run_mode: row.get(2)?,
        status: row.get(3)?,
        position: row.get(4)?,
        retry_attempt: row.get(5)?,
        error_message: row.get(6)?,
        error_previous_status: row.get(7)?,
        paused_from: row.get(8)?,
        last_saved_at: row.get(9)?,
        error_position: row.get(10)?,
        lease_owner: row.get(11)?,
        lease_renewed_at: row.get(12)?,
        lease_expires_at: row.get(13)?,
        revision: row.get(14)?,
        warning_message: row.get(15)?,
        warning_at: row.get(16)?,
    })
}

/// The values of [`STATE_COLUMNS`].
fn state_values(s: &Subscription) -> [Value; 13] {
    let r = SubscriptionRow::from_subscription(s);
    let text = Value::Text;
    let optional_text = |t: Option<String>| t.map_or(Value::Null, Value::Text);
    let optional_int = |i: Option<i64>| i.map_or(Value::Null, Value::Integer);
    [
        text(r.id),
        text(r.group),
        text(r.run_mode),
        text(r.status),
        Value::Integer(r.position),
        Value::Integer(r.retry_attempt),
        optional_text(r.error_message),
        optional_text(r.error_previous_status),
        optional_text(r.paused_from),
        Value::Integer(r.last_saved_at),
        optional_int(r.error_position),
        optional_text(r.warning_message),
        optional_int(r.warning_at),
    ]
}

#[async_trait]
impl SubscriptionStore for SqliteSubscriptionStore {
    async fn add(&self, subscription: &Subscription) -> Result<(), ReelError> {
        let id = subscription.id.clone();
        let row = state_values(subscription);
        let inserted = self
            .run("adding a subscription", move |conn| {
                conn.prepare_cached(&format!(
                    "INSERT INTO subscriptions ({STATE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT (id) DO NOTHING"
                ))?
                .execute(rusqlite::params_from_iter(row))
            })
            .await?;
        if inserted == 0 {
            return Err(ReelError::InvalidArgument(format!("subscription {id} already exists")));
        }
        Ok(())
    }

    async fn update(&self, subscription: &mut Subscription) -> Result<(), ReelError> {
        self.write_state(subscription, None).await
    }

    async fn update_leased(
        &self,
        subscription: &mut Subscription,
        owner: &str,
        now: Timestamp,
    ) -> Result<(), ReelError> {
        self.write_state(subscription, Some((owner.to_string(), now))).await
    }

    async fn acquire_lease(
        &self,
        id: &SubscriptionId,
        owner: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<bool, ReelError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        let expires = now.unix_micros() + ttl.as_micros() as i64;
        let taken = self
            .run("taking a subscription lease", move |conn| {
                conn.prepare_cached(
                    "UPDATE subscriptions SET lease_owner = ?2, lease_expires_at = ?3, lease_renewed_at = ?4
                     WHERE id = ?1 AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_expires_at <= ?4)",
                )?
                .execute(params![id, owner, expires, now.unix_micros()])
            })
            .await?;
        Ok(taken == 1)
    }

    async fn release_lease(&self, id: &SubscriptionId, owner: &str) -> Result<(), ReelError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.run("releasing a subscription lease", move |conn| {
            conn.prepare_cached(
                "UPDATE subscriptions SET lease_owner = NULL, lease_expires_at = NULL, lease_renewed_at = NULL
                 WHERE id = ?1 AND lease_owner = ?2",
            )?
            .execute(params![id, owner])
        })
        .await?;
        Ok(())
    }

    async fn remove(&self, id: &SubscriptionId) -> Result<(), ReelError> {
        let id = id.to_string();
        self.run("removing a subscription", move |conn| {
            let tx = conn.unchecked_transaction()?;
            tx.prepare_cached("DELETE FROM parked_events WHERE subscription_id = ?1")?.execute(params![id])?;
            tx.prepare_cached("DELETE FROM subscriptions WHERE id = ?1")?.execute(params![id])?;
            tx.commit()
        })
        .await?;
        Ok(())
    }

    async fn park(&self, parked: &ParkedEvent) -> Result<(), ReelError> {
        let p = parked.clone();
        self.run("parking an event", move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO parked_events (subscription_id, position, event_id, event_type, error, parked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                p.subscription.as_str(),
                p.position.0 as i64,
                &p.event_id.as_bytes()[..],
                p.event_type,
                p.error,
                p.parked_at.unix_micros()
            ])
        })
        .await?;
        Ok(())
    }

    async fn parked(&self, id: &SubscriptionId) -> Result<Vec<ParkedEvent>, ReelError> {
        let subscription = id.clone();
        let key = id.to_string();
        self.run("listing parked events", move |conn| {
            conn.prepare_cached(
                "SELECT position, event_id, event_type, error, parked_at FROM parked_events
                 WHERE subscription_id = ?1 ORDER BY position",
            )?
            .query_map(params![key], |r| {
                Ok(ParkedEvent {
                    subscription: subscription.clone(),
                    position: Position(r.get::<_, i64>(0)? as u64),
                    event_id: reel_core::EventId::from_bytes(r.get(1)?),
                    event_type: r.get(2)?,
                    error: r.get(3)?,
                    parked_at: Timestamp::from_unix_micros(r.get(4)?),
                })
            })?
            .collect()
        })
        .await
    }

    async fn unpark(&self, id: &SubscriptionId, position: Position) -> Result<(), ReelError> {
        let id = id.to_string();
        self.run("unparking an event", move |conn| {
            conn.prepare_cached("DELETE FROM parked_events WHERE subscription_id = ?1 AND position = ?2")?
                .execute(params![id, position.0 as i64])
        })
        .await?;
        Ok(())
    }

    async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>, ReelError> {
        let id = id.to_string();
        self.run("reading a subscription", move |conn| {
            conn.prepare_cached(&format!("SELECT {ALL_COLUMNS} FROM subscriptions WHERE id = ?1"))?
                .query_row(params![id], from_row)
                .optional()
        })
        .await?
        .map(SubscriptionRow::into_subscription)
        .transpose()
    }

    async fn find(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError> {
        let rows = self
            .run("listing subscriptions", move |conn| {
                conn.prepare_cached(&format!("SELECT {ALL_COLUMNS} FROM subscriptions ORDER BY id"))?
                    .query_map([], from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let mut found = Vec::new();
        for row in rows {
            let subscription = row.into_subscription()?;
            if criteria.matches(&subscription.id, &subscription.group) {
                found.push(subscription);
            }
        }
        Ok(found)
    }
}
