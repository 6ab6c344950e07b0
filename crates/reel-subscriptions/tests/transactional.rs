//! A SQL projection whose rows and checkpoint commit in one SQLite transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reel_core::{
    EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamName, SubscriptionCriteria, SubscriptionId,
    SubscriptionStatus, SubscriptionStore,
};
use reel_sqlite::{SqliteStore, SqliteSubscriptionStore};
use reel_subscriptions::{
    BatchFailure, Checkpoint, HandlerError, Message, NoRetry, Subscriber, SubscriberSpec, SubscriptionEngine,
};

/// Counts door openings per unit in `doors_per_unit`; fails (after writing) on a chosen position.
struct DoorCounter {
    spec: SubscriberSpec,
    store: SqliteSubscriptionStore,
    fail_at: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Subscriber for DoorCounter {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }
    async fn setup(&self) -> Result<(), HandlerError> {
        self.store
            .with_connection(|c| {
                c.execute_batch(
                    "CREATE TABLE IF NOT EXISTS doors_per_unit (unit TEXT PRIMARY KEY, opened INTEGER NOT NULL)",
                )
            })
            .await?;
        Ok(())
    }
    async fn handle(&self, _message: &Message<'_>) -> Result<(), HandlerError> {
        Err("this projector handles whole batches".into())
    }
    fn saves_own_checkpoint(&self) -> bool {
        true
    }
    async fn handle_batch_with_checkpoint(
        &self,
        batch: &[RecordedEvent],
        checkpoint: &mut Checkpoint,
    ) -> Result<(), BatchFailure> {
        let events: Vec<(u64, String)> =
            batch.iter().map(|e| (e.position.0, e.stream.id_part().unwrap_or("").to_string())).collect();
        let fail_at = self.fail_at.load(Ordering::SeqCst);
        let failing_index = events.iter().position(|(p, _)| *p == fail_at).unwrap_or(0);
        self.store
            .save_with(&mut checkpoint.subscription, checkpoint.lease_owner.as_deref(), checkpoint.now, move |tx| {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO doors_per_unit (unit, opened) VALUES (?1, 1)
                     ON CONFLICT (unit) DO UPDATE SET opened = opened + 1",
                )?;
                for (position, unit) in &events {
                    upsert.execute([unit])?;
                    if *position == fail_at {
                        return Err(format!("refused position {position} after writing").into());
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| BatchFailure { index: failing_index, error: Box::new(e) })
    }
}

async fn counts(store: &SqliteSubscriptionStore) -> Vec<(String, i64)> {
    store
        .with_connection(|c| {
            c.prepare("SELECT unit, opened FROM doors_per_unit ORDER BY unit")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_checkpoint_commit_together_and_a_failed_batch_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
    let store = events.subscription_store().unwrap();
    for i in 0..10 {
        let unit = StreamName::new(format!("unit-{}", i % 2)).unwrap();
        events.append(&unit, ExpectedVersion::Any, vec![NewEvent::new("DoorOpened", "{}")]).await.unwrap();
    }
    let fail_at = Arc::new(AtomicU64::new(7));
    let projector = Arc::new(DoorCounter {
        spec: SubscriberSpec::projector("doors_1").unwrap(),
        store: store.clone(),
        fail_at: fail_at.clone(),
    });
    let engine = SubscriptionEngine::new(events.clone(), Arc::new(store.clone()), vec![projector])
        .unwrap()
        .with_batch_size(4)
        .with_retry_strategy(NoRetry);
    engine.setup(&SubscriptionCriteria::all(), false).await.unwrap();
    let report = engine.boot(&SubscriptionCriteria::all()).await.unwrap();
    assert!(report.errors[0].message.contains("refused position 7"), "{:?}", report.errors);
    let id = SubscriptionId::new("doors_1").unwrap();
    let s = store.get(&id).await.unwrap().unwrap();
    // Batch 5..8 was rolled back whole; then 5 and 6 were committed on their own, so the
    // subscription stops right before the failing event with no row of it or after it.
    assert_eq!((s.status, s.position), (SubscriptionStatus::Error, Position(6)));
    assert_eq!(s.error.unwrap().failed_at, Some(Position(7)));
    assert_eq!(counts(&store).await, vec![("0".into(), 3), ("1".into(), 3)], "rows of positions 1..6 only");

    fail_at.store(0, Ordering::SeqCst);
    engine.reactivate(&SubscriptionCriteria::all()).await.unwrap();
    engine.boot(&SubscriptionCriteria::all()).await.unwrap();
    let s = store.get(&id).await.unwrap().unwrap();
    assert_eq!((s.status, s.position), (SubscriptionStatus::Active, Position(10)));
    assert_eq!(counts(&store).await, vec![("0".into(), 5), ("1".into(), 5)], "every event counted exactly once");
}
