//! What subscriber code returns, and the contract of stores that commit a projection's writes
//! together with its checkpoint (exactly-once effects).

use std::sync::Arc;

use async_trait::async_trait;

use crate::{RecordedEvent, Subscription, Timestamp};

/// Error a handler, setup or teardown returns. Any error type converts into it with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Where a batch failed and why.
#[derive(Debug)]
pub struct BatchFailure {
    /// Index of the first event in the batch that was not handled.
    pub index: usize,
    /// Why.
    pub error: HandlerError,
}

impl BatchFailure {
    /// A failure at `index` of the batch.
    pub fn at(index: usize, error: impl Into<HandlerError>) -> Self {
        Self { index, error: error.into() }
    }
}

/// The subscription state to save together with a batch.
#[derive(Debug)]
pub struct Checkpoint {
    /// The state to save, its position already moved past the batch. The store saves it
    /// (compare-and-swap on its revision) and bumps its revision.
    pub subscription: Subscription,
    /// The lease owner running the subscription: the save must require that lease.
    pub lease_owner: Option<String>,
    /// The time to record and to check the lease against.
    pub now: Timestamp,
}

/// A subscription store that applies a projection's batch and saves its checkpoint in one
/// transaction: both commit or neither does. Each backend implements it for its own projection
/// trait (`reel_sqlite::SqliteProjection`, `reel_postgres::PostgresProjection`), whose `apply`
/// receives the open transaction; `reel_subscriptions::TransactionalProjector` turns such a
/// projection into a subscriber.
#[async_trait]
pub trait ProjectionStore: Send + Sync + 'static {
    /// The backend's projection trait object, e.g. `dyn SqliteProjection`.
    type Projection: ?Sized + Send + Sync + 'static;

    /// Runs the projection's setup (create its tables) in a transaction of its own.
    async fn setup_projection(&self, projection: &Arc<Self::Projection>) -> Result<(), HandlerError>;

    /// Runs the projection's teardown (drop its tables) in a transaction of its own.
    async fn teardown_projection(&self, projection: &Arc<Self::Projection>) -> Result<(), HandlerError>;

    /// Applies `batch` and saves `checkpoint.subscription` in one transaction. A failure rolls
    /// everything back; a refused save (stale revision, lost lease) comes back as a
    /// `BatchFailure` whose error is the `ReelError`. The batch is shared, not copied, so a
    /// backend can hand it to the thread that owns its connection.
    async fn apply_with_checkpoint(
        &self,
        projection: &Arc<Self::Projection>,
        batch: Arc<[RecordedEvent]>,
        checkpoint: &mut Checkpoint,
    ) -> Result<(), BatchFailure>;
}
