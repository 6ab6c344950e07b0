//! The engine: setup, boot, run, teardown, remove, reactivate, pause, subscriptions.

use std::collections::BTreeMap;
use std::sync::Arc;

use reel_core::{
    AllReader, EventStore, ParkedEvent, Position, ReadAllFilter, ReelError, RunMode, Subscription,
    SubscriptionCriteria, SubscriptionId, SubscriptionStatus, SubscriptionStore,
};

use crate::guard::{catch_panic, guarded};
use crate::{BatchFailure, Checkpoint, Clock, ClockBasedRetryStrategy, RetryStrategy, Subscriber, SystemClock};

use SubscriptionStatus::*;

/// A subscription whose step failed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineError {
    /// The subscription.
    pub id: SubscriptionId,
    /// What went wrong.
    pub message: String,
}

/// Where `reset` moves a subscription: the next event it handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// The first event of the log.
    Beginning,
    /// The event at this position.
    Position(Position),
    /// The first event recorded at or after this time.
    Time(reel_core::Timestamp),
}

/// Binary search over the log's record times (which grow with position).
async fn first_position_at_or_after(
    events: &dyn EventStore,
    head: Position,
    time: reel_core::Timestamp,
) -> Result<Position, ReelError> {
    let (mut low, mut high) = (1u64, head.0 + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        let page = events.read_all(Position(middle), &ReadAllFilter::default(), 1).await?;
        match page.events.first() {
            Some(event) if event.recorded_at < time => low = event.position.0 + 1,
            _ => high = middle,
        }
    }
    Ok(Position(low))
}

/// What an engine operation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineReport {
    /// Events handed to handlers.
    pub handled: u64,
    /// Subscriptions the operation changed.
    pub changed: Vec<SubscriptionId>,
    /// Subscriptions that failed (their status is now `Error`, or the operation was refused).
    pub errors: Vec<EngineError>,
    /// Ids in the criteria that matched no subscriber and no subscription.
    pub unmatched: Vec<SubscriptionId>,
}

/// A subscription as operators see it (`reel subscriptions list`, `GET /subscriptions`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SubscriptionView {
    /// Its id.
    pub id: SubscriptionId,
    /// Its group.
    pub group: String,
    /// How it runs.
    pub mode: reel_core::RunMode,
    /// Where it is in its lifecycle.
    pub status: reel_core::SubscriptionStatus,
    /// Last position handled.
    pub position: Position,
    /// Events between its position and the head.
    pub lag: u64,
    /// Failed attempts at the current batch.
    pub retries: u32,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The worker holding it, if any.
    pub lease_owner: Option<String>,
    /// When its state was last saved.
    pub last_saved_at: reel_core::Timestamp,
    /// How many events it parked.
    pub parked_count: usize,
    /// The events it parked.
    pub parked: Vec<reel_core::ParkedEvent>,
}

/// Drives subscriptions through their lifecycle against an event store and a subscription store.
/// Cheap to clone (shared stores and subscribers).
#[derive(Clone)]
pub struct SubscriptionEngine {
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) store: Arc<dyn SubscriptionStore>,
    subscribers: BTreeMap<SubscriptionId, Arc<dyn Subscriber>>,
    retry: Arc<dyn RetryStrategy>,
    pub(crate) clock: Arc<dyn Clock>,
    batch_size: usize,
    /// Old event shapes become current ones before subscribers see them.
    upcasters: Arc<reel_core::Upcasters>,
    /// Set when a worker runs the engine: saves need the lease, and work stops when it lapses.
    lease: Option<LeaseHolder>,
    /// One lock per subscription: concurrent calls on one engine (run-after-append from several
    /// callers) never hand the same events to a subscriber twice.
    locks: Arc<std::sync::Mutex<BTreeMap<SubscriptionId, Arc<tokio::sync::Mutex<()>>>>>,
}

/// The lease a worker holds while it runs a subscription, and its stop signal.
#[derive(Clone)]
pub(crate) struct LeaseHolder {
    pub owner: String,
    /// Expiry of the lease as last taken, in Unix microseconds.
    pub expires_at: Arc<std::sync::atomic::AtomicI64>,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// How a catch-up ended.
#[derive(Debug, PartialEq, Eq)]
enum CatchUp {
    /// At the head.
    Reached,
    /// A handler failed; the subscription is in `Error`.
    Failed,
    /// Stopped early (shutdown); the position is saved, the status unchanged.
    Interrupted,
}

impl SubscriptionEngine {
    /// An engine for `subscribers`; ids must be unique. Partitioned subscribers run as one
    /// subscription per partition (`{id}:{hex}`).
    pub fn new(
        events: Arc<dyn EventStore>,
        store: Arc<dyn SubscriptionStore>,
        subscribers: Vec<Arc<dyn Subscriber>>,
    ) -> Result<Self, ReelError> {
        let mut by_id = BTreeMap::new();
        for subscriber in crate::partition::expand(subscribers)? {
            let id = subscriber.spec().id.clone();
            if by_id.insert(id.clone(), subscriber).is_some() {
                return Err(ReelError::InvalidArgument(format!("subscriber id {id} is registered twice")));
            }
        }
        Ok(Self {
            events,
            store,
            subscribers: by_id,
            retry: Arc::new(ClockBasedRetryStrategy::default()),
            clock: Arc::new(SystemClock),
            batch_size: 1000,
            upcasters: Arc::default(),
            lease: None,
            locks: Arc::default(),
        })
    }

    /// A copy that saves only while `lease` is held and stops when told to.
    pub(crate) fn leased(&self, lease: LeaseHolder) -> Self {
        Self { lease: Some(lease), ..self.clone() }
    }

    /// The registered subscriber with this id.
    pub(crate) fn subscriber(&self, id: &SubscriptionId) -> Option<&Arc<dyn Subscriber>> {
        self.subscribers.get(id)
    }

    /// Tracks registered subscribers matching `criteria` that have no subscription yet (as `New`).
    pub async fn track(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        self.start(criteria).await
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

    /// Ids of the registered subscribers.
    pub fn subscriber_ids(&self) -> impl Iterator<Item = &SubscriptionId> {
        self.subscribers.keys()
    }

    /// Tracks new subscribers and sets up `New` subscriptions (calling their `setup`): they become
    /// `Booting`, or `Active` when `skip_booting` or when they run `FromNow` (positioned at the head).
    pub async fn setup(&self, criteria: &SubscriptionCriteria, skip_booting: bool) -> Result<EngineReport, ReelError> {
        let mut report = self.start(criteria).await?;
        self.retry_failed(criteria, New).await?;
        for mut subscription in self.with_status(criteria, &[New]).await? {
            let Some(subscriber) = self.subscribers.get(&subscription.id) else { continue };
            match guarded(subscriber.setup()).await {
                Err(message) => {
                    self.fail(&mut subscription, format!("setup failed: {message}"), None, &mut report).await?
                }
                Ok(()) => {
                    let next = if subscription.run_mode == RunMode::FromNow {
                        subscription.position = self.events.head().await?;
                        Active
                    } else if skip_booting {
                        Active
                    } else {
                        Booting
                    };
                    subscription.transition(next)?;
                    subscription.retry_attempt = 0;
                    self.save(&mut subscription, &mut report).await?;
                }
            }
        }
        Ok(report)
    }

    /// Catches `Booting` subscriptions up with the log; they become `Active` (or `Finished` for `Once`).
    pub async fn boot(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.start(criteria).await?;
        self.retry_failed(criteria, Booting).await?;
        for found in self.with_status(criteria, &[Booting]).await? {
            let Some(subscriber) = self.subscribers.get(&found.id).cloned() else { continue };
            let _guard = self.lock(&found.id).await;
            let Some(mut subscription) = self.reload(&found.id, Booting).await? else { continue };
            if self.catch_up(&mut subscription, subscriber.as_ref(), &mut report, None).await? == CatchUp::Reached {
                let next = if subscription.run_mode == RunMode::Once { Finished } else { Active };
                subscription.transition(next)?;
                subscription.retry_attempt = 0;
                self.save(&mut subscription, &mut report).await?;
            }
        }
        Ok(report)
    }

    /// Brings `Active` subscriptions up to the head, marks subscriptions whose subscriber is gone
    /// as `Detached`, and finishes `Once` subscriptions that reached the head.
    pub async fn run(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        self.run_with_limit(criteria, None).await
    }

    /// `run`, handing each subscription at most about `limit` events (whole batches) this time.
    pub async fn run_with_limit(
        &self,
        criteria: &SubscriptionCriteria,
        limit: Option<u64>,
    ) -> Result<EngineReport, ReelError> {
        let mut report = self.start(criteria).await?;
        for mut subscription in self.with_status(criteria, &[Active, Paused, Finished]).await? {
            if !self.subscribers.contains_key(&subscription.id) {
                subscription.transition(Detached)?;
                self.save(&mut subscription, &mut report).await?;
            }
        }
        self.retry_failed(criteria, Active).await?;
        for found in self.with_status(criteria, &[Active]).await? {
            self.run_active(&found.id, limit, &mut report).await?;
        }
        Ok(report)
    }

    /// Brings one `Active` subscription up to the head (the worker's path for a live subscription).
    pub(crate) async fn run_active(
        &self,
        id: &SubscriptionId,
        limit: Option<u64>,
        report: &mut EngineReport,
    ) -> Result<(), ReelError> {
        let Some(subscriber) = self.subscribers.get(id).cloned() else { return Ok(()) };
        let _guard = self.lock(id).await;
        let Some(mut subscription) = self.reload(id, Active).await? else { return Ok(()) };
        let before = subscription.clone();
        if self.catch_up(&mut subscription, subscriber.as_ref(), report, limit).await? == CatchUp::Reached {
            if subscription.run_mode == RunMode::Once {
                subscription.transition(Finished)?;
            }
            subscription.retry_attempt = 0;
            if subscription != before {
                self.save(&mut subscription, report).await?;
            }
        }
        Ok(())
    }

    /// Removes `Detached` subscriptions, calling their subscriber's `teardown` when it still exists.
    /// A failing teardown keeps the subscription (reported).
    pub async fn teardown(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.start(criteria).await?;
        for subscription in self.with_status(criteria, &[Detached]).await? {
            if let Some(subscriber) = self.subscribers.get(&subscription.id) {
                if let Err(message) = guarded(subscriber.teardown()).await {
                    report.errors.push(EngineError {
                        id: subscription.id.clone(),
                        message: format!("teardown failed: {message}"),
                    });
                    continue;
                }
            }
            self.store.remove(&subscription.id).await?;
            report.changed.push(subscription.id);
        }
        Ok(report)
    }

    /// Removes matching subscriptions whatever their status, calling `teardown` when the
    /// subscriber exists; a failing teardown is reported but the subscription is removed anyway.
    pub async fn remove(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for subscription in self.store.find(criteria).await? {
            if let Some(subscriber) = self.subscribers.get(&subscription.id) {
                if let Err(message) = guarded(subscriber.teardown()).await {
                    report.errors.push(EngineError {
                        id: subscription.id.clone(),
                        message: format!("teardown failed: {message}"),
                    });
                }
            }
            self.store.remove(&subscription.id).await?;
            report.changed.push(subscription.id);
        }
        Ok(report)
    }

    /// Returns failed subscriptions to the status they failed in, paused ones to where they were
    /// paused, and detached or finished ones to `Active`.
    pub async fn reactivate(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for mut subscription in self.with_status(criteria, &[Error, Paused, Detached, Finished]).await? {
            let target = match subscription.status {
                Error => subscription.error.as_ref().map_or(Active, |e| e.previous_status),
                Paused => subscription.paused_from.unwrap_or(Active),
                _ => Active,
            };
            match subscription.transition(target) {
                Ok(()) => {
                    subscription.retry_attempt = 0;
                    subscription.paused_from = None;
                    self.save(&mut subscription, &mut report).await?;
                }
                Err(e) => report.errors.push(EngineError { id: subscription.id.clone(), message: e.to_string() }),
            }
        }
        Ok(report)
    }

    /// Pauses matching `Booting`, `Active` and `Error` subscriptions; other statuses cannot be
    /// paused and are reported.
    pub async fn pause(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for mut subscription in self.store.find(criteria).await? {
            if subscription.status == Paused {
                continue;
            }
            match subscription.transition(Paused) {
                Ok(()) => self.save(&mut subscription, &mut report).await?,
                Err(e) => report.errors.push(EngineError { id: subscription.id.clone(), message: e.to_string() }),
            }
        }
        Ok(report)
    }

    /// Moves paused subscriptions to a new starting point (like resetting a consumer group's
    /// offset); they resume from there when reactivated. Subscriptions that are not paused are
    /// reported and left alone.
    pub async fn reset(&self, criteria: &SubscriptionCriteria, to: ResetTo) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        let head = self.events.head().await?;
        let next = match to {
            ResetTo::Beginning => Position(1),
            ResetTo::Position(p) if p.0 >= 1 && p.0 <= head.0 + 1 => p,
            ResetTo::Position(p) => {
                return Err(ReelError::InvalidArgument(format!("position {p} is outside the log (1..={})", head.0 + 1)))
            }
            ResetTo::Time(time) => first_position_at_or_after(self.events.as_ref(), head, time).await?,
        };
        for mut subscription in self.store.find(criteria).await? {
            if subscription.status != Paused {
                let message =
                    format!("only a paused subscription can be reset; {} is {}", subscription.id, subscription.status);
                report.errors.push(EngineError { id: subscription.id.clone(), message });
                continue;
            }
            subscription.position = Position(next.0 - 1);
            subscription.retry_attempt = 0;
            self.save(&mut subscription, &mut report).await?;
        }
        Ok(report)
    }

    /// What operators look at: each matching subscription with its lag behind the head, its
    /// retries, last error and parked events.
    pub async fn overview(&self, criteria: &SubscriptionCriteria) -> Result<Vec<SubscriptionView>, ReelError> {
        let head = self.events.head().await?;
        let mut views = Vec::new();
        for s in self.subscriptions(criteria).await? {
            let parked = self.store.parked(&s.id).await?;
            views.push(SubscriptionView {
                lag: head.0.saturating_sub(s.position.0),
                parked_count: parked.len(),
                parked,
                id: s.id,
                group: s.group,
                mode: s.run_mode,
                status: s.status,
                position: s.position,
                retries: s.retry_attempt,
                last_error: s.error.map(|e| e.message),
                lease_owner: s.lease.map(|l| l.owner),
                last_saved_at: s.last_saved_at,
            });
        }
        Ok(views)
    }

    /// The stored subscriptions matching `criteria`, ordered by id.
    pub async fn subscriptions(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError> {
        self.store.find(criteria).await
    }

    /// Report of unmatched ids, after tracking new subscribers as `New`.
    async fn start(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for (id, subscriber) in &self.subscribers {
            let spec = subscriber.spec();
            if criteria.matches(id, &spec.group) && self.store.get(id).await?.is_none() {
                let subscription = Subscription::new(id.clone(), spec.group.clone(), spec.run_mode, self.clock.now());
                match self.store.add(&subscription).await {
                    Ok(()) => report.changed.push(subscription.id),
                    // Another worker tracked it at the same moment: fine.
                    Err(_) if self.store.get(id).await?.is_some() => {}
                    Err(e) => return Err(e),
                }
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

    /// The subscription as stored now, if it is still in `status` (someone may have moved it).
    async fn reload(&self, id: &SubscriptionId, status: SubscriptionStatus) -> Result<Option<Subscription>, ReelError> {
        Ok(self.store.get(id).await?.filter(|s| s.status == status))
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

    /// Puts failed subscriptions of step `step` back into it when the retry strategy says so.
    /// When retries are used up and the subscriber parks failures, the failing event is parked
    /// and the subscription goes on after it.
    async fn retry_failed(&self, criteria: &SubscriptionCriteria, step: SubscriptionStatus) -> Result<(), ReelError> {
        let now = self.clock.now();
        for mut subscription in self.with_status(criteria, &[Error]).await? {
            let Some(error) = subscription.error.clone().filter(|e| e.previous_status == step) else { continue };
            let Some(subscriber) = self.subscribers.get(&subscription.id) else { continue };
            if self.retry.should_retry(&subscription, now) {
                subscription.transition(step)?;
                subscription.retry_attempt += 1;
                tracing::info!(id = %subscription.id, attempt = subscription.retry_attempt, "retrying subscription");
                self.save(&mut subscription, &mut EngineReport::default()).await?;
            } else if let (true, true, Some(failed_at)) =
                (subscriber.spec().park_failures, self.retry.exhausted(&subscription), error.failed_at)
            {
                self.park(&mut subscription, failed_at, error.message, step).await?;
            }
        }
        Ok(())
    }

    /// Records the event at `failed_at` as parked and moves the subscription past it.
    async fn park(
        &self,
        subscription: &mut Subscription,
        failed_at: Position,
        message: String,
        step: SubscriptionStatus,
    ) -> Result<(), ReelError> {
        let page = self.events.read_all(failed_at, &ReadAllFilter::default(), 1).await?;
        let Some(event) = page.events.into_iter().find(|e| e.position == failed_at) else { return Ok(()) };
        let parked = ParkedEvent {
            subscription: subscription.id.clone(),
            position: failed_at,
            event_id: event.id,
            event_type: event.event_type,
            error: message,
            parked_at: self.clock.now(),
        };
        self.store.park(&parked).await?;
        tracing::warn!(id = %subscription.id, position = %failed_at, "parked an event that kept failing; going on after it");
        subscription.position = subscription.position.max(failed_at);
        subscription.transition(step)?;
        subscription.retry_attempt = 0;
        self.save(subscription, &mut EngineReport::default()).await
    }

    /// Hands each parked event of the matching subscriptions to its subscriber again; those
    /// handled are forgotten, the others stay parked with their new error.
    pub async fn replay_parked(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for subscription in self.store.find(criteria).await? {
            let Some(subscriber) = self.subscribers.get(&subscription.id).cloned() else { continue };
            let _guard = self.lock(&subscription.id).await;
            for mut parked in self.store.parked(&subscription.id).await? {
                let page = self.events.read_all(parked.position, &ReadAllFilter::default(), 1).await?;
                let Some(event) = page.events.into_iter().find(|e| e.position == parked.position) else { continue };
                match catch_panic(subscriber.handle_batch(std::slice::from_ref(&event))).await {
                    Ok(Ok(())) => {
                        self.store.unpark(&subscription.id, parked.position).await?;
                        report.handled += 1;
                    }
                    Ok(Err(failure)) => {
                        parked.error = failure.error.to_string();
                        parked.parked_at = self.clock.now();
                        self.store.park(&parked).await?;
                        report.errors.push(EngineError { id: subscription.id.clone(), message: parked.error.clone() });
                    }
                    Err(panic) => {
                        parked.error = panic;
                        self.store.park(&parked).await?;
                        report.errors.push(EngineError { id: subscription.id.clone(), message: parked.error.clone() });
                    }
                }
            }
        }
        Ok(report)
    }

    /// Hands every event after the subscription's position to the subscriber, saving the
    /// position after each batch. On a handler failure the subscription goes to `Error`,
    /// positioned right before the failing event.
    async fn catch_up(
        &self,
        subscription: &mut Subscription,
        subscriber: &dyn Subscriber,
        report: &mut EngineReport,
        limit: Option<u64>,
    ) -> Result<CatchUp, ReelError> {
        let handled_before = report.handled;
        let spec = subscriber.spec();
        let filter = ReadAllFilter {
            // Old shapes of the handled types are fetched too, and upcast below.
            event_types: self.upcasters.stored_types_of(&spec.event_types.clone().unwrap_or_default()),
            categories: spec.categories.clone(),
            ..Default::default()
        };
        let mut reader = AllReader::new(self.events.clone(), subscription.position.next(), filter, self.batch_size);
        while let Some(stored) = reader.next_page().await? {
            self.keep_lease(subscription).await?;
            let events = match self.upcast_batch(stored) {
                Ok(events) => events,
                Err((position, message)) => {
                    subscription.position = Position(position.0 - 1);
                    self.fail(subscription, message, Some(position), report).await?;
                    return Ok(CatchUp::Failed);
                }
            };
            let scanned_to = Position(reader.position().0 - 1);
            // Streams named `$…` are Reel's own (API tokens); a subscriber sees them only when it
            // names their category.
            let wants_reserved = spec.categories.iter().any(|c| c.starts_with('$'));
            let events: Vec<_> =
                events.into_iter().filter(|e| wants_reserved || !e.stream.as_str().starts_with('$')).collect();
            if events.is_empty() {
                subscription.position = scanned_to;
                self.save(subscription, report).await?;
                continue;
            }
            if subscriber.saves_own_checkpoint() {
                if let Some(failure) =
                    self.handle_transactional(subscription, subscriber, &events, scanned_to, report).await?
                {
                    let (index, message) = failure;
                    // The whole batch was rolled back. Commit the events before the failing one on
                    // their own, so the subscription stops right before it (and could park it).
                    let mut failed_at = None;
                    subscription.position = Position(events[0].position.0 - 1);
                    if index > 0 {
                        let prefix = &events[..index];
                        let before = Position(events[index].position.0 - 1);
                        if self.handle_transactional(subscription, subscriber, prefix, before, report).await?.is_none()
                        {
                            failed_at = Some(events[index].position);
                        }
                    } else {
                        failed_at = Some(events[0].position);
                    }
                    let event = &events[index];
                    let message =
                        format!("{message} (event {} {} at position {})", event.event_type, event.id, event.position);
                    self.fail(subscription, message, failed_at, report).await?;
                    return Ok(CatchUp::Failed);
                }
            } else {
                let outcome = catch_panic(subscriber.handle_batch(&events)).await;
                let failure = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(BatchFailure { index, error })) => Some((index.min(events.len() - 1), error.to_string())),
                    Err(panic) => Some((0, panic)),
                };
                if let Some((index, message)) = failure {
                    report.handled += index as u64;
                    let event = &events[index];
                    // Everything before the failing event is done; the failing one is not.
                    subscription.position = Position(event.position.0 - 1);
                    let message =
                        format!("{message} (event {} {} at position {})", event.event_type, event.id, event.position);
                    self.fail(subscription, message, Some(event.position), report).await?;
                    return Ok(CatchUp::Failed);
                }
                report.handled += events.len() as u64;
                subscription.position = scanned_to;
                self.save(subscription, report).await?;
            }
            let stopping = self.lease.as_ref().is_some_and(|l| *l.stop.borrow());
            if stopping || limit.is_some_and(|limit| report.handled - handled_before >= limit) {
                return Ok(CatchUp::Interrupted);
            }
        }
        // A filtered reader may have skipped past events it did not deliver: move past them too.
        subscription.position = subscription.position.max(Position(reader.position().0 - 1));
        Ok(CatchUp::Reached)
    }

    /// One batch for a subscriber that commits its writes and checkpoint together. Returns the
    /// failing index and message when the batch was rolled back; lease and revision conflicts
    /// come back as errors (the worker stands by or reloads).
    async fn handle_transactional(
        &self,
        subscription: &mut Subscription,
        subscriber: &dyn Subscriber,
        events: &[reel_core::RecordedEvent],
        scanned_to: Position,
        report: &mut EngineReport,
    ) -> Result<Option<(usize, String)>, ReelError> {
        let now = self.clock.now();
        let mut next = subscription.clone();
        next.position = scanned_to;
        next.last_saved_at = now;
        let mut checkpoint =
            Checkpoint { subscription: next, lease_owner: self.lease.as_ref().map(|l| l.owner.clone()), now };
        match catch_panic(subscriber.handle_batch_with_checkpoint(events, &mut checkpoint)).await {
            Ok(Ok(())) => {
                *subscription = checkpoint.subscription;
                report.handled += events.len() as u64;
                if !report.changed.contains(&subscription.id) {
                    report.changed.push(subscription.id.clone());
                }
                Ok(None)
            }
            Ok(Err(BatchFailure { index, error })) => match error.downcast_ref::<ReelError>() {
                Some(
                    e @ (ReelError::LeaseLost { .. }
                    | ReelError::SubscriptionChanged { .. }
                    | ReelError::Storage { .. }),
                ) => Err(e.clone()),
                Some(ReelError::SubscriptionFailed { message, .. }) => {
                    Ok(Some((index.min(events.len() - 1), message.clone())))
                }
                _ => Ok(Some((index.min(events.len() - 1), error.to_string()))),
            },
            Err(panic) => Ok(Some((0, panic))),
        }
    }

    /// The batch in current shapes; an event that cannot be upcast fails the subscription there.
    fn upcast_batch(
        &self,
        events: Vec<reel_core::RecordedEvent>,
    ) -> Result<Vec<reel_core::RecordedEvent>, (Position, String)> {
        if self.upcasters.is_empty() {
            return Ok(events);
        }
        events
            .into_iter()
            .map(|event| {
                let position = event.position;
                self.upcasters.upcast(event).map_err(|e| (position, e.to_string()))
            })
            .collect()
    }

    /// Under a worker: refuses to go on once the lease (kept alive by the worker's heartbeat)
    /// has lapsed, so a stalled worker never processes alongside the one that took over.
    async fn keep_lease(&self, subscription: &Subscription) -> Result<(), ReelError> {
        let Some(lease) = &self.lease else { return Ok(()) };
        if self.clock.now().unix_micros() >= lease.expires_at.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ReelError::LeaseLost { id: subscription.id.to_string() });
        }
        Ok(())
    }

    async fn fail(
        &self,
        subscription: &mut Subscription,
        message: String,
        failed_at: Option<Position>,
        report: &mut EngineReport,
    ) -> Result<(), ReelError> {
        tracing::warn!(id = %subscription.id, %message, "subscription failed");
        subscription.fail_at(message.clone(), failed_at)?;
        self.save(subscription, report).await?;
        report.errors.push(EngineError { id: subscription.id.clone(), message });
        Ok(())
    }

    async fn save(&self, subscription: &mut Subscription, report: &mut EngineReport) -> Result<(), ReelError> {
        subscription.last_saved_at = self.clock.now();
        match &self.lease {
            Some(lease) => self.store.update_leased(subscription, &lease.owner, subscription.last_saved_at).await?,
            None => self.store.update(subscription).await?,
        }
        if !report.changed.contains(&subscription.id) {
            report.changed.push(subscription.id.clone());
        }
        Ok(())
    }
}
