//! What operators do to subscriptions: pause, reactivate, reset, remove, look at them, and
//! replay parked events. These change state by compare-and-swap on the subscription's revision,
//! so they are safe next to a running worker, which notices within a second.

use reel_core::{
    EventStore, ParkedEvent, Position, ReadAllFilter, ReelError, RunMode, Subscription, SubscriptionCriteria,
    SubscriptionId, SubscriptionStatus, Timestamp,
};

use super::{EngineReport, SubscriptionEngine};
use crate::guard::{catch_panic, guarded};
use crate::BatchFailure;

use SubscriptionStatus::*;

/// Where `reset` moves a subscription: the next event it handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// The first event of the log.
    Beginning,
    /// The event at this position.
    Position(Position),
    /// The first event recorded at or after this time.
    Time(Timestamp),
}

/// A subscription as operators see it (`reel subscriptions list`, `GET /subscriptions`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SubscriptionView {
    /// Its id.
    pub id: SubscriptionId,
    /// Its group.
    pub group: String,
    /// How it runs.
    pub mode: RunMode,
    /// Where it is in its lifecycle.
    pub status: SubscriptionStatus,
    /// Last position handled.
    pub position: Position,
    /// Events between its position and the head.
    pub lag: u64,
    /// Seconds since the oldest event after its position was recorded: how far behind it is
    /// in time (for a relay, the age of the oldest event the broker has not acknowledged).
    /// 0 when it is at the head.
    pub lag_seconds: f64,
    /// It is in `Error` because what it hands events to is unreachable (a broker outage): it
    /// retries by itself until that returns.
    pub unavailable: bool,
    /// Failed attempts at the current batch.
    pub retries: u32,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The worker (or operation) holding its lease, if any.
    pub lease_owner: Option<String>,
    /// When the holder last took or renewed the lease.
    pub lease_renewed_at: Option<Timestamp>,
    /// When the lease lapses unless renewed.
    pub lease_expires_at: Option<Timestamp>,
    /// A live lease holds it: someone is running it now.
    pub held: bool,
    /// `Active` but nobody holds it: it follows the log only when a worker (or a `run`) picks it up.
    pub unattended: bool,
    /// When its state was last saved.
    pub last_saved_at: Timestamp,
    /// How many events it parked.
    pub parked_count: usize,
    /// The events it parked.
    pub parked: Vec<ParkedEvent>,
    /// The latest warning its subscriber reported while it kept running (for a relay: a replay
    /// of events older than its broker's duplicate window), until replaced or reset.
    pub warning: Option<String>,
    /// When that warning was reported.
    pub warning_at: Option<Timestamp>,
}

impl SubscriptionEngine {
    /// Removes matching subscriptions whatever their status, calling `teardown` when the
    /// subscriber exists; a failing teardown is reported but the subscription is removed anyway.
    pub async fn remove(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for subscription in self.store.find(criteria).await? {
            if let Some(subscriber) = self.subscriber(&subscription.id) {
                if let Err(message) = guarded(subscriber.teardown()).await {
                    report.error(&subscription.id, format!("teardown failed: {message}"));
                }
            }
            self.store.remove(&subscription.id).await?;
            report.changed(&subscription.id);
        }
        Ok(report)
    }

    /// Returns failed subscriptions to the status they failed in, paused ones to where they were
    /// paused, and detached or finished ones to `Active`. A subscription that never completed its
    /// setup (failed or paused while `New`) starts over as a fresh `New` one, so the next setup
    /// runs again: the diagram has no arrow from `Paused` to `New`, and nothing was handled yet.
    pub async fn reactivate(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for mut subscription in self.store.find(criteria).await? {
            let target = match subscription.status {
                Error => subscription.error.as_ref().map_or(Active, |e| e.previous_status),
                Paused => subscription.paused_from.unwrap_or(Active),
                Detached | Finished => Active,
                status => {
                    report.skip(&subscription.id, format!("{status}: nothing to reactivate"));
                    continue;
                }
            };
            let moved = if subscription.status == Paused && target == New {
                subscription.start_over();
                Ok(())
            } else {
                subscription.transition(target)
            };
            match moved {
                Ok(()) => {
                    subscription.retry_attempt = 0;
                    subscription.paused_from = None;
                    let result = self.save(&mut subscription, &mut report).await;
                    self.isolate(result, &subscription.id, &mut report)?;
                }
                Err(e) => report.error(&subscription.id, e.to_string()),
            }
        }
        Ok(report)
    }

    /// Pauses matching `Booting`, `Active` and `Error` subscriptions. The others (`New`,
    /// `Finished`, `Detached`, already `Paused`) are not running, so they are skipped with a
    /// note in the report; pausing a group never fails because of them.
    pub async fn pause(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for mut subscription in self.store.find(criteria).await? {
            match subscription.status {
                Booting | Active | Error => {
                    subscription.transition(Paused)?;
                    let result = self.save(&mut subscription, &mut report).await;
                    self.isolate(result, &subscription.id, &mut report)?;
                }
                status => report.skip(&subscription.id, format!("{status}: not running, nothing to pause")),
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
                report.error(&subscription.id, message);
                continue;
            }
            subscription.position = Position(next.0 - 1);
            subscription.retry_attempt = 0;
            // A warning about the run before the reset no longer applies.
            subscription.warning = None;
            let result = self.save(&mut subscription, &mut report).await;
            self.isolate(result, &subscription.id, &mut report)?;
        }
        Ok(report)
    }

    /// What operators look at: each matching subscription with its lag behind the head, its
    /// retries, last error, lease holder and parked events.
    pub async fn overview(&self, criteria: &SubscriptionCriteria) -> Result<Vec<SubscriptionView>, ReelError> {
        let head = self.events.head().await?;
        let now = self.clock.now();
        let mut views = Vec::new();
        for s in self.subscriptions(criteria).await? {
            let parked = self.store.parked(&s.id).await?;
            let held = s.lease.as_ref().is_some_and(|l| l.is_live(now));
            let lag_seconds = if s.position < head {
                let next = self.events.read_all(s.position.next(), &ReadAllFilter::default(), 1).await?;
                next.events
                    .first()
                    .map_or(0.0, |e| (now.unix_micros() - e.recorded_at.unix_micros()).max(0) as f64 / 1_000_000.0)
            } else {
                0.0
            };
            views.push(SubscriptionView {
                lag: head.0.saturating_sub(s.position.0),
                lag_seconds,
                unavailable: s.status == Error && s.error.as_ref().is_some_and(|e| e.is_unavailable()),
                parked_count: parked.len(),
                parked,
                held,
                unattended: s.status == Active && !held,
                lease_owner: s.lease.as_ref().map(|l| l.owner.clone()),
                lease_renewed_at: s.lease.as_ref().map(|l| l.renewed_at),
                lease_expires_at: s.lease.as_ref().map(|l| l.expires_at),
                id: s.id,
                group: s.group,
                mode: s.run_mode,
                status: s.status,
                position: s.position,
                retries: s.retry_attempt,
                last_error: s.error.map(|e| e.message),
                last_saved_at: s.last_saved_at,
                warning_at: s.warning.as_ref().map(|w| w.at),
                warning: s.warning.map(|w| w.message),
            });
        }
        Ok(views)
    }

    /// The stored subscriptions matching `criteria`, ordered by id.
    pub async fn subscriptions(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError> {
        self.store.find(criteria).await
    }

    /// Hands each parked event of the matching subscriptions to its subscriber again; those
    /// handled are forgotten, the others stay parked with their new error.
    pub async fn replay_parked(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for subscription in self.store.find(criteria).await? {
            let Some(subscriber) = self.subscriber(&subscription.id).cloned() else { continue };
            let _guard = self.lock(&subscription.id).await;
            for mut parked in self.store.parked(&subscription.id).await? {
                let page = self.events.read_all(parked.position, &ReadAllFilter::default(), 1).await?;
                let Some(event) = page.events.into_iter().find(|e| e.position == parked.position) else { continue };
                let outcome = match catch_panic(subscriber.handle_batch(std::slice::from_ref(&event))).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(BatchFailure { error, .. })) => Err(error.to_string()),
                    Err(panic) => Err(panic),
                };
                match outcome {
                    Ok(()) => {
                        self.store.unpark(&subscription.id, parked.position).await?;
                        report.handled += 1;
                    }
                    Err(message) => {
                        parked.error = message;
                        parked.parked_at = self.clock.now();
                        self.store.park(&parked).await?;
                        report.error(&subscription.id, parked.error.clone());
                    }
                }
            }
        }
        Ok(report)
    }
}

/// Binary search over the log's record times (which grow with position).
async fn first_position_at_or_after(
    events: &dyn EventStore,
    head: Position,
    time: Timestamp,
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
