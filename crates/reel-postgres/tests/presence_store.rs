//! The shared presence-store contract, run against PostgreSQL.

use std::sync::Arc;

use reel_core::PresenceStore;
use reel_postgres::PostgresStore;

async fn fresh_store() -> (Arc<dyn PresenceStore>, ()) {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::connect(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed for these tests: {e}"));
    (Arc::new(store), ())
}

reel_testkit::presence_store_conformance_tests!(fresh_store);
