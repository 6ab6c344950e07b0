//! What the relay tests share: a store with an engine running one relay, a log of interleaved
//! streams, and a loop that runs the relay until it reaches the head.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reel_core::{EventStore, ExpectedVersion, NewEvent, StreamName, SubscriptionCriteria};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{ClockBasedRetryStrategy, Subscriber, SubscriptionEngine};

/// A new store in its own directory and an engine running `relay` on it, set up.
pub async fn engine_with(
    relay: Arc<dyn Subscriber>,
    retry: ClockBasedRetryStrategy,
    batch_size: usize,
) -> (tempfile::TempDir, Arc<SqliteStore>, SubscriptionEngine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
    let engine = SubscriptionEngine::new(store.clone(), Arc::new(store.subscription_store().unwrap()), vec![relay])
        .unwrap()
        .with_batch_size(batch_size)
        .with_retry_strategy(retry);
    engine.setup(&SubscriptionCriteria::all(), true).await.unwrap();
    (dir, store, engine)
}

/// Appends `per_stream` events to each of `streams` streams (`cat<s % 10>-<s>`), ten at a time,
/// interleaved across streams so that every batch a relay reads mixes streams and keys.
pub async fn append(store: &SqliteStore, streams: usize, per_stream: usize) {
    for round in 0..per_stream / 10 {
        for s in 0..streams {
            let stream = StreamName::new(format!("cat{}-{s}", s % 10)).unwrap();
            let events = (0..10).map(|i| NewEvent::new("Counted", format!("{{\"n\":{}}}", round * 10 + i))).collect();
            store.append(&stream, ExpectedVersion::Any, events).await.unwrap();
        }
    }
}

/// Runs the relay until its position reaches the head (or fails the test after `timeout`).
pub async fn relay_until_caught_up(store: &SqliteStore, engine: &SubscriptionEngine, timeout: Duration) {
    let head = store.head().await.unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        engine.boot(&SubscriptionCriteria::all()).await.unwrap();
        engine.run(&SubscriptionCriteria::all()).await.unwrap();
        let subscription = &engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap()[0];
        if subscription.position >= head {
            return;
        }
        assert!(Instant::now() < deadline, "relay stuck at {} of {head}: {subscription:?}", subscription.position);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
