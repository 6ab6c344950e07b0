use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Position, ReelError, Timestamp};

/// A subscriber's id, and so its subscription's id: 1–255 bytes of `A-Z a-z 0-9 _ - . :`.
/// Versioned by suffix (`profile_1` → `profile_2` rebuilds under a new subscription).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubscriptionId(String);

impl SubscriptionId {
    /// Validates and wraps an id.
    pub fn new(id: impl Into<String>) -> Result<Self, ReelError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= 255
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if valid {
            Ok(Self(id))
        } else {
            Err(ReelError::InvalidArgument(format!(
                "subscription id {:?} must be 1-255 characters of A-Z, a-z, 0-9, _, -, . or :",
                id.escape_debug().to_string()
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SubscriptionId {
    type Error = ReelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SubscriptionId> for String {
    fn from(value: SubscriptionId) -> Self {
        value.0
    }
}

/// Where a new subscription starts and whether it ever ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// Process the whole log, then follow it (projectors).
    FromBeginning,
    /// Start at the head when set up, then follow (processors: no side effects for history).
    FromNow,
    /// Process the log up to the head once, then finish (reports, migrations).
    Once,
}

impl RunMode {
    /// Stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::FromBeginning => "from_beginning",
            RunMode::FromNow => "from_now",
            RunMode::Once => "once",
        }
    }
}

impl FromStr for RunMode {
    type Err = ReelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.replace('-', "_").as_str() {
            "from_beginning" => Ok(RunMode::FromBeginning),
            "from_now" => Ok(RunMode::FromNow),
            "once" => Ok(RunMode::Once),
            _ => {
                Err(ReelError::InvalidArgument(format!("run mode must be from-beginning, from-now or once, got {s:?}")))
            }
        }
    }
}

/// The lifecycle of a subscription (see the state diagram in the subscriptions document).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Tracked, not set up yet.
    New,
    /// Set up; catching up with the log.
    Booting,
    /// Following the log.
    Active,
    /// Stopped by an operator.
    Paused,
    /// A `Once` subscription that reached the end of the log.
    Finished,
    /// Its subscriber no longer exists in the code.
    Detached,
    /// A step failed; see the last error.
    Error,
}

impl SubscriptionStatus {
    /// Every status.
    pub const ALL: [SubscriptionStatus; 7] = [
        SubscriptionStatus::New,
        SubscriptionStatus::Booting,
        SubscriptionStatus::Active,
        SubscriptionStatus::Paused,
        SubscriptionStatus::Finished,
        SubscriptionStatus::Detached,
        SubscriptionStatus::Error,
    ];

    /// Whether the state diagram has an arrow from `self` to `to`.
    pub fn can_become(self, to: SubscriptionStatus) -> bool {
        use SubscriptionStatus::*;
        matches!(
            (self, to),
            (New, Booting | Active | Error)
                | (Booting, Active | Paused | Finished | Error)
                | (Active, Paused | Finished | Detached | Error)
                | (Paused, Booting | Active | Detached)
                | (Finished, Active | Detached)
                | (Error, New | Booting | Active | Paused)
                | (Detached, Active)
        )
    }

    /// Stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::New => "new",
            SubscriptionStatus::Booting => "booting",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Paused => "paused",
            SubscriptionStatus::Finished => "finished",
            SubscriptionStatus::Detached => "detached",
            SubscriptionStatus::Error => "error",
        }
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubscriptionStatus {
    type Err = ReelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ReelError::InvalidArgument(format!("unknown subscription status {s:?}")))
    }
}

/// What failed last, and the status to return to when reactivated or retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionError {
    /// The error message.
    pub message: String,
    /// Status before the error.
    pub previous_status: SubscriptionStatus,
    /// Position of the event whose handling failed, when an event failed (not setup).
    pub failed_at: Option<Position>,
}

impl SubscriptionError {
    /// True when the handler said what it hands events to was unreachable
    /// ([`crate::Unavailable`]): retried for as long as it lasts, never parked.
    pub fn is_unavailable(&self) -> bool {
        self.message.starts_with(crate::projection::UNAVAILABLE_PREFIX)
    }
}

/// An event a subscription skipped after its handler kept failing, kept for inspection and replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// The subscription that parked it.
    pub subscription: SubscriptionId,
    /// The event's position.
    pub position: Position,
    /// The event's id.
    pub event_id: crate::EventId,
    /// The event's type.
    pub event_type: String,
    /// The last error handling it.
    pub error: String,
    /// When it was parked (or last replayed without success).
    pub parked_at: Timestamp,
}

/// Which worker holds a subscription, since when it last renewed, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The worker's id.
    pub owner: String,
    /// When the holder last took or renewed it.
    pub renewed_at: Timestamp,
    /// When the lease lapses unless renewed.
    pub expires_at: Timestamp,
}

impl Lease {
    /// Whether the lease still holds at `now` (an expired one may be taken by anyone).
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }
}

/// Something a subscriber wants operators to know while it keeps running (it is not failing):
/// for example, a relay replaying events older than its broker's duplicate window. The latest
/// one is kept with its time until another replaces it or the subscription is reset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionWarning {
    /// What happened, in words.
    pub message: String,
    /// When it was reported.
    pub at: Timestamp,
}

/// The persisted state of one subscriber's progress through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Same as its subscriber's id.
    pub id: SubscriptionId,
    /// Operators split work by group.
    pub group: String,
    /// Where it started and whether it ends.
    pub run_mode: RunMode,
    /// Where it is in its lifecycle.
    pub status: SubscriptionStatus,
    /// Last position fully handled (0: nothing yet). Never ahead of the work.
    pub position: Position,
    /// Failed attempts since the last success.
    pub retry_attempt: u32,
    /// Set while in `Error`.
    pub error: Option<SubscriptionError>,
    /// Status to return to when a paused subscription is reactivated.
    pub paused_from: Option<SubscriptionStatus>,
    /// When this state was last saved.
    pub last_saved_at: Timestamp,
    /// The worker holding it, if any (managed by the lease methods, not by `update`).
    pub lease: Option<Lease>,
    /// Bumped by every save; a save based on an older revision is refused (`SubscriptionChanged`),
    /// so an operator's pause is never overwritten by a worker that loaded the row earlier.
    pub revision: u64,
    /// The latest warning its subscriber reported, if any (see [`SubscriptionWarning`]).
    #[serde(default)]
    pub warning: Option<SubscriptionWarning>,
}

impl Subscription {
    /// A newly tracked subscription.
    pub fn new(id: SubscriptionId, group: impl Into<String>, run_mode: RunMode, now: Timestamp) -> Self {
        Self {
            id,
            group: group.into(),
            run_mode,
            status: SubscriptionStatus::New,
            position: Position::ZERO,
            retry_attempt: 0,
            error: None,
            paused_from: None,
            last_saved_at: now,
            lease: None,
            revision: 0,
            warning: None,
        }
    }

    /// Moves to `to`, refusing arrows the state diagram does not have.
    pub fn transition(&mut self, to: SubscriptionStatus) -> Result<(), ReelError> {
        if !self.status.can_become(to) {
            return Err(ReelError::IllegalTransition { id: self.id.to_string(), from: self.status, to });
        }
        if to == SubscriptionStatus::Paused {
            self.paused_from = Some(self.error.as_ref().map_or(self.status, |e| e.previous_status));
        }
        if to != SubscriptionStatus::Error {
            self.error = None;
        }
        self.status = to;
        Ok(())
    }

    /// Starts over as a freshly tracked subscription (same id, group and run mode; status `New`,
    /// position 0), for one that never completed its setup. Its revision stays, so the save is
    /// still a compare-and-swap.
    pub fn start_over(&mut self) {
        let revision = self.revision;
        let lease = self.lease.take();
        *self = Subscription::new(self.id.clone(), self.group.clone(), self.run_mode, self.last_saved_at);
        self.revision = revision;
        self.lease = lease;
    }

    /// Moves to `Error`, remembering the message and the status to return to.
    pub fn fail(&mut self, message: impl Into<String>) -> Result<(), ReelError> {
        self.fail_at(message, None)
    }

    /// Like [`fail`](Self::fail), noting the position of the event that failed.
    pub fn fail_at(&mut self, message: impl Into<String>, failed_at: Option<Position>) -> Result<(), ReelError> {
        let previous_status = match (&self.error, self.status) {
            (Some(error), SubscriptionStatus::Error) => error.previous_status,
            (_, status) => status,
        };
        if self.status != SubscriptionStatus::Error {
            self.transition(SubscriptionStatus::Error)?;
        }
        self.error = Some(SubscriptionError { message: message.into(), previous_status, failed_at });
        Ok(())
    }
}

/// Which subscriptions an operation applies to: OR within a list, AND across lists; empty lists match all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionCriteria {
    /// Subscription ids, any of.
    pub ids: Vec<SubscriptionId>,
    /// Groups, any of.
    pub groups: Vec<String>,
}

impl SubscriptionCriteria {
    /// Matches everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Matches these ids.
    pub fn ids(ids: impl IntoIterator<Item = SubscriptionId>) -> Self {
        Self { ids: ids.into_iter().collect(), groups: Vec::new() }
    }

    /// Whether a subscription with `id` in `group` matches.
    pub fn matches(&self, id: &SubscriptionId, group: &str) -> bool {
        (self.ids.is_empty() || self.ids.contains(id))
            && (self.groups.is_empty() || self.groups.iter().any(|g| g == group))
    }
}

/// Persists subscriptions. Backends implement it beside their `EventStore`.
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// Stores a new subscription; an existing id is an error.
    async fn add(&self, subscription: &Subscription) -> Result<(), ReelError>;
    /// Replaces a stored subscription whose stored revision is still `subscription.revision`,
    /// and bumps `subscription.revision`. An unknown id is `SubscriptionNotFound`; a newer stored
    /// revision is `SubscriptionChanged` and nothing is written.
    async fn update(&self, subscription: &mut Subscription) -> Result<(), ReelError>;
    /// Deletes a subscription (no error when it is already gone).
    async fn remove(&self, id: &SubscriptionId) -> Result<(), ReelError>;
    /// One subscription.
    async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>, ReelError>;
    /// Matching subscriptions, ordered by id.
    async fn find(&self, criteria: &SubscriptionCriteria) -> Result<Vec<Subscription>, ReelError>;
    /// Takes or renews the lease on `id` for `owner` until `now + ttl`, when it is free, expired
    /// or already `owner`'s. Returns whether `owner` holds it now. An unknown id holds no lease.
    async fn acquire_lease(
        &self,
        id: &SubscriptionId,
        owner: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<bool, ReelError>;
    /// Gives the lease up if `owner` holds it.
    async fn release_lease(&self, id: &SubscriptionId, owner: &str) -> Result<(), ReelError>;
    /// Records a parked event (replacing an earlier record of the same position).
    async fn park(&self, parked: &ParkedEvent) -> Result<(), ReelError>;
    /// The subscription's parked events, by position.
    async fn parked(&self, id: &SubscriptionId) -> Result<Vec<ParkedEvent>, ReelError>;
    /// Forgets a parked event (it was replayed successfully).
    async fn unpark(&self, id: &SubscriptionId, position: Position) -> Result<(), ReelError>;
    /// `update`, only while `owner` holds an unexpired lease at `now`; otherwise `LeaseLost` and nothing changes.
    async fn update_leased(
        &self,
        subscription: &mut Subscription,
        owner: &str,
        now: Timestamp,
    ) -> Result<(), ReelError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubscriptionStatus::*;

    /// The arrows of the state diagram, written out once more as data.
    const DIAGRAM: &[(SubscriptionStatus, SubscriptionStatus)] = &[
        (New, Booting),
        (New, Active),
        (New, Error),
        (Booting, Active),
        (Booting, Paused),
        (Booting, Finished),
        (Booting, Error),
        (Active, Paused),
        (Active, Finished),
        (Active, Detached),
        (Active, Error),
        (Paused, Booting),
        (Paused, Active),
        (Paused, Detached),
        (Finished, Active),
        (Finished, Detached),
        (Error, New),
        (Error, Booting),
        (Error, Active),
        (Error, Paused),
        (Detached, Active),
    ];

    fn subscription(status: SubscriptionStatus) -> Subscription {
        let mut s =
            Subscription::new(SubscriptionId::new("s_1").unwrap(), "g", RunMode::FromBeginning, Timestamp::now());
        s.status = status;
        s
    }

    #[test]
    fn every_arrow_of_the_diagram_is_allowed_and_nothing_else() {
        for from in SubscriptionStatus::ALL {
            for to in SubscriptionStatus::ALL {
                let allowed = DIAGRAM.contains(&(from, to));
                let mut s = subscription(from);
                let result = s.transition(to);
                assert_eq!(result.is_ok(), allowed, "{from} -> {to}");
                if allowed {
                    assert_eq!(s.status, to);
                } else {
                    assert_eq!(s.status, from, "a refused transition changes nothing");
                    assert!(matches!(result, Err(ReelError::IllegalTransition { .. })));
                }
            }
        }
    }

    #[test]
    fn fail_remembers_where_it_came_from_and_pause_where_to_return() {
        let mut s = subscription(Booting);
        s.fail("boom").unwrap();
        assert_eq!(s.status, Error);
        assert_eq!(s.error.as_ref().unwrap().previous_status, Booting);
        s.fail("boom again").unwrap();
        assert_eq!(s.error.as_ref().unwrap().previous_status, Booting, "a second failure keeps the origin");
        s.transition(Paused).unwrap();
        assert_eq!(s.paused_from, Some(Booting));
        assert!(s.error.is_none());
        let mut finished = subscription(Finished);
        assert!(finished.fail("x").is_err(), "Finished -> Error is not in the diagram");
    }

    #[test]
    fn ids_and_criteria() {
        assert!(SubscriptionId::new("profile_2").is_ok());
        for bad in ["", "has space", "ünï", &"x".repeat(256)] {
            assert!(SubscriptionId::new(bad).is_err(), "{bad}");
        }
        let a = SubscriptionId::new("a").unwrap();
        let b = SubscriptionId::new("b").unwrap();
        let criteria = SubscriptionCriteria { ids: vec![a.clone(), b.clone()], groups: vec!["x".into()] };
        assert!(criteria.matches(&a, "x"));
        assert!(!criteria.matches(&a, "y"), "AND across lists");
        assert!(criteria.matches(&b, "x"), "OR within a list");
        assert!(SubscriptionCriteria::all().matches(&a, "anything"));
    }
}
