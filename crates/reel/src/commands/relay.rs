//! `reel relay redis …`: relay the log to a broker as an ordinary subscription.
//!
//! Same lifecycle, retries, leases and operator commands as `reel consume`; the handler is a
//! `reel_relay::Sink`, and the position advances only over what the broker acknowledged.

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use reel_relay::{KeyTemplate, RedisStreamsSink, Relay};

use super::consume::{run_subscription, SubscriberArgs};
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
}

#[derive(Args, Debug)]
pub struct RedisRelayArgs {
    #[command(flatten)]
    pub subscriber: SubscriberArgs,
    /// Group, for operating several subscriptions together.
    #[arg(long, default_value = "relay")]
    pub group: String,
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

pub async fn run(cli: &Cli, args: &RelayArgs) -> Result<()> {
    match &args.sink {
        RelaySink::Redis(redis) => {
            let keys = KeyTemplate::parse(&redis.key).map_err(|e| anyhow!(InvalidInput(format!("--key: {e}"))))?;
            if !redis.url.starts_with("redis://") {
                return Err(anyhow!(InvalidInput(format!("--url must be a redis:// URL, got {:?}", redis.url))));
            }
            let sink = RedisStreamsSink::connect(&redis.url, keys, redis.maxlen)
                .await
                .map_err(|e| anyhow!("cannot connect to Redis at {}: {e}", redis.url))?;
            run_subscription(cli, &redis.subscriber, &redis.group, |spec| Ok(Relay::shared(spec, sink))).await
        }
    }
}
