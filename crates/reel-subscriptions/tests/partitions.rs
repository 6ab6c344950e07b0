//! Partitioned subscribers: every event once, per-stream order kept, each stream in one partition.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use reel_core::{EventStore, ExpectedVersion, NewEvent, StreamName, SubscriptionCriteria, SubscriptionStatus};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{HandlerError, Message, Subscriber, SubscriberSpec, SubscriptionEngine};

struct Tracker {
    spec: SubscriberSpec,
    seen: Mutex<Vec<(String, u64)>>,
}

#[async_trait::async_trait]
impl Subscriber for Tracker {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }
    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push((message.stream().to_string(), message.position().0));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_partitions_deliver_every_event_once_in_stream_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
    let subscriptions = Arc::new(store.subscription_store().unwrap());
    for round in 0..5 {
        for unit in 0..40 {
            let stream = StreamName::new(format!("unit-{unit}")).unwrap();
            store
                .append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", format!("{{\"r\":{round}}}"))])
                .await
                .unwrap();
        }
    }
    let tracker = Arc::new(Tracker {
        spec: SubscriberSpec::projector("ticks_1").unwrap().partitioned(1).unwrap(),
        seen: Mutex::default(),
    });
    let engine = SubscriptionEngine::new(store.clone(), subscriptions, vec![tracker.clone()]).unwrap();
    engine.setup(&SubscriptionCriteria::all(), false).await.unwrap();
    engine.boot(&SubscriptionCriteria::all()).await.unwrap();

    let listed = engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap();
    assert_eq!(listed.len(), 16);
    assert_eq!(listed[0].id.as_str(), "ticks_1:0");
    assert_eq!(listed[15].id.as_str(), "ticks_1:f");
    assert!(
        listed.iter().all(|s| s.status == SubscriptionStatus::Active && s.position.0 == 200),
        "each partition at the head"
    );

    let seen = tracker.seen.lock().unwrap().clone();
    let positions: HashSet<u64> = seen.iter().map(|(_, p)| *p).collect();
    assert_eq!((seen.len(), positions.len()), (200, 200), "every event exactly once");
    let mut per_stream: HashMap<&str, Vec<u64>> = HashMap::new();
    for (stream, position) in &seen {
        per_stream.entry(stream).or_default().push(*position);
    }
    for (stream, positions) in per_stream {
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{stream} in order: {positions:?}");
    }
    assert!(SubscriberSpec::projector("x").unwrap().partitioned(4).is_err());
}
