//! The long-running worker: every matching subscription in its own task, woken by the store's
//! head notification (poll-and-wait, no busy loop), held through a lease so that several
//! worker processes can share one store.

use std::future::Future;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use reel_core::{ReelError, SubscriptionCriteria, SubscriptionId};
use tokio::sync::watch;

use crate::engine::LeaseHolder;
use crate::SubscriptionEngine;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// This worker's id in leases; unique per process (default: host, pid and start time).
    pub owner: String,
    /// Which subscriptions it runs (e.g. one group per process).
    pub criteria: SubscriptionCriteria,
    /// How long a lease lasts without renewal; a dead worker's subscriptions are taken over after it.
    pub lease_ttl: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let started = reel_core::Timestamp::now().unix_micros();
        Self {
            owner: format!("{}-{}-{started}", if host.is_empty() { "worker" } else { &host }, std::process::id()),
            criteria: SubscriptionCriteria::all(),
            lease_ttl: Duration::from_secs(10),
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
        let ids: Vec<SubscriptionId> = self
            .engine
            .subscriber_ids()
            .filter(|id| {
                let group = self.engine.subscriber(id).map(|s| s.spec().group.clone()).unwrap_or_default();
                self.options.criteria.matches(id, &group)
            })
            .cloned()
            .collect();
        let (stop, stopped) = watch::channel(false);
        // A JoinSet aborts its tasks when dropped: dropping the worker stops all its subscriptions.
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            tasks.spawn(run_subscription(self.engine.clone(), id, self.options.clone(), stopped.clone()));
        }
        tracing::info!(owner = %self.options.owner, subscriptions = tasks.len(), "worker started");
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

/// One subscription: take the lease, run the lifecycle steps, sleep until the head moves or the
/// lease needs renewing; as a standby, try the lease again at the same pace.
async fn run_subscription(
    engine: SubscriptionEngine,
    id: SubscriptionId,
    options: WorkerOptions,
    mut stop: watch::Receiver<bool>,
) {
    let criteria = SubscriptionCriteria::ids([id.clone()]);
    let store = engine.store.clone();
    let mut head = engine.events.watch_head();
    let expires_at = Arc::new(AtomicI64::new(0));
    let leased = engine.leased(LeaseHolder {
        owner: options.owner.clone(),
        ttl: options.lease_ttl,
        expires_at: expires_at.clone(),
        stop: stop.clone(),
    });
    let pace = options.lease_ttl / 3;
    let mut held = false;
    while !*stop.borrow() {
        // Taken before the work, so events appended during it wake the next round at once.
        let seen = head.current();
        let now = engine.clock.now();
        match store.acquire_lease(&id, &options.owner, now, options.lease_ttl).await {
            Ok(true) => {
                if !held {
                    tracing::info!(%id, owner = %options.owner, "took subscription lease");
                }
                held = true;
                expires_at.store(
                    now.unix_micros() + options.lease_ttl.as_micros() as i64,
                    std::sync::atomic::Ordering::SeqCst,
                );
                let steps = async {
                    leased.setup(&criteria, false).await?;
                    leased.boot(&criteria).await?;
                    leased.run(&criteria).await
                };
                match steps.await {
                    Ok(_) => {}
                    Err(ReelError::LeaseLost { .. }) => {
                        tracing::warn!(%id, "lost the subscription lease; standing by");
                        held = false;
                    }
                    Err(e) => tracing::warn!(%id, error = %e, "subscription step failed; trying again"),
                }
            }
            Ok(false) => held = false,
            Err(e) => tracing::warn!(%id, error = %e, "could not take the subscription lease"),
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
