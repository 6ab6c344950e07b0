//! The app's commands: configure a unit, reserve a locker, confirm, cancel. Each is decided
//! from the events it depends on and appended on condition that none of them changed since.

use std::sync::Arc;

use reel_aggregate::{DecisionAppend, DecisionError, DecisionRepository};
use reel_core::{EventStore, ExpectedVersion, NewEvent, ReelError, StreamVersion, Timestamp};
use serde::{Deserialize, Serialize};

use crate::domain::{
    config_stream, locker_tag, reservation_stream, reservation_tag, types, LockerCalendar, ReservationDecision,
    ReservationRequested, ReservationStatus, UnitConfig, Window,
};

/// How long an unconfirmed reservation holds its window.
pub const HOLD: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Retries of a decision whose events changed under it; 64 concurrent requests for one locker
/// each retry at most once per other winner.
const RETRIES: u32 = 200;

/// Why a command was refused. Each maps to an HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The request is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// Something named does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The rules refuse it in the current state (409).
    #[error("{0}")]
    Refused(String),
    /// The store failed (500/503).
    #[error(transparent)]
    Store(#[from] ReelError),
}

impl CommandError {
    /// A stable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_argument",
            Self::NotFound(_) => "not_found",
            Self::Refused(_) => "refused",
            Self::Store(e) => e.code(),
        }
    }
}

impl From<DecisionError<CommandError>> for CommandError {
    fn from(e: DecisionError<CommandError>) -> Self {
        match e {
            DecisionError::Domain(e) => e,
            DecisionError::Conflict { attempts } => {
                Self::Refused(format!("too many concurrent changes to this locker ({attempts} attempts); try again"))
            }
            DecisionError::Store(ReelError::InvalidArgument(why)) => Self::Invalid(why),
            DecisionError::Store(e) => Self::Store(e),
        }
    }
}

fn invalid(e: ReelError) -> CommandError {
    match e {
        ReelError::InvalidArgument(why) => CommandError::Invalid(why),
        e => CommandError::Store(e),
    }
}

/// `POST /api/commands/reserve`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveCommand {
    /// The unit.
    pub unit: String,
    /// The locker.
    pub locker: String,
    /// Start, Unix milliseconds; now when absent (a future time reserves ahead).
    #[serde(default)]
    pub from_ms: Option<i64>,
    /// Hours: one of the unit's rental periods; its first when absent.
    #[serde(default)]
    pub hours: Option<u32>,
    /// The card to charge; `tok_fail` is declined (the simulated payment provider).
    #[serde(default)]
    pub card: Option<String>,
    /// Client-chosen id, so a retried request is recognised; a new one when absent.
    #[serde(default)]
    pub reservation: Option<String>,
}

/// What a command on a reservation answers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ReservationAnswer {
    /// Its id.
    pub reservation: String,
    /// Where it stands.
    pub status: ReservationStatus,
    /// Retries because other requests for the same locker were decided at the same time.
    pub retries: u32,
}

/// The app's write side over an event store.
#[derive(Clone)]
pub struct Commands {
    store: Arc<dyn EventStore>,
    decisions: DecisionRepository,
}

impl Commands {
    /// Commands over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { decisions: DecisionRepository::new(store.clone()), store }
    }

    /// The unit's latest configuration, if it has one.
    pub async fn unit_config(&self, unit: &str) -> Result<Option<UnitConfig>, CommandError> {
        crate::domain::check_unit(unit).map_err(invalid)?;
        let stream = config_stream(unit).map_err(invalid)?;
        let mut version = match self.store.stream_version(&stream).await? {
            Some(version) => version.0,
            None => return Ok(None),
        };
        // Read backwards to the latest configuration among the commands.
        loop {
            let page =
                self.store.read_stream(&stream, StreamVersion(version), reel_core::Direction::Backward, 100).await?;
            for event in &page {
                if event.event_type == types::UNIT_CONFIGURED {
                    return Ok(Some(event.data_as::<UnitConfig>()?));
                }
            }
            match page.last() {
                Some(last) if last.stream_version.0 > 0 => version = last.stream_version.0 - 1,
                _ => return Ok(None),
            }
        }
    }

    /// Pushes a unit's whole configuration: appended to `unitconfig-NAME`, from where it reaches
    /// the unit live when online and when it comes back otherwise.
    pub async fn configure(&self, unit: &str, config: &UnitConfig) -> Result<u64, CommandError> {
        crate::domain::check_unit(unit).map_err(invalid)?;
        config.validate().map_err(invalid)?;
        let event = NewEvent::json(types::UNIT_CONFIGURED, config)?;
        let stream = config_stream(unit).map_err(invalid)?;
        let appended = self.store.append(&stream, ExpectedVersion::Any, vec![event]).await?;
        Ok(appended.next_version.0)
    }

    /// Reserves a locker for a window, pays, and answers where the reservation stands. The
    /// window is free only if no reservation holding it and no rental at the unit overlaps it;
    /// that is decided over every reservation stream and the unit's own stream at once.
    pub async fn reserve(&self, command: &ReserveCommand) -> Result<ReservationAnswer, CommandError> {
        crate::domain::check_unit(&command.unit).map_err(invalid)?;
        crate::domain::check_locker(&command.locker).map_err(invalid)?;
        let id = match &command.reservation {
            Some(id) => check_reservation(id)?,
            None => uuid::Uuid::now_v7().simple().to_string(),
        };
        let config = self
            .unit_config(&command.unit)
            .await?
            .ok_or_else(|| CommandError::NotFound(format!("unit {} is not configured", command.unit)))?;
        if !config.lockers.contains(&command.locker) {
            return Err(CommandError::NotFound(format!("unit {} has no locker {}", command.unit, command.locker)));
        }
        let hours = command.hours.unwrap_or(config.rental_hours[0]);
        if !config.rental_hours.contains(&hours) {
            return Err(CommandError::Invalid(format!(
                "unit {} rents for {:?} hours, not {hours}",
                command.unit, config.rental_hours
            )));
        }
        let now_us = Timestamp::now().unix_micros();
        let from_us = match command.from_ms {
            Some(ms) if ms.checked_mul(1_000).is_none() => {
                return Err(CommandError::Invalid("from_ms is out of range".into()))
            }
            Some(ms) if ms * 1_000 < now_us - 60_000_000 => {
                return Err(CommandError::Invalid("from_ms is in the past".into()))
            }
            Some(ms) => ms * 1_000,
            None => now_us,
        };
        let window = Window { from_us, to_us: from_us.saturating_add(i64::from(hours) * 3_600_000_000) };
        // A retried request (same id) answers where that reservation stands and stores nothing.
        if command.reservation.is_some() {
            let existing = self.decisions.load(ReservationDecision::new(&id)).await?.state.state;
            if let Some(existing) = existing {
                let r = &existing.request;
                if r.unit != command.unit
                    || r.locker != command.locker
                    || (command.from_ms.is_some() && r.window != window)
                {
                    return Err(CommandError::Refused(format!("reservation {id} exists for another locker or window")));
                }
                return Ok(ReservationAnswer { reservation: id, status: existing.status, retries: 0 });
            }
        }
        let amount = config.price(hours);
        let declined = command.card.as_deref() == Some("tok_fail");
        let request = ReservationRequested {
            reservation: id.clone(),
            unit: command.unit.clone(),
            locker: command.locker.clone(),
            location: config.location.clone(),
            window,
            amount_cents: amount,
            hold_until_us: now_us + HOLD.as_micros() as i64,
        };
        let tags = [locker_tag(&command.unit, &command.locker), reservation_tag(&id)];
        // Deterministic ids: a retried request with the same reservation id is the same append.
        let id_for =
            |n: u8| reel_core::EventId(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{id}/{n}").as_bytes()));
        let mut events = vec![
            NewEvent::json(types::RESERVATION_REQUESTED, &request)?.with_id(id_for(0)).with_tags(tags.clone()),
            NewEvent::json(types::RESERVATION_PAYMENT_STARTED, &serde_json::json!({ "amount_cents": amount }))?
                .with_id(id_for(1))
                .with_tags(tags.clone()),
        ];
        // The simulated payment provider answers at once.
        events.push(
            if declined {
                NewEvent::json(types::RESERVATION_PAYMENT_FAILED, &serde_json::json!({ "reason": "card declined" }))?
            } else {
                NewEvent::json(types::RESERVATION_PAYMENT_SUCCEEDED, &serde_json::json!({ "amount_cents": amount }))?
            }
            .with_id(id_for(2))
            .with_tags(tags),
        );
        let stream = reservation_stream(&id).map_err(invalid)?;
        let executed = self
            .decisions
            .execute(
                || LockerCalendar::new(&command.unit, &command.locker),
                |calendar: &LockerCalendar| {
                    if let Some(conflict) = calendar.conflict(&window, now_us) {
                        // A retry of this very request finds itself: the append below returns the
                        // original result instead.
                        if conflict != format!("reservation {id}") {
                            return Err(CommandError::Refused(format!(
                                "locker {} of unit {} is taken for an overlapping window ({conflict})",
                                command.locker, command.unit
                            )));
                        }
                    }
                    Ok(Some(DecisionAppend {
                        stream: stream.clone(),
                        expected: ExpectedVersion::Any,
                        events: events.clone(),
                    }))
                },
                RETRIES,
            )
            .await;
        let retries = match executed {
            Ok(executed) => executed.retries,
            Err(DecisionError::Store(ReelError::DuplicateEventId { .. })) => {
                return Err(CommandError::Refused(format!("reservation {id} exists with other content")))
            }
            Err(e) => return Err(e.into()),
        };
        let status = if declined { ReservationStatus::PaymentFailed } else { ReservationStatus::Paid };
        Ok(ReservationAnswer { reservation: id, status, retries })
    }

    /// Confirms a paid reservation: from then on it holds its window until it ends, and it is
    /// handed to the unit.
    pub async fn confirm(&self, reservation: &str) -> Result<ReservationAnswer, CommandError> {
        self.on_reservation(reservation, |state, now_us| match state.status {
            ReservationStatus::Paid if now_us < state.request.hold_until_us => {
                Ok(Some((types::RESERVATION_CONFIRMED, serde_json::json!({}))))
            }
            ReservationStatus::Paid => {
                Err(CommandError::Refused("the reservation's hold expired; reserve again".into()))
            }
            ReservationStatus::Confirmed | ReservationStatus::Accepted => Ok(None),
            ReservationStatus::Requested => Err(CommandError::Refused("the reservation is not paid".into())),
            other => Err(CommandError::Refused(format!("the reservation is {}", status_name(other)))),
        })
        .await
    }

    /// Cancels a reservation that has not started; what was paid is refunded.
    pub async fn cancel(&self, reservation: &str) -> Result<ReservationAnswer, CommandError> {
        self.on_reservation(reservation, |state, now_us| match state.status {
            ReservationStatus::Cancelled => Ok(None),
            status if !status.holds_window() => {
                Err(CommandError::Refused(format!("the reservation is {}", status_name(status))))
            }
            _ if now_us >= state.request.window.from_us => {
                Err(CommandError::Refused("the reservation has started; it can no longer be cancelled".into()))
            }
            _ => Ok(Some((
                types::RESERVATION_CANCELLED,
                serde_json::json!({ "reason": "cancelled by the customer", "amount_cents": state.paid_cents }),
            ))),
        })
        .await
    }

    /// Where a reservation stands, read from its stream.
    pub async fn reservation(&self, reservation: &str) -> Result<crate::domain::Reservation, CommandError> {
        let loaded = self.decisions.load(ReservationDecision::new(&check_reservation(reservation)?)).await?;
        loaded.state.state.ok_or_else(|| CommandError::NotFound(format!("no reservation {reservation}")))
    }

    /// Decides a command on one reservation from its events and appends the outcome (and a
    /// refund for a cancellation of a paid one) at the version it was decided on.
    async fn on_reservation(
        &self,
        reservation: &str,
        decide: impl Fn(&crate::domain::Reservation, i64) -> Result<Option<(&'static str, serde_json::Value)>, CommandError>,
    ) -> Result<ReservationAnswer, CommandError> {
        let id = check_reservation(reservation)?;
        let stream = reservation_stream(&id).map_err(invalid)?;
        let now_us = Timestamp::now().unix_micros();
        let executed = self
            .decisions
            .execute(
                || ReservationDecision::new(&id),
                |decision: &ReservationDecision| {
                    let state =
                        decision.state.as_ref().ok_or_else(|| CommandError::NotFound(format!("no reservation {id}")))?;
                    let Some((event_type, data)) = decide(state, now_us)? else { return Ok(None) };
                    let tags = [locker_tag(&state.request.unit, &state.request.locker), reservation_tag(&id)];
                    let mut events = vec![NewEvent::json(event_type, &data)?.with_tags(tags.clone())];
                    if event_type == types::RESERVATION_CANCELLED && state.paid_cents > state.refunded_cents {
                        let refund = serde_json::json!({ "amount_cents": state.paid_cents - state.refunded_cents, "reason": "cancelled" });
                        events.push(NewEvent::json(types::REFUND_ISSUED, &refund)?.with_tags(tags));
                    }
                    let expected = ExpectedVersion::Exact(StreamVersion(decision.seen - 1));
                    Ok(Some(DecisionAppend { stream: stream.clone(), expected, events }))
                },
                RETRIES,
            )
            .await?;
        let state = self.reservation(&id).await?;
        Ok(ReservationAnswer { reservation: id, status: state.status, retries: executed.retries })
    }
}

/// Checks a reservation id: 1–64 letters, digits or `-` (it becomes part of a stream name).
pub fn check_reservation(id: &str) -> Result<String, CommandError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(CommandError::Invalid("reservation id must be 1-64 letters, digits or -".into()));
    }
    Ok(id.to_string())
}

/// A status as the API spells it.
pub fn status_name(status: ReservationStatus) -> &'static str {
    match status {
        ReservationStatus::Requested => "requested",
        ReservationStatus::Paid => "paid",
        ReservationStatus::PaymentFailed => "payment_failed",
        ReservationStatus::Confirmed => "confirmed",
        ReservationStatus::Accepted => "accepted",
        ReservationStatus::Rejected => "rejected",
        ReservationStatus::Cancelled => "cancelled",
    }
}

impl From<serde_json::Error> for CommandError {
    fn from(e: serde_json::Error) -> Self {
        Self::Invalid(e.to_string())
    }
}
