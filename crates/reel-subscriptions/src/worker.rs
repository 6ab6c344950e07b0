//! The long-running worker: every matching subscription in its own task, woken by the store's
//! head notification (poll-and-wait, no busy loop), held through a lease so that several
//! worker processes can share one store. It also detaches stored subscriptions that no
//! registered subscriber claims, at start and periodically.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reel_core::{Position, ReelError, SubscriptionCriteria, SubscriptionId, SubscriptionStatus, SubscriptionStore};
use tokio::sync::watch;

use crate::engine::lease::{heartbeat, take_or_renew};
use crate::engine::LeaseHolder;
use crate::{EngineReport, SubscriptionEngine};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// This worker's id in leases; unique per process (default: host, pid and start time).
    pub owner: String,
    /// Which subscriptions it runs (e.g. one group per process).
    pub criteria: SubscriptionCriteria,
    /// How long a lease lasts without renewal; a dead worker's subscriptions are taken over after it.
    pub lease_ttl: Duration,
    /// How often it looks for subscriptions no registered subscriber claims, to detach them
    /// (also once at start).
    pub detach_every: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let started = reel_core::Timestamp::now().unix_micros();
        Self {
            owner: format!("{}-{}-{started}", if host.is_empty() { "worker" } else { &host }, std::process::id()),
            criteria: SubscriptionCriteria::all(),
            lease_ttl: Duration::from_secs(10),
            detach_every: Duration::from_secs(30),
        }
    }
}

/// Runs subscriptions until shut down.
pub struct Worker {
    engine: SubscriptionEngine,
    options: WorkerOptions,
}

impl Worker {
    /// A worker over `engine`'s subscribers.
    pub fn new(engine: SubscriptionEngine, options: WorkerOptions) -> Self {
        Self { engine, options }
    }

    /// Runs until `shutdown` resolves, then lets each subscription finish its current batch,
    /// releases the leases and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ReelError> {
        self.engine.track(&self.options.criteria).await?;
        let ids = self.engine.registered(&self.options.criteria);
        let (stop, stopped) = watch::channel(false);
        // A JoinSet aborts its tasks when dropped: dropping the worker stops all its subscriptions.
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(detach_orphans(self.engine.clone(), self.options.clone(), stopped.clone()));
        for id in ids {
            tasks.spawn(run_subscription(self.engine.clone(), id, self.options.clone(), stopped.clone()));
        }
        tracing::info!(owner = %self.options.owner, subscriptions = tasks.len() - 1, "worker started");
        shutdown.await;
        tracing::info!(owner = %self.options.owner, "worker stopping after the current batches");
        let _ = stop.send(true);
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "subscription task ended abnormally");
            }
        }
        Ok(())
    }
}

/// Detaches orphaned subscriptions at start and then every `detach_every`.
async fn detach_orphans(engine: SubscriptionEngine, options: WorkerOptions, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if let Err(e) = engine.detach_orphans(&options.criteria).await {
            tracing::warn!(error = %e, "could not look for subscriptions to detach");
        }
        tokio::select! {
            _ = tokio::time::sleep(options.detach_every) => {}
            _ = stop.changed() => {}
        }
    }
}

/// One subscription: hold the lease (renewed when half used), run the lifecycle steps when the
/// head moved or the subscription changed, and otherwise sleep until woken. As a standby, try
/// the lease again at the same pace. Idle cost: one read per second, one lease write per half TTL.
async fn run_subscription(
    engine: SubscriptionEngine,
    id: SubscriptionId,
    options: WorkerOptions,
    mut stop: watch::Receiver<bool>,
) {
    let store = engine.store.clone();
    let mut head = engine.events.watch_head();
    let expires_at = Arc::new(AtomicI64::new(0));
    let leased = engine.leased(LeaseHolder::worker(options.owner.clone(), expires_at.clone(), stop.clone()));
    // Operator changes (pause, reactivate, reset) are noticed within this pace.
    let pace = (options.lease_ttl / 3).min(Duration::from_secs(1));
    let ttl_micros = options.lease_ttl.as_micros() as i64;
    let mut held = false;
    // What the last round saw: head position and subscription revision.
    let mut last_round: Option<(Position, u64)> = None;
    while !*stop.borrow() {
        // Taken before the work, so events appended during it wake the next round at once.
        let seen = head.current();
        let now = engine.clock.now();
        if !held || expires_at.load(Ordering::SeqCst) - now.unix_micros() < ttl_micros / 2 {
            let was_held = held;
            held = take_or_renew(store.as_ref(), &id, &options.owner, now, options.lease_ttl, &expires_at).await;
            if held && !was_held {
                tracing::info!(%id, owner = %options.owner, "took subscription lease");
                last_round = None;
            }
        }
        if held {
            match needs_round(store.as_ref(), &id, seen, last_round).await {
                Ok(Some((revision, live))) => match with_heartbeat(&leased, &id, &options, live).await {
                    Ok(()) => last_round = store.get(&id).await.ok().flatten().map(|s| (seen, s.revision)),
                    Err(ReelError::LeaseLost { .. }) => {
                        tracing::warn!(%id, "lost the subscription lease; standing by");
                        held = false;
                    }
                    Err(e) => {
                        tracing::warn!(%id, error = %e, revision, "subscription step failed; trying again");
                        last_round = None;
                    }
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(%id, error = %e, "could not read the subscription"),
            }
        }
        tokio::select! {
            _ = head.wait_past(seen), if held => {}
            _ = tokio::time::sleep(pace) => {}
            _ = stop.changed() => {}
        }
    }
    if held {
        if let Err(e) = store.release_lease(&id, &options.owner).await {
            tracing::warn!(%id, error = %e, "could not release the subscription lease");
        }
    }
}

/// Whether the steps must run: the head moved, someone changed the subscription, or it is in a
/// status the steps move on from by themselves (new, booting, failed and maybe due for a retry).
/// Returns the current revision when they must, and whether the subscription is simply active
/// (then only the catch-up runs).
async fn needs_round(
    store: &dyn SubscriptionStore,
    id: &SubscriptionId,
    head: Position,
    last_round: Option<(Position, u64)>,
) -> Result<Option<(u64, bool)>, ReelError> {
    let Some(subscription) = store.get(id).await? else { return Ok(Some((0, false))) };
    let settled = matches!(
        subscription.status,
        SubscriptionStatus::Active
            | SubscriptionStatus::Paused
            | SubscriptionStatus::Finished
            | SubscriptionStatus::Detached
    );
    let unchanged = last_round == Some((head, subscription.revision));
    let live = subscription.status == SubscriptionStatus::Active;
    Ok((!(settled && unchanged)).then_some((subscription.revision, live)))
}

/// Runs the steps while a heartbeat renews the lease every third of its TTL, so a long batch
/// (a slow handler, a big rebuild) keeps it. When a renewal is refused the lease is marked
/// lapsed and the steps stop before their next batch.
async fn with_heartbeat(
    leased: &SubscriptionEngine,
    id: &SubscriptionId,
    options: &WorkerOptions,
    live: bool,
) -> Result<(), ReelError> {
    let criteria = SubscriptionCriteria::ids([id.clone()]);
    let steps = async {
        if live {
            leased.run_active(id, &mut EngineReport::default()).await
        } else {
            leased.setup(&criteria, false).await?;
            leased.boot(&criteria).await?;
            leased.run(&criteria).await.map(|_| ())
        }
    };
    tokio::select! {
        result = steps => result,
        _ = heartbeat(leased, id, options.lease_ttl) => Ok(()),
    }
}
