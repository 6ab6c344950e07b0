//! The MQTT bridge against the real Mosquitto at 127.0.0.1:1883. Each test uses topics under its
//! own random prefix and its own client ids.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reel_core::{
    Direction, EventStore, ExpectedVersion, NewEvent, RunMode, StreamName, StreamVersion, SubscriptionCriteria,
};
use reel_relay::{KeyTemplate, MqttBridgeOptions, MqttConfigSink, MqttIngest, Relay};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{SubscriberSpec, SubscriptionEngine};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn unique() -> String {
    reel_core::EventId::new_v7().to_string().replace('-', "")[20..].to_string()
}

/// A device-side MQTT client whose event loop runs in the background; incoming publishes are
/// forwarded to the returned channel.
fn device_client(id: &str) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(options, 10_000);
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = sender.send(p);
                }
                Ok(_) => {}
                Err(e) => panic!("Mosquitto must run at 127.0.0.1:1883: {e}"),
            }
        }
    });
    (client, receiver)
}

fn event_json(device: usize, n: usize) -> serde_json::Value {
    // Ids derived from device and number, as a device would keep them with its events.
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{device}/{n}").as_bytes());
    serde_json::json!({ "id": id, "type": "LockerOpened", "data": { "n": n } })
}

/// A bridge ingest into `store` following `<prefix>/devices/+/events`, connected and subscribed.
struct RunningIngest {
    ingest: Arc<MqttIngest>,
    options: MqttBridgeOptions,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<Result<(), reel_core::ReelError>>,
}

impl RunningIngest {
    async fn start(prefix: &str, store: Arc<SqliteStore>) -> Self {
        let mut options = MqttBridgeOptions::new("127.0.0.1", 1883);
        options.client_id = format!("t{}", &unique()[..10]);
        options.events_topic = format!("{prefix}/devices/+/events");
        options.validate().unwrap();
        let ingest = Arc::new(MqttIngest::new(options.clone(), store));
        let (stop, running) = ingest.spawn();
        // The ingest subscribes after it connects; give it that moment before devices publish.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Self { ingest, options, stop, running }
    }

    /// Stops it; it must have run without an error.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.running.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_device_events_are_stored_once_in_each_devices_order() {
    let prefix = format!("reeltest/{}", unique());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
    let running = RunningIngest::start(&prefix, store.clone()).await;
    let ingest = running.ingest.clone();
    let options = running.options.clone();

    let (device, _) = device_client(&format!("d{}", &unique()[..10]));
    let mut published = 0;
    // Devices publish over time, not all at once: Mosquitto holds at most 1,000 QoS 1 messages
    // per subscriber beyond those in flight (max_queued_messages) and drops the rest, so the
    // fleet here stays within 50 messages of the bridge.
    let handled = |ingest: &MqttIngest| {
        let counts = ingest.counts();
        counts.messages.load(std::sync::atomic::Ordering::Relaxed)
            + counts.dead_lettered.load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut sent = 0u64;
    for d in 0..100 {
        let topic = format!("{prefix}/devices/D{d}/events");
        let mut n = 0;
        while n < 100 {
            // Single events and batches of five, as devices send them.
            let payload = if d % 2 == 0 {
                event_json(d, n).to_string()
            } else {
                serde_json::Value::Array((n..n + 5).map(|k| event_json(d, k)).collect()).to_string()
            };
            while sent > handled(&ingest) + 50 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            device.publish(&topic, QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
            published += 1;
            sent += 1;
            // Every seventh message arrives twice, as after a QoS 1 redelivery.
            if published % 7 == 0 {
                device.publish(&topic, QoS::AtLeastOnce, false, payload).await.unwrap();
                sent += 1;
            }
            n += if d % 2 == 0 { 1 } else { 5 };
        }
    }
    // Two malformed messages (one sent twice), between good ones: dead-lettered, never blocking.
    device.publish(format!("{prefix}/devices/D0/events"), QoS::AtLeastOnce, false, "not json").await.unwrap();
    device.publish(format!("{prefix}/devices/D0/events"), QoS::AtLeastOnce, false, "not json").await.unwrap();
    device.publish(format!("{prefix}/devices/D1/events"), QoS::AtLeastOnce, false, r#"{"type":"NoId"}"#).await.unwrap();
    device
        .publish(format!("{prefix}/devices/D2/events"), QoS::AtLeastOnce, false, event_json(2, 100).to_string())
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = ingest.counts();
        let dead = counts.dead_lettered.load(std::sync::atomic::Ordering::Relaxed);
        let head = store.head().await.unwrap().0;
        if head >= 10_001 + 2 && dead >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest stuck at {head} events, {dead} dead letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;

    assert_eq!(store.head().await.unwrap().0, 10_001 + 2, "10,001 device events and two dead letters, nothing twice");
    for d in 0..100 {
        let events = store
            .read_stream(&StreamName::new(format!("unit-D{d}")).unwrap(), StreamVersion(0), Direction::Forward, 1_000)
            .await
            .unwrap();
        let expected = if d == 2 { 101 } else { 100 };
        assert_eq!(events.len(), expected, "unit-D{d}");
        for (n, event) in events.iter().enumerate() {
            let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
            assert_eq!(data["n"], n, "unit-D{d} in the device's order");
            assert_eq!(event.id.0, uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{d}/{n}").as_bytes()));
        }
    }
    let dead = store.read_stream(&options.dead_letter_stream, StreamVersion(0), Direction::Forward, 10).await.unwrap();
    assert_eq!(dead.len(), 2, "each malformed message once, with its reason");
    let reasons: Vec<serde_json::Value> = dead.iter().map(|e| serde_json::from_slice(&e.data).unwrap()).collect();
    assert_eq!(reasons[0]["payload"], "not json");
    assert!(reasons[1]["reason"].as_str().unwrap().contains("id"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reaches_a_subscribed_device_live_and_a_later_one_retained() {
    let prefix = format!("reeltest/{}", unique());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
    let mut options = MqttBridgeOptions::new("127.0.0.1", 1883);
    options.client_id = format!("t{}", &unique()[..10]);
    let sink =
        MqttConfigSink::connect(&options, KeyTemplate::parse(&format!("{prefix}/devices/{{id}}/config")).unwrap());
    let spec = SubscriberSpec::new("config_out", RunMode::FromBeginning).unwrap().in_categories(["unitconfig"]);
    let engine = SubscriptionEngine::new(
        store.clone(),
        Arc::new(store.subscription_store().unwrap()),
        vec![Relay::shared(spec, sink)],
    )
    .unwrap();
    engine.setup(&SubscriptionCriteria::all(), true).await.unwrap();

    let topic = format!("{prefix}/devices/PL-7/config");
    let (early, mut early_inbox) = device_client(&format!("e{}", &unique()[..10]));
    early.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = r#"{"price_per_hour":250,"rental_periods":[1,2,4]}"#;
    store
        .append(
            &StreamName::new("unitconfig-PL-7").unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::new("ConfigSet", config)],
        )
        .await
        .unwrap();
    store
        .append(&StreamName::new("unit-PL-7").unwrap(), ExpectedVersion::Any, vec![NewEvent::new("LockerOpened", "{}")])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        engine.run(&SubscriptionCriteria::all()).await.unwrap();
        let s = &engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap()[0];
        if s.position.0 >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "config relay stuck: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live = tokio::time::timeout(Duration::from_secs(10), early_inbox.recv()).await.unwrap().unwrap();
    assert_eq!(live.payload.as_ref(), config.as_bytes());
    assert!(!live.retain, "a subscribed device gets it live");

    let (late, mut late_inbox) = device_client(&format!("l{}", &unique()[..10]));
    late.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let retained = tokio::time::timeout(Duration::from_secs(10), late_inbox.recv()).await.unwrap().unwrap();
    assert_eq!(retained.payload.as_ref(), config.as_bytes());
    assert!(retained.retain, "a device that subscribes later gets the retained config");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), early_inbox.recv()).await.is_err(),
        "unit events are not config"
    );
    // Clear the retained message so the broker keeps nothing of the test.
    late.publish(&topic, QoS::AtLeastOnce, true, Vec::<u8>::new()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A store that cannot take the messages for longer than the keep-alive (its write lock held by
/// another connection for 20 s) does not cost the bridge its broker connection: pings and acks
/// keep flowing while the message waits, and every event is stored once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_slower_than_the_keep_alive_keeps_the_broker_connection() {
    let prefix = format!("reeltest/{}", unique());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reel.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let running = RunningIngest::start(&prefix, store.clone()).await;
    let counts = running.ingest.counts();
    let (device, _) = device_client(&format!("d{}", &unique()[..10]));
    let topic = format!("{prefix}/devices/D1/events");
    let stored = |store: Arc<SqliteStore>| async move { store.head().await.unwrap().0 };
    let wait_for = |count: u64| {
        let store = store.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while stored(store.clone()).await < count {
                assert!(Instant::now() < deadline, "stuck at {} of {count}", stored(store.clone()).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for n in 0..10 {
        device.publish(&topic, QoS::AtLeastOnce, false, event_json(1, n).to_string()).await.unwrap();
    }
    wait_for(10).await;

    // Another connection takes the write lock and keeps it for 20 s (the broker drops a client
    // it has not heard from in 1.5 × the 10 s keep-alive).
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for n in 10..20 {
        device.publish(&topic, QoS::AtLeastOnce, false, event_json(1, n).to_string()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(stored(store.clone()).await, 10, "nothing stored while the lock was held");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    wait_for(20).await;
    // A connection the broker dropped during the stall shows once the bridge reads again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counts.connections.load(std::sync::atomic::Ordering::Relaxed), 1, "the connection never dropped");
    running.stop().await;
    let events = store
        .read_stream(&StreamName::new("unit-D1").unwrap(), StreamVersion(0), Direction::Forward, 100)
        .await
        .unwrap();
    let order: Vec<u64> = events
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.data).unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, (0..20).collect::<Vec<u64>>(), "each event once, in the device's order");
}
