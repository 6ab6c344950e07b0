//! Opening the store named by `--store`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use reel_core::{AppendLimits, EventStore, PresenceStore, SubscriptionStore};
use reel_postgres::PostgresStore;
use reel_sqlite::{SqliteOptions, SqliteStore};

use crate::exit::InvalidInput;
use crate::Cli;

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dsn {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…` or `postgresql://…`).
    Postgres(String),
    /// A `reel serve` (`http://host:port`).
    Http(String),
}

impl Dsn {
    /// Parses `sqlite://PATH`, a plain path, or rejects a scheme this build does not serve.
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                bail!(InvalidInput("--store sqlite:// needs a path, e.g. sqlite://./reel-data/reel.db".into()));
            }
            return Ok(Dsn::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Dsn::Postgres(text.to_string()));
        }
        if text.starts_with("http://") {
            return Ok(Dsn::Http(text.to_string()));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            bail!(InvalidInput(format!(
                "--store scheme {scheme}:// is not supported (use a file path, sqlite://PATH, postgres://… or http://…)"
            )));
        }
        if text.is_empty() {
            bail!(InvalidInput("--store must not be empty".into()));
        }
        Ok(Dsn::Sqlite(PathBuf::from(text)))
    }
}

/// Limits from the global flags.
pub fn limits(cli: &Cli) -> Result<AppendLimits> {
    if cli.max_event_bytes == 0 || cli.max_batch_events == 0 {
        bail!(InvalidInput("--max-event-bytes and --max-batch-events must be at least 1".into()));
    }
    Ok(AppendLimits {
        max_event_bytes: cli.max_event_bytes,
        max_batch_events: cli.max_batch_events,
        max_tags_per_event: cli.max_tags_per_event,
    })
}

/// The event store and the subscription and presence stores kept beside it.
pub struct Stores {
    pub events: Arc<dyn EventStore>,
    pub subscriptions: Arc<dyn SubscriptionStore>,
    /// Device presence; `None` for a remote store (the server it names keeps its own).
    pub presence: Option<Arc<dyn PresenceStore>>,
    /// The PostgreSQL store, to be closed when a server stops (see [`Stores::closer`]).
    postgres: Option<PostgresStore>,
}

impl Stores {
    /// What closes the stores when a server stops, kept apart from them.
    pub fn closer(&self) -> StoreCloser {
        StoreCloser(self.postgres.clone())
    }
}

/// Closes the stores a server opened.
pub struct StoreCloser(Option<PostgresStore>);

impl StoreCloser {
    /// Lets the PostgreSQL writer answer what it took from other servers and hand on the lead
    /// of the schema's appends before the process exits (nothing to do for other stores).
    /// Waits at most ten seconds (a database that stopped answering must not hold up the exit).
    pub async fn close(&self) {
        if let Some(store) = &self.0 {
            if tokio::time::timeout(std::time::Duration::from_secs(10), store.close()).await.is_err() {
                tracing::warn!("the PostgreSQL writer did not stop within 10 s; exiting anyway");
            }
        }
    }
}

/// Opens the event store and its subscription store.
pub async fn open_with_subscriptions(cli: &Cli) -> Result<Stores> {
    let options = SqliteOptions { limits: limits(cli)?, ..SqliteOptions::default() };
    match Dsn::parse(&cli.store)? {
        Dsn::Postgres(url) => {
            let store = PostgresStore::connect_with(&url, &cli.schema, options.limits)
                .await
                .with_context(|| format!("opening schema {} of the PostgreSQL store", cli.schema))?;
            let subscriptions = store.subscription_store().await.context("opening the subscription store")?;
            let postgres = Some(store.clone());
            let store = Arc::new(store);
            Ok(Stores {
                events: store.clone(),
                subscriptions: Arc::new(subscriptions),
                presence: Some(store),
                postgres,
            })
        }
        Dsn::Http(url) => {
            let store = reel_client::HttpStore::connect(&url, cli.token.clone())
                .await
                .with_context(|| format!("connecting to the Reel server at {url}"))?;
            // Subscription positions of a remote store are kept locally, in their own file.
            let path = &cli.subscription_store;
            let local = SqliteStore::open_with(path, options)
                .with_context(|| format!("opening subscription store {}", path.display()))?;
            let subscriptions = local.subscription_store().context("opening the subscription store")?;
            Ok(Stores {
                events: Arc::new(store),
                subscriptions: Arc::new(subscriptions),
                presence: None,
                postgres: None,
            })
        }
        Dsn::Sqlite(path) => {
            let store =
                SqliteStore::open_with(&path, options).with_context(|| format!("opening store {}", path.display()))?;
            let subscriptions = store.subscription_store().context("opening the subscription store")?;
            let presence = store.presence_store().context("opening the presence store")?;
            Ok(Stores {
                events: Arc::new(store),
                subscriptions: Arc::new(subscriptions),
                presence: Some(Arc::new(presence)),
                postgres: None,
            })
        }
    }
}

/// The store for messages: a path, or the URL without its password plus the schema.
pub fn describe(cli: &Cli) -> String {
    match Dsn::parse(&cli.store) {
        Ok(Dsn::Postgres(url)) => format!("{} (schema {})", reel_postgres::redact(&url), cli.schema),
        _ => cli.store.clone(),
    }
}

/// Opens the event store for a command.
pub async fn open(cli: &Cli) -> Result<Arc<dyn EventStore>> {
    Ok(open_with_subscriptions(cli).await?.events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_rejects_unknown_schemes() {
        assert_eq!(Dsn::parse("sqlite://a/b.db").unwrap(), Dsn::Sqlite("a/b.db".into()));
        assert_eq!(Dsn::parse("./x.db").unwrap(), Dsn::Sqlite("./x.db".into()));
        assert!(Dsn::parse("mysql://host/db").is_err());
        assert_eq!(Dsn::parse("http://h:1").unwrap(), Dsn::Http("http://h:1".into()));
        assert_eq!(Dsn::parse("postgres://u@h/db").unwrap(), Dsn::Postgres("postgres://u@h/db".into()));
        assert!(Dsn::parse("sqlite://").is_err());
        assert!(Dsn::parse("").is_err());
    }
}
