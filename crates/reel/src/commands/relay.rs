//! `reel relay redis|nats|kafka …`: relay the log to a broker as an ordinary subscription.
//!
//! Same lifecycle, retries, leases and operator commands as `reel consume`; the handler is a
//! `reel_relay::Sink`, and the position advances only over what the broker acknowledged. Every
//! flag is checked before anything connects, so a typo is a one-line error, not a timeout.

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use reel_relay::{
    JetStreamOptions, JetStreamSink, KafkaOptions, KafkaSink, KeyTemplate, Payload, RedisStreamsSink, Relay, Sink,
};

use super::consume::{run_subscription, seconds, SubscriberArgs};
use crate::exit::InvalidInput;
use crate::Cli;

#[derive(Args, Debug)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub sink: RelaySink,
}

#[derive(Subcommand, Debug)]
pub enum RelaySink {
    /// XADD each event to a Redis stream key, entry id = the event's position (a replay is
    /// refused by Redis itself, with no time window).
    Redis(RedisRelayArgs),
    /// Publish each event to NATS JetStream with Nats-Msg-Id = the event id and wait for the
    /// acks (a replay within the stream's duplicate window is dropped by the broker).
    Nats(NatsRelayArgs),
    /// Produce each event to Kafka, key = stream name (one stream stays in one partition, in
    /// order), idempotent producer, acks=all; the event id is in the reel-event-id header.
    Kafka(KafkaRelayArgs),
}

/// What every relay takes besides its broker's flags.
#[derive(Args, Debug)]
pub struct RelayCommonArgs {
    #[command(flatten)]
    pub subscriber: SubscriberArgs,
    /// Group, for operating several subscriptions together.
    #[arg(long, default_value = "relay")]
    pub group: String,
    /// Relay only streams whose name starts with this (repeatable); others are passed over.
    #[arg(long)]
    pub stream_prefix: Vec<String>,
    /// Message payload: the event's data unchanged, or a CloudEvent 1.0 (structured JSON,
    /// `id` = the event id, `subject` = the stream, `reelposition`, `reelstreamversion`).
    #[arg(long, value_enum, default_value_t = PayloadArg::Data)]
    pub payload: PayloadArg,
}

/// `--payload` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PayloadArg {
    Data,
    Cloudevents,
}

impl From<PayloadArg> for Payload {
    fn from(value: PayloadArg) -> Self {
        match value {
            PayloadArg::Data => Payload::Data,
            PayloadArg::Cloudevents => Payload::CloudEvent,
        }
    }
}

#[derive(Args, Debug)]
pub struct RedisRelayArgs {
    #[command(flatten)]
    pub common: RelayCommonArgs,
    /// Redis to publish to.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// Stream key per event: {category}, {stream} and {type} are replaced.
    #[arg(long, default_value = "reel:{category}")]
    pub key: String,
    /// Trim each key to about this many entries (XADD MAXLEN ~).
    #[arg(long)]
    pub maxlen: Option<u64>,
}

#[derive(Args, Debug)]
pub struct NatsRelayArgs {
    #[command(flatten)]
    pub common: RelayCommonArgs,
    /// NATS server to publish to.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// JetStream stream holding the subjects (created when missing, verified when present).
    #[arg(long, default_value = "REEL")]
    pub stream: String,
    /// Subject per event: {category}, {stream} and {type} are replaced, with `.`, `*`, `>`,
    /// `%`, whitespace and non-ASCII bytes written as %XX.
    #[arg(long, default_value = "reel.{category}.{stream}")]
    pub subject: String,
    /// Seconds of the stream's duplicate window (a replay within it is dropped by the broker;
    /// the relay warns when it replays older events).
    #[arg(long, default_value_t = 120.0)]
    pub duplicate_window: f64,
    /// Seconds to wait for a publish ack before the broker counts as unavailable.
    #[arg(long, default_value_t = 5.0)]
    pub ack_timeout: f64,
}

#[derive(Args, Debug)]
pub struct KafkaRelayArgs {
    #[command(flatten)]
    pub common: RelayCommonArgs,
    /// Brokers to bootstrap from (host:port, comma-separated).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic per event: {category}, {id}, {stream} and {type} are replaced; characters Kafka
    /// topic names cannot hold become `_`. A topic that does not exist is created.
    #[arg(long, default_value = "reel.{category}")]
    pub topic: String,
    /// Partitions of a topic the relay creates.
    #[arg(long, default_value_t = 3)]
    pub topic_partitions: i32,
    /// Milliseconds librdkafka gathers records into one request (linger.ms).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Seconds a record may wait for its delivery report before the broker counts as unavailable.
    #[arg(long, default_value_t = 30.0)]
    pub delivery_timeout: f64,
}

pub async fn run(cli: &Cli, args: &RelayArgs) -> Result<()> {
    match &args.sink {
        RelaySink::Redis(redis) => {
            let keys = template("--key", &redis.key)?;
            if !redis.url.starts_with("redis://") {
                return Err(anyhow!(InvalidInput(format!("--url must be a redis:// URL, got {:?}", redis.url))));
            }
            check_common(&redis.common)?;
            let sink = RedisStreamsSink::connect(&redis.url, keys, redis.maxlen)
                .await
                .map_err(|e| anyhow!("cannot connect to Redis at {}: {e}", redis.url))?
                .with_payload(redis.common.payload.into());
            relay(cli, &redis.common, sink).await
        }
        RelaySink::Nats(nats) => {
            let mut options = JetStreamOptions::new(nats.url.clone());
            if !nats.url.starts_with("nats://") {
                return Err(anyhow!(InvalidInput(format!("--url must be a nats:// URL, got {:?}", nats.url))));
            }
            if nats.stream.is_empty() || nats.stream.contains(['.', '*', '>', ' ', '/', '\\']) {
                return Err(anyhow!(InvalidInput(format!(
                    "--stream {:?} is not a JetStream stream name (no . * > / \\ or spaces)",
                    nats.stream
                ))));
            }
            options.stream = nats.stream.clone();
            options.subjects = template("--subject", &nats.subject)?;
            options.duplicate_window = seconds(nats.duplicate_window, "--duplicate-window")?;
            options.ack_timeout = seconds(nats.ack_timeout, "--ack-timeout")?;
            options.payload = nats.common.payload.into();
            check_common(&nats.common)?;
            let sink = JetStreamSink::connect(options).await?;
            relay(cli, &nats.common, sink).await
        }
        RelaySink::Kafka(kafka) => {
            let mut options = KafkaOptions::new(kafka.brokers.clone());
            options.topics = template("--topic", &kafka.topic)?;
            if !(1..=10_000).contains(&kafka.topic_partitions) {
                return Err(anyhow!(InvalidInput("--topic-partitions must be between 1 and 10000".into())));
            }
            if kafka.brokers.trim().is_empty() || kafka.brokers.contains("://") {
                return Err(anyhow!(InvalidInput(format!(
                    "--brokers must be host:port[,host:port…], got {:?}",
                    kafka.brokers
                ))));
            }
            if kafka.linger_ms > 60_000 {
                return Err(anyhow!(InvalidInput("--linger-ms must be at most 60000".into())));
            }
            options.partitions = kafka.topic_partitions;
            options.linger = std::time::Duration::from_millis(kafka.linger_ms);
            options.delivery_timeout = seconds(kafka.delivery_timeout, "--delivery-timeout")?;
            options.payload = kafka.common.payload.into();
            check_common(&kafka.common)?;
            let sink = KafkaSink::connect(options)
                .await
                .map_err(|e| anyhow!("cannot reach Kafka at {}: {e}", kafka.brokers))?;
            relay(cli, &kafka.common, sink).await
        }
    }
}

pub(crate) fn template(flag: &str, text: &str) -> Result<KeyTemplate> {
    KeyTemplate::parse(text).map_err(|e| anyhow!(InvalidInput(format!("{flag}: {e}"))))
}

fn check_common(common: &RelayCommonArgs) -> Result<()> {
    if common.stream_prefix.iter().any(String::is_empty) {
        return Err(anyhow!(InvalidInput("--stream-prefix must not be empty".into())));
    }
    common.subscriber.check()
}

async fn relay(cli: &Cli, common: &RelayCommonArgs, sink: impl Sink) -> Result<()> {
    let prefixes = common.stream_prefix.clone();
    run_subscription(cli, &common.subscriber, &common.group, |spec| {
        Ok(Relay::new(spec, sink).with_stream_prefixes(prefixes).into_shared())
    })
    .await
}
