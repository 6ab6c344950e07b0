//! The platform's side of units without the agent, driven by a clock the test controls:
//! presence from pings, configuration pushed on the retry schedule only while the unit is
//! online, and events fetched from a unit exactly once.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reel_core::{
    Direction, EventStore, ExpectedVersion, NewEvent, PresenceStore, StreamName, StreamVersion, Timestamp, UnitLink,
    UnitRegistration,
};
use reel_edge::{LinkOptions, UnitLinks};
use reel_server::{PartitionWork, Presence, PresenceOptions};
use reel_sqlite::SqliteStore;
use reel_testkit::unit_endpoint::UnitEndpoint;

/// The platform: a store, presence over it (one partition) and the unit links.
struct Platform {
    store: SqliteStore,
    rows: Arc<dyn PresenceStore>,
    presence: Presence,
    links: UnitLinks,
}

fn platform(dir: &std::path::Path) -> Platform {
    let store = SqliteStore::open(dir.join("central.db")).unwrap();
    let rows: Arc<dyn PresenceStore> = Arc::new(store.presence_store().unwrap());
    let options = PresenceOptions { partition_digits: 0, ..PresenceOptions::default() };
    let presence = Presence::new(Arc::new(store.clone()), rows.clone(), options);
    let links = UnitLinks::new(Arc::new(store.clone()), rows.clone(), LinkOptions::default());
    Platform { store, rows, presence, links }
}

impl Platform {
    /// One round at `now`: the presence sweep, then the links, as a worker does it.
    async fn round(&self, now: Timestamp) {
        self.presence.sweep(now, &HashSet::from([0])).await.unwrap();
        let devices = self.rows.devices().await.unwrap();
        self.links.run(now, &devices).await;
    }

    async fn register(&self, name: &str, endpoint: &str, link: UnitLink) {
        let unit = UnitRegistration {
            device: name.into(),
            display_name: None,
            interval: Duration::from_secs(60),
            endpoint: endpoint.into(),
            link,
        };
        self.rows.register_unit(&unit).await.unwrap();
    }

    async fn row(&self, name: &str) -> reel_core::DevicePresence {
        self.rows.devices().await.unwrap().into_iter().find(|d| d.device == name).unwrap()
    }

    async fn events(&self, stream: &str) -> Vec<reel_core::RecordedEvent> {
        let stream = StreamName::new(stream).unwrap();
        match self.store.read_stream(&stream, StreamVersion(0), Direction::Forward, 10_000).await {
            Ok(events) => events,
            Err(reel_core::ReelError::StreamNotFound { .. }) => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Seconds after a fixed start, on the test's clock.
fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_micros(1_800_000_000_000_000 + seconds * 1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_unit_is_retried_on_the_schedule_only_while_online_and_from_the_start_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let unit = UnitEndpoint::start(2);
    platform.register("u1", &unit.url, UnitLink::Push).await;
    let config = StreamName::new("unitconfig-u1").unwrap();
    platform
        .store
        .append(&config, ExpectedVersion::NoStream, vec![NewEvent::new("PriceSet", r#"{"price":3}"#)])
        .await
        .unwrap();
    let posts = || unit.deliveries();

    platform.round(at(0)).await; // pinged: heard
    assert!(!platform.row("u1").await.state.online, "not online before the sweep has seen the answer");
    assert_eq!(posts(), 0, "nothing is pushed to a unit not known to be online");
    platform.round(at(1)).await; // online: delivered at once; it fails
    let row = platform.row("u1").await;
    assert!(row.state.online);
    assert_eq!(posts(), 1);
    let why = row.link_error.expect("the failure is shown with the device");
    assert!(why.contains("version 0 not delivered") && why.contains("60 s"), "{why}");
    platform.round(at(30)).await;
    assert_eq!(posts(), 1, "the first retry waits 60 s");
    platform.round(at(61)).await; // pinged again; second attempt fails
    assert_eq!(posts(), 2);
    platform.round(at(121)).await;
    platform.round(at(181)).await;
    assert_eq!(posts(), 2, "the second retry waits 5 minutes");

    // The unit goes away: pings fail, it is offline after 1.5 × 60 s of silence, and the retry
    // that falls due meanwhile (at 361 s) is not attempted.
    unit.up.store(false, Ordering::SeqCst);
    platform.round(at(300)).await;
    assert!(!platform.row("u1").await.state.online, "silent since 181 s");
    platform.round(at(400)).await;
    assert_eq!(posts(), 2, "never while offline");

    // Back: the next ping is heard, the sweep sees it online, and the schedule starts over with
    // an immediate delivery, which now succeeds.
    unit.up.store(true, Ordering::SeqCst);
    platform.round(at(461)).await;
    platform.round(at(462)).await;
    let row = platform.row("u1").await;
    assert!(row.state.online);
    assert_eq!(row.state.session, 2);
    assert_eq!(posts(), 3);
    assert_eq!((row.config_version, row.config_acked_at), (Some(1), Some(at(462))), "acknowledged");
    platform.round(at(463)).await;
    assert_eq!(platform.row("u1").await.link_error, None, "cleared once delivered");
    let delivered = unit.posts.lock().unwrap().clone();
    let id = platform.events("unitconfig-u1").await[0].id.to_string();
    assert!(delivered.iter().all(|(key, _)| key == &id), "every attempt carries the event id as its key");
    assert_eq!(delivered[2].1["data"]["price"], 3);
    assert_eq!(delivered[2].1["version"], 0);

    // New configuration while online goes out on the next round, with its own key.
    platform
        .store
        .append(&config, ExpectedVersion::Any, vec![NewEvent::new("PriceSet", r#"{"price":4}"#)])
        .await
        .unwrap();
    platform.round(at(464)).await;
    assert_eq!(posts(), 4);
    assert_ne!(unit.posts.lock().unwrap()[3].0, id);
    platform.round(at(465)).await;
    assert_eq!(posts(), 4, "nothing twice");
    assert_eq!(platform.row("u1").await.config_version, Some(2));
}

async fn ticks(store: &SqliteStore, stream: &str, first: usize, n: usize) {
    let events = (first..first + n).map(|i| NewEvent::new("Tick", format!(r#"{{"n":{i}}}"#))).collect();
    store.append(&StreamName::new(stream).unwrap(), ExpectedVersion::Any, events).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_units_events_are_fetched_exactly_once_even_after_a_fetch_stored_them_without_saving_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let unit = SqliteStore::open(dir.path().join("unit.db")).unwrap();
    let (base, _stop) = common::serve(&unit).await;
    ticks(&unit, "unit-f1", 0, 1_500).await;
    ticks(&unit, "shelf-9", 0, 3).await; // not the unit's to send
    ticks(&unit, "unit-f1-doors", 0, 20).await;
    platform.register("f1", &base, UnitLink::Fetch).await;

    // An earlier fetch stored the first 700 events and died before saving where it was.
    let first = unit
        .read_stream(&StreamName::new("unit-f1").unwrap(), StreamVersion(0), Direction::Forward, 700)
        .await
        .unwrap();
    let copies: Vec<NewEvent> =
        first.iter().map(|e| NewEvent::new(e.event_type.clone(), e.data.clone()).with_id(e.id)).collect();
    platform.store.append(&StreamName::new("unit-f1").unwrap(), ExpectedVersion::NoStream, copies).await.unwrap();

    platform.round(at(0)).await; // pinged
    platform.round(at(1)).await; // online: fetched
    for stream in ["unit-f1", "unit-f1-doors"] {
        let ids = |events: Vec<reel_core::RecordedEvent>| {
            events.into_iter().map(|e| (e.stream_version, e.id)).collect::<Vec<_>>()
        };
        let there = unit
            .read_stream(&StreamName::new(stream).unwrap(), StreamVersion(0), Direction::Forward, 10_000)
            .await
            .unwrap();
        assert_eq!(ids(platform.events(stream).await), ids(there), "{stream}: the unit's events, once, in order");
    }
    assert!(platform.events("shelf-9").await.is_empty());
    assert_eq!(platform.row("f1").await.fetch_position, 1_523);

    // More later: fetched at the next interval, not before.
    ticks(&unit, "unit-f1", 1_500, 5).await;
    platform.round(at(30)).await;
    assert_eq!(platform.events("unit-f1").await.len(), 1_500);
    platform.round(at(61)).await;
    assert_eq!(platform.events("unit-f1").await.len(), 1_505);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_stream_the_unit_did_not_write_stops_fetching_from_it_and_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let unit = SqliteStore::open(dir.path().join("unit.db")).unwrap();
    let (base, _stop) = common::serve(&unit).await;
    ticks(&unit, "unit-f2", 0, 10).await;
    ticks(&platform.store, "unit-f2", 100, 1).await; // someone else wrote it centrally
    platform.register("f2", &base, UnitLink::Fetch).await;
    platform.round(at(0)).await;
    platform.round(at(1)).await;
    ticks(&unit, "unit-f2", 10, 1).await;
    platform.round(at(61)).await;
    let central = platform.events("unit-f2").await;
    assert_eq!(central.len(), 1, "nothing overwritten or added after it");
    let row = platform.row("f2").await;
    assert_eq!(row.fetch_position, 0);
    let why = row.link_error.expect("shown with the device");
    assert!(why.contains("fetching stopped") && why.contains("did not write"), "{why}");
}
