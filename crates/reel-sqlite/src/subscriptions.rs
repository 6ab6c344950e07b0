//! The subscription store in the same SQLite file as the events.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reel_core::{
    Position, ReelError, RunMode, Subscription, SubscriptionCriteria, SubscriptionError, SubscriptionId,
    SubscriptionStatus, SubscriptionStore, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::schema::open_connection;

/// Subscriptions of one store file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteSubscriptionStore {
    conn: Arc<Mutex<Connection>>,
}

const COLUMNS: &str = "id, group_name, run_mode, status, position, retry_attempt, error_message,
    error_previous_status, paused_from, last_saved_at";

impl SqliteSubscriptionStore {
    /// Opens the subscription table of an already opened (and migrated) store file.
    pub(crate) fn open(path: &Path) -> Result<Self, ReelError> {
        Ok(Self { conn: Arc::new(Mutex::new(open_connection(path, false)?)) })
    }

    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ReelError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| ReelError::storage(what, "connection lock poisoned"))?;
            work(&conn).map_err(|e| ReelError::storage(what, e))
        })
        .await
        .map_err(|e| ReelError::storage(what, e))?
    }
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
    Ok((|| {
        Ok(Subscription {
            id: SubscriptionId::new(id)?,
            group,
            run_mode: run_mode.parse::<RunMode>()?,
            status: status.parse()?,
            position: Position(position as u64),
            retry_attempt: retry_attempt as u32,
            error: match (error_message, error_previous) {
                (Some(message), Some(previous)) => {
                    Some(SubscriptionError { message, previous_status: previous.parse::<SubscriptionStatus>()? })
                }
                _ => None,
            },
            paused_from: paused_from.map(|p| p.parse()).transpose()?,
            last_saved_at: Timestamp::from_unix_micros(last_saved_at),
        })
    })())
}

fn values(s: &Subscription) -> [rusqlite::types::Value; 10] {
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
                    "INSERT INTO subscriptions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
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

    async fn update(&self, subscription: &Subscription) -> Result<(), ReelError> {
        let id = subscription.id.clone();
        let row = values(subscription);
        let updated = self
            .run("saving a subscription", move |conn| {
                conn.prepare_cached(
                    "UPDATE subscriptions SET group_name = ?2, run_mode = ?3, status = ?4, position = ?5,
                       retry_attempt = ?6, error_message = ?7, error_previous_status = ?8, paused_from = ?9,
                       last_saved_at = ?10
                     WHERE id = ?1",
                )?
                .execute(rusqlite::params_from_iter(row))
            })
            .await?;
        if updated == 0 {
            return Err(ReelError::SubscriptionNotFound { id: id.to_string() });
        }
        Ok(())
    }

    async fn remove(&self, id: &SubscriptionId) -> Result<(), ReelError> {
        let id = id.to_string();
        self.run("removing a subscription", move |conn| {
            conn.prepare_cached("DELETE FROM subscriptions WHERE id = ?1")?.execute(params![id])
        })
        .await?;
        Ok(())
    }

    async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>, ReelError> {
        let id = id.to_string();
        self.run("reading a subscription", move |conn| {
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM subscriptions WHERE id = ?1"))?
                .query_row(params![id], from_row)
                .optional()
        })
        .await?
        .transpose()
    }

    async fn find(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError> {
        let rows = self
            .run("listing subscriptions", move |conn| {
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM subscriptions ORDER BY id"))?
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
