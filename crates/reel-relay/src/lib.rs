//! Relays: Reel subscriptions whose handler publishes each event to a broker.
//!
//! A relay is an ordinary subscription of the engine (id, position, status, retries, leases,
//! partitions; listed, paused, reset and reactivated like any other). What makes it a relay is
//! its [`Sink`] and one rule, the same for every broker:
//!
//! - **At least once toward the broker, exactly once in effect.** The event id (or, on Redis,
//!   the global position) is the message's identity, so the broker itself recognises a replay.
//! - **The position advances only over the gapless prefix the broker acknowledged.** A sink
//!   reports how many of a batch's first events were acknowledged; the engine saves the position
//!   after them and delivers the rest again, starting with the first unacknowledged event, so
//!   one stream's events never reach the broker out of order.
//!
//! ```no_run
//! use std::sync::Arc;
//! use reel_relay::{Relay, RedisStreamsSink, KeyTemplate};
//! use reel_subscriptions::{SubscriberSpec, SubscriptionEngine};
//! use reel_core::RunMode;
//! # async fn example(store: Arc<reel_sqlite::SqliteStore>) -> Result<(), Box<dyn std::error::Error>> {
//! let sink = RedisStreamsSink::connect("redis://127.0.0.1:6379", KeyTemplate::parse("reel:{category}")?, None).await?;
//! let relay = Relay::shared(SubscriberSpec::new("redis_relay", RunMode::FromBeginning)?.in_group("relay"), sink);
//! let engine = SubscriptionEngine::new(store.clone(), Arc::new(store.subscription_store()?), vec![relay])?;
//! engine.setup(&Default::default(), false).await?;
//! engine.run(&Default::default()).await?;
//! # Ok(()) }
//! ```

mod envelope;
mod jetstream;
mod kafka;
mod mqtt;
mod redis_streams;
mod relay;
mod template;

pub use envelope::{Envelope, Payload};
pub use jetstream::{escape_subject_token, JetStreamOptions, JetStreamSetupError, JetStreamSink};
pub use kafka::{escape_topic, KafkaOptions, KafkaSink};
pub use mqtt::{escape_topic_level, IngestCounts, MqttBridgeOptions, MqttConfigSink, MqttIngest};
pub use redis_streams::RedisStreamsSink;
pub use relay::{Delivery, DeliveryError, Relay, Sink};
pub use template::{KeyTemplate, TemplateError};
