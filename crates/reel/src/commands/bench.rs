//! `reel bench append|read`: throughput against baselines measured in the same run.
//!
//! Each bench creates its own stores in `--dir` (removed afterwards), prints a table and writes
//! JSON. Nothing here asserts a figure; docs/BENCHMARKS.md records them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use reel_core::{AllReader, EventStore, ExpectedVersion, NewEvent, Position, ReadAllFilter, StreamName, StreamVersion};
use reel_sqlite::{SqliteOptions, SqliteStore};
use rusqlite::params;
use serde::Serialize;

use super::transfer::progress;
use crate::Cli;

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
    },
    /// Full `read_all` scan against a raw SQLite scan of the same file, with peak memory.
    Read {
        /// Events to write first and then read.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per `read_all` page.
        #[arg(long, default_value_t = 1_000)]
        page: usize,
    },
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

pub async fn run(_cli: &Cli, args: &BenchArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = tempdir_in(&args.dir)?;
    let result = match &args.command {
        BenchCommand::Append { events, batch, concurrency, single_events, disk_mib } => {
            let plan = AppendPlan {
                events: *events,
                batch: (*batch).max(1),
                concurrency: (*concurrency).max(1),
                single_events: *single_events,
                disk_mib: *disk_mib,
                event_size: args.event_size,
            };
            bench_append(&dir, &plan).await.map(|(rows, extra)| ("append", rows, extra))
        }
        BenchCommand::Read { events, page } => {
            bench_read(&dir, *events, (*page).clamp(1, reel_sqlite::MAX_READ_LIMIT), args.event_size)
                .await
                .map(|(rows, extra)| ("read", rows, extra))
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (name, rows, extra) = result?;
    let report = Report { bench: name.into(), date: today(), machine: machine(&args.dir), rows, extra };
    print_table(&report);
    let path = args.json.clone().unwrap_or_else(|| crate::default_results_dir().join(format!("{name}.json")));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}

struct AppendPlan {
    events: u64,
    batch: u64,
    concurrency: u64,
    single_events: u64,
    disk_mib: u64,
    event_size: usize,
}

async fn bench_append(dir: &Path, plan: &AppendPlan) -> Result<(Vec<Row>, serde_json::Value)> {
    let mut rows = Vec::new();
    let (bandwidth, fsyncs_per_sec) = disk_limits(dir, plan.disk_mib)?;
    let payload = payload(plan.event_size);
    let batches = (plan.events / plan.batch).max(1);
    let total = batches * plan.batch;

    let baseline = measure(format!("raw rusqlite loop, batches of {}", plan.batch), total, || {
        raw_sqlite_insert(&dir.join("raw-batch.db"), batches, plan.batch, &payload, IdIndex::None)
    })?;
    let baseline_rate = baseline.events_per_sec;
    rows.push(baseline);
    // Why Reel has no global index on event ids: the same loop with one on random ids.
    let indexed = measure(format!("raw rusqlite loop, batches of {}, UUIDv4 unique index", plan.batch), total, || {
        raw_sqlite_insert(&dir.join("raw-indexed.db"), batches, plan.batch, &payload, IdIndex::RandomV4)
    })?;
    rows.push(with_ratio(indexed, baseline_rate));

    let store = open(dir, "reel-batch.db", true)?;
    let row = measure_async(format!("reel append, batches of {} (one in flight)", plan.batch), total, async {
        for i in 0..batches {
            let events = (0..plan.batch).map(|_| NewEvent::new("Bench", payload.clone())).collect();
            store.append(&bench_stream(i % 1000), ExpectedVersion::Any, events).await?;
        }
        Ok(())
    })
    .await?;
    rows.push(with_ratio(row, baseline_rate));

    let store = open(dir, "reel-pipelined.db", true)?;
    let batch = plan.batch;
    let row = measure_async(format!("reel append, batches of {} (8 in flight)", plan.batch), total, async {
        run_tasks(8, |t| {
            let (store, payload) = (store.clone(), payload.clone());
            async move {
                for i in (t..batches).step_by(8) {
                    let events = (0..batch).map(|_| NewEvent::new("Bench", payload.clone())).collect();
                    store.append(&bench_stream(i % 1000), ExpectedVersion::Any, events).await?;
                }
                Ok(())
            }
        })
        .await
    })
    .await?;
    rows.push(with_ratio(row, baseline_rate));

    let singles = plan.single_events.max(plan.concurrency);
    let raw_single = (singles / 4).max(100);
    let raw = measure("raw rusqlite loop, one commit per row".into(), raw_single, || {
        raw_sqlite_insert(&dir.join("raw-single.db"), raw_single, 1, &payload, IdIndex::None)
    })?;
    let fsync_rate = raw.events_per_sec;
    rows.push(raw);
    for group_commit in [false, true] {
        let store =
            open(dir, if group_commit { "reel-single-group.db" } else { "reel-single-nogroup.db" }, group_commit)?;
        let per_task = singles / plan.concurrency;
        let name = format!(
            "reel, {} concurrent single-event Exact appends, group commit {}",
            plan.concurrency,
            if group_commit { "on" } else { "off" }
        );
        let row = measure_async(name, per_task * plan.concurrency, async {
            run_tasks(plan.concurrency, |t| {
                let (store, payload) = (store.clone(), payload.clone());
                async move {
                    let stream = bench_stream(t);
                    for v in 0..per_task {
                        let expected = match v {
                            0 => ExpectedVersion::NoStream,
                            v => ExpectedVersion::Exact(StreamVersion(v - 1)),
                        };
                        store.append(&stream, expected, vec![NewEvent::new("Bench", payload.clone())]).await?;
                    }
                    Ok(())
                }
            })
            .await
        })
        .await?;
        rows.push(with_ratio_named(row, fsync_rate, "one commit per row"));
    }
    let extra = serde_json::json!({
        "disk_sequential_write_mib_per_sec": bandwidth / (1024.0 * 1024.0),
        "disk_fdatasyncs_per_sec": fsyncs_per_sec,
        "event_size": plan.event_size,
    });
    println!(
        "disk: sequential write {:.0} MiB/s durable (write + fdatasync), {:.0} fdatasyncs/s",
        bandwidth / (1024.0 * 1024.0),
        fsyncs_per_sec
    );
    Ok((rows, extra))
}

async fn bench_read(dir: &Path, events: u64, page: usize, event_size: usize) -> Result<(Vec<Row>, serde_json::Value)> {
    let path = dir.join("reel-read.db");
    let store = SqliteStore::open(&path)?;
    let payload = payload(event_size);
    let bar = progress(events, "writing");
    let mut written = 0u64;
    let mut stream = 0u64;
    while written < events {
        // Ten appends of up to 1,000 events per group commit.
        let mut requests = Vec::new();
        while requests.len() < 10 && written < events {
            let n = (events - written).min(1000);
            requests.push(reel_core::AppendRequest {
                stream: bench_stream(stream % 1000),
                expected: ExpectedVersion::Any,
                events: (0..n).map(|_| NewEvent::new("Bench", payload.clone())).collect(),
            });
            written += n;
            stream += 1;
        }
        for result in store.append_many(requests).await {
            let r = result?;
            bar.inc(r.last_position.0 - r.first_position.0 + 1);
        }
    }
    bar.finish_and_clear();
    let total = store.head().await?.0;
    let mut rows = Vec::new();
    let baseline = measure("raw rusqlite full scan in position order".into(), total, || raw_sqlite_scan(&path))?;
    let baseline_rate = baseline.events_per_sec;
    rows.push(baseline);
    let rss_before = rss_kib("VmRSS");
    reset_peak_rss();
    let store: Arc<dyn EventStore> = Arc::new(store);
    let row = measure_async(format!("reel read_all full scan, pages of {page}, one page read ahead"), total, async {
        let mut reader = AllReader::new(store.clone(), Position(1), ReadAllFilter::default(), page);
        let mut seen = 0u64;
        while let Some(events) = reader.next_page().await? {
            seen += events.len() as u64;
        }
        anyhow::ensure!(seen == total, "read {seen} of {total} events");
        Ok(())
    })
    .await?;
    let peak = rss_kib("VmHWM");
    rows.push(with_ratio(row, baseline_rate));
    println!(
        "memory: RSS before the scan {} MiB, peak during the scan {} MiB ({} events)",
        rss_before.map_or("?".into(), |k| (k / 1024).to_string()),
        peak.map_or("?".into(), |k| (k / 1024).to_string()),
        total
    );
    let extra = serde_json::json!({
        "rss_before_scan_kib": rss_before,
        "peak_rss_during_scan_kib": peak,
        "page": page,
        "event_size": event_size,
    });
    Ok((rows, extra))
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

fn open(dir: &Path, name: &str, group_commit: bool) -> Result<SqliteStore> {
    let options = SqliteOptions { group_commit, ..SqliteOptions::default() };
    Ok(SqliteStore::open_with(dir.join(name), options)?)
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
#[derive(Clone, Copy, PartialEq)]
enum IdIndex {
    /// Time-ordered UUIDv7 ids, no index on them (what Reel does).
    None,
    /// Random UUIDv4 ids under a global unique index.
    RandomV4,
}

/// The same rows Reel writes, by a plain rusqlite loop with the same durability.
fn raw_sqlite_insert(path: &Path, batches: u64, batch: u64, payload: &[u8], ids: IdIndex) -> Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE events (position INTEGER PRIMARY KEY, stream_id INTEGER NOT NULL, stream_version INTEGER NOT NULL,
           event_id BLOB NOT NULL, event_type TEXT NOT NULL, data BLOB NOT NULL, metadata TEXT, recorded_at INTEGER NOT NULL);
         CREATE UNIQUE INDEX events_by_stream ON events(stream_id, stream_version);",
    )?;
    if ids == IdIndex::RandomV4 {
        conn.execute_batch("CREATE UNIQUE INDEX events_by_id ON events(event_id);")?;
    }
    let mut versions = vec![0i64; 1000];
    let mut position = 0i64;
    for b in 0..batches {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7)")?;
            let stream = (b % 1000) as usize;
            for _ in 0..batch {
                position += 1;
                let id = match ids {
                    IdIndex::None => uuid::Uuid::now_v7(),
                    IdIndex::RandomV4 => uuid::Uuid::new_v4(),
                };
                insert.execute(params![
                    position,
                    stream as i64,
                    versions[stream],
                    &id.as_bytes()[..],
                    "Bench",
                    payload,
                    0i64
                ])?;
                versions[stream] += 1;
            }
        }
        tx.commit()?;
    }
    Ok(())
}

/// Reads every column of every row in position order.
fn raw_sqlite_scan(path: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    let mut statement = conn.prepare("SELECT position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at FROM events ORDER BY position")?;
    let mut rows = statement.query([])?;
    // Decode every column into owned values, as a reader that hands events on must.
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let position: i64 = row.get(0)?;
        let stream_id: i64 = row.get(1)?;
        let version: i64 = row.get(2)?;
        let id: [u8; 16] = row.get(3)?;
        let event_type: String = row.get(4)?;
        let data: Vec<u8> = row.get(5)?;
        let metadata: Option<String> = row.get(6)?;
        let recorded_at: i64 = row.get(7)?;
        bytes += data.len() + event_type.len() + metadata.map_or(0, |m| m.len()) + id.len();
        bytes += usize::from(position + stream_id + version + recorded_at > 0);
    }
    anyhow::ensure!(bytes > 0, "scanned nothing");
    Ok(())
}

/// Durable sequential write bandwidth (bytes/s) and fdatasync rate of the disk under `dir`.
fn disk_limits(dir: &Path, mib: u64) -> Result<(f64, f64)> {
    let path = dir.join("disk-probe");
    let chunk = vec![0x5au8; 1024 * 1024];
    let mut file = std::fs::File::create(&path)?;
    let started = Instant::now();
    for _ in 0..mib.max(1) {
        file.write_all(&chunk)?;
    }
    file.sync_data()?;
    let bandwidth = (mib.max(1) * 1024 * 1024) as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let mut file = std::fs::File::create(&path)?;
    let small = [0u8; 4096];
    let started = Instant::now();
    let mut syncs = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        file.write_all(&small)?;
        file.sync_data()?;
        syncs += 1;
    }
    let rate = f64::from(syncs) / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok((bandwidth, rate))
}

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
