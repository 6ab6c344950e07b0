//! The relay subscriber: a batch goes to the sink, and the position follows what it acknowledged.

use std::sync::Arc;

use async_trait::async_trait;
use reel_core::RecordedEvent;
use reel_subscriptions::{BatchFailure, HandlerError, Message, Subscriber, SubscriberSpec};

/// How a sink's publish of one batch ended.
#[derive(Debug, Default)]
pub struct Delivery {
    /// How many of the batch's first events the broker acknowledged, with no gap: every event
    /// before this index is stored by the broker (or was already).
    pub acknowledged: usize,
    /// Why the event at `acknowledged` (and so the rest) was not, when not all were.
    pub error: Option<String>,
}

impl Delivery {
    /// Every event of a batch of `len` acknowledged.
    pub fn all(len: usize) -> Self {
        Self { acknowledged: len, error: None }
    }

    /// The first `acknowledged` events stored; the next failed for `error`.
    pub fn partial(acknowledged: usize, error: impl Into<String>) -> Self {
        Self { acknowledged, error: Some(error.into()) }
    }
}

/// A broker a relay publishes to.
///
/// `publish` must report a gapless prefix: it may stop at the first event the broker did not
/// take, but it must never let a later event of the same stream be stored when an earlier one
/// was not (the relay delivers from the first unacknowledged event again, and the broker would
/// then hold that stream out of order). A sink whose broker recognises replays (by message id or
/// by position) counts an event the broker already holds as acknowledged.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Publishes `batch` in order and says how much of it the broker acknowledged.
    async fn publish(&self, batch: &[RecordedEvent]) -> Delivery;
}

/// A subscriber that relays its events to a [`Sink`].
pub struct Relay<S> {
    spec: SubscriberSpec,
    sink: S,
}

impl<S: Sink> Relay<S> {
    /// A relay with the subscription `spec` (id, group, filters, partitions) and its sink.
    pub fn new(spec: SubscriberSpec, sink: S) -> Self {
        Self { spec, sink }
    }

    /// The relay as the engine takes it.
    pub fn shared(spec: SubscriberSpec, sink: S) -> Arc<dyn Subscriber> {
        Arc::new(Self::new(spec, sink))
    }
}

#[async_trait]
impl<S: Sink> Subscriber for Relay<S> {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        let delivery = self.sink.publish(std::slice::from_ref(message.record())).await;
        match delivery.error {
            Some(error) if delivery.acknowledged == 0 => Err(error.into()),
            _ => Ok(()),
        }
    }

    async fn handle_batch(&self, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        let delivery = self.sink.publish(batch).await;
        if delivery.acknowledged >= batch.len() {
            return Ok(());
        }
        let error = delivery.error.unwrap_or_else(|| "the broker did not acknowledge the event".into());
        let event = &batch[delivery.acknowledged];
        tracing::warn!(
            relay = %self.spec.id, position = %event.position, stream = %event.stream, %error,
            "broker did not acknowledge an event; it and the rest of the batch will be sent again"
        );
        Err(BatchFailure { index: delivery.acknowledged, error: error.into() })
    }
}
