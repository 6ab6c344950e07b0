//! What subscriber code returns, and the contract of stores that commit a projection's writes
//! together with its checkpoint (exactly-once effects).

use std::sync::Arc;

use async_trait::async_trait;

use crate::{RecordedEvent, Subscription, Timestamp};

/// Error a handler, setup or teardown returns. Any error type converts into it with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// The start of a failure's message when the handler said [`Unavailable`].
pub const UNAVAILABLE_PREFIX: &str = "unavailable: ";

/// A handler error meaning "what I hand events to is unreachable right now" (a broker, a
/// database, a webhook that does not answer), as opposed to "this event cannot be handled".
///
/// The engine retries it with backoff for as long as it lasts: it never counts against the
/// retry limit and never parks the event, so an outage of any length ends with the subscription
/// resuming by itself. Its message starts with [`UNAVAILABLE_PREFIX`], which is how the
/// subscription's saved error says it (see [`crate::SubscriptionError::is_unavailable`]).
///
/// ```
/// use reel_core::{HandlerError, Unavailable};
/// let error: HandlerError = Unavailable("broker at 127.0.0.1:4222: connection refused".into()).into();
/// assert_eq!(error.to_string(), "unavailable: broker at 127.0.0.1:4222: connection refused");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{UNAVAILABLE_PREFIX}{}", self.0)
    }
}

impl std::error::Error for Unavailable {}

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
