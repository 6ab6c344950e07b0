//! Handing the log to a subscriber batch by batch, saving the position after each, and the
//! loops built on it: running until idle, waiting for catch-up.

use std::sync::Arc;
use std::time::Duration;

use reel_core::{
    AllReader, Checkpoint, Position, ReadAllFilter, RecordedEvent, ReelError, Subscription, SubscriptionCriteria,
    SubscriptionStatus, SubscriptionWarning,
};

use super::{EngineReport, SubscriptionEngine};
use crate::guard::catch_panic;
use crate::{BatchFailure, Subscriber};

/// How a catch-up ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CatchUp {
    /// At the head.
    Reached,
    /// A handler failed; the subscription is in `Error`.
    Failed,
    /// Stopped early (shutdown, or the limit was reached); the position is saved, the status unchanged.
    Interrupted,
}

impl SubscriptionEngine {
    /// Repeats `boot` and `run` until a round hands no event to any subscriber, so events that
    /// processors append while handling are processed too (tests, development, immediate
    /// projections). Stops after `max_rounds`; if the last round still handled events, the
    /// report says `round_cap_reached` and a warning is logged.
    pub async fn run_until_idle(
        &self,
        criteria: &SubscriptionCriteria,
        max_rounds: usize,
    ) -> Result<EngineReport, ReelError> {
        let mut total = EngineReport::default();
        for _ in 0..max_rounds.max(1) {
            let mut round = self.boot(criteria).await?;
            round.merge(self.run(criteria).await?);
            let idle = round.handled == 0;
            total.merge(round);
            if idle {
                return Ok(total);
            }
        }
        tracing::warn!(max_rounds, "run_until_idle stopped at its round cap with events still arriving");
        total.round_cap_reached = true;
        Ok(total)
    }

    /// Hands every event after the subscription's position to the subscriber, saving the
    /// position after each batch, and at most `limit` events in all. On a handler failure the
    /// subscription goes to `Error`, positioned right before the failing event.
    pub(crate) async fn catch_up(
        &self,
        subscription: &mut Subscription,
        subscriber: &dyn Subscriber,
        report: &mut EngineReport,
        limit: Option<u64>,
    ) -> Result<CatchUp, ReelError> {
        let mut handed = 0u64;
        let spec = subscriber.spec();
        let filter = ReadAllFilter {
            // Old shapes of the handled types are fetched too, and upcast below.
            event_types: self.upcasters.stored_types_of(&spec.event_types.clone().unwrap_or_default()),
            categories: spec.categories.clone(),
            tags: spec.tags.clone(),
            ..Default::default()
        };
        let page_size = limit.map_or(self.batch_size, |l| (l.max(1) as usize).min(self.batch_size));
        let mut reader = AllReader::new(self.events.clone(), subscription.position.next(), filter, page_size);
        while let Some(stored) = reader.next_page().await? {
            self.keep_lease(subscription).await?;
            let mut events = match self.upcast_batch(stored) {
                Ok(events) => events,
                Err((position, message)) => {
                    subscription.position = Position(position.0 - 1);
                    self.fail(subscription, message, Some(position), report).await?;
                    return Ok(CatchUp::Failed);
                }
            };
            let mut scanned_to = Position(reader.position().0 - 1);
            // The limit is exact: a page that would go past it is cut, and the position stops
            // at the last event handed over.
            let remaining = limit.map(|l| l.saturating_sub(handed) as usize);
            let cut = remaining.is_some_and(|r| events.len() >= r);
            if let Some(r) = remaining.filter(|r| events.len() > *r) {
                events.truncate(r);
                scanned_to = events.last().map_or(subscription.position, |e| e.position);
            }
            // Streams named `$…` are Reel's own (API tokens); a subscriber sees them only when it
            // names their category, even with `*`.
            let wants_reserved = spec.categories.iter().any(|c| c.starts_with('$'));
            events.retain(|e| wants_reserved || !e.stream.as_str().starts_with('$'));
            let count = events.len() as u64;
            // Shared from here on: a transactional projection's backend hands it to the thread
            // that owns its connection without copying the events.
            let events: Arc<[RecordedEvent]> = events.into();
            if events.is_empty() {
                subscription.position = scanned_to;
                self.save(subscription, report).await?;
            } else if let Some(failure) = self.hand_over(subscription, subscriber, &events, scanned_to, report).await? {
                let (index, message) = failure;
                let event = &events[index];
                let message =
                    format!("{message} (event {} {} at position {})", event.event_type, event.id, event.position);
                self.fail(subscription, message, Some(event.position), report).await?;
                return Ok(CatchUp::Failed);
            }
            handed += count;
            let stopping = self.lease.as_ref().is_some_and(|l| l.stopping());
            if stopping || cut {
                return Ok(CatchUp::Interrupted);
            }
        }
        // A filtered reader may have skipped past events it did not deliver: move past them too.
        subscription.position = subscription.position.max(Position(reader.position().0 - 1));
        Ok(CatchUp::Reached)
    }

    /// Hands one batch to the subscriber and moves the position to `scanned_to` (saved by the
    /// engine, or in the subscriber's own transaction). On a failure the position stands right
    /// before the failing event, whose index and message come back.
    async fn hand_over(
        &self,
        subscription: &mut Subscription,
        subscriber: &dyn Subscriber,
        events: &Arc<[RecordedEvent]>,
        scanned_to: Position,
        report: &mut EngineReport,
    ) -> Result<Option<(usize, String)>, ReelError> {
        if !subscriber.saves_own_checkpoint() {
            let failure = match catch_panic(subscriber.handle_batch(events)).await {
                Ok(Ok(())) => None,
                Ok(Err(BatchFailure { index, error })) => Some((index.min(events.len() - 1), error.to_string())),
                Err(panic) => Some((0, panic)),
            };
            if let Some(message) = subscriber.take_warning() {
                tracing::warn!(id = %subscription.id, %message, "subscriber warning");
                subscription.warning = Some(SubscriptionWarning { message, at: self.clock.now() });
            }
            if let Some((index, message)) = failure {
                // Everything before the failing event is done; the failing one is not.
                report.handled += index as u64;
                subscription.position = Position(events[index].position.0 - 1);
                return Ok(Some((index, message)));
            }
            report.handled += events.len() as u64;
            subscription.position = scanned_to;
            self.save(subscription, report).await?;
            return Ok(None);
        }
        let Some((mut index, mut message)) =
            self.handle_transactional(subscription, subscriber, events.clone(), scanned_to, report).await?
        else {
            return Ok(None);
        };
        // The whole batch was rolled back. Commit the events before the failing one on their
        // own, so the subscription stops right before it (and could park it); if that prefix
        // fails too, its own failing event is earlier still.
        subscription.position = Position(events[0].position.0 - 1);
        while index > 0 {
            let before = Position(events[index].position.0 - 1);
            let prefix: Arc<[RecordedEvent]> = events[..index].into();
            match self.handle_transactional(subscription, subscriber, prefix, before, report).await? {
                None => break,
                Some((earlier, why)) => (index, message) = (earlier.min(index - 1), why),
            }
        }
        Ok(Some((index, message)))
    }

    /// One batch for a subscriber that commits its writes and checkpoint together. Returns the
    /// failing index and message when the batch was rolled back; lease and revision conflicts
    /// come back as errors (the worker stands by or reloads).
    async fn handle_transactional(
        &self,
        subscription: &mut Subscription,
        subscriber: &dyn Subscriber,
        events: Arc<[RecordedEvent]>,
        scanned_to: Position,
        report: &mut EngineReport,
    ) -> Result<Option<(usize, String)>, ReelError> {
        let now = self.clock.now();
        let mut next = subscription.clone();
        next.position = scanned_to;
        next.last_saved_at = now;
        let mut checkpoint =
            Checkpoint { subscription: next, lease_owner: self.lease_owner().map(str::to_string), now };
        let count = events.len();
        match catch_panic(subscriber.handle_batch_with_checkpoint(events, &mut checkpoint)).await {
            Ok(Ok(())) => {
                *subscription = checkpoint.subscription;
                report.handled += count as u64;
                report.changed(&subscription.id);
                Ok(None)
            }
            Ok(Err(BatchFailure { index, error })) => match error.downcast_ref::<ReelError>() {
                Some(
                    e @ (ReelError::LeaseLost { .. }
                    | ReelError::SubscriptionChanged { .. }
                    | ReelError::Storage { .. }),
                ) => Err(e.clone()),
                Some(ReelError::SubscriptionFailed { message, .. }) => {
                    Ok(Some((index.min(count - 1), message.clone())))
                }
                _ => Ok(Some((index.min(count - 1), error.to_string()))),
            },
            Err(panic) => Ok(Some((0, panic))),
        }
    }

    /// The batch in current shapes; an event that cannot be upcast fails the subscription there.
    fn upcast_batch(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>, (Position, String)> {
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

    /// Waits until every registered subscriber matching `criteria` — also those without a stored
    /// subscription yet — has processed the log up to the head as it is now. A subscription in
    /// `Error` ends the wait with `SubscriptionFailed`; running out of time is `TimedOut`.
    /// Something else (a worker, run-after-append) must be running the subscriptions.
    pub async fn wait_for_catch_up(&self, criteria: &SubscriptionCriteria, timeout: Duration) -> Result<(), ReelError> {
        let target = self.events.head().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut behind = Vec::new();
            for id in self.registered(criteria) {
                match self.store.get(&id).await? {
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
