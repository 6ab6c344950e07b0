//! The worker runtime: live processing, graceful stop, leases shared by several workers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reel_core::{
    EventStore, ExpectedVersion, NewEvent, Position, StreamName, SubscriptionId, SubscriptionStatus, SubscriptionStore,
};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{
    HandlerError, Message, Subscriber, SubscriberSpec, SubscriptionEngine, Worker, WorkerOptions,
};

/// Records every delivery with the worker that made it.
struct Recorder {
    spec: SubscriberSpec,
    worker: String,
    deliveries: Arc<Mutex<Vec<(String, u64)>>>,
}

#[async_trait::async_trait]
impl Subscriber for Recorder {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }
    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        self.deliveries.lock().unwrap().push((self.worker.clone(), message.position().0));
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    events: Arc<SqliteStore>,
    subscriptions: Arc<dyn SubscriptionStore>,
    deliveries: Arc<Mutex<Vec<(String, u64)>>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let events = SqliteStore::open(dir.path().join("reel.db")).unwrap();
        let subscriptions = Arc::new(events.subscription_store().unwrap());
        Self { _dir: dir, events: Arc::new(events), subscriptions, deliveries: Arc::default() }
    }

    fn worker(&self, name: &str, ttl: Duration) -> Worker {
        let subscriber = Arc::new(Recorder {
            spec: SubscriberSpec::projector("live_1").unwrap(),
            worker: name.into(),
            deliveries: self.deliveries.clone(),
        });
        let engine =
            SubscriptionEngine::new(self.events.clone(), self.subscriptions.clone(), vec![subscriber]).unwrap();
        Worker::new(engine, WorkerOptions { owner: name.into(), lease_ttl: ttl, ..WorkerOptions::default() })
    }

    async fn append(&self, count: usize) {
        let events = (0..count).map(|_| NewEvent::new("Tick", "{}")).collect();
        self.events.append(&StreamName::new("clock-1").unwrap(), ExpectedVersion::Any, events).await.unwrap();
    }

    async fn wait_for_deliveries(&self, count: usize) {
        let started = Instant::now();
        while self.deliveries.lock().unwrap().len() < count {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "only {} of {count} delivered",
                self.deliveries.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn positions(&self) -> Vec<u64> {
        self.deliveries.lock().unwrap().iter().map(|(_, p)| *p).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_follows_the_log_live_and_stops_gracefully() {
    let f = Fixture::new();
    f.append(3).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(f.worker("w1", Duration::from_secs(10)).run(async {
        let _ = stopped.await;
    }));
    f.wait_for_deliveries(3).await;
    f.append(2).await;
    f.wait_for_deliveries(5).await;
    assert_eq!(f.positions(), vec![1, 2, 3, 4, 5]);
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    let s = f.subscriptions.get(&SubscriptionId::new("live_1").unwrap()).await.unwrap().unwrap();
    assert_eq!((s.status, s.position), (SubscriptionStatus::Active, Position(5)));
    assert!(s.lease.is_none(), "a stopped worker releases its lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_the_lease_expires_without_double_delivery() {
    let f = Fixture::new();
    let ttl = Duration::from_millis(600);
    let first = tokio::spawn(f.worker("first", ttl).run(std::future::pending()));
    f.append(5).await;
    f.wait_for_deliveries(5).await;
    let second = tokio::spawn(f.worker("second", ttl).run(std::future::pending()));
    f.append(5).await;
    f.wait_for_deliveries(10).await;
    // The first worker dies without releasing anything.
    first.abort();
    let _ = first.await;
    f.append(5).await;
    f.wait_for_deliveries(15).await;
    let deliveries = f.deliveries.lock().unwrap().clone();
    let positions: Vec<u64> = deliveries.iter().map(|(_, p)| *p).collect();
    assert_eq!(positions, (1..=15).collect::<Vec<_>>(), "every event once, in order");
    let workers: HashSet<&str> = deliveries[10..].iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(workers, HashSet::from(["second"]), "the standby took over");
    assert!(deliveries[..10].iter().all(|(w, _)| w == "first"), "the standby did nothing while the lease was held");
    second.abort();
}
