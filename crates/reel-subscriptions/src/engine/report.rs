//! What an engine operation did: events handled, subscriptions changed, failures and notes.

use reel_core::{ReelError, SubscriptionId};

/// A subscription whose step failed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineError {
    /// The subscription.
    pub id: SubscriptionId,
    /// What went wrong.
    pub message: String,
}

/// A subscription an operation left alone on purpose, and why (not an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineNote {
    /// The subscription.
    pub id: SubscriptionId,
    /// Why it was left alone, e.g. "held by worker w1 until …" or "finished: nothing to pause".
    pub reason: String,
}

/// What an engine operation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineReport {
    /// Events handed to handlers.
    pub handled: u64,
    /// Subscriptions the operation changed.
    pub changed: Vec<SubscriptionId>,
    /// Subscriptions that failed (their status is now `Error`, or the operation was refused for them).
    pub errors: Vec<EngineError>,
    /// Subscriptions left alone on purpose: held by another worker's lease, or in a status the
    /// operation does not apply to.
    pub skipped: Vec<EngineNote>,
    /// Ids in the criteria that matched no subscriber and no subscription.
    pub unmatched: Vec<SubscriptionId>,
    /// `run_until_idle` stopped at its round cap while events were still being handled.
    pub round_cap_reached: bool,
}

impl EngineReport {
    /// The report, or the first failure as `SubscriptionFailed` (for tests and development; in
    /// production the retry strategy deals with failures).
    ///
    /// ```
    /// use reel_subscriptions::{EngineError, EngineReport};
    /// let id = reel_core::SubscriptionId::new("doors_1").unwrap();
    /// let report = EngineReport { errors: vec![EngineError { id, message: "boom".into() }], ..Default::default() };
    /// assert!(report.into_result().is_err());
    /// ```
    pub fn into_result(self) -> Result<EngineReport, ReelError> {
        match self.errors.first() {
            Some(error) => {
                Err(ReelError::SubscriptionFailed { id: error.id.to_string(), message: error.message.clone() })
            }
            None => Ok(self),
        }
    }

    /// Notes that `id` changed (once).
    pub(crate) fn changed(&mut self, id: &SubscriptionId) {
        if !self.changed.contains(id) {
            self.changed.push(id.clone());
        }
    }

    /// Records a failure of `id`.
    pub(crate) fn error(&mut self, id: &SubscriptionId, message: impl Into<String>) {
        self.errors.push(EngineError { id: id.clone(), message: message.into() });
    }

    /// Records that `id` was left alone, and why.
    pub(crate) fn skip(&mut self, id: &SubscriptionId, reason: impl Into<String>) {
        self.skipped.push(EngineNote { id: id.clone(), reason: reason.into() });
    }

    /// Adds another round's report to this one.
    pub(crate) fn merge(&mut self, round: EngineReport) {
        self.handled += round.handled;
        for id in &round.changed {
            self.changed(id);
        }
        self.errors.extend(round.errors);
        for note in round.skipped {
            if !self.skipped.contains(&note) {
                self.skipped.push(note);
            }
        }
        if self.unmatched.is_empty() {
            self.unmatched = round.unmatched;
        }
        self.round_cap_reached |= round.round_cap_reached;
    }
}
