//! Reel's write side: aggregates decide commands, a repository loads them (snapshot, then later
//! events, upcast on the way) and saves their events with optimistic concurrency.
//!
//! Rules that span streams (a unique username, a locker free for a time window) are decided
//! with [`DecisionRepository`]: state folded from one query's events, appended on condition that
//! none of them changed since the read.
//!
//! Commands return nothing but success or a domain error; queries read projections built by
//! subscriptions (see `reel-subscriptions`). The locker reservation of the showcase is worked
//! through in `tests/locker.rs` and docs/AGGREGATES.md.

mod aggregate;
mod decision;
mod repository;

pub use aggregate::{Aggregate, DomainEvent};
pub use decision::{Decision, DecisionAppend, DecisionError, DecisionExecuted, DecisionRepository, LoadedDecision};
pub use repository::{AggregateError, Executed, Loaded, Repository};
