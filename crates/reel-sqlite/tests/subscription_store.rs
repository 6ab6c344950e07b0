//! The shared subscription-store contract, run against the embedded SQLite backend.

use std::sync::Arc;

use reel_core::SubscriptionStore;
use reel_sqlite::SqliteStore;

async fn fresh_store() -> (Arc<dyn SubscriptionStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("reel.db")).expect("open store");
    (Arc::new(store.subscription_store().expect("subscription store")), dir)
}

reel_testkit::subscription_store_conformance_tests!(fresh_store);
