//! `reel bench postgres --store postgres://…`: the PostgreSQL store against a plain-SQL baseline
//! measured in the same run (one INSERT per event into a bigserial table, no ordering guarantee).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reel_core::{AllReader, EventStore, ExpectedVersion, NewEvent, Position, ReadAllFilter, StreamVersion};
use reel_postgres::PostgresStore;

use crate::cpu::{own_cpu_seconds, CpuUse, MachineCpu};

use super::{
    bench_stream, measure_async, payload, run_tasks, timed, timed_row, with_ratio, with_ratio_named, Row, Timed,
};

/// What to measure.
pub(super) struct PostgresPlan {
    pub(super) url: String,
    pub(super) concurrency: u64,
    pub(super) single_events: u64,
    pub(super) batches: u64,
    pub(super) event_size: usize,
    pub(super) latency_seconds: u64,
    pub(super) sweep_seconds: u64,
    pub(super) sweep_only: bool,
}

async fn client(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", reel_postgres::redact(url)))?;
    tokio::spawn(connection);
    Ok(client)
}

pub(super) async fn bench_postgres(plan: &PostgresPlan) -> Result<(Vec<Row>, serde_json::Value)> {
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let admin = client(&plan.url).await?;
    let data = payload(plan.event_size);
    let mut rows = Vec::new();

    // Baseline: `concurrency` connections, one autocommit INSERT per event into a bigserial table.
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.plain (position bigserial PRIMARY KEY, stream text NOT NULL, data bytea NOT NULL)"
        ))
        .await?;
    if plan.sweep_only {
        let sweep = writer_sweep(plan, &schema, &admin, &data, &mut rows).await;
        let _ = admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await;
        return Ok((rows, serde_json::json!({ "sweep": sweep? })));
    }
    let per_task = (plan.single_events / plan.concurrency).max(1);
    let total = per_task * plan.concurrency;
    // Connected before the clock starts: opening 64 connections is not what is measured.
    let mut clients = Vec::new();
    for _ in 0..plan.concurrency {
        clients.push(Arc::new(client(&plan.url).await?));
    }
    let clients = Arc::new(clients);
    let baseline = measure_async(
        format!("baseline: {} connections, one INSERT per event, bigserial", plan.concurrency),
        total,
        async {
            run_tasks(plan.concurrency, |t| {
                let (clients, data, schema) = (clients.clone(), data.clone(), schema.clone());
                async move {
                    let client = &clients[t as usize];
                    let sql = format!("INSERT INTO {schema}.plain (stream, data) VALUES ($1, $2)");
                    for _ in 0..per_task {
                        client
                            .execute(sql.as_str(), &[&format!("bench-{t}"), &data])
                            .await
                            .map_err(|e| reel_core::ReelError::storage("baseline insert", e))?;
                    }
                    Ok(())
                }
            })
            .await
        },
    )
    .await?;
    // Closed before the sweep opens its own connections (max_connections is 100 by default).
    drop(clients);
    let baseline_rate = baseline.events_per_sec;
    rows.push(baseline);

    let store = PostgresStore::connect(&plan.url, &schema).await?;
    let row = measure_async(
        format!("reel, {} concurrent single-event appends with Exact versions", plan.concurrency),
        total,
        async {
            run_tasks(plan.concurrency, |t| {
                let (store, data) = (store.clone(), data.clone());
                async move {
                    let stream = bench_stream(t);
                    for v in 0..per_task {
                        let expected = v
                            .checked_sub(1)
                            .map_or(ExpectedVersion::NoStream, |v| ExpectedVersion::Exact(StreamVersion(v)));
                        store.append(&stream, expected, vec![NewEvent::new("Bench", data.clone())]).await?;
                    }
                    Ok(())
                }
            })
            .await
        },
    )
    .await?;
    rows.push(with_ratio(row, baseline_rate));

    let batch_total = plan.batches * 100;
    let batches = plan.batches;
    let row = measure_async("reel, batched appends of 100 events (8 in flight)".to_string(), batch_total, async {
        run_tasks(8, |t| {
            let (store, data) = (store.clone(), data.clone());
            async move {
                for i in (t..batches).step_by(8) {
                    let events = (0..100).map(|_| NewEvent::new("Bench", data.clone())).collect();
                    store.append(&bench_stream(1000 + i % 100), ExpectedVersion::Any, events).await?;
                }
                Ok(())
            }
        })
        .await
    })
    .await?;
    let batched_rate = row.events_per_sec;
    rows.push(with_ratio_named(row, baseline_rate, "baseline (single inserts)"));

    // Ceiling: what one backend inserts per second into a table of the events table's shape (same
    // indexes) when the rows are made on the server: no network, no decoding, no ordering work.
    // Appends under the head lock run on one backend at a time, so this bounds batched appends.
    admin.batch_execute(&format!("CREATE TABLE {schema}.ceiling (LIKE {schema}.events INCLUDING INDEXES)")).await?;
    let ceiling = measure_async(
        "ceiling: one backend, the same rows made in-server (INSERT … SELECT generate_series)".to_string(),
        batch_total,
        async {
            let sql = format!(
                "INSERT INTO {schema}.ceiling SELECT g, g % 100, g, gen_random_uuid(), 'Bench', $1::bytea, NULL, 0
                 FROM generate_series(1, $2::bigint) g"
            );
            admin.execute(&sql, &[&data, &(batch_total as i64)]).await?;
            Ok(())
        },
    )
    .await?;
    let ceiling_rate = ceiling.events_per_sec;
    rows.push(ceiling);
    if let Some(batched) = rows.iter_mut().rev().nth(1) {
        batched.note = format!("{}; {:.2}× ceiling", batched.note, batched_rate / ceiling_rate);
    }

    let head = store.head().await?.0;
    let events: Arc<dyn EventStore> = Arc::new(store.clone());
    let row = measure_async("reel, read_all catch-up of the whole log, pages of 5,000".to_string(), head, async {
        let mut reader = AllReader::new(events.clone(), Position(1), ReadAllFilter::default(), 5000);
        let mut seen = 0;
        while let Some(page) = reader.next_page().await? {
            seen += page.len() as u64;
        }
        anyhow::ensure!(seen == head, "read {seen} of {head}");
        Ok(())
    })
    .await?;
    rows.push(row);

    let sweep = writer_sweep(plan, &schema, &admin, &data, &mut rows).await?;

    let (p50, p99, measured) = follower_latency(&store, plan).await?;
    println!("append → follower latency at 1,000 events/s: p50 {p50:.2} ms, p99 {p99:.2} ms over {measured} events");
    let _ = admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await;
    Ok((
        rows,
        serde_json::json!({
            "latency_p50_ms": p50, "latency_p99_ms": p99, "latency_events": measured,
            "concurrency": plan.concurrency, "sweep": sweep,
        }),
    ))
}

/// Single-event appends at 1, 16 and 64 writers beside plain INSERTs at the same counts, then
/// 16 store instances on the schema (as 16 servers would be) with 1 and 4 writers each.
async fn writer_sweep(
    plan: &PostgresPlan,
    schema: &str,
    admin: &tokio_postgres::Client,
    data: &[u8],
    rows: &mut Vec<Row>,
) -> Result<serde_json::Value> {
    let seconds = plan.sweep_seconds;
    admin.batch_execute(&format!("TRUNCATE {schema}.plain")).await?;
    let mut baselines = HashMap::new();
    let mut points = Vec::new();
    for writers in [1u64, 16, 64] {
        let mut clients = Vec::new();
        for _ in 0..writers {
            clients.push(client(&plan.url).await?);
        }
        let (clients, data, sql) = (
            Arc::new(clients),
            Arc::new(data.to_vec()),
            Arc::new(format!("INSERT INTO {schema}.plain (stream, data) VALUES ($1, $2)")),
        );
        eprintln!("sweep: plain INSERT, {writers} connections, {seconds} s");
        let cpu = MachineCpu::now();
        let baseline = timed(writers, seconds, move |w, _| {
            let (clients, data, sql) = (clients.clone(), data.clone(), sql.clone());
            async move {
                let stream = format!("sweep-{w}");
                clients[w as usize]
                    .execute(sql.as_str(), &[&stream, &*data])
                    .await
                    .map_err(|e| reel_core::ReelError::storage("baseline insert", e))?;
                Ok(())
            }
        })
        .await?;
        let cpu = cpu.and_then(|c| c.used_since());
        baselines.insert(writers, baseline.rate());
        rows.push(with_cpu(
            timed_row(format!("baseline: {writers} connections, one INSERT per event, {seconds} s"), &baseline, None),
            cpu,
            baseline.events,
        ));
        points.push(serde_json::json!({ "what": "plain INSERT", "stores": 0, "writers": writers,
            "events_per_sec": baseline.rate(), "p50_ms": baseline.quantile_ms(0.5), "p99_ms": baseline.quantile_ms(0.99),
            "cpu": cpu_json(cpu, baseline.events) }));
    }
    // Ceiling of any design that hands one lock from commit to commit: each connection takes a
    // single row lock, inserts one row and commits without waiting for the flush at all (so this
    // is above what a durable store can do). Across processes the head lock is this hand-off.
    admin
        .batch_execute(&format!(
            "CREATE TABLE {schema}.lock_model_head (position bigint NOT NULL);
             INSERT INTO {schema}.lock_model_head VALUES (0);
             CREATE TABLE {schema}.lock_model (position bigint PRIMARY KEY, data bytea NOT NULL);"
        ))
        .await?;
    for writers in [16u64, 64] {
        let mut clients = Vec::new();
        for _ in 0..writers {
            let client = client(&plan.url).await?;
            client.batch_execute("SET synchronous_commit = off").await?;
            clients.push(client);
        }
        let (clients, data, sql) = (
            Arc::new(clients),
            Arc::new(data.to_vec()),
            Arc::new(format!(
                "WITH h AS (UPDATE {schema}.lock_model_head SET position = position + 1 RETURNING position)
                 INSERT INTO {schema}.lock_model (position, data) SELECT position, $1 FROM h"
            )),
        );
        eprintln!("sweep: one lock per commit, unflushed, {writers} connections, {seconds} s");
        let ceiling = timed(writers, seconds, move |w, _| {
            let (clients, data, sql) = (clients.clone(), data.clone(), sql.clone());
            async move {
                clients[w as usize]
                    .execute(sql.as_str(), &[&*data])
                    .await
                    .map_err(|e| reel_core::ReelError::storage("lock hand-off ceiling", e))?;
                Ok(())
            }
        })
        .await?;
        rows.push(timed_row(
            format!("ceiling: {writers} connections, one row lock per commit, commits not flushed, {seconds} s"),
            &ceiling,
            None,
        ));
        points.push(serde_json::json!({ "what": "lock hand-off ceiling", "stores": 0, "writers": writers,
            "events_per_sec": ceiling.rate(), "p50_ms": ceiling.quantile_ms(0.5), "p99_ms": ceiling.quantile_ms(0.99) }));
    }
    // Separate processes, as separate servers are: each runs one store instance in its own
    // runtime (the in-process points above share one runtime among all 16 instances).
    for per_process in [1u64, 4] {
        eprintln!("sweep: 16 processes × {per_process} writer(s), {seconds} s");
        let cpu = MachineCpu::now();
        let (result, workers_cpu) = process_point(plan, schema, 16, per_process).await?;
        let cpu = cpu.and_then(|c| c.used_since());
        let writers = 16 * per_process;
        let name = format!("reel, 16 processes × {per_process} writer(s), single Exact appends, {seconds} s");
        let mut row = with_cpu(
            timed_row(name, &result, baselines.get(&writers).map(|b| (*b, "the plain INSERT"))),
            cpu,
            result.events,
        );
        let workers_micros = workers_cpu * 1e6 / result.events.max(1) as f64;
        row.note = format!("{}; of which the 16 processes {workers_micros:.0}", row.note);
        rows.push(row);
        points.push(serde_json::json!({ "what": "reel", "processes": 16, "writers": writers,
            "events_per_sec": result.rate(), "p50_ms": result.quantile_ms(0.5), "p99_ms": result.quantile_ms(0.99),
            "cpu": cpu_json(cpu, result.events), "worker_processes_cpu_us_per_event": workers_micros }));
    }
    // The last point carries the caller's own event ids (as a device's uplink does): each
    // append is then also checked for a retry among the stream's recent ids.
    for (stores, per_store, ids) in
        [(1u64, 1u64, false), (1, 16, false), (1, 64, false), (16, 1, false), (16, 4, false), (1, 16, true)]
    {
        let mut instances = Vec::new();
        for _ in 0..stores {
            instances.push(PostgresStore::connect(&plan.url, schema).await?);
        }
        let instances = Arc::new(instances);
        let writers = stores * per_store;
        let data = Arc::new(data.to_vec());
        let prefix = format!("sweep{stores}x{per_store}{}", if ids { "ids" } else { "" });
        eprintln!("sweep: {stores} store instance(s) × {per_store} writer(s), {seconds} s");
        let cpu = MachineCpu::now();
        let result = timed(writers, seconds, move |w, n| {
            let (instances, data) = (instances.clone(), data.clone());
            let stream = reel_core::StreamName::new(format!("{prefix}-{w}"));
            async move {
                let stream = stream?;
                let expected =
                    n.checked_sub(1).map_or(ExpectedVersion::NoStream, |v| ExpectedVersion::Exact(StreamVersion(v)));
                let store = &instances[(w % instances.len() as u64) as usize];
                let mut event = NewEvent::new("Bench", data.to_vec());
                if ids {
                    event = event.with_id(reel_core::EventId::new_v7());
                }
                store.append(&stream, expected, vec![event]).await?;
                Ok(())
            }
        })
        .await?;
        let with_ids = if ids { " with their own event ids" } else { "" };
        let name = format!(
            "reel, {stores} store instance(s) × {per_store} writer(s), single Exact appends{with_ids}, {seconds} s"
        );
        let cpu = cpu.and_then(|c| c.used_since());
        rows.push(with_cpu(
            timed_row(name, &result, baselines.get(&writers).map(|b| (*b, "the plain INSERT"))),
            cpu,
            result.events,
        ));
        points.push(serde_json::json!({ "what": "reel", "stores": stores, "writers": writers, "client_ids": ids,
            "events_per_sec": result.rate(), "p50_ms": result.quantile_ms(0.5), "p99_ms": result.quantile_ms(0.99),
            "cpu": cpu_json(cpu, result.events) }));
    }
    Ok(serde_json::Value::Array(points))
}

/// A follower on a second store instance (another "server") wakes through LISTEN/NOTIFY. It
/// notes when each position arrived; latencies are computed afterwards against the times the
/// appends were started, so an event that arrives before its append has returned still counts.
async fn follower_latency(store: &PostgresStore, plan: &PostgresPlan) -> Result<(f64, f64, usize)> {
    let follower = PostgresStore::connect(&plan.url, store.schema()).await?;
    let count = (plan.latency_seconds * 1000) as usize;
    let start = follower.head().await?;
    let watcher = tokio::spawn(async move {
        let mut watch = follower.watch_head();
        let mut arrivals: HashMap<u64, Instant> = HashMap::with_capacity(count);
        let mut seen = start;
        while arrivals.len() < count {
            let Ok(Ok(head)) = tokio::time::timeout(Duration::from_secs(5), watch.wait_past(seen)).await else {
                break;
            };
            let now = Instant::now();
            arrivals.extend((seen.0 + 1..=head.0).map(|p| (p, now)));
            seen = head;
        }
        arrivals
    });
    // Appends are started on schedule, 1 ms apart, without waiting for the previous one.
    let began = Instant::now();
    let mut appends = Vec::with_capacity(count);
    for i in 0..count {
        if let Some(wait) = (began + Duration::from_millis(i as u64)).checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let store = store.clone();
        appends.push(tokio::spawn(async move {
            let at = Instant::now();
            let stream = bench_stream(9_999 + (i as u64 % 8));
            let result = store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Ping", "{}")]).await?;
            Ok::<_, reel_core::ReelError>((result.first_position.0, at))
        }));
    }
    let mut sent = Vec::with_capacity(count);
    for append in appends {
        sent.push(append.await??);
    }
    let arrivals = watcher.await?;
    let mut latencies: Vec<Duration> =
        sent.iter().filter_map(|(p, at)| Some(arrivals.get(p)?.saturating_duration_since(*at))).collect();
    anyhow::ensure!(latencies.len() == sent.len(), "the follower saw {} of {} events", latencies.len(), sent.len());
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    Ok((quantile(0.5), quantile(0.99), latencies.len()))
}

/// `processes` copies of this program (`postgres-worker`), each with one store instance and
/// `per_process` writers; they start appending once all of them are connected, and report their
/// latencies.
/// Also returns the CPU-seconds the processes used while appending.
async fn process_point(plan: &PostgresPlan, schema: &str, processes: u64, per_process: u64) -> Result<(Timed, f64)> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for p in 0..processes {
        let mut child = tokio::process::Command::new(&exe)
            .args(["postgres-worker", "--store", &plan.url, "--schema", schema])
            .args(["--writers", &per_process.to_string(), "--seconds", &plan.sweep_seconds.to_string()])
            .args(["--prefix", &format!("proc{processes}x{per_process}-{p}")])
            .args(["--event-size", &plan.event_size.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        // "ready" once connected.
        let ready = lines.next_line().await?.context("a worker exited before it was ready")?;
        anyhow::ensure!(ready == "ready", "worker said {ready:?}");
        children.push((child, lines));
    }
    let started = Instant::now();
    for (child, _) in &mut children {
        child.stdin.as_mut().context("worker stdin")?.write_all(b"go\n").await?;
    }
    let (mut latencies, mut cpu_seconds) = (Vec::new(), 0.0);
    for (mut child, mut lines) in children {
        let report = lines.next_line().await?.context("a worker exited without its report")?;
        let micros: Vec<u64> = serde_json::from_str(&report)?;
        latencies.extend(micros.into_iter().map(Duration::from_micros));
        let cpu = lines.next_line().await?.context("a worker exited without its CPU time")?;
        cpu_seconds += cpu.parse::<f64>().with_context(|| format!("a worker's CPU time {cpu:?}"))?;
        child.wait().await?;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok((Timed { events: latencies.len() as u64, elapsed, latencies }, cpu_seconds))
}

/// The worker side of [`process_point`]: connects, says "ready", waits for "go", appends for
/// `seconds` from `writers` tasks, and prints every append's latency in microseconds (JSON),
/// then the CPU-seconds it used while appending.
pub(super) async fn worker(
    url: &str,
    schema: &str,
    writers: u64,
    seconds: u64,
    prefix: &str,
    event_size: usize,
) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let store = Arc::new(PostgresStore::connect(url, schema).await?);
    let closing = store.clone();
    println!("ready");
    let mut go = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut go).await?;
    let data = Arc::new(vec![b'x'; event_size]);
    let prefix = prefix.to_string();
    let cpu_before = own_cpu_seconds();
    let result = timed(writers, seconds, move |w, n| {
        let (store, data) = (store.clone(), data.clone());
        let stream = reel_core::StreamName::new(format!("{prefix}-{w}"));
        async move {
            let expected =
                n.checked_sub(1).map_or(ExpectedVersion::NoStream, |v| ExpectedVersion::Exact(StreamVersion(v)));
            store.append(&stream?, expected, vec![NewEvent::new("Bench", data.to_vec())]).await?;
            Ok(())
        }
    })
    .await?;
    // A leading writer answers what it took from the other processes before this one exits.
    closing.close().await;
    let cpu = own_cpu_seconds().zip(cpu_before).map_or(0.0, |(after, before)| after - before);
    let micros: Vec<u64> = result.latencies.iter().map(|d| d.as_micros() as u64).collect();
    println!("{}", serde_json::to_string(&micros)?);
    println!("{cpu}");
    Ok(())
}

/// `row` with the machine's CPU use during its point added to its note.
fn with_cpu(mut row: Row, cpu: Option<CpuUse>, events: u64) -> Row {
    if let Some(cpu) = cpu {
        row.note = format!("{}; {}", row.note, cpu.describe(events));
    }
    row
}

fn cpu_json(cpu: Option<CpuUse>, events: u64) -> serde_json::Value {
    match cpu {
        Some(cpu) => serde_json::json!({ "busy_share": cpu.busy_share(), "busy_cpu_seconds": cpu.busy,
            "stolen_cpu_seconds": cpu.steal, "busy_cpu_us_per_event": cpu.micros_per_event(events) }),
        None => serde_json::Value::Null,
    }
}
