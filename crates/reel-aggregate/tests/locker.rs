//! The locker reservation of the IoT showcase, as an aggregate: rules, concurrency, snapshots,
//! upcasting and unknown events.

use std::sync::Arc;

mod locker_domain;

use locker_domain::*;
use reel_aggregate::{Aggregate, AggregateError, Repository};
use reel_core::{
    EventStore, ExpectedVersion, NewEvent, Snapshot, SnapshotStore, StreamName, StreamVersion, Timestamp, Upcasters,
};
use reel_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    snapshots: Arc<dyn SnapshotStore>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
        let snapshots: Arc<dyn SnapshotStore> = Arc::new(store.snapshot_store().unwrap());
        Self { _dir: dir, store, snapshots }
    }
    fn lockers(&self) -> Repository<Locker> {
        Repository::new(self.store.clone()).with_snapshots(self.snapshots.clone())
    }
}

#[tokio::test]
async fn a_locker_cannot_be_double_booked_and_cancel_after_confirm_is_marked() {
    let f = Fixture::new();
    let lockers = f.lockers();
    let err = lockers.execute("PL-1001-07", reserve("r1", "ada"), 0).await.unwrap_err();
    assert!(matches!(err, AggregateError::Domain(LockerError::NotRegistered)), "{err}");
    lockers.execute("PL-1001-07", LockerCommand::Register { unit: "PL-1001".into() }, 0).await.unwrap();
    lockers.execute("PL-1001-07", reserve("r1", "ada"), 0).await.unwrap();
    let err = lockers.execute("PL-1001-07", reserve("r2", "grace"), 0).await.unwrap_err();
    assert!(matches!(err, AggregateError::Domain(LockerError::AlreadyReserved(ref by)) if by == "ada"), "{err}");
    lockers.execute("PL-1001-07", LockerCommand::Confirm { reservation: "r1".into() }, 0).await.unwrap();
    let again = lockers.execute("PL-1001-07", LockerCommand::Confirm { reservation: "r1".into() }, 0).await.unwrap();
    assert_eq!(again.appended, None, "confirming twice records nothing");
    lockers.execute("PL-1001-07", LockerCommand::Cancel { reservation: "r1".into() }, 0).await.unwrap();
    lockers.execute("PL-1001-07", reserve("r2", "grace"), 0).await.unwrap();

    let stream = lockers.stream("PL-1001-07").unwrap();
    let stored = f.store.read_stream(&stream, StreamVersion(0), reel_core::Direction::Forward, 100).await.unwrap();
    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["LockerRegistered", "LockerReserved", "ReservationConfirmed", "ReservationCancelled", "LockerReserved"]
    );
    let cancelled: serde_json::Value = serde_json::from_slice(&stored[3].data).unwrap();
    assert_eq!(cancelled["after_confirmation"], true);
    let loaded = lockers.load("PL-1001-07").await.unwrap();
    assert_eq!(loaded.state.reservation.unwrap().customer, "grace");
    assert_eq!(loaded.version, Some(StreamVersion(4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_of_one_locker_let_exactly_one_win() {
    let f = Fixture::new();
    let lockers = f.lockers();
    lockers.execute("hot", LockerCommand::Register { unit: "PL-1".into() }, 0).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let lockers = lockers.clone();
            tokio::spawn(async move { lockers.execute("hot", reserve(&format!("r{i}"), &format!("c{i}")), 20).await })
        })
        .collect();
    let mut won = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(AggregateError::Domain(LockerError::AlreadyReserved(_))) => refused += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((won, refused), (1, 15), "one reservation wins; the others see it after their retry");
    assert_eq!(lockers.load("hot").await.unwrap().version, Some(StreamVersion(1)));
}

#[tokio::test]
async fn without_retries_a_conflict_is_reported() {
    let f = Fixture::new();
    let lockers = f.lockers();
    lockers.execute("c", LockerCommand::Register { unit: "PL-1".into() }, 0).await.unwrap();
    let stale = lockers.load("c").await.unwrap();
    lockers.execute("c", reserve("r1", "ada"), 0).await.unwrap();
    let events = vec![LockerEvent::Reserved { reservation: "r2".into(), customer: "grace".into() }];
    let err = lockers.save("c", stale.version, &events, &stale.state).await.unwrap_err();
    assert!(matches!(err, AggregateError::Store(reel_core::ReelError::WrongExpectedVersion { .. })), "{err}");
}

#[tokio::test]
async fn snapshots_are_used_and_stale_or_corrupt_ones_ignored() {
    let f = Fixture::new();
    let lockers = f.lockers();
    lockers.execute("s", LockerCommand::Register { unit: "PL-1".into() }, 0).await.unwrap();
    for i in 0..125 {
        lockers.execute("s", reserve(&format!("r{i}"), "ada"), 0).await.unwrap();
        lockers.execute("s", LockerCommand::Cancel { reservation: format!("r{i}") }, 0).await.unwrap();
    }
    let stream = lockers.stream("s").unwrap();
    let snapshot = f.snapshots.load_snapshot(&stream).await.unwrap().expect("a snapshot after 200 events");
    assert_eq!(snapshot.version, StreamVersion(199));
    let with = lockers.load("s").await.unwrap();
    let without = Repository::<Locker>::new(f.store.clone()).load("s").await.unwrap();
    assert!(with.from_snapshot && !without.from_snapshot);
    assert_eq!((with.state.clone(), with.version), (without.state.clone(), without.version), "same state either way");
    assert_eq!(with.state.events_seen, 251);

    let corrupt = Snapshot { data: b"{not json".to_vec(), ..snapshot.clone() };
    f.snapshots.save_snapshot(&corrupt).await.unwrap();
    let loaded = lockers.load("s").await.unwrap();
    assert!(!loaded.from_snapshot);
    assert_eq!(loaded.state, without.state, "a corrupt snapshot is ignored and the state rebuilt");

    let other_schema = Snapshot { schema_version: 99, taken_at: Timestamp::now(), ..snapshot };
    f.snapshots.save_snapshot(&other_schema).await.unwrap();
    let loaded = lockers.load("s").await.unwrap();
    assert!(!loaded.from_snapshot, "a snapshot of another schema version is never trusted");
    assert_eq!(loaded.state, without.state);
}

#[tokio::test]
async fn old_event_shapes_are_upcast_through_a_chain() {
    let f = Fixture::new();
    let stream = StreamName::new("locker-old").unwrap();
    let old = vec![
        NewEvent::json("LockerRegistered", &serde_json::json!({ "unit": "PL-9" })).unwrap(),
        NewEvent::json("LockerReservedV1", &serde_json::json!({ "id": "r1", "user": "ada" })).unwrap(),
    ];
    f.store.append(&stream, ExpectedVersion::NoStream, old).await.unwrap();
    let upcasters = Upcasters::new()
        .register("LockerReservedV1", "LockerReservedV2", |mut d| {
            d["customer"] = d["user"].take();
            Ok(d)
        })
        .register("LockerReservedV2", "LockerReserved", |mut d| {
            d["reservation"] = d["id"].take();
            Ok(d)
        });
    let plain = f.lockers().load("old").await.unwrap_err();
    assert!(
        matches!(&plain, AggregateError::UnknownEventType { event_type, position: 2, .. } if event_type == "LockerReservedV1"),
        "{plain}"
    );
    let loaded = f.lockers().with_upcasters(Arc::new(upcasters)).load("old").await.unwrap();
    let reservation = loaded.state.reservation.unwrap();
    assert_eq!((reservation.id.as_str(), reservation.customer.as_str()), ("r1", "ada"));
}

#[tokio::test]
async fn unknown_events_fail_the_load_unless_tolerated() {
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Tolerant {
        units: u32,
    }
    impl Aggregate for Tolerant {
        const CATEGORY: &'static str = "locker";
        const TOLERATES_UNKNOWN_EVENTS: bool = true;
        type Event = LockerEvent;
        type Command = LockerCommand;
        type Error = LockerError;
        fn apply(&mut self, event: &LockerEvent) {
            if let LockerEvent::Registered { .. } = event {
                self.units += 1;
            }
        }
        fn handle(&self, _: LockerCommand) -> Result<Vec<LockerEvent>, LockerError> {
            Ok(vec![])
        }
    }
    let f = Fixture::new();
    let lockers = f.lockers();
    lockers.execute("m", LockerCommand::Register { unit: "PL-1".into() }, 0).await.unwrap();
    let stream = lockers.stream("m").unwrap();
    f.store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Mystery", "{}")]).await.unwrap();
    let err = lockers.load("m").await.unwrap_err();
    assert!(
        matches!(&err, AggregateError::UnknownEventType { event_type, position: 2, .. } if event_type == "Mystery"),
        "{err}"
    );
    assert!(err.to_string().contains("Mystery") && err.to_string().contains("position 2"));
    let tolerant = Repository::<Tolerant>::new(f.store.clone()).load("m").await.unwrap();
    assert_eq!((tolerant.state.units, tolerant.version), (1, Some(StreamVersion(1))));
    f.store
        .append(&stream, ExpectedVersion::Any, vec![NewEvent::new("LockerReserved", r#"{"wrong":"shape"}"#)])
        .await
        .unwrap();
    let err = Repository::<Tolerant>::new(f.store.clone()).load("m").await.unwrap_err();
    assert!(matches!(err, AggregateError::Undecodable { .. }), "{err}");
}
