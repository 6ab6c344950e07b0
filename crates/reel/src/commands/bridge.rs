//! `reel bridge mqtt`: devices that speak MQTT. Their events come in on
//! `devices/<NAME>/events` and are appended to `unit-<NAME>` (idempotently, by the device's
//! event ids); the config streams `unitconfig-<NAME>` go out to `devices/<NAME>/config`,
//! retained, through an ordinary relay subscription.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use reel_core::StreamName;
use reel_relay::{MqttBridgeOptions, MqttConfigSink, MqttIngest, Relay};

use super::consume::{run_subscription, SubscriberArgs};
use super::relay::template;
use crate::exit::InvalidInput;
use crate::{store, Cli};

#[derive(Args, Debug)]
pub struct BridgeArgs {
    #[command(subcommand)]
    pub broker: BridgeBroker,
}

#[derive(Subcommand, Debug)]
pub enum BridgeBroker {
    /// Device events in from MQTT, device config out to MQTT (retained, QoS 1).
    Mqtt(MqttBridgeArgs),
}

#[derive(Args, Debug)]
pub struct MqttBridgeArgs {
    /// The config relay's subscription (its position is kept in the store); the
    /// subscription flags below apply to it.
    #[command(flatten)]
    pub subscriber: SubscriberArgs,
    /// MQTT broker, mqtt://host:port.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub url: String,
    /// Client id prefix (the broker keeps the ingest's session under `<prefix>-in`).
    #[arg(long, default_value = "reel-bridge")]
    pub client_id: String,
    /// Topic filter of device events, `+` where the device name is.
    #[arg(long, default_value = "devices/+/events")]
    pub events_topic: String,
    /// Stream of a device's events; {device} is the name from the topic.
    #[arg(long, default_value = "unit-{device}")]
    pub device_stream: String,
    /// Stream for messages that cannot be stored, with the reason.
    #[arg(long, default_value = "mqttdeadletter-bridge")]
    pub dead_letter_stream: String,
    /// Category of the config streams relayed out.
    #[arg(long, default_value = "unitconfig")]
    pub config_category: String,
    /// Topic of a config event: {id} is the stream name after its first `-` (the device).
    #[arg(long, default_value = "devices/{id}/config")]
    pub config_topic: String,
}

pub async fn run(cli: &Cli, args: &BridgeArgs) -> Result<()> {
    let BridgeBroker::Mqtt(mqtt) = &args.broker;
    let (host, port) = mqtt
        .url
        .strip_prefix("mqtt://")
        .and_then(|rest| rest.rsplit_once(':'))
        .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow!(InvalidInput(format!("--url must be mqtt://host:port, got {:?}", mqtt.url))))?;
    let mut options = MqttBridgeOptions::new(host, port);
    options.client_id = mqtt.client_id.clone();
    options.events_topic = mqtt.events_topic.clone();
    options.device_stream = mqtt.device_stream.clone();
    options.dead_letter_stream = StreamName::new(mqtt.dead_letter_stream.clone())
        .map_err(|e| anyhow!(InvalidInput(format!("--dead-letter-stream: {e}"))))?;
    options.validate().map_err(|e| anyhow!(InvalidInput(e)))?;
    let topics = template("--config-topic", &mqtt.config_topic)?;
    if !mqtt.subscriber.category.is_empty() {
        return Err(anyhow!(InvalidInput("give the config streams with --config-category, not --category".into())));
    }
    mqtt.subscriber.check()?;

    let events = store::open(cli).await?;
    let ingest = Arc::new(MqttIngest::new(options.clone(), events));
    let (stop_ingest, ingesting) = ingest.spawn();
    let sink = MqttConfigSink::connect(&options, topics);
    let category = mqtt.config_category.clone();
    let relayed = run_subscription(cli, &mqtt.subscriber, "bridge", move |spec| {
        Ok(Relay::new(spec.in_categories(vec![category]), sink).into_shared())
    })
    .await;
    let _ = stop_ingest.send(());
    ingesting.await.map_err(|e| anyhow!("MQTT ingest stopped: {e}"))??;
    relayed
}
