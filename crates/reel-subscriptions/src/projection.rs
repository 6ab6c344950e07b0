//! Transactional projections: a backend's projection (`SqliteProjection`, `PostgresProjection`)
//! turned into a subscriber whose rows and checkpoint commit in one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use reel_core::{BatchFailure, Checkpoint, HandlerError, ProjectionStore, RecordedEvent};

use crate::{Message, Subscriber, SubscriberSpec};

/// A subscriber that applies each batch of a projection and saves its position in the same
/// database transaction (exactly-once effects): a failing or crashing batch leaves neither rows
/// nor position behind.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use reel_core::{BatchFailure, RecordedEvent, SubscriptionCriteria};
/// use reel_sqlite::{SqliteProjection, SqliteStore};
/// use reel_subscriptions::{SubscriberSpec, SubscriptionEngine, TransactionalProjector};
///
/// struct CountEvents;
/// impl SqliteProjection for CountEvents {
///     fn apply(&self, tx: &rusqlite::Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
///         tx.execute("CREATE TABLE IF NOT EXISTS counted_1 (n INTEGER)", []).map_err(|e| BatchFailure::at(0, e))?;
///         tx.execute("INSERT INTO counted_1 VALUES (?1)", [batch.len()]).map_err(|e| BatchFailure::at(0, e))?;
///         Ok(())
///     }
/// }
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
/// let subscriptions = store.subscription_store().unwrap();
/// let projector = TransactionalProjector::new(
///     SubscriberSpec::projector("counted_1").unwrap(),
///     subscriptions.clone(),
///     Arc::new(CountEvents),
/// );
/// let engine = SubscriptionEngine::new(store, Arc::new(subscriptions), vec![projector]).unwrap();
/// engine.setup(&SubscriptionCriteria::all(), false).await.unwrap();
/// # });
/// ```
pub struct TransactionalProjector<S: ProjectionStore> {
    spec: SubscriberSpec,
    store: S,
    projection: Arc<S::Projection>,
}

impl<S: ProjectionStore> TransactionalProjector<S> {
    /// A subscriber for `projection`, committing through `store` (the subscription store of the
    /// database the projection writes to; it must be the one the engine uses).
    pub fn new(spec: SubscriberSpec, store: S, projection: Arc<S::Projection>) -> Arc<Self> {
        Arc::new(Self { spec, store, projection })
    }
}

#[async_trait]
impl<S: ProjectionStore> Subscriber for TransactionalProjector<S> {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn setup(&self) -> Result<(), HandlerError> {
        self.store.setup_projection(&self.projection).await
    }

    async fn teardown(&self) -> Result<(), HandlerError> {
        self.store.teardown_projection(&self.projection).await
    }

    async fn handle(&self, _message: &Message<'_>) -> Result<(), HandlerError> {
        Err("a transactional projection handles whole batches (handle_batch_with_checkpoint)".into())
    }

    fn saves_own_checkpoint(&self) -> bool {
        true
    }

    async fn handle_batch_with_checkpoint(
        &self,
        batch: Arc<[RecordedEvent]>,
        checkpoint: &mut Checkpoint,
    ) -> Result<(), BatchFailure> {
        self.store.apply_with_checkpoint(&self.projection, batch, checkpoint).await
    }
}
