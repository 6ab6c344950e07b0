//! Reel on devices that work offline: the device's own store is the source of truth for the
//! streams it owns, and an uplink copies them to the central server, version for version.
//!
//! - [`CentralServer`]: the central server as the device reaches it, contacted on first use
//!   and shared by the uplink, the downlink and the heartbeats.
//! - [`Ownership`]: every stream has one writing side. A device owns `unit-NAME` and
//!   `unit-NAME-*`; the platform owns `unitconfig-NAME` (configuration and commands for it).
//! - [`Uplink`]: a subscription on the device's store that appends each owned stream's new
//!   events to the central server with the device's event ids and `Exact` expected versions.
//!   Since the device is the only writer of those streams, the central copy is the device's
//!   stream event for event, and a retry after any crash is recognised exactly (no dedupe
//!   window). Anything else found centrally stops the uplink there and says so.
//! - [`Downlink`]: follows the platform's stream for the device on the central server and
//!   copies it into the device's store, live while online and caught up after reconnecting.
//! - [`UnitLinks`]: the platform's side of units without the agent: pinged for presence, their
//!   configuration pushed to them, or their events fetched from them.
//! - [`Heartbeats`]: tell the platform the device is online (its presence), with the round-trip
//!   time, the device's clock (skew is reported, never used) and the configuration it holds.
//!
//! ```
//! use reel_edge::Ownership;
//!
//! let owner = Ownership::for_device("PL-1001")?;
//! assert!(owner.device_owns("unit-PL-1001"));
//! assert!(owner.device_owns("unit-PL-1001-doors"));
//! assert!(owner.platform_owns("unitconfig-PL-1001"));
//! assert!(!owner.device_owns("unit-PL-1002"));
//! # Ok::<(), reel_core::ReelError>(())
//! ```

mod central;
mod copy;
mod downlink;
mod heartbeat;
mod links;
mod ownership;
mod uplink;

pub use central::CentralServer;
pub use downlink::Downlink;
pub use heartbeat::Heartbeats;
pub use links::{LinkOptions, UnitLinks};
pub use ownership::Ownership;
pub use uplink::Uplink;
