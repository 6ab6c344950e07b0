//! The MQTT bridge, for devices that speak MQTT rather than HTTP.
//!
//! - **In** ([`MqttIngest`]): device events published on `devices/<NAME>/events` (QoS 1) are
//!   appended to the device's stream (`unit-<NAME>`) with the event ids the device gave, so a
//!   redelivery by the broker is recognised by the store's idempotency and stores nothing
//!   twice. A message is acknowledged to the broker only after its events are stored; the
//!   session is persistent, so what devices publish while the bridge is down waits at the
//!   broker. A payload that cannot be stored (not JSON, no id, an invalid type, an id reused
//!   with other content…) goes to a dead-letter stream with the reason, is acknowledged, and
//!   never blocks the next message.
//! - **Out** ([`MqttConfigSink`], a relay sink): events of the device config streams
//!   (`unitconfig-<NAME>`) are published to `devices/<NAME>/config`, retained and QoS 1, so a
//!   device that subscribes later gets the latest config at once.
//!
//! A payload is one event or a JSON array of them:
//! `{"id": "<uuid>", "type": "LockerOpened", "data": {…}, "metadata": {…}, "tags": […]}` (`data`
//! defaults to `{}`; `metadata` and `tags` are optional).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use reel_core::{EventId, EventStore, ExpectedVersion, NewEvent, RecordedEvent, ReelError, StreamName};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use serde::Deserialize;
use tokio::sync::{mpsc, Mutex};

use crate::relay::{Delivery, DeliveryError, Sink};
use crate::template::{percent_escape, KeyTemplate};

/// Where the bridge connects and which names it uses.
#[derive(Debug, Clone)]
pub struct MqttBridgeOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id prefix; the ingest connection adds `-in`, the config relay `-out`. The broker
    /// keeps the ingest session under it, so it must be the same across restarts.
    pub client_id: String,
    /// Topic filter of device events, with `+` where the device name is.
    pub events_topic: String,
    /// Stream of a device's events; `{device}` is replaced by the name from the topic.
    pub device_stream: String,
    /// Stream that receives what cannot be stored, with the reason.
    pub dead_letter_stream: StreamName,
}

impl MqttBridgeOptions {
    /// The defaults: `devices/+/events` into `unit-{device}`, dead letters in `mqttdeadletter-bridge`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: "reel-bridge".into(),
            events_topic: "devices/+/events".into(),
            device_stream: "unit-{device}".into(),
            dead_letter_stream: StreamName::new("mqttdeadletter-bridge").expect("valid"),
        }
    }

    /// Checks the templates: one `+` level in the topic filter, `{device}` in the stream.
    pub fn validate(&self) -> Result<(), String> {
        let levels: Vec<&str> = self.events_topic.split('/').collect();
        if levels.iter().filter(|l| **l == "+").count() != 1 || levels.iter().any(|l| l.contains('#')) {
            return Err(format!(
                "events topic {:?} must have exactly one `+` level (the device name) and no `#`",
                self.events_topic
            ));
        }
        if !self.device_stream.contains("{device}") {
            return Err(format!("device stream {:?} must contain {{device}}", self.device_stream));
        }
        if self.client_id.is_empty() || self.client_id.len() > 20 {
            return Err("client id must be 1 to 20 characters".into());
        }
        Ok(())
    }

    fn mqtt(&self, suffix: &str, clean: bool) -> MqttOptions {
        let mut options = MqttOptions::new(format!("{}-{suffix}", self.client_id), &self.host, self.port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_session(clean);
        options.set_manual_acks(true);
        options.set_max_packet_size(1 << 20, 1 << 20);
        options
    }

    /// The device name in `topic`, when it matches the events filter.
    fn device_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let filter: Vec<&str> = self.events_topic.split('/').collect();
        let levels: Vec<&'a str> = topic.split('/').collect();
        if filter.len() != levels.len() {
            return None;
        }
        let mut device = None;
        for (f, l) in filter.iter().zip(&levels) {
            match *f {
                "+" => device = Some(*l),
                text if text == *l => {}
                _ => return None,
            }
        }
        device.filter(|d| !d.is_empty())
    }
}

/// Most messages stored in one round. The broker's in-flight window (Mosquitto's
/// `max_inflight_messages`, 20 by default) is what usually bounds a round.
const MAX_ROUND: usize = 1_000;

/// Counts of what the ingest did since it started.
#[derive(Debug, Default)]
pub struct IngestCounts {
    /// MQTT messages whose events are stored (or were already: a redelivery).
    pub messages: AtomicU64,
    /// Events in those messages.
    pub events: AtomicU64,
    /// Messages sent to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Connections made to the broker (1 while it never dropped).
    pub connections: AtomicU64,
}

/// Device events from MQTT into the store.
pub struct MqttIngest {
    options: MqttBridgeOptions,
    store: Arc<dyn EventStore>,
    counts: Arc<IngestCounts>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEvent {
    id: EventId,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Tags for queries and conditions (`locker:PL-1/A`), checked like any event's.
    #[serde(default)]
    tags: Vec<String>,
}

/// Why a message went to the dead-letter stream.
fn rejected_event(topic: &str, payload: &[u8], reason: &str) -> NewEvent {
    // The same message redelivered gets the same id, so it is dead-lettered once.
    let mut key = topic.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(payload);
    let id = EventId(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &key));
    let body = match std::str::from_utf8(payload) {
        Ok(text) => serde_json::json!({ "topic": topic, "reason": reason, "payload": text }),
        Err(_) => serde_json::json!({
            "topic": topic, "reason": reason,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    };
    NewEvent::new("MqttMessageRejected", body.to_string()).with_id(id)
}

/// Errors that say "this message is bad", not "the store is away".
fn is_bad_input(error: &ReelError) -> bool {
    matches!(
        error,
        ReelError::InvalidStreamName { .. }
            | ReelError::InvalidEvent { .. }
            | ReelError::TooLarge { .. }
            | ReelError::DuplicateEventId { .. }
            | ReelError::InvalidArgument(_)
    )
}

impl MqttIngest {
    /// An ingest into `store`; call [`MqttIngest::run`] to connect and follow the topic.
    pub fn new(options: MqttBridgeOptions, store: Arc<dyn EventStore>) -> Self {
        Self { options, store, counts: Arc::default() }
    }

    /// What it did so far.
    pub fn counts(&self) -> Arc<IngestCounts> {
        self.counts.clone()
    }

    /// Runs [`MqttIngest::run`] in a task of its own; it stops when the returned sender is used
    /// or dropped, and the task ends with `run`'s outcome.
    pub fn spawn(
        self: &Arc<Self>,
    ) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), ReelError>>) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ingest = self.clone();
        let running = tokio::spawn(async move {
            ingest
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        });
        (stop, running)
    }

    /// Follows the events topic until `stop` resolves, reconnecting after broker outages.
    ///
    /// The connection runs in a task of its own and hands messages over a channel, so keep-alive
    /// pings and acknowledgements keep flowing while a message waits for the store (a slow
    /// commit, or a store that is away and retried): a bridge blocked on its store must not
    /// look dead to the broker, which would drop the connection and, on some brokers, messages
    /// that were in flight on it.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) -> Result<(), ReelError> {
        let (client, events) = AsyncClient::new(self.options.mqtt("in", false), 1_000);
        // The broker sends at most its in-flight window of unacknowledged QoS 1 messages, so
        // this channel stays short; it only fills with QoS 0 floods, and then the connection
        // waits for the store like the store waits for the connection.
        let (messages, mut received) = mpsc::channel::<Publish>(1_000);
        let connection = tokio::spawn(drive_in(
            events,
            client.clone(),
            self.options.events_topic.clone(),
            messages,
            self.counts.clone(),
        ));
        tokio::pin!(stop);
        let outcome = loop {
            let first = tokio::select! {
                _ = &mut stop => break Ok(()),
                publish = received.recv() => publish,
            };
            let Some(first) = first else {
                break Err(ReelError::Storage {
                    context: "following the MQTT events topic".into(),
                    message: "the connection task ended".into(),
                });
            };
            // Whatever else has arrived is stored together: each device's messages in order, the
            // devices side by side, so their appends share the store's group commits.
            let mut round = vec![first];
            while round.len() < MAX_ROUND {
                match received.try_recv() {
                    Ok(publish) => round.push(publish),
                    Err(_) => break,
                }
            }
            self.ingest_round(&round).await;
            // Acknowledged in the order received (as MQTT asks), each only after it is stored.
            for publish in &round {
                if let Err(e) = client.try_ack(publish) {
                    tracing::warn!(error = %e, "could not queue the MQTT ack; the broker will redeliver");
                }
            }
        };
        connection.abort();
        outcome
    }

    /// Stores the messages of one round: one device's messages one after the other, in the
    /// order they came, and different devices concurrently.
    async fn ingest_round(&self, round: &[Publish]) {
        let mut by_device: Vec<Vec<&Publish>> = Vec::new();
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for publish in round {
            let device = self.options.device_of(&publish.topic).unwrap_or("");
            let slot = *index.entry(device).or_insert_with(|| {
                by_device.push(Vec::new());
                by_device.len() - 1
            });
            by_device[slot].push(publish);
        }
        futures_util::future::join_all(by_device.into_iter().map(|messages| async move {
            for publish in messages {
                self.ingest(publish).await;
            }
        }))
        .await;
    }

    /// Stores one message's events, or dead-letters it; retries while the store is away.
    async fn ingest(&self, publish: &Publish) {
        let topic = publish.topic.as_str();
        let outcome = match self.parse(topic, &publish.payload) {
            Err(reason) => Err(reason),
            Ok((stream, events)) => {
                let count = events.len() as u64;
                let mut delay = Duration::from_millis(50);
                loop {
                    match self.store.append(&stream, ExpectedVersion::Any, events.clone()).await {
                        Ok(_) => break Ok(count),
                        Err(e) if is_bad_input(&e) => break Err(e.to_string()),
                        Err(e) => {
                            tracing::warn!(error = %e, %stream, "store refused device events; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        };
        match outcome {
            Ok(count) => {
                self.counts.messages.fetch_add(1, Ordering::Relaxed);
                self.counts.events.fetch_add(count, Ordering::Relaxed);
            }
            Err(reason) => self.dead_letter(topic, &publish.payload, &reason).await,
        }
    }

    fn parse(&self, topic: &str, payload: &[u8]) -> Result<(StreamName, Vec<NewEvent>), String> {
        let device = self
            .options
            .device_of(topic)
            .ok_or_else(|| format!("topic {topic:?} does not match {:?}", self.options.events_topic))?;
        let stream =
            StreamName::new(self.options.device_stream.replace("{device}", device)).map_err(|e| e.to_string())?;
        let payload: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| format!("not JSON (one event or an array of events): {e}"))?;
        let items = match payload {
            serde_json::Value::Array(items) => items,
            one @ serde_json::Value::Object(_) => vec![one],
            _ => return Err("neither an event object nor an array of events".into()),
        };
        let events = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| serde_json::from_value::<DeviceEvent>(item).map_err(|e| format!("event {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if events.is_empty() {
            return Err("an empty array of events".into());
        }
        let events = events
            .into_iter()
            .map(|e| {
                if e.event_type.is_empty() {
                    return Err("an event without a type".to_string());
                }
                let data = e.data.map_or_else(|| "{}".to_string(), |d| d.to_string());
                let mut event = NewEvent::new(e.event_type, data).with_id(e.id).with_tags(e.tags);
                if let Some(metadata) = e.metadata {
                    event = event.with_metadata(metadata);
                }
                Ok(event)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((stream, events))
    }

    async fn dead_letter(&self, topic: &str, payload: &[u8], reason: &str) {
        tracing::warn!(%topic, %reason, "MQTT message dead-lettered");
        let event = rejected_event(topic, payload, reason);
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.append(&self.options.dead_letter_stream, ExpectedVersion::Any, vec![event.clone()]).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store a dead letter; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.counts.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes `value` as part of an MQTT topic: `/`, `+`, `#`, `%`, whitespace and non-ASCII bytes
/// as `%XX`, so a stream name never adds a level or a wildcard.
pub fn escape_topic_level(value: &str, out: &mut String) {
    percent_escape(value, out, |byte| byte.is_ascii_graphic() && !matches!(byte, b'/' | b'+' | b'#' | b'%'));
}

/// Publishes config events to their device's topic, retained and QoS 1, one at a time: the
/// next is sent after the broker's PUBACK of the previous, so the retained message a device
/// finds is the latest config.
pub struct MqttConfigSink {
    client: AsyncClient,
    topics: KeyTemplate,
    acks: Mutex<mpsc::Receiver<Result<(), String>>>,
    timeout: Duration,
}

impl MqttConfigSink {
    /// Connects to the broker of `options` (client id `<prefix>-out`); `topics` names each
    /// event's topic, e.g. `devices/{id}/config`.
    pub fn connect(options: &MqttBridgeOptions, topics: KeyTemplate) -> Self {
        let (client, events) = AsyncClient::new(options.mqtt("out", true), 100);
        let (acks, receiver) = mpsc::channel(100);
        tokio::spawn(drive_out(events, acks));
        Self { client, topics, acks: Mutex::new(receiver), timeout: Duration::from_secs(5) }
    }
}

/// Runs the events connection: subscribes after every connect, forwards each message to the
/// ingest, and reconnects with backoff after an outage. Never waits on the store itself.
async fn drive_in(
    mut events: EventLoop,
    client: AsyncClient,
    topic: String,
    messages: mpsc::Sender<Publish>,
    counts: Arc<IngestCounts>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                counts.connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%topic, "MQTT ingest connected");
                // Subscribing again after each connect is harmless and covers a broker that lost
                // the session. Never an awaiting call here: this loop drains the client's requests.
                if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "could not subscribe to the events topic");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if messages.send(publish).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT broker unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs the config connection; forwards PUBACKs (and connection errors) to the sink.
async fn drive_out(mut events: EventLoop, acks: mpsc::Sender<Result<(), String>>) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                if acks.send(Ok(())).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if acks.try_send(Err(e.to_string())).is_err() && acks.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[async_trait]
impl Sink for MqttConfigSink {
    async fn publish(&self, batch: &[RecordedEvent]) -> Delivery {
        let mut acks = self.acks.lock().await;
        // Errors reported while idle are stale: a publish now starts from a fresh connection attempt.
        while acks.try_recv().is_ok() {}
        for (index, event) in batch.iter().enumerate() {
            let topic = self.topics.render_with(event, escape_topic_level);
            if let Err(e) = self.client.publish(topic, QoS::AtLeastOnce, true, event.data.clone()).await {
                return Delivery { acknowledged: index, error: Some(DeliveryError::Unavailable(format!("MQTT: {e}"))) };
            }
            let answer = tokio::time::timeout(self.timeout, acks.recv()).await;
            match answer {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => return Delivery::unavailable(index, format!("MQTT broker unreachable: {e}")),
                Ok(None) => return Delivery::unavailable(index, "MQTT connection closed"),
                Err(_) => return Delivery::unavailable(index, "MQTT broker did not acknowledge in time"),
            }
        }
        Delivery::all(batch.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_name_comes_from_the_plus_level() {
        let options = MqttBridgeOptions::new("127.0.0.1", 1883);
        assert_eq!(options.device_of("devices/PL-7/events"), Some("PL-7"));
        assert_eq!(options.device_of("devices/PL-7/config"), None);
        assert_eq!(options.device_of("devices//events"), None);
        assert_eq!(options.device_of("devices/a/b/events"), None);
        let mut bad = options.clone();
        bad.events_topic = "devices/#".into();
        assert!(bad.validate().is_err());
        assert!(options.validate().is_ok());
    }

    #[test]
    fn topic_levels_escape_separators_and_wildcards() {
        let mut out = String::new();
        escape_topic_level("a/b+c#d e", &mut out);
        assert_eq!(out, "a%2Fb%2Bc%23d%20e");
    }

    #[test]
    fn a_redelivered_bad_message_gets_the_same_dead_letter_id() {
        let one = rejected_event("devices/x/events", b"not json", "bad");
        let again = rejected_event("devices/x/events", b"not json", "bad");
        let other = rejected_event("devices/y/events", b"not json", "bad");
        assert_eq!(one.id, again.id);
        assert_ne!(one.id, other.id);
    }
}
