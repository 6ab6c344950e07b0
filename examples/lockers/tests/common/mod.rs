//! Shared by the locker platform's tests: a platform in this process on a fresh store (a
//! SQLite file in a temporary directory, or a PostgreSQL schema of its own), and a small
//! simulated fleet against it. Nothing is mocked: the fleet's agents talk to the platform's
//! Reel API over HTTP, and MQTT units go through the local Mosquitto.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockers::fleet::{Fleet, FleetOptions};
use lockers::platform::{Platform, PlatformOptions, StoreLocation};
use tokio::sync::watch;

pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A store for one test.
pub enum TestStore {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl TestStore {
    pub fn sqlite() -> Self {
        TestStore::Sqlite(tempfile::tempdir().unwrap())
    }

    pub fn postgres(name: &str) -> Self {
        let schema = format!("lockers_{name}_{}", std::process::id());
        TestStore::Postgres(schema)
    }

    pub fn location(&self) -> StoreLocation {
        match self {
            TestStore::Sqlite(dir) => StoreLocation::Sqlite(dir.path().join("platform.db")),
            TestStore::Postgres(schema) => StoreLocation::Postgres { url: postgres_url(), schema: schema.clone() },
        }
    }

    /// Drops a PostgreSQL schema left by an earlier run of the same test.
    pub async fn clean(&self) {
        if let TestStore::Postgres(schema) = self {
            let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL must run at 127.0.0.1:5432 (database test) for this test");
            tokio::spawn(connection);
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await.unwrap();
        }
    }
}

pub const MQTT: &str = "127.0.0.1:1883";

/// Platform options for a test: ports chosen by the system, pushes retried after 1 s, units
/// offline after 2 silent heartbeat intervals.
pub fn options(store: &TestStore, mqtt_prefix: Option<&str>) -> PlatformOptions {
    let mut options = PlatformOptions::new(store.location());
    options.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    options.reel_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    options.push_retry = vec![Duration::from_secs(1)];
    if let Some(prefix) = mqtt_prefix {
        let address: SocketAddr = MQTT.parse().unwrap();
        assert!(
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok(),
            "Mosquitto must run at {MQTT} for this test"
        );
        options.mqtt = Some(address);
        options.mqtt_prefix = prefix.to_string();
    }
    options
}

/// A running platform.
pub struct Running {
    pub app: String,
    pub reel: String,
    pub commands: lockers::commands::Commands,
    pub queries: lockers::queries::Queries,
    pub fleet_slot: Arc<std::sync::OnceLock<Arc<Fleet>>>,
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub events: Arc<dyn reel_core::EventStore>,
}

pub async fn start(options: &PlatformOptions) -> Running {
    let platform = Platform::start(options).await.expect("the platform starts");
    let (stop, stopped) = watch::channel(false);
    let running = Running {
        app: platform.app_url(),
        reel: platform.reel_url(),
        commands: platform.commands.clone(),
        queries: platform.queries.clone(),
        fleet_slot: platform.fleet.clone(),
        events: platform.stores.events.clone(),
        stop,
        task: tokio::spawn(async move { platform.run(stopped).await }),
    };
    running
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("the platform stops").unwrap().unwrap();
    }
}

/// A fleet of `units` against `platform`, running until `stop`.
pub async fn fleet(
    platform: &Running,
    units: usize,
    rate: f64,
    mqtt_prefix: Option<&str>,
    dir: &std::path::Path,
) -> (Arc<Fleet>, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let options = FleetOptions {
        units,
        rate,
        reservations: 0.0,
        offline_share: 0.0,
        heartbeat: Duration::from_secs(1),
        central: platform.reel.clone(),
        app: platform.app.clone(),
        mqtt: mqtt_prefix.map(|_| MQTT.parse().unwrap()),
        mqtt_prefix: mqtt_prefix.unwrap_or("devices").to_string(),
        data_dir: dir.to_path_buf(),
        first: 1000,
        seed: 3,
    };
    let fleet = Fleet::start(options).await.expect("the fleet starts");
    let _ = platform.fleet_slot.set(fleet.clone());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(fleet.clone().run(stopped));
    (fleet, stop, task)
}

/// Polls `check` until it returns `Some`, or fails after `seconds` saying `what`.
pub async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {seconds} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn get(url: &str) -> (u16, serde_json::Value) {
    let answer = reqwest::get(url).await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(serde_json::Value::Null))
}

pub async fn post(url: &str, body: &str) -> (u16, serde_json::Value) {
    let answer = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(serde_json::Value::Null))
}
