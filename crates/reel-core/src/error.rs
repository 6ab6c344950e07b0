use crate::{EventId, ExpectedVersion, Position, StreamName, StreamVersion};

/// Result with Reel's error.
pub type Result<T, E = ReelError> = std::result::Result<T, E>;

/// Every failure a store or the layers above it report. Each variant has a stable [`code`](ReelError::code).
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ReelError {
    /// The stream's version is not what the caller expected; nothing was stored.
    #[error("wrong expected version on {stream}: expected {expected}, stream is at {}", display_version(.actual))]
    WrongExpectedVersion {
        /// The stream appended to.
        stream: StreamName,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's current version (`None`: no stream).
        actual: Option<StreamVersion>,
    },
    /// An event id is already stored with different content, or out of place; nothing was stored.
    #[error("duplicate event id {id} in {stream}: {reason}")]
    DuplicateEventId {
        /// The stream appended to.
        stream: StreamName,
        /// The offending id.
        id: EventId,
        /// Why it is not an idempotent retry.
        reason: String,
    },
    /// An append's condition failed: an event matching its query is stored after its `after`
    /// position; nothing was stored.
    #[error("append condition failed on {stream}: an event matching the query is stored at position {position}")]
    ConditionFailed {
        /// The stream appended to.
        stream: StreamName,
        /// The first matching event's position (after the condition's `after`).
        position: Position,
    },
    /// A stream name failed validation.
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName {
        /// The (escaped, shortened) name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An event failed validation (empty type, duplicate id inside a batch, undecodable data …).
    #[error("invalid event{}: {reason}", .index.map(|i| format!(" #{i}")).unwrap_or_default())]
    InvalidEvent {
        /// Index of the event in its batch, when known.
        index: Option<usize>,
        /// What is wrong with it.
        reason: String,
    },
    /// An event or batch is over a configured limit.
    #[error("{what} is {size}, over the limit of {limit}")]
    TooLarge {
        /// What was measured, e.g. "event #3 (bytes)".
        what: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An argument is out of range or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The stream has no events.
    #[error("stream {stream} not found")]
    StreamNotFound {
        /// The stream asked for.
        stream: StreamName,
    },
    /// The store was written by a newer version of Reel.
    #[error("the store has schema version {found}, this build supports up to {supported}; upgrade reel")]
    SchemaTooNew {
        /// Version found in the store.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// A subscription status change the lifecycle does not allow.
    #[error("subscription {id} cannot go from {from} to {to}")]
    IllegalTransition {
        /// The subscription.
        id: String,
        /// Its status.
        from: crate::SubscriptionStatus,
        /// The refused status.
        to: crate::SubscriptionStatus,
    },
    /// No subscription has this id.
    #[error("subscription {id} not found")]
    SubscriptionNotFound {
        /// The id asked for.
        id: String,
    },
    /// The worker no longer holds the subscription's lease; it must stop processing it.
    #[error("lease on subscription {id} is held by another worker or expired")]
    LeaseLost {
        /// The subscription.
        id: String,
    },
    /// The subscription was saved by someone else since it was loaded; load it again.
    #[error("subscription {id} was changed by another process; reload it")]
    SubscriptionChanged {
        /// The subscription.
        id: String,
    },
    /// A subscription is in `Error` (reported by the strict engine decorator and by waits).
    #[error("subscription {id} failed: {message}")]
    SubscriptionFailed {
        /// The subscription.
        id: String,
        /// Its last error.
        message: String,
    },
    /// A wait ran out of time.
    #[error("timed out {what}")]
    TimedOut {
        /// What was being waited for.
        what: String,
    },
    /// The store is closed or shutting down.
    #[error("the store is closed")]
    Closed,
    /// An I/O or database failure, with what was being done.
    #[error("storage error while {context}: {message}")]
    Storage {
        /// What was being done.
        context: String,
        /// The underlying error.
        message: String,
    },
}

fn display_version(v: &Option<StreamVersion>) -> String {
    v.map_or_else(|| "no stream".to_string(), |v| v.to_string())
}

impl ReelError {
    /// A stable, machine-readable code: `wrong_expected_version`, `duplicate_event_id`, …
    pub fn code(&self) -> &'static str {
        match self {
            ReelError::WrongExpectedVersion { .. } => "wrong_expected_version",
            ReelError::DuplicateEventId { .. } => "duplicate_event_id",
            ReelError::ConditionFailed { .. } => "condition_failed",
            ReelError::InvalidStreamName { .. } => "invalid_stream_name",
            ReelError::InvalidEvent { .. } => "invalid_event",
            ReelError::TooLarge { .. } => "too_large",
            ReelError::InvalidArgument(_) => "invalid_argument",
            ReelError::StreamNotFound { .. } => "stream_not_found",
            ReelError::SchemaTooNew { .. } => "schema_too_new",
            ReelError::IllegalTransition { .. } => "illegal_transition",
            ReelError::SubscriptionNotFound { .. } => "subscription_not_found",
            ReelError::LeaseLost { .. } => "lease_lost",
            ReelError::SubscriptionChanged { .. } => "subscription_changed",
            ReelError::SubscriptionFailed { .. } => "subscription_failed",
            ReelError::TimedOut { .. } => "timed_out",
            ReelError::Closed => "closed",
            ReelError::Storage { .. } => "storage",
        }
    }

    /// Builds a storage error from any error and what was being done.
    pub fn storage(context: impl Into<String>, error: impl std::fmt::Display) -> Self {
        ReelError::Storage { context: context.into(), message: error.to_string() }
    }
}
