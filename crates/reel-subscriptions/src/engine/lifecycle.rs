//! The steps that move subscriptions along the state diagram: setup, boot, run, teardown, and
//! detaching subscriptions whose subscriber is gone. Each step takes or respects the lease of
//! every subscription it touches (see `lease.rs`).

use std::collections::BTreeSet;

use reel_core::{
    ParkedEvent, Position, ReadAllFilter, ReelError, RunMode, Subscription, SubscriptionCriteria, SubscriptionId,
    SubscriptionStatus,
};

use super::catch_up::CatchUp;
use super::{EngineReport, SubscriptionEngine};
use crate::guard::guarded;
use crate::Subscriber;

use SubscriptionStatus::*;

/// A lifecycle step, and the status it moves subscriptions on from.
#[derive(Clone, Copy, Debug)]
enum Step {
    Setup { skip_booting: bool },
    Boot,
    Run { limit: Option<u64> },
}

impl Step {
    fn status(self) -> SubscriptionStatus {
        match self {
            Step::Setup { .. } => New,
            Step::Boot => Booting,
            Step::Run { .. } => Active,
        }
    }
}

impl SubscriptionEngine {
    /// Tracks new subscribers and sets up `New` subscriptions (calling their `setup`): they become
    /// `Booting`, or `Active` when `skip_booting` or when they run `FromNow` (positioned at the head).
    pub async fn setup(&self, criteria: &SubscriptionCriteria, skip_booting: bool) -> Result<EngineReport, ReelError> {
        let report = self.track(criteria).await?;
        self.drive(criteria, Step::Setup { skip_booting }, report).await
    }

    /// Catches `Booting` subscriptions up with the log; they become `Active` (or `Finished` for `Once`).
    pub async fn boot(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let report = self.track(criteria).await?;
        self.drive(criteria, Step::Boot, report).await
    }

    /// Brings `Active` subscriptions up to the head, marks subscriptions whose subscriber is gone
    /// as `Detached` (see [`detach_orphans`](Self::detach_orphans)), and finishes `Once`
    /// subscriptions that reached the head.
    pub async fn run(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        self.run_with_limit(criteria, None).await
    }

    /// `run`, handing each subscription at most `limit` events this time (batches are cut to
    /// fit; the position still moves past events the subscriber does not handle).
    pub async fn run_with_limit(
        &self,
        criteria: &SubscriptionCriteria,
        limit: Option<u64>,
    ) -> Result<EngineReport, ReelError> {
        let mut report = self.track(criteria).await?;
        report.merge(self.detach_orphans(criteria).await?);
        self.drive(criteria, Step::Run { limit }, report).await
    }

    /// Brings one `Active` subscription up to the head (the worker's path for a live subscription).
    pub(crate) async fn run_active(&self, id: &SubscriptionId, report: &mut EngineReport) -> Result<(), ReelError> {
        let Some(held) = self.hold(id, report).await? else { return Ok(()) };
        let result = held.engine.step_one(id, Step::Run { limit: None }, report).await;
        held.release().await;
        self.isolate(result, id, report)
    }

    /// Marks stored subscriptions that no registered subscriber claims as `Detached` (from
    /// `Active`, `Paused` or `Finished`, the arrows of the diagram). Only within `criteria` and
    /// within the groups this engine has subscribers in, so a worker for one group never detaches
    /// another group's (or another program's) subscriptions; and never one whose lease another
    /// live holder has (an older version still running it during a rolling deploy).
    pub async fn detach_orphans(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = EngineReport::default();
        let groups: BTreeSet<&str> = self.subscribers.values().map(|s| s.spec().group.as_str()).collect();
        let now = self.clock.now();
        for mut subscription in self.with_status(criteria, &[Active, Paused, Finished]).await? {
            if self.subscribers.contains_key(&subscription.id) || !groups.contains(subscription.group.as_str()) {
                continue;
            }
            if let Some(lease) = subscription.lease.as_ref().filter(|l| l.is_live(now)) {
                if Some(lease.owner.as_str()) != self.lease_owner() {
                    let reason = format!("no subscriber here, but {} still runs it", lease.owner);
                    report.skip(&subscription.id, reason);
                    continue;
                }
            }
            subscription.transition(Detached)?;
            let result = self.save(&mut subscription, &mut report).await;
            if result.is_ok() {
                tracing::info!(id = %subscription.id, "detached: no registered subscriber claims it");
            }
            self.isolate(result, &subscription.id, &mut report)?;
        }
        Ok(report)
    }

    /// Removes `Detached` subscriptions, calling their subscriber's `teardown` when it still exists.
    /// A failing teardown keeps the subscription (reported).
    pub async fn teardown(&self, criteria: &SubscriptionCriteria) -> Result<EngineReport, ReelError> {
        let mut report = self.report_unmatched(criteria).await?;
        for subscription in self.with_status(criteria, &[Detached]).await? {
            if let Some(subscriber) = self.subscribers.get(&subscription.id) {
                if let Err(message) = guarded(subscriber.teardown()).await {
                    report.error(&subscription.id, format!("teardown failed: {message}"));
                    continue;
                }
            }
            self.store.remove(&subscription.id).await?;
            report.changed(&subscription.id);
        }
        Ok(report)
    }

    /// Runs `step` for every matching subscription in its status (or failed in it), each under
    /// its lease; one subscription's failure is reported and never stops the others.
    async fn drive(
        &self,
        criteria: &SubscriptionCriteria,
        step: Step,
        mut report: EngineReport,
    ) -> Result<EngineReport, ReelError> {
        // An active subscription already at the head has nothing to run: no lease to take.
        let head = match step {
            Step::Run { .. } => Some(self.events.head().await?),
            _ => None,
        };
        for found in self.with_status(criteria, &[step.status(), Error]).await? {
            let failed_in_step = found.error.as_ref().is_some_and(|e| e.previous_status == step.status());
            if (found.status == Error && !failed_in_step) || !self.subscribers.contains_key(&found.id) {
                continue;
            }
            let idle = found.status == Active
                && found.run_mode != RunMode::Once
                && found.retry_attempt == 0
                && head.is_some_and(|head| found.position >= head);
            if idle {
                continue;
            }
            let Some(held) = self.hold(&found.id, &mut report).await? else { continue };
            let result = held.engine.step_one(&found.id, step, &mut report).await;
            held.release().await;
            self.isolate(result, &found.id, &mut report)?;
        }
        Ok(report)
    }

    /// One subscription's step, on the engine copy that holds it: reload, retry a due failure
    /// of this step, then do the step if the subscription is (still) in its status.
    async fn step_one(&self, id: &SubscriptionId, step: Step, report: &mut EngineReport) -> Result<(), ReelError> {
        let Some(subscriber) = self.subscribers.get(id).cloned() else { return Ok(()) };
        let Some(mut subscription) = self.store.get(id).await? else { return Ok(()) };
        if subscription.status == Error {
            self.retry_if_due(&mut subscription, step.status(), subscriber.as_ref()).await?;
        }
        if subscription.status != step.status() {
            return Ok(());
        }
        match step {
            Step::Setup { skip_booting } => self.set_up(subscription, subscriber.as_ref(), skip_booting, report).await,
            Step::Boot => {
                if self.catch_up(&mut subscription, subscriber.as_ref(), report, None).await? == CatchUp::Reached {
                    let next = if subscription.run_mode == RunMode::Once { Finished } else { Active };
                    subscription.transition(next)?;
                    subscription.retry_attempt = 0;
                    self.save(&mut subscription, report).await?;
                }
                Ok(())
            }
            Step::Run { limit } => {
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
        }
    }

    async fn set_up(
        &self,
        mut subscription: Subscription,
        subscriber: &dyn Subscriber,
        skip_booting: bool,
        report: &mut EngineReport,
    ) -> Result<(), ReelError> {
        match guarded(subscriber.setup()).await {
            Err(message) => self.fail(&mut subscription, format!("setup failed: {message}"), None, report).await,
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
                self.save(&mut subscription, report).await
            }
        }
    }

    /// Puts a subscription that failed in `step` back into it when the retry strategy says so.
    /// When retries are used up and the subscriber parks failures, the failing event is parked
    /// and the subscription goes on after it.
    async fn retry_if_due(
        &self,
        subscription: &mut Subscription,
        step: SubscriptionStatus,
        subscriber: &dyn Subscriber,
    ) -> Result<(), ReelError> {
        let Some(error) = subscription.error.clone().filter(|e| e.previous_status == step) else { return Ok(()) };
        if self.retry.should_retry(subscription, self.clock.now()) {
            subscription.transition(step)?;
            subscription.retry_attempt += 1;
            tracing::info!(id = %subscription.id, attempt = subscription.retry_attempt, "retrying subscription");
            self.save(subscription, &mut EngineReport::default()).await?;
        } else if let (true, true, Some(failed_at)) =
            (subscriber.spec().park_failures, self.retry.exhausted(subscription), error.failed_at)
        {
            self.park(subscription, failed_at, error.message, step).await?;
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
}
