//! A write connection used from async code: one at a time, on a blocking thread.

use std::path::Path;
use std::sync::{Arc, Mutex};

use reel_core::ReelError;
use rusqlite::Connection;

use crate::schema::open_connection;

/// A connection of its own with `synchronous = NORMAL`: for state whose last writes may be
/// forgotten by a power loss without harm (checkpoints are at-least-once; snapshots only speed
/// loads up). Commits stay atomic.
#[derive(Clone)]
pub(crate) struct SharedConnection {
    conn: Arc<Mutex<Connection>>,
    /// Callers wait for their turn here, asleep, rather than each on a blocking thread of its
    /// own: a thousand devices' heartbeats at once would otherwise hold a thousand threads.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl SharedConnection {
    pub(crate) fn open(path: &Path) -> Result<Self, ReelError> {
        let conn = open_connection(path, false)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| ReelError::storage(format!("configuring {}", path.display()), e))?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), turn: Arc::new(tokio::sync::Mutex::new(())) })
    }

    /// Runs `work` on the connection in a blocking thread.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ReelError> {
        let _turn = self.turn.lock().await;
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| ReelError::storage(what, "connection lock poisoned"))?;
            work(&conn).map_err(|e| ReelError::storage(what, e))
        })
        .await
        .map_err(|e| ReelError::storage(what, e))?
    }
}
