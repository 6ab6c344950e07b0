//! Reel's embedded event store: one SQLite file, no server.
//!
//! WAL mode with `synchronous = FULL` (an acknowledged append survives power loss), one writer
//! thread doing group commit, a small pool of reader connections, gap-free positions.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use reel_core::{EventStore, ExpectedVersion, NewEvent, StreamName};
//! use reel_sqlite::SqliteStore;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(dir.path().join("reel.db")).unwrap();
//! let stream = StreamName::new("unit-PL-1001").unwrap();
//! let event = NewEvent::json("DoorOpened", &serde_json::json!({ "door": 3 })).unwrap();
//! let result = store.append(&stream, ExpectedVersion::NoStream, vec![event]).await.unwrap();
//! assert_eq!(result.first_position.0, 1);
//! # });
//! ```

mod checkpointer;
mod connection;
mod presence;
mod queries;
mod reader;
mod schema;
mod snapshots;
mod stages;
mod subscriptions;
mod tag_index;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reel_core::backend::HeadNotifier;
use reel_core::{
    AllPage, AppendLimits, AppendRequest, AppendResult, Direction, EventStore, ExpectedVersion, HeadWatch, NewEvent,
    Position, Query, QueryPage, ReadAllFilter, RecordedEvent, ReelError, ScanEnd, ScanVisitor, StoreStats, StreamInfo,
    StreamName, StreamVersion,
};
use tokio::sync::oneshot;

pub use presence::SqlitePresenceStore;
pub use reel_core::MAX_READ_LIMIT;
pub use schema::SCHEMA_VERSION;
pub use snapshots::SqliteSnapshotStore;
pub use stages::{AppendSplit, Stage, StageSummary};
pub use subscriptions::{SqliteProjection, SqliteSubscriptionStore};
pub use writer::RECENT_ID_WINDOW;

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Size and count limits checked before anything is written.
    pub limits: AppendLimits,
    /// Gather concurrent appends into one transaction and one fsync (default on).
    pub group_commit: bool,
    /// Reader connections (default 4).
    pub readers: usize,
    /// How often appends by *other processes* are looked for while someone watches the head.
    /// Appends in this process wake watchers at once.
    pub external_poll: Duration,
    /// When the WAL is copied into the main file (see [`CheckpointMode`]).
    pub checkpoints: CheckpointMode,
    /// Record how long each append spends in each stage of the writer ([`SqliteStore::stage_report`]);
    /// off by default (the benchmarks turn it on).
    pub record_stages: bool,
}

/// When the WAL is checkpointed (copied into the main file so it can start over). Every mode
/// keeps commits exactly as durable: each one is fsync'd in the WAL before it is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Inside the commit that brings the WAL to 1,000 pages, as SQLite does by itself: that
    /// group's callers wait for the copy and the main file's fsync (default).
    #[default]
    InsideCommit,
    /// On the writer thread, right after the group whose commit brought the WAL to 1,000 pages
    /// was answered: nobody waits for it but appends queued meanwhile.
    AfterAnswer,
    /// On a thread of its own with its own connection, at most every 100 ms after commits while
    /// the WAL is small and back to back once it passes 8,192 pages; the writer copies only the
    /// rest that thread leaves, so the WAL can start over (it grows to at most 64 MiB).
    Background,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            limits: AppendLimits::default(),
            group_commit: true,
            readers: 4,
            external_poll: Duration::from_millis(100),
            checkpoints: CheckpointMode::default(),
            record_stages: false,
        }
    }
}

/// The embedded store. Cheap to clone; clones share the writer and the readers.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    limits: AppendLimits,
    jobs: Sender<reel_core::backend::WriteJob>,
    readers: Arc<reader::ReaderPool>,
    head: Arc<HeadNotifier>,
    commits: Arc<AtomicU64>,
    stages: Option<Arc<stages::StageRecorder>>,
    /// Dropping it stops the thread that notices other processes' appends.
    _stop_external_watch: Sender<()>,
}

impl SqliteStore {
    /// Opens or creates the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ReelError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens or creates the store at `path`.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, ReelError> {
        let path = path.as_ref().to_path_buf();
        let conn = schema::open_and_migrate(&path)?;
        let head = Arc::new(HeadNotifier::new(queries::head(&conn)?));
        let (jobs, receiver) = mpsc::channel();
        let group = writer::GroupLimits { max_jobs: if options.group_commit { 1024 } else { 1 }, max_events: 50_000 };
        let writer_head = Arc::clone(&head);
        let commits = Arc::new(AtomicU64::new(0));
        let writer_commits = Arc::clone(&commits);
        let checkpoints = if options.checkpoints == CheckpointMode::Background {
            conn.pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(|e| ReelError::storage(format!("configuring {}", path.display()), e))?;
            let (nudge, nudges) = mpsc::sync_channel(1);
            let signal = Arc::new(checkpointer::CheckpointSignal::default());
            let checkpoint_signal = Arc::clone(&signal);
            let checkpoint_path = path.clone();
            std::thread::Builder::new()
                .name("reel-sqlite-checkpoint".into())
                .spawn(move || {
                    if let Err(e) = checkpointer::run_checkpointer(&checkpoint_path, nudges, checkpoint_signal) {
                        tracing::error!(error = %e, "the checkpoint thread stopped; the WAL is no longer checkpointed");
                    }
                })
                .map_err(|e| ReelError::storage("starting the checkpoint thread", e))?;
            writer::Checkpoints::Background { nudge, signal }
        } else if options.checkpoints == CheckpointMode::AfterAnswer {
            writer::Checkpoints::AfterAnswer
        } else {
            writer::Checkpoints::InsideCommit
        };
        let stages = options.record_stages.then(|| Arc::new(stages::StageRecorder::default()));
        let writer_stages = stages.clone();
        std::thread::Builder::new()
            .name("reel-sqlite-writer".into())
            .spawn(move || {
                writer::run_writer(conn, receiver, writer_head, group, writer_commits, checkpoints, writer_stages)
            })
            .map_err(|e| ReelError::storage("starting the writer thread", e))?;
        let (stop, stopped) = mpsc::channel();
        let watch_conn = schema::open_connection(&path, true)?;
        let watch_head = Arc::clone(&head);
        let poll = options.external_poll;
        std::thread::Builder::new()
            .name("reel-sqlite-watch".into())
            .spawn(move || watch_external_appends(watch_conn, watch_head, poll, stopped))
            .map_err(|e| ReelError::storage("starting the watch thread", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                readers: Arc::new(reader::ReaderPool::new(&path, options.readers)),
                path,
                limits: options.limits,
                jobs,
                head,
                commits,
                stages,
                _stop_external_watch: stop,
            }),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The aggregate snapshot store kept in the same file.
    pub fn snapshot_store(&self) -> Result<SqliteSnapshotStore, ReelError> {
        SqliteSnapshotStore::open(&self.inner.path, Arc::clone(&self.inner.readers))
    }

    /// Device presence kept in the same file.
    pub fn presence_store(&self) -> Result<SqlitePresenceStore, ReelError> {
        SqlitePresenceStore::open(&self.inner.path)
    }

    /// The subscription store kept in the same file.
    pub fn subscription_store(&self) -> Result<SqliteSubscriptionStore, ReelError> {
        SqliteSubscriptionStore::open(&self.inner.path)
    }

    /// Append transactions committed since the store was opened (each one fsync).
    pub fn commit_count(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Where appends spent their time since the last call, stage by stage (queue wait, group
    /// assembly, write, commit, checkpoint, reply); `None` unless opened with `record_stages`.
    pub fn stage_report(&self) -> Option<Vec<StageSummary>> {
        self.inner.stages.as_ref().map(|stages| stages.take())
    }

    /// How the appends' time split between the queue, the writer and waking their callers, for
    /// all of them and for the slowest (at or above each of `quantiles` of their whole time),
    /// since the last call; `None` unless opened with `record_stages`.
    pub fn append_splits(&self, quantiles: &[f64]) -> Option<Vec<AppendSplit>> {
        self.inner.stages.as_ref().map(|stages| stages.take_splits(quantiles))
    }

    async fn submit(&self, requests: Vec<AppendRequest>) -> Result<Vec<Result<AppendResult, ReelError>>, ReelError> {
        let (reply, answer) = oneshot::channel();
        let Some(stages) = &self.inner.stages else {
            self.inner.jobs.send(reel_core::backend::WriteJob::new(requests, reply)).map_err(|_| ReelError::Closed)?;
            return answer.await.map_err(|_| ReelError::Closed);
        };
        let trace = Arc::new(reel_core::backend::JobTrace::default());
        let job = reel_core::backend::WriteJob::traced(requests, reply, Arc::clone(&trace));
        let submitted = job.submitted;
        self.inner.jobs.send(job).map_err(|_| ReelError::Closed)?;
        let answers = answer.await.map_err(|_| ReelError::Closed)?;
        stages.record_append(submitted, &trace, std::time::Instant::now());
        Ok(answers)
    }
}

/// Wakes head watchers when another process appends. `PRAGMA data_version` changes when any
/// other connection commits; it is checked only while somebody watches.
fn watch_external_appends(
    conn: rusqlite::Connection,
    head: Arc<HeadNotifier>,
    poll: Duration,
    stop: mpsc::Receiver<()>,
) {
    let mut last_version: Option<i64> = None;
    loop {
        match stop.recv_timeout(poll) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if head.watcher_count() == 0 {
            continue;
        }
        let version = conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0)).ok();
        if version.is_some() && version != last_version {
            last_version = version;
            if let Ok(position) = queries::head(&conn) {
                head.advance(position);
            }
        }
    }
}

#[async_trait]
impl EventStore for SqliteStore {
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
        let stream = stream.clone();
        self.inner.readers.run(move |pool, conn| reader::read_stream(pool, conn, &stream, from, direction, limit)).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<StreamVersion>, ReelError> {
        let stream = stream.clone();
        self.inner.readers.run(move |_, conn| reader::stream_version(conn, &stream)).await
    }

    async fn read_all(&self, from: Position, filter: &ReadAllFilter, limit: usize) -> Result<AllPage, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        let filter = filter.clone();
        self.inner.readers.run(move |pool, conn| reader::read_all(pool, conn, from, &filter, limit)).await
    }

    async fn read_query(&self, query: &Query, after: Position, limit: usize) -> Result<QueryPage, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        query.validate()?;
        let query = query.clone();
        self.inner.readers.run(move |pool, conn| reader::read_query(pool, conn, &query, after, limit)).await
    }

    async fn scan(&self, from: Position, visitor: Box<dyn ScanVisitor>) -> Result<ScanEnd, ReelError> {
        self.inner.readers.run(move |pool, conn| reader::scan(pool, conn, from, visitor, reader::SCAN_CHUNK)).await
    }

    async fn head(&self) -> Result<Position, ReelError> {
        let position = self.inner.readers.run(|_, conn| queries::head(conn)).await?;
        self.inner.head.advance(position);
        Ok(position)
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
        let category = category.map(str::to_string);
        let after = after.cloned();
        self.inner.readers.run(move |_, conn| reader::streams(conn, category.as_deref(), after.as_ref(), limit)).await
    }

    async fn stats(&self) -> Result<StoreStats, ReelError> {
        let path = self.inner.path.clone();
        self.inner.readers.run(move |_, conn| reader::stats(conn, &path)).await
    }
}
