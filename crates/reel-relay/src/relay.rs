//! The relay subscriber: a batch goes to the sink, and the position follows what it acknowledged.

use std::sync::Arc;

use async_trait::async_trait;
use reel_core::RecordedEvent;
use reel_subscriptions::{BatchFailure, HandlerError, Message, Subscriber, SubscriberSpec, Unavailable};

/// How a sink's publish of one batch ended.
#[derive(Debug, Default)]
pub struct Delivery {
    /// How many of the batch's first events the broker acknowledged, with no gap: every event
    /// before this index is stored by the broker (or was already).
    pub acknowledged: usize,
    /// Why the event at `acknowledged` (and so the rest) was not, when not all were.
    pub error: Option<DeliveryError>,
}

/// Why a broker did not take an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// The broker could not be reached or did not answer: retried for as long as it lasts,
    /// never parked (the relay resumes by itself when the broker is back).
    Unavailable(String),
    /// The broker answered and refused this event (too large, a stream it does not accept…):
    /// retried, then parked or left failed as the relay's policy says.
    Refused(String),
}

impl Delivery {
    /// Every event of a batch of `len` acknowledged.
    pub fn all(len: usize) -> Self {
        Self { acknowledged: len, error: None }
    }

    /// The first `acknowledged` events stored; the broker refused the next for `reason`.
    pub fn refused(acknowledged: usize, reason: impl Into<String>) -> Self {
        Self { acknowledged, error: Some(DeliveryError::Refused(reason.into())) }
    }

    /// The first `acknowledged` events stored; then the broker could not be reached.
    pub fn unavailable(acknowledged: usize, reason: impl Into<String>) -> Self {
        Self { acknowledged, error: Some(DeliveryError::Unavailable(reason.into())) }
    }
}

impl From<DeliveryError> for HandlerError {
    fn from(error: DeliveryError) -> Self {
        match error {
            DeliveryError::Unavailable(reason) => Unavailable(reason).into(),
            DeliveryError::Refused(reason) => reason.into(),
        }
    }
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Unavailable(reason) => write!(f, "broker unavailable: {reason}"),
            DeliveryError::Refused(reason) => write!(f, "broker refused: {reason}"),
        }
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

    /// A warning for operators since the last call, shown with the relay's subscription (list,
    /// dashboard, `/metrics`): for example, a replay the broker may no longer recognise.
    fn take_warning(&self) -> Option<String> {
        None
    }
}

/// A subscriber that relays its events to a [`Sink`].
pub struct Relay<S> {
    spec: SubscriberSpec,
    sink: S,
    stream_prefixes: Vec<String>,
}

impl<S: Sink> Relay<S> {
    /// A relay with the subscription `spec` (id, group, filters, partitions) and its sink.
    pub fn new(spec: SubscriberSpec, sink: S) -> Self {
        Self { spec, sink, stream_prefixes: Vec::new() }
    }

    /// Relays only events of streams whose name starts with one of `prefixes` (all when empty);
    /// the others are passed over, and the position moves over them like over relayed ones.
    pub fn with_stream_prefixes(mut self, prefixes: Vec<String>) -> Self {
        self.stream_prefixes = prefixes;
        self
    }

    /// The relay as the engine takes it.
    pub fn shared(spec: SubscriberSpec, sink: S) -> Arc<dyn Subscriber> {
        Arc::new(Self::new(spec, sink))
    }

    /// This relay as the engine takes it.
    pub fn into_shared(self) -> Arc<dyn Subscriber> {
        Arc::new(self)
    }

    fn wanted(&self, event: &RecordedEvent) -> bool {
        self.stream_prefixes.is_empty() || self.stream_prefixes.iter().any(|p| event.stream.as_str().starts_with(p))
    }

    /// Publishes the events of `batch` this relay wants; says how many of the whole batch's
    /// first events are done (published or passed over) with no gap.
    async fn publish(&self, batch: &[RecordedEvent]) -> Delivery {
        if self.stream_prefixes.is_empty() {
            return self.sink.publish(batch).await;
        }
        let wanted: Vec<usize> = (0..batch.len()).filter(|&i| self.wanted(&batch[i])).collect();
        let selected: Vec<RecordedEvent> = wanted.iter().map(|&i| batch[i].clone()).collect();
        let delivery = self.sink.publish(&selected).await;
        match wanted.get(delivery.acknowledged) {
            Some(&first_not_done) => Delivery { acknowledged: first_not_done, error: delivery.error },
            None => Delivery::all(batch.len()),
        }
    }
}

#[async_trait]
impl<S: Sink> Subscriber for Relay<S> {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    fn take_warning(&self) -> Option<String> {
        self.sink.take_warning()
    }

    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        let delivery = self.publish(std::slice::from_ref(message.record())).await;
        match delivery.error {
            Some(error) if delivery.acknowledged == 0 => Err(error.into()),
            _ => Ok(()),
        }
    }

    async fn handle_batch(&self, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        let delivery = self.publish(batch).await;
        if delivery.acknowledged >= batch.len() {
            return Ok(());
        }
        let error = delivery
            .error
            .unwrap_or_else(|| DeliveryError::Unavailable("the broker did not acknowledge the event".into()));
        let event = &batch[delivery.acknowledged];
        tracing::warn!(
            relay = %self.spec.id, position = %event.position, stream = %event.stream, %error,
            "broker did not acknowledge an event; it and the rest of the batch will be sent again"
        );
        Err(BatchFailure { index: delivery.acknowledged, error: error.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_core::{EventId, Position, RunMode, StreamName, StreamVersion, Timestamp};
    use std::sync::Mutex;

    /// Takes the first `take` events of every publish, refuses the next.
    struct Partial {
        take: usize,
        seen: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Sink for &'static Partial {
        async fn publish(&self, batch: &[RecordedEvent]) -> Delivery {
            self.seen.lock().unwrap().extend(batch.iter().map(|e| e.stream.as_str().to_string()));
            if batch.len() <= self.take {
                Delivery::all(batch.len())
            } else {
                Delivery::refused(self.take, "too large")
            }
        }
    }

    fn event(position: u64, stream: &str) -> RecordedEvent {
        RecordedEvent {
            position: Position(position),
            stream: StreamName::new(stream).unwrap(),
            stream_version: StreamVersion(0),
            id: EventId::new_v7(),
            event_type: "T".into(),
            data: reel_core::Bytes::from_static(b"{}"),
            metadata: Default::default(),
            tags: Vec::new(),
            recorded_at: Timestamp::now(),
        }
    }

    #[tokio::test]
    async fn stream_prefixes_pass_over_other_streams_and_keep_the_failure_where_it_was() {
        let sink: &'static Partial = Box::leak(Box::new(Partial { take: 1, seen: Mutex::new(Vec::new()) }));
        let spec = SubscriberSpec::new("r", RunMode::FromBeginning).unwrap();
        let relay = Relay::new(spec, sink).with_stream_prefixes(vec!["unit-".into()]);
        let batch =
            [event(1, "other-1"), event(2, "unit-a"), event(3, "other-2"), event(4, "unit-b"), event(5, "unit-c")];
        let failure = relay.handle_batch(&batch).await.unwrap_err();
        assert_eq!(failure.index, 3, "unit-a and both others are done; unit-b was refused");
        assert_eq!(*sink.seen.lock().unwrap(), ["unit-a", "unit-b", "unit-c"], "only wanted streams are published");
        assert!(relay.handle_batch(&batch[..3]).await.is_ok());
    }
}
