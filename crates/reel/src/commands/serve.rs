//! `reel serve`: the HTTP API, live streams and dashboard over the store. A program that embeds
//! `reel_server` with its own subscribers also gets the worker runtime in the same process
//! (unless `--no-worker`); the CLI registers none, so its subscriptions run in `reel consume`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use reel_edge::{LinkOptions, UnitLinks};
use reel_server::{Presence, PresenceOptions, RequestLimits, Server, ServerConfig, DEFAULT_PORT};
use reel_subscriptions::cli::shutdown_signal;
use reel_subscriptions::SubscriptionEngine;

use super::consume::run_all;
use super::relay;
use crate::exit::InvalidInput;
use crate::Cli;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback needs --require-tokens.
    #[arg(long, env = "REEL_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// Require a bearer token on every request (create them with `reel token create`).
    #[arg(long, env = "REEL_REQUIRE_TOKENS")]
    pub require_tokens: bool,
    /// Do not run the worker runtime in this process.
    #[arg(long)]
    pub no_worker: bool,
    /// Largest request body, in bytes.
    #[arg(long, env = "REEL_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send its request headers (and that an idle connection is kept).
    #[arg(long, default_value_t = 30)]
    pub header_timeout: u64,
    /// Longest long-poll `wait`, in seconds.
    #[arg(long, default_value_t = 60)]
    pub max_wait: u64,
    /// Events a live (SSE) client may fall behind before it is dropped.
    #[arg(long, default_value_t = 10_000)]
    pub live_buffer: usize,
    /// Seconds between SSE heartbeats.
    #[arg(long, default_value_t = 15)]
    pub heartbeat: u64,
    /// Also run the relays of this TOML file in this process (the format of `reel relay
    /// --config`). A relay that fails stops the server, so a supervisor restarts both.
    #[arg(long, value_name = "FILE")]
    pub relays: Option<std::path::PathBuf>,
    /// A device counts as offline after this many of its declared heartbeat intervals pass
    /// without one (device presence, `GET /devices`).
    #[arg(long, default_value_t = 1.5)]
    pub offline_after: f64,
    /// Split presence work between server processes into 16^N partitions of device names
    /// (0 to 3); a process that dies leaves its share to the others.
    #[arg(long, default_value_t = 1)]
    pub presence_partitions: u8,
    /// Seconds a process holds its presence partitions without renewing them (it renews every
    /// third of it): how long a dead process's share waits before another takes it over.
    #[arg(long, default_value_t = 15.0)]
    pub presence_lease: f64,
    /// Seconds to wait before each retry of a configuration delivery to a push unit that
    /// failed (the last repeats); counted only while the unit is online.
    #[arg(long, value_delimiter = ',', default_value = "60,300,900")]
    pub push_retry: Vec<f64>,
    /// Units pinged, pushed to or fetched from at the same time by this process.
    #[arg(long, default_value_t = 64)]
    pub unit_concurrency: usize,
}

pub async fn run(cli: &Cli, args: &ServeArgs) -> Result<()> {
    if args.header_timeout == 0 || args.heartbeat == 0 {
        anyhow::bail!(InvalidInput("--header-timeout and --heartbeat must be at least 1 second".into()));
    }
    if !(args.offline_after.is_finite() && (1.0..=100.0).contains(&args.offline_after)) {
        anyhow::bail!(InvalidInput(format!("--offline-after must be 1 to 100 intervals, got {}", args.offline_after)));
    }
    if args.push_retry.is_empty() || args.unit_concurrency == 0 {
        anyhow::bail!(InvalidInput("--push-retry needs at least one wait and --unit-concurrency at least 1".into()));
    }
    let retry_steps =
        args.push_retry.iter().map(|s| super::consume::seconds(*s, "--push-retry")).collect::<Result<Vec<_>>>()?;
    if args.presence_partitions > 3 {
        anyhow::bail!(InvalidInput(format!("--presence-partitions must be 0 to 3, got {}", args.presence_partitions)));
    }
    // The relays' flags are checked before anything is opened or contacted.
    let relays = args.relays.as_deref().map(relay::load_config).transpose()?.unwrap_or_default();
    let signal = shutdown_signal();
    let stores = crate::store::open_with_subscriptions(cli).await?;
    let closing = stores.closer();
    let mut runs = Vec::with_capacity(relays.len());
    for relay in relays {
        runs.push(relay.prepare(&stores).await?);
    }
    let engine = SubscriptionEngine::new(stores.events.clone(), stores.subscriptions.clone(), Vec::new())?;
    let config = ServerConfig {
        listen: args.listen,
        require_tokens: args.require_tokens,
        limits: RequestLimits {
            max_body_bytes: args.max_body_bytes,
            header_timeout: Duration::from_secs(args.header_timeout),
            max_wait: Duration::from_secs(args.max_wait),
            live_buffer: args.live_buffer,
            heartbeat: Duration::from_secs(args.heartbeat),
        },
        run_worker: !args.no_worker,
        ..ServerConfig::default()
    };
    let mut server = Server::start(stores.events.clone(), engine, config).await.context("starting the server")?;
    if let Some(rows) = stores.presence.clone() {
        let options = PresenceOptions {
            offline_after: args.offline_after,
            lease_ttl: super::consume::seconds(args.presence_lease, "--presence-lease")?,
            partition_digits: args.presence_partitions,
            ..PresenceOptions::default()
        };
        let links = UnitLinks::new(
            stores.events.clone(),
            rows.clone(),
            LinkOptions { retry_steps, concurrency: args.unit_concurrency, ..LinkOptions::default() },
        );
        server = server.with_presence(Presence::new(stores.events, rows, options).with_work(Arc::new(links)));
    }
    let address = server.local_addr();
    let relay_ids: Vec<String> = runs.iter().map(|run| run.id().to_string()).collect();
    // One line on stdout that scripts (and tests) can wait for.
    println!(
        "{}",
        serde_json::json!({
            "listening": format!("http://{address}"), "store": crate::store::describe(cli), "relays": relay_ids,
        })
    );
    tracing::info!(%address, "serving");
    if runs.is_empty() {
        let served = server.run(signal).await;
        closing.close().await;
        served?;
        return Ok(());
    }
    // The server and the relays stop together: on a signal, when the server ends, or when a
    // relay fails (a `once` relay that finished leaves the server running).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait_for_stop = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let serving = async {
        let outcome = server
            .run(async {
                tokio::select! {
                    _ = signal => {}
                    _ = wait_for_stop(stopped.clone()) => {}
                }
            })
            .await;
        let _ = stop.send(true);
        outcome.map_err(anyhow::Error::from)
    };
    let relaying = async {
        let outcome = run_all(runs, wait_for_stop(stopped.clone())).await;
        if outcome.is_err() {
            let _ = stop.send(true);
        }
        outcome
    };
    let (served, relayed) = tokio::join!(serving, relaying);
    closing.close().await;
    relayed.context("a relay stopped the server")?;
    served
}
