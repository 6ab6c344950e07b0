//! The HTTP API's JSON bodies, defined once: `reel-server` writes them and `reel-client` reads
//! them. With the `openapi` feature they also describe themselves for the OpenAPI document.

use serde::{Deserialize, Serialize};

use crate::RecordedEvent;

/// Most events or streams one request returns: keeps every response small enough to buffer.
pub const MAX_PAGE: usize = 10_000;

/// The head position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeadBody {
    /// Position of the last event (0 when the log is empty).
    pub head: u64,
}

/// Where an append went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppendResponse {
    /// The stream.
    pub stream: String,
    /// Position of the first event.
    pub first_position: u64,
    /// Position of the last event.
    pub last_position: u64,
    /// Every event's position, in order.
    pub positions: Vec<u64>,
    /// The stream's version after the append: pass it as `expected_version` next time.
    pub next_version: u64,
}

/// Links to the next page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Links {
    /// The next page, absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A page of a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamPage {
    /// The stream.
    pub stream: String,
    /// Its events, in the direction asked for.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<RecordedEventDoc>))]
    pub events: Vec<RecordedEvent>,
    /// The next page.
    #[serde(default)]
    pub links: Links,
}

/// A page of the global log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AllPageBody {
    /// Matching events in position order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<RecordedEventDoc>))]
    pub events: Vec<RecordedEvent>,
    /// Where the next read starts (past events the filter skipped).
    pub next_from: u64,
    /// The head when the page was read.
    pub head: u64,
    /// The next page.
    #[serde(default)]
    pub links: Links,
}

/// Store statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsBody {
    /// Events stored.
    pub event_count: u64,
    /// Streams stored.
    pub stream_count: u64,
    /// Position of the last event.
    pub head: u64,
    /// Size on disk, when the backend knows it.
    pub storage_bytes: Option<u64>,
}

/// One stream in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamEntry {
    /// Its name.
    pub stream: String,
    /// Version of its last event.
    pub version: u64,
}

/// A page of streams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamList {
    /// Streams by name.
    pub streams: Vec<StreamEntry>,
    /// The next page.
    #[serde(default)]
    pub links: Links,
}

/// The body of every error response: a stable code and a message, plus details for some codes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `wrong_expected_version`.
    pub error: String,
    /// What went wrong.
    pub message: String,
    /// On a version conflict: the expected version (a number or `any`, `no_stream`, `exists`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<serde_json::Value>,
    /// On a version conflict: the stream's actual version (absent: no stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<u64>,
    /// On an invalid event: its index in the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// On an invalid event: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// On a size limit: what was too large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// On a size limit: its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// On a size limit: the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// On a failed condition: the position of the first event that matched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

/// `POST /query`: the events of a query after a position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Items, any of: an event matches an item when its type is one of the item's `types` (none
    /// listed: any type) and it carries all of the item's `tags`.
    pub items: Vec<crate::QueryItem>,
    /// Only events after this position (default 0: from the start).
    #[serde(default)]
    pub after: u64,
    /// Most events to return, 1 to 10,000 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A page of a query's events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueryPageBody {
    /// Matching events in position order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<RecordedEventDoc>))]
    pub events: Vec<RecordedEvent>,
    /// The head when the page was read: the `after` of a condition decided on this read.
    pub head: u64,
    /// Where the next page starts (its `after`): the last event returned, or the head when the
    /// page is the last.
    pub next_after: u64,
}

/// An event as the API returns it (documentation of `RecordedEvent`'s JSON form).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[schema(as = RecordedEvent)]
#[allow(dead_code)]
pub struct RecordedEventDoc {
    /// Global position (gap-free, starts at 1).
    position: u64,
    stream: String,
    /// Version in its stream (starts at 0).
    stream_version: u64,
    #[schema(format = "uuid")]
    id: String,
    #[schema(rename = "type")]
    event_type: String,
    /// The payload, when it is JSON.
    data: Option<serde_json::Value>,
    /// The payload, when it is not JSON.
    data_base64: Option<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
    /// Its tags (absent when it has none).
    tags: Option<Vec<String>>,
    /// RFC 3339.
    recorded_at: String,
}

/// A device's heartbeat (`POST /devices/{name}/heartbeat`). Heartbeats are not stored as
/// events: they keep the device's presence row current, and only a change between online and
/// offline becomes an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// How often the device sends heartbeats, in milliseconds (1,000 to 86,400,000). It counts
    /// as offline only after a multiple of this (1.5× by default) passes in silence.
    pub interval_ms: u64,
    /// The device's clock when it sent this, in Unix milliseconds: the skew is reported, never
    /// used to order anything.
    pub clock_ms: i64,
    /// Round-trip time of its previous exchange with the platform, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u32>,
    /// Its name for people (kept until another is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// How many events of its configuration stream (`unitconfig-NAME`) it holds: the
    /// configuration it has received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<u64>,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatAnswer {
    /// The platform's clock when it received the heartbeat, in Unix milliseconds.
    pub server_clock_ms: i64,
    /// The device's clock minus the platform's, in milliseconds (half the round trip allowed for).
    pub clock_skew_ms: i64,
}

/// One device as the platform sees it: the presence table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceEntry {
    /// Its name.
    pub device: String,
    /// Its name for people.
    pub display_name: Option<String>,
    /// Online in its latest session.
    pub online: bool,
    /// Its latest session: how many times it came online.
    pub session: u64,
    /// When it came online or went offline last.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub since: Option<crate::Timestamp>,
    /// Round-trip time of its last exchange with the platform, in milliseconds ("Offline" when
    /// it is not online).
    pub rtt_ms: Option<u32>,
    /// When it was last heard from: last online at (none for a registered unit never heard).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub last_heard_at: Option<crate::Timestamp>,
    /// Its declared heartbeat interval, in milliseconds.
    pub interval_ms: u64,
    /// Its clock minus the platform's at its last heartbeat, in milliseconds.
    pub clock_skew_ms: i64,
    /// Whether that skew is beyond the reporting threshold.
    pub clock_skew_reported: bool,
    /// Configuration events it has acknowledged holding.
    pub config_version: Option<u64>,
    /// When it last acknowledged new configuration: last config pushed.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub config_acked_at: Option<crate::Timestamp>,
    /// For a unit without the agent: where the platform reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// For a unit without the agent: `push` (configuration is delivered to it) or `fetch` (its
    /// events are fetched from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// For a unit without the agent: why the last delivery or fetch failed, until one works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_error: Option<String>,
}

/// Every device the platform has heard from, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    /// The devices.
    pub devices: Vec<DeviceEntry>,
    /// How many are online.
    pub online: usize,
}
