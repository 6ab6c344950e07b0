//! Leases: who may hand a subscription's events to its handler right now.
//!
//! A worker takes a subscription's lease and keeps it with a heartbeat (see `worker.rs`). Any
//! other caller of `setup`, `boot` or `run` (the CLI without `--worker`, an application's own
//! call, run-after-append) takes a short operation lease per subscription before it touches it,
//! renews it between batches, and gives it back at the end. A subscription whose lease another
//! live holder has is skipped and reported, never run twice.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reel_core::{ReelError, Subscription, SubscriptionId, SubscriptionStore, Timestamp};
use tokio::sync::watch;

use super::{EngineReport, SubscriptionEngine};

/// The lease an engine copy runs under.
#[derive(Clone)]
pub(crate) struct LeaseHolder {
    /// The holder's id (a worker's owner, or the engine's operation owner).
    pub owner: String,
    /// Expiry of the lease as last taken, in Unix microseconds.
    pub expires_at: Arc<AtomicI64>,
    /// A worker's stop signal: the catch-up ends after its current batch.
    pub stop: Option<watch::Receiver<bool>>,
    /// An operation's lease and its TTL: renewed between batches. `None`: a worker's lease,
    /// renewed by the worker's heartbeat.
    pub renew_inline: Option<Duration>,
}

impl LeaseHolder {
    /// A worker's lease, renewed by its heartbeat.
    pub fn worker(owner: String, expires_at: Arc<AtomicI64>, stop: watch::Receiver<bool>) -> Self {
        Self { owner, expires_at, stop: Some(stop), renew_inline: None }
    }

    /// Whether the worker was told to stop.
    pub fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|stop| *stop.borrow())
    }
}

/// A subscription held for one step: the engine copy to run it with, this process's lock on
/// it, and the operation lease to give back afterwards.
pub(crate) struct Held {
    pub engine: SubscriptionEngine,
    _lock: tokio::sync::OwnedMutexGuard<()>,
    operation_lease: Option<(Arc<dyn SubscriptionStore>, SubscriptionId, String)>,
}

impl Held {
    /// Gives the operation lease back (a worker keeps its own).
    pub async fn release(self) {
        if let Some((store, id, owner)) = &self.operation_lease {
            if let Err(e) = store.release_lease(id, owner).await {
                tracing::warn!(%id, error = %e, "could not release an operation lease; it lapses by itself");
            }
        }
    }
}

/// A unique id for one engine's operation leases.
pub(crate) fn operation_owner() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("op-{}-{}-{}", std::process::id(), Timestamp::now().unix_micros(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl SubscriptionEngine {
    /// Holds `id` for one step. Under a worker (which holds the lease already) that is this
    /// process's lock only; otherwise also an operation lease, taken now. `None`, with a note in
    /// the report, when another live holder has the lease.
    pub(crate) async fn hold(&self, id: &SubscriptionId, report: &mut EngineReport) -> Result<Option<Held>, ReelError> {
        // The lock first: two calls on one engine share its operation owner, so the lease alone
        // would not keep them apart (and the first to finish would release the other's lease).
        let lock = self.lock(id).await;
        if self.lease.is_some() {
            return Ok(Some(Held { engine: self.clone(), _lock: lock, operation_lease: None }));
        }
        let now = self.clock.now();
        if !self.store.acquire_lease(id, &self.operation_owner, now, self.operation_lease_ttl).await? {
            let reason = match self.store.get(id).await?.and_then(|s| s.lease) {
                Some(lease) => format!("held by {} until {}", lease.owner, lease.expires_at),
                None => "no longer stored".to_string(),
            };
            tracing::info!(%id, %reason, "left a subscription to its lease holder");
            report.skip(id, reason);
            return Ok(None);
        }
        let expires_at = now.unix_micros() + self.operation_lease_ttl.as_micros() as i64;
        let holder = LeaseHolder {
            owner: self.operation_owner.clone(),
            expires_at: Arc::new(AtomicI64::new(expires_at)),
            stop: None,
            renew_inline: Some(self.operation_lease_ttl),
        };
        Ok(Some(Held {
            engine: self.leased(holder),
            _lock: lock,
            operation_lease: Some((self.store.clone(), id.clone(), self.operation_owner.clone())),
        }))
    }

    /// Before each batch: refuses to go on once the lease has lapsed, so a stalled holder never
    /// processes alongside the one that took over. An operation's lease is renewed here when
    /// half of it is used; a worker's is renewed by its heartbeat.
    pub(crate) async fn keep_lease(&self, subscription: &Subscription) -> Result<(), ReelError> {
        let Some(lease) = &self.lease else { return Ok(()) };
        let now = self.clock.now();
        let expires = lease.expires_at.load(Ordering::SeqCst);
        match lease.renew_inline {
            Some(ttl) if expires - now.unix_micros() < ttl.as_micros() as i64 / 2 => {
                if !self.store.acquire_lease(&subscription.id, &lease.owner, now, ttl).await? {
                    return Err(ReelError::LeaseLost { id: subscription.id.to_string() });
                }
                lease.expires_at.store(now.unix_micros() + ttl.as_micros() as i64, Ordering::SeqCst);
                Ok(())
            }
            _ if now.unix_micros() >= expires => Err(ReelError::LeaseLost { id: subscription.id.to_string() }),
            _ => Ok(()),
        }
    }

    /// The owner its saves are conditioned on, if it runs under a lease.
    pub(crate) fn lease_owner(&self) -> Option<&str> {
        self.lease.as_ref().map(|l| l.owner.as_str())
    }

    /// Whether a worker runs this engine copy (errors then go back to the worker's loop).
    pub(crate) fn under_worker(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.renew_inline.is_none())
    }
}

/// Takes or renews `id`'s lease for a worker; returns whether it holds it now.
pub(crate) async fn take_or_renew(
    store: &dyn SubscriptionStore,
    id: &SubscriptionId,
    owner: &str,
    now: Timestamp,
    ttl: Duration,
    expires_at: &AtomicI64,
) -> bool {
    match store.acquire_lease(id, owner, now, ttl).await {
        Ok(true) => {
            expires_at.store(now.unix_micros() + ttl.as_micros() as i64, Ordering::SeqCst);
            true
        }
        Ok(false) => {
            expires_at.store(0, Ordering::SeqCst);
            false
        }
        Err(e) => {
            // Unknown: keep what we had; `keep_lease` stops the work if it lapses meanwhile.
            tracing::warn!(%id, error = %e, "could not take or renew the subscription lease");
            expires_at.load(Ordering::SeqCst) > now.unix_micros()
        }
    }
}

/// Renews a worker's lease every third of its TTL while a step runs, so a long batch keeps it.
/// Never returns: when a renewal is refused the lease is marked lapsed, and the step stops
/// before its next batch (`keep_lease`).
pub(crate) async fn heartbeat(engine: &SubscriptionEngine, id: &SubscriptionId, ttl: Duration) {
    let Some(lease) = &engine.lease else { return std::future::pending().await };
    loop {
        tokio::time::sleep(ttl / 3).await;
        take_or_renew(engine.store.as_ref(), id, &lease.owner, engine.clock.now(), ttl, &lease.expires_at).await;
    }
}
