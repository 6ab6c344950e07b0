//! Partitioned subscribers: one subscriber becomes `16^k` subscriptions, each seeing only the
//! streams whose stable hash starts with its hex digits.

use std::sync::Arc;

use async_trait::async_trait;
use reel_core::{RecordedEvent, ReelError, SubscriptionId};

use crate::{BatchFailure, Checkpoint, HandlerError, Message, Subscriber, SubscriberSpec};

/// One partition of a partitioned subscriber.
pub(crate) struct PartitionSubscriber {
    inner: Arc<dyn Subscriber>,
    spec: SubscriberSpec,
    digits: u8,
    partition: u32,
}

/// The subscribers that run: unpartitioned ones as they are, partitioned ones split.
pub(crate) fn expand(subscribers: Vec<Arc<dyn Subscriber>>) -> Result<Vec<Arc<dyn Subscriber>>, ReelError> {
    let mut expanded = Vec::with_capacity(subscribers.len());
    for subscriber in subscribers {
        let digits = subscriber.spec().partition_digits;
        if digits == 0 {
            expanded.push(subscriber);
            continue;
        }
        for partition in 0..16u32.pow(u32::from(digits)) {
            let mut spec = subscriber.spec().clone();
            spec.id = SubscriptionId::new(format!("{}:{partition:0width$x}", spec.id, width = usize::from(digits)))?;
            spec.partition_digits = 0;
            expanded.push(Arc::new(PartitionSubscriber { inner: subscriber.clone(), spec, digits, partition }));
        }
    }
    Ok(expanded)
}

impl PartitionSubscriber {
    /// The batch's events of this partition, with their indexes in the batch.
    fn mine(&self, batch: &[RecordedEvent]) -> (Vec<RecordedEvent>, Vec<usize>) {
        batch
            .iter()
            .enumerate()
            .filter(|(_, e)| e.stream.partition(self.digits) == self.partition)
            .map(|(i, e)| (e.clone(), i))
            .unzip()
    }
}

#[async_trait]
impl Subscriber for PartitionSubscriber {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn setup(&self) -> Result<(), HandlerError> {
        self.inner.setup().await
    }

    async fn teardown(&self) -> Result<(), HandlerError> {
        self.inner.teardown().await
    }

    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        if message.stream().partition(self.digits) == self.partition {
            self.inner.handle(message).await
        } else {
            Ok(())
        }
    }

    fn saves_own_checkpoint(&self) -> bool {
        self.inner.saves_own_checkpoint()
    }

    async fn handle_batch(&self, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        let (events, indexes) = self.mine(batch);
        if events.is_empty() {
            return Ok(());
        }
        self.inner
            .handle_batch(&events)
            .await
            .map_err(|f| BatchFailure { index: indexes[f.index.min(indexes.len() - 1)], error: f.error })
    }

    async fn handle_batch_with_checkpoint(
        &self,
        batch: Arc<[RecordedEvent]>,
        checkpoint: &mut Checkpoint,
    ) -> Result<(), BatchFailure> {
        // Even with no event of this partition, the checkpoint moves (through the subscriber's store).
        let (events, indexes) = self.mine(&batch);
        self.inner
            .handle_batch_with_checkpoint(events.into(), checkpoint)
            .await
            .map_err(|f| BatchFailure { index: indexes.get(f.index).copied().unwrap_or(0), error: f.error })
    }
}
