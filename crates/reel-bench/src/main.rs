//! `reel-bench` (also run as `reel bench …`): throughput and latency against baselines measured
//! in the same run.
//!
//! Each bench creates its own stores in `--dir` (removed afterwards), prints a table and writes
//! JSON. Nothing here asserts a figure; docs/BENCHMARKS.md records them. A binary of its own, so
//! the shipped `reel` binary links none of the benchmarks' dependencies (raw SQLite and
//! PostgreSQL baselines, load generators).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use reel_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StreamName};
use reel_sqlite::SqliteStore;
use serde::Serialize;

use indicatif::{ProgressBar, ProgressStyle};

/// The same allocator as the `reel` binary, so the figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod aggregates;
mod cpu;
mod dcb;
mod edge;
mod edge_fleet;
mod http;
mod mqtt_ingest;
mod postgres;
mod relay;
mod store;
mod subscriptions;

use store::{bench_append, bench_read, AppendPlan};

/// Benchmarks of Reel against baselines measured in the same run.
#[derive(Parser, Debug)]
#[command(name = "reel-bench", version)]
pub struct Cli {
    /// The store `reel bench postgres` measures (postgres://…; a scratch schema is created and dropped).
    #[arg(long, global = true, env = "REEL_STORE", default_value = "./reel-data/reel.db")]
    pub store: String,
    #[command(flatten)]
    pub args: BenchArgs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
    /// Directory for the bench stores (on the disk you want to measure); removed afterwards.
    #[arg(long, global = true, default_value = "./reel-data/bench")]
    pub dir: PathBuf,
    /// Where to write the JSON results (default bench-results/<bench>.json).
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Bytes of data per event.
    #[arg(long, global = true, default_value_t = 256)]
    pub event_size: usize,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Batched appends, concurrent single appends (group commit on and off), raw SQLite baselines, disk limits.
    Append {
        /// Events for the batched runs.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Events per batch.
        #[arg(long, default_value_t = 100)]
        batch: u64,
        /// Concurrent single-event appenders.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        /// Events for the single-event runs.
        #[arg(long, default_value_t = 20_000)]
        single_events: u64,
        /// MiB written for the disk bandwidth probe.
        #[arg(long, default_value_t = 256)]
        disk_mib: u64,
        /// Seconds per point of the latency sweep (1, 16, 64 writers; checkpoints in the
        /// background and inside commits); 0 skips it.
        #[arg(long, default_value_t = 5)]
        sweep_seconds: u64,
        /// Run only the latency sweep (with the one-commit-per-row baseline).
        #[arg(long)]
        sweep_only: bool,
        /// Checkpoint modes the sweep measures, comma-separated (all three by default).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Checkpoints::InsideCommit, Checkpoints::AfterAnswer, Checkpoints::Background])]
        checkpoints: Vec<Checkpoints>,
    },
    /// Aggregates: load with and without snapshots, command throughput, conflicts on a hot aggregate.
    Aggregates {
        /// Events in the aggregate that is loaded.
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        /// Concurrent callers.
        #[arg(long, default_value_t = 32)]
        callers: u64,
        /// Commands on distinct aggregates.
        #[arg(long, default_value_t = 20_000)]
        commands: u64,
        /// Commands on the one hot aggregate.
        #[arg(long, default_value_t = 2_000)]
        hot_commands: u64,
    },
    /// The PostgreSQL store (at --store postgres://…, in a new schema) against plain SQL inserts.
    Postgres {
        /// Concurrent single-event appenders.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        /// Events for the single-event runs.
        #[arg(long, default_value_t = 20_000)]
        single_events: u64,
        /// Batches of 100 events.
        #[arg(long, default_value_t = 1_000)]
        batches: u64,
        /// Seconds of appends at 1,000 events/s for the follower latency.
        #[arg(long, default_value_t = 5)]
        latency_seconds: u64,
        /// Seconds per point of the writer sweep (1, 16, 64 writers; 16 store instances).
        #[arg(long, default_value_t = 5)]
        sweep_seconds: u64,
        /// Run only the writer sweep (with its plain-INSERT baseline).
        #[arg(long)]
        sweep_only: bool,
    },
    /// One PostgreSQL store instance in a process of its own, for the sweep's process points
    /// (started by `postgres`; prints one JSON line).
    #[command(hide = true)]
    PostgresWorker {
        #[arg(long)]
        schema: String,
        #[arg(long)]
        writers: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        prefix: String,
    },
    /// The HTTP server (a separate `reel serve` process) loaded over 127.0.0.1: appends, SSE fan-out, idle long polls.
    Http {
        /// Connections for single-event appends.
        #[arg(long, default_value_t = 64)]
        connections: u64,
        /// Events for the single-event runs.
        #[arg(long, default_value_t = 20_000)]
        single_events: u64,
        /// Batches of 100 events.
        #[arg(long, default_value_t = 3_000)]
        batches: u64,
        /// Live (SSE) subscribers.
        #[arg(long, default_value_t = 1_000)]
        subscribers: u64,
        /// Seconds of 1,000 events/s for the fan-out.
        #[arg(long, default_value_t = 5)]
        fanout_seconds: u64,
        /// Idle long-poll connections.
        #[arg(long, default_value_t = 10_000)]
        idle_polls: u64,
        /// Seconds per point of the latency sweep (1, 16, 64 writers, in-process and over HTTP); 0 skips it.
        #[arg(long, default_value_t = 5)]
        sweep_seconds: u64,
    },
    /// Subscriptions: catch-up, transactional SQL rebuild, live latency, idle worker CPU.
    Subscriptions {
        /// Events to write first.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per subscription batch.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Seconds of live appends for the latency run.
        #[arg(long, default_value_t = 5)]
        live_seconds: u64,
        /// Appends per second in the latency run.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// Active subscriptions held by the idle worker.
        #[arg(long, default_value_t = 20)]
        idle_subscriptions: usize,
        /// Seconds the idle worker is measured.
        #[arg(long, default_value_t = 30)]
        idle_seconds: u64,
        /// Where the store checkpoints its WAL (`SqliteOptions::checkpoints`).
        #[arg(long, value_enum, default_value_t = Checkpoints::InsideCommit)]
        checkpoints: Checkpoints,
    },
    /// Relays to Redis Streams, NATS JetStream and Kafka beside a plain client of the same library, and append → broker-ack latency;
    /// the MQTT bridge's ingest beside a plain subscriber.
    Relay {
        /// Brokers to measure (all by default); each must be running.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [relay::Broker::Redis, relay::Broker::Nats, relay::Broker::Kafka, relay::Broker::Mqtt])]
        brokers: Vec<relay::Broker>,
        /// Events to write first and relay.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Events per relay batch (and per batch of the plain clients).
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Seconds of live appends for the latency run.
        #[arg(long, default_value_t = 5)]
        latency_seconds: u64,
        /// Appends per second in the latency run.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// Redis for the Redis Streams relay.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// NATS for the JetStream relay.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// Kafka bootstrap brokers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_brokers: String,
        /// MQTT broker host for the bridge's ingest.
        #[arg(long, default_value = "127.0.0.1")]
        mqtt_host: String,
        /// MQTT broker port.
        #[arg(long, default_value_t = 1883)]
        mqtt_port: u16,
    },
    /// A device's backlog drained by its uplink into a central `reel serve` process, beside a
    /// plain HTTP client appending the same events in batches of the same size.
    Edge {
        /// Events in the device's backlog.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Events per uplink batch (and per plain append).
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
    },
    /// Many devices (agents in this process, each with its own store) against one central
    /// `reel serve` process, each appending one event a second with random offline periods:
    /// central ingest, append-to-central latency, drain after an outage of the central server,
    /// central CPU and memory, and central memory with many idle downlink long polls.
    EdgeFleet {
        /// Simulated devices.
        #[arg(long, default_value_t = 1_000)]
        devices: usize,
        /// Seconds measured while the fleet runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Seconds the central server is down.
        #[arg(long, default_value_t = 300)]
        outage: u64,
        /// Idle downlink long polls held open at the end.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Seconds between each device's heartbeats.
        #[arg(long, default_value_t = 10)]
        heartbeat: u64,
    },
    /// Tags and conditional appends against the same work without them: concurrent single
    /// appends with and without a condition, batches with and without 3 tags per event, and
    /// `read_query` of one tag among the batched events (first page latency).
    Dcb {
        /// Concurrent appenders.
        #[arg(long, default_value_t = 64)]
        writers: u64,
        /// Seconds each concurrent run lasts.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Events in each batched store (the tagged one is then queried).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per batched append.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Tags whose first page is read.
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
        /// Run on PostgreSQL at this URL (scratch schemas, dropped afterwards) instead of SQLite.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Full scans, `read_all` in pages and `scan_all`, against raw SQLite scans of the same
    /// file (columns decoded into owned values, and borrowed), with peak memory.
    Read {
        /// Events to write first and then read.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per `read_all` page.
        #[arg(long, default_value_t = 1_000)]
        page: usize,
        /// Rounds of the four scans, alternating (ratios are taken between their medians).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
}

/// `SqliteOptions::checkpoints` on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoints {
    /// Inside the commit that brings the WAL to 1,000 pages (the store's default).
    InsideCommit,
    /// On the writer, after answering that commit.
    AfterAnswer,
    /// On a thread of its own.
    Background,
}

impl Checkpoints {
    fn mode(self) -> reel_sqlite::CheckpointMode {
        match self {
            Checkpoints::InsideCommit => reel_sqlite::CheckpointMode::InsideCommit,
            Checkpoints::AfterAnswer => reel_sqlite::CheckpointMode::AfterAnswer,
            Checkpoints::Background => reel_sqlite::CheckpointMode::Background,
        }
    }
}

/// One line of the results table.
#[derive(Serialize, Debug)]
struct Row {
    name: String,
    events: u64,
    seconds: f64,
    events_per_sec: f64,
    /// Bytes the process caused to be written to storage, per event.
    disk_bytes_per_event: Option<f64>,
    note: String,
}

#[derive(Serialize)]
struct Report {
    bench: String,
    date: String,
    machine: Machine,
    rows: Vec<Row>,
    extra: serde_json::Value,
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    dir: String,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(&cli, &cli.args).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// A progress bar for `total` events.
fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template = format!("{what} {{bar:40}} {{pos}}/{{len}} events ({{per_sec}}, eta {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

async fn run(cli: &Cli, args: &BenchArgs) -> Result<()> {
    if let BenchCommand::PostgresWorker { schema, writers, seconds, prefix } = &args.command {
        return postgres::worker(&cli.store, schema, *writers, *seconds, prefix, args.event_size).await;
    }
    // Checked before anything is created.
    if let BenchCommand::Append { sweep_only: true, sweep_seconds: 0, .. } = &args.command {
        anyhow::bail!("--sweep-only needs --sweep-seconds of at least 1 (0 skips the sweep)");
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = tempdir_in(&args.dir)?;
    let result = match &args.command {
        BenchCommand::Append {
            events,
            batch,
            concurrency,
            single_events,
            disk_mib,
            sweep_seconds,
            sweep_only,
            checkpoints,
        } => {
            let plan = AppendPlan {
                events: *events,
                batch: (*batch).max(1),
                concurrency: (*concurrency).max(1),
                single_events: *single_events,
                disk_mib: *disk_mib,
                event_size: args.event_size,
                sweep_seconds: *sweep_seconds,
                sweep_only: *sweep_only,
                sweep_modes: checkpoints.iter().map(|c| c.mode()).collect(),
            };
            bench_append(&dir, &plan).await.map(|(rows, extra)| ("append", rows, extra))
        }
        BenchCommand::Subscriptions {
            events,
            batch,
            live_seconds,
            rate,
            idle_subscriptions,
            idle_seconds,
            checkpoints,
        } => {
            let plan = subscriptions::SubscriptionPlan {
                events: *events,
                batch: (*batch).clamp(1, reel_sqlite::MAX_READ_LIMIT),
                event_size: args.event_size,
                live_seconds: *live_seconds,
                rate: (*rate).clamp(1, 100_000),
                idle_subscriptions: *idle_subscriptions,
                idle_seconds: *idle_seconds,
                checkpoints: checkpoints.mode(),
            };
            subscriptions::bench_subscriptions(&dir, &plan).await.map(|(rows, extra)| ("subscriptions", rows, extra))
        }
        BenchCommand::Postgres { concurrency, single_events, batches, latency_seconds, sweep_seconds, sweep_only } => {
            let url = match cli.store.as_str() {
                url if url.starts_with("postgres://") || url.starts_with("postgresql://") => url.to_string(),
                _ => anyhow::bail!(
                    "reel bench postgres needs --store postgres://… (a scratch schema is created and dropped)"
                ),
            };
            let plan = postgres::PostgresPlan {
                url,
                concurrency: (*concurrency).clamp(1, 512),
                single_events: *single_events,
                batches: (*batches).max(1),
                event_size: args.event_size,
                latency_seconds: (*latency_seconds).max(1),
                sweep_seconds: (*sweep_seconds).max(1),
                sweep_only: *sweep_only,
            };
            postgres::bench_postgres(&plan).await.map(|(rows, extra)| ("postgres", rows, extra))
        }
        BenchCommand::PostgresWorker { .. } => unreachable!("handled above"),
        BenchCommand::Http {
            connections,
            single_events,
            batches,
            subscribers,
            fanout_seconds,
            idle_polls,
            sweep_seconds,
        } => {
            let plan = http::HttpPlan {
                connections: (*connections).clamp(1, 1024),
                single_events: *single_events,
                batches: (*batches).max(1),
                event_size: args.event_size,
                subscribers: (*subscribers).clamp(1, 5_000),
                fanout_seconds: (*fanout_seconds).max(1),
                idle_polls: (*idle_polls).min(15_000),
                sweep_seconds: *sweep_seconds,
            };
            http::bench_http(&dir, &plan).await.map(|(rows, extra)| ("http", rows, extra))
        }
        BenchCommand::Aggregates { events, callers, commands, hot_commands } => {
            let plan = aggregates::AggregatePlan {
                events: (*events).max(1),
                callers: (*callers).clamp(1, 1024),
                commands: *commands,
                hot_commands: *hot_commands,
            };
            aggregates::bench_aggregates(&dir, &plan).await.map(|(rows, extra)| ("aggregates", rows, extra))
        }
        BenchCommand::Relay {
            brokers,
            events,
            batch,
            latency_seconds,
            rate,
            redis_url,
            nats_url,
            kafka_brokers,
            mqtt_host,
            mqtt_port,
        } => {
            let plan = relay::RelayPlan {
                brokers: brokers.clone(),
                events: (*events).max(1),
                batch: (*batch).clamp(1, 10_000),
                event_size: args.event_size,
                latency_seconds: (*latency_seconds).max(1),
                rate: (*rate).clamp(1, 100_000),
                redis_url: redis_url.clone(),
                nats_url: nats_url.clone(),
                kafka_brokers: kafka_brokers.clone(),
                mqtt_host: mqtt_host.clone(),
                mqtt_port: *mqtt_port,
            };
            relay::bench_relay(&dir, &plan).await.map(|(rows, extra)| ("relay", rows, extra))
        }
        BenchCommand::Edge { events, batch } => {
            edge::bench_edge(&dir, (*events).max(1), (*batch).clamp(1, 10_000), args.event_size)
                .await
                .map(|(rows, extra)| ("edge", rows, extra))
        }
        BenchCommand::EdgeFleet { devices, seconds, outage, idle, heartbeat } => {
            let plan = edge_fleet::FleetPlan {
                devices: (*devices).max(1),
                seconds: (*seconds).max(1),
                outage: *outage,
                idle: *idle,
                heartbeat: (*heartbeat).max(1),
            };
            edge_fleet::bench_edge_fleet(&dir, &plan, args.event_size)
                .await
                .map(|(rows, extra)| ("edge-fleet", rows, extra))
        }
        BenchCommand::Dcb { writers, seconds, events, batch, queries, postgres } => {
            let plan = dcb::DcbPlan {
                writers: (*writers).max(1),
                seconds: (*seconds).max(1),
                events: (*events).max(1),
                batch: (*batch).max(1),
                queries: (*queries).max(1),
                postgres: postgres.clone(),
            };
            dcb::bench_dcb(&dir, &plan, args.event_size).await.map(|(rows, extra)| ("dcb", rows, extra))
        }
        BenchCommand::Read { events, page, rounds } => {
            bench_read(&dir, *events, (*page).clamp(1, reel_sqlite::MAX_READ_LIMIT), args.event_size, *rounds)
                .await
                .map(|(rows, extra)| ("read", rows, extra))
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (name, rows, extra) = result?;
    let report = Report { bench: name.into(), date: today(), machine: machine(&args.dir), rows, extra };
    print_table(&report);
    let path = args.json.clone().unwrap_or_else(|| PathBuf::from("bench-results").join(format!("{name}.json")));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}

/// Writes `events` events of `payload` in appends of up to 1,000, ten appends per group commit.
async fn populate(store: &SqliteStore, events: u64, payload: &[u8], bar: &indicatif::ProgressBar) -> Result<()> {
    let mut written = 0u64;
    let mut stream = 0u64;
    while written < events {
        let mut requests = Vec::new();
        while requests.len() < 10 && written < events {
            let n = (events - written).min(1000);
            requests.push(AppendRequest::new(
                bench_stream(stream % 1000),
                ExpectedVersion::Any,
                (0..n).map(|_| NewEvent::new("Bench", payload.to_vec())).collect(),
            ));
            written += n;
            stream += 1;
        }
        for result in store.append_many(requests).await {
            let r = result?;
            bar.inc(r.last_position.0 - r.first_position.0 + 1);
        }
    }
    Ok(())
}

/// Appends made by `writers` tasks for `seconds`, each timing its own calls.
struct Timed {
    events: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Timed {
    fn quantile_ms(&self, q: f64) -> f64 {
        let at = ((self.latencies.len().max(1) - 1) as f64 * q).round() as usize;
        self.latencies.get(at).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `writers` tasks until `seconds` have passed; `append(writer, n)` makes writer's n-th append.
/// Everything is connected before the clock starts.
async fn timed<F, Fut>(writers: u64, seconds: u64, append: F) -> Result<Timed>
where
    F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), reel_core::ReelError>> + Send,
{
    let append = Arc::new(append);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let append = append.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    let at = Instant::now();
                    append(w, n).await?;
                    latencies.push(at.elapsed());
                    n += 1;
                }
                Ok::<_, reel_core::ReelError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Timed { events: latencies.len() as u64, elapsed, latencies })
}

/// A row for a timed run: its rate, and p50 / p95 / p99 / p999 of the calls in the note, with
/// the rate against `baseline` (named) when given.
fn timed_row(name: String, timed: &Timed, baseline: Option<(f64, &str)>) -> Row {
    let mut row = row(name, timed.events, timed.elapsed, None);
    row.note = format!(
        "p50 {:.2} / p95 {:.2} / p99 {:.2} / p999 {:.2} ms",
        timed.quantile_ms(0.5),
        timed.quantile_ms(0.95),
        timed.quantile_ms(0.99),
        timed.quantile_ms(0.999)
    );
    if let Some((baseline, what)) = baseline {
        row.note = format!("{}; {:.2}× {what}", row.note, timed.rate() / baseline);
    }
    row
}

/// Runs `count` tasks made by `task` at once and waits for all of them.
async fn run_tasks<F, Fut>(count: u64, task: F) -> Result<()>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), reel_core::ReelError>> + Send + 'static,
{
    let handles: Vec<_> = (0..count).map(|t| tokio::spawn(task(t))).collect();
    for handle in handles {
        handle.await??;
    }
    Ok(())
}

fn bench_stream(i: u64) -> StreamName {
    StreamName::new(format!("bench-{i}")).expect("bench stream names are valid")
}

/// A JSON payload of exactly `size` bytes (at least 12).
fn payload(size: usize) -> Vec<u8> {
    let pad = size.saturating_sub(10).max(1);
    format!("{{\"pad\":\"{}\"}}", "x".repeat(pad)).into_bytes()
}

/// Event ids in the raw baseline.
fn measure(name: String, events: u64, work: impl FnOnce() -> Result<()>) -> Result<Row> {
    let io_before = write_bytes();
    let started = Instant::now();
    work().with_context(|| format!("bench {name}"))?;
    Ok(row(name, events, started.elapsed(), io_before))
}

async fn measure_async(name: String, events: u64, work: impl std::future::Future<Output = Result<()>>) -> Result<Row> {
    let io_before = write_bytes();
    let started = Instant::now();
    work.await.with_context(|| format!("bench {name}"))?;
    Ok(row(name, events, started.elapsed(), io_before))
}

fn row(name: String, events: u64, elapsed: Duration, io_before: Option<u64>) -> Row {
    let seconds = elapsed.as_secs_f64();
    let disk = io_before.zip(write_bytes()).map(|(a, b)| b.saturating_sub(a) as f64 / events.max(1) as f64);
    Row {
        name,
        events,
        seconds,
        events_per_sec: events as f64 / seconds,
        disk_bytes_per_event: disk,
        note: String::new(),
    }
}

fn with_ratio(row: Row, baseline: f64) -> Row {
    with_ratio_named(row, baseline, "baseline")
}

fn with_ratio_named(mut row: Row, baseline: f64, what: &str) -> Row {
    row.note = format!("{:.2}× {what}", row.events_per_sec / baseline);
    row
}

/// `write_bytes` of /proc/self/io: bytes this process caused to be sent to storage.
fn write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok())
}

fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak-RSS counter (VmHWM) so the scan's own peak is measured.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!("run-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn today() -> String {
    let now = reel_core::Timestamp::now().to_string();
    now.get(..10).unwrap_or(&now).to_string()
}

fn machine(dir: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        dir: dir.display().to_string(),
    }
}

fn print_table(report: &Report) {
    println!(
        "reel bench {} — {} — {} CPUs, {}",
        report.bench, report.date, report.machine.cpus, report.machine.cpu_model
    );
    println!("{:<72} {:>10} {:>8} {:>12} {:>10}  vs", "run", "events", "seconds", "events/s", "disk B/ev");
    for row in &report.rows {
        println!(
            "{:<72} {:>10} {:>8.2} {:>12.0} {:>10}  {}",
            row.name,
            row.events,
            row.seconds,
            row.events_per_sec,
            row.disk_bytes_per_event.map_or("-".into(), |b| format!("{b:.0}")),
            row.note
        );
    }
}
