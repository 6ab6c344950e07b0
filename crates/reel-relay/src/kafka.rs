//! Kafka: one record per event, key = stream name, idempotent producer with `acks=all`.
//!
//! The key keeps each Reel stream in one partition, so a consumer sees it in order. The
//! producer is idempotent and gapless (`enable.gapless.guarantee`): the broker never stores a
//! later record of a partition after an earlier one failed, and if librdkafka cannot promise
//! that any more it raises a fatal error, on which the sink builds a new producer and the relay
//! replays from the first record without a delivery report. The position is saved only after
//! the delivery reports: every record before it is stored by the broker.
//!
//! Kafka has no broker-side dedupe across producer sessions, so a replay after a crash or a
//! reset can store a record again: every record carries the event id in its `reel-event-id`
//! header, which is how a consumer recognises it (exactly once in effect, by id).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use reel_core::RecordedEvent;

use crate::envelope::{Envelope, Payload};
use crate::relay::{Delivery, DeliveryError, Sink};
use crate::template::KeyTemplate;

/// Where and how a Kafka relay publishes.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port,…` of the brokers.
    pub brokers: String,
    /// The topic of each event; characters Kafka topic names cannot hold become `_`.
    pub topics: KeyTemplate,
    /// Partitions of a topic the relay creates (an existing topic is used as it is).
    pub partitions: i32,
    /// How long librdkafka gathers records into a request (`linger.ms`).
    pub linger: Duration,
    /// How long a record may wait for its delivery report before it counts as failed, and the
    /// broker as unavailable (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// The event's data, or a CloudEvent.
    pub payload: Payload,
}

impl KafkaOptions {
    /// The defaults: topic `reel.{category}`, 3 partitions per created topic, 5 ms linger, 30 s
    /// delivery timeout.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topics: KeyTemplate::parse("reel.{category}").expect("the default template is valid"),
            partitions: 3,
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(30),
            payload: Payload::Data,
        }
    }

    fn producer(&self) -> Result<FutureProducer, KafkaError> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("message.timeout.ms", self.delivery_timeout.as_millis().max(1).to_string())
            .set("socket.keepalive.enable", "true")
            .create()
    }
}

/// Writes `value` as part of a topic name: ASCII letters, digits, `.`, `_` and `-` are kept,
/// every other character becomes `_`.
pub fn escape_topic(value: &str, out: &mut String) {
    out.extend(value.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }));
}

/// Publishes to Kafka.
pub struct KafkaSink {
    options: KafkaOptions,
    producer: Mutex<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    topics_known: Mutex<HashSet<String>>,
}

impl KafkaSink {
    /// Builds the producer and checks that a broker answers.
    pub async fn connect(options: KafkaOptions) -> Result<Self, KafkaError> {
        let producer = options.producer()?;
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &options.brokers).create()?;
        let probe = producer.clone();
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, Duration::from_secs(10)))
            .await
            .map_err(|_| KafkaError::Canceled)??;
        Ok(Self { options, producer: Mutex::new(producer), admin, topics_known: Mutex::new(HashSet::new()) })
    }

    /// Creates `topics` that the sink has not used yet (an existing topic is fine).
    async fn ensure_topics(&self, topics: &[&str]) -> Result<(), DeliveryError> {
        let missing: Vec<&str> = {
            let known = self.topics_known.lock().map_err(|_| DeliveryError::Unavailable("poisoned".into()))?;
            let mut missing: Vec<&str> = topics.iter().copied().filter(|t| !known.contains(*t)).collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic> =
            missing.iter().map(|t| NewTopic::new(t, self.options.partitions, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .admin
            .create_topics(&new, &options)
            .await
            .map_err(|e| DeliveryError::Unavailable(format!("Kafka: creating topics: {e}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(DeliveryError::Refused(format!("Kafka: cannot create topic {topic}: {code}")))
                }
            }
        }
        if let Ok(mut known) = self.topics_known.lock() {
            known.extend(missing.iter().map(|t| t.to_string()));
        }
        Ok(())
    }

    fn producer(&self) -> FutureProducer {
        self.producer.lock().map(|p| p.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// After a fatal error (the gapless promise could not be kept), a new producer session.
    fn renew_producer_if_fatal(&self, producer: &FutureProducer) {
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::warn!(%code, %reason, "Kafka producer hit a fatal error; starting a new producer session");
            if let (Ok(fresh), Ok(mut slot)) = (self.options.producer(), self.producer.lock()) {
                *slot = fresh;
            }
        }
    }
}

fn classify(error: &KafkaError) -> DeliveryError {
    let unavailable = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NotEnoughReplicas
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::NetworkException
        )
    ) || matches!(error, KafkaError::Canceled);
    if unavailable {
        DeliveryError::Unavailable(format!("Kafka: {error}"))
    } else {
        DeliveryError::Refused(format!("Kafka: {error}"))
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn publish(&self, batch: &[RecordedEvent]) -> Delivery {
        let topics: Vec<String> = batch.iter().map(|e| self.options.topics.render_with(e, escape_topic)).collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        if let Err(error) = self.ensure_topics(&names).await {
            return Delivery { acknowledged: 0, error: Some(error) };
        }
        let producer = self.producer();
        let mut failure: Option<(usize, DeliveryError)> = None;
        let mut pending: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(batch.len());
        for (index, event) in batch.iter().enumerate() {
            let mut headers = OwnedHeaders::new();
            for (name, value) in Envelope::of(event).headers {
                headers = headers.insert(Header { key: name, value: Some(value.as_str()) });
            }
            let payload = self.options.payload.of(event);
            let mut record =
                FutureRecord::to(&topics[index]).key(event.stream.as_str()).payload(payload.as_ref()).headers(headers);
            // A full local queue waits for the reports in flight; any other refusal to enqueue
            // (a record over `message.max.bytes`…) stops the batch right here.
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((index, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => {
                        failure = Some((index, classify(&error)));
                        break;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        for (index, delivery) in pending {
            let error = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((error, _))) => classify(&error),
                Err(_) => DeliveryError::Unavailable("Kafka: the producer was dropped before reporting".into()),
            };
            if failure.as_ref().is_none_or(|(first, _)| index < *first) {
                failure = Some((index, error));
            }
        }
        self.renew_producer_if_fatal(&producer);
        match failure {
            None => Delivery::all(batch.len()),
            Some((index, error)) => Delivery { acknowledged: index, error: Some(error) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_keep_only_what_kafka_allows() {
        let mut out = String::new();
        escape_topic("unit PL/1.ü", &mut out);
        assert_eq!(out, "unit_PL_1._");
    }
}
