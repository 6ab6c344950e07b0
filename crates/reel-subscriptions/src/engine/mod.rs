//! The subscription engine, one concept per file:
//!
//! - `lifecycle`: the steps that move subscriptions along (setup, boot, run, teardown, detach);
//! - `operations`: what operators do (pause, reactivate, reset, remove, overview, parked events);
//! - `catch_up`: handing batches of the log to a subscriber, and running until idle;
//! - `lease`: who may run a subscription right now (workers and one-off operations);
//! - `report`: what each operation did.

mod catch_up;
pub(crate) mod lease;
mod lifecycle;
mod operations;
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reel_core::{
    EventStore, ReelError, Subscription, SubscriptionCriteria, SubscriptionId, SubscriptionStatus, SubscriptionStore,
};

use crate::{Clock, ClockBasedRetryStrategy, RetryStrategy, Subscriber, SystemClock};

pub(crate) use lease::LeaseHolder;
pub use operations::{ResetTo, SubscriptionView};
pub use report::{EngineError, EngineNote, EngineReport};

/// Rounds [`SubscriptionEngine::run_until_idle`] makes at most unless told otherwise.
pub const DEFAULT_MAX_ROUNDS: usize = 100;

/// Drives subscriptions through their lifecycle against an event store and a subscription store.
/// Cheap to clone (shared stores and subscribers).
#[derive(Clone)]
pub struct SubscriptionEngine {
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) store: Arc<dyn SubscriptionStore>,
    subscribers: Arc<BTreeMap<SubscriptionId, Arc<dyn Subscriber>>>,
    retry: Arc<dyn RetryStrategy>,
    pub(crate) clock: Arc<dyn Clock>,
    batch_size: usize,
    /// Old event shapes become current ones before subscribers see them.
    upcasters: Arc<reel_core::Upcasters>,
    /// Set on the copy a worker or an operation runs a subscription with: saves need the lease,
    /// and work stops when it lapses.
    lease: Option<LeaseHolder>,
    /// The owner of this engine's operation leases (outside a worker).
    operation_owner: String,
    /// How long an operation lease lasts without renewal.
    operation_lease_ttl: Duration,
    /// One lock per subscription: concurrent calls on one engine (run-after-append from several
    /// callers) never hand the same events to a subscriber twice.
    locks: Arc<std::sync::Mutex<BTreeMap<SubscriptionId, Arc<tokio::sync::Mutex<()>>>>>,
}

impl SubscriptionEngine {
    /// An engine for `subscribers`; ids must be unique and event type lists non-empty.
    /// Partitioned subscribers run as one subscription per partition (`{id}:{hex}`).
    pub fn new(
        events: Arc<dyn EventStore>,
        store: Arc<dyn SubscriptionStore>,
        subscribers: Vec<Arc<dyn Subscriber>>,
    ) -> Result<Self, ReelError> {
        let mut by_id = BTreeMap::new();
        for subscriber in crate::partition::expand(subscribers)? {
            let spec = subscriber.spec();
            spec.check()?;
            let id = spec.id.clone();
            if by_id.insert(id.clone(), subscriber).is_some() {
                return Err(ReelError::InvalidArgument(format!("subscriber id {id} is registered twice")));
            }
        }
        Ok(Self {
            events,
            store,
            subscribers: Arc::new(by_id),
            retry: Arc::new(ClockBasedRetryStrategy::default()),
            clock: Arc::new(SystemClock),
            batch_size: 1000,
            upcasters: Arc::default(),
            lease: None,
            operation_owner: lease::operation_owner(),
            operation_lease_ttl: Duration::from_secs(30),
            locks: Arc::default(),
        })
    }

    /// A copy that saves only while `lease` is held and stops when it lapses or is told to.
    pub(crate) fn leased(&self, lease: LeaseHolder) -> Self {
        Self { lease: Some(lease), ..self.clone() }
    }

    /// Replaces the retry strategy (default: clock-based, 5 s × 2^attempt, 5 attempts).
    pub fn with_retry_strategy(mut self, strategy: impl RetryStrategy + 'static) -> Self {
        self.retry = Arc::new(strategy);
        self
    }

    /// Replaces the clock (tests use a `ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Upcasts old event shapes before subscribers see them (the same registry repositories use).
    pub fn with_upcasters(mut self, upcasters: Arc<reel_core::Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Events read per batch; the position is saved after each batch (default 1,000).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.clamp(1, 100_000);
        self
    }

    /// How long the lease that `setup`, `boot` and `run` take outside a worker lasts without
    /// renewal (default 30 s; renewed between batches). A crashed caller's subscriptions are
    /// free again after it.
    pub fn with_operation_lease_ttl(mut self, ttl: Duration) -> Self {
        self.operation_lease_ttl = ttl.max(Duration::from_millis(10));
        self
    }

    /// Ids of the registered subscribers.
    pub fn subscriber_ids(&self) -> impl Iterator<Item = &SubscriptionId> {
        self.subscribers.keys()
    }

    /// The registered subscriber with this id.
    pub(crate) fn subscriber(&self, id: &SubscriptionId) -> Option<&Arc<dyn Subscriber>> {
        self.subscribers.get(id)
    }

    /// Ids of the registered subscribers matching `criteria`.
    pub(crate) fn registered(&self, criteria: &SubscriptionCriteria) -> Vec<SubscriptionId> {
        self.subscribers
            .iter()
            .filter(|(id, s)| criteria.matches(id, &s.spec().group))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Tracks registered subscribers matching `criteria` that have no subscription yet (as `New`).
    pub async fn track(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for id in self.registered(criteria) {
            let Some(subscriber) = self.subscribers.get(&id) else { continue };
            if self.store.get(&id).await?.is_some() {
                continue;
            }
            let spec = subscriber.spec();
            let subscription = Subscription::new(id.clone(), spec.group.clone(), spec.run_mode, self.clock.now());
            match self.store.add(&subscription).await {
                Ok(()) => report.changed(&id),
                // Another engine tracked it at the same moment: fine.
                Err(_) if self.store.get(&id).await?.is_some() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Holds this engine's lock on one subscription.
    async fn lock(&self, id: &SubscriptionId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = match self.locks.lock() {
            Ok(mut locks) => locks.entry(id.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        lock.lock_owned().await
    }

    async fn report_unmatched(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = EngineReport::default();
        for id in &criteria.ids {
            if !self.subscribers.contains_key(id) && self.store.get(id).await?.is_none() {
                report.unmatched.push(id.clone());
            }
        }
        Ok(report)
    }

    async fn with_status(
        &self,
        criteria: &SubscriptionCriteria,
        statuses: &[SubscriptionStatus],
    ) -> Result<Vec<Subscription>, ReelError> {
        let mut found = self.store.find(criteria).await?;
        found.retain(|s| statuses.contains(&s.status));
        Ok(found)
    }

    /// A failure of one subscription's step: under a worker it goes back to the worker's loop
    /// (which stands by on a lost lease); elsewhere it is reported and the operation goes on
    /// with the other subscriptions.
    fn isolate(
        &self,
        result: Result<(), ReelError>,
        id: &SubscriptionId,
        report: &mut EngineReport,
    ) -> Result<(), ReelError> {
        match result {
            Ok(()) => Ok(()),
            Err(e) if self.under_worker() => Err(e),
            Err(e) => {
                tracing::warn!(%id, error = %e, "subscription step did not complete");
                report.error(id, e.to_string());
                Ok(())
            }
        }
    }

    async fn fail(
        &self,
        subscription: &mut Subscription,
        message: String,
        failed_at: Option<reel_core::Position>,
        report: &mut EngineReport,
    ) -> Result<(), ReelError> {
        tracing::warn!(id = %subscription.id, %message, "subscription failed");
        subscription.fail_at(message.clone(), failed_at)?;
        self.save(subscription, report).await?;
        report.error(&subscription.id, message);
        Ok(())
    }

    /// Saves `subscription` (compare-and-swap on its revision; under a lease, only while held).
    async fn save(&self, subscription: &mut Subscription, report: &mut EngineReport) -> Result<(), ReelError> {
        subscription.last_saved_at = self.clock.now();
        match self.lease_owner() {
            Some(owner) => self.store.update_leased(subscription, owner, subscription.last_saved_at).await?,
            None => self.store.update(subscription).await?,
        }
        report.changed(&subscription.id);
        Ok(())
    }
}
