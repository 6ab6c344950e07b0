//! `reel bench relay`: each broker's relay (store → engine → sink → broker acknowledgement)
//! beside a plain client of the same library publishing the same messages in batches of the same
//! size, in the same run; then the time from append to the broker's acknowledgement at a fixed
//! rate, through a live worker.
//!
//! Every run writes under names of its own (Redis keys, a JetStream stream, Kafka topics) and
//! removes the Redis keys and the JetStream stream afterwards (tansu keeps topics in memory).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use reel_core::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, Position, ReadAllFilter, RecordedEvent, RunMode,
    SubscriptionCriteria, SubscriptionId,
};
use reel_relay::{
    Delivery, Envelope, JetStreamOptions, JetStreamSink, KafkaOptions, KafkaSink, KeyTemplate, RedisStreamsSink, Relay,
    Sink,
};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{SubscriberSpec, SubscriptionEngine, Worker, WorkerOptions};

use indicatif::ProgressBar;

use super::{bench_stream, measure_async, payload, progress, with_ratio_named, Row};

/// What to measure.
pub(super) struct RelayPlan {
    pub(super) brokers: Vec<Broker>,
    pub(super) events: u64,
    pub(super) batch: usize,
    pub(super) event_size: usize,
    pub(super) latency_seconds: u64,
    pub(super) rate: u64,
    pub(super) redis_url: String,
    pub(super) nats_url: String,
    pub(super) kafka_brokers: String,
    pub(super) mqtt_host: String,
    pub(super) mqtt_port: u16,
}

/// A broker the bench relays to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Redis,
    Nats,
    Kafka,
    /// The MQTT bridge's ingest (device messages into the store), the other way round.
    Mqtt,
}

pub(super) async fn bench_relay(dir: &std::path::Path, plan: &RelayPlan) -> Result<(Vec<Row>, serde_json::Value)> {
    let store = SqliteStore::open(dir.join("relay.db"))?;
    let data = payload(plan.event_size);
    let bar = progress(plan.events, "writing");
    populate_interleaved(&store, plan.events, &data, &bar).await?;
    bar.finish_and_clear();
    let events = read_log(&store, plan.events).await?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut rows = Vec::new();
    let mut extra = serde_json::Map::new();
    // What the relay costs without a broker: reading the log, the engine, a saved position per batch.
    let engine_only = relay_catch_up("no broker", &store, Acknowledging, plan).await?;
    extra.insert("engine_only_events_per_sec".into(), engine_only.events_per_sec.into());
    rows.push(engine_only);
    for broker in &plan.brokers {
        if *broker == Broker::Mqtt {
            let mqtt = super::mqtt_ingest::bench_mqtt_ingest(
                dir,
                &plan.mqtt_host,
                plan.mqtt_port,
                plan.events,
                plan.event_size,
                &run,
            )
            .await
            .context("reel bench relay mqtt")?;
            extra.insert(
                "mqtt".into(),
                serde_json::json!({ "plain_events_per_sec": mqtt[0].events_per_sec,
                    "ingest_events_per_sec": mqtt[1].events_per_sec,
                    "ratio": mqtt[1].events_per_sec / mqtt[0].events_per_sec }),
            );
            rows.extend(mqtt);
            continue;
        }
        let name = format!("{broker:?}").to_lowercase();
        let (baseline_row, relay_row, latency) = bench_broker(*broker, dir, &store, &events, plan, &run)
            .await
            .with_context(|| format!("reel bench relay {name}"))?;
        let baseline_rate = baseline_row.events_per_sec;
        let relay_rate = relay_row.events_per_sec;
        rows.push(baseline_row);
        rows.push(with_ratio_named(relay_row, baseline_rate, "the plain client"));
        println!(
            "{name}: append → broker acknowledgement at {} events/s: p50 {:.2} ms, p99 {:.2} ms over {} events",
            plan.rate, latency.0, latency.1, latency.2
        );
        extra.insert(
            name,
            serde_json::json!({ "plain_events_per_sec": baseline_rate, "relay_events_per_sec": relay_rate,
                "ratio": relay_rate / baseline_rate, "ack_latency_p50_ms": latency.0, "ack_latency_p99_ms": latency.1,
                "latency_events": latency.2, "rate": plan.rate }),
        );
    }
    extra.insert("batch".into(), plan.batch.into());
    Ok((rows, serde_json::Value::Object(extra)))
}

/// Writes `events` single-event appends round-robin over 1,000 streams (as a fleet of devices
/// would), a thousand appends per group commit. A relay never has two events of one stream in
/// flight on JetStream, so long runs of one stream would measure that rule instead.
async fn populate_interleaved(store: &SqliteStore, events: u64, payload: &[u8], bar: &ProgressBar) -> Result<()> {
    let mut written = 0u64;
    while written < events {
        let requests: Vec<AppendRequest> = (written..events.min(written + 1_000))
            .map(|i| {
                AppendRequest::new(
                    bench_stream(i % 1_000),
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Bench", payload.to_vec())],
                )
            })
            .collect();
        written += requests.len() as u64;
        for result in store.append_many(requests).await {
            result?;
        }
        bar.set_position(written);
    }
    Ok(())
}

/// The whole log in memory, for the plain clients to publish the same messages.
async fn read_log(store: &SqliteStore, events: u64) -> Result<Vec<RecordedEvent>> {
    let mut all = Vec::with_capacity(events as usize);
    let mut from = Position(1);
    while (all.len() as u64) < events {
        let page = store.read_all(from, &ReadAllFilter::default(), 10_000).await?;
        anyhow::ensure!(!page.events.is_empty(), "the log ended at {} of {events} events", all.len());
        all.extend(page.events);
        from = page.next;
    }
    Ok(all)
}

/// The plain client's row, the relay's row, and the latency (p50 ms, p99 ms, events).
async fn bench_broker(
    broker: Broker,
    dir: &std::path::Path,
    store: &SqliteStore,
    events: &[RecordedEvent],
    plan: &RelayPlan,
    run: &str,
) -> Result<(Row, Row, (f64, f64, usize))> {
    match broker {
        Broker::Redis => {
            let plain = PlainRedis::connect(&plan.redis_url, &format!("reelbench:{run}:plain")).await?;
            let baseline =
                plain_row(format!("redis: plain XADD pipelines of {}", plan.batch), &plain, events, plan.batch).await?;
            let keys = format!("reelbench:{run}:relay:{{category}}");
            let sink = || async {
                RedisStreamsSink::connect(&plan.redis_url, KeyTemplate::parse(&keys)?, None)
                    .await
                    .map_err(|e| anyhow!("Redis at {}: {e}", plan.redis_url))
            };
            let relay = relay_catch_up("redis", store, sink().await?, plan).await?;
            let latency = ack_latency(dir, sink().await?, plan).await?;
            delete_redis_keys(&plan.redis_url, &format!("reelbench:{run}:*")).await?;
            Ok((baseline, relay, latency))
        }
        Broker::Nats => {
            let stream = format!("REELBENCH{run}").to_uppercase();
            let options = |subjects: &str| -> Result<JetStreamOptions> {
                let mut options = JetStreamOptions::new(plan.nats_url.clone());
                options.stream = stream.clone();
                options.subjects = KeyTemplate::parse(subjects)?;
                Ok(options)
            };
            let plain_subjects = format!("reelbench{run}.plain.{{category}}.{{stream}}");
            // The relay's sink creates the stream (both subject trees) before the clock starts.
            let setup = options(&format!("reelbench{run}.>"))?;
            let _ = JetStreamSink::connect(setup).await?;
            let plain = PlainJetStream::connect(&plan.nats_url, &plain_subjects).await?;
            let baseline = plain_row(
                format!("nats: plain JetStream publishes, acks awaited per {}", plan.batch),
                &plain,
                events,
                plan.batch,
            )
            .await?;
            let relay_subjects = format!("reelbench{run}.relay.{{category}}.{{stream}}");
            let relay =
                relay_catch_up("nats", store, JetStreamSink::connect(options(&relay_subjects)?).await?, plan).await?;
            let latency_subjects = format!("reelbench{run}.live.{{category}}.{{stream}}");
            let latency = ack_latency(dir, JetStreamSink::connect(options(&latency_subjects)?).await?, plan).await?;
            plain.delete_stream(&stream).await?;
            Ok((baseline, relay, latency))
        }
        Broker::Mqtt => unreachable!("the MQTT ingest is measured by mqtt_ingest"),
        Broker::Kafka => {
            let plain = PlainKafka::connect(&plan.kafka_brokers, &format!("reelbench.{run}.plain")).await?;
            let baseline = plain_row(
                format!("kafka: plain idempotent producer, reports awaited per {}", plan.batch),
                &plain,
                events,
                plan.batch,
            )
            .await?;
            let options = |topics: String| -> Result<KafkaOptions> {
                let mut options = KafkaOptions::new(plan.kafka_brokers.clone());
                options.topics = KeyTemplate::parse(&topics)?;
                Ok(options)
            };
            let sink = KafkaSink::connect(options(format!("reelbench.{run}.relay.{{category}}"))?).await?;
            let relay = relay_catch_up("kafka", store, sink, plan).await?;
            let sink = KafkaSink::connect(options(format!("reelbench.{run}.live.{{category}}"))?).await?;
            let latency = ack_latency(dir, sink, plan).await?;
            Ok((baseline, relay, latency))
        }
    }
}

/// A relay from the beginning of the log to its head: boot and run until the position is there.
async fn relay_catch_up(name: &str, store: &SqliteStore, sink: impl Sink, plan: &RelayPlan) -> Result<Row> {
    let id = format!("bench_{}_{}", name.replace(' ', "_"), uuid::Uuid::now_v7().simple());
    let relay = Relay::shared(SubscriberSpec::new(&id, RunMode::FromBeginning)?.in_group("relay"), sink);
    let engine = SubscriptionEngine::new(Arc::new(store.clone()), Arc::new(store.subscription_store()?), vec![relay])?
        .with_batch_size(plan.batch);
    let criteria = SubscriptionCriteria::ids([SubscriptionId::new(id.as_str())?]);
    engine.setup(&criteria, true).await?;
    let head = store.head().await?;
    let count = head.0;
    measure_async(format!("{name}: relay from the store, batches of {}", plan.batch), count, async {
        loop {
            engine.boot(&criteria).await?;
            engine.run(&criteria).await?;
            let subscription = &engine.subscriptions(&criteria).await?[0];
            if subscription.position >= head {
                return Ok(());
            }
            if let Some(error) = &subscription.error {
                anyhow::bail!("the relay failed at {}: {}", subscription.position, error.message);
            }
        }
    })
    .await
}

/// A sink that acknowledges every event at once, publishing nothing.
struct Acknowledging;

#[async_trait]
impl Sink for Acknowledging {
    async fn publish(&self, batch: &[RecordedEvent]) -> Delivery {
        Delivery::all(batch.len())
    }
}

/// Wraps a sink and notes when the broker acknowledged each position.
struct Timed<S> {
    inner: S,
    acknowledged: Arc<Mutex<HashMap<u64, Instant>>>,
}

#[async_trait]
impl<S: Sink> Sink for Timed<S> {
    async fn publish(&self, batch: &[RecordedEvent]) -> Delivery {
        let delivery = self.inner.publish(batch).await;
        let now = Instant::now();
        if let Ok(mut acknowledged) = self.acknowledged.lock() {
            acknowledged.extend(batch[..delivery.acknowledged.min(batch.len())].iter().map(|e| (e.position.0, now)));
        }
        delivery
    }

    fn take_warning(&self) -> Option<String> {
        self.inner.take_warning()
    }
}

/// A worker runs a relay from now on a store of its own; events are appended at the plan's
/// rate; each latency is from the start of its append to the broker's acknowledgement.
async fn ack_latency(dir: &std::path::Path, sink: impl Sink, plan: &RelayPlan) -> Result<(f64, f64, usize)> {
    let store = &SqliteStore::open(dir.join(format!("live-{}.db", uuid::Uuid::now_v7().simple())))?;
    let acknowledged: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let id = format!("bench_live_{}", uuid::Uuid::now_v7().simple());
    let relay = Relay::shared(
        SubscriberSpec::new(&id, RunMode::FromNow)?.in_group("relay"),
        Timed { inner: sink, acknowledged: acknowledged.clone() },
    );
    let engine = SubscriptionEngine::new(Arc::new(store.clone()), Arc::new(store.subscription_store()?), vec![relay])?
        .with_batch_size(plan.batch);
    let criteria = SubscriptionCriteria::ids([SubscriptionId::new(id.as_str())?]);
    engine.setup(&criteria, false).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = WorkerOptions { criteria, ..WorkerOptions::default() };
    let worker = tokio::spawn(Worker::new(engine, options).run(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = plan.latency_seconds * plan.rate;
    let interval = Duration::from_secs_f64(1.0 / plan.rate as f64);
    let started = Instant::now();
    let mut sent = Vec::with_capacity(count as usize);
    for i in 0..count {
        if let Some(wait) = (started + interval.mul_f64(i as f64)).checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let at = Instant::now();
        let result = store
            .append(&bench_stream(8_000 + i % 100), ExpectedVersion::Any, vec![NewEvent::new("Ping", "{}")])
            .await?;
        sent.push((result.first_position.0, at));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = sent.last().map_or(0, |(p, _)| *p);
    while Instant::now() < deadline && !acknowledged.lock().map_err(|_| anyhow!("lock"))?.contains_key(&last) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    worker.await??;
    let acknowledged = acknowledged.lock().map_err(|_| anyhow!("lock"))?;
    let mut latencies: Vec<Duration> =
        sent.iter().filter_map(|(p, at)| Some(acknowledged.get(p)?.saturating_duration_since(*at))).collect();
    anyhow::ensure!(
        latencies.len() == sent.len(),
        "the broker acknowledged {} of {} events",
        latencies.len(),
        sent.len()
    );
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    Ok((quantile(0.5), quantile(0.99), latencies.len()))
}

/// A broker's own client publishing the relay's messages, a batch at a time.
#[async_trait]
trait PlainClient {
    /// Publishes `batch` and waits until the broker acknowledged all of it.
    async fn publish(&self, batch: &[RecordedEvent]) -> Result<()>;
}

/// The plain client's row: every event, in batches of `batch`.
async fn plain_row(name: String, client: &impl PlainClient, events: &[RecordedEvent], batch: usize) -> Result<Row> {
    measure_async(name, events.len() as u64, async {
        for chunk in events.chunks(batch) {
            client.publish(chunk).await?;
        }
        Ok(())
    })
    .await
}

/// The relay's Redis messages from a plain client: a pipeline of XADDs per batch.
struct PlainRedis {
    connection: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl PlainRedis {
    async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let connection = client.get_multiplexed_tokio_connection().await.with_context(|| format!("Redis at {url}"))?;
        Ok(Self { connection, prefix: prefix.to_string() })
    }
}

#[async_trait]
impl PlainClient for PlainRedis {
    async fn publish(&self, batch: &[RecordedEvent]) -> Result<()> {
        let mut pipe = redis::pipe();
        for event in batch {
            let command = pipe.cmd("XADD").arg(format!("{}:{}", self.prefix, event.stream.category()));
            command.arg(format!("{}-0", event.position.0));
            for (name, value) in Envelope::of(event).headers {
                command.arg(name).arg(value);
            }
            command.arg("data").arg(&event.data[..]).ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }
}

async fn delete_redis_keys(url: &str, pattern: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_tokio_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut connection).await?;
    if !keys.is_empty() {
        redis::cmd("DEL").arg(&keys).query_async::<()>(&mut connection).await?;
    }
    Ok(())
}

/// The relay's JetStream messages from a plain client: publish a batch, then await its acks.
struct PlainJetStream {
    context: async_nats::jetstream::Context,
    subjects: KeyTemplate,
}

impl PlainJetStream {
    async fn connect(url: &str, subjects: &str) -> Result<Self> {
        let client = async_nats::connect(url).await.with_context(|| format!("NATS at {url}"))?;
        Ok(Self { context: async_nats::jetstream::new(client), subjects: KeyTemplate::parse(subjects)? })
    }

    async fn delete_stream(&self, stream: &str) -> Result<()> {
        self.context.delete_stream(stream).await.map_err(|e| anyhow!("deleting JetStream stream {stream}: {e}"))?;
        Ok(())
    }
}

#[async_trait]
impl PlainClient for PlainJetStream {
    async fn publish(&self, batch: &[RecordedEvent]) -> Result<()> {
        let mut acks = Vec::with_capacity(batch.len());
        for event in batch {
            let subject = self.subjects.render_with(event, reel_relay::escape_subject_token);
            let mut message = async_nats::jetstream::message::PublishMessage::build()
                .payload(event.data.clone())
                .message_id(event.id.to_string());
            for (name, value) in Envelope::of(event).headers {
                message = message.header(name, value.as_str());
            }
            acks.push(self.context.send_publish(subject, message).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }
}

/// The relay's Kafka records from a plain producer with the relay's settings: send a batch, then
/// await its delivery reports.
struct PlainKafka {
    producer: rdkafka::producer::FutureProducer,
    topic_prefix: String,
}

impl PlainKafka {
    async fn connect(brokers: &str, topic_prefix: &str) -> Result<Self> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()?;
        let admin: AdminClient<DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
        // `populate` writes streams `bench-N`: one category, so one topic.
        let name = format!("{topic_prefix}.bench");
        let topics = [NewTopic::new(&name, 3, TopicReplication::Fixed(1))];
        admin.create_topics(&topics, &AdminOptions::new()).await?;
        Ok(Self { producer, topic_prefix: topic_prefix.to_string() })
    }
}

#[async_trait]
impl PlainClient for PlainKafka {
    async fn publish(&self, batch: &[RecordedEvent]) -> Result<()> {
        use rdkafka::message::{Header, OwnedHeaders};
        let topics: Vec<String> =
            batch.iter().map(|e| format!("{}.{}", self.topic_prefix, e.stream.category())).collect();
        let mut reports = Vec::with_capacity(batch.len());
        for (event, topic) in batch.iter().zip(&topics) {
            let mut headers = OwnedHeaders::new();
            for (name, value) in Envelope::of(event).headers {
                headers = headers.insert(Header { key: name, value: Some(value.as_str()) });
            }
            let record = rdkafka::producer::FutureRecord::to(topic)
                .key(event.stream.as_str())
                .payload(&event.data[..])
                .headers(headers);
            reports.push(self.producer.send_result(record).map_err(|(e, _)| anyhow!("enqueueing a record: {e}"))?);
        }
        for report in reports {
            report.await.map_err(|_| anyhow!("a delivery report was dropped"))?.map_err(|(e, _)| anyhow!("{e}"))?;
        }
        Ok(())
    }
}
