//! `reel bench aggregates`: loading with and without snapshots, command throughput on distinct
//! aggregates, and conflicts on one hot aggregate.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use reel_aggregate::{Aggregate, DomainEvent, Repository};
use reel_core::{EventStore, SnapshotStore};
use reel_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

use super::{measure_async, run_tasks, Row};

/// What to measure.
pub(super) struct AggregatePlan {
    pub(super) events: u64,
    pub(super) callers: u64,
    pub(super) commands: u64,
    pub(super) hot_commands: u64,
}

/// A counter: the smallest aggregate that still loads, decides and saves like a real one.
#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum CounterEvent {
    #[serde(rename = "Incremented")]
    Incremented { by: u64 },
}

impl DomainEvent for CounterEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
}

#[derive(Clone)]
enum CounterCommand {
    /// Record `times` increments.
    Increment { times: u64 },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const CATEGORY: &'static str = "counter";
    const SNAPSHOT_EVERY: Option<u64> = Some(1000);
    type Event = CounterEvent;
    type Command = CounterCommand;
    type Error = Never;

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Incremented { by } = event;
        self.value += by;
    }

    fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, Never> {
        let CounterCommand::Increment { times } = command;
        Ok((0..times).map(|_| CounterEvent::Incremented { by: 1 }).collect())
    }
}

pub(super) async fn bench_aggregates(dir: &Path, plan: &AggregatePlan) -> Result<(Vec<Row>, serde_json::Value)> {
    let store = SqliteStore::open(dir.join("reel-aggregates.db"))?;
    let snapshots: Arc<dyn SnapshotStore> = Arc::new(store.snapshot_store()?);
    let events: Arc<dyn EventStore> = Arc::new(store.clone());
    let with_snapshots = Repository::<Counter>::new(events.clone()).with_snapshots(snapshots);
    let without = Repository::<Counter>::new(events.clone());
    let mut rows = Vec::new();

    // One aggregate with `events` events, written in commands of up to 1,000 (a snapshot every 1,000).
    let mut left = plan.events;
    while left > 0 {
        let times = left.min(1000);
        with_snapshots.execute("big", CounterCommand::Increment { times }, 0).await?;
        left -= times;
    }
    let loads = 20u64;
    let baseline = measure_async(
        format!("load an aggregate of {} events, no snapshot (×{loads})", plan.events),
        plan.events * loads,
        async {
            for _ in 0..loads {
                anyhow::ensure!(without.load("big").await?.state.value == plan.events, "wrong state");
            }
            Ok(())
        },
    )
    .await?;
    let baseline_seconds = baseline.seconds;
    rows.push(baseline);
    let mut row =
        measure_async(format!("load the same aggregate from its snapshot (×{loads})"), plan.events * loads, async {
            for _ in 0..loads {
                let loaded = with_snapshots.load("big").await?;
                anyhow::ensure!(loaded.from_snapshot && loaded.state.value == plan.events, "snapshot not used");
            }
            Ok(())
        })
        .await?;
    row.note = format!("{:.1}× faster", baseline_seconds / row.seconds);
    rows.push(row);

    // Commands on distinct aggregates: each caller works on its own ids.
    let per_caller = (plan.commands / plan.callers).max(1);
    let commands = per_caller * plan.callers;
    let repository = with_snapshots.clone();
    let distinct = measure_async(
        format!("commands on distinct aggregates, {} concurrent callers", plan.callers),
        commands,
        async {
            run_tasks(plan.callers, |caller| {
                let repository = repository.clone();
                async move {
                    for i in 0..per_caller {
                        let id = format!("c{caller}-{}", i % 50);
                        repository
                            .execute(&id, CounterCommand::Increment { times: 1 }, 0)
                            .await
                            .map_err(|e| reel_core::ReelError::InvalidArgument(e.to_string()))?;
                    }
                    Ok(())
                }
            })
            .await
        },
    )
    .await?;
    rows.push(distinct);

    // One hot aggregate: every caller on the same id, retrying on conflicts.
    let retries = Arc::new(AtomicU64::new(0));
    let hot_per_caller = (plan.hot_commands / plan.callers).max(1);
    let hot_total = hot_per_caller * plan.callers;
    let hot = measure_async(
        format!("commands on one hot aggregate, {} concurrent callers, retry on conflict", plan.callers),
        hot_total,
        async {
            run_tasks(plan.callers, |_| {
                let (repository, retries) = (repository.clone(), retries.clone());
                async move {
                    for _ in 0..hot_per_caller {
                        let done = repository
                            .execute("hot", CounterCommand::Increment { times: 1 }, 1000)
                            .await
                            .map_err(|e| reel_core::ReelError::InvalidArgument(e.to_string()))?;
                        retries.fetch_add(u64::from(done.retries), Ordering::Relaxed);
                    }
                    Ok(())
                }
            })
            .await
        },
    )
    .await?;
    let hot_retries = retries.load(Ordering::Relaxed);
    let final_value = with_snapshots.load("hot").await?.state.value;
    anyhow::ensure!(final_value == hot_total, "hot aggregate lost an increment: {final_value} of {hot_total}");
    let mut hot = hot;
    hot.note = format!("{:.2} retries per command", retries.load(Ordering::Relaxed) as f64 / hot_total as f64);
    rows.push(hot);
    println!(
        "hot aggregate: {hot_total} commands, {hot_retries} retries after conflicts ({:.2} per command), final value {final_value}",
        hot_retries as f64 / hot_total as f64
    );
    let extra = serde_json::json!({
        "aggregate_events": plan.events,
        "callers": plan.callers,
        "hot_commands": hot_total,
        "hot_retries": hot_retries,
        "hot_retries_per_command": hot_retries as f64 / hot_total as f64,
    });
    Ok((rows, extra))
}
