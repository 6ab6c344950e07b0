//! The subscription store in the same SQLite file as the events.

use std::path::Path;

use async_trait::async_trait;
use reel_core::{
    Lease, ParkedEvent, Position, ReelError, RunMode, Subscription, SubscriptionCriteria, SubscriptionError,
    SubscriptionId, SubscriptionStatus, SubscriptionStore, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::connection::SharedConnection;

/// Subscriptions of one store file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteSubscriptionStore {
    conn: SharedConnection,
}

const COLUMNS: &str = "id, group_name, run_mode, status, position, retry_attempt, error_message,
    error_previous_status, paused_from, last_saved_at, error_position";
/// Read with `COLUMNS`; leases are written only by the lease methods, the revision by every save.
const LEASE_COLUMNS: &str = "lease_owner, lease_expires_at, revision";

impl SqliteSubscriptionStore {
    /// Writes the state columns if the stored revision is the one loaded (and, with `lease`,
    /// while that owner's lease is unexpired); says precisely why when it is not written.
    async fn write_state(
        &self,
        subscription: &mut Subscription,
        lease: Option<(String, Timestamp)>,
    ) -> Result<(), ReelError> {
        let row = values(subscription);
        let revision = subscription.revision;
        let leased = lease.is_some();
        let written = self.run("saving a subscription", move |conn| write_state_on(conn, row, revision, lease)).await?;
        reel_core::settle_save(subscription, written.map(|stored| stored.map(|r| r as u64)), leased)
    }

    /// Runs `work` and saves `subscription` in one transaction: a projection's rows and its
    /// checkpoint commit together or not at all (exactly-once effects). `work` failing rolls
    /// everything back and comes back as `SubscriptionFailed`; a stale revision or a lost lease
    /// (with `lease_owner`) rolls back too and comes back as `SubscriptionChanged` / `LeaseLost`.
    pub async fn save_with<F>(
        &self,
        subscription: &mut Subscription,
        lease_owner: Option<&str>,
        now: Timestamp,
        work: F,
    ) -> Result<(), ReelError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let row = values(subscription);
        let revision = subscription.revision;
        let lease = lease_owner.map(|owner| (owner.to_string(), now));
        let leased = lease.is_some();
        let id = subscription.id.to_string();
        let outcome = self
            .run("saving a projection batch", move |conn| {
                let tx = conn.unchecked_transaction()?;
                if let Err(error) = work(&tx) {
                    return Ok(Err(error.to_string()));
                }
                let written = write_state_on(&tx, row, revision, lease)?;
                if written.is_none() {
                    tx.commit()?;
                }
                Ok(Ok(written))
            })
            .await?;
        match outcome {
            Ok(written) => reel_core::settle_save(subscription, written.map(|stored| stored.map(|r| r as u64)), leased),
            Err(message) => Err(ReelError::SubscriptionFailed { id, message }),
        }
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
}

/// The state UPDATE, compare-and-swap on the revision (and the lease). `None`: written;
/// `Some(stored revision, or None when the row is gone)`: not written.
fn write_state_on(
    conn: &Connection,
    row: [rusqlite::types::Value; 11],
    revision: u64,
    lease: Option<(String, Timestamp)>,
) -> rusqlite::Result<Option<Option<i64>>> {
    let mut params: Vec<rusqlite::types::Value> = row.into();
    params.push((revision as i64).into());
    let condition = match lease {
        None => "",
        Some((owner, now)) => {
            params.push(owner.into());
            params.push(now.unix_micros().into());
            " AND lease_owner = ?13 AND lease_expires_at > ?14"
        }
    };
    let id = params[0].clone();
    let updated = conn
        .prepare_cached(&format!(
            "UPDATE subscriptions SET group_name = ?2, run_mode = ?3, status = ?4, position = ?5,
               retry_attempt = ?6, error_message = ?7, error_previous_status = ?8, paused_from = ?9,
               last_saved_at = ?10, error_position = ?11, revision = revision + 1
             WHERE id = ?1 AND revision = ?12{condition}"
        ))?
        .execute(rusqlite::params_from_iter(params))?;
    if updated == 1 {
        return Ok(None);
    }
    let stored: Option<i64> = conn
        .prepare_cached("SELECT revision FROM subscriptions WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    Ok(Some(stored))
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Result<Subscription, ReelError>> {
    let id: String = row.get(0)?;
    let run_mode: String = row.get(2)?;
    let status: String = row.get(3)?;
    let error_message: Option<String> = row.get(6)?;
    let error_previous: Option<String> = row.get(7)?;
    let paused_from: Option<String> = row.get(8)?;
    let position: i64 = row.get(4)?;
    let retry_attempt: i64 = row.get(5)?;
    let group: String = row.get(1)?;
    let last_saved_at: i64 = row.get(9)?;
    let error_position: Option<i64> = row.get(10)?;
    let lease_owner: Option<String> = row.get(11)?;
    let lease_expires_at: Option<i64> = row.get(12)?;
    let revision: i64 = row.get(13)?;
    Ok((|| {
        Ok(Subscription {
            id: SubscriptionId::new(id)?,
            group,
            run_mode: run_mode.parse::<RunMode>()?,
            status: status.parse()?,
            position: Position(position as u64),
            retry_attempt: retry_attempt as u32,
            error: match (error_message, error_previous) {
                (Some(message), Some(previous)) => Some(SubscriptionError {
                    message,
                    previous_status: previous.parse::<SubscriptionStatus>()?,
                    failed_at: error_position.map(|p| Position(p as u64)),
                }),
                _ => None,
            },
            paused_from: paused_from.map(|p| p.parse()).transpose()?,
            last_saved_at: Timestamp::from_unix_micros(last_saved_at),
            lease: lease_owner
                .zip(lease_expires_at)
                .map(|(owner, expires)| Lease { owner, expires_at: Timestamp::from_unix_micros(expires) }),
            revision: revision as u64,
        })
    })())
}

fn values(s: &Subscription) -> [rusqlite::types::Value; 11] {
    use rusqlite::types::Value;
    let text = |t: &str| Value::Text(t.to_string());
    let optional = |t: Option<&str>| t.map_or(Value::Null, text);
    [
        text(s.id.as_str()),
        text(&s.group),
        text(s.run_mode.as_str()),
        text(s.status.as_str()),
        Value::Integer(s.position.0 as i64),
        Value::Integer(i64::from(s.retry_attempt)),
        optional(s.error.as_ref().map(|e| e.message.as_str())),
        optional(s.error.as_ref().map(|e| e.previous_status.as_str())),
        optional(s.paused_from.map(SubscriptionStatus::as_str)),
        Value::Integer(s.last_saved_at.unix_micros()),
        s.error.as_ref().and_then(|e| e.failed_at).map_or(Value::Null, |p| Value::Integer(p.0 as i64)),
    ]
}

#[async_trait]
impl SubscriptionStore for SqliteSubscriptionStore {
    async fn add(&self, subscription: &Subscription) -> Result<(), ReelError> {
        let id = subscription.id.clone();
        let row = values(subscription);
        let inserted = self
            .run("adding a subscription", move |conn| {
                conn.prepare_cached(&format!(
                    "INSERT INTO subscriptions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
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
                    "UPDATE subscriptions SET lease_owner = ?2, lease_expires_at = ?3
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
                "UPDATE subscriptions SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1 AND lease_owner = ?2",
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
            conn.prepare_cached(&format!("SELECT {COLUMNS}, {LEASE_COLUMNS} FROM subscriptions WHERE id = ?1"))?
                .query_row(params![id], from_row)
                .optional()
        })
        .await?
        .transpose()
    }

    async fn find(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError> {
        let rows = self
            .run("listing subscriptions", move |conn| {
                conn.prepare_cached(&format!("SELECT {COLUMNS}, {LEASE_COLUMNS} FROM subscriptions ORDER BY id"))?
                    .query_map([], from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let mut found = Vec::new();
        for row in rows {
            let subscription = row?;
            if criteria.matches(&subscription.id, &subscription.group) {
                found.push(subscription);
            }
        }
        Ok(found)
    }
}
