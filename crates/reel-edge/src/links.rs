//! The platform's side of units that do not run the agent (`reel edge`): it pings them to know
//! they are online, pushes their configuration to them, or fetches their events from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use reel_client::HttpStore;
use reel_core::{
    DevicePresence, Direction, EventStore, Heartbeat, Position, PresenceStore, ReadAllFilter, RecordedEvent, ReelError,
    StreamName, StreamVersion, Timestamp, UnitLink,
};
use reel_server::PartitionWork;

use crate::copy::{copy_run, CopyFailure};
use crate::Ownership;

/// How the platform treats units it reaches itself.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    /// Waits before retrying a failed configuration delivery: the first failure waits the first,
    /// and so on; the last repeats. Counted only while the unit is online; the schedule starts
    /// over when it comes back.
    pub retry_steps: Vec<Duration>,
    /// Units served at the same time (pings, deliveries, fetches) by one process.
    pub concurrency: usize,
    /// Longest wait for a unit's answer.
    pub timeout: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            retry_steps: vec![Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(900)],
            concurrency: 64,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Pings, pushes to and fetches from the registered units of the partitions this process
/// holds (it runs as the presence sweep's [`PartitionWork`]), with bounded concurrency: one set
/// of tasks for thousands of units, not a thread or process each.
///
/// - **Ping**: every unit is asked at its declared interval (`GET` its endpoint; a fetched
///   unit's `/head`); an answer is a heartbeat with the round-trip time, so presence treats it
///   like an agent.
/// - **Push** (`push` units): configuration events of `unitconfig-NAME` the unit has not yet
///   taken are `POST`ed to its endpoint in order, one request each, with the event id as the
///   `Idempotency-Key` header, live while the unit is online. A failure is retried after the
///   steps of [`LinkOptions::retry_steps`] (60 s, 5 min, 15 min), only while the unit is online;
///   when it comes back the schedule starts over with an immediate delivery.
/// - **Fetch** (`fetch` units, which serve Reel's HTTP API): new events of the unit's streams
///   (`unit-NAME`, `unit-NAME-*`) are read from its log after the position fetched last and
///   appended centrally with the unit's ids and `Exact` versions, exactly as the uplink does:
///   a fetch interrupted at any point is recognised on the next and nothing is stored twice. A
///   central stream that holds what the unit did not write stops fetching from that unit.
pub struct UnitLinks {
    central: Arc<dyn EventStore>,
    rows: Arc<dyn PresenceStore>,
    http: reqwest::Client,
    options: LinkOptions,
    schedules: tokio::sync::Mutex<HashMap<String, Schedule>>,
}

/// What is due for one unit, in Unix microseconds of the platform's clock.
#[derive(Clone, Debug, Default)]
struct Schedule {
    next_ping: i64,
    was_online: bool,
    failed_deliveries: usize,
    next_push: i64,
    /// The central head at which the unit was found to hold all its configuration.
    up_to_date_at: Option<Position>,
    next_fetch: i64,
    /// Why fetching from this unit stopped (its central copy diverged).
    stopped: Option<String>,
}

/// Events read from a unit per request, and pages per fetch.
const FETCH_PAGE: usize = 1_000;
const FETCH_PAGES: usize = 10;
/// Configuration events delivered per unit per round.
const PUSH_PAGE: usize = 100;

impl UnitLinks {
    /// Links from the platform's `central` store and presence `rows`.
    pub fn new(central: Arc<dyn EventStore>, rows: Arc<dyn PresenceStore>, options: LinkOptions) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(options.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Self { central, rows, http, options, schedules: Default::default() }
    }

    /// Serves one unit: what is due at `now`.
    async fn serve(&self, now: Timestamp, head: Position, device: &DevicePresence, mut due: Schedule) -> Schedule {
        let Some((endpoint, link)) = &device.endpoint else { return due };
        let now_us = now.unix_micros();
        let interval_us = (device.interval_ms as i64).saturating_mul(1_000);
        if now_us >= due.next_ping {
            due.next_ping = now_us + interval_us;
            let url = match link {
                UnitLink::Push => endpoint.clone(),
                UnitLink::Fetch => format!("{}/head", endpoint.trim_end_matches('/')),
            };
            let started = Instant::now();
            match self.http.get(&url).timeout(self.options.timeout).send().await {
                Ok(answer) if answer.status().is_success() => {
                    self.heard(now, device, started.elapsed(), None).await;
                }
                Ok(answer) => tracing::debug!(device = %device.device, status = %answer.status(), "ping refused"),
                Err(e) => tracing::debug!(device = %device.device, error = %e, "ping failed"),
            }
        }
        let online = device.state.online;
        if online && !due.was_online {
            // Back (or first seen): everything due at once, the retry schedule from its start.
            due.failed_deliveries = 0;
            due.next_push = now_us;
            due.next_fetch = now_us;
        }
        due.was_online = online;
        if !online || due.stopped.is_some() {
            return due;
        }
        match link {
            UnitLink::Push if now_us >= due.next_push && due.up_to_date_at != Some(head) => {
                self.push(now, head, device, endpoint, &mut due).await;
            }
            UnitLink::Fetch if now_us >= due.next_fetch => {
                due.next_fetch = now_us + interval_us;
                self.fetch(device, endpoint, &mut due).await;
            }
            _ => {}
        }
        due
    }

    async fn serve_named(
        &self,
        now: Timestamp,
        head: Position,
        device: &DevicePresence,
        due: Schedule,
    ) -> (String, Schedule) {
        (device.device.clone(), self.serve(now, head, device, due).await)
    }

    /// An answer from the unit: a heartbeat for presence (and, with `config_version`, the
    /// configuration it now holds).
    async fn heard(&self, now: Timestamp, device: &DevicePresence, rtt: Duration, config_version: Option<u64>) {
        let heartbeat = Heartbeat {
            device: device.device.clone(),
            display_name: None,
            interval: Duration::from_millis(device.interval_ms),
            rtt_ms: Some(rtt.as_millis().min(u128::from(u32::MAX)) as u32),
            clock_skew_ms: 0,
            config_version,
            received_at: now,
        };
        if let Err(e) = self.rows.record_heartbeat(&heartbeat).await {
            tracing::warn!(device = %device.device, error = %e, "could not record a unit's answer");
        }
    }

    /// Records why the last delivery or fetch failed (`None`: it worked), when that changed.
    async fn link_status(&self, device: &DevicePresence, error: Option<String>) {
        if device.link_error == error {
            return;
        }
        if let Err(e) = self.rows.save_link_error(&device.device, error.as_deref()).await {
            tracing::warn!(device = %device.device, error = %e, "could not save a unit's link status");
        }
    }

    /// Delivers the configuration events the unit does not hold yet, in order.
    async fn push(&self, now: Timestamp, head: Position, device: &DevicePresence, endpoint: &str, due: &mut Schedule) {
        let Ok(stream) = StreamName::new(format!("unitconfig-{}", device.device)) else { return };
        let held = device.config_version.unwrap_or(0);
        let pending = match self.central.read_stream(&stream, StreamVersion(held), Direction::Forward, PUSH_PAGE).await
        {
            Ok(pending) => pending,
            Err(ReelError::StreamNotFound { .. }) => Vec::new(),
            Err(e) => {
                tracing::warn!(device = %device.device, error = %e, "could not read the unit's configuration");
                return;
            }
        };
        if pending.is_empty() {
            due.up_to_date_at = Some(head);
            self.link_status(device, None).await;
            return;
        }
        for event in &pending {
            let started = Instant::now();
            let sent = self
                .http
                .post(endpoint)
                .header("idempotency-key", event.id.to_string())
                .json(&delivery(&device.device, event))
                .timeout(self.options.timeout)
                .send()
                .await;
            let failure = match sent {
                Ok(answer) if answer.status().is_success() => {
                    self.heard(now, device, started.elapsed(), Some(event.stream_version.0 + 1)).await;
                    due.failed_deliveries = 0;
                    continue;
                }
                Ok(answer) => format!("the unit answered {}", answer.status()),
                Err(e) => e.to_string(),
            };
            let steps = &self.options.retry_steps;
            let wait = steps.get(due.failed_deliveries).or(steps.last()).copied().unwrap_or(Duration::from_secs(60));
            due.failed_deliveries += 1;
            due.next_push = now.unix_micros() + wait.as_micros() as i64;
            tracing::warn!(
                device = %device.device, version = event.stream_version.0, error = %failure, retry_in = ?wait,
                "configuration not delivered; retried while the unit is online"
            );
            let why = format!(
                "configuration version {} not delivered: {failure}; tried again in {} s while online",
                event.stream_version.0,
                wait.as_secs()
            );
            self.link_status(device, Some(why)).await;
            return;
        }
        self.link_status(device, None).await;
    }

    /// Copies the unit's new events centrally, exactly.
    async fn fetch(&self, device: &DevicePresence, endpoint: &str, due: &mut Schedule) {
        let (unit, ownership) = match (HttpStore::unfollowed(endpoint, None), Ownership::for_device(&device.device)) {
            (Ok(unit), Ok(ownership)) => (unit, ownership),
            (Err(e), _) | (_, Err(e)) => {
                due.stopped = Some(e.to_string());
                tracing::error!(device = %device.device, error = %e, "cannot fetch from this unit");
                self.link_status(device, Some(format!("cannot fetch from this unit: {e}"))).await;
                return;
            }
        };
        let filter = ReadAllFilter { stream_prefix: Some(ownership.device_stream()), ..ReadAllFilter::default() };
        let mut from = Position(device.fetch_position + 1);
        for _ in 0..FETCH_PAGES {
            let page = match unit.read_all(from, &filter, FETCH_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(device = %device.device, error = %e, "fetching from the unit failed; tried again later");
                    self.link_status(device, Some(format!("fetching failed: {e}; tried again at the next interval")))
                        .await;
                    return;
                }
            };
            let mut index = 0;
            while index < page.events.len() {
                let stream = &page.events[index].stream;
                let end = index + page.events[index..].iter().take_while(|e| &e.stream == stream).count();
                let run: &[RecordedEvent] = &page.events[index..end];
                index = end;
                if !ownership.device_owns(stream.as_str()) {
                    continue;
                }
                match copy_run(self.central.as_ref(), run).await {
                    Ok(()) => {}
                    Err(CopyFailure::Diverged(why)) | Err(CopyFailure::Refused(ReelError::InvalidArgument(why))) => {
                        tracing::error!(device = %device.device, "{why}");
                        self.link_status(device, Some(format!("fetching stopped: {why}"))).await;
                        due.stopped = Some(why);
                        return;
                    }
                    Err(CopyFailure::Refused(e)) => {
                        tracing::error!(device = %device.device, error = %e, "the central store refused the unit's events; fetching from it stops");
                        let why = format!("fetching stopped: the central store refused the unit's events: {e}");
                        self.link_status(device, Some(why)).await;
                        due.stopped = Some(e.to_string());
                        return;
                    }
                    Err(CopyFailure::Unavailable(e)) => {
                        tracing::warn!(device = %device.device, error = %e, "fetched events not stored; tried again later");
                        self.link_status(device, Some(format!("fetched events not stored: {e}"))).await;
                        return;
                    }
                    Err(CopyFailure::Moved(why)) => {
                        tracing::warn!(device = %device.device, "{why}; tried again later");
                        return;
                    }
                }
            }
            let fetched = page.next.0.saturating_sub(1);
            if fetched > from.0.saturating_sub(1) {
                if let Err(e) = self.rows.save_fetch_position(&device.device, fetched).await {
                    tracing::warn!(device = %device.device, error = %e, "could not save the fetch position");
                    return;
                }
            }
            if page.events.is_empty() || page.next <= from {
                self.link_status(device, None).await;
                return;
            }
            from = page.next;
        }
        self.link_status(device, None).await;
    }
}

/// A configuration event as a unit receives it.
fn delivery(device: &str, event: &RecordedEvent) -> serde_json::Value {
    let data = serde_json::from_slice::<serde_json::Value>(&event.data)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&event.data).into_owned()));
    serde_json::json!({
        "device": device,
        "stream": event.stream.as_str(),
        "version": event.stream_version.0,
        "id": event.id.to_string(),
        "type": event.event_type,
        "data": data,
        "metadata": event.metadata,
        "recorded_at": event.recorded_at,
    })
}

#[async_trait]
impl PartitionWork for UnitLinks {
    async fn run(&self, now: Timestamp, devices: &[DevicePresence]) {
        let units: Vec<&DevicePresence> = devices.iter().filter(|d| d.endpoint.is_some()).collect();
        if units.is_empty() {
            return;
        }
        let head = match self.central.head().await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(error = %e, "units not served: the central head could not be read");
                return;
            }
        };
        let schedules: Vec<Schedule> = {
            let known = self.schedules.lock().await;
            units.iter().map(|d| known.get(&d.device).cloned().unwrap_or_default()).collect()
        };
        let serving: Vec<_> =
            units.into_iter().zip(schedules).map(|(device, due)| self.serve_named(now, head, device, due)).collect();
        let served: Vec<(String, Schedule)> =
            futures_util::stream::iter(serving).buffer_unordered(self.options.concurrency.max(1)).collect().await;
        let mut known = self.schedules.lock().await;
        known.extend(served);
    }
}
