//! The shared store contract, run against the embedded SQLite backend.

use reel_sqlite::SqliteStore;
use reel_testkit::TestStore;

async fn fresh_store() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("reel.db")).expect("open store");
    TestStore::new(store, dir)
}

reel_testkit::store_conformance_tests!(fresh_store);
