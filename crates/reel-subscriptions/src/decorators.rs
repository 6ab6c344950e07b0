//! Engine decorators (catch up fully, fail loudly) and immediate projections (run after append).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reel_core::{
    AllPage, AppendRequest, AppendResult, Direction, EventStore, ExpectedVersion, HeadWatch, NewEvent, Position,
    ReadAllFilter, RecordedEvent, ReelError, StoreStats, StreamInfo, StreamName, StreamVersion, Subscription,
    SubscriptionCriteria, SubscriptionStatus,
};

use crate::{EngineReport, SubscriptionEngine};

/// The engine's operations, so decorators can wrap an engine or each other.
#[async_trait]
pub trait EngineOperations: Send + Sync {
    /// See [`SubscriptionEngine::setup`].
    async fn setup(&self, criteria: &SubscriptionCriteria, skip_booting: bool) -> Result<EngineReport, ReelError>;
    /// See [`SubscriptionEngine::boot`].
    async fn boot(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError>;
    /// See [`SubscriptionEngine::run_with_limit`].
    async fn run_with_limit(
        &self,
        criteria: &SubscriptionCriteria,
        limit: Option<u64>,
    ) -> Result<EngineReport, ReelError>;
    /// See [`SubscriptionEngine::run`].
    async fn run(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        self.run_with_limit(criteria, None).await
    }
    /// See [`SubscriptionEngine::teardown`].
    async fn teardown(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError>;
    /// See [`SubscriptionEngine::remove`].
    async fn remove(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError>;
    /// See [`SubscriptionEngine::reactivate`].
    async fn reactivate(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError>;
    /// See [`SubscriptionEngine::pause`].
    async fn pause(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError>;
    /// See [`SubscriptionEngine::subscriptions`].
    async fn subscriptions(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError>;
}

#[async_trait]
impl EngineOperations for SubscriptionEngine {
    async fn setup(&self, criteria: &SubscriptionCriteria, skip_booting: bool) -> Result<EngineReport, ReelError> {
        SubscriptionEngine::setup(self, criteria, skip_booting).await
    }
    async fn boot(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        SubscriptionEngine::boot(self, criteria).await
    }
    async fn run_with_limit(
        &self,
        criteria: &SubscriptionCriteria,
        limit: Option<u64>,
    ) -> Result<EngineReport, ReelError> {
        SubscriptionEngine::run_with_limit(self, criteria, limit).await
    }
    async fn teardown(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        SubscriptionEngine::teardown(self, criteria).await
    }
    async fn remove(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        SubscriptionEngine::remove(self, criteria).await
    }
    async fn reactivate(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        SubscriptionEngine::reactivate(self, criteria).await
    }
    async fn pause(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        SubscriptionEngine::pause(self, criteria).await
    }
    async fn subscriptions(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError> {
        SubscriptionEngine::subscriptions(self, criteria).await
    }
}

/// Repeats `boot` and `run` until a round handles nothing more, so events that processors append
/// while handling are processed too (for tests and immediate mode). Stops after `max_rounds`.
pub struct CatchUpSubscriptionEngine<E> {
    inner: E,
    max_rounds: usize,
}

impl<E: EngineOperations> CatchUpSubscriptionEngine<E> {
    /// Wraps `inner`, repeating up to 100 rounds.
    pub fn new(inner: E) -> Self {
        Self { inner, max_rounds: 100 }
    }
}

fn merge(total: &mut EngineReport, round: EngineReport) {
    total.handled += round.handled;
    for id in round.changed {
        if !total.changed.contains(&id) {
            total.changed.push(id);
        }
    }
    total.errors.extend(round.errors);
    if total.unmatched.is_empty() {
        total.unmatched = round.unmatched;
    }
}

#[async_trait]
impl<E: EngineOperations> EngineOperations for CatchUpSubscriptionEngine<E> {
    async fn setup(&self, criteria: &SubscriptionCriteria, skip_booting: bool) -> Result<EngineReport, ReelError> {
        self.inner.setup(criteria, skip_booting).await
    }
    async fn boot(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut total = EngineReport::default();
        for _ in 0..self.max_rounds {
            let round = self.inner.boot(criteria).await?;
            let done = round.handled == 0;
            merge(&mut total, round);
            if done {
                break;
            }
        }
        Ok(total)
    }
    async fn run_with_limit(
        &self,
        criteria: &SubscriptionCriteria,
        limit: Option<u64>,
    ) -> Result<EngineReport, ReelError> {
        let mut total = EngineReport::default();
        for _ in 0..self.max_rounds {
            let round = self.inner.run_with_limit(criteria, limit).await?;
            let done = round.handled == 0;
            merge(&mut total, round);
            if done {
                break;
            }
        }
        Ok(total)
    }
    async fn teardown(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        self.inner.teardown(criteria).await
    }
    async fn remove(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        self.inner.remove(criteria).await
    }
    async fn reactivate(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        self.inner.reactivate(criteria).await
    }
    async fn pause(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        self.inner.pause(criteria).await
    }
    async fn subscriptions(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError> {
        self.inner.subscriptions(criteria).await
    }
}

/// Turns any subscription failure in a report into an `Err` (for tests and development; in
/// production the retry strategy deals with failures).
pub struct ThrowOnErrorSubscriptionEngine<E> {
    inner: E,
}

impl<E: EngineOperations> ThrowOnErrorSubscriptionEngine<E> {
    /// Wraps `inner`.
    pub fn new(inner: E) -> Self {
        Self { inner }
    }
}

fn strict(report: EngineReport) -> Result<EngineReport, ReelError> {
    match report.errors.first() {
        Some(error) => Err(ReelError::SubscriptionFailed { id: error.id.to_string(), message: error.message.clone() }),
        None => Ok(report),
    }
}

#[async_trait]
impl<E: EngineOperations> EngineOperations for ThrowOnErrorSubscriptionEngine<E> {
    async fn setup(&self, criteria: &SubscriptionCriteria, skip_booting: bool) -> Result<EngineReport, ReelError> {
        strict(self.inner.setup(criteria, skip_booting).await?)
    }
    async fn boot(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        strict(self.inner.boot(criteria).await?)
    }
    async fn run_with_limit(
        &self,
        criteria: &SubscriptionCriteria,
        limit: Option<u64>,
    ) -> Result<EngineReport, ReelError> {
        strict(self.inner.run_with_limit(criteria, limit).await?)
    }
    async fn teardown(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        strict(self.inner.teardown(criteria).await?)
    }
    async fn remove(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        strict(self.inner.remove(criteria).await?)
    }
    async fn reactivate(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        strict(self.inner.reactivate(criteria).await?)
    }
    async fn pause(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        strict(self.inner.pause(criteria).await?)
    }
    async fn subscriptions(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError> {
        self.inner.subscriptions(criteria).await
    }
}

/// An `EventStore` whose appends return only after the selected subscriptions have run over
/// what was appended (immediate projections, without a worker). Use it for subscriptions no
/// worker runs. Reads pass straight through.
pub struct RunAfterAppend<E> {
    store: Arc<dyn EventStore>,
    engine: E,
    criteria: SubscriptionCriteria,
    limit: Option<u64>,
}

impl<E: EngineOperations> RunAfterAppend<E> {
    /// Runs `engine` over `criteria` after every successful append, handing each subscription at
    /// most `limit` events per append (`None`: all).
    pub fn new(store: Arc<dyn EventStore>, engine: E, criteria: SubscriptionCriteria, limit: Option<u64>) -> Self {
        Self { store, engine, criteria, limit }
    }

    async fn after_append(&self) -> Result<(), ReelError> {
        self.engine.run_with_limit(&self.criteria, self.limit).await.map(|_| ())
    }
}

#[async_trait]
impl<E: EngineOperations> EventStore for RunAfterAppend<E> {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, ReelError> {
        let result = self.store.append(stream, expected, events).await?;
        self.after_append().await?;
        Ok(result)
    }

    async fn append_many(&self, requests: Vec<AppendRequest>) -> Vec<Result<AppendResult, ReelError>> {
        let results = self.store.append_many(requests).await;
        if results.iter().any(Result::is_ok) {
            if let Err(e) = self.after_append().await {
                tracing::warn!(error = %e, "running subscriptions after append failed");
            }
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

impl SubscriptionEngine {
    /// Waits until every registered subscriber matching `criteria` — also those without a stored
    /// subscription yet — has processed the log up to the head as it is now. A subscription in
    /// `Error` ends the wait with `SubscriptionFailed`; running out of time is `TimedOut`.
    /// Something else (a worker, run-after-append) must be running the subscriptions.
    pub async fn wait_for_catch_up(&self, criteria: &SubscriptionCriteria, timeout: Duration) -> Result<(), ReelError> {
        let target = self.events.head().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut behind = Vec::new();
            for id in self.subscriber_ids() {
                let group = self.subscriber(id).map(|s| s.spec().group.clone()).unwrap_or_default();
                if !criteria.matches(id, &group) {
                    continue;
                }
                match self.store.get(id).await? {
                    Some(s) if s.status == SubscriptionStatus::Error => {
                        let message = s.error.map(|e| e.message).unwrap_or_default();
                        return Err(ReelError::SubscriptionFailed { id: id.to_string(), message });
                    }
                    Some(s) if s.status == SubscriptionStatus::Finished => {}
                    Some(s) if s.status == SubscriptionStatus::Active && s.position >= target => {}
                    _ => behind.push(id.to_string()),
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReelError::TimedOut {
                    what: format!("after {timeout:?} waiting for {} to reach position {target}", behind.join(", ")),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
