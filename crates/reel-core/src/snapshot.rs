use async_trait::async_trait;

use crate::{ReelError, StreamName, StreamVersion, Timestamp};

/// An aggregate's state as of a stream version, in the aggregate's own snapshot schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream: StreamName,
    /// The last event the state includes.
    pub version: StreamVersion,
    /// The aggregate's snapshot schema version; a different one is ignored on load.
    pub schema_version: u32,
    /// The serialized state.
    pub data: Vec<u8>,
    /// When it was taken.
    pub taken_at: Timestamp,
}

/// Keeps the latest snapshot per stream. Backends implement it beside their `EventStore`.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Stores `snapshot`, replacing an older one of the same stream.
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), ReelError>;
    /// The latest snapshot of `stream`, if any.
    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, ReelError>;
}
