//! Reel's event model, the `EventStore` contract and its one error type.
//!
//! This crate does no I/O. Backends (`reel-sqlite`, `reel-postgres`, the HTTP client) implement
//! [`EventStore`]; everything else (engine, aggregates, CLI) talks only to the trait.
//!
//! ```
//! use reel_core::{ExpectedVersion, NewEvent, StreamName};
//!
//! let stream = StreamName::new("unit-PL-1001").unwrap();
//! assert_eq!(stream.category(), "unit");
//! assert_eq!(stream.id_part(), Some("PL-1001"));
//!
//! let event = NewEvent::json("DoorOpened", &serde_json::json!({ "door": 3 })).unwrap();
//! assert_eq!(event.event_type, "DoorOpened");
//! assert_eq!("exists".parse::<ExpectedVersion>().unwrap(), ExpectedVersion::StreamExists);
//! ```

mod all_reader;
pub mod api;
pub mod backend;
mod error;
mod event;
mod head;
mod limits;
mod position;
mod presence;
mod projection;
mod query;
mod scan;
mod snapshot;
mod store;
mod stream_name;
mod subscription;
mod timestamp;
mod upcast;
pub mod wire;

pub use all_reader::AllReader;
/// The payload type of a [`RecordedEvent`] (the `bytes` crate's shared, cheaply cloned buffer).
pub use bytes::Bytes;
pub use error::{ReelError, Result};
pub use event::{EventId, NewEvent, RecordedEvent};
pub use head::HeadWatch;
pub use limits::AppendLimits;
pub use position::{ExpectedVersion, Position, StreamVersion};
pub use presence::{
    check_device_name, check_display_name, presence_stream, DevicePresence, Heartbeat, PresenceState, PresenceStore,
    UnitLink, UnitRegistration,
};
pub use projection::{BatchFailure, Checkpoint, HandlerError, ProjectionStore, Unavailable, UNAVAILABLE_PREFIX};
pub use query::{check_tag, AppendCondition, Query, QueryItem, QueryPage, MAX_QUERY_ITEMS, MAX_TAG_BYTES};
pub use scan::{scan_all, EventView, ScanEnd, ScanVisitor};
pub use snapshot::{Snapshot, SnapshotStore};
pub use store::{
    AllPage, AppendRequest, AppendResult, Direction, EventStore, ReadAllFilter, StoreStats, StreamInfo, MAX_READ_LIMIT,
};
pub use stream_name::StreamName;
pub use subscription::{
    Lease, ParkedEvent, RunMode, Subscription, SubscriptionCriteria, SubscriptionError, SubscriptionId,
    SubscriptionStatus, SubscriptionStore, SubscriptionWarning,
};
pub use timestamp::Timestamp;
pub use upcast::{UpcastFn, Upcasters};
