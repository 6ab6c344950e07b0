//! The shared store contract, run against a `reel serve` (in this process, over SQLite) through
//! the HTTP client: the remote store keeps every invariant the local one does.

use std::sync::Arc;

use reel_client::HttpStore;
use reel_core::EventStore;
use reel_server::{Server, ServerConfig};
use reel_testkit::TestStore;

async fn fresh_store() -> TestStore {
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
    let store = HttpStore::connect(&base, None).await.expect("connect");
    TestStore::new(store, (dir, stop))
}

reel_testkit::store_conformance_tests!(fresh_store);
