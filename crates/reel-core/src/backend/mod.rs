//! Helpers for backend authors (the SQLite and PostgreSQL stores, the HTTP client), so every
//! backend validates, decides idempotency, answers grouped appends and maps subscription rows
//! the same way. Applications do not need anything in here.

mod append;
mod group;
pub mod idempotency;
mod payloads;
mod row;
mod save;

pub use crate::head::HeadNotifier;
pub use append::{append_many_with, check_read_limit};
pub use group::{answer, fail_all, requests_of, JobTrace, Rejected, WriteJob};
pub use payloads::PagePayloads;
pub use row::SubscriptionRow;
pub use save::{settle_save, SaveOutcome};
