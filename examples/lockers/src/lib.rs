//! The locker platform: a fleet of locker units, reservations through an app, configuration
//! pushed to units, and a dashboard of which units are online — built on Reel's public API.
//!
//! - [`domain`]: units, lockers, reservations, their events and streams, and the rules.
//! - [`commands`]: the app's write side (configure, reserve, confirm, cancel).
//! - [`projections`] and [`queries`]: the read side, one table set per projection version.
//! - [`processors`]: reservations handed to units, and the units' answers carried back.
//! - [`platform`]: everything central in one process; [`web`]: its HTTP API and web UI.
//! - [`unit`] and [`fleet`]: the simulated units and the simulator.
//!
//! ```
//! use lockers::domain::{LockerCalendar, Window};
//! let calendar = LockerCalendar::new("PL-1000", "A");
//! let window = Window { from_us: 0, to_us: 3_600_000_000 };
//! assert_eq!(calendar.conflict(&window, 0), None, "nothing claims an unread calendar");
//! ```

pub mod bench;
pub mod commands;
pub mod domain;
pub mod fleet;
pub mod platform;
pub mod processors;
pub mod projections;
pub mod queries;
pub mod sql;
pub mod unit;
pub mod web;
