//! `reel edge`: a device's own Reel. It serves the same HTTP API as `reel serve` on loopback
//! over the device's embedded store, so apps on the device append and read with no network,
//! runs the uplink that copies the device's streams to the central server, and the downlink
//! that copies the platform's stream for the device (its configuration) back (reel_edge).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use reel_edge::{CentralServer, Downlink, Heartbeats, Ownership, Uplink};
use reel_server::{ReadOnlyStreams, Server, ServerConfig};
use reel_subscriptions::cli::shutdown_signal;
use reel_subscriptions::{ClockBasedRetryStrategy, SubscriptionEngine};

use crate::exit::InvalidInput;
use crate::store::{self, Dsn};
use crate::Cli;

#[derive(Args, Debug)]
pub struct EdgeArgs {
    /// The device's name. It writes unit-NAME and unit-NAME-*; the platform writes
    /// unitconfig-NAME, which local apps may read but not append to.
    #[arg(long, env = "REEL_DEVICE")]
    pub device: String,
    /// The central server (http://host:port) the uplink copies the device's streams to; its
    /// token is --token (it needs write access to unit-NAME*).
    #[arg(long, env = "REEL_CENTRAL")]
    pub central: String,
    /// Address of the local API (loopback only: local apps need no token).
    #[arg(long, env = "REEL_LISTEN", default_value = "127.0.0.1:7312")]
    pub listen: SocketAddr,
    /// Longest wait between tries while the central server is unreachable, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub max_retry_delay: f64,
    /// Seconds between heartbeats to the central server (its presence table counts the device
    /// offline after a multiple of this in silence, 1.5× by default).
    #[arg(long, default_value_t = 10.0)]
    pub heartbeat_interval: f64,
    /// The device's name for people, shown in the central server's devices table.
    #[arg(long)]
    pub display_name: Option<String>,
    /// Report the device's clock this many seconds off in heartbeats (to try a fleet with wrong
    /// clocks: the skew is reported and changes nothing else).
    #[arg(long, hide = true, allow_hyphen_values = true, default_value_t = 0.0)]
    pub simulate_clock_offset: f64,
}

pub async fn run(cli: &Cli, args: &EdgeArgs) -> Result<()> {
    let ownership = Ownership::for_device(&args.device).map_err(|e| InvalidInput(e.to_string()))?;
    if !args.central.starts_with("http://") || args.central.len() <= "http://".len() {
        bail!(InvalidInput(format!("--central must be an http:// URL of a reel serve, got {:?}", args.central)));
    }
    if !args.listen.ip().is_loopback() {
        bail!(InvalidInput(format!(
            "--listen {} is not loopback: the device's local API takes no token, so it listens on 127.0.0.1 only",
            args.listen
        )));
    }
    let max_retry_delay = super::consume::seconds(args.max_retry_delay, "--max-retry-delay")?;
    if !(1.0..=86_400.0).contains(&args.heartbeat_interval) {
        bail!(InvalidInput(format!(
            "--heartbeat-interval must be 1 to 86400 seconds, got {}",
            args.heartbeat_interval
        )));
    }
    let heartbeat_interval = Duration::from_secs_f64(args.heartbeat_interval);
    if !args.simulate_clock_offset.is_finite() || args.simulate_clock_offset.abs() > 10.0 * 365.0 * 86_400.0 {
        bail!(InvalidInput("--simulate-clock-offset must be a number of seconds within ten years".into()));
    }
    if let Some(name) = &args.display_name {
        reel_core::check_display_name(name, "--display-name").map_err(|e| InvalidInput(e.to_string()))?;
    }
    // The device's store is the source of truth, on the device: the embedded store only.
    if !matches!(Dsn::parse(&cli.store)?, Dsn::Sqlite(_)) {
        bail!(InvalidInput(format!(
            "--store {} is not a local file: a device keeps its events in its own embedded store",
            store::describe(cli)
        )));
    }
    let signal = shutdown_signal();
    let stores = store::open_with_subscriptions(cli).await?;
    // One client of the central server, shared by the uplink and the downlink.
    let central = Arc::new(CentralServer::new(args.central.clone(), cli.token.clone()));
    let uplink = Uplink::new(ownership.clone(), central.clone())?;
    let retry = ClockBasedRetryStrategy {
        base_delay: Duration::from_secs(1),
        max_unavailable_delay: max_retry_delay,
        ..ClockBasedRetryStrategy::default()
    };
    let engine = SubscriptionEngine::new(stores.events.clone(), stores.subscriptions.clone(), vec![Arc::new(uplink)])?
        .with_retry_strategy(retry);
    let config = ServerConfig {
        listen: args.listen,
        read_only_streams: vec![ReadOnlyStreams {
            pattern: ownership.config_stream(),
            written_by: "the platform (it reaches this device by the downlink)".into(),
        }],
        ..ServerConfig::default()
    };
    let downlink = Downlink::new(ownership.clone(), central.clone(), stores.events.clone(), max_retry_delay);
    let heartbeats = Heartbeats::new(ownership.clone(), central, stores.events.clone(), heartbeat_interval)
        .with_display_name(args.display_name.clone())
        .with_clock_offset_ms((args.simulate_clock_offset * 1_000.0) as i64);
    let server = Server::start(stores.events, engine, config).await.context("starting the device's local API")?;
    // One line on stdout that scripts (and tests) can wait for.
    println!(
        "{}",
        serde_json::json!({
            "listening": format!("http://{}", server.local_addr()), "store": store::describe(cli),
            "device": ownership.device(), "central": args.central,
        })
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let following = tokio::spawn(downlink.run(until_stopped(stopped.clone())));
    let beating = tokio::spawn(heartbeats.run(until_stopped(stopped)));
    let served = server.run(signal).await;
    let _ = stop.send(true);
    let _ = tokio::join!(following, beating);
    served?;
    Ok(())
}
