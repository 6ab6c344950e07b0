//! `reel bench edge-fleet`: many devices (agents in this process, each with its own embedded
//! store, uplink, downlink and heartbeats) against one central `reel serve` process, each
//! appending one event a second with random offline periods. Measures the central ingest, the
//! time from a device's append to central visibility, the drain after an outage of the central
//! server, central memory and CPU, and the central memory of many idle downlink long polls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reel_client::HttpStore;
use reel_core::{EventId, EventStore, ExpectedVersion, NewEvent, Position, ReadAllFilter, StreamName, StreamVersion};
use reel_edge::{CentralServer, Downlink, Heartbeats, Ownership, Uplink};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{ClockBasedRetryStrategy, SubscriptionEngine, Worker, WorkerOptions};
use tokio::sync::watch;

use super::http::ServerProcess;
use super::{payload, Row};

/// What to run.
pub(super) struct FleetPlan {
    pub devices: usize,
    pub seconds: u64,
    pub outage: u64,
    pub idle: usize,
    pub heartbeat: u64,
}

/// One simulated device.
struct Device {
    owner: Ownership,
    store: SqliteStore,
    /// Stops its links (uplink, downlink, heartbeats) when set; a new one starts them again.
    links: Mutex<Option<watch::Sender<bool>>>,
    online: AtomicBool,
    /// Counts its offline periods: an event appended in one period and seen centrally in the
    /// same period measures the online path.
    epoch: AtomicU64,
}

/// An appended event not yet seen centrally.
struct Pending {
    appended: Instant,
    device: usize,
    epoch: u64,
    online: bool,
}

struct Fleet {
    devices: Vec<Arc<Device>>,
    central: Arc<CentralServer>,
    pending: Mutex<HashMap<EventId, Pending>>,
    latencies: Mutex<Vec<Duration>>,
    appended: AtomicU64,
    seen: AtomicU64,
    measuring: AtomicBool,
    heartbeat: Duration,
}

/// Longest wait between uplink retries while the central server is away (the agent's default).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

impl Fleet {
    fn start_links(&self, device: &Device) -> Result<()> {
        let (stop, stopped) = watch::channel(false);
        let until = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let uplink = Uplink::new(device.owner.clone(), self.central.clone())?;
        let retry = ClockBasedRetryStrategy {
            base_delay: Duration::from_millis(200),
            max_unavailable_delay: MAX_RETRY_DELAY,
            ..ClockBasedRetryStrategy::default()
        };
        let engine = SubscriptionEngine::new(
            Arc::new(device.store.clone()),
            Arc::new(device.store.subscription_store()?),
            vec![Arc::new(uplink)],
        )?
        .with_retry_strategy(retry);
        tokio::spawn(Worker::new(engine, WorkerOptions::default()).run(until(stopped.clone())));
        let local: Arc<dyn EventStore> = Arc::new(device.store.clone());
        let downlink = Downlink::new(device.owner.clone(), self.central.clone(), local.clone(), MAX_RETRY_DELAY);
        tokio::spawn(downlink.run(until(stopped.clone())));
        let heartbeats = Heartbeats::new(device.owner.clone(), self.central.clone(), local, self.heartbeat);
        tokio::spawn(heartbeats.run(until(stopped)));
        *device.links.lock().unwrap() = Some(stop);
        device.online.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn stop_links(&self, device: &Device) {
        device.online.store(false, Ordering::SeqCst);
        device.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(stop) = device.links.lock().unwrap().take() {
            let _ = stop.send(true);
        }
    }

    /// Appends one event a second to device `index` until `stop`.
    async fn append_every_second(self: Arc<Self>, index: usize, data: Vec<u8>, mut stop: watch::Receiver<bool>) {
        let device = self.devices[index].clone();
        let stream = StreamName::new(device.owner.device_stream()).expect("valid stream");
        // Spread the devices over the second.
        let phase = Duration::from_micros((index as u64 * 7_919_000) % 1_000_000);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let id = EventId::new_v7();
            let pending = Pending {
                appended: Instant::now(),
                device: index,
                epoch: device.epoch.load(Ordering::SeqCst),
                online: device.online.load(Ordering::SeqCst),
            };
            self.pending.lock().unwrap().insert(id, pending);
            let event = NewEvent::new("Tick", data.clone()).with_id(id);
            if device.store.append(&stream, ExpectedVersion::Any, vec![event]).await.is_ok() {
                self.appended.fetch_add(1, Ordering::Relaxed);
            } else {
                self.pending.lock().unwrap().remove(&id);
            }
        }
    }

    /// Follows the central log and times each device event from its append.
    async fn follow(self: Arc<Self>, base: String, mut stop: watch::Receiver<bool>) {
        let central = match HttpStore::unfollowed(&base, None) {
            Ok(central) => central,
            Err(e) => return eprintln!("follower: {e}"),
        };
        let filter = ReadAllFilter { categories: vec!["unit".into()], ..ReadAllFilter::default() };
        let mut from = Position(1);
        while !*stop.borrow() {
            let page = match central.read_all(from, &filter, 1_000).await {
                Ok(page) => page,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let now = Instant::now();
            for event in &page.events {
                let Some(pending) = self.pending.lock().unwrap().remove(&event.id) else { continue };
                self.seen.fetch_add(1, Ordering::Relaxed);
                let device = &self.devices[pending.device];
                let same_period = pending.online && device.epoch.load(Ordering::SeqCst) == pending.epoch;
                if same_period && self.measuring.load(Ordering::Relaxed) {
                    self.latencies.lock().unwrap().push(now - pending.appended);
                }
            }
            if page.events.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stop.changed() => {}
                }
            }
            from = page.next;
        }
    }

    /// Takes a random device offline now and then (about `share` of them at a time) and brings
    /// each back after 10 to 60 s.
    async fn flap(self: Arc<Self>, share: f64, mut stop: watch::Receiver<bool>) {
        let mut random = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let mut back_at: HashMap<usize, Instant> = HashMap::new();
        let mean_offline = 35.0;
        // Offline periods start at a rate that keeps `share` of the fleet away on average.
        let starts_per_second = share * self.devices.len() as f64 / mean_offline;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => break,
            }
            let now = Instant::now();
            let due: Vec<usize> = back_at.iter().filter(|(_, at)| **at <= now).map(|(i, _)| *i).collect();
            for index in due {
                back_at.remove(&index);
                let _ = self.start_links(&self.devices[index]);
            }
            let mut starts = starts_per_second;
            while starts > 0.0 {
                if (next() % 1_000) as f64 / 1_000.0 < starts {
                    let index = (next() % self.devices.len() as u64) as usize;
                    if let std::collections::hash_map::Entry::Vacant(slot) = back_at.entry(index) {
                        self.stop_links(&self.devices[index]);
                        slot.insert(now + Duration::from_secs(10 + next() % 51));
                    }
                }
                starts -= 1.0;
            }
        }
        for index in back_at.into_keys() {
            let _ = self.start_links(&self.devices[index]);
        }
    }
}

fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let at = ((sorted.len().max(1) - 1) as f64 * q).round() as usize;
    sorted.get(at).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub(super) async fn bench_edge_fleet(
    dir: &std::path::Path,
    plan: &FleetPlan,
    event_size: usize,
) -> Result<(Vec<Row>, serde_json::Value)> {
    let mut server = ServerProcess::start_default(&dir.join("central.db"))?;
    let base = server.base.clone();
    let central = Arc::new(CentralServer::new(base.clone(), None));
    eprintln!("opening {} device stores", plan.devices);
    std::fs::create_dir_all(dir.join("devices"))?;
    let mut devices = Vec::with_capacity(plan.devices);
    for i in 0..plan.devices {
        let store = SqliteStore::open(dir.join(format!("devices/{i}.db")))
            .with_context(|| format!("opening device store {i}"))?;
        devices.push(Arc::new(Device {
            owner: Ownership::for_device(&format!("fleet-{i}"))?,
            store,
            links: Mutex::new(None),
            online: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }));
    }
    let fleet = Arc::new(Fleet {
        devices,
        central,
        pending: Mutex::new(HashMap::new()),
        latencies: Mutex::new(Vec::new()),
        appended: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        heartbeat: Duration::from_secs(plan.heartbeat),
    });
    for device in &fleet.devices {
        fleet.start_links(device)?;
    }
    let (stop, stopped) = watch::channel(false);
    let data = payload(event_size);
    for index in 0..plan.devices {
        tokio::spawn(fleet.clone().append_every_second(index, data.clone(), stopped.clone()));
    }
    tokio::spawn(fleet.clone().follow(base.clone(), stopped.clone()));
    let (stop_flapping, flapping) = watch::channel(false);
    let flapper = tokio::spawn(fleet.clone().flap(0.05, flapping));

    eprintln!("warming up for 10 s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!("measuring for {} s", plan.seconds);
    let (seen_before, cpu_before, started) = (fleet.seen.load(Ordering::SeqCst), server.cpu_seconds(), Instant::now());
    fleet.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(plan.seconds)).await;
    fleet.measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let ingested = fleet.seen.load(Ordering::SeqCst) - seen_before;
    let cpu = (server.cpu_seconds() - cpu_before) / elapsed;
    let rss_steady = server.rss_mib();
    let mut latencies = std::mem::take(&mut *fleet.latencies.lock().unwrap());
    latencies.sort();
    let online_share = fleet.devices.iter().filter(|d| d.online.load(Ordering::SeqCst)).count();

    // The outage: every device online, the central server killed and restarted after a while.
    let _ = stop_flapping.send(true);
    let _ = flapper.await;
    eprintln!("central server down for {} s while {} devices keep appending", plan.outage, plan.devices);
    server.kill();
    tokio::time::sleep(Duration::from_secs(plan.outage)).await;
    let backlog = fleet.pending.lock().unwrap().len();
    let restarted = Instant::now();
    server.restart()?;
    let drained = loop {
        let left = fleet.pending.lock().unwrap().values().filter(|p| p.appended < restarted).count();
        if left == 0 {
            break restarted.elapsed();
        }
        anyhow::ensure!(restarted.elapsed() < Duration::from_secs(900), "{left} events still not central after 15 min");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("drained {backlog} events in {:.1} s", drained.as_secs_f64());
    let _ = stop.send(true);
    for device in &fleet.devices {
        fleet.stop_links(device);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(fleet);

    // Idle downlinks: long polls on streams nothing is appended to, on a server started afresh
    // (same store), so its memory is what they cost and not what the fleet's work left behind.
    server.restart()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_idle = server.rss_mib();
    eprintln!("opening {} idle downlink long polls", plan.idle);
    let client = HttpStore::unfollowed(&server.base, None)?;
    let mut polls = Vec::with_capacity(plan.idle);
    for i in 0..plan.idle {
        let client = client.clone();
        let stream = StreamName::new(format!("unitconfig-idle-{i}"))?;
        polls.push(tokio::spawn(async move {
            client.wait_for_stream(&stream, StreamVersion(0), 1, Duration::from_secs(55)).await
        }));
    }
    let connected = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let open = server.open_files();
        if open >= plan.idle || polls.iter().all(|p| p.is_finished()) {
            break open;
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = server.rss_mib();
    // One of them is for a device whose configuration changes now: only it answers.
    let woken = Instant::now();
    let config = StreamName::new("unitconfig-idle-0")?;
    client.append(&config, ExpectedVersion::NoStream, vec![NewEvent::new("PriceSet", r#"{"price":1}"#)]).await?;
    let first = polls.remove(0).await??;
    let wake_ms = woken.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(first.len() == 1, "the changed device's long poll answered with its event");
    let still_waiting = polls.iter().filter(|p| !p.is_finished()).count();
    for poll in polls {
        poll.abort();
    }

    let rate = ingested as f64 / elapsed;
    let rows = vec![
        Row {
            name: format!("{} devices, 1 event/s each, ~5% offline at a time: central ingest", plan.devices),
            events: ingested,
            seconds: elapsed,
            events_per_sec: rate,
            disk_bytes_per_event: None,
            note: format!(
                "append → central p50 {:.0} / p99 {:.0} / max {:.0} ms (online); central CPU {:.2} cores, RSS {:.0} MiB",
                quantile_ms(&latencies, 0.5),
                quantile_ms(&latencies, 0.99),
                quantile_ms(&latencies, 1.0),
                cpu,
                rss_steady
            ),
        },
        Row {
            name: format!("drain after a {} s outage of the central server", plan.outage),
            events: backlog as u64,
            seconds: drained.as_secs_f64(),
            events_per_sec: backlog as f64 / drained.as_secs_f64(),
            disk_bytes_per_event: None,
            note: format!("backlog spread over {} devices", plan.devices),
        },
        Row {
            name: format!("{} idle downlink long polls", plan.idle),
            events: 0,
            seconds: 0.0,
            events_per_sec: 0.0,
            disk_bytes_per_event: None,
            note: format!(
                "central RSS {rss_before_idle:.0} → {rss_idle:.0} MiB (restarted, same store) with {connected} open files; a change wakes its device in {wake_ms:.1} ms, {still_waiting} others keep waiting"
            ),
        },
    ];
    let extra = serde_json::json!({
        "devices": plan.devices, "seconds": plan.seconds, "heartbeat_seconds": plan.heartbeat,
        "ingest_events_per_sec": rate, "online_at_end_of_measure": online_share,
        "append_to_central_ms": {
            "samples": latencies.len(), "p50": quantile_ms(&latencies, 0.5), "p95": quantile_ms(&latencies, 0.95),
            "p99": quantile_ms(&latencies, 0.99), "max": quantile_ms(&latencies, 1.0),
        },
        "central_cpu_cores": cpu, "central_rss_mib": rss_steady,
        "outage_seconds": plan.outage, "backlog_events": backlog, "drain_seconds": drained.as_secs_f64(),
        "idle_polls": plan.idle, "idle_open_files": connected, "rss_before_idle_mib": rss_before_idle,
        "rss_with_idle_mib": rss_idle, "wake_ms": wake_ms,
    });
    Ok((rows, extra))
}
