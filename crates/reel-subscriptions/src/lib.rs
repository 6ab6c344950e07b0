//! Reel's subscription engine: subscribers follow the log, each from its own persisted position,
//! through the lifecycle New → Booting → Active (→ Paused, Finished, Detached, Error).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use reel_core::{EventStore, ExpectedVersion, NewEvent, StreamName, SubscriptionCriteria};
//! use reel_subscriptions::{HandlerError, Message, Subscriber, SubscriberSpec, SubscriptionEngine};
//!
//! struct CountDoors { spec: SubscriberSpec, seen: std::sync::atomic::AtomicUsize }
//!
//! #[async_trait::async_trait]
//! impl Subscriber for CountDoors {
//!     fn spec(&self) -> &SubscriberSpec { &self.spec }
//!     async fn handle(&self, _message: &Message<'_>) -> Result<(), HandlerError> {
//!         self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = reel_sqlite::SqliteStore::open(dir.path().join("reel.db")).unwrap();
//! let subscriptions = Arc::new(store.subscription_store().unwrap());
//! let stream = StreamName::new("unit-1").unwrap();
//! store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("DoorOpened", "{}")]).await.unwrap();
//!
//! let projector = Arc::new(CountDoors {
//!     spec: SubscriberSpec::projector("doors_1").unwrap(),
//!     seen: Default::default(),
//! });
//! let engine = SubscriptionEngine::new(Arc::new(store), subscriptions, vec![projector.clone()]).unwrap();
//! engine.setup(&SubscriptionCriteria::all(), false).await.unwrap();
//! engine.boot(&SubscriptionCriteria::all()).await.unwrap();
//! assert_eq!(projector.seen.load(std::sync::atomic::Ordering::Relaxed), 1);
//! # });
//! ```

#[cfg(feature = "cli")]
pub mod cli;
mod engine;
mod guard;
mod immediate;
mod partition;
mod projection;
mod retry;
mod subscriber;
mod worker;

pub use engine::{
    EngineError, EngineNote, EngineReport, ResetTo, SubscriptionEngine, SubscriptionView, DEFAULT_MAX_ROUNDS,
};
pub use immediate::{AppendAndRun, RunAfterAppend};
pub use projection::TransactionalProjector;
pub use reel_core::{BatchFailure, Checkpoint, HandlerError, Unavailable};
pub use retry::{Clock, ClockBasedRetryStrategy, ManualClock, NoRetry, RetryStrategy, SystemClock};
pub use subscriber::{EventPayload, Message, Subscriber, SubscriberSpec};
pub use worker::{Worker, WorkerOptions};
