//! A SQL projection whose rows and checkpoint commit in one SQLite transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reel_core::{
    EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamName, SubscriptionCriteria, SubscriptionId,
    SubscriptionStatus, SubscriptionStore,
};
use reel_sqlite::{SqliteProjection, SqliteStore, SqliteSubscriptionStore};
use reel_subscriptions::{
    BatchFailure, HandlerError, NoRetry, SubscriberSpec, SubscriptionEngine, TransactionalProjector,
};

/// Counts door openings per unit in `doors_per_unit`; fails (after writing) on a chosen position.
struct DoorCounter {
    fail_at: Arc<AtomicU64>,
}

impl SqliteProjection for DoorCounter {
    fn setup(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch("CREATE TABLE IF NOT EXISTS doors_per_unit (unit TEXT PRIMARY KEY, opened INTEGER NOT NULL)")?;
        Ok(())
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        let fail_at = self.fail_at.load(Ordering::SeqCst);
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO doors_per_unit (unit, opened) VALUES (?1, 1)
                 ON CONFLICT (unit) DO UPDATE SET opened = opened + 1",
            )
            .map_err(|e| BatchFailure::at(0, e))?;
        for (index, event) in batch.iter().enumerate() {
            upsert.execute([event.stream.id_part().unwrap_or("")]).map_err(|e| BatchFailure::at(index, e))?;
            if event.position.0 == fail_at {
                return Err(BatchFailure::at(index, format!("refused position {fail_at} after writing")));
            }
        }
        Ok(())
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
    let projector = TransactionalProjector::new(
        SubscriberSpec::projector("doors_1").unwrap(),
        store.clone(),
        Arc::new(DoorCounter { fail_at: fail_at.clone() }),
    );
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
