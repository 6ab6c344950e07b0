//! The uplink against a central server in this process (reel-server over an embedded store),
//! for the cases a test of real processes cannot produce on demand: an earlier append whose
//! answer was lost and whose batch ended somewhere else than the retry's.

mod common;

use std::sync::Arc;

use reel_core::{
    Direction, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamName, StreamVersion, SubscriptionCriteria,
};
use reel_edge::{CentralServer, Ownership, Uplink};
use reel_sqlite::SqliteStore;
use reel_subscriptions::SubscriptionEngine;

struct Central {
    store: SqliteStore,
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn central(dir: &std::path::Path) -> Central {
    let store = SqliteStore::open(dir.join("central.db")).unwrap();
    let (base, stop) = common::serve(&store).await;
    Central { store, base, _stop: stop }
}

/// The device's store with `n` events in `unit-x`, and those events.
async fn device(dir: &std::path::Path, n: usize) -> (SqliteStore, Vec<RecordedEvent>) {
    device_with(dir, n, 0).await
}

/// The same with `pad` bytes of padding in each event's data.
async fn device_with(dir: &std::path::Path, n: usize, pad: usize) -> (SqliteStore, Vec<RecordedEvent>) {
    let store = SqliteStore::open(dir.join("device.db")).unwrap();
    let stream = StreamName::new("unit-x").unwrap();
    let padding = "x".repeat(pad);
    let events = (0..n).map(|i| NewEvent::new("Tick", format!(r#"{{"n":{i},"pad":"{padding}"}}"#))).collect();
    store.append(&stream, ExpectedVersion::NoStream, events).await.unwrap();
    let recorded = store.read_stream(&stream, StreamVersion(0), Direction::Forward, n).await.unwrap();
    (store, recorded)
}

/// Runs the uplink until it has nothing left to do; returns the subscription's last error.
async fn run_uplink(device: &SqliteStore, central: &str) -> Option<String> {
    let uplink = Uplink::new(Ownership::for_device("x").unwrap(), Arc::new(CentralServer::new(central, None))).unwrap();
    let engine = SubscriptionEngine::new(
        Arc::new(device.clone()),
        Arc::new(device.subscription_store().unwrap()),
        vec![Arc::new(uplink)],
    )
    .unwrap();
    let all = SubscriptionCriteria::all();
    engine.setup(&all, true).await.unwrap();
    engine.run_until_idle(&all, 10).await.unwrap();
    engine.subscriptions(&all).await.unwrap()[0].error.as_ref().map(|e| e.message.clone())
}

fn copies(events: &[RecordedEvent]) -> Vec<NewEvent> {
    events.iter().map(|e| NewEvent::new(e.event_type.clone(), e.data.clone()).with_id(e.id)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_earlier_append_covered_part_of_its_run_sends_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let central = central(dir.path()).await;
    let (device, events) = device(dir.path(), 10).await;
    // An earlier uplink stored the first 4 and its answer was lost before the position was saved.
    let stream = StreamName::new("unit-x").unwrap();
    central.store.append(&stream, ExpectedVersion::NoStream, copies(&events[..4])).await.unwrap();

    assert_eq!(run_uplink(&device, &central.base).await, None, "no failure");
    let there = central.store.read_stream(&stream, StreamVersion(0), Direction::Forward, 100).await.unwrap();
    let ids = |events: &[RecordedEvent]| events.iter().map(|e| (e.stream_version, e.id)).collect::<Vec<_>>();
    assert_eq!(ids(&there), ids(&events), "each event once, same ids and versions, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_stream_that_differs_after_the_events_sent_before_stops_the_uplink_there() {
    let dir = tempfile::tempdir().unwrap();
    let central = central(dir.path()).await;
    let (device, events) = device(dir.path(), 10).await;
    let stream = StreamName::new("unit-x").unwrap();
    central.store.append(&stream, ExpectedVersion::NoStream, copies(&events[..3])).await.unwrap();
    central.store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Forged", "{}")]).await.unwrap();

    let error = run_uplink(&device, &central.base).await.expect("the uplink stops");
    assert!(error.contains("version 3 is event") && error.contains("did not write"), "{error}");
    let there = central.store.read_stream(&stream, StreamVersion(0), Direction::Forward, 100).await.unwrap();
    assert_eq!(there.len(), 4, "nothing overwritten, nothing added");
    assert_eq!(there[3].event_type, "Forged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_larger_than_a_request_may_be_goes_out_in_several_appends() {
    let dir = tempfile::tempdir().unwrap();
    let central = central(dir.path()).await;
    // 30 events of 600 kB: 18 MB in one run of one batch, over the server's 16 MiB request limit.
    let (device, events) = device_with(dir.path(), 30, 600_000).await;

    assert_eq!(run_uplink(&device, &central.base).await, None, "no failure");
    let stream = StreamName::new("unit-x").unwrap();
    let there = central.store.read_stream(&stream, StreamVersion(0), Direction::Forward, 100).await.unwrap();
    let ids = |events: &[RecordedEvent]| events.iter().map(|e| (e.stream_version, e.id)).collect::<Vec<_>>();
    assert_eq!(ids(&there), ids(&events), "each event once, same ids and versions, in order");
    let appends: std::collections::BTreeSet<_> = there.iter().map(|e| e.recorded_at).collect();
    assert!(appends.len() > 1, "more than one append: {}", appends.len());
}
