//! Reel's write side: aggregates decide commands, a repository loads them (snapshot, then later
//! events, upcast on the way) and saves their events with optimistic concurrency.
//!
//! Commands return nothing but success or a domain error; queries read projections built by
//! subscriptions (see `reel-subscriptions`). The locker reservation of the showcase is worked
//! through in `tests/locker.rs` and docs/AGGREGATES.md.

mod aggregate;
mod repository;

pub use aggregate::{Aggregate, DomainEvent};
pub use repository::{AggregateError, Executed, Loaded, Repository};
