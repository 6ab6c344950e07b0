//! Device presence: which devices of a fleet are online, kept by the platform from their
//! heartbeats. Heartbeats update a row per device and are not events; only a change of state
//! (`UnitCameOnline`, `UnitWentOffline`) becomes an event, in the device's `unitpresence-NAME`
//! stream, and the row's [`PresenceState`] is that stream folded.

use std::time::Duration;

use async_trait::async_trait;

use crate::{ReelError, StreamName, Timestamp};

/// Checks a device name: 1–100 characters of letters, digits, `-` and `_` (it becomes part of
/// stream names such as `unit-NAME` and `unitpresence-NAME`).
pub fn check_device_name(name: &str) -> Result<(), ReelError> {
    let valid = !name.is_empty()
        && name.len() <= 100
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(ReelError::InvalidArgument(format!(
            "device name {name:?} must be 1-100 characters of letters, digits, - and _"
        )));
    }
    Ok(())
}

/// Checks a device's name for people: 1–200 characters without control characters. `field`
/// names it in the error (`display_name`, `--display-name`).
pub fn check_display_name(name: &str, field: &str) -> Result<(), ReelError> {
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ReelError::InvalidArgument(format!("{field} must be 1-200 characters without control characters")));
    }
    Ok(())
}

/// `unitpresence-NAME`: where a device's presence changes are recorded (by the platform).
pub fn presence_stream(device: &str) -> Result<StreamName, ReelError> {
    check_device_name(device)?;
    StreamName::new(format!("unitpresence-{device}"))
}

/// One heartbeat as the platform received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The device's name.
    pub device: String,
    /// Its name for people, if it sent one (kept from earlier heartbeats otherwise).
    pub display_name: Option<String>,
    /// How often it says it sends heartbeats: it counts as offline only after a multiple of this.
    pub interval: Duration,
    /// Round-trip time of its previous exchange with the platform, in milliseconds.
    pub rtt_ms: Option<u32>,
    /// Its clock minus the platform's at receipt, in milliseconds: reported, never used to order.
    pub clock_skew_ms: i64,
    /// How many configuration events it holds (its copy of `unitconfig-NAME`).
    pub config_version: Option<u64>,
    /// When the platform received it (the platform's clock).
    pub received_at: Timestamp,
}

/// A device's presence state: its `unitpresence-NAME` stream folded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceState {
    /// Online in the latest session.
    pub online: bool,
    /// The latest session: 1 for the first time it came online, counting up.
    pub session: u64,
    /// Events in the presence stream (the expected version of the next one is `changes - 1`).
    pub changes: u64,
    /// When the current state began (platform clock).
    pub since: Option<Timestamp>,
}

/// How the platform reaches a unit that does not run the agent (`reel edge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitLink {
    /// The unit takes configuration at its endpoint: the platform pings it and delivers new
    /// configuration events there, one request each, with an idempotency key.
    Push,
    /// The unit serves Reel's HTTP API at its endpoint: the platform pings it and fetches the
    /// events of its streams from there, exactly once, as the uplink would have sent them.
    Fetch,
}

impl UnitLink {
    /// `push` or `fetch`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitLink::Push => "push",
            UnitLink::Fetch => "fetch",
        }
    }

    /// From `push` or `fetch`.
    pub fn parse(text: &str) -> Result<Self, ReelError> {
        match text {
            "push" => Ok(UnitLink::Push),
            "fetch" => Ok(UnitLink::Fetch),
            other => Err(ReelError::InvalidArgument(format!("a unit's link is push or fetch, not {other:?}"))),
        }
    }
}

/// A unit registered with the platform because it does not send heartbeats itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitRegistration {
    /// The unit's name.
    pub device: String,
    /// Its name for people.
    pub display_name: Option<String>,
    /// How often the platform pings it (and fetches from it): its heartbeat interval.
    pub interval: Duration,
    /// `http://…` where the platform reaches it.
    pub endpoint: String,
    /// What the platform does there.
    pub link: UnitLink,
}

/// What the platform knows of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePresence {
    /// The device's name.
    pub device: String,
    /// Its name for people.
    pub display_name: Option<String>,
    /// Its declared heartbeat interval, in milliseconds.
    pub interval_ms: u64,
    /// Round-trip time of its last exchange, in milliseconds.
    pub rtt_ms: Option<u32>,
    /// When it was last heard from (platform clock); 0 (1970) for a registered unit never heard.
    pub last_heard_at: Timestamp,
    /// Its clock minus the platform's, in milliseconds, at its last heartbeat.
    pub clock_skew_ms: i64,
    /// How many configuration events it said it holds.
    pub config_version: Option<u64>,
    /// When that number last went up: the configuration it acknowledged last.
    pub config_acked_at: Option<Timestamp>,
    /// Online or offline, and since when.
    pub state: PresenceState,
    /// Where the platform reaches a registered unit, and how; `None` for agents.
    pub endpoint: Option<(String, UnitLink)>,
    /// For a fetched unit: the position in its log up to which its events were fetched.
    pub fetch_position: u64,
    /// For a registered unit: why the platform's last delivery to it or fetch from it failed,
    /// until one succeeds.
    pub link_error: Option<String>,
}

impl DevicePresence {
    /// Whether it has been silent for longer than `factor` times its own interval at `now`.
    pub fn is_silent(&self, now: Timestamp, factor: f64) -> bool {
        let allowed = (self.interval_ms as f64 * factor * 1_000.0) as i64;
        now.unix_micros().saturating_sub(self.last_heard_at.unix_micros()) > allowed
    }
}

/// Keeps the presence row of every device, and the leases that split presence work between
/// worker processes. Backends implement it beside their `EventStore`.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Records a heartbeat: creates the device's row or updates it (state untouched).
    async fn record_heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), ReelError>;
    /// Registers a unit the platform reaches itself, or changes its registration (its
    /// presence and what was fetched from it stay).
    async fn register_unit(&self, unit: &UnitRegistration) -> Result<(), ReelError>;
    /// Removes a device's row (its events stay); returns whether there was one.
    async fn forget_device(&self, device: &str) -> Result<bool, ReelError>;
    /// Saves how far a fetched unit's log was copied, unless more was saved already.
    async fn save_fetch_position(&self, device: &str, position: u64) -> Result<(), ReelError>;
    /// Saves why the platform's last delivery to or fetch from a unit failed (`None`: it worked).
    async fn save_link_error(&self, device: &str, error: Option<&str>) -> Result<(), ReelError>;
    /// Every known device, by name.
    async fn devices(&self) -> Result<Vec<DevicePresence>, ReelError>;
    /// Saves a device's folded presence state, unless the stored one has seen more changes.
    async fn save_presence_state(&self, device: &str, state: &PresenceState) -> Result<(), ReelError>;
    /// Takes or renews the lease on `partition` (`presence:3a`) for `owner` until `now + ttl`
    /// when it is free, expired or already `owner`'s. Returns whether `owner` holds it now.
    async fn claim_partition(
        &self,
        partition: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, ReelError>;
    /// Gives `partition` up if `owner` holds it.
    async fn release_partition(&self, partition: &str, owner: &str) -> Result<(), ReelError>;
    /// How many leases whose names start with `prefix` are unexpired at `now`.
    async fn count_claims(&self, prefix: &str, now: Timestamp) -> Result<usize, ReelError>;
}
