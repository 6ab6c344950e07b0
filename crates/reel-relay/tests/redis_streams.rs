//! The Redis Streams relay against the real Redis at 127.0.0.1:6379 (started by `.ci/run`).
//! Each test uses keys under its own random prefix and deletes them at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reel_core::{
    Direction, EventStore, Position, ReadAllFilter, RunMode, StreamName, StreamVersion, SubscriptionCriteria,
};
use reel_relay::{KeyTemplate, Payload, RedisStreamsSink, Relay};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{ClockBasedRetryStrategy, ResetTo, SubscriberSpec, SubscriptionEngine};

mod common;
use common::{append, relay_until_caught_up, wait_for_outage, wait_until_relaying, PrivateServer};

const REDIS: &str = "redis://127.0.0.1:6379";

async fn redis() -> redis::aio::MultiplexedConnection {
    redis_at(REDIS).await
}

async fn redis_at(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client
        .get_multiplexed_tokio_connection()
        .await
        .expect("Redis must be running at 127.0.0.1:6379 (.ci/run starts it)")
}

/// A key prefix no other test run uses.
fn prefix() -> String {
    format!("reeltest:{}", reel_core::EventId::new_v7())
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    engine: SubscriptionEngine,
}

async fn fixture(keys: &str) -> Fixture {
    fixture_with(keys, Payload::Data).await
}

async fn fixture_with(keys: &str, payload: Payload) -> Fixture {
    let retry = ClockBasedRetryStrategy {
        base_delay: Duration::from_millis(20),
        delay_factor: 1.0,
        max_attempts: 1000,
        ..Default::default()
    };
    let spec = SubscriberSpec::new("redis_relay", RunMode::FromBeginning).unwrap().in_group("relay");
    fixture_at(REDIS, keys, payload, spec, retry).await
}

async fn fixture_at(
    url: &str,
    keys: &str,
    payload: Payload,
    spec: SubscriberSpec,
    retry: ClockBasedRetryStrategy,
) -> Fixture {
    fixture_trimmed(url, keys, payload, spec, retry, None).await
}

async fn fixture_trimmed(
    url: &str,
    keys: &str,
    payload: Payload,
    spec: SubscriberSpec,
    retry: ClockBasedRetryStrategy,
    maxlen: Option<u64>,
) -> Fixture {
    let sink = RedisStreamsSink::connect(url, KeyTemplate::parse(keys).unwrap(), maxlen)
        .await
        .expect("Redis must be running at 127.0.0.1:6379 (.ci/run starts it)")
        .with_payload(payload);
    let relay = Relay::shared(spec, sink);
    let (dir, store, engine) = common::engine_with(relay, retry, 500).await;
    Fixture { _dir: dir, store, engine }
}

/// A Redis Streams entry: key, entry id, fields.
type Entry = (String, String, HashMap<String, Vec<u8>>);

/// Every entry under `keys`.
async fn entries(keys: &[String]) -> Vec<Entry> {
    entries_at(REDIS, keys).await
}

async fn entries_at(url: &str, keys: &[String]) -> Vec<Entry> {
    let mut connection = redis_at(url).await;
    let mut all = Vec::new();
    for key in keys {
        let reply: Vec<(String, Vec<Vec<u8>>)> =
            redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(&mut connection).await.unwrap();
        for (id, flat) in reply {
            let fields =
                flat.chunks(2).map(|pair| (String::from_utf8(pair[0].clone()).unwrap(), pair[1].clone())).collect();
            all.push((key.clone(), id, fields));
        }
    }
    all
}

async fn delete(keys: &[String]) {
    let mut connection = redis().await;
    let _: () = redis::cmd("DEL").arg(keys).query_async(&mut connection).await.unwrap();
}

fn text(fields: &HashMap<String, Vec<u8>>, name: &str) -> String {
    String::from_utf8(fields[name].clone()).unwrap()
}

/// Checks that `entries` hold every event of the store exactly once, each key in position
/// order, each stream in version order, with the envelope fields and the data unchanged.
async fn assert_relayed_exactly_once(store: &SqliteStore, entries: &[Entry]) {
    let head = store.head().await.unwrap().0 as usize;
    assert_eq!(entries.len(), head, "one entry per event");
    let mut by_position = HashMap::new();
    let mut last_in_key: HashMap<&str, u64> = HashMap::new();
    let mut last_version: HashMap<String, u64> = HashMap::new();
    for (key, id, fields) in entries {
        let position: u64 = text(fields, "reel-position").parse().unwrap();
        assert_eq!(id, &format!("{position}-0"), "entry id is the position");
        let previous = last_in_key.insert(key.as_str(), position).unwrap_or(0);
        assert!(position > previous, "{key}: {position} after {previous}");
        let version: u64 = text(fields, "reel-stream-version").parse().unwrap();
        let stream = text(fields, "reel-stream");
        if let Some(before) = last_version.insert(stream.clone(), version) {
            assert_eq!(version, before + 1, "{stream} in order");
        } else {
            assert_eq!(version, 0, "{stream} starts at its first event");
        }
        assert!(by_position.insert(position, fields.clone()).is_none(), "position {position} relayed twice");
    }
    let mut stored = Vec::new();
    let mut from = Position(1);
    while stored.len() < head {
        let page = store.read_all(from, &ReadAllFilter::default(), 5_000).await.unwrap();
        assert!(!page.events.is_empty(), "the log ends before its head");
        stored.extend(page.events);
        from = page.next;
    }
    for event in stored {
        let fields = &by_position[&event.position.0];
        assert_eq!(text(fields, "reel-event-id"), event.id.to_string());
        assert_eq!(text(fields, "reel-type"), event.event_type);
        assert_eq!(fields["data"], event.data, "data unchanged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_redis_once_and_each_stream_in_order_even_after_a_reset() {
    let prefix = prefix();
    let f = fixture(&format!("{prefix}:{{category}}")).await;
    append(&f.store, 1_000, 100).await;
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(120)).await;
    let keys: Vec<String> = (0..10).map(|c| format!("{prefix}:cat{c}")).collect();
    assert_relayed_exactly_once(&f.store, &entries(&keys).await).await;

    // A reset replays the whole log: Redis refuses every id it already holds.
    f.engine.pause(&SubscriptionCriteria::all()).await.unwrap();
    f.engine.reset(&SubscriptionCriteria::all(), ResetTo::Beginning).await.unwrap();
    f.engine.reactivate(&SubscriptionCriteria::all()).await.unwrap();
    append(&f.store, 10, 10).await;
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(120)).await;
    assert_relayed_exactly_once(&f.store, &entries(&keys).await).await;
    delete(&keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_mid_batch_keeps_every_stream_in_order_and_resumes_when_fixed() {
    let prefix = prefix();
    let f = fixture(&format!("{prefix}:{{stream}}")).await;
    append(&f.store, 20, 50).await;
    // A key of the wrong type makes Redis refuse every XADD of one stream, in the middle of each
    // batch: the relay must stop there, never store a later event of that stream, and go on
    // once the key is fixed.
    let blocked = format!("{prefix}:cat3-3");
    let mut connection = redis().await;
    let _: () = redis::cmd("SET").arg(&blocked).arg("not a stream").query_async(&mut connection).await.unwrap();
    for _ in 0..5 {
        f.engine.boot(&SubscriptionCriteria::all()).await.unwrap();
        f.engine.run(&SubscriptionCriteria::all()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let subscription = &f.engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap()[0];
    let first_blocked = f
        .store
        .read_stream(&StreamName::new("cat3-3").unwrap(), StreamVersion(0), Direction::Forward, 1)
        .await
        .unwrap()[0]
        .position;
    assert_eq!(subscription.position.0, first_blocked.0 - 1, "stopped right before the refused event");
    assert!(
        subscription.error.as_ref().is_some_and(|e| e.message.contains("WRONGTYPE")),
        "the broker's reason is visible: {subscription:?}"
    );
    let keys: Vec<String> = (0..20).map(|s| format!("{prefix}:cat{}-{s}", s % 10)).collect();
    let before_fix = entries(&keys.iter().filter(|k| **k != blocked).cloned().collect::<Vec<_>>()).await;
    assert!(
        before_fix.iter().all(|(_, id, _)| id.trim_end_matches("-0").parse::<u64>().unwrap() < first_blocked.0),
        "nothing after the refused event was stored"
    );

    let _: () = redis::cmd("DEL").arg(&blocked).query_async(&mut connection).await.unwrap();
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(60)).await;
    assert_relayed_exactly_once(&f.store, &entries(&keys).await).await;
    delete(&keys).await;
}

/// `--payload cloudevents`: each entry's data is a CloudEvent whose `id` is the event id, with
/// the event's stream, type, position and data, and the entry id is still the position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudevents_relay_sends_each_event_as_a_cloud_event_with_its_id() {
    let prefix = prefix();
    let f = fixture_with(&format!("{prefix}:{{category}}"), Payload::CloudEvent).await;
    append(&f.store, 10, 10).await;
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(60)).await;
    let keys: Vec<String> = (0..10).map(|c| format!("{prefix}:cat{c}")).collect();
    let relayed = entries(&keys).await;
    let stored = f.store.read_all(Position(1), &ReadAllFilter::default(), 1_000).await.unwrap().events;
    assert_eq!(relayed.len(), stored.len(), "one entry per event");
    let by_position: HashMap<String, &HashMap<String, Vec<u8>>> =
        relayed.iter().map(|(_, id, fields)| (id.clone(), fields)).collect();
    for event in &stored {
        let fields = by_position[&format!("{}-0", event.position.0)];
        let cloud: serde_json::Value = serde_json::from_slice(&fields["data"]).unwrap();
        assert_eq!(cloud["specversion"], "1.0");
        assert_eq!(cloud["id"], event.id.to_string(), "the CloudEvent id is the event id");
        assert_eq!(cloud["subject"], event.stream.as_str());
        assert_eq!(cloud["type"], event.event_type.as_str());
        assert_eq!(cloud["reelposition"], event.position.0);
        assert_eq!(cloud["data"], serde_json::from_slice::<serde_json::Value>(&event.data).unwrap());
        assert_eq!(text(fields, "reel-event-id"), event.id.to_string(), "headers as with plain data");
    }
    delete(&keys).await;
}

/// Redis stopped (SIGKILL) while the relay is part-way: the relay shows the outage as
/// `unavailable` and retries for as long as it lasts, without using up its single ordinary retry
/// or parking anything, and finishes by itself once Redis is back, every event once and in order.
/// A Redis of the test's own (append-only file, so what it acknowledged survives the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_retried_visibly_until_redis_returns() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut server = PrivateServer::start(
        &["/usr/bin/redis-server", "/usr/local/bin/redis-server"],
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "{port}",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir,
        ],
    );
    let url = format!("redis://127.0.0.1:{}", server.port());
    let retry = ClockBasedRetryStrategy {
        base_delay: Duration::from_millis(20),
        delay_factor: 1.5,
        max_attempts: 1,
        max_unavailable_delay: Duration::from_millis(300),
    };
    let spec = SubscriberSpec::new("redis_relay", RunMode::FromBeginning).unwrap().in_group("relay").park_failures();
    let f = Arc::new(fixture_at(&url, "reel:{category}", Payload::Data, spec, retry).await);
    append(&f.store, 100, 100).await;
    let head = f.store.head().await.unwrap();
    let runner = {
        let f = f.clone();
        tokio::spawn(async move { relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(120)).await })
    };
    wait_until_relaying(&f.engine).await;
    server.stop();
    let during = wait_for_outage(&f.engine, 2, Duration::from_secs(30)).await;
    assert!(during.position < head, "the outage came before the end");
    assert!(f.engine.overview(&SubscriptionCriteria::all()).await.unwrap()[0].parked.is_empty(), "nothing parked");

    server.restart();
    runner.await.unwrap();
    let keys: Vec<String> = (0..10).map(|c| format!("reel:cat{c}")).collect();
    assert_relayed_exactly_once(&f.store, &entries_at(&url, &keys).await).await;
}

/// `MAXLEN ~ n`: each key keeps about its last n entries (Redis trims whole nodes, so at least
/// n and less than n plus a node), and the newest entry is the log's last event of that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_relay_keeps_about_the_last_entries_of_each_key() {
    let prefix = prefix();
    let retry = ClockBasedRetryStrategy { base_delay: Duration::from_millis(20), ..Default::default() };
    let spec = SubscriberSpec::new("redis_relay", RunMode::FromBeginning).unwrap().in_group("relay");
    let f = fixture_trimmed(REDIS, &format!("{prefix}:{{category}}"), Payload::Data, spec, retry, Some(300)).await;
    append(&f.store, 100, 100).await;
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(120)).await;
    let mut connection = redis().await;
    let head = f.store.head().await.unwrap().0;
    for c in 0..10 {
        let key = format!("{prefix}:cat{c}");
        let length: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut connection).await.unwrap();
        assert!((300..1_000).contains(&length), "{key} trimmed to about 300 of 1,000 entries: {length}");
        let last: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut connection)
            .await
            .unwrap();
        let position: u64 = last[0].0.trim_end_matches("-0").parse().unwrap();
        assert!(head - position < 100, "{key} ends with one of the last events: {position} of {head}");
    }
    delete(&(0..10).map(|c| format!("{prefix}:cat{c}")).collect::<Vec<_>>()).await;
}
