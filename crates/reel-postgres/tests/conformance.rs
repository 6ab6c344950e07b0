//! The shared store contract, run against PostgreSQL (DATABASE_URL, default the local server),
//! each test in a schema of its own so tests run in parallel.

use reel_postgres::PostgresStore;
use reel_testkit::TestStore;

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

async fn fresh_store() -> TestStore {
    let url = database_url();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::connect(&url, &schema).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {url} is needed for these tests (start it, or set DATABASE_URL): {e}")
    });
    TestStore::new(store, ())
}

reel_testkit::store_conformance_tests!(fresh_store);
