//! The central platform in one process: the event store, Reel's HTTP API for the units (with
//! presence, configuration pushes and fetches), the MQTT bridge, the projections and
//! processors run by Reel's worker, and the app's HTTP API and web UI.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use reel_core::{
    EventStore, PresenceStore, SubscriptionCriteria, SubscriptionId, SubscriptionStatus, SubscriptionStore,
};
use reel_edge::{LinkOptions, UnitLinks};
use reel_relay::{MqttBridgeOptions, MqttIngest};
use reel_server::{Presence, PresenceOptions, Server, ServerConfig};
use reel_subscriptions::{Subscriber, SubscriberSpec, SubscriptionEngine, TransactionalProjector};
use tokio::sync::watch;

use crate::commands::Commands;
use crate::fleet::Fleet;
use crate::processors::{Dispatcher, Reconciler};
use crate::projections::{self, Naming, NAMES};
use crate::queries::{Queries, Serving};
use crate::sql::{Portable, ReadModel};

/// Where the platform keeps its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database and the schema to use in it.
    Postgres {
        /// `postgres://…`
        url: String,
        /// The schema.
        schema: String,
    },
}

impl StoreLocation {
    /// A path, `sqlite://PATH`, or `postgres://…` (with `schema`).
    pub fn parse(text: &str, schema: &str) -> Result<Self, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres { url: text.to_string(), schema: schema.to_string() });
        }
        let path = text.strip_prefix("sqlite://").unwrap_or(text);
        if path.is_empty() {
            return Err("--store needs a file path or a postgres:// URL".into());
        }
        if let Some((scheme, _)) = path.split_once("://") {
            return Err(format!("--store scheme {scheme}:// is not supported (a file path or postgres://…)"));
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }
}

/// How to run the platform.
#[derive(Clone, Debug)]
pub struct PlatformOptions {
    /// Where the events are.
    pub store: StoreLocation,
    /// Where the app API and web UI listen.
    pub listen: SocketAddr,
    /// Where Reel's HTTP API for the units listens.
    pub reel_listen: SocketAddr,
    /// The MQTT broker to bridge (`None`: no MQTT units).
    pub mqtt: Option<SocketAddr>,
    /// The first level of the MQTT topics (`devices` → `devices/NAME/events`).
    pub mqtt_prefix: String,
    /// The version of each projection to build and serve (`eventlog` → 2); 1 when absent.
    pub versions: BTreeMap<String, u32>,
    /// A unit is offline after this many of its heartbeat intervals in silence.
    pub offline_after: f64,
    /// Waits before retrying a failed configuration push (while the unit is online).
    pub push_retry: Vec<Duration>,
}

impl PlatformOptions {
    /// The defaults on the embedded store at `store`.
    pub fn new(store: StoreLocation) -> Self {
        Self {
            store,
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            reel_listen: SocketAddr::from(([127, 0, 0, 1], 7390)),
            mqtt: None,
            mqtt_prefix: "devices".into(),
            versions: BTreeMap::new(),
            offline_after: 2.0,
            push_retry: vec![Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(900)],
        }
    }

    fn version(&self, name: &str) -> u32 {
        self.versions.get(name).copied().unwrap_or(1)
    }
}

/// The stores of the platform, opened.
pub struct Stores {
    /// The events.
    pub events: Arc<dyn EventStore>,
    /// Subscription positions.
    pub subscriptions: Arc<dyn SubscriptionStore>,
    /// Presence rows.
    pub presence: Arc<dyn PresenceStore>,
    /// The projections' tables, for reading.
    pub read: ReadModel,
    /// PostgreSQL's schema, `None` on SQLite.
    pub schema: Option<String>,
    backend: Backend,
}

enum Backend {
    Sqlite(reel_sqlite::SqliteSubscriptionStore),
    /// Each projection commits through a subscription store (a connection) of its own.
    Postgres {
        url: String,
        schema: String,
    },
}

impl Stores {
    /// Opens (creating) the store.
    pub async fn open(location: &StoreLocation) -> Result<Self> {
        match location {
            StoreLocation::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                let store =
                    reel_sqlite::SqliteStore::open(path).with_context(|| format!("opening {}", path.display()))?;
                let subscriptions = store.subscription_store()?;
                Ok(Self {
                    presence: Arc::new(store.presence_store()?),
                    subscriptions: Arc::new(subscriptions.clone()),
                    events: Arc::new(store),
                    read: ReadModel::sqlite(path),
                    schema: None,
                    backend: Backend::Sqlite(subscriptions),
                })
            }
            StoreLocation::Postgres { url, schema } => {
                let store = reel_postgres::PostgresStore::connect(url, schema)
                    .await
                    .with_context(|| format!("opening schema {schema} at {}", reel_postgres::redact(url)))?;
                let subscriptions = store.subscription_store().await?;
                let store = Arc::new(store);
                Ok(Self {
                    presence: store.clone(),
                    subscriptions: Arc::new(subscriptions),
                    events: store,
                    read: ReadModel::postgres(url).await?,
                    schema: Some(schema.clone()),
                    backend: Backend::Postgres { url: url.clone(), schema: schema.clone() },
                })
            }
        }
    }

    /// A projection's tables of `version` on this backend.
    pub fn naming(&self, version: u32) -> Naming {
        match &self.schema {
            Some(schema) => Naming::postgres(schema, version),
            None => Naming::sqlite(version),
        }
    }

    /// The subscriber of a projection's version.
    pub async fn projector(&self, name: &str, version: u32) -> Result<Arc<dyn Subscriber>> {
        let projection =
            projections::build(name, &self.naming(version)).with_context(|| format!("no projection {name:?}"))?;
        let spec = SubscriberSpec::projector(&projections::subscription_id(name, version))?
            .in_categories(projections::categories(name).iter().copied());
        let portable = Arc::new(Portable(projection));
        Ok(match &self.backend {
            Backend::Sqlite(store) => {
                TransactionalProjector::new(spec, store.clone(), portable as Arc<dyn reel_sqlite::SqliteProjection>)
            }
            Backend::Postgres { url, schema } => {
                let store = reel_postgres::PostgresSubscriptionStore::connect(url, schema).await?;
                TransactionalProjector::new(spec, store, portable as Arc<dyn reel_postgres::PostgresProjection>)
            }
        })
    }

    /// Whether a subscription exists.
    pub async fn has_subscription(&self, id: &str) -> Result<bool> {
        Ok(self.subscriptions.get(&SubscriptionId::new(id)?).await?.is_some())
    }
}

/// The projections' versions: the one being served and, while it rebuilds, the one replacing it.
#[derive(Clone, Debug)]
struct Rebuild {
    name: &'static str,
    old: u32,
    new: u32,
}

/// A started platform.
pub struct Platform {
    /// The stores.
    pub stores: Arc<Stores>,
    /// The app's commands.
    pub commands: Commands,
    /// The app's queries.
    pub queries: Queries,
    /// The subscription engine running projections and processors.
    pub engine: SubscriptionEngine,
    /// The simulated fleet, when one runs in this process (set after start).
    pub fleet: Arc<OnceLock<Arc<Fleet>>>,
    app_listener: tokio::net::TcpListener,
    server: Server,
    mqtt: Option<Arc<MqttIngest>>,
    rebuilds: Vec<Rebuild>,
}

impl Platform {
    /// Opens the store, registers the projections and processors, binds both listeners.
    pub async fn start(options: &PlatformOptions) -> Result<Self> {
        let stores = Arc::new(Stores::open(&options.store).await?);
        let serving = Arc::new(Serving::new(stores.schema.clone()));
        let mut subscribers: Vec<Arc<dyn Subscriber>> = Vec::new();
        let mut rebuilds = Vec::new();
        for name in NAMES {
            let version = options.version(name);
            if version == 0 {
                anyhow::bail!("projection versions start at 1 ({name}=0)");
            }
            subscribers.push(stores.projector(name, version).await?);
            serving.serve(name, version);
            // The version before keeps serving (and following the log) until this one caught up.
            if version > 1 && stores.has_subscription(&projections::subscription_id(name, version - 1)).await? {
                subscribers.push(stores.projector(name, version - 1).await?);
                serving.serve(name, version - 1);
                rebuilds.push(Rebuild { name, old: version - 1, new: version });
            }
        }
        subscribers.push(Arc::new(Dispatcher::new(stores.events.clone())?));
        subscribers.push(Arc::new(Reconciler::new(stores.events.clone())?));
        let engine = SubscriptionEngine::new(stores.events.clone(), stores.subscriptions.clone(), subscribers)?;
        engine.setup(&SubscriptionCriteria::all(), true).await?.into_result()?;
        let config = ServerConfig { listen: options.reel_listen, ..ServerConfig::default() };
        let presence_options = PresenceOptions { offline_after: options.offline_after, ..PresenceOptions::default() };
        let links = UnitLinks::new(
            stores.events.clone(),
            stores.presence.clone(),
            LinkOptions { retry_steps: options.push_retry.clone(), ..LinkOptions::default() },
        );
        let presence =
            Presence::new(stores.events.clone(), stores.presence.clone(), presence_options).with_work(Arc::new(links));
        let server = Server::start(stores.events.clone(), engine.clone(), config)
            .await
            .context("starting Reel's API for the units")?
            .with_presence(presence);
        let mqtt = match options.mqtt {
            Some(address) => {
                let mut bridge = MqttBridgeOptions::new(address.ip().to_string(), address.port());
                bridge.events_topic = format!("{}/+/events", options.mqtt_prefix);
                bridge.client_id = format!("lockers-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
                bridge.validate().map_err(anyhow::Error::msg)?;
                Some(Arc::new(MqttIngest::new(bridge, stores.events.clone())))
            }
            None => None,
        };
        let app_listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        let queries = Queries::new(stores.read.clone(), stores.presence.clone(), serving);
        Ok(Self {
            commands: Commands::new(stores.events.clone()),
            queries,
            engine,
            fleet: Arc::new(OnceLock::new()),
            app_listener,
            server,
            mqtt,
            rebuilds,
            stores,
        })
    }

    /// The app's address (`http://…`).
    pub fn app_url(&self) -> String {
        format!("http://{}", self.app_listener.local_addr().expect("bound"))
    }

    /// Reel's API for the units (`http://…`).
    pub fn reel_url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    /// Serves until `stop` is set: the app, Reel's API with its worker (projections, processors,
    /// presence), the MQTT bridge, and the switch to rebuilt projections once they caught up.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let until = |mut stop: watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let state = crate::web::AppState {
            commands: self.commands.clone(),
            queries: self.queries.clone(),
            presence: self.stores.presence.clone(),
            engine: self.engine.clone(),
            fleet: self.fleet.clone(),
        };
        let app = axum::serve(self.app_listener, crate::web::router(state)).with_graceful_shutdown(until(stop.clone()));
        let app = tokio::spawn(async move { app.await });
        let bridge = self.mqtt.clone().map(|ingest| {
            let stopped = until(stop.clone());
            tokio::spawn(async move { ingest.run(stopped).await })
        });
        if !self.rebuilds.is_empty() {
            tokio::spawn(switch_when_caught_up(
                self.engine.clone(),
                self.queries.serving().clone(),
                self.rebuilds.clone(),
                stop.clone(),
            ));
        }
        self.server.run(until(stop.clone())).await?;
        let _ = stop.wait_for(|s| *s).await;
        if let Some(bridge) = bridge {
            bridge.await.context("the MQTT bridge")??;
        }
        app.await.context("the app server")??;
        Ok(())
    }
}

/// Serves each rebuilt projection's new version once it has caught up with the log.
async fn switch_when_caught_up(
    engine: SubscriptionEngine,
    serving: Arc<Serving>,
    mut rebuilds: Vec<Rebuild>,
    mut stop: watch::Receiver<bool>,
) {
    while !rebuilds.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut waiting = Vec::new();
        for rebuild in rebuilds {
            let id = projections::subscription_id(rebuild.name, rebuild.new);
            let Ok(id) = SubscriptionId::new(&id) else { continue };
            let view = engine.overview(&SubscriptionCriteria::ids([id])).await.ok().and_then(|v| v.into_iter().next());
            match view {
                Some(view) if view.status == SubscriptionStatus::Active && view.lag == 0 => {
                    serving.serve(rebuild.name, rebuild.new);
                    tracing::info!(
                        projection = rebuild.name,
                        serving = rebuild.new,
                        "version {} caught up and is served; remove version {} with `lockers projections retire {} {}`",
                        rebuild.new,
                        rebuild.old,
                        rebuild.name,
                        rebuild.old
                    );
                    println!(
                        "projection {} version {} caught up and is served; retire version {} with: lockers projections retire {} {}",
                        rebuild.name, rebuild.new, rebuild.old, rebuild.name, rebuild.old
                    );
                }
                _ => waiting.push(rebuild),
            }
        }
        rebuilds = waiting;
    }
}

/// Removes a projection's old version: its subscription and its tables.
pub async fn retire(store: &StoreLocation, name: &str, version: u32) -> Result<bool> {
    if !NAMES.contains(&name) {
        anyhow::bail!("no projection {name:?} (one of {})", NAMES.join(", "));
    }
    let stores = Stores::open(store).await?;
    let id = projections::subscription_id(name, version);
    if !stores.has_subscription(&id).await? {
        return Ok(false);
    }
    let engine = SubscriptionEngine::new(
        stores.events.clone(),
        stores.subscriptions.clone(),
        vec![stores.projector(name, version).await?],
    )?;
    engine.remove(&SubscriptionCriteria::ids([SubscriptionId::new(&id)?])).await?.into_result()?;
    Ok(true)
}
