//! `reel relay redis|nats|kafka …`: relay the log to a broker as an ordinary subscription.
//!
//! Same lifecycle, retries, leases and operator commands as `reel consume`; the handler is a
//! `reel_relay::Sink`, and the position advances only over what the broker acknowledged. Every
//! flag is checked before anything connects, so a typo is a one-line error, not a timeout.

use anyhow::{anyhow, Result};
use clap::{Args, Parser, Subcommand};
use reel_relay::{
    JetStreamOptions, JetStreamSink, KafkaOptions, KafkaSink, KeyTemplate, Payload, RedisStreamsSink, Relay, Sink,
};

use std::path::Path;

use super::consume::{run_all, seconds, PreparedSubscription, SubscriberArgs};
use super::read::shutdown_signal;
use crate::exit::InvalidInput;
use crate::store::Stores;
use crate::Cli;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_required = false)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub sink: Option<RelaySink>,
    /// Run every relay of this TOML file side by side (`[[relay]]` tables; keys are the flags
    /// of `reel relay SINK` without the dashes, plus `sink` and `id`), as in the README.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// `[[relay]]` tables of a config file, parsed as the command line would parse them.
#[derive(Parser, Debug)]
#[command(name = "reel relay", no_binary_name = false)]
struct RelayTable {
    #[command(subcommand)]
    sink: RelaySink,
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
#[derive(Args, Clone, Debug)]
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
    let relays = match (&args.sink, &args.config) {
        (Some(sink), _) => vec![plan(sink)?],
        (None, Some(path)) => load_config(path)?,
        (None, None) => {
            return Err(anyhow!(InvalidInput(
                "give a sink (reel relay redis|nats|kafka ID …) or --config relays.toml".into()
            )))
        }
    };
    let signal = shutdown_signal();
    let stores = crate::store::open_with_subscriptions(cli).await?;
    let mut runs = Vec::with_capacity(relays.len());
    for relay in relays {
        runs.push(relay.prepare(&stores).await?);
    }
    run_all(runs, signal).await
}

/// Reads a relay config file: every `[[relay]]` is checked (as its flags would be) before any
/// broker is contacted, and ids must differ.
pub fn load_config(path: &Path) -> Result<Vec<RelayPlan>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!(InvalidInput(format!("cannot read {}: {e}", path.display()))))?;
    let tables = parse_config(&text).map_err(|e| anyhow!(InvalidInput(format!("{}: {e}", path.display()))))?;
    let sinks = tables;
    let mut plans = Vec::with_capacity(sinks.len());
    for (i, sink) in sinks.iter().enumerate() {
        let id = &sink.common().subscriber.id;
        let plan = plan(sink).map_err(|e| anyhow!(InvalidInput(format!("{}: relay {id}: {e}", path.display()))))?;
        if sinks[..i].iter().any(|other| other.common().subscriber.id == *id) {
            return Err(anyhow!(InvalidInput(format!("{}: two relays have the id {id:?}", path.display()))));
        }
        plans.push(plan);
    }
    Ok(plans)
}

/// Turns each `[[relay]]` table into the arguments of `reel relay SINK ID …` and parses them
/// with the same definitions as the command line, so a file and the flags can never differ in
/// meaning, defaults or checks.
fn parse_config(text: &str) -> Result<Vec<RelaySink>, String> {
    let document: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let before = e.span().map_or(0, |span| span.start.min(text.len()));
        let line = text.as_bytes()[..before].iter().filter(|b| **b == b'\n').count() + 1;
        format!("line {line}: {}", e.message())
    })?;
    if let Some(key) = document.keys().find(|k| *k != "relay") {
        return Err(format!("unknown top-level key {key:?} (expected [[relay]] tables)"));
    }
    let tables = match document.get("relay") {
        Some(toml::Value::Array(tables)) if !tables.is_empty() => tables,
        _ => return Err("no [[relay]] table".into()),
    };
    tables
        .iter()
        .enumerate()
        .map(|(n, table)| {
            let table = table.as_table().ok_or_else(|| format!("relay {} is not a table", n + 1))?;
            let text_of = |key: &str| match table.get(key) {
                Some(toml::Value::String(value)) if !value.is_empty() => Ok(value.clone()),
                _ => Err(format!("relay {} needs {key} = \"…\"", n + 1)),
            };
            let sink = text_of("sink")?;
            let id = text_of("id")?;
            let mut argv = vec!["reel relay".to_string(), sink.clone(), id.clone()];
            for (key, value) in table.iter().filter(|(key, _)| !matches!(key.as_str(), "sink" | "id")) {
                let flag = format!("--{}", key.replace('_', "-"));
                let values = match value {
                    toml::Value::Array(items) => items.iter().collect(),
                    one => vec![one],
                };
                for value in values {
                    match value {
                        toml::Value::Boolean(true) => argv.push(flag.clone()),
                        toml::Value::Boolean(false) => {}
                        toml::Value::String(text) => argv.extend([flag.clone(), text.clone()]),
                        toml::Value::Integer(number) => argv.extend([flag.clone(), number.to_string()]),
                        toml::Value::Float(number) => argv.extend([flag.clone(), number.to_string()]),
                        other => return Err(format!("relay {id}: {key} cannot be a {}", other.type_str())),
                    }
                }
            }
            RelayTable::try_parse_from(&argv).map(|parsed| parsed.sink).map_err(|e| {
                // clap's first line names the problem ("unexpected argument '--topicc' found").
                let rendered = e.to_string();
                let line = rendered.lines().next().unwrap_or("invalid").trim_start_matches("error: ");
                format!("relay {id} ({sink}): {line} (keys are the flags of `reel relay {sink}` without the dashes)")
            })
        })
        .collect()
}

impl RelaySink {
    fn common(&self) -> &RelayCommonArgs {
        match self {
            RelaySink::Redis(args) => &args.common,
            RelaySink::Nats(args) => &args.common,
            RelaySink::Kafka(args) => &args.common,
        }
    }
}

/// A relay whose flags are checked and whose sink is not connected yet.
pub struct RelayPlan {
    common: RelayCommonArgs,
    sink: SinkPlan,
}

enum SinkPlan {
    Redis { url: String, keys: KeyTemplate, maxlen: Option<u64>, payload: Payload },
    Nats(JetStreamOptions),
    Kafka(KafkaOptions),
}

/// Checks a relay's flags without contacting anything.
fn plan(args: &RelaySink) -> Result<RelayPlan> {
    let sink = match args {
        RelaySink::Redis(redis) => {
            let keys = template("--key", &redis.key)?;
            if !redis.url.starts_with("redis://") {
                return Err(anyhow!(InvalidInput(format!("--url must be a redis:// URL, got {:?}", redis.url))));
            }
            SinkPlan::Redis { url: redis.url.clone(), keys, maxlen: redis.maxlen, payload: redis.common.payload.into() }
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
            SinkPlan::Nats(options)
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
            SinkPlan::Kafka(options)
        }
    };
    let common = args.common();
    if common.stream_prefix.iter().any(String::is_empty) {
        return Err(anyhow!(InvalidInput("--stream-prefix must not be empty".into())));
    }
    common.subscriber.check()?;
    Ok(RelayPlan { common: common.clone(), sink })
}

impl RelayPlan {
    /// Connects the sink and builds the relay's subscription on `stores`.
    pub async fn prepare(self, stores: &Stores) -> Result<PreparedSubscription> {
        let id = &self.common.subscriber.id;
        match self.sink {
            SinkPlan::Redis { url, keys, maxlen, payload } => {
                let sink = RedisStreamsSink::connect(&url, keys, maxlen)
                    .await
                    .map_err(|e| anyhow!("relay {id}: cannot connect to Redis at {url}: {e}"))?
                    .with_payload(payload);
                relay(stores, &self.common, sink).await
            }
            SinkPlan::Nats(options) => {
                let url = options.url.clone();
                let sink = JetStreamSink::connect(options)
                    .await
                    .map_err(|e| anyhow!("relay {id}: cannot set up JetStream at {url}: {e}"))?;
                relay(stores, &self.common, sink).await
            }
            SinkPlan::Kafka(options) => {
                let brokers = options.brokers.clone();
                let sink = KafkaSink::connect(options)
                    .await
                    .map_err(|e| anyhow!("relay {id}: cannot reach Kafka at {brokers}: {e}"))?;
                relay(stores, &self.common, sink).await
            }
        }
    }
}

pub(crate) fn template(flag: &str, text: &str) -> Result<KeyTemplate> {
    KeyTemplate::parse(text).map_err(|e| anyhow!(InvalidInput(format!("{flag}: {e}"))))
}

async fn relay(stores: &Stores, common: &RelayCommonArgs, sink: impl Sink) -> Result<PreparedSubscription> {
    let prefixes = common.stream_prefix.clone();
    PreparedSubscription::new(stores, &common.subscriber, &common.group, |spec| {
        Ok(Relay::new(spec, sink).with_stream_prefixes(prefixes).into_shared())
    })
    .await
}
