//! What the in-process tests of this crate share.

use std::sync::Arc;

use reel_server::{Server, ServerConfig};
use reel_sqlite::SqliteStore;
use reel_subscriptions::SubscriptionEngine;

/// Serves Reel's HTTP API over `store` in this process on a free port: its base URL, and the
/// sender whose drop stops it.
pub async fn serve(store: &SqliteStore) -> (String, tokio::sync::oneshot::Sender<()>) {
    let engine =
        SubscriptionEngine::new(Arc::new(store.clone()), Arc::new(store.subscription_store().unwrap()), vec![])
            .unwrap();
    let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
    let server = Server::start(Arc::new(store.clone()), engine, config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (base, stop)
}
