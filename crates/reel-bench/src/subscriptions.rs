//! `reel bench subscriptions`: catch-up into a no-op projector, a SQL projection rebuilt with
//! transactional checkpoints, live latency from append to handler, and a worker's idle CPU.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use reel_core::{
    AllReader, EventStore, ExpectedVersion, NewEvent, Position, ReadAllFilter, RecordedEvent, SubscriptionCriteria,
};
use reel_sqlite::{SqliteProjection, SqliteStore, SqliteSubscriptionStore};
use reel_subscriptions::{
    BatchFailure, HandlerError, Message, Subscriber, SubscriberSpec, SubscriptionEngine, TransactionalProjector,
    Worker, WorkerOptions,
};

use super::{bench_stream, measure_async, payload, populate, progress, reset_peak_rss, rss_kib, with_ratio, Row};

/// What to measure.
pub(super) struct SubscriptionPlan {
    pub(super) events: u64,
    pub(super) batch: usize,
    pub(super) event_size: usize,
    pub(super) live_seconds: u64,
    pub(super) rate: u64,
    pub(super) idle_subscriptions: usize,
    pub(super) idle_seconds: u64,
    pub(super) checkpoints: reel_sqlite::CheckpointMode,
}

pub(super) async fn bench_subscriptions(dir: &Path, plan: &SubscriptionPlan) -> Result<(Vec<Row>, serde_json::Value)> {
    let options = reel_sqlite::SqliteOptions { checkpoints: plan.checkpoints, ..Default::default() };
    let store = SqliteStore::open_with(dir.join("reel-subscriptions.db"), options)?;
    let subscriptions = store.subscription_store()?;
    let bar = progress(plan.events, "writing");
    populate(&store, plan.events, &payload(plan.event_size), &bar).await?;
    bar.finish_and_clear();
    let events: Arc<dyn EventStore> = Arc::new(store.clone());
    let total = events.head().await?.0;
    let mut rows = Vec::new();

    let baseline = measure_async(format!("baseline: read_all scan, pages of {}", plan.batch), total, async {
        let mut reader = AllReader::new(events.clone(), Position(1), ReadAllFilter::default(), plan.batch);
        while reader.next_page().await?.is_some() {}
        Ok(())
    })
    .await?;
    let baseline_rate = baseline.events_per_sec;
    rows.push(baseline);

    reset_peak_rss();
    let noop = Arc::new(Noop { spec: SubscriberSpec::projector("noop_1")?, seen: AtomicU64::new(0) });
    let engine = SubscriptionEngine::new(events.clone(), Arc::new(subscriptions.clone()), vec![noop.clone()])?
        .with_batch_size(plan.batch);
    let row = measure_async(format!("catch-up into a no-op projector, batches of {}", plan.batch), total, async {
        engine.setup(&SubscriptionCriteria::all(), false).await?;
        engine.boot(&SubscriptionCriteria::all()).await?;
        anyhow::ensure!(noop.seen.load(Ordering::Relaxed) == total, "the projector missed events");
        Ok(())
    })
    .await?;
    let catch_up_peak = rss_kib("VmHWM");
    rows.push(with_ratio(row, baseline_rate));

    let table = TransactionalProjector::new(
        SubscriberSpec::projector("table_1")?,
        subscriptions.clone(),
        Arc::new(TableProjector),
    );
    let engine = SubscriptionEngine::new(events.clone(), Arc::new(subscriptions.clone()), vec![table])?
        .with_batch_size(plan.batch);
    let row = measure_async(
        format!(
            "rebuild of a SQL table projection, upsert per event, rows + checkpoint in one transaction per {} events",
            plan.batch
        ),
        total,
        async {
            engine.setup(&SubscriptionCriteria::all(), false).await?;
            engine.boot(&SubscriptionCriteria::all()).await?;
            Ok(())
        },
    )
    .await?;
    rows.push(with_ratio(row, baseline_rate));

    let (p50, p99, live_events) = live_latency(&store, &subscriptions, plan).await?;
    println!("live latency at {} events/s: p50 {:.2} ms, p99 {:.2} ms over {live_events} events", plan.rate, p50, p99);
    let idle = idle_cpu(&store, &subscriptions, plan).await?;
    println!(
        "idle worker with {} active subscriptions: {:.3}% of one CPU over {} s",
        plan.idle_subscriptions, idle, plan.idle_seconds
    );
    println!("peak RSS during the catch-up: {} MiB", catch_up_peak.map_or("?".into(), |k| (k / 1024).to_string()));
    let extra = serde_json::json!({
        "live_rate_events_per_sec": plan.rate,
        "live_events": live_events,
        "live_latency_p50_ms": p50,
        "live_latency_p99_ms": p99,
        "idle_subscriptions": plan.idle_subscriptions,
        "idle_seconds": plan.idle_seconds,
        "idle_cpu_percent_of_one_core": idle,
        "catch_up_peak_rss_kib": catch_up_peak,
        "batch": plan.batch,
        "checkpoints": format!("{:?}", plan.checkpoints),
    });
    Ok((rows, extra))
}

/// A worker runs a processor; events are appended at `rate` per second; the processor notes how
/// long after its append each event arrived.
async fn live_latency(
    store: &SqliteStore,
    subscriptions: &SqliteSubscriptionStore,
    plan: &SubscriptionPlan,
) -> Result<(f64, f64, usize)> {
    let sent: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let probe = Arc::new(LatencyProbe {
        spec: SubscriberSpec::processor("latency")?,
        sent: sent.clone(),
        latencies: latencies.clone(),
    });
    let engine = SubscriptionEngine::new(Arc::new(store.clone()), Arc::new(subscriptions.clone()), vec![probe])?;
    engine.setup(&SubscriptionCriteria::all(), false).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(engine, WorkerOptions::default()).run(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = plan.live_seconds * plan.rate;
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(1) as f64);
    let started = Instant::now();
    let stream = bench_stream(7_777);
    for i in 0..count {
        let due = started + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let at = Instant::now();
        let result = store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Ping", "{}")]).await?;
        sent.lock().map_err(|_| anyhow::anyhow!("lock"))?.push((result.first_position.0, at));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while latencies.lock().map(|l| l.len()).unwrap_or(0) < count as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    worker.await??;
    let mut all = latencies.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    anyhow::ensure!(!all.is_empty(), "no live event arrived");
    all.sort();
    let quantile = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    Ok((quantile(0.50), quantile(0.99), all.len()))
}

/// CPU time of this process while a worker holds `idle_subscriptions` caught-up subscriptions.
async fn idle_cpu(
    store: &SqliteStore,
    subscriptions: &SqliteSubscriptionStore,
    plan: &SubscriptionPlan,
) -> Result<f64> {
    let mut subscribers: Vec<Arc<dyn Subscriber>> = Vec::new();
    for i in 0..plan.idle_subscriptions {
        subscribers
            .push(Arc::new(Noop { spec: SubscriberSpec::processor(&format!("idle_{i}"))?, seen: AtomicU64::new(0) }));
    }
    let engine = SubscriptionEngine::new(Arc::new(store.clone()), Arc::new(subscriptions.clone()), subscribers)?;
    engine.setup(&SubscriptionCriteria::all(), false).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(engine, WorkerOptions::default()).run(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_seconds = || crate::cpu::own_cpu_seconds().ok_or_else(|| anyhow::anyhow!("unreadable /proc/self/stat"));
    let (cpu_before, wall_before) = (cpu_seconds()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(plan.idle_seconds.max(1))).await;
    let (cpu, wall) = (cpu_seconds()? - cpu_before, wall_before.elapsed().as_secs_f64());
    let _ = stop.send(());
    worker.await??;
    Ok(cpu / wall * 100.0)
}

struct Noop {
    spec: SubscriberSpec,
    seen: AtomicU64,
}

#[async_trait]
impl Subscriber for Noop {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }
    async fn handle(&self, _message: &Message<'_>) -> Result<(), HandlerError> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn handle_batch(&self, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        self.seen.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Counts events per stream in a table, committing rows and checkpoint together.
struct TableProjector;

impl SqliteProjection for TableProjector {
    fn setup(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS bench_per_stream (stream TEXT PRIMARY KEY, events INTEGER NOT NULL)",
        )?;
        Ok(())
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO bench_per_stream (stream, events) VALUES (?1, 1)
                 ON CONFLICT (stream) DO UPDATE SET events = events + 1",
            )
            .map_err(|e| BatchFailure::at(0, e))?;
        for (index, event) in batch.iter().enumerate() {
            upsert.execute([event.stream.as_str()]).map_err(|e| BatchFailure::at(index, e))?;
        }
        Ok(())
    }
}

/// Notes the delay between each event's append and its delivery.
struct LatencyProbe {
    spec: SubscriberSpec,
    sent: Arc<Mutex<Vec<(u64, Instant)>>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
}

#[async_trait]
impl Subscriber for LatencyProbe {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }
    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        let now = Instant::now();
        let position = message.position().0;
        // The append returns after the event is durable; the worker may see it a moment before
        // the sender records it, so wait briefly for the send time.
        for _ in 0..100 {
            let at =
                self.sent.lock().map_err(|_| "lock")?.iter().rev().find(|(p, _)| *p == position).map(|(_, at)| *at);
            if let Some(at) = at {
                self.latencies.lock().map_err(|_| "lock")?.push(now.saturating_duration_since(at));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        Ok(())
    }
}
