//! The shared subscription-store contract, run against PostgreSQL.

use std::sync::Arc;

use reel_core::SubscriptionStore;
use reel_postgres::PostgresStore;

async fn fresh_store() -> (Arc<dyn SubscriptionStore>, PostgresStore) {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::connect(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed for these tests: {e}"));
    let subscriptions = store.subscription_store().await.expect("subscription store");
    (Arc::new(subscriptions), store)
}

reel_testkit::subscription_store_conformance_tests!(fresh_store);
