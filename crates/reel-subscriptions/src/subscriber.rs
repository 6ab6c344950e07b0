//! What a subscriber is: its spec (id, group, run mode, event types) and its handler.

use async_trait::async_trait;
use reel_core::{
    BatchFailure, Checkpoint, HandlerError, Position, RecordedEvent, ReelError, RunMode, StreamName, SubscriptionId,
    Timestamp,
};

use crate::guard::catch_panic;

/// A payload type and the stored event types it decodes from, so a subscriber can ask for its
/// own type: `SubscriberSpec::for_events::<DoorOpened>()` delivers only those events, and
/// `message.event::<DoorOpened>()` decodes them. Type names are explicit, so renaming the Rust
/// type never changes what is stored.
pub trait EventPayload: serde::de::DeserializeOwned {
    /// The stored event types this payload decodes from.
    const EVENT_TYPES: &'static [&'static str];
}

/// Who a subscriber is and what it wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberSpec {
    /// Unique id; also the id of its subscription. Bump its suffix (`profile_1` → `profile_2`) to rebuild.
    pub id: SubscriptionId,
    /// Operators run groups in different processes.
    pub group: String,
    /// Where its subscription starts and whether it ends.
    pub run_mode: RunMode,
    /// Event types it handles; `None` means all (`*`). Others are skipped, and its position
    /// moves past them. An empty list is refused at registration: say `*` to mean all.
    pub event_types: Option<Vec<String>>,
    /// Stream categories it handles; empty means all.
    pub categories: Vec<String>,
    /// Tags an event must all carry to be handled; empty means any. Others are skipped.
    pub tags: Vec<String>,
    /// When handling an event fails and retries are used up: `false` (default) stops in
    /// `Error`; `true` parks the event (listed, replayable) and goes on after it.
    pub park_failures: bool,
    /// `k` for `16^k` partitions (0: not partitioned). See [`SubscriberSpec::partitioned`].
    pub partition_digits: u8,
}

impl SubscriberSpec {
    /// A subscriber in group `default` with the given run mode, handling every event type.
    pub fn new(id: &str, run_mode: RunMode) -> Result<Self, ReelError> {
        Ok(Self {
            id: SubscriptionId::new(id)?,
            group: "default".into(),
            run_mode,
            event_types: None,
            categories: vec![],
            tags: vec![],
            park_failures: false,
            partition_digits: 0,
        })
    }

    /// A projector: group `projector`, from the beginning.
    pub fn projector(id: &str) -> Result<Self, ReelError> {
        Ok(Self { group: "projector".into(), ..Self::new(id, RunMode::FromBeginning)? })
    }

    /// A processor: group `processor`, from now (history causes no side effects).
    pub fn processor(id: &str) -> Result<Self, ReelError> {
        Ok(Self { group: "processor".into(), ..Self::new(id, RunMode::FromNow)? })
    }

    /// Sets the group.
    pub fn in_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Restricts the event types handled; `*` in the list means all. An empty list is a mistake
    /// (it would handle nothing, or everything): the engine refuses it at registration.
    /// Even with `*`, events of Reel's own `$…` streams are delivered only to a subscriber that
    /// names their category with [`in_categories`](Self::in_categories).
    pub fn handling<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let types: Vec<String> = types.into_iter().map(Into::into).collect();
        self.event_types = if types.iter().any(|t| t == "*") { None } else { Some(types) };
        self
    }

    /// Restricts the stream categories handled.
    pub fn in_categories<I, S>(mut self, categories: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.categories = categories.into_iter().map(Into::into).collect();
        self
    }

    /// Handles only events carrying all of `tags` (e.g. `locker:7`).
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Splits the subscriber into `16^digits` partitioned subscriptions (`digits` 1–3: 16, 256 or
    /// 4,096), ids `{id}:{partition in hex}`. Each stream belongs to one partition (by a stable
    /// hash of its name), so per-stream order is kept while partitions run in parallel, each with
    /// its own position and lease. `setup`/`teardown` run once per partition: keep them idempotent.
    /// To repartition, bump the id (`doors_1` → `doors_2`) with the new count: it rebuilds.
    pub fn partitioned(mut self, digits: u8) -> Result<Self, ReelError> {
        if !(1..=3).contains(&digits) {
            return Err(ReelError::InvalidArgument(format!(
                "partition digits must be 1, 2 or 3 (16, 256 or 4096 partitions), got {digits}"
            )));
        }
        self.partition_digits = digits;
        Ok(self)
    }

    /// Delivers only the event types `E` decodes from.
    pub fn for_events<E: EventPayload>(self) -> Self {
        self.handling(E::EVENT_TYPES.iter().copied())
    }

    /// Parks an event that still fails after the retries, instead of stopping at it.
    pub fn park_failures(mut self) -> Self {
        self.park_failures = true;
        self
    }

    /// Checks the spec at registration: an empty event type list is refused.
    pub fn check(&self) -> Result<(), ReelError> {
        if self.event_types.as_ref().is_some_and(Vec::is_empty) {
            return Err(ReelError::InvalidArgument(format!(
                "subscriber {} handles an empty list of event types; list at least one type, or \"*\" for all",
                self.id
            )));
        }
        for tag in &self.tags {
            reel_core::check_tag(tag)
                .map_err(|e| ReelError::InvalidArgument(format!("subscriber {} lists a bad tag: {e}", self.id)))?;
        }
        if self.categories.iter().any(String::is_empty) {
            return Err(ReelError::InvalidArgument(format!("subscriber {} lists an empty category", self.id)));
        }
        Ok(())
    }

    /// Whether events of `event_type` are delivered.
    pub fn handles(&self, event_type: &str) -> bool {
        self.event_types.as_ref().is_none_or(|types| types.iter().any(|t| t == event_type))
    }
}

/// One event as a handler sees it.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    record: &'a RecordedEvent,
}

impl<'a> Message<'a> {
    /// Wraps a recorded event.
    pub fn new(record: &'a RecordedEvent) -> Self {
        Self { record }
    }

    /// The event type.
    pub fn event_type(&self) -> &'a str {
        &self.record.event_type
    }

    /// The payload decoded from JSON into `T`; a payload that does not decode is an error of the
    /// subscription (never a panic, never skipped).
    pub fn event<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        Ok(self.record.data_as::<T>()?)
    }

    /// The stream the event belongs to.
    pub fn stream(&self) -> &'a StreamName {
        &self.record.stream
    }

    /// The id part of the stream name (`unit-PL-1001` → `PL-1001`): the aggregate id.
    pub fn stream_id(&self) -> Option<&'a str> {
        self.record.stream.id_part()
    }

    /// Global position.
    pub fn position(&self) -> Position {
        self.record.position
    }

    /// When it was recorded.
    pub fn recorded_at(&self) -> Timestamp {
        self.record.recorded_at
    }

    /// The whole stored record.
    pub fn record(&self) -> &'a RecordedEvent {
        self.record
    }
}

/// Reacts to events: a projector, a processor, a report, a migration.
///
/// ```
/// use reel_subscriptions::{HandlerError, Message, Subscriber, SubscriberSpec};
///
/// struct WelcomeEmail {
///     spec: SubscriberSpec,
/// }
///
/// #[async_trait::async_trait]
/// impl Subscriber for WelcomeEmail {
///     fn spec(&self) -> &SubscriberSpec {
///         &self.spec
///     }
///     async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
///         let profile: serde_json::Value = message.event()?;
///         println!("welcome {} ({})", profile["name"], message.stream_id().unwrap_or("?"));
///         Ok(())
///     }
/// }
///
/// let spec = SubscriberSpec::processor("welcome_email").unwrap().handling(["ProfileCreated"]);
/// let _subscriber = WelcomeEmail { spec };
/// ```
#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Id, group, run mode and handled types.
    fn spec(&self) -> &SubscriberSpec;

    /// Runs once when its subscription is set up (e.g. create the projection's table).
    async fn setup(&self) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Runs when its subscription is torn down or removed (e.g. drop the table).
    async fn teardown(&self) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Handles one event of a type it subscribed to.
    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError>;

    /// True for a subscriber that saves its checkpoint itself, in the same transaction as its
    /// writes (exactly-once effects); the engine then calls [`Subscriber::handle_batch_with_checkpoint`].
    /// [`TransactionalProjector`](crate::TransactionalProjector) implements both for a backend's
    /// projection trait; there is rarely a reason to implement them by hand.
    fn saves_own_checkpoint(&self) -> bool {
        false
    }

    /// Handles a batch and saves `checkpoint.subscription` in the same transaction. On failure
    /// nothing of the batch may persist.
    async fn handle_batch_with_checkpoint(
        &self,
        _batch: std::sync::Arc<[RecordedEvent]>,
        _checkpoint: &mut Checkpoint,
    ) -> Result<(), BatchFailure> {
        Err(BatchFailure { index: 0, error: "handle_batch_with_checkpoint is not implemented".into() })
    }

    /// A warning for operators, taken after each batch the engine hands over (and saved with
    /// the position): something worth knowing that is not a failure, such as a relay replaying
    /// events older than its broker's duplicate window. The default has none. Only subscribers
    /// whose position the engine saves report warnings this way.
    fn take_warning(&self) -> Option<String> {
        None
    }

    /// Handles a batch of events in order; the position is saved after it. The default hands
    /// each event to `handle`. A failure names the first event not handled: those before it
    /// count as done, it and those after it will be delivered again.
    async fn handle_batch(&self, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        for (index, event) in batch.iter().enumerate() {
            let outcome = catch_panic(self.handle(&Message::new(event))).await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(BatchFailure { index, error }),
                Err(panic) => return Err(BatchFailure { index, error: panic.into() }),
            }
        }
        Ok(())
    }
}
