//! Settling a compare-and-swap save of a subscription row.

use crate::{ReelError, Subscription};

/// What a backend's conditional `UPDATE` of a subscription row found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// The row was written.
    Written,
    /// No row has this id any more.
    Gone,
    /// The row was not written; this is the revision stored now.
    NotWritten {
        /// The stored revision.
        stored_revision: u64,
    },
}

/// Turns a save's outcome into the engine's answer: on `Written` the in-memory revision is bumped
/// to match the row; otherwise the error says why (`leased`: the save required a lease, so an
/// unchanged revision means the lease was lost).
pub fn settle_save(subscription: &mut Subscription, outcome: SaveOutcome, leased: bool) -> Result<(), ReelError> {
    let id = subscription.id.to_string();
    match outcome {
        SaveOutcome::Written => {
            subscription.revision += 1;
            Ok(())
        }
        SaveOutcome::Gone => Err(ReelError::SubscriptionNotFound { id }),
        SaveOutcome::NotWritten { stored_revision } if stored_revision != subscription.revision => {
            Err(ReelError::SubscriptionChanged { id })
        }
        SaveOutcome::NotWritten { .. } if leased => Err(ReelError::LeaseLost { id }),
        SaveOutcome::NotWritten { .. } => Err(ReelError::SubscriptionChanged { id }),
    }
}
