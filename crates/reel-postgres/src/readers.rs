//! The store's reader connections: a few, opened as reads overlap.
//!
//! PostgreSQL runs one statement at a time per connection, so a single reader connection made
//! every read wait behind the slowest one in flight: under a fleet's load, a page of the log for
//! a projection, a decision's query, a stream's version for the uplink and a dashboard's
//! presence list all queued on it while both the process and the database were mostly idle.
//! A read takes an idle connection when there is one, opens another while fewer than
//! [`MAX_READERS`] are open, and otherwise shares the one with the fewest reads in flight
//! (statements pipeline on a connection). One connection stays enough for a store that reads
//! one thing at a time, so tests and small deployments do not hold more than they use.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reel_core::ReelError;
use tokio::sync::Mutex;
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
