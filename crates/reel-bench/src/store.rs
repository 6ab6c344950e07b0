//! Store benches: appends (batched, concurrent, group commit on and off) and full scans, each
//! against a plain rusqlite baseline and the disk's own limits.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use reel_core::{AllReader, EventStore, ExpectedVersion, NewEvent, Position, ReadAllFilter, StreamVersion};
use reel_sqlite::{CheckpointMode, SqliteOptions, SqliteStore};
use rusqlite::params;

use super::{
    bench_stream, measure, measure_async, payload, populate, progress, reset_peak_rss, row, rss_kib, run_tasks, timed,
    timed_row, with_ratio, with_ratio_named, Row,
};

pub(super) struct AppendPlan {
    pub(super) events: u64,
    pub(super) batch: u64,
    pub(super) concurrency: u64,
    pub(super) single_events: u64,
    pub(super) disk_mib: u64,
    pub(super) event_size: usize,
    pub(super) sweep_seconds: u64,
    /// Only the latency sweep and its baseline.
    pub(super) sweep_only: bool,
    /// The checkpoint modes the sweep measures.
    pub(super) sweep_modes: Vec<CheckpointMode>,
}

pub(super) async fn bench_append(dir: &Path, plan: &AppendPlan) -> Result<(Vec<Row>, serde_json::Value)> {
    let mut rows = Vec::new();
    if plan.sweep_only {
        let raw = single_commit_baseline(dir, plan)?;
        let fsync_rate = raw.events_per_sec;
        rows.push(raw);
        let sweep = latency_sweep(dir, plan, fsync_rate, &mut rows).await?;
        return Ok((rows, serde_json::json!({ "latency_sweep": sweep, "event_size": plan.event_size })));
    }
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
    let raw = single_commit_baseline(dir, plan)?;
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
    let sweep = if plan.sweep_seconds > 0 { latency_sweep(dir, plan, fsync_rate, &mut rows).await? } else { vec![] };
    let extra = serde_json::json!({
        "latency_sweep": sweep,
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

pub(super) async fn bench_read(
    dir: &Path,
    events: u64,
    page: usize,
    event_size: usize,
    rounds: u32,
) -> Result<(Vec<Row>, serde_json::Value)> {
    let path = dir.join("reel-read.db");
    let store = SqliteStore::open(&path)?;
    let payload = payload(event_size);
    let bar = progress(events, "writing");
    populate(&store, events, &payload, &bar).await?;
    bar.finish_and_clear();
    let total = store.head().await?.0;
    let store: Arc<dyn EventStore> = Arc::new(store);
    // This machine's speed drifts by a third within minutes: the scans alternate, and each
    // ratio is taken between the medians (and per round, in the JSON).
    let mut scans: [Vec<Row>; 4] = Default::default();
    let rss_before = rss_kib("VmRSS");
    reset_peak_rss();
    for round in 1..=rounds.max(1) {
        let baseline = measure(format!("raw rusqlite full scan in position order, round {round}"), total, || {
            raw_sqlite_scan(&path)
        })?;
        let borrowed = measure(format!("raw rusqlite full scan, columns borrowed, round {round}"), total, || {
            raw_sqlite_borrowed_scan(&path)
        })?;
        let name = format!("reel read_all full scan, pages of {page}, one page read ahead, round {round}");
        let pages = measure_async(name, total, async {
            let mut reader = AllReader::new(store.clone(), Position(1), ReadAllFilter::default(), page);
            let mut seen = 0u64;
            while let Some(events) = reader.next_page().await? {
                seen += events.len() as u64;
            }
            anyhow::ensure!(seen == total, "read {seen} of {total} events");
            Ok(())
        })
        .await?;
        let name = format!("reel scan_all, events shown not built, round {round}");
        let scan = measure_async(name, total, async {
            // The same work per event as the borrowed loop: every column read, lengths summed.
            let ((seen, bytes), _) = reel_core::scan_all(&*store, Position(1), (0u64, 0usize), |(seen, bytes), e| {
                *seen += 1;
                *bytes += e.data.len() + e.event_type.len() + e.id.as_bytes().len() + e.stream.as_str().len();
                *bytes += usize::from(e.position.0 + e.stream_version.0 + e.recorded_at.unix_micros() as u64 > 0);
                std::ops::ControlFlow::Continue(())
            })
            .await?;
            anyhow::ensure!(seen == total && bytes > 0, "scanned {seen} of {total} events");
            Ok(())
        })
        .await?;
        let baseline_rate = baseline.events_per_sec;
        scans[0].push(baseline);
        scans[1].push(borrowed);
        scans[2].push(with_ratio_named(pages, baseline_rate, "this round's baseline"));
        scans[3].push(with_ratio_named(scan, baseline_rate, "this round's baseline"));
    }
    let peak = rss_kib("VmHWM");
    let median_rate = |rows: &[Row]| {
        let mut rates: Vec<f64> = rows.iter().map(|r| r.events_per_sec).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let per_round = |scan: usize, baseline: usize| -> Vec<f64> {
        scans[scan].iter().zip(&scans[baseline]).map(|(s, b)| s.events_per_sec / b.events_per_sec).collect()
    };
    let (pages_ratios, scan_ratios, scan_borrowed_ratios) = (per_round(2, 0), per_round(3, 0), per_round(3, 1));
    let [baseline_rate, borrowed_rate, pages_rate, scan_rate] = [0, 1, 2, 3].map(|i| median_rate(&scans[i]));
    let mut rows = Vec::new();
    let [baselines, borrowed_loops, page_scans, view_scans] = scans;
    for (((baseline, borrowed), pages), scan) in
        baselines.into_iter().zip(borrowed_loops).zip(page_scans).zip(view_scans)
    {
        rows.extend([baseline, borrowed, pages, scan]);
    }
    let median = |name: String, rate: f64| row(name, total, Duration::from_secs_f64(total as f64 / rate), None);
    rows.push(median("median: raw rusqlite full scan".into(), baseline_rate));
    let mut borrowed = median("median: raw rusqlite full scan, columns borrowed".into(), borrowed_rate);
    borrowed.note = format!("scan_all: {:.2}× this", scan_rate / borrowed_rate);
    rows.push(borrowed);
    rows.push(with_ratio_named(
        median(format!("median: reel read_all full scan, pages of {page}"), pages_rate),
        baseline_rate,
        "median baseline",
    ));
    rows.push(with_ratio_named(
        median("median: reel scan_all, events shown not built".into(), scan_rate),
        baseline_rate,
        "median baseline",
    ));
    println!(
        "memory: RSS before the scans {} MiB, peak during them {} MiB ({} events)",
        rss_before.map_or("?".into(), |k| (k / 1024).to_string()),
        peak.map_or("?".into(), |k| (k / 1024).to_string()),
        total
    );
    let extra = serde_json::json!({
        "rss_before_scan_kib": rss_before,
        "peak_rss_during_scan_kib": peak,
        "page": page,
        "event_size": event_size,
        "rounds": rounds.max(1),
        "ratio_per_round": pages_ratios,
        "ratio_of_medians": pages_rate / baseline_rate,
        "scan_all_ratio_per_round": scan_ratios,
        "scan_all_ratio_of_medians": scan_rate / baseline_rate,
        "scan_all_to_borrowed_loop_per_round": scan_borrowed_ratios,
        "scan_all_to_borrowed_loop_of_medians": scan_rate / borrowed_rate,
    });
    Ok((rows, extra))
}

/// The raw rusqlite loop with one commit per row: what one fsync per append allows.
fn single_commit_baseline(dir: &Path, plan: &AppendPlan) -> Result<Row> {
    let raw_single = (plan.single_events.max(plan.concurrency) / 4).max(100);
    let payload = payload(plan.event_size);
    measure("raw rusqlite loop, one commit per row".into(), raw_single, || {
        raw_sqlite_insert(&dir.join("raw-single.db"), raw_single, 1, &payload, IdIndex::None)
    })
}

/// Single-event `Exact` appends for a fixed time at 1, 16 and 64 writers, each call timed, for
/// each checkpoint mode, with the writer's per-stage breakdown (queue wait, group assembly,
/// write, commit, checkpoint, reply) printed after each point and kept in the JSON.
async fn latency_sweep(
    dir: &Path,
    plan: &AppendPlan,
    fsync_rate: f64,
    rows: &mut Vec<Row>,
) -> Result<Vec<serde_json::Value>> {
    let mut points = Vec::new();
    for &mode in &plan.sweep_modes {
        for writers in [1u64, 16, 64] {
            let name = format!("reel-sweep-{writers}-{mode:?}.db");
            let options = SqliteOptions { checkpoints: mode, record_stages: true, ..SqliteOptions::default() };
            let wal_path = dir.join(format!("{name}-wal"));
            let store = Arc::new(SqliteStore::open_with(dir.join(name), options)?);
            let payload = Arc::new(payload(plan.event_size));
            let appender = store.clone();
            let waits_before = crate::cpu::run_queue_wait_by_thread();
            let result = timed(writers, plan.sweep_seconds, move |w, n| {
                let (store, payload) = (appender.clone(), payload.clone());
                async move {
                    let expected = n
                        .checked_sub(1)
                        .map_or(ExpectedVersion::NoStream, |v| ExpectedVersion::Exact(StreamVersion(v)));
                    store.append(&bench_stream(w), expected, vec![NewEvent::new("Bench", payload.to_vec())]).await?;
                    Ok(())
                }
            })
            .await?;
            let waited = crate::cpu::run_queue_wait_since(&waits_before);
            let how = match mode {
                CheckpointMode::InsideCommit => "checkpoints inside commits",
                CheckpointMode::AfterAnswer => "checkpoints after answering",
                CheckpointMode::Background => "background checkpoints",
            };
            let name = format!("reel, {writers} writer(s), single Exact appends, {how}, {} s", plan.sweep_seconds);
            rows.push(timed_row(name, &result, Some((fsync_rate, "one commit per row"))));
            let stages = store.stage_report().unwrap_or_default();
            let splits = store.append_splits(&[0.99, 0.999]).unwrap_or_default();
            // How far the WAL grew: it starts over only after a checkpoint that caught up with it.
            let wal_bytes = std::fs::metadata(&wal_path).map_or(0, |m| m.len());
            print_stages(
                &format!("{writers} writer(s), {how}, WAL file {:.1} MiB", wal_bytes as f64 / 1048576.0),
                &result,
                &stages,
                &splits,
            );
            // Time threads were ready to run but had no CPU: where a caller's latency goes when
            // no stage of the writer accounts for it.
            println!(
                "  waiting for a CPU (runnable, not running), per append: {}",
                waited
                    .iter()
                    .map(|(name, d)| format!("{name} {:.1} µs", d.as_secs_f64() * 1e6 / result.events.max(1) as f64))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            points.push(serde_json::json!({
                "writers": writers, "checkpoints": format!("{mode:?}"), "wal_bytes": wal_bytes, "events_per_sec": result.events as f64 / result.elapsed.as_secs_f64(),
                "p50_ms": result.quantile_ms(0.5), "p95_ms": result.quantile_ms(0.95),
                "p99_ms": result.quantile_ms(0.99), "p999_ms": result.quantile_ms(0.999),
                "run_queue_wait_ms": waited.iter().map(|(name, d)| (name.clone(), serde_json::json!(d.as_secs_f64() * 1e3))).collect::<serde_json::Map<_, _>>(),
                "append_splits": splits.iter().map(|s| serde_json::json!({
                    "from_quantile": s.from_quantile, "appends": s.appends, "total_ms": s.total_ms,
                    "queued_ms": s.queued_ms, "in_writer_ms": s.in_writer_ms, "wake_up_ms": s.wake_up_ms,
                })).collect::<Vec<_>>(),
                "stages": stages.iter().map(|s| serde_json::json!({
                    "stage": s.stage.name(), "count": s.count, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms,
                    "p999_ms": s.p999_ms, "max_ms": s.max_ms, "total_ms": s.total_ms,
                })).collect::<Vec<_>>(),
            }));
        }
    }
    Ok(points)
}

/// The writer's stages of one sweep point beside the callers' own latency.
fn print_stages(
    point: &str,
    callers: &super::Timed,
    stages: &[reel_sqlite::StageSummary],
    splits: &[reel_sqlite::AppendSplit],
) {
    println!("stages, {point}:");
    println!("  {:<28} {:>9} {:>9} {:>9} {:>9} {:>9}", "stage", "samples", "p50 ms", "p99 ms", "p999 ms", "max ms");
    println!(
        "  {:<28} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        "whole append (caller)",
        callers.events,
        callers.quantile_ms(0.5),
        callers.quantile_ms(0.99),
        callers.quantile_ms(0.999),
        callers.quantile_ms(1.0)
    );
    for s in stages.iter().filter(|s| s.count > 0) {
        println!(
            "  {:<28} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            s.stage.name(),
            s.count,
            s.p50_ms,
            s.p99_ms,
            s.p999_ms,
            s.max_ms
        );
    }
    // Each append split at the points the writer noted: which part makes the slowest ones slow.
    println!(
        "  {:<28} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "mean split of appends", "appends", "whole ms", "queued", "in writer", "wake-up"
    );
    for s in splits {
        let which = if s.from_quantile == 0.0 {
            "all".to_string()
        } else {
            format!("slowest from p{}", s.from_quantile * 100.0)
        };
        println!(
            "  {:<28} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            which, s.appends, s.total_ms, s.queued_ms, s.in_writer_ms, s.wake_up_ms
        );
    }
}

fn open(dir: &Path, name: &str, group_commit: bool) -> Result<SqliteStore> {
    let options = SqliteOptions { group_commit, ..SqliteOptions::default() };
    Ok(SqliteStore::open_with(dir.join(name), options)?)
}

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

/// Reads every column of every row in position order, decoding each into owned values, as a
/// reader that hands events on must.
fn raw_sqlite_scan(path: &Path) -> Result<()> {
    raw_scan(path, |row| {
        let id: [u8; 16] = row.get(3)?;
        let event_type: String = row.get(4)?;
        let data: Vec<u8> = row.get(5)?;
        let metadata: Option<String> = row.get(6)?;
        Ok(data.len() + event_type.len() + metadata.map_or(0, |m| m.len()) + id.len())
    })
}

/// Reads every column of every row in position order without copying any: the floor for a
/// scan that shows rows without building events.
fn raw_sqlite_borrowed_scan(path: &Path) -> Result<()> {
    raw_scan(path, |row| {
        let id = row.get_ref(3)?.as_blob()?;
        let event_type = row.get_ref(4)?.as_str()?;
        let data = row.get_ref(5)?.as_blob()?;
        let metadata = row.get_ref(6)?.as_str_or_null()?;
        Ok(data.len() + event_type.len() + metadata.map_or(0, str::len) + id.len())
    })
}

/// The plain loop both raw scans share: the integer columns here, the others by `columns`,
/// which returns the bytes it read.
fn raw_scan(path: &Path, mut columns: impl FnMut(&rusqlite::Row) -> rusqlite::Result<usize>) -> Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    let mut statement = conn.prepare("SELECT position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at FROM events ORDER BY position")?;
    let mut rows = statement.query([])?;
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let position: i64 = row.get(0)?;
        let stream_id: i64 = row.get(1)?;
        let version: i64 = row.get(2)?;
        bytes += columns(row)?;
        let recorded_at: i64 = row.get(7)?;
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
