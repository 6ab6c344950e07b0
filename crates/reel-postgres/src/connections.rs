//! The store's connections for reads and for subscriptions: a few each, opened as work overlaps.
//!
//! PostgreSQL runs one statement at a time per connection, so a single reader connection made
//! every read wait behind the slowest one in flight: under a fleet's load, a page of the log for
//! a projection, a decision's query, a stream's version for the uplink and a dashboard's
//! presence list all queued on it while both the process and the database were mostly idle.
//! A read takes an idle connection when there is one, opens another while fewer than
//! [`MAX_READERS`] are open, and otherwise shares the one with the fewest reads in flight
//! (statements pipeline on a connection). One connection stays enough for a store that reads
//! one thing at a time, so tests and small deployments do not hold more than they use.
//!
//! Subscriptions need a connection to themselves for a transaction (a projection's rows and its
//! checkpoint commit together), so [`ExclusiveConnections`] lends each to one user at a time; it
//! used to be one connection for every projection, processor and lease of the store, and a
//! projection's batch of many statements held up all the others.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reel_core::ReelError;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_postgres::Client;

/// Most reader connections one store opens.
pub(crate) const MAX_READERS: usize = 4;

/// A reader connection and how many reads use it now.
struct Reader {
    client: Arc<Client>,
    in_flight: Arc<AtomicUsize>,
}

/// The reader connections of one store.
pub(crate) struct Readers {
    url: String,
    /// `reel-reader-<schema>`, visible in `pg_stat_activity`.
    name: String,
    open: Mutex<Vec<Reader>>,
}

/// A connection lent to one read; the read is counted until this is dropped.
pub(crate) struct LentReader {
    client: Arc<Client>,
    in_flight: Arc<AtomicUsize>,
}

impl Deref for LentReader {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for LentReader {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Readers {
    /// The application name reader connections of `schema` carry.
    pub(crate) fn name(schema: &str) -> String {
        format!("reel-reader-{schema}")
    }

    /// Starts with `first`, already connected and named by [`Readers::name`].
    pub(crate) fn new(url: &str, schema: &str, first: Client) -> Self {
        let first = Reader { client: Arc::new(first), in_flight: Arc::new(AtomicUsize::new(0)) };
        Self { url: url.to_string(), name: Self::name(schema), open: Mutex::new(vec![first]) }
    }

    /// A connection for one read: idle if any, else a new one up to [`MAX_READERS`], else the
    /// least busy. Closed connections are replaced.
    pub(crate) async fn lend(&self) -> Result<LentReader, ReelError> {
        let mut open = self.open.lock().await;
        open.retain(|r| !r.client.is_closed());
        let least_busy = open.iter().min_by_key(|r| r.in_flight.load(Ordering::Relaxed));
        let chosen = match least_busy {
            Some(reader) if reader.in_flight.load(Ordering::Relaxed) == 0 || open.len() >= MAX_READERS => reader,
            _ => {
                let client = crate::spawn_client(&self.url, &self.name).await?;
                open.push(Reader { client: Arc::new(client), in_flight: Arc::new(AtomicUsize::new(0)) });
                open.last().expect("just pushed")
            }
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(LentReader { client: chosen.client.clone(), in_flight: chosen.in_flight.clone() })
    }
}

/// Most connections one subscription store opens.
pub(crate) const MAX_EXCLUSIVE: usize = 4;

/// Connections each lent to one user at a time, opened while all are in use, up to
/// [`MAX_EXCLUSIVE`].
pub(crate) struct ExclusiveConnections {
    url: String,
    name: String,
    slots: std::sync::Mutex<Vec<Arc<Mutex<Option<Client>>>>>,
    /// Whose turn it is to be waited for when every slot is in use.
    turn: AtomicUsize,
}

/// A connection lent to one user until dropped.
pub(crate) struct LentConnection(OwnedMutexGuard<Option<Client>>);

impl Deref for LentConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.0.as_ref().expect("a lent connection is connected")
    }
}

impl std::ops::DerefMut for LentConnection {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("a lent connection is connected")
    }
}

impl ExclusiveConnections {
    /// Starts with `first`, already connected and named `name`.
    pub(crate) fn new(url: &str, name: &str, first: Client) -> Self {
        Self {
            url: url.to_string(),
            name: name.to_string(),
            slots: std::sync::Mutex::new(vec![Arc::new(Mutex::new(Some(first)))]),
            turn: AtomicUsize::new(0),
        }
    }

    /// A free connection, a new one while fewer than [`MAX_EXCLUSIVE`] are open, or else the
    /// next in turn once its user is done. A lost connection is replaced.
    pub(crate) async fn lend(&self) -> Result<LentConnection, ReelError> {
        // A free slot's guard, or the busy slot whose turn it is to be waited for.
        let taken = {
            let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match slots.iter().find_map(|slot| slot.clone().try_lock_owned().ok()) {
                Some(guard) => Ok(guard),
                None if slots.len() < MAX_EXCLUSIVE => {
                    let slot = Arc::new(Mutex::new(None));
                    slots.push(slot.clone());
                    Ok(slot.try_lock_owned().expect("a new slot is free"))
                }
                None => Err(slots[self.turn.fetch_add(1, Ordering::Relaxed) % slots.len()].clone()),
            }
        };
        let mut guard = match taken {
            Ok(guard) => guard,
            Err(busy) => busy.lock_owned().await,
        };
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(crate::spawn_client(&self.url, &self.name).await?);
        }
        Ok(LentConnection(guard))
    }
}
