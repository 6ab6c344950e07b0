//! CQRS, worked through: a command is decided by the locker aggregate and stored; a projector
//! keeps a query table of free lockers; a query reads that table. With run-after-append the
//! command returns only once the projection has the change (immediate consistency).

mod locker_domain;

use std::sync::Arc;

use locker_domain::*;
use reel_aggregate::Repository;
use reel_core::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamName, SubscriptionCriteria, Upcasters};
use reel_sqlite::{SqliteProjection, SqliteStore, SqliteSubscriptionStore};
use reel_subscriptions::{
    BatchFailure, HandlerError, RunAfterAppend, SubscriberSpec, SubscriptionEngine, TransactionalProjector,
};

/// Read side: `free_lockers(locker, unit, free)`, rows and checkpoint in one transaction.
struct FreeLockers;

impl SqliteProjection for FreeLockers {
    fn setup(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS free_lockers_1 (locker TEXT PRIMARY KEY, unit TEXT NOT NULL, free INTEGER NOT NULL)",
        )?;
        Ok(())
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        for (index, event) in batch.iter().enumerate() {
            let failed = |e: rusqlite::Error| BatchFailure::at(index, e);
            let locker = event.stream.id_part().unwrap_or("");
            match event.event_type.as_str() {
                "LockerRegistered" => {
                    let data: serde_json::Value = event.data_as().map_err(|e| BatchFailure::at(index, e))?;
                    let unit = data["unit"].as_str().unwrap_or("");
                    tx.execute("INSERT OR REPLACE INTO free_lockers_1 VALUES (?1, ?2, 1)", [locker, unit])
                        .map_err(failed)?;
                }
                "LockerReserved" => {
                    tx.execute("UPDATE free_lockers_1 SET free = 0 WHERE locker = ?1", [locker]).map_err(failed)?;
                }
                "ReservationCancelled" => {
                    tx.execute("UPDATE free_lockers_1 SET free = 1 WHERE locker = ?1", [locker]).map_err(failed)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Query side: free lockers of a unit, read from the projection only.
async fn free_lockers(db: &SqliteSubscriptionStore, unit: &str) -> Vec<String> {
    let unit = unit.to_string();
    db.with_connection(move |c| {
        c.prepare("SELECT locker FROM free_lockers_1 WHERE unit = ?1 AND free = 1 ORDER BY locker")?
            .query_map([unit], |r| r.get(0))?
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_change_the_projection_that_queries_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
    let db = store.subscription_store().unwrap();
    // An old event shape from before the payload was renamed, upcast for aggregate and projector alike.
    let legacy = StreamName::new("locker-L0").unwrap();
    let old = vec![
        NewEvent::json("LockerRegistered", &serde_json::json!({ "unit": "PL-1" })).unwrap(),
        NewEvent::json("LockerReservedV1", &serde_json::json!({ "id": "old", "user": "ada" })).unwrap(),
    ];
    store.append(&legacy, ExpectedVersion::NoStream, old).await.unwrap();
    let upcasters = Arc::new(Upcasters::new().register("LockerReservedV1", "LockerReserved", |mut d| {
        d["reservation"] = d["id"].take();
        d["customer"] = d["user"].take();
        Ok(d)
    }));

    let spec = SubscriberSpec::projector("free_lockers_1").unwrap().handling([
        "LockerRegistered",
        "LockerReserved",
        "ReservationCancelled",
    ]);
    let projector = TransactionalProjector::new(spec, db.clone(), Arc::new(FreeLockers));
    let engine = SubscriptionEngine::new(store.clone(), Arc::new(db.clone()), vec![projector])
        .unwrap()
        .with_upcasters(upcasters.clone());
    engine.setup(&SubscriptionCriteria::all(), false).await.unwrap();
    engine.boot(&SubscriptionCriteria::all()).await.unwrap();
    assert!(free_lockers(&db, "PL-1").await.is_empty(), "the legacy locker is reserved (its V1 event was upcast)");

    // The write side appends through run-after-append: each command returns after the projection ran.
    let immediate: Arc<dyn EventStore> =
        Arc::new(RunAfterAppend::new(store.clone(), engine, SubscriptionCriteria::all(), None));
    let lockers = Repository::<Locker>::new(immediate).with_upcasters(upcasters);
    for locker in ["L1", "L2", "L3"] {
        lockers.execute(locker, LockerCommand::Register { unit: "PL-1".into() }, 3).await.unwrap();
    }
    assert_eq!(free_lockers(&db, "PL-1").await, ["L1", "L2", "L3"]);
    lockers.execute("L2", reserve("r1", "grace"), 3).await.unwrap();
    assert_eq!(free_lockers(&db, "PL-1").await, ["L1", "L3"]);
    lockers.execute("L0", LockerCommand::Cancel { reservation: "old".into() }, 3).await.unwrap();
    assert_eq!(
        free_lockers(&db, "PL-1").await,
        ["L0", "L1", "L3"],
        "the legacy reservation was cancelled through the aggregate"
    );
}
