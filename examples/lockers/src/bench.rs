//! `lockers bench`: the platform (`lockers serve`, a process of its own) under a simulated
//! fleet (this process), measured: the platform's CPU and memory, projection lag, the UI's
//! query latency for the units table and an event-log page, and the time to rebuild the event
//! log projection from every event of the run. Prints a table and writes JSON.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use reel_core::{SubscriptionCriteria, SubscriptionId};
use reel_subscriptions::SubscriptionEngine;
use serde::Serialize;
use tokio::sync::watch;

use crate::fleet::{Fleet, FleetOptions};
use crate::platform::{StoreLocation, Stores};

/// `lockers bench` flags.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Seconds of load (the figure is 600).
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Units.
    #[arg(long, default_value_t = 1000)]
    pub units: usize,
    /// Events per unit per second.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Reservations per second.
    #[arg(long, default_value_t = 50.0)]
    pub reservations: f64,
    /// The platform's store: empty for a new SQLite file in a temporary directory, or
    /// postgres://… (a fresh schema is made for the run).
    #[arg(long, default_value = "")]
    pub store: String,
    /// The MQTT broker, or `off`.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// Where to write the JSON results.
    #[arg(long, default_value = "lockers-bench.json")]
    pub json: PathBuf,
}

/// A latency distribution in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        Self { count: samples.len(), p50_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    /// Backend.
    pub store: String,
    /// Seconds of load.
    pub seconds: u64,
    /// Units simulated.
    pub units: usize,
    /// Events stored centrally during the run.
    pub events: u64,
    /// Central events per second.
    pub events_per_second: f64,
    /// Reservations made (paid), refused (taken) and failed.
    pub reservations: (u64, u64, u64),
    /// Mean reserve request time.
    pub reserve_mean_ms: f64,
    /// The platform process's CPU, as a share of one core.
    pub platform_cpu_cores: f64,
    /// Its resident memory at the end, and its peak.
    pub platform_rss_mib: (f64, f64),
    /// The largest projection lag (age of the oldest unhandled event, ms), sampled each second.
    pub projection_lag: Latency,
    /// `GET /api/queries/units` (1,000 rows, sorted).
    pub units_table: Latency,
    /// `GET /api/queries/units/NAME/events?page=N` (25 rows).
    pub event_log_page: Latency,
    /// Rows of the event log projection, and seconds to rebuild it from the beginning.
    pub rebuild: (u64, f64),
    /// Baseline: seconds to read every event of the log once (`read_all`, pages of 1,000), which
    /// any rebuild must do.
    pub baseline_scan_s: f64,
    /// Baseline: the units table query in this process, idle store, no HTTP.
    pub baseline_units_table: Latency,
    /// Baseline: the event-log page query in this process, idle store, no HTTP.
    pub baseline_event_log_page: Latency,
}

/// The platform as a child process.
struct PlatformProcess {
    child: Child,
    app: String,
    reel: String,
}

impl PlatformProcess {
    fn start(store: &str, schema: &str, mqtt: &str, prefix: &str) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the lockers binary")?;
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--store",
                store,
                "--schema",
                schema,
                "--listen",
                "127.0.0.1:0",
                "--reel-listen",
                "127.0.0.1:0",
            ])
            .args(["--mqtt", mqtt, "--mqtt-prefix", prefix])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting lockers serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("lockers serve said {line:?}"))?;
        let field =
            |name: &str| ready[name].as_str().map(str::to_string).context("lockers serve did not print its addresses");
        Ok(Self { app: field("app")?, reel: field("reel")?, child })
    }

    /// CPU seconds used so far (user + system), from `/proc`.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        ticks / 100.0
    }

    /// Resident memory now and at its peak, MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    fn stop(mut self) {
        // SIGINT: the platform stops gracefully, saving positions.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let schema = format!("lockers_bench_{}", std::process::id());
    let store =
        if args.store.is_empty() { dir.path().join("platform.db").display().to_string() } else { args.store.clone() };
    let location = StoreLocation::parse(&store, &schema).map_err(anyhow::Error::msg)?;
    let prefix = format!("bench{}", std::process::id());
    let platform = PlatformProcess::start(&store, &schema, &args.mqtt, &prefix)?;
    let mqtt = match args.mqtt.as_str() {
        "off" => None,
        text => Some(text.parse().context("--mqtt must be host:port or off")?),
    };
    let options = FleetOptions {
        units: args.units,
        rate: args.rate,
        reservations: args.reservations,
        offline_share: 0.05,
        heartbeat: Duration::from_secs(5),
        central: platform.reel.clone(),
        app: platform.app.clone(),
        mqtt,
        mqtt_prefix: prefix,
        data_dir: dir.path().join("units"),
        first: 1000,
        seed: 11,
    };
    eprintln!("starting {} units against {} ({store})", args.units, platform.app);
    let fleet = Fleet::start(options).await?;
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(fleet.clone().run(stopped.clone()));
    let http = reqwest::Client::new();
    let head = |http: reqwest::Client, reel: String| async move {
        let head: serde_json::Value = http.get(format!("{reel}/head")).send().await?.json().await?;
        anyhow::Ok(head["head"].as_u64().or_else(|| head["position"].as_u64()).unwrap_or(0))
    };
    let start_head = head(http.clone(), platform.reel.clone()).await?;
    let cpu_start = platform.cpu_seconds();
    let started = Instant::now();
    let lags = Arc::new(Mutex::new(Vec::new()));
    let tables = Arc::new(Mutex::new(Vec::new()));
    let pages = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_lag(http.clone(), platform.app.clone(), lags.clone(), stopped.clone()));
    let reader = tokio::spawn(read_ui(
        http.clone(),
        platform.app.clone(),
        args.units,
        tables.clone(),
        pages.clone(),
        stopped.clone(),
    ));
    let progress = indicator(args.seconds);
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress(started.elapsed().as_secs());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (platform.cpu_seconds() - cpu_start) / elapsed;
    let rss = platform.rss_mib();
    let end_head = head(http.clone(), platform.reel.clone()).await?;
    let _ = stop.send(true);
    let _ = tokio::join!(running, sampler, reader);
    platform.stop();
    eprintln!("rebuilding the event log projection…");
    let rebuild = rebuild_event_log(&location).await?;
    eprintln!("measuring the baselines…");
    let (baseline_scan_s, baseline_units_table, baseline_event_log_page) = baselines(&location, args.units).await?;
    let counts = &fleet.counts;
    let reserved = counts.reserved.load(Ordering::Relaxed);
    let refused = counts.refused.load(Ordering::Relaxed);
    let requests = reserved + refused + counts.app_errors.load(Ordering::Relaxed);
    let result = BenchResult {
        store: if args.store.is_empty() { "sqlite".into() } else { "postgres".into() },
        seconds: args.seconds,
        units: args.units,
        events: end_head - start_head,
        events_per_second: (end_head - start_head) as f64 / elapsed,
        reservations: (reserved, refused, counts.app_errors.load(Ordering::Relaxed)),
        reserve_mean_ms: counts.reserve_nanos.load(Ordering::Relaxed) as f64 / requests.max(1) as f64 / 1e6,
        platform_cpu_cores: cpu,
        platform_rss_mib: rss,
        projection_lag: Latency::of(&mut lags.lock().unwrap()),
        units_table: Latency::of(&mut tables.lock().unwrap()),
        event_log_page: Latency::of(&mut pages.lock().unwrap()),
        rebuild,
        baseline_scan_s,
        baseline_units_table,
        baseline_event_log_page,
    };
    print_table(&result);
    std::fs::write(&args.json, serde_json::to_vec_pretty(&result)?)?;
    println!("wrote {}", args.json.display());
    if let StoreLocation::Postgres { url, schema } = &location {
        drop_schema(url, schema).await;
    }
    Ok(())
}

fn indicator(seconds: u64) -> impl Fn(u64) {
    let bar = indicatif::ProgressBar::new(seconds);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} s")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    move |at| {
        bar.set_position(at);
        if at >= seconds {
            bar.finish_and_clear();
        }
    }
}

/// The largest lag among the projections, every second.
async fn sample_lag(http: reqwest::Client, app: String, lags: Arc<Mutex<Vec<f64>>>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Ok(answer) = http.get(format!("{app}/api/queries/projections")).send().await else { continue };
        let Ok(body) = answer.json::<serde_json::Value>().await else { continue };
        let worst = body["subscriptions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| {
                s["id"].as_str().is_some_and(|id| {
                    id.starts_with("lockers_") && !id.contains("dispatch") && !id.contains("reconcile")
                })
            })
            .filter_map(|s| s["lag_seconds"].as_f64())
            .fold(0.0, f64::max);
        lags.lock().unwrap().push(worst * 1_000.0);
    }
}

/// A dashboard user: the units table and an event-log page, each twice a second.
async fn read_ui(
    http: reqwest::Client,
    app: String,
    units: usize,
    tables: Arc<Mutex<Vec<f64>>>,
    pages: Arc<Mutex<Vec<f64>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut random = crate::unit::Random::new(99);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let started = Instant::now();
        if http
            .get(format!("{app}/api/queries/units?sort=name"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .is_ok()
        {
            tables.lock().unwrap().push(started.elapsed().as_secs_f64() * 1_000.0);
        }
        let unit = 1000 + random.below(units as u64);
        let page = 1 + random.below(5);
        let started = Instant::now();
        let url = format!("{app}/api/queries/units/PL-{unit}/events?page={page}&size=25");
        if http.get(url).send().await.and_then(|r| r.error_for_status()).is_ok() {
            pages.lock().unwrap().push(started.elapsed().as_secs_f64() * 1_000.0);
        }
    }
}

/// Builds a new version of the event log from the beginning, timed, then removes it.
async fn rebuild_event_log(location: &StoreLocation) -> Result<(u64, f64)> {
    let stores = Stores::open(location).await?;
    let version = 99;
    let projector = stores.projector("eventlog", version).await?;
    let engine = SubscriptionEngine::new(stores.events.clone(), stores.subscriptions.clone(), vec![projector])?
        .with_batch_size(1_000);
    let id = SubscriptionId::new(crate::projections::subscription_id("eventlog", version))?;
    let criteria = SubscriptionCriteria::ids([id]);
    let started = Instant::now();
    engine.setup(&criteria, false).await?.into_result()?;
    engine.run_until_idle(&criteria, 10).await?.into_result()?;
    let seconds = started.elapsed().as_secs_f64();
    let table = crate::projections::EventLog::table(&stores.naming(version));
    let rows = stores.read.rows(&format!("SELECT COUNT(*) FROM {table}"), vec![]).await?;
    let count = rows.first().map_or(0, |r| r[0].int()) as u64;
    engine.remove(&criteria).await?.into_result()?;
    Ok((count, seconds))
}

/// The baselines, on the stopped platform's store: one scan of the log, and the two UI queries
/// called directly 200 times each.
async fn baselines(location: &StoreLocation, units: usize) -> Result<(f64, Latency, Latency)> {
    let stores = Stores::open(location).await?;
    let started = Instant::now();
    let mut from = reel_core::Position(1);
    loop {
        let page = stores.events.read_all(from, &reel_core::ReadAllFilter::default(), 1_000).await?;
        if page.events.is_empty() {
            break;
        }
        from = page.next;
    }
    let scan = started.elapsed().as_secs_f64();
    let serving = Arc::new(crate::queries::Serving::new(stores.schema.clone()));
    let queries = crate::queries::Queries::new(stores.read.clone(), stores.presence.clone(), serving);
    let mut random = crate::unit::Random::new(5);
    let (mut tables, mut pages) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let started = Instant::now();
        queries.units(crate::queries::UnitSort::Name, false).await?;
        tables.push(started.elapsed().as_secs_f64() * 1_000.0);
        let unit = format!("PL-{}", 1000 + random.below(units as u64));
        let started = Instant::now();
        queries.event_log(&unit, 1 + random.below(5) as i64, 25, false).await?;
        pages.push(started.elapsed().as_secs_f64() * 1_000.0);
    }
    Ok((scan, Latency::of(&mut tables), Latency::of(&mut pages)))
}

async fn drop_schema(url: &str, schema: &str) {
    if let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
    }
}

fn print_table(r: &BenchResult) {
    println!("| lockers bench ({}, {} units, {} s) | value |", r.store, r.units, r.seconds);
    println!("|---|---|");
    println!("| central events | {} ({:.0} ev/s) |", r.events, r.events_per_second);
    println!(
        "| reservations paid / refused / failed | {} / {} / {} (mean {:.1} ms) |",
        r.reservations.0, r.reservations.1, r.reservations.2, r.reserve_mean_ms
    );
    println!("| platform CPU | {:.2} cores |", r.platform_cpu_cores);
    println!("| platform memory (RSS end / peak) | {:.0} / {:.0} MiB |", r.platform_rss_mib.0, r.platform_rss_mib.1);
    println!(
        "| projection lag p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        r.projection_lag.p50_ms, r.projection_lag.p99_ms, r.projection_lag.max_ms
    );
    println!(
        "| units table p50 / p99 | {:.1} / {:.1} ms ({} requests) |",
        r.units_table.p50_ms, r.units_table.p99_ms, r.units_table.count
    );
    println!(
        "| event-log page p50 / p99 | {:.1} / {:.1} ms ({} requests) |",
        r.event_log_page.p50_ms, r.event_log_page.p99_ms, r.event_log_page.count
    );
    println!(
        "| event-log rebuild | {} rows in {:.1} s ({:.0} rows/s) |",
        r.rebuild.0,
        r.rebuild.1,
        r.rebuild.0 as f64 / r.rebuild.1.max(1e-9)
    );
    println!("| baseline: one read of the whole log | {:.1} s |", r.baseline_scan_s);
    println!(
        "| baseline: units table in-process, idle, p50 / p99 | {:.1} / {:.1} ms |",
        r.baseline_units_table.p50_ms, r.baseline_units_table.p99_ms
    );
    println!(
        "| baseline: event-log page in-process, idle, p50 / p99 | {:.1} / {:.1} ms |",
        r.baseline_event_log_page.p50_ms, r.baseline_event_log_page.p99_ms
    );
}
