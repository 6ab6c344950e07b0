//! The NATS JetStream relay against the real NATS at 127.0.0.1:4222 (started by `.ci/run`); the
//! outage test runs a private `nats-server` of its own so it can stop it. Each test uses its own
//! JetStream stream and subjects and deletes the stream at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use reel_core::{
    EventStore, ExpectedVersion, NewEvent, Position, ReadAllFilter, RunMode, StreamName, SubscriptionCriteria,
};
use reel_relay::{JetStreamOptions, JetStreamSink, KeyTemplate, Relay};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{ClockBasedRetryStrategy, ResetTo, SubscriberSpec, SubscriptionEngine};

mod common;
use common::{append, relay_until_caught_up, wait_for_outage, wait_until_relaying, PrivateServer};

const NATS: &str = "nats://127.0.0.1:4222";

/// A JetStream stream name and subject prefix no other test run uses.
fn unique() -> (String, String) {
    let id = reel_core::EventId::new_v7().to_string().replace('-', "");
    (format!("REELTEST_{id}"), format!("reeltest.{id}"))
}

fn options(url: &str, stream: &str, subjects: &str) -> JetStreamOptions {
    let mut options = JetStreamOptions::new(url);
    options.stream = stream.into();
    options.subjects = KeyTemplate::parse(&format!("{subjects}.{{category}}.{{stream}}")).unwrap();
    options.ack_timeout = Duration::from_secs(2);
    options
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    engine: SubscriptionEngine,
    sink_stats: Arc<JetStreamSink>,
}

/// A sink shared between the relay and the test (to read its counts).
struct SharedSink(Arc<JetStreamSink>);

#[async_trait::async_trait]
impl reel_relay::Sink for SharedSink {
    async fn publish(&self, batch: &[reel_core::RecordedEvent]) -> reel_relay::Delivery {
        self.0.publish(batch).await
    }

    fn take_warning(&self) -> Option<String> {
        self.0.take_warning()
    }
}

async fn fixture(options: JetStreamOptions, spec: SubscriberSpec, max_attempts: u32) -> Fixture {
    let sink = Arc::new(
        JetStreamSink::connect(options)
            .await
            .expect("NATS with JetStream must run at 127.0.0.1:4222 (.ci/run starts it)"),
    );
    let relay = Relay::shared(spec, SharedSink(sink.clone()));
    let retry = ClockBasedRetryStrategy {
        base_delay: Duration::from_millis(20),
        delay_factor: 1.5,
        max_attempts,
        max_unavailable_delay: Duration::from_millis(300),
    };
    let (dir, store, engine) = common::engine_with(relay, retry, 500).await;
    Fixture { _dir: dir, store, engine, sink_stats: sink }
}

fn spec() -> SubscriberSpec {
    SubscriberSpec::new("nats_relay", RunMode::FromBeginning).unwrap().in_group("relay")
}

/// One message as a consumer got it: subject, headers by name, payload.
type Received = (String, HashMap<String, String>, Vec<u8>);

/// A durable pull consumer of `stream` on `url`, as an application would run it.
async fn durable_consumer(url: &str, stream: &str) -> consumer::PullConsumer {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = js.get_stream(stream).await.unwrap();
    stream
        .get_or_create_consumer(
            "checker",
            consumer::pull::Config {
                durable_name: Some("checker".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

/// What `consumer` delivers: at least `expected` messages (unless nothing comes for 10 s), then
/// whatever else arrives within a further half second (so extra copies would show).
async fn receive(consumer: &consumer::PullConsumer, expected: usize) -> Vec<Received> {
    let mut messages = consumer.messages().await.unwrap();
    let mut received = Vec::new();
    loop {
        let idle = if received.len() < expected { Duration::from_secs(10) } else { Duration::from_millis(500) };
        let Ok(Some(message)) = tokio::time::timeout(idle, messages.next()).await else { break };
        let message = message.unwrap();
        let headers = message
            .headers
            .as_ref()
            .map(|h| h.iter().map(|(k, v)| (k.to_string(), v[0].to_string())).collect())
            .unwrap_or_default();
        received.push((message.subject.to_string(), headers, message.payload.to_vec()));
        message.ack().await.unwrap();
    }
    received
}

async fn delete_stream(url: &str, stream: &str) {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let _ = js.delete_stream(stream).await;
}

async fn stored_messages(url: &str, stream: &str) -> u64 {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

/// Checks that `received` holds every event of the store except `missing` exactly once, each
/// stream in version order, with the envelope headers and the data unchanged.
async fn assert_relayed_exactly_once(store: &SqliteStore, received: &[Received], missing: &[Position]) {
    let head = store.head().await.unwrap().0 as usize;
    assert_eq!(received.len(), head - missing.len(), "one message per event");
    let mut by_id = HashMap::new();
    let mut last_version: HashMap<&str, u64> = HashMap::new();
    for (subject, headers, payload) in received {
        let stream = headers["reel-stream"].as_str();
        assert!(subject.ends_with(&format!(".{stream}")), "{subject} names its stream");
        assert_eq!(headers["Nats-Msg-Id"], headers["reel-event-id"], "the message id is the event id");
        let version: u64 = headers["reel-stream-version"].parse().unwrap();
        if let Some(before) = last_version.insert(stream, version) {
            assert!(version > before, "{stream}: version {version} after {before}");
        }
        assert!(by_id.insert(headers["reel-event-id"].clone(), payload.clone()).is_none(), "relayed twice");
    }
    let mut from = Position(1);
    loop {
        let page = store.read_all(from, &ReadAllFilter::default(), 5_000).await.unwrap();
        if page.events.is_empty() {
            break;
        }
        for event in &page.events {
            match by_id.get(&event.id.to_string()) {
                Some(payload) => assert_eq!(payload, &event.data, "data unchanged"),
                None => assert!(missing.contains(&event.position), "event at {} never relayed", event.position),
            }
        }
        from = page.next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_a_durable_consumer_once_and_in_order_even_after_a_reset() {
    let (name, subjects) = unique();
    let f = fixture(options(NATS, &name, &subjects), spec(), 1000).await;
    append(&f.store, 1_000, 100).await;
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(240)).await;
    assert_eq!(stored_messages(NATS, &name).await, 100_000);
    let consumer = durable_consumer(NATS, &name).await;
    let first = receive(&consumer, 100_000).await;
    assert_relayed_exactly_once(&f.store, &first, &[]).await;

    // A reset replays the whole log: JetStream drops every id it saw within the window, so the
    // durable consumer gets only what was appended since.
    f.engine.pause(&SubscriptionCriteria::all()).await.unwrap();
    f.engine.reset(&SubscriptionCriteria::all(), ResetTo::Beginning).await.unwrap();
    f.engine.reactivate(&SubscriptionCriteria::all()).await.unwrap();
    append(&f.store, 10, 10).await;
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(240)).await;
    let second = receive(&consumer, 100).await;
    assert_eq!(second.len(), 100, "only the new events reach the consumer");
    assert_eq!(f.sink_stats.duplicates(), 100_000, "the broker recognised every replayed event");
    assert_eq!(f.sink_stats.replays_beyond_window(), 0);
    let all: Vec<Received> = first.into_iter().chain(second).collect();
    assert_relayed_exactly_once(&f.store, &all, &[]).await;
    assert_eq!(stored_messages(NATS, &name).await, 100_100);
    delete_stream(NATS, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_mid_batch_is_parked_and_no_stream_is_reordered() {
    let (name, subjects) = unique();
    let options = options(NATS, &name, &subjects);
    // The stream exists already, with a message size limit the relay does not know about.
    let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![options.stream_subjects()],
        duplicate_window: options.duplicate_window,
        max_message_size: 2_048,
        ..Default::default()
    })
    .await
    .unwrap();
    let f = fixture(options, spec().park_failures(), 2).await;
    append(&f.store, 20, 20).await;
    let big = StreamName::new("cat3-3").unwrap();
    let too_large = f
        .store
        .append(
            &big,
            ExpectedVersion::Any,
            vec![NewEvent::new("Counted", format!("{{\"pad\":\"{}\"}}", "x".repeat(4_000)))],
        )
        .await
        .unwrap()
        .first_position;
    append(&f.store, 20, 20).await;

    // Before the retries run out, nothing of the refused event's stream after it is stored.
    f.engine.boot(&SubscriptionCriteria::all()).await.unwrap();
    f.engine.run(&SubscriptionCriteria::all()).await.unwrap();
    let subscription = &f.engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap()[0];
    assert_eq!(subscription.position.0, too_large.0 - 1, "stopped right before the refused event");
    let error = subscription.error.as_ref().expect("the failure is visible");
    assert!(error.message.contains("JetStream"), "{error:?}");
    assert!(!error.is_unavailable(), "a refusal is not an outage: {error:?}");
    let consumer = durable_consumer(NATS, &name).await;
    let before = receive(&consumer, 0).await;
    assert!(before
        .iter()
        .all(|(_, h, _)| h["reel-position"].parse::<u64>().unwrap() < too_large.0 || h["reel-stream"] != "cat3-3"));

    // Then the policy parks it and the relay goes on.
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(60)).await;
    let parked = f.engine.overview(&SubscriptionCriteria::all()).await.unwrap()[0].parked.clone();
    assert_eq!(parked.iter().map(|p| p.position).collect::<Vec<_>>(), vec![too_large]);
    let after = receive(&consumer, 800 - before.len()).await;
    let all: Vec<Received> = before.into_iter().chain(after).collect();
    assert_relayed_exactly_once(&f.store, &all, &[too_large]).await;
    delete_stream(NATS, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_older_than_the_duplicate_window_is_counted_and_warned_about() {
    let (name, subjects) = unique();
    let mut options = options(NATS, &name, &subjects);
    options.duplicate_window = Duration::from_secs(1);
    let f = fixture(options, spec(), 1000).await;
    append(&f.store, 10, 10).await;
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(30)).await;
    assert_eq!(f.sink_stats.replays_beyond_window(), 0, "the first run replays nothing");
    assert_eq!(f.engine.overview(&SubscriptionCriteria::all()).await.unwrap()[0].warning, None);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    f.engine.pause(&SubscriptionCriteria::all()).await.unwrap();
    f.engine.reset(&SubscriptionCriteria::all(), ResetTo::Beginning).await.unwrap();
    f.engine.reactivate(&SubscriptionCriteria::all()).await.unwrap();
    relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(30)).await;
    assert_eq!(f.sink_stats.replays_beyond_window(), 100, "every replayed event was older than the window");
    // Operators see it with the relay's subscription (list, dashboard, /metrics read this).
    let view = &f.engine.overview(&SubscriptionCriteria::all()).await.unwrap()[0];
    let warning = view.warning.as_deref().expect("the warning is kept with the subscription");
    assert!(warning.contains("duplicate window") && warning.contains("from position 1"), "{warning}");
    assert!(view.warning_at.is_some());
    assert_eq!(view.status, reel_core::SubscriptionStatus::Active, "a warning is not a failure");
    // Which is why the relay warns: past the window, the broker does store them again.
    assert_eq!(stored_messages(NATS, &name).await, 200);
    delete_stream(NATS, &name).await;
}

/// A nats-server of the test's own with JetStream, storing in `dir`.
fn private_nats(dir: &std::path::Path) -> PrivateServer {
    let dir = dir.to_str().unwrap();
    PrivateServer::start(
        &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        &["-a", "127.0.0.1", "-p", "{port}", "-js", "-sd", dir],
    )
}

fn nats_url(server: &PrivateServer) -> String {
    format!("nats://127.0.0.1:{}", server.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_retried_visibly_until_the_broker_returns() {
    let data = tempfile::tempdir().unwrap();
    let mut nats = private_nats(data.path());
    let (name, subjects) = unique();
    let f = Arc::new(fixture(options(&nats_url(&nats), &name, &subjects), spec().park_failures(), 1).await);
    append(&f.store, 100, 100).await;
    let head = f.store.head().await.unwrap();
    let runner = {
        let f = f.clone();
        tokio::spawn(async move { relay_until_caught_up(&f.store, &f.engine, Duration::from_secs(120)).await })
    };
    // Stop the broker once the relay is part-way.
    wait_until_relaying(&f.engine).await;
    nats.stop();
    // While it is down the relay is in retry, and says why; it does not skip or park anything
    // (one retry is all an ordinary failure gets here).
    let during = wait_for_outage(&f.engine, 0, Duration::from_secs(30)).await;
    assert!(during.position < head, "the outage came before the end");
    // Each attempt waits out the ack timeout (2 s here), so give the retries time to pile up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let still = f.engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap().remove(0);
        if still.retry_attempt > 1 {
            break;
        }
        assert!(Instant::now() < deadline, "retried more often than the ordinary limit: {still:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(f.engine.overview(&SubscriptionCriteria::all()).await.unwrap()[0].parked.is_empty(), "nothing parked");

    nats.restart();
    runner.await.unwrap();
    let consumer = durable_consumer(&nats_url(&nats), &name).await;
    let received = receive(&consumer, 10_000).await;
    assert_relayed_exactly_once(&f.store, &received, &[]).await;
}
