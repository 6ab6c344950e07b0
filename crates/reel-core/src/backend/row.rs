//! One plain struct for a stored subscription row, so every backend maps columns the same way.

use crate::{
    Lease, Position, ReelError, RunMode, Subscription, SubscriptionError, SubscriptionId, SubscriptionWarning,
    Timestamp,
};

/// A subscription as columns: text, integers (positions, Unix microseconds) and nulls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRow {
    /// `id`
    pub id: String,
    /// `group_name`
    pub group: String,
    /// `run_mode`
    pub run_mode: String,
    /// `status`
    pub status: String,
    /// `position`
    pub position: i64,
    /// `retry_attempt`
    pub retry_attempt: i64,
    /// `error_message`
    pub error_message: Option<String>,
    /// `error_previous_status`
    pub error_previous_status: Option<String>,
    /// `error_position`
    pub error_position: Option<i64>,
    /// `paused_from`
    pub paused_from: Option<String>,
    /// `last_saved_at`
    pub last_saved_at: i64,
    /// `lease_owner` (written only by the lease methods)
    pub lease_owner: Option<String>,
    /// `lease_renewed_at` (written only by the lease methods)
    pub lease_renewed_at: Option<i64>,
    /// `lease_expires_at` (written only by the lease methods)
    pub lease_expires_at: Option<i64>,
    /// `revision`
    pub revision: i64,
    /// `warning_message`
    pub warning_message: Option<String>,
    /// `warning_at`
    pub warning_at: Option<i64>,
}

impl SubscriptionRow {
    /// The columns of `s`.
    pub fn from_subscription(s: &Subscription) -> Self {
        Self {
            id: s.id.to_string(),
            group: s.group.clone(),
            run_mode: s.run_mode.as_str().to_string(),
            status: s.status.as_str().to_string(),
            position: s.position.0 as i64,
            retry_attempt: i64::from(s.retry_attempt),
            error_message: s.error.as_ref().map(|e| e.message.clone()),
            error_previous_status: s.error.as_ref().map(|e| e.previous_status.as_str().to_string()),
            error_position: s.error.as_ref().and_then(|e| e.failed_at).map(|p| p.0 as i64),
            paused_from: s.paused_from.map(|p| p.as_str().to_string()),
            last_saved_at: s.last_saved_at.unix_micros(),
            lease_owner: s.lease.as_ref().map(|l| l.owner.clone()),
            lease_renewed_at: s.lease.as_ref().map(|l| l.renewed_at.unix_micros()),
            lease_expires_at: s.lease.as_ref().map(|l| l.expires_at.unix_micros()),
            revision: s.revision as i64,
            warning_message: s.warning.as_ref().map(|w| w.message.clone()),
            warning_at: s.warning.as_ref().map(|w| w.at.unix_micros()),
        }
    }

    /// The subscription these columns hold; unknown status or run mode text is a storage error.
    pub fn into_subscription(self) -> Result<Subscription, ReelError> {
        let corrupt = |e: ReelError| ReelError::storage(format!("reading subscription {}", self.id), e);
        let error = match (self.error_message, self.error_previous_status) {
            (Some(message), Some(previous)) => Some(SubscriptionError {
                message,
                previous_status: previous.parse().map_err(corrupt)?,
                failed_at: self.error_position.map(|p| Position(p as u64)),
            }),
            _ => None,
        };
        let lease = match (self.lease_owner, self.lease_expires_at) {
            (Some(owner), Some(expires)) => Some(Lease {
                owner,
                renewed_at: Timestamp::from_unix_micros(self.lease_renewed_at.unwrap_or(expires)),
                expires_at: Timestamp::from_unix_micros(expires),
            }),
            _ => None,
        };
        Ok(Subscription {
            id: SubscriptionId::new(self.id.clone()).map_err(corrupt)?,
            group: self.group,
            run_mode: self.run_mode.parse::<RunMode>().map_err(corrupt)?,
            status: self.status.parse().map_err(corrupt)?,
            position: Position(self.position as u64),
            retry_attempt: self.retry_attempt as u32,
            error,
            paused_from: self.paused_from.map(|p| p.parse()).transpose().map_err(corrupt)?,
            last_saved_at: Timestamp::from_unix_micros(self.last_saved_at),
            lease,
            revision: self.revision as u64,
            warning: match (self.warning_message, self.warning_at) {
                (Some(message), Some(at)) => Some(SubscriptionWarning { message, at: Timestamp::from_unix_micros(at) }),
                _ => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SubscriptionStatus;

    #[test]
    fn a_subscription_survives_the_round_trip_through_columns() {
        let now = Timestamp::from_unix_micros(1_700_000_000_000_000);
        let mut s = Subscription::new(SubscriptionId::new("doors_1").unwrap(), "projector", RunMode::Once, now);
        s.transition(SubscriptionStatus::Booting).unwrap();
        s.position = Position(41);
        s.fail_at("boom", Some(Position(42))).unwrap();
        s.lease = Some(Lease { owner: "w1".into(), renewed_at: now, expires_at: Timestamp::from_unix_micros(1) });
        s.revision = 7;
        s.warning = Some(SubscriptionWarning { message: "replayed old events".into(), at: now });
        let back = SubscriptionRow::from_subscription(&s).into_subscription().unwrap();
        assert_eq!(back, s);
        let mut bad = SubscriptionRow::from_subscription(&s);
        bad.status = "sleeping".into();
        assert!(matches!(bad.into_subscription(), Err(ReelError::Storage { .. })));
    }
}
