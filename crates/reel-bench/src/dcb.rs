//! `reel bench dcb`: what tags and conditional appends cost, each against the same work without
//! them, in one run on one backend (the embedded store, or PostgreSQL with `--postgres`).
//!
//! - concurrent single-event appends with a condition on a tag of their own (disjoint: none
//!   is refused) against the same appends, same tags, without conditions;
//! - batched appends with 3 tags per event against the same batches without tags, with two
//!   patterns: tags as a device's batch has them (the batch's device, one of 24 lockers, one of
//!   7 kinds) and tags scattered over the index (every event a different one of 10,000 devices);
//! - `read_query` of one tag (about 100 events) on the tagged store, first page of 100: latency
//!   quantiles over many tags, and of a tag on one event in seven.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reel_core::{
    AppendCondition, AppendRequest, EventStore, ExpectedVersion, NewEvent, Position, Query, QueryItem, StreamName,
};

use crate::{bench_stream, payload, progress, timed, timed_row, with_ratio_named, Row};

/// What `reel bench dcb` runs.
pub(crate) struct DcbPlan {
    /// Concurrent appenders.
    pub writers: u64,
    /// Seconds each concurrent run lasts.
    pub seconds: u64,
    /// Events of each batched store.
    pub events: u64,
    /// Events per batched append.
    pub batch: usize,
    /// Tags whose first page is read.
    pub queries: usize,
    /// PostgreSQL URL, or the embedded store in the bench directory.
    pub postgres: Option<String>,
}

/// Distinct `device:` tags in the batched store: each on `events / DEVICES` events.
const DEVICES: u64 = 10_000;

/// A fresh store of the plan's backend, named `name`.
async fn open(dir: &Path, plan: &DcbPlan, name: &str) -> Result<Arc<dyn EventStore>> {
    match &plan.postgres {
        Some(url) => {
            let schema = format!("bench_dcb_{name}_{}", uuid::Uuid::now_v7().simple());
            let store = reel_postgres::PostgresStore::connect(url, &schema)
                .await
                .with_context(|| format!("connecting to {}", reel_postgres::redact(url)))?;
            Ok(Arc::new(store))
        }
        None => Ok(Arc::new(reel_sqlite::SqliteStore::open(dir.join(format!("{name}.db")))?)),
    }
}

/// Drops the scratch schemas of a PostgreSQL run.
async fn drop_schemas(plan: &DcbPlan) {
    let Some(url) = &plan.postgres else { return };
    let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else { return };
    tokio::spawn(connection);
    let Ok(rows) = client.query("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'bench_dcb_%'", &[]).await
    else {
        return;
    };
    for row in rows {
        let schema: String = row.get(0);
        let _ = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await;
    }
}

pub(crate) async fn bench_dcb(dir: &Path, plan: &DcbPlan, event_size: usize) -> Result<(Vec<Row>, serde_json::Value)> {
    let result = run(dir, plan, event_size).await;
    drop_schemas(plan).await;
    result
}

async fn run(dir: &Path, plan: &DcbPlan, event_size: usize) -> Result<(Vec<Row>, serde_json::Value)> {
    let backend = if plan.postgres.is_some() { "PostgreSQL" } else { "SQLite" };
    let data: Arc<[u8]> = payload(event_size).into();
    let mut rows = Vec::new();

    // 1. Concurrent single-event appends, the same tags, with and without a condition.
    let plain_store = open(dir, plan, "plain").await?;
    let plain = {
        let (store, data) = (plain_store.clone(), data.clone());
        timed(plan.writers, plan.seconds, move |w, n| {
            let (store, data) = (store.clone(), data.clone());
            async move {
                let event = NewEvent::new("Claimed", data.to_vec()).with_tags([format!("slot:{w}:{n}")]);
                store.append(&writer_stream(w), ExpectedVersion::Any, vec![event]).await.map(|_| ())
            }
        })
        .await?
    };
    let conditional_store = open(dir, plan, "conditional").await?;
    let conditional = {
        let (store, data) = (conditional_store.clone(), data.clone());
        timed(plan.writers, plan.seconds, move |w, n| {
            let (store, data) = (store.clone(), data.clone());
            async move {
                let tag = format!("slot:{w}:{n}");
                let condition = AppendCondition::new(Query::new(vec![QueryItem::tags([tag.as_str()])])?);
                let event = NewEvent::new("Claimed", data.to_vec()).with_tags([tag]);
                store.append_if(&writer_stream(w), ExpectedVersion::Any, vec![event], condition).await.map(|_| ())
            }
        })
        .await?
    };
    drop((plain_store, conditional_store));
    let plain_rate = plain.rate();
    rows.push(timed_row(
        format!("{backend}: {} writers, single tagged appends, no condition", plan.writers),
        &plain,
        None,
    ));
    rows.push(timed_row(
        format!("{backend}: {} writers, single tagged appends, condition on own tag", plan.writers),
        &conditional,
        Some((plain_rate, "without conditions")),
    ));

    // 2. Batched appends, without tags and with three per event.
    let untagged_store = open(dir, plan, "untagged").await?;
    let untagged = batched(&untagged_store, plan, &data, Tags::None).await?;
    drop(untagged_store);
    let grouped_store = open(dir, plan, "grouped").await?;
    let grouped = batched(&grouped_store, plan, &data, Tags::AsADeviceBatch).await?;
    drop(grouped_store);
    let tagged_store = open(dir, plan, "scattered").await?;
    let scattered = batched(&tagged_store, plan, &data, Tags::Scattered).await?;
    let untagged_rate = untagged.events_per_sec;
    let (grouped_rate, scattered_rate) = (grouped.events_per_sec, scattered.events_per_sec);
    rows.push(untagged);
    rows.push(with_ratio_named(grouped, untagged_rate, "without tags"));
    rows.push(with_ratio_named(scattered, untagged_rate, "without tags"));

    // 3. read_query on the tagged store: the first page of one device's events.
    let mut latencies = Vec::with_capacity(plan.queries);
    let mut found = 0usize;
    for i in 0..plan.queries {
        let device = (i as u64 * 7_919) % DEVICES;
        let query = Query::new(vec![QueryItem::tags([format!("device:{device}")])])?;
        let at = Instant::now();
        let page = tagged_store.read_query(&query, Position(0), 100).await?;
        latencies.push(at.elapsed());
        found += page.events.len();
    }
    let per_tag = found as f64 / plan.queries.max(1) as f64;
    rows.push(query_row(
        format!("{backend}: read_query, one tag among {} events, first page", plan.events),
        &mut latencies,
        format!("~{per_tag:.0} events per tag"),
    ));
    let mut common = Vec::new();
    for _ in 0..plan.queries.min(200) {
        let query = Query::new(vec![QueryItem::tags(["kind:3"])])?;
        let at = Instant::now();
        tagged_store.read_query(&query, Position(0), 100).await?;
        common.push(at.elapsed());
    }
    rows.push(query_row(
        format!("{backend}: read_query, a tag on 1 event in 7, first page"),
        &mut common,
        "page of 100".into(),
    ));
    let extra = serde_json::json!({
        "backend": backend,
        "writers": plan.writers,
        "seconds": plan.seconds,
        "conditional_vs_plain": conditional.rate() / plain_rate,
        "grouped_tags_vs_untagged": grouped_rate / untagged_rate,
        "scattered_tags_vs_untagged": scattered_rate / untagged_rate,
        "query_p99_ms": quantile_ms(&latencies, 0.99),
    });
    Ok((rows, extra))
}

fn writer_stream(w: u64) -> StreamName {
    StreamName::new(format!("claims-{w}")).expect("valid stream name")
}

/// The tags of the batched events.
#[derive(Clone, Copy)]
enum Tags {
    None,
    /// As a device's batch carries them: `device:{batch}`, `locker:{i mod 24}`, `kind:{i mod 7}`.
    AsADeviceBatch,
    /// Spread over the index: `device:{i mod 10,000}`, `kind:{i mod 7}`, `batch:{n}`, so each
    /// event of a batch inserts into another part of the index.
    Scattered,
}

impl Tags {
    fn of(self, i: u64, batch: u64) -> Vec<String> {
        match self {
            Tags::None => Vec::new(),
            Tags::AsADeviceBatch => {
                vec![format!("device:{batch}"), format!("locker:{}", i % 24), format!("kind:{}", i % 7)]
            }
            Tags::Scattered => {
                vec![format!("device:{}", i % DEVICES), format!("kind:{}", i % 7), format!("batch:{batch}")]
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Tags::None => "no tags",
            Tags::AsADeviceBatch => "3 tags per event as a device's batch has them",
            Tags::Scattered => "3 tags per event scattered over 10,000 devices",
        }
    }
}

/// `plan.events` events in appends of `plan.batch`, one append in flight, tagged as `tags` says.
async fn batched(store: &Arc<dyn EventStore>, plan: &DcbPlan, data: &[u8], tags: Tags) -> Result<Row> {
    let what = tags.describe();
    let bar = progress(plan.events, &format!("batches, {what}"));
    let started = Instant::now();
    let mut written = 0u64;
    let mut n = 0u64;
    while written < plan.events {
        let count = (plan.events - written).min(plan.batch as u64);
        let events = (written..written + count)
            .map(|i| NewEvent::new("Measured", data.to_vec()).with_tags(tags.of(i, n)))
            .collect();
        let request = AppendRequest::new(bench_stream(n % 1000), ExpectedVersion::Any, events);
        for result in store.append_many(vec![request]).await {
            result?;
        }
        written += count;
        n += 1;
        bar.inc(count);
    }
    bar.finish_and_clear();
    let name = format!("batches of {}, one in flight, {what}", plan.batch);
    Ok(crate::row(name, plan.events, started.elapsed(), None))
}

fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let at = ((sorted.len().max(1) - 1) as f64 * q).round() as usize;
    sorted.get(at).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// A row of query latencies: reads per second, and quantiles in the note.
fn query_row(name: String, latencies: &mut [Duration], note: String) -> Row {
    latencies.sort();
    let total: Duration = latencies.iter().sum();
    let mut row = crate::row(name, latencies.len() as u64, total, None);
    row.note = format!(
        "{note}; p50 {:.2} / p99 {:.2} / max {:.2} ms",
        quantile_ms(latencies, 0.5),
        quantile_ms(latencies, 0.99),
        quantile_ms(latencies, 1.0)
    );
    row
}
