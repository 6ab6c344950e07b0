//! What an aggregate and its events are.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Events of one aggregate, with stable stored type names.
///
/// Implement it for a serde enum tagged `#[serde(tag = "type", content = "data")]` whose variants
/// carry explicit `#[serde(rename = "LockerReserved")]` names: the tag is the stored event type and
/// the content its data, so renaming a Rust variant or type never changes what is stored.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync {
    /// Every stored type name the enum decodes. A stored event of another type is an
    /// `UnknownEventType` error (or skipped, when the aggregate tolerates unknown events).
    const EVENT_TYPES: &'static [&'static str];
}

/// A consistency boundary: state rebuilt by applying its events, deciding commands.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stream category: an aggregate with id `PL-1001` lives in stream `{CATEGORY}-PL-1001`.
    const CATEGORY: &'static str;
    /// Take a snapshot every this many events (`None`: never).
    const SNAPSHOT_EVERY: Option<u64> = None;
    /// Version of the state's serialized shape; snapshots of another version are ignored.
    const SNAPSHOT_SCHEMA: u32 = 1;
    /// Skip stored events whose type `Event` does not know, instead of failing the load.
    const TOLERATES_UNKNOWN_EVENTS: bool = false;

    /// Its events.
    type Event: DomainEvent;
    /// Its commands (verbs: `Reserve`, `Confirm`, `Cancel`).
    type Command: Clone + Send;
    /// Why a command is refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Moves the state forward by one event. Never fails: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Decides a command against the current state: the events to record, or a domain error.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}
