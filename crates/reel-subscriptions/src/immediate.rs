//! Immediate projections: an `EventStore` whose appends run the selected subscriptions before
//! they return (no worker needed).

use std::sync::Arc;

use async_trait::async_trait;
use reel_core::{
    AllPage, AppendRequest, AppendResult, Direction, EventStore, ExpectedVersion, HeadWatch, NewEvent, Position, Query,
    QueryPage, ReadAllFilter, RecordedEvent, ReelError, StoreStats, StreamInfo, StreamName, StreamVersion,
    SubscriptionCriteria,
};

use crate::{EngineReport, SubscriptionEngine};

/// An append that was stored, and what running the subscriptions after it did.
#[derive(Debug)]
pub struct AppendAndRun {
    /// The append's result: it is committed, whatever happened next.
    pub append: AppendResult,
    /// The run after it: failed subscriptions are in the report's `errors` (and in `Error`,
    /// retried by their strategy); an `Err` means the run itself could not proceed.
    pub run: Result<EngineReport, ReelError>,
}

/// An `EventStore` whose appends return only after the selected subscriptions have run over
/// what was appended (immediate projections, without a worker). Reads pass straight through.
///
/// A subscriber failing after the append committed never turns the append into an error (a
/// caller retrying without event ids would append twice): `append` returns the append's
/// result, the failure is logged and the subscription follows its retry strategy.
/// [`append_and_run`](Self::append_and_run) returns both outcomes separately.
pub struct RunAfterAppend {
    store: Arc<dyn EventStore>,
    engine: SubscriptionEngine,
    criteria: SubscriptionCriteria,
    limit: Option<u64>,
    max_rounds: usize,
}

impl RunAfterAppend {
    /// Runs `engine` over `criteria` after every successful append, handing each subscription
    /// at most `limit` events per append (`None`: everything up to the head). Subscriptions a
    /// worker holds are left to it (see the run report's `skipped`).
    pub fn new(
        store: Arc<dyn EventStore>,
        engine: SubscriptionEngine,
        criteria: SubscriptionCriteria,
        limit: Option<u64>,
    ) -> Self {
        Self { store, engine, criteria, limit, max_rounds: 1 }
    }

    /// Repeats the run until idle (up to `max_rounds`), so events that processors append while
    /// handling are processed before the append returns too. Without a limit only.
    pub fn until_idle(mut self, max_rounds: usize) -> Self {
        self.max_rounds = max_rounds.max(1);
        self
    }

    /// Appends, then runs the subscriptions; both outcomes come back. `Err` only when the
    /// append itself failed (then nothing ran).
    pub async fn append_and_run(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendAndRun, ReelError> {
        let append = self.store.append(stream, expected, events).await?;
        Ok(AppendAndRun { append, run: self.run().await })
    }

    async fn run(&self) -> Result<EngineReport, ReelError> {
        let report = if self.max_rounds > 1 && self.limit.is_none() {
            self.engine.run_until_idle(&self.criteria, self.max_rounds).await
        } else {
            self.engine.run_with_limit(&self.criteria, self.limit).await
        };
        match &report {
            Ok(report) => {
                for error in &report.errors {
                    tracing::warn!(id = %error.id, message = %error.message, "subscription failed after an append");
                }
            }
            Err(e) => tracing::warn!(error = %e, "running subscriptions after an append failed"),
        }
        report
    }
}

#[async_trait]
impl EventStore for RunAfterAppend {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, ReelError> {
        Ok(self.append_and_run(stream, expected, events).await?.append)
    }

    async fn append_many(&self, requests: Vec<AppendRequest>) -> Vec<Result<AppendResult, ReelError>> {
        let results = self.store.append_many(requests).await;
        if results.iter().any(Result::is_ok) {
            let _ = self.run().await;
        }
        results
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReelError> {
        self.store.read_stream(stream, from, direction, limit).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<StreamVersion>, ReelError> {
        self.store.stream_version(stream).await
    }

    async fn read_all(&self, from: Position, filter: &ReadAllFilter, limit: usize) -> Result<AllPage, ReelError> {
        self.store.read_all(from, filter, limit).await
    }

    async fn read_query(&self, query: &Query, after: Position, limit: usize) -> Result<QueryPage, ReelError> {
        self.store.read_query(query, after, limit).await
    }

    async fn head(&self) -> Result<Position, ReelError> {
        self.store.head().await
    }

    fn watch_head(&self) -> HeadWatch {
        self.store.watch_head()
    }

    async fn streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, ReelError> {
        self.store.streams(category, after, limit).await
    }

    async fn stats(&self) -> Result<StoreStats, ReelError> {
        self.store.stats().await
    }
}
