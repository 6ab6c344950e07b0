//! The fleet simulator (`lockers simulate`): many units in one process, each with its own
//! store or MQTT outlet, talking to the platform only the way real units would (Reel's HTTP
//! API through `reel edge`'s links, the MQTT broker, or their own HTTP endpoint), plus a
//! simulated app making reservations through the platform's app API.
//!
//! Units go offline at random (a share of the fleet at any time, 10–60 s each) and keep
//! working while away: customers rent lockers on their screens, and those rentals reach the
//! platform when the unit is back. One location is hot: its units are four times as busy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use reel_core::EventStore;
use reel_edge::{CentralServer, Downlink, Heartbeats, Ownership, Uplink};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{ClockBasedRetryStrategy, SubscriptionEngine, Worker, WorkerOptions};
use serde::Deserialize;
use tokio::sync::watch;

use crate::domain::UnitConfig;
use crate::unit::{Outlet, Random, SimUnit, UnitLinkKind};

/// Locations of the simulated fleet; the first is the hot one.
pub const LOCATIONS: [&str; 8] = [
    "Central Station",
    "Camping Festitent",
    "Airport Arrivals",
    "City Beach",
    "Harbour Ferry",
    "University Library",
    "Ski Lift Valley",
    "Main Stadium",
];

/// What to simulate.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Units.
    pub units: usize,
    /// Events a unit records per second, on average (four times that at the hot location).
    pub rate: f64,
    /// Reservations the simulated app makes per second.
    pub reservations: f64,
    /// Share of the fleet offline at any time.
    pub offline_share: f64,
    /// Seconds a unit's heartbeat (or the platform's ping) comes.
    pub heartbeat: Duration,
    /// The platform's Reel server (`http://…`), which agents talk to.
    pub central: String,
    /// The platform's app API (`http://…`).
    pub app: String,
    /// The MQTT broker the bridge follows (`host:port`); without it every unit is an agent or
    /// fetched.
    pub mqtt: Option<SocketAddr>,
    /// First level of the MQTT topics (`devices` → `devices/NAME/events`).
    pub mqtt_prefix: String,
    /// Where the units' own stores live.
    pub data_dir: PathBuf,
    /// The first unit is `PL-<first>`.
    pub first: usize,
    /// Seed of the random choices.
    pub seed: u64,
}

impl FleetOptions {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self.units == 0 || self.units > 100_000 {
            return Err("--units must be 1 to 100000".into());
        }
        if !(self.rate.is_finite() && (0.0..=100.0).contains(&self.rate)) {
            return Err("--rate must be 0 to 100 events per unit per second".into());
        }
        if !(self.reservations.is_finite() && (0.0..=10_000.0).contains(&self.reservations)) {
            return Err("--reservations must be 0 to 10000 per second".into());
        }
        if !(self.offline_share.is_finite() && (0.0..=1.0).contains(&self.offline_share)) {
            return Err("--offline must be a share between 0 and 1".into());
        }
        Ok(())
    }
}

/// Counts of what the fleet did.
#[derive(Debug, Default, serde::Serialize)]
pub struct FleetCounts {
    /// Steps that failed at a unit (its own store refused).
    pub unit_errors: AtomicU64,
    /// Reservations the app made and had paid.
    pub reserved: AtomicU64,
    /// Reservations refused (the locker was taken).
    pub refused: AtomicU64,
    /// App requests that failed otherwise.
    pub app_errors: AtomicU64,
    /// Nanoseconds of app reservation requests, and how many, for the mean.
    pub reserve_nanos: AtomicU64,
}

/// The running fleet.
pub struct Fleet {
    units: Vec<Arc<SimUnit>>,
    by_name: HashMap<String, usize>,
    /// Stops a unit's links (agent) or its server (fetch) while it is offline.
    links: Vec<Mutex<Option<watch::Sender<bool>>>>,
    /// Fetch units' ports, kept across restarts.
    ports: Vec<Mutex<Option<u16>>>,
    /// Units taken offline by hand: the random outages leave them alone.
    held: Mutex<HashMap<usize, bool>>,
    central: Arc<CentralServer>,
    http: reqwest::Client,
    options: FleetOptions,
    /// Counts.
    pub counts: Arc<FleetCounts>,
    stopping: AtomicBool,
}

/// The configuration every simulated unit starts with.
pub fn default_config(name: &str, location: &str) -> UnitConfig {
    UnitConfig {
        display_name: name.to_string(),
        location: location.to_string(),
        lockers: ["A", "B", "C", "D", "E", "F", "G", "H"].iter().map(|l| l.to_string()).collect(),
        price_cents_per_hour: 250,
        rental_hours: vec![1, 4, 24],
    }
}

impl Fleet {
    /// Builds the fleet, configures and registers its units with the platform, and starts every
    /// unit's links. Run it with [`Fleet::run`].
    pub async fn start(options: FleetOptions) -> Result<Arc<Self>> {
        options.validate().map_err(anyhow::Error::msg)?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        // The platform first: nothing is created for a fleet that has nowhere to go.
        let configured = configured_units(&http, &options.app).await?;
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("creating {}", options.data_dir.display()))?;
        let mqtt = match options.mqtt {
            Some(address) => Some(mqtt_client(address, options.seed)),
            None => None,
        };
        let mut units = Vec::with_capacity(options.units);
        for i in 0..options.units {
            let name = format!("PL-{}", options.first + i);
            let location = LOCATIONS[i % LOCATIONS.len()].to_string();
            let link = match i % 20 {
                7 => UnitLinkKind::Fetch,
                3 | 13 if mqtt.is_some() => UnitLinkKind::Mqtt,
                _ => UnitLinkKind::Agent,
            };
            let (outlet, installed) = match (&mqtt, link) {
                (Some(client), UnitLinkKind::Mqtt) => {
                    let topic = format!("{}/{name}/events", options.mqtt_prefix);
                    (Outlet::Mqtt { client: client.clone(), topic, held: Mutex::new(Vec::new()) }, None)
                }
                _ => {
                    let path = options.data_dir.join(format!("{name}.db"));
                    let store = SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    // A fetched unit takes its configuration at install: the platform does not
                    // deliver to it.
                    let installed = (link == UnitLinkKind::Fetch).then(|| default_config(&name, &location));
                    (Outlet::Store(store), installed)
                }
            };
            units.push(Arc::new(SimUnit::new(name, link, location, outlet, installed)));
        }
        let by_name = units.iter().enumerate().map(|(i, u)| (u.name.clone(), i)).collect();
        let fleet = Arc::new(Self {
            links: units.iter().map(|_| Mutex::new(None)).collect(),
            ports: units.iter().map(|_| Mutex::new(None)).collect(),
            units,
            by_name,
            held: Mutex::new(HashMap::new()),
            central: Arc::new(CentralServer::new(options.central.clone(), None)),
            http,
            options,
            counts: Arc::default(),
            stopping: AtomicBool::new(false),
        });
        fleet.configure_all(&configured).await?;
        let push = fleet.serve_push_endpoint().await?;
        for index in 0..fleet.units.len() {
            fleet.start_links(index).await?;
        }
        fleet.register_all(push).await?;
        Ok(fleet)
    }

    /// The units.
    pub fn units(&self) -> &[Arc<SimUnit>] {
        &self.units
    }

    /// A unit by name.
    pub fn unit(&self, name: &str) -> Option<&Arc<SimUnit>> {
        self.by_name.get(name).map(|i| &self.units[*i])
    }

    /// Configures every unit the platform does not know yet (one app call each).
    async fn configure_all(&self, known: &std::collections::HashSet<String>) -> Result<()> {
        for unit in &self.units {
            if known.contains(&unit.name) {
                continue;
            }
            let body = serde_json::json!({ "unit": unit.name, "config": default_config(&unit.name, &unit.location) });
            let answer =
                self.http.post(format!("{}/api/commands/configure", self.options.app)).json(&body).send().await?;
            if !answer.status().is_success() {
                anyhow::bail!("configuring {} failed: {}", unit.name, answer.text().await.unwrap_or_default());
            }
        }
        Ok(())
    }

    /// Registers the units the platform reaches itself: MQTT units for configuration pushes to
    /// the simulator's endpoint, fetch units at their own server.
    async fn register_all(&self, push: SocketAddr) -> Result<()> {
        for (index, unit) in self.units.iter().enumerate() {
            let (endpoint, link) = match unit.link {
                UnitLinkKind::Agent => continue,
                UnitLinkKind::Mqtt => (format!("http://{push}/units/{}", unit.name), "push"),
                UnitLinkKind::Fetch => {
                    let port = self.ports[index].lock().unwrap().context("the fetch unit's server is not running")?;
                    (format!("http://127.0.0.1:{port}"), "fetch")
                }
            };
            let body = serde_json::json!({
                "endpoint": endpoint, "link": link, "interval_ms": self.options.heartbeat.as_millis() as u64,
                "display_name": unit.name,
            });
            let answer = self
                .http
                .post(format!("{}/api/admin/units/{}/link", self.options.app, unit.name))
                .json(&body)
                .send()
                .await?;
            if !answer.status().is_success() {
                anyhow::bail!("registering {} failed: {}", unit.name, answer.text().await.unwrap_or_default());
            }
        }
        Ok(())
    }

    /// Starts a unit's connection: an agent's uplink, downlink and heartbeats; a fetch unit's
    /// server. MQTT units need nothing: they publish and answer pushes while online.
    async fn start_links(&self, index: usize) -> Result<()> {
        let unit = &self.units[index];
        let Some(store) = unit.store() else { return Ok(()) };
        let (stop, stopped) = watch::channel(false);
        let until = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        match unit.link {
            UnitLinkKind::Agent => {
                let owner = Ownership::for_device(&unit.name)?;
                let uplink = Uplink::new(owner.clone(), self.central.clone())?;
                let retry = ClockBasedRetryStrategy {
                    base_delay: Duration::from_millis(200),
                    max_unavailable_delay: Duration::from_secs(5),
                    ..ClockBasedRetryStrategy::default()
                };
                let engine = SubscriptionEngine::new(
                    Arc::new(store.clone()),
                    Arc::new(store.subscription_store()?),
                    vec![Arc::new(uplink)],
                )?
                .with_retry_strategy(retry);
                tokio::spawn(Worker::new(engine, WorkerOptions::default()).run(until(stopped.clone())));
                let local: Arc<dyn EventStore> = Arc::new(store.clone());
                let downlink =
                    Downlink::new(owner.clone(), self.central.clone(), local.clone(), Duration::from_secs(5));
                tokio::spawn(downlink.run(until(stopped.clone())));
                let heartbeats = Heartbeats::new(owner, self.central.clone(), local, self.options.heartbeat)
                    .with_display_name(Some(unit.name.clone()));
                tokio::spawn(heartbeats.run(until(stopped)));
            }
            UnitLinkKind::Fetch => {
                let port = *self.ports[index].lock().unwrap();
                let listen = SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0)));
                let local: Arc<dyn EventStore> = Arc::new(store.clone());
                let engine = SubscriptionEngine::new(local.clone(), Arc::new(store.subscription_store()?), Vec::new())?;
                let config =
                    reel_server::ServerConfig { listen, run_worker: false, ..reel_server::ServerConfig::default() };
                let server = reel_server::Server::start(local, engine, config).await?;
                *self.ports[index].lock().unwrap() = Some(server.local_addr().port());
                tokio::spawn(server.run(until(stopped)));
            }
            UnitLinkKind::Mqtt => return Ok(()),
        }
        *self.links[index].lock().unwrap() = Some(stop);
        Ok(())
    }

    fn stop_links(&self, index: usize) {
        if let Some(stop) = self.links[index].lock().unwrap().take() {
            let _ = stop.send(true);
        }
    }

    /// Takes a unit offline or brings it back; `hold` keeps the random outages away from it
    /// until it is released with `hold = false`.
    pub async fn set_online(&self, name: &str, online: bool, hold: bool) -> Result<()> {
        let index = *self.by_name.get(name).with_context(|| format!("no simulated unit {name}"))?;
        if hold {
            self.held.lock().unwrap().insert(index, online);
        } else {
            self.held.lock().unwrap().remove(&index);
        }
        self.switch(index, online).await
    }

    async fn switch(&self, index: usize, online: bool) -> Result<()> {
        let unit = &self.units[index];
        if unit.is_online() == online {
            return Ok(());
        }
        if online {
            unit.set_online(true).await?;
            self.start_links(index).await?;
        } else {
            self.stop_links(index);
            unit.set_online(false).await?;
        }
        Ok(())
    }

    /// Runs the units, the outages and the app until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for index in 0..self.units.len() {
            tasks.push(tokio::spawn(self.clone().live(index, stop.clone())));
        }
        tasks.push(tokio::spawn(self.clone().outages(stop.clone())));
        if self.options.reservations > 0.0 {
            tasks.push(tokio::spawn(self.clone().app(stop.clone())));
        }
        let _ = stop.wait_for(|s| *s).await;
        self.stopping.store(true, Ordering::SeqCst);
        for task in tasks {
            let _ = task.await;
        }
        for index in 0..self.units.len() {
            self.stop_links(index);
        }
    }

    /// One unit's life: a step a second (phase-shifted across the fleet).
    async fn live(self: Arc<Self>, index: usize, mut stop: watch::Receiver<bool>) {
        let unit = self.units[index].clone();
        let mut random = Random::new(self.options.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let hot = unit.location == LOCATIONS[0];
        // A screen action records about three events on average.
        let activity = (self.options.rate * if hot { 4.0 } else { 1.0 } / 3.0).min(1.0);
        let phase = Duration::from_micros(random.below(1_000_000));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if unit.link == UnitLinkKind::Agent {
                if let Err(e) = unit.take_downlinked().await {
                    tracing::warn!(unit = %unit.name, error = %e, "taking configuration failed");
                }
            }
            let steps = if self.options.rate > 3.0 { (self.options.rate / 3.0).ceil() as usize } else { 1 };
            for _ in 0..steps {
                if let Err(e) = unit.step(&mut random, activity).await {
                    self.counts.unit_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(unit = %unit.name, error = %e, "a unit's step failed");
                }
            }
        }
    }

    /// Takes random units offline for 10–60 s, keeping about `offline_share` of the fleet away.
    async fn outages(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut random = Random::new(self.options.seed ^ 0x5eed);
        let mut back_at: HashMap<usize, tokio::time::Instant> = HashMap::new();
        let mean_offline = 35.0;
        let starts_per_second = self.options.offline_share * self.units.len() as f64 / mean_offline;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = tokio::time::Instant::now();
            let held: Vec<usize> = self.held.lock().unwrap().keys().copied().collect();
            let due: Vec<usize> = back_at.iter().filter(|(_, at)| **at <= now).map(|(i, _)| *i).collect();
            for index in due {
                back_at.remove(&index);
                if !held.contains(&index) {
                    if let Err(e) = self.switch(index, true).await {
                        tracing::warn!(unit = %self.units[index].name, error = %e, "bringing a unit back failed");
                    }
                }
            }
            let mut starts = starts_per_second;
            while starts > 0.0 {
                if random.chance(starts.min(1.0)) {
                    let index = random.below(self.units.len() as u64) as usize;
                    if !held.contains(&index) && !back_at.contains_key(&index) {
                        let _ = self.switch(index, false).await;
                        back_at.insert(index, now + Duration::from_secs(10 + random.below(51)));
                    }
                }
                starts -= 1.0;
            }
        }
    }

    /// The simulated app: reservations at random units, most confirmed, a few cancelled.
    async fn app(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut random = Random::new(self.options.seed ^ 0xa77);
        let every = Duration::from_secs_f64(1.0 / self.options.reservations);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let reachable: Vec<usize> =
            (0..self.units.len()).filter(|i| self.units[*i].link != UnitLinkKind::Fetch).collect();
        if reachable.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let unit = &self.units[reachable[random.below(reachable.len() as u64) as usize]];
            let locker = ["A", "B", "C", "D", "E", "F", "G", "H"][random.below(8) as usize];
            // Now, or up to two days ahead ("future state").
            let ahead_ms = if random.chance(0.5) { 0 } else { random.below(48 * 3_600_000) as i64 };
            let from_ms = reel_core::Timestamp::now().unix_micros() / 1_000 + ahead_ms;
            let body = serde_json::json!({ "unit": unit.name, "locker": locker, "from_ms": from_ms, "hours": 1 });
            let confirm = random.chance(0.9);
            let cancel = random.chance(0.1);
            let fleet = self.clone();
            tokio::spawn(async move { fleet.reserve(body, confirm, cancel).await });
        }
    }

    async fn reserve(&self, body: serde_json::Value, confirm: bool, cancel: bool) {
        #[derive(Deserialize)]
        struct Answer {
            reservation: String,
            status: String,
        }
        let started = std::time::Instant::now();
        let answer = self.http.post(format!("{}/api/commands/reserve", self.options.app)).json(&body).send().await;
        self.counts.reserve_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let answer = match answer {
            Ok(answer) if answer.status() == StatusCode::CONFLICT => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(answer) if answer.status().is_success() => answer,
            _ => {
                self.counts.app_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let Ok(answer) = answer.json::<Answer>().await else { return };
        self.counts.reserved.fetch_add(1, Ordering::Relaxed);
        if answer.status != "paid" || !confirm {
            return;
        }
        let command = serde_json::json!({ "reservation": answer.reservation });
        let _ = self.http.post(format!("{}/api/commands/confirm", self.options.app)).json(&command).send().await;
        if cancel {
            let _ = self.http.post(format!("{}/api/commands/cancel", self.options.app)).json(&command).send().await;
        }
    }

    /// The endpoint where the platform pushes configuration to MQTT units (`GET` is its ping).
    async fn serve_push_endpoint(self: &Arc<Self>) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let router = Router::new().route("/units/{name}", get(ping).post(deliver)).with_state(self.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "the push endpoint stopped");
            }
        });
        Ok(address)
    }
}

/// The units the platform has a configuration for.
async fn configured_units(http: &reqwest::Client, app: &str) -> Result<std::collections::HashSet<String>> {
    let known: serde_json::Value = http
        .get(format!("{app}/api/queries/units"))
        .send()
        .await
        .with_context(|| format!("reaching the platform's app API at {app}"))?
        .error_for_status()?
        .json()
        .await?;
    Ok(known["units"].as_array().into_iter().flatten().filter_map(|u| u["name"].as_str().map(str::to_string)).collect())
}

/// The unit answers when online.
async fn ping(State(fleet): State<Arc<Fleet>>, Path(name): Path<String>) -> StatusCode {
    match fleet.unit(&name) {
        Some(unit) if unit.is_online() => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        None => StatusCode::NOT_FOUND,
    }
}

/// A configuration event delivered by the platform.
#[derive(Deserialize)]
struct Delivery {
    version: u64,
    #[serde(rename = "type")]
    event_type: String,
    data: serde_json::Value,
}

async fn deliver(
    State(fleet): State<Arc<Fleet>>,
    Path(name): Path<String>,
    Json(delivery): Json<Delivery>,
) -> StatusCode {
    let Some(unit) = fleet.unit(&name) else { return StatusCode::NOT_FOUND };
    if !unit.is_online() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match unit.take_config(delivery.version, &delivery.event_type, delivery.data).await {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            tracing::warn!(unit = %name, error = %e, "a pushed configuration event was not taken");
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}

/// One MQTT connection for every MQTT unit of the simulator (the bridge reads the unit's name
/// from the topic, not from the client).
fn mqtt_client(address: SocketAddr, seed: u64) -> rumqttc::AsyncClient {
    let mut options =
        rumqttc::MqttOptions::new(format!("lockers-sim-{}", seed % 100_000), address.ip().to_string(), address.port());
    options.set_keep_alive(Duration::from_secs(10));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10_000);
    tokio::spawn(async move {
        loop {
            if let Err(e) = events.poll().await {
                tracing::warn!(error = %e, "the simulator's MQTT connection failed; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    client
}
