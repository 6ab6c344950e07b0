//! Reel's PostgreSQL event store: the same contract as the embedded store, for many servers and
//! workers sharing one database.
//!
//! Positions come from a single head row locked inside each append transaction (taken once per
//! group commit, after the group's streams), so they are gap-free and commit-ordered. While other
//! processes append, an append releases the head before its commit's flush, and a durability
//! barrier sent with it confirms the flush before it is answered; readers see the log only up to
//! the durable head. Followers are woken by LISTEN/NOTIFY with a
//! slow fallback poll, and the listening connection reconnects by itself. The store is also a
//! `SnapshotStore` for aggregates.
//!
//! ```no_run
//! # async fn example() -> Result<(), reel_core::ReelError> {
//! use reel_core::{EventStore, ExpectedVersion, NewEvent, StreamName};
//! let store = reel_postgres::PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test", "reel").await?;
//! let stream = StreamName::new("unit-PL-1001")?;
//! store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("DoorOpened", "{}")]).await?;
//! # Ok(()) }
//! ```

mod connections;
mod durable;
mod fast_append;
mod forwarding;
mod listener;
mod presence;
mod reader;
mod schema;
mod snapshots;
mod subscriptions;
mod tag_index;
mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use reel_core::backend::HeadNotifier;
use reel_core::{
    AllPage, AppendLimits, AppendRequest, AppendResult, Direction, EventStore, ExpectedVersion, HeadWatch, NewEvent,
    Position, Query, QueryPage, ReadAllFilter, RecordedEvent, ReelError, StoreStats, StreamInfo, StreamName,
    StreamVersion,
};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::{Client, NoTls};

pub use schema::SCHEMA_VERSION;
pub use subscriptions::{PostgresProjection, PostgresSubscriptionStore, ProjectionWork};

pub use reel_core::MAX_READ_LIMIT;

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    schema: String,
    limits: AppendLimits,
    jobs: mpsc::Sender<reel_core::backend::WriteJob>,
    readers: connections::Readers,
    /// Heartbeats' own connection (opened on the first), committing without waiting for the
    /// WAL flush: a fleet's heartbeats are hundreds a second, and one flush each on the reader
    /// connection queued every read behind them.
    heartbeats: Mutex<Option<Arc<Client>>>,
    names: reader::StreamNames,
    head: Arc<HeadNotifier>,
    _listener: tokio::task::JoinHandle<()>,
    /// Tells the writer to stop after its group in progress (`close`).
    closing: Arc<tokio::sync::Notify>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self._listener.abort();
    }
}

/// A connection and its driver.
pub(crate) type Connection = tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

/// Opens a connection named `application_name` (visible in `pg_stat_activity`); the error names
/// the URL (without its password).
pub(crate) async fn connect_client(url: &str, application_name: &str) -> Result<(Client, Connection), ReelError> {
    let fail = |e: tokio_postgres::Error| storage_error(format!("connecting to {}", redact(url)), e);
    let mut config: tokio_postgres::Config = url.parse().map_err(fail)?;
    config.application_name(application_name);
    config.connect(NoTls).await.map_err(fail)
}

/// A storage error for a failed PostgreSQL call. The driver's own text for a server error is
/// just "db error"; this carries the server's message and SQLSTATE so an operator can act on it.
pub(crate) fn storage_error(context: impl Into<String>, e: tokio_postgres::Error) -> ReelError {
    let message = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            message
        }
    };
    ReelError::storage(context, message)
}

/// A client whose connection runs in the background, named `application_name`.
pub(crate) async fn spawn_client(url: &str, application_name: &str) -> Result<Client, ReelError> {
    let (client, connection) = connect_client(url, application_name).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The URL with any password replaced, for messages and output.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl PostgresStore {
    /// Connects, creates or migrates `schema`, and starts the writer and the listener.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, ReelError> {
        Self::connect_with(url, schema, AppendLimits::default()).await
    }

    /// Stops the writer once its group in progress is answered, and waits for it. A writer that
    /// leads the schema's appends for other servers (docs/OPERATIONS.md) first answers what it
    /// took from them and hands the lead on; dropped without `close`, it stops wherever it is
    /// when the runtime ends, and those servers' appends in its hands fail with an unknown
    /// outcome. Appends on this store (or a clone) fail with `Closed` afterwards.
    pub async fn close(&self) {
        self.inner.closing.notify_one();
        let writer = self.inner.writer.lock().await.take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }

    /// As [`connect`](Self::connect), with append limits.
    pub async fn connect_with(url: &str, schema: &str, limits: AppendLimits) -> Result<Self, ReelError> {
        schema::validate_schema(schema)?;
        // The writer's connection carries its own name (`reel-writer-<schema>`), visible to operators.
        let writer_name = format!("reel-writer-{schema}");
        let mut setup = spawn_client(url, &writer_name).await?;
        schema::migrate(&mut setup, schema).await?;
        let reader = spawn_client(url, &connections::Readers::name(schema)).await?;
        let head = Arc::new(HeadNotifier::new(reader::head(&reader, schema).await?));
        let (jobs, receiver) = mpsc::channel(4096);
        let writer_url = url.to_string();
        let closing = Arc::new(tokio::sync::Notify::new());
        let writer = tokio::spawn(writer::run_writer(
            setup,
            schema.to_string(),
            receiver,
            head.clone(),
            closing.clone(),
            move || {
                let (url, name) = (writer_url.clone(), writer_name.clone());
                async move { spawn_client(&url, &name).await }
            },
        ));
        let listener = tokio::spawn(listener::run(url.to_string(), schema.to_string(), head.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                schema: schema.to_string(),
                limits,
                jobs,
                readers: connections::Readers::new(url, schema, reader),
                heartbeats: Mutex::new(None),
                names: reader::StreamNames::default(),
                head,
                _listener: listener,
                closing,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// The subscription store in the same schema.
    pub async fn subscription_store(&self) -> Result<PostgresSubscriptionStore, ReelError> {
        PostgresSubscriptionStore::connect(&self.inner.url, &self.inner.schema).await
    }

    /// PostgreSQL's plan for each item of `query` as a `read_query` runs it, one after another:
    /// how to see that a query is served by the tag index.
    pub async fn explain_query(&self, query: &Query) -> Result<String, ReelError> {
        query.validate()?;
        let reader = self.reader().await?;
        let mut plans = Vec::new();
        for item in &query.items {
            let read = tag_index::ItemQuery::new(&self.inner.schema, item, "e.position", "", Position(0), 100);
            let rows = reader
                .query_typed(&format!("EXPLAIN {}", read.sql), &read.params())
                .await
                .map_err(|e| storage_error("explaining a query", e))?;
            plans.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        }
        Ok(plans.join("\n"))
    }

    /// The schema this store lives in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// A reader connection for one read (see readers.rs), reconnected when it was lost.
    async fn reader(&self) -> Result<connections::LentReader, ReelError> {
        self.inner.readers.lend().await
    }

    /// The heartbeats' connection: its commits do not wait for the WAL flush (a heartbeat lost
    /// in a crash costs nothing; the next one comes on time).
    pub(crate) async fn heartbeat_client(&self) -> Result<Arc<Client>, ReelError> {
        let mut client = self.inner.heartbeats.lock().await;
        if let Some(open) = client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(open.clone());
        }
        let fresh = spawn_client(&self.inner.url, "reel-heartbeats").await?;
        fresh
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(|e| storage_error("configuring the heartbeats' connection", e))?;
        let fresh = Arc::new(fresh);
        *client = Some(fresh.clone());
        Ok(fresh)
    }

    async fn submit(&self, requests: Vec<AppendRequest>) -> Result<Vec<Result<AppendResult, ReelError>>, ReelError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .jobs
            .send(reel_core::backend::WriteJob::new(requests, reply))
            .await
            .map_err(|_| ReelError::Closed)?;
        answer.await.map_err(|_| ReelError::Closed)
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, ReelError> {
        self.inner.limits.validate(&events)?;
        let request = AppendRequest::new(stream.clone(), expected, events);
        self.submit(vec![request]).await?.pop().unwrap_or(Err(ReelError::Closed))
    }

    async fn append_many(&self, requests: Vec<AppendRequest>) -> Vec<Result<AppendResult, ReelError>> {
        reel_core::backend::append_many_with(&self.inner.limits, requests, |valid| self.submit(valid)).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        reader::read_stream(&*self.reader().await?, &self.inner.schema, stream, from, direction, limit).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<StreamVersion>, ReelError> {
        reader::stream_version(&*self.reader().await?, &self.inner.schema, stream).await
    }

    async fn read_all(&self, from: Position, filter: &ReadAllFilter, limit: usize) -> Result<AllPage, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        reader::read_all(&*self.reader().await?, &self.inner.schema, &self.inner.names, from, filter, limit).await
    }

    async fn read_query(&self, query: &Query, after: Position, limit: usize) -> Result<QueryPage, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        query.validate()?;
        reader::read_query(&*self.reader().await?, &self.inner.schema, query, after, limit).await
    }

    async fn head(&self) -> Result<Position, ReelError> {
        let head = reader::head(&*self.reader().await?, &self.inner.schema).await?;
        self.inner.head.advance(head);
        Ok(head)
    }

    fn watch_head(&self) -> HeadWatch {
        self.inner.head.watch()
    }

    async fn streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        reader::streams(&*self.reader().await?, &self.inner.schema, category, after, limit).await
    }

    async fn stats(&self) -> Result<StoreStats, ReelError> {
        reader::stats(&*self.reader().await?, &self.inner.schema).await
    }
}
