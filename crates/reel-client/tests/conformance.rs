//! The shared store contract, run against a `reel serve` (in this process, over SQLite) through
//! the HTTP client: the remote store keeps every invariant the local one does.

mod common;

async fn fresh_store() -> reel_testkit::TestStore {
    let running = common::serve().await;
    reel_testkit::TestStore::new(running.client.clone(), running)
}

reel_testkit::store_conformance_tests!(fresh_store);
