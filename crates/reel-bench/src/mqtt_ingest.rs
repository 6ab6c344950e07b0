//! `reel bench relay --brokers mqtt`: the MQTT bridge's ingest (device messages → the store)
//! beside a plain subscriber of the same library that acknowledges each message as it comes, on
//! the same broker, with the same messages and the same publisher.
//!
//! Devices publish single-event QoS 1 messages round-robin over 100 device topics. The publisher
//! keeps at most 500 messages ahead of the receiver, because Mosquitto drops QoS 1 messages
//! queued beyond `max_queued_messages` (1,000 by default) for a subscriber that lags.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use reel_core::EventStore;
use reel_relay::{MqttBridgeOptions, MqttIngest};
use reel_sqlite::SqliteStore;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::{measure_async, with_ratio_named, Row};

/// How far the publisher may run ahead of what was received.
const WINDOW: u64 = 500;

/// Plain subscriber and bridge ingest rows, the ingest's with its ratio to the plain one.
pub(super) async fn bench_mqtt_ingest(
    dir: &std::path::Path,
    host: &str,
    port: u16,
    events: u64,
    event_size: usize,
    run: &str,
) -> Result<Vec<Row>> {
    let data = "x".repeat(event_size.saturating_sub(40).max(1));
    let tag = &run[run.len() - 10..];

    // The plain subscriber: receives, acknowledges, counts.
    let received = Arc::new(AtomicU64::new(0));
    let topic_root = format!("reelbench/{run}/plain");
    let mut options = MqttOptions::new(format!("bp{tag}"), host, port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_clean_session(true);
    let (subscriber, mut connection) = AsyncClient::new(options, 1_000);
    subscriber.subscribe(format!("{topic_root}/devices/+/events"), QoS::AtLeastOnce).await?;
    let counter = received.clone();
    let (ready_sender, ready) = tokio::sync::oneshot::channel::<()>();
    let plain_loop = tokio::spawn(async move {
        let mut ready_sender = Some(ready_sender);
        loop {
            match connection.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = ready_sender.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => return Err::<(), _>(anyhow!("the plain subscriber lost the broker: {e}")),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .map_err(|_| anyhow!("Mosquitto at {host}:{port} did not answer"))??;
    let publisher = Publisher::connect(host, port, &format!("bq{tag}"))?;
    let plain = measure_async("mqtt: plain subscriber, QoS 1, acknowledged on receipt".into(), events, async {
        publisher.publish_all(&topic_root, events, &data, || received.load(Ordering::Relaxed)).await
    })
    .await?;
    plain_loop.abort();

    // The bridge: the same messages stored in a store of its own.
    let store = Arc::new(SqliteStore::open(dir.join(format!("mqtt-{run}.db")))?);
    let topic_root = format!("reelbench/{run}/ingest");
    let mut options = MqttBridgeOptions::new(host, port);
    options.client_id = format!("bi{tag}");
    options.events_topic = format!("{topic_root}/devices/+/events");
    options.validate().map_err(|e| anyhow!(e))?;
    let ingest = Arc::new(MqttIngest::new(options, store.clone()));
    let counts = ingest.counts();
    let (stop, running) = ingest.spawn();
    while counts.connections.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The subscription goes out right after the connection; give the broker a moment for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handled = || counts.messages.load(Ordering::Relaxed) + counts.dead_lettered.load(Ordering::Relaxed);
    let ingest_row = measure_async("mqtt: bridge ingest into the store, QoS 1".into(), events, async {
        publisher.publish_all(&topic_root, events, &data, handled).await
    })
    .await?;
    let _ = stop.send(());
    running.await??;
    let stored = store.head().await?.0;
    if stored != events || counts.dead_lettered.load(Ordering::Relaxed) != 0 {
        anyhow::bail!("the bridge stored {stored} of {events} events");
    }
    let plain_rate = plain.events_per_sec;
    Ok(vec![plain, with_ratio_named(ingest_row, plain_rate, "the plain subscriber")])
}

/// One device-side client publishing for all the simulated devices.
struct Publisher {
    client: AsyncClient,
    _connection: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn connect(host: &str, port: u16, id: &str) -> Result<Self> {
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_inflight(1_000);
        let (client, mut connection) = AsyncClient::new(options, 10_000);
        let driver = tokio::spawn(async move {
            loop {
                if let Err(e) = connection.poll().await {
                    eprintln!("bench publisher lost the broker: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Ok(Self { client, _connection: driver })
    }

    /// Publishes `events` messages (one event each, device by device in turn) and returns when
    /// `done()` reaches `events`, never more than [`WINDOW`] ahead of it.
    async fn publish_all(&self, root: &str, events: u64, data: &str, done: impl Fn() -> u64) -> Result<()> {
        for n in 0..events {
            while n >= done() + WINDOW {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let device = n % 100;
            let payload = format!(
                r#"{{"id":"{}","type":"LockerOpened","data":{{"n":{n},"pad":"{data}"}}}}"#,
                uuid::Uuid::now_v7()
            );
            self.client.publish(format!("{root}/devices/D{device}/events"), QoS::AtLeastOnce, false, payload).await?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while done() < events {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("only {} of {events} messages arrived in 2 minutes", done());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        Ok(())
    }
}
