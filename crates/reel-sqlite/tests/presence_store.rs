//! The shared presence-store contract, run against the embedded SQLite backend.

use std::sync::Arc;

use reel_core::PresenceStore;
use reel_sqlite::SqliteStore;

async fn fresh_store() -> (Arc<dyn PresenceStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("reel.db")).expect("open store");
    (Arc::new(store.presence_store().expect("presence store")), dir)
}

reel_testkit::presence_store_conformance_tests!(fresh_store);
