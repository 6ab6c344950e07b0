//! `lockers`: the locker platform's binary.
//!
//! - `lockers demo`: the platform, a simulated fleet and the web UI in one process.
//! - `lockers serve`: the platform alone (app API, web UI, Reel's API for units, workers).
//! - `lockers simulate`: a simulated fleet against a running platform.
//! - `lockers projections retire NAME VERSION`: removes a projection's old version.
//! - `lockers bench`: the fleet under load, measured.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use lockers::fleet::{Fleet, FleetOptions};
use lockers::platform::{Platform, PlatformOptions, StoreLocation};
use tokio::sync::watch;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lockers",
    version,
    about = "The locker platform on Reel: units, reservations, a simulated fleet and a web UI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The platform, a simulated fleet and the web UI in one process; prints the URL.
    Demo(DemoArgs),
    /// The platform alone: app API and web UI, Reel's API for the units, projections and workers.
    Serve(PlatformArgs),
    /// A simulated fleet against a running platform.
    Simulate(SimulateArgs),
    /// Projections: remove an old version once its replacement is served.
    Projections {
        #[command(subcommand)]
        command: ProjectionCommand,
    },
    /// The fleet under load against the platform, measured (docs/BENCHMARKS.md).
    Bench(lockers::bench::BenchArgs),
}

#[derive(Subcommand)]
enum ProjectionCommand {
    /// Removes version VERSION of projection NAME: its subscription and its tables.
    Retire {
        /// units, eventlog, availability or revenue.
        name: String,
        /// The old version.
        version: u32,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// The platform's store: a SQLite file (created if missing) or postgres://…
    #[arg(long, env = "LOCKERS_STORE", default_value = "lockers-data/platform.db")]
    store: String,
    /// PostgreSQL schema.
    #[arg(long, default_value = "lockers")]
    schema: String,
}

#[derive(Args, Clone)]
struct PlatformArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Where the app API and web UI listen.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Where Reel's HTTP API for the units listens.
    #[arg(long, default_value = "127.0.0.1:7390")]
    reel_listen: SocketAddr,
    /// The MQTT broker to bridge, or `off`. When it does not answer, the platform runs without
    /// MQTT units and says so.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// First level of the MQTT topics (`devices/NAME/events`).
    #[arg(long, default_value = "devices")]
    mqtt_prefix: String,
    /// Build and serve this version of a projection (`eventlog=2`); the version before keeps
    /// serving until the new one caught up.
    #[arg(long = "projection", value_name = "NAME=VERSION")]
    projections: Vec<String>,
    /// Seconds to wait before each retry of a failed configuration push (while online).
    #[arg(long, value_delimiter = ',', default_value = "60,300,900")]
    push_retry: Vec<u64>,
}

#[derive(Args, Clone)]
struct FleetArgs {
    /// Units to simulate.
    #[arg(long, default_value_t = 1000)]
    units: usize,
    /// Events per unit per second, on average.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Reservations per second from the simulated app.
    #[arg(long, default_value_t = 5.0)]
    reservations: f64,
    /// Share of the fleet offline at any time.
    #[arg(long, default_value_t = 0.05)]
    offline: f64,
    /// Seconds between a unit's heartbeats (and the platform's pings).
    #[arg(long, default_value_t = 5)]
    heartbeat: u64,
    /// Where the units' own stores live.
    #[arg(long, default_value = "lockers-data/units")]
    units_dir: PathBuf,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Args)]
struct SimulateArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// The platform's app API.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    app: String,
    /// The platform's Reel API for units.
    #[arg(long, default_value = "http://127.0.0.1:7390")]
    central: String,
    /// The MQTT broker the platform bridges, or `off`.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// First level of the MQTT topics.
    #[arg(long, default_value = "devices")]
    mqtt_prefix: String,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage(e),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOCKERS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lockers=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        // One line: the error and its causes.
        let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", causes.join(": "));
        std::process::exit(if e.downcast_ref::<Invalid>().is_some() { 2 } else { 1 });
    }
}

/// A flag clap refused: help and version as clap prints them, anything else as one line
/// (exit code 2).
fn usage(error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            std::process::exit(0);
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            std::process::exit(2);
        }
        _ => {
            let rendered = error.render().to_string();
            let first = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            eprintln!("error: {} (see lockers --help)", first.strip_prefix("error: ").unwrap_or(first));
            std::process::exit(2);
        }
    }
}

/// Bad input on the command line (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Invalid(String);

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Simulate(args) => simulate(args).await,
        Command::Projections { command: ProjectionCommand::Retire { name, version, store } } => {
            let location = store_location(&store)?;
            if lockers::platform::retire(&location, &name, version).await? {
                println!("projection {name} version {version} removed (subscription and tables)");
            } else {
                println!("projection {name} has no version {version}; nothing to remove");
            }
            Ok(())
        }
        Command::Bench(args) => lockers::bench::run(args).await,
    }
}

fn store_location(args: &StoreArgs) -> Result<StoreLocation> {
    StoreLocation::parse(&args.store, &args.schema).map_err(|e| Invalid(e).into())
}

/// The broker's address, or `None` for `off` or when nothing answers there (said on stderr).
async fn mqtt_address(text: &str) -> Result<Option<SocketAddr>> {
    if text == "off" {
        return Ok(None);
    }
    let address: SocketAddr =
        text.parse().map_err(|_| Invalid(format!("--mqtt must be host:port (an IP address) or off, not {text:?}")))?;
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(Some(address)),
        _ => {
            eprintln!(
                "note: no MQTT broker answers at {address}; running without MQTT units (--mqtt off to skip this check)"
            );
            Ok(None)
        }
    }
}

async fn platform_options(args: &PlatformArgs) -> Result<PlatformOptions> {
    let mut options = PlatformOptions::new(store_location(&args.store)?);
    options.listen = args.listen;
    options.reel_listen = args.reel_listen;
    options.mqtt = mqtt_address(&args.mqtt).await?;
    options.mqtt_prefix = args.mqtt_prefix.clone();
    if args.push_retry.is_empty() || args.push_retry.contains(&0) {
        return Err(Invalid("--push-retry needs one or more waits of at least 1 second".into()).into());
    }
    options.push_retry = args.push_retry.iter().map(|s| Duration::from_secs(*s)).collect();
    let mut versions = BTreeMap::new();
    for text in &args.projections {
        let (name, version) = text
            .split_once('=')
            .and_then(|(n, v)| Some((n.to_string(), v.parse::<u32>().ok().filter(|v| *v >= 1)?)))
            .ok_or_else(|| Invalid(format!("--projection takes NAME=VERSION (a version from 1), not {text:?}")))?;
        if !lockers::projections::NAMES.contains(&name.as_str()) {
            return Err(
                Invalid(format!("no projection {name:?}; one of {}", lockers::projections::NAMES.join(", "))).into()
            );
        }
        versions.insert(name, version);
    }
    options.versions = versions;
    Ok(options)
}

fn stop_on_signal() -> watch::Receiver<bool> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("stopping");
        let _ = stop.send(true);
    });
    stopped
}

async fn serve(args: PlatformArgs) -> Result<()> {
    let options = platform_options(&args).await?;
    let platform = Platform::start(&options).await?;
    println!("{}", serde_json::json!({ "app": platform.app_url(), "reel": platform.reel_url(), "mqtt": options.mqtt }));
    platform.run(stop_on_signal()).await
}

fn fleet_options(args: &FleetArgs, central: String, app: String, mqtt: Option<SocketAddr>) -> Result<FleetOptions> {
    if args.heartbeat == 0 {
        return Err(Invalid("--heartbeat must be at least 1 second".into()).into());
    }
    let options = FleetOptions {
        units: args.units,
        rate: args.rate,
        reservations: args.reservations,
        offline_share: args.offline,
        heartbeat: Duration::from_secs(args.heartbeat),
        central,
        app,
        mqtt,
        data_dir: args.units_dir.clone(),
        first: 1000,
        seed: args.seed,
        mqtt_prefix: "devices".into(),
    };
    options.validate().map_err(Invalid)?;
    Ok(options)
}

async fn demo(args: DemoArgs) -> Result<()> {
    // The fleet's flags are checked before anything is opened or bound.
    fleet_options(&args.fleet, String::new(), String::new(), None)?;
    let options = platform_options(&args.platform).await?;
    let platform = Platform::start(&options).await?;
    let (app, reel) = (platform.app_url(), platform.reel_url());
    let mut fleet_options = fleet_options(&args.fleet, reel.clone(), app.clone(), options.mqtt)?;
    fleet_options.mqtt_prefix = options.mqtt_prefix.clone();
    let fleet_slot = platform.fleet.clone();
    let stop = stop_on_signal();
    let running = tokio::spawn(platform.run(stop.clone()));
    eprintln!("starting {} simulated units…", fleet_options.units);
    let fleet = Fleet::start(fleet_options).await.context("starting the simulated fleet")?;
    let _ = fleet_slot.set(fleet.clone());
    println!("lockers demo: open {app}/ (units table, event logs, availability, reservations); Reel's API for units at {reel}; Ctrl-C stops");
    fleet.run(stop).await;
    running.await.context("the platform")?
}

async fn simulate(args: SimulateArgs) -> Result<()> {
    let mqtt = mqtt_address(&args.mqtt).await?;
    let mut options = fleet_options(&args.fleet, args.central, args.app, mqtt)?;
    options.mqtt_prefix = args.mqtt_prefix;
    let fleet = Fleet::start(options).await.context("starting the simulated fleet")?;
    println!("{} units running; Ctrl-C stops", fleet.units().len());
    let _keep: Arc<Fleet> = fleet.clone();
    fleet.run(stop_on_signal()).await;
    Ok(())
}
