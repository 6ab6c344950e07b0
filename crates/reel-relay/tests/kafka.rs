//! The Kafka relay against a real Kafka-protocol broker at 127.0.0.1:9092 (`tansu`, installed
//! and started by `.ci/run`). Each test uses topics under its own random prefix.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use reel_core::{EventStore, Position, RunMode, SubscriptionCriteria};
use reel_relay::{KafkaOptions, KafkaSink, KeyTemplate, Relay};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{ClockBasedRetryStrategy, ResetTo, SubscriberSpec, SubscriptionEngine};

mod common;
use common::{append, relay_until_caught_up, wait_for_outage, wait_until_relaying, PrivateServer};

const BROKERS: &str = "127.0.0.1:9092";

fn prefix() -> String {
    format!("reeltest-{}", reel_core::EventId::new_v7().to_string().replace('-', ""))
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    engine: SubscriptionEngine,
}

async fn fixture(prefix: &str) -> Fixture {
    fixture_at(BROKERS, prefix, Duration::from_secs(30)).await
}

async fn fixture_at(brokers: &str, prefix: &str, delivery_timeout: Duration) -> Fixture {
    let mut options = KafkaOptions::new(brokers);
    options.delivery_timeout = delivery_timeout;
    options.topics = KeyTemplate::parse(&format!("{prefix}.{{category}}")).unwrap();
    let sink = KafkaSink::connect(options)
        .await
        .expect("a Kafka broker must run at 127.0.0.1:9092 (.ci/run installs and starts tansu)");
    let relay =
        Relay::shared(SubscriberSpec::new("kafka_relay", RunMode::FromBeginning).unwrap().in_group("relay"), sink);
    let retry = ClockBasedRetryStrategy {
        base_delay: Duration::from_millis(50),
        delay_factor: 1.5,
        max_attempts: 100,
        max_unavailable_delay: Duration::from_millis(500),
    };
    let (dir, store, engine) = common::engine_with(relay, retry, 1_000).await;
    Fixture { _dir: dir, store, engine }
}

/// One record as a consumer got it: topic, partition, offset, key, headers, payload.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: String,
    headers: HashMap<String, String>,
    payload: Vec<u8>,
}

fn group_consumer(group: &str, topics: &[String]) -> StreamConsumer {
    group_consumer_at(BROKERS, group, topics)
}

fn group_consumer_at(brokers: &str, group: &str, topics: &[String]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).unwrap();
    consumer
}

/// Reads until `expected` records came (or nothing for 20 s), commits, and returns them.
async fn consume(consumer: &StreamConsumer, expected: usize) -> Vec<Record> {
    let mut count = 0;
    consume_until(consumer, |_| {
        count += 1;
        count >= expected
    })
    .await
}

/// Reads until `done` says so of the latest record (or nothing for 20 s), commits, and returns them.
async fn consume_until(consumer: &StreamConsumer, mut done: impl FnMut(&Record) -> bool) -> Vec<Record> {
    let mut records = Vec::new();
    loop {
        let Ok(next) = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await else { break };
        let message = next.unwrap();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| {
                        (header.key.to_string(), String::from_utf8(header.value.unwrap_or_default().to_vec()).unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap(),
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
        if done(records.last().expect("just pushed")) {
            break;
        }
    }
    if !records.is_empty() {
        consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    }
    records
}

/// Every event once by id, each stream in order, key = stream, one stream in one partition.
async fn assert_every_event_by_id_in_order(store: &SqliteStore, records: &[Record], prefix: &str) {
    let head = store.head().await.unwrap().0 as usize;
    let mut seen = HashSet::new();
    let mut last_version: HashMap<&str, u64> = HashMap::new();
    let mut partition_of: HashMap<&str, (String, i32)> = HashMap::new();
    for record in records {
        let id = &record.headers["reel-event-id"];
        let stream = record.headers["reel-stream"].as_str();
        assert_eq!(record.key, stream, "the key is the stream");
        assert_eq!(record.topic, format!("{prefix}.{}", stream.split('-').next().unwrap()));
        let place = (record.topic.clone(), record.partition);
        assert_eq!(partition_of.entry(stream).or_insert_with(|| place.clone()), &place, "{stream} in one partition");
        if !seen.insert(id.clone()) {
            continue; // a replay, recognised by its id
        }
        let version: u64 = record.headers["reel-stream-version"].parse().unwrap();
        if let Some(before) = last_version.insert(stream, version) {
            assert_eq!(version, before + 1, "{stream} in order");
        } else {
            assert_eq!(version, 0, "{stream} from its first event");
        }
    }
    assert_eq!(seen.len(), head, "every event reached the consumer group");
    let sample = store.read_all(Position(1), &Default::default(), 1).await.unwrap().events.remove(0);
    let record = records.iter().find(|r| r.headers["reel-event-id"] == sample.id.to_string()).unwrap();
    assert_eq!(record.payload, sample.data, "data unchanged");
    assert_eq!(record.headers["reel-position"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_gets_every_event_by_id_in_order_and_both_resets_replay() {
    let prefix = prefix();
    let f = fixture(&prefix).await;
    append(&f.store, 1_000, 100).await;
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(300)).await;
    let topics: Vec<String> = (0..10).map(|c| format!("{prefix}.cat{c}")).collect();
    let group = format!("{prefix}-group");
    let consumer = group_consumer(&group, &topics);
    let records = consume(&consumer, 100_000).await;
    assert_every_event_by_id_in_order(&f.store, &records, &prefix).await;

    // Reset of the relay to a position: it publishes from there again; the group gets those
    // events a second time and recognises them by id.
    let from = Position(99_001);
    f.engine.pause(&SubscriptionCriteria::all()).await.unwrap();
    f.engine.reset(&SubscriptionCriteria::all(), ResetTo::Position(from)).await.unwrap();
    f.engine.reactivate(&SubscriptionCriteria::all()).await.unwrap();
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(60)).await;
    let again = consume(&consumer, 1_000).await;
    assert_eq!(again.len(), 1_000, "the relay replayed from the position");
    assert!(again.iter().all(|r| r.headers["reel-position"].parse::<u64>().unwrap() >= from.0));
    let all: Vec<Record> = records.into_iter().chain(again).collect();
    assert_every_event_by_id_in_order(&f.store, &all, &prefix).await;
    drop(consumer);

    // Reset of the consumer group to an offset (002's replay): a new member of the same group
    // reads the same records again from there.
    let mut offsets = TopicPartitionList::new();
    let committed: HashMap<(String, i32), i64> =
        all.iter().map(|r| ((r.topic.clone(), r.partition), r.offset)).fold(HashMap::new(), |mut m, (k, o)| {
            let top = m.entry(k).or_insert(o);
            *top = (*top).max(o);
            m
        });
    for (topic, partition) in committed.keys() {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(0)).unwrap();
    }
    let rewinder: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    rewinder.commit(&offsets, CommitMode::Sync).unwrap();
    drop(rewinder);
    let replay = consume(&group_consumer(&group, &topics), all.len()).await;
    assert_eq!(replay.len(), all.len(), "the group read everything again from offset 0");
    assert_every_event_by_id_in_order(&f.store, &replay, &prefix).await;
}

/// A broker that stops answering mid-way (its process suspended, so its data stays): the relay
/// shows the outage as retries while it lasts, parks nothing, and resumes by itself when the
/// broker answers again; the consumer group then gets every event, each stream in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_is_retried_visibly_until_the_broker_answers_again() {
    let home = std::env::var("HOME").unwrap_or_default();
    let tansu = format!("{home}/.cache/reel/tools/bin/tansu");
    let server = PrivateServer::start(
        &[tansu.as_str()],
        &[
            "broker",
            "--listener-url",
            "tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            "tcp://127.0.0.1:{port}",
            "--storage-engine",
            "memory://tansu/",
        ],
    );
    let brokers = format!("127.0.0.1:{}", server.port());
    let prefix = prefix();
    let f = Arc::new(fixture_at(&brokers, &prefix, Duration::from_secs(2)).await);
    append(&f.store, 100, 100).await;
    let head = f.store.head().await.unwrap();
    let runner = {
        let f = f.clone();
        tokio::spawn(async move { relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(180)).await })
    };
    wait_until_relaying(&f.engine).await;
    server.pause();
    let during = wait_for_outage(&f.engine, 2, Duration::from_secs(60)).await;
    assert!(during.position < head, "the outage came before the end");
    assert!(f.engine.overview(&SubscriptionCriteria::all()).await.unwrap()[0].parked.is_empty(), "nothing parked");

    server.resume();
    runner.await.unwrap();
    let subscription = f.engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap().remove(0);
    assert!(subscription.error.is_none(), "recovered by itself: {subscription:?}");
    let topics: Vec<String> = (0..10).map(|c| format!("{prefix}.cat{c}")).collect();
    let consumer = group_consumer_at(&brokers, &format!("{prefix}-group"), &topics);
    // Records sent again after the outage may come twice; read until every id came.
    let mut ids = HashSet::new();
    let records = consume_until(&consumer, |record| {
        ids.insert(record.headers["reel-event-id"].clone());
        ids.len() >= head.0 as usize
    })
    .await;
    assert_every_event_by_id_in_order(&f.store, &records, &prefix).await;
}
