//! A `reel serve` in this process, over a fresh embedded store, and a client connected to it.

use std::sync::Arc;

use reel_client::HttpStore;
use reel_core::EventStore;
use reel_server::{Server, ServerConfig};

/// Keeps the server and its store alive; the server stops when dropped.
pub struct Running {
    pub client: HttpStore,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn serve() -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = reel_sqlite::SqliteStore::open(dir.path().join("reel.db")).expect("open store");
    let subscriptions = Arc::new(local.subscription_store().expect("subscription store"));
    let events: Arc<dyn EventStore> = Arc::new(local);
    let engine = reel_subscriptions::SubscriptionEngine::new(events.clone(), subscriptions, Vec::new()).unwrap();
    let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
    let server = Server::start(events, engine, config).await.expect("start server");
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let client = HttpStore::connect(&base, None).await.expect("connect");
    Running { client, _dir: dir, _stop: stop }
}
