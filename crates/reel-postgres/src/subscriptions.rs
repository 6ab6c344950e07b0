//! Subscriptions in the same schema as the events: leases are conditional row updates (only the
//! holder, or anyone once expired, can take one), saves are compare-and-swap on a revision.

use std::time::Duration;

use async_trait::async_trait;
use reel_core::backend::{settle_save, SaveOutcome, SubscriptionRow};
use reel_core::{
    BatchFailure, Checkpoint, EventId, HandlerError, ParkedEvent, Position, ProjectionStore, RecordedEvent, ReelError,
    Subscription, SubscriptionCriteria, SubscriptionId, SubscriptionStore, Timestamp,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::connections::{ExclusiveConnections, LentConnection};
use crate::spawn_client;

/// The work a projection does inside its checkpoint transaction.
pub type ProjectionWork<'t> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send + 't>,
>;

/// Subscriptions of one schema. Projections may commit their rows with their checkpoint through
/// [`PostgresSubscriptionStore::save_with`].
pub struct PostgresSubscriptionStore {
    schema: String,
    connections: ExclusiveConnections,
}

const COLUMNS: &str = "id, group_name, run_mode, status, position, retry_attempt, error_message, error_previous_status,
    paused_from, last_saved_at, error_position, lease_owner, lease_renewed_at, lease_expires_at, revision,
    warning_message, warning_at";

/// A SQL projection whose rows commit in the same PostgreSQL transaction as its checkpoint
/// (exactly-once effects). Turn it into a subscriber with
/// `reel_subscriptions::TransactionalProjector::new(spec, subscription_store, Arc::new(projection))`.
#[async_trait]
pub trait PostgresProjection: Send + Sync + 'static {
    /// Creates the projection's tables (its own transaction). Keep it idempotent.
    async fn setup(&self, _tx: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    /// Drops the projection's tables (its own transaction).
    async fn teardown(&self, _tx: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    /// Applies a batch inside the transaction that also saves the checkpoint. An error rolls
    /// back the whole batch; its index says which event failed.
    async fn apply(&self, tx: &tokio_postgres::Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure>;
}

fn err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> ReelError {
    move |e| crate::storage_error(what, e)
}

impl PostgresSubscriptionStore {
    /// Connects to the (already migrated) schema of a `PostgresStore`.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, ReelError> {
        crate::schema::validate_schema(schema)?;
        let name = format!("reel-subscriptions-{schema}");
        let first = spawn_client(url, &name).await?;
        Ok(Self { schema: schema.to_string(), connections: ExclusiveConnections::new(url, &name, first) })
    }

    /// A connection of its own for one operation (connections.rs), reconnected when it was lost.
    async fn client(&self) -> Result<LentConnection, ReelError> {
        self.connections.lend().await
    }

    /// Runs `work` in a transaction and saves `subscription` in it (compare-and-swap, and the
    /// lease when `lease_owner` is given): a projection's rows and its checkpoint commit together
    /// or not at all. `work` failing rolls back and comes back as `SubscriptionFailed`.
    pub async fn save_with<F>(
        &self,
        subscription: &mut Subscription,
        lease_owner: Option<&str>,
        now: Timestamp,
        work: F,
    ) -> Result<(), ReelError>
    where
        F: for<'t> FnOnce(&'t tokio_postgres::Transaction<'t>) -> ProjectionWork<'t> + Send,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err("starting a projection transaction"))?;
        if let Err(e) = work(&tx).await {
            return Err(ReelError::SubscriptionFailed { id: subscription.id.to_string(), message: e.to_string() });
        }
        commit_with_state(tx, &self.schema, subscription, lease_owner.map(|o| (o, now))).await
    }
}

/// Saves `subscription` in `tx` (compare-and-swap, and the lease when given) and commits the
/// transaction only if the save was written; otherwise everything in it rolls back.
async fn commit_with_state(
    tx: tokio_postgres::Transaction<'_>,
    schema: &str,
    subscription: &mut Subscription,
    lease: Option<(&str, Timestamp)>,
) -> Result<(), ReelError> {
    let outcome = write_state(&tx, schema, subscription, lease).await?;
    if outcome == SaveOutcome::Written {
        tx.commit().await.map_err(err("committing a projection batch"))?;
    }
    settle_save(subscription, outcome, lease.is_some())
}

#[async_trait]
impl ProjectionStore for PostgresSubscriptionStore {
    type Projection = dyn PostgresProjection;

    async fn setup_projection(&self, projection: &std::sync::Arc<dyn PostgresProjection>) -> Result<(), HandlerError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err("starting a projection setup"))?;
        projection.setup(&tx).await?;
        Ok(tx.commit().await.map_err(err("committing a projection setup"))?)
    }

    async fn teardown_projection(
        &self,
        projection: &std::sync::Arc<dyn PostgresProjection>,
    ) -> Result<(), HandlerError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err("starting a projection teardown"))?;
        projection.teardown(&tx).await?;
        Ok(tx.commit().await.map_err(err("committing a projection teardown"))?)
    }

    async fn apply_with_checkpoint(
        &self,
        projection: &std::sync::Arc<dyn PostgresProjection>,
        batch: std::sync::Arc<[RecordedEvent]>,
        checkpoint: &mut Checkpoint,
    ) -> Result<(), BatchFailure> {
        let failed = |e: ReelError| BatchFailure::at(0, e);
        let mut client = self.client().await.map_err(failed)?;
        let tx = client.transaction().await.map_err(err("starting a projection transaction")).map_err(failed)?;
        projection.apply(&tx, &batch).await?;
        let lease = checkpoint.lease_owner.as_deref().map(|owner| (owner, checkpoint.now));
        commit_with_state(tx, &self.schema, &mut checkpoint.subscription, lease).await.map_err(failed)
    }
}

/// The compare-and-swap UPDATE of the state columns (and the lease, when given).
async fn write_state<C: tokio_postgres::GenericClient>(
    client: &C,
    schema: &str,
    s: &Subscription,
    lease: Option<(&str, Timestamp)>,
) -> Result<SaveOutcome, ReelError> {
    let e = err("saving a subscription");
    let (owner, now) = lease.map_or((None, 0), |(o, t)| (Some(o), t.unix_micros()));
    let row = SubscriptionRow::from_subscription(s);
    let retry_attempt = row.retry_attempt as i32;
    let params: [&(dyn ToSql + Sync); 16] = [
        &row.id,
        &row.group,
        &row.run_mode,
        &row.status,
        &row.position,
        &retry_attempt,
        &row.error_message,
        &row.error_previous_status,
        &row.paused_from,
        &row.last_saved_at,
        &row.error_position,
        &row.revision,
        &owner,
        &now,
        &row.warning_message,
        &row.warning_at,
    ];
    let updated = client
        .execute(
            &format!(
                "UPDATE {schema}.subscriptions SET group_name = $2, run_mode = $3, status = $4, position = $5,
                   retry_attempt = $6, error_message = $7, error_previous_status = $8, paused_from = $9,
                   last_saved_at = $10, error_position = $11, warning_message = $15, warning_at = $16,
                   revision = revision + 1
                 WHERE id = $1 AND revision = $12
                   AND ($13::text IS NULL OR (lease_owner = $13 AND lease_expires_at > $14))"
            ),
            &params,
        )
        .await
        .map_err(&e)?;
    if updated == 1 {
        return Ok(SaveOutcome::Written);
    }
    let stored = client
        .query_opt(&format!("SELECT revision FROM {schema}.subscriptions WHERE id = $1"), &[&s.id.as_str()])
        .await
        .map_err(&e)?;
    Ok(stored.map_or(SaveOutcome::Gone, |r| SaveOutcome::NotWritten { stored_revision: r.get::<_, i64>(0) as u64 }))
}

/// Reads a row selected with `COLUMNS`.
fn from_row(row: &Row) -> Result<Subscription, ReelError> {
    SubscriptionRow {
        id: row.get(0),
        group: row.get(1),
        run_mode: row.get(2),
        status: row.get(3),
        position: row.get(4),
        retry_attempt: i64::from(row.get::<_, i32>(5)),
        error_message: row.get(6),
        error_previous_status: row.get(7),
        paused_from: row.get(8),
        last_saved_at: row.get(9),
        error_position: row.get(10),
        lease_owner: row.get(11),
        lease_renewed_at: row.get(12),
        lease_expires_at: row.get(13),
        revision: row.get(14),
        warning_message: row.get(15),
        warning_at: row.get(16),
    }
    .into_subscription()
}

#[async_trait]
impl SubscriptionStore for PostgresSubscriptionStore {
    async fn add(&self, s: &Subscription) -> Result<(), ReelError> {
        let schema = &self.schema;
        let inserted = self
            .client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {schema}.subscriptions (id, group_name, run_mode, status, position, retry_attempt, last_saved_at, revision)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
                ),
                &[&s.id.as_str(), &s.group, &s.run_mode.as_str(), &s.status.as_str(), &(s.position.0 as i64), &(s.retry_attempt as i32), &s.last_saved_at.unix_micros(), &(s.revision as i64)],
            )
            .await
            .map_err(err("adding a subscription"))?;
        if inserted == 0 {
            return Err(ReelError::InvalidArgument(format!("subscription {} already exists", s.id)));
        }
        Ok(())
    }

    async fn update(&self, subscription: &mut Subscription) -> Result<(), ReelError> {
        let outcome = write_state(&*self.client().await?, &self.schema, subscription, None).await?;
        settle_save(subscription, outcome, false)
    }

    async fn update_leased(
        &self,
        subscription: &mut Subscription,
        owner: &str,
        now: Timestamp,
    ) -> Result<(), ReelError> {
        let outcome = write_state(&*self.client().await?, &self.schema, subscription, Some((owner, now))).await?;
        settle_save(subscription, outcome, true)
    }

    async fn remove(&self, id: &SubscriptionId) -> Result<(), ReelError> {
        let schema = &self.schema;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err("removing a subscription"))?;
        tx.execute(&format!("DELETE FROM {schema}.parked_events WHERE subscription_id = $1"), &[&id.as_str()])
            .await
            .map_err(err("removing a subscription"))?;
        tx.execute(&format!("DELETE FROM {schema}.subscriptions WHERE id = $1"), &[&id.as_str()])
            .await
            .map_err(err("removing a subscription"))?;
        tx.commit().await.map_err(err("removing a subscription"))
    }

    async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>, ReelError> {
        let schema = &self.schema;
        let row = self
            .client()
            .await?
            .query_opt(&format!("SELECT {COLUMNS} FROM {schema}.subscriptions WHERE id = $1"), &[&id.as_str()])
            .await
            .map_err(err("reading a subscription"))?;
        row.as_ref().map(from_row).transpose()
    }

    async fn find(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError> {
        let schema = &self.schema;
        let rows = self
            .client()
            .await?
            .query(&format!("SELECT {COLUMNS} FROM {schema}.subscriptions ORDER BY id"), &[])
            .await
            .map_err(err("listing subscriptions"))?;
        let mut found = Vec::new();
        for row in &rows {
            let s = from_row(row)?;
            if criteria.matches(&s.id, &s.group) {
                found.push(s);
            }
        }
        Ok(found)
    }

    async fn acquire_lease(
        &self,
        id: &SubscriptionId,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, ReelError> {
        let schema = &self.schema;
        let expires = now.unix_micros() + ttl.as_micros() as i64;
        let taken = self
            .client()
            .await?
            .execute(
                &format!(
                    "UPDATE {schema}.subscriptions SET lease_owner = $2, lease_expires_at = $3, lease_renewed_at = $4
                     WHERE id = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at <= $4)"
                ),
                &[&id.as_str(), &owner, &expires, &now.unix_micros()],
            )
            .await
            .map_err(err("taking a subscription lease"))?;
        Ok(taken == 1)
    }

    async fn release_lease(&self, id: &SubscriptionId, owner: &str) -> Result<(), ReelError> {
        let schema = &self.schema;
        self.client()
            .await?
            .execute(
                &format!("UPDATE {schema}.subscriptions SET lease_owner = NULL, lease_expires_at = NULL, lease_renewed_at = NULL
                   WHERE id = $1 AND lease_owner = $2"),
                &[&id.as_str(), &owner],
            )
            .await
            .map_err(err("releasing a subscription lease"))?;
        Ok(())
    }

    async fn park(&self, p: &ParkedEvent) -> Result<(), ReelError> {
        let schema = &self.schema;
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {schema}.parked_events (subscription_id, position, event_id, event_type, error, parked_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (subscription_id, position) DO UPDATE SET event_id = $3, event_type = $4, error = $5, parked_at = $6"
                ),
                &[&p.subscription.as_str(), &(p.position.0 as i64), &p.event_id.0, &p.event_type, &p.error, &p.parked_at.unix_micros()],
            )
            .await
            .map_err(err("parking an event"))?;
        Ok(())
    }

    async fn parked(&self, id: &SubscriptionId) -> Result<Vec<ParkedEvent>, ReelError> {
        let schema = &self.schema;
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT position, event_id, event_type, error, parked_at FROM {schema}.parked_events
                     WHERE subscription_id = $1 ORDER BY position"
                ),
                &[&id.as_str()],
            )
            .await
            .map_err(err("listing parked events"))?;
        Ok(rows
            .iter()
            .map(|r| ParkedEvent {
                subscription: id.clone(),
                position: Position(r.get::<_, i64>(0) as u64),
                event_id: EventId(r.get(1)),
                event_type: r.get(2),
                error: r.get(3),
                parked_at: Timestamp::from_unix_micros(r.get(4)),
            })
            .collect())
    }

    async fn unpark(&self, id: &SubscriptionId, position: Position) -> Result<(), ReelError> {
        let schema = &self.schema;
        self.client()
            .await?
            .execute(
                &format!("DELETE FROM {schema}.parked_events WHERE subscription_id = $1 AND position = $2"),
                &[&id.as_str(), &(position.0 as i64)],
            )
            .await
            .map_err(err("unparking an event"))?;
        Ok(())
    }
}
