use async_trait::async_trait;
use serde::Serialize;

use crate::{
    AppendCondition, ExpectedVersion, HeadWatch, NewEvent, Position, Query, QueryPage, RecordedEvent, ReelError,
    ScanEnd, ScanVisitor, StreamName, StreamVersion,
};

/// Largest page any read returns (`read_stream`, `read_all`, `streams`).
pub const MAX_READ_LIMIT: usize = 100_000;

/// What an append stored (or, for an idempotent retry, had stored the first time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AppendResult {
    /// Position of the first event of the append.
    pub first_position: Position,
    /// Position of the last event of the append.
    pub last_position: Position,
    /// The stream's version after the append: pass it as `ExpectedVersion::Exact` next time.
    pub next_version: StreamVersion,
}

/// One append among several submitted together with [`EventStore::append_many`].
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// Target stream.
    pub stream: StreamName,
    /// Concurrency check.
    pub expected: ExpectedVersion,
    /// Events, stored all or none.
    pub events: Vec<NewEvent>,
    /// Checked beside `expected`, in the same ordered commit: the append stores nothing if an
    /// event matching the condition's query is stored after its `after` position.
    pub condition: Option<AppendCondition>,
}

impl AppendRequest {
    /// A request without a condition.
    pub fn new(stream: StreamName, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self { stream, expected, events, condition: None }
    }

    /// Adds a condition.
    pub fn with_condition(mut self, condition: AppendCondition) -> Self {
        self.condition = Some(condition);
        self
    }
}

/// Reading direction within a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// Which events `read_all` returns. Empty lists mean "no restriction"; set fields are ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadAllFilter {
    /// Stream categories, any of.
    pub categories: Vec<String>,
    /// Event types, any of.
    pub event_types: Vec<String>,
    /// Stream name prefix.
    pub stream_prefix: Option<String>,
    /// Tags the event must all carry.
    pub tags: Vec<String>,
}

impl ReadAllFilter {
    /// True when it lets every event through.
    pub fn is_empty(&self) -> bool {
        self.categories.is_empty()
            && self.event_types.is_empty()
            && self.stream_prefix.is_none()
            && self.tags.is_empty()
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == event.stream.category()))
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self.stream_prefix.as_deref().is_none_or(|p| event.stream.as_str().starts_with(p))
            && self.tags.iter().all(|t| event.tags.contains(t))
    }
}

/// One page of the global log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllPage {
    /// Matching events in position order.
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts. Advances over events the filter skipped, so a
    /// follower of rare events still moves forward (its checkpoint never gets stuck).
    pub next: Position,
}

/// A stream and its current version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamInfo {
    /// The stream.
    pub stream: StreamName,
    /// Version of its last event.
    pub version: StreamVersion,
}

/// Size of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Events stored.
    pub event_count: u64,
    /// Streams with at least one event.
    pub stream_count: u64,
    /// Position of the last event (0 when empty).
    pub head: Position,
    /// Bytes on disk, when the backend knows.
    pub storage_bytes: Option<u64>,
}

/// The store contract (docs/DESIGN.md, invariants 1-8). Every backend keeps its invariants and
/// runs `reel-testkit`'s conformance suite.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` atomically after checking `expected`.
    ///
    /// Retrying an append whose events are already stored returns the original result and stores nothing.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, ReelError>;

    /// Appends `events` if `expected` holds and no event matching `condition` is stored after
    /// its `after` position, both decided atomically; otherwise stores nothing and fails with
    /// `WrongExpectedVersion` or `ConditionFailed`. A retry of a committed conditional append
    /// (same ids) returns the original result.
    async fn append_if(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        condition: AppendCondition,
    ) -> Result<AppendResult, ReelError> {
        let request = AppendRequest::new(stream.clone(), expected, events).with_condition(condition);
        self.append_many(vec![request]).await.pop().unwrap_or(Err(ReelError::Closed))
    }

    /// Several independent appends, each atomic on its own, applied in the given order.
    /// Backends that can, commit them together (one transaction, one fsync).
    ///
    /// This default refuses conditional requests: a store checks conditions only where it can
    /// decide them in its ordered commit, so it overrides this method.
    async fn append_many(&self, requests: Vec<AppendRequest>) -> Vec<Result<AppendResult, ReelError>> {
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            if request.condition.is_some() {
                results.push(Err(ReelError::InvalidArgument("this store does not check append conditions".into())));
                continue;
            }
            results.push(self.append(&request.stream, request.expected, request.events).await);
        }
        results
    }

    /// Up to `limit` events matching `query` at positions after `after`, in position order, and
    /// the head at the time of the read (read from one snapshot). Served by the tag index.
    async fn read_query(&self, query: &Query, after: Position, limit: usize) -> Result<QueryPage, ReelError>;

    /// Up to `limit` events of `stream` starting at version `from`, in `direction`.
    /// A stream without events is `StreamNotFound`.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReelError>;

    /// Version of the stream's last event, `None` when it has none.
    async fn stream_version(&self, stream: &StreamName) -> Result<Option<StreamVersion>, ReelError>;

    /// Up to `limit` events at positions ≥ `from` that pass `filter`, in position order.
    async fn read_all(&self, from: Position, filter: &ReadAllFilter, limit: usize) -> Result<AllPage, ReelError>;

    /// Shows every event from `from` up to the head as it is when the scan begins to `visitor`,
    /// in position order, until it returns `Break`; hands the visitor back with the position
    /// after the last event it saw. Applications call [`crate::scan_all`]. This default reads
    /// pages of `read_all`; a store that can show rows without building events overrides it.
    async fn scan(&self, from: Position, visitor: Box<dyn ScanVisitor>) -> Result<ScanEnd, ReelError> {
        let until = self.head().await?;
        crate::scan::scan_in_pages(self, from, until, visitor).await
    }

    /// Position of the last stored event (0 when empty).
    async fn head(&self) -> Result<Position, ReelError>;

    /// A watcher that wakes when the head moves.
    fn watch_head(&self) -> HeadWatch;

    /// Streams ordered by name, after `after`, optionally of one category.
    async fn streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, ReelError>;

    /// Counts and sizes.
    async fn stats(&self) -> Result<StoreStats, ReelError>;
}
