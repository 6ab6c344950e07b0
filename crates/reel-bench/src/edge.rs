//! `reel bench edge`: a device's backlog drained by its uplink into a central `reel serve`
//! (a separate process on 127.0.0.1), beside a plain HTTP client appending the same events in
//! batches of the same size to the same server, in the same run.

use std::sync::Arc;

use anyhow::{Context, Result};
use reel_client::HttpStore;
use reel_core::{
    EventStore, ExpectedVersion, NewEvent, Position, ReadAllFilter, StreamName, StreamVersion, SubscriptionCriteria,
};
use reel_edge::{CentralServer, Ownership, Uplink};
use reel_sqlite::SqliteStore;
use reel_subscriptions::SubscriptionEngine;

use super::http::ServerProcess;
use super::{measure_async, payload, progress, with_ratio_named, Row};

/// Events per local append while the backlog is written (a device's app appends as it goes; the
/// uplink's batches do not depend on it).
const LOCAL_APPEND: u64 = 1_000;

pub(super) async fn bench_edge(
    dir: &std::path::Path,
    events: u64,
    batch: usize,
    event_size: usize,
) -> Result<(Vec<Row>, serde_json::Value)> {
    let data = payload(event_size);
    let device = SqliteStore::open(dir.join("device.db"))?;
    let owner = Ownership::for_device("bench")?;
    let stream = StreamName::new(owner.device_stream())?;
    let bar = progress(events, "writing the device's backlog");
    let mut written = 0;
    while written < events {
        let n = LOCAL_APPEND.min(events - written);
        let batch_events = (0..n).map(|_| NewEvent::new("Tick", data.clone())).collect();
        device.append(&stream, ExpectedVersion::Any, batch_events).await?;
        written += n;
        bar.set_position(written);
    }
    bar.finish_and_clear();
    let server = ServerProcess::start(&dir.join("central.db"))?;
    let central = HttpStore::connect(&server.base, None).await.context("connecting to the central server")?;

    // Baseline: the same events, read from the device's store and appended by a plain client in
    // batches of the uplink's size, to a stream of their own.
    let plain_stream = StreamName::new("plain-bench")?;
    let plain =
        measure_async(format!("plain HttpStore appends of {batch}, read from the device store"), events, async {
            let mut from = Position(1);
            let mut version: Option<u64> = None;
            loop {
                let page = device.read_all(from, &ReadAllFilter::default(), batch).await?;
                if page.events.is_empty() {
                    return Ok(());
                }
                let copies: Vec<NewEvent> = page
                    .events
                    .iter()
                    .map(|e| NewEvent::new(e.event_type.clone(), e.data.clone()).with_id(e.id))
                    .collect();
                let expected = version.map_or(ExpectedVersion::NoStream, |v| ExpectedVersion::Exact(StreamVersion(v)));
                let result = central.append(&plain_stream, expected, copies).await?;
                version = Some(result.next_version.0);
                from = page.next;
            }
        })
        .await?;

    let uplink = Uplink::new(owner.clone(), Arc::new(CentralServer::new(server.base.clone(), None)))?;
    let engine = SubscriptionEngine::new(
        Arc::new(device.clone()),
        Arc::new(device.subscription_store()?),
        vec![Arc::new(uplink)],
    )?
    .with_batch_size(batch);
    let bar = progress(events, "draining the backlog through the uplink");
    let drained = measure_async(format!("uplink: backlog of {events} drained in batches of {batch}"), events, async {
        let all = SubscriptionCriteria::all();
        engine.setup(&all, true).await?;
        let mut last = (0, std::time::Instant::now());
        loop {
            engine.boot(&all).await?;
            engine.run(&all).await?;
            let done = central.stream_version(&stream).await?.map_or(0, |v| v.0 + 1);
            bar.set_position(done);
            if done >= events {
                return Ok(());
            }
            let subscription = &engine.subscriptions(&all).await?[0];
            anyhow::ensure!(subscription.error.is_none(), "the uplink failed: {:?}", subscription.error);
            if done > last.0 {
                last = (done, std::time::Instant::now());
            }
            anyhow::ensure!(last.1.elapsed().as_secs() < 60, "the uplink made no progress for a minute at {done}");
        }
    })
    .await?;
    bar.finish_and_clear();
    let rss = server.rss_mib();
    let plain_rate = plain.events_per_sec;
    let ratio = drained.events_per_sec / plain_rate;
    let extra = serde_json::json!({
        "events": events, "batch": batch, "plain_events_per_sec": plain_rate,
        "uplink_events_per_sec": drained.events_per_sec, "ratio": ratio, "central_rss_mib": rss,
    });
    Ok((vec![plain, with_ratio_named(drained, plain_rate, "the plain client")], extra))
}
