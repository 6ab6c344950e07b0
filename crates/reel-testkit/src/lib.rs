//! The store contract of docs/DESIGN.md (invariants 1-8, 22 and 23) as tests any backend runs with one macro call.
//!
//! ```text
//! reel_testkit::store_conformance_tests!(|| async {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = reel_sqlite::SqliteStore::open(dir.path().join("reel.db")).unwrap();
//!     reel_testkit::TestStore::new(store, dir)
//! });
//! ```
//!
//! The factory is called once per test (and once per property-test case), so every test gets an
//! empty store of its own and tests can run in parallel.

pub mod boundaries;
pub mod contract;
pub mod crash;
pub mod model;
pub mod presence;
pub mod subscriptions;
pub mod unit_endpoint;

use std::any::Any;
use std::sync::Arc;

use reel_core::EventStore;

/// A fresh, empty store for one test, plus whatever must live as long as it (a temp dir, a schema).
pub struct TestStore {
    /// The store under test.
    pub store: Arc<dyn EventStore>,
    _guard: Box<dyn Any + Send + Sync>,
}

impl TestStore {
    /// Wraps a store and the guard that keeps its storage alive.
    pub fn new(store: impl EventStore + 'static, guard: impl Any + Send + Sync) -> Self {
        Self { store: Arc::new(store), _guard: Box::new(guard) }
    }
}

/// Generates one `#[tokio::test]` per contract test, plus the model-based property test.
/// `$factory` is an expression callable as `$factory().await -> TestStore`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@tests $factory;
            appends_and_reads_back,
            append_is_atomic,
            optimistic_concurrency,
            retry_with_exact_version_is_idempotent,
            retry_with_any_version_is_idempotent,
            same_id_with_other_content_is_rejected,
            retry_recognised_within_recent_window,
            concurrent_identical_retries_store_once,
            positions_are_gap_free_and_ordered,
            read_all_filters_and_skips_ahead,
            scan_shows_each_event_once_in_order,
            read_stream_pages_both_ways,
            bad_input_changes_nothing,
            append_many_keeps_each_request_atomic,
            head_watch_wakes_followers,
            streams_and_stats,
            concurrent_writers_keep_order,
        );
        $crate::store_conformance_tests!(@boundaries $factory;
            tags_are_stored_and_queried,
            conditional_appends_decide_exactly,
            retried_conditional_append_returns_the_original,
            bad_tags_and_conditions_change_nothing,
            conflicting_conditions_commit_exactly_once,
        );
        #[test]
        fn model_based_random_appends() {
            $crate::model::run_model_test(|| $factory());
        }
    };
    (@boundaries $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let test_store: $crate::TestStore = ($factory)().await;
                $crate::boundaries::$name(test_store.store.clone()).await;
            }
        )*
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let test_store: $crate::TestStore = ($factory)().await;
                $crate::contract::$name(test_store.store.clone()).await;
            }
        )*
    };
}
