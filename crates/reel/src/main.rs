//! `reel`: the command-line tool. Thin: parses arguments, opens a store, calls the crates.

mod commands;
mod exit;
mod output;
mod store;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Events are allocated on reader threads and freed on others; mimalloc handles that pattern
/// far better than the system allocator (measured by `reel bench read`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Reel: an event store and subscription engine.
#[derive(Parser, Debug)]
#[command(name = "reel", version, about, long_about = None)]
pub struct Cli {
    /// Store to use: a file path or sqlite://PATH (created on first use), postgres://…, or a server at http://…
    #[arg(long, global = true, env = "REEL_STORE", default_value = "./reel-data/reel.db")]
    pub store: String,
    /// PostgreSQL schema of the store (several stores can share one database).
    #[arg(long, global = true, env = "REEL_SCHEMA", default_value = "reel")]
    pub schema: String,
    /// Bearer token for an http:// store (see `reel token create`).
    #[arg(long, global = true, env = "REEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where subscription positions are kept when the store is a remote http:// server.
    #[arg(long, global = true, env = "REEL_SUBSCRIPTION_STORE", default_value = "./reel-data/subscriptions.db")]
    pub subscription_store: PathBuf,
    /// Largest event accepted, in bytes (type + data + metadata).
    #[arg(long, global = true, env = "REEL_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,
    /// Most events accepted in one append.
    #[arg(long, global = true, env = "REEL_MAX_BATCH_EVENTS", default_value_t = 10_000)]
    pub max_batch_events: usize,
    /// Most tags accepted on one event.
    #[arg(long, global = true, env = "REEL_MAX_TAGS_PER_EVENT", default_value_t = 16)]
    pub max_tags_per_event: usize,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Append one event (--type/--data) or a file of events (--file) atomically to a stream.
    Append(commands::append::AppendArgs),
    /// Print a stream's events as NDJSON.
    Read(commands::read::ReadArgs),
    /// Print the global log as NDJSON, optionally filtered, optionally following new events.
    ReadAll(commands::read::ReadAllArgs),
    /// Print the events of a query across streams (by tag and type) and the head of the read,
    /// as one JSON object: what a conditional append (`append --fail-if-tag … --after HEAD`) is
    /// decided on.
    Query(commands::query::QueryArgs),
    /// List streams with their versions.
    Streams(commands::info::StreamsArgs),
    /// Print event count, stream count, head position and file size.
    Stats,
    /// Create or upgrade the store's schema (also done on first use) and print its version.
    Migrate,
    /// Write the log (from a position) to stdout as NDJSON.
    Export(commands::transfer::ExportArgs),
    /// Append the events of an export file; importing the same file twice stores nothing new.
    Import(commands::transfer::ImportArgs),
    /// List and operate subscriptions (pause, reactivate, remove, reset).
    Subscriptions(commands::subscriptions::SubscriptionsArgs),
    /// Run a subscription whose handler is a command (events as NDJSON on stdin) or stdout.
    Consume(commands::consume::ConsumeArgs),
    /// Relay the log to a broker (Redis Streams, NATS JetStream, Kafka) as a subscription:
    /// every event once, each stream in order; several at once with --config relays.toml.
    Relay(commands::relay::RelayArgs),
    /// Bridge devices that speak MQTT: their events in, their config out.
    Bridge(commands::bridge::BridgeArgs),
    /// Serve the HTTP API, live streams and dashboard (default http://127.0.0.1:7311).
    Serve(commands::serve::ServeArgs),
    /// Run on a device: the local API over the device's own store (works offline), and the
    /// uplink that copies the device's streams to the central server exactly once.
    Edge(commands::edge::EdgeArgs),
    /// The platform's devices: presence of agents and registered units, registration of units
    /// the platform pings, pushes configuration to or fetches events from.
    Devices(commands::devices::DevicesArgs),
    /// Create, list and revoke API tokens.
    Token(commands::token::TokenArgs),
    /// Measure throughput and latency (runs the reel-bench binary); prints a table and writes JSON.
    Bench(commands::bench::BenchArgs),
    /// Internal tools used by the test suite.
    #[command(hide = true)]
    Debug(commands::debug::DebugArgs),
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REEL_LOG").unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // REEL_LOG_FORMAT=json: one JSON object per line, for log collectors.
    if std::env::var("REEL_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::usage(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return exit::report(anyhow::Error::new(e).context("starting the async runtime")),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => exit::report(e),
    }
}
