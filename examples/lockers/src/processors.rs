//! The platform's processors: workers behind the log that carry a decision from one stream to
//! another. Each append they make has an id derived from the event that caused it, so a retry
//! after any crash is recognised by the store and stores nothing twice.
//!
//! - [`Dispatcher`]: a confirmed reservation is handed to its unit (`ReservationAssigned` in
//!   `unitconfig-NAME`), a cancelled one taken back (`ReservationWithdrawn`).
//! - [`Reconciler`]: the unit's answer comes back to the reservation. A unit that rejected it
//!   (its locker was rented on its own screen, perhaps while offline) wins: the reservation is
//!   marked rejected and what was paid is refunded.

use std::sync::Arc;

use async_trait::async_trait;
use reel_aggregate::DecisionRepository;
use reel_core::{
    AppendRequest, Direction, EventId, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamVersion,
};
use reel_subscriptions::{BatchFailure, HandlerError, Message, Subscriber, SubscriberSpec};

use crate::domain::{
    config_stream, locker_tag, reservation_stream, reservation_tag, types, Reservation, ReservationCommand,
    ReservationDecision, ReservationStatus, UnitEvent,
};

/// An id derived from the event that caused an append, and what the append is.
fn caused_by(event: &RecordedEvent, what: &str) -> EventId {
    EventId(uuid::Uuid::new_v5(&event.id.0, what.as_bytes()))
}

/// The reservation's state up to and including `event` (its own stream's events only).
async fn reservation_at(decisions: &DecisionRepository, id: &str) -> Result<Option<Reservation>, HandlerError> {
    Ok(decisions.load(ReservationDecision::new(id)).await?.state.state)
}

/// Hands confirmed reservations to their unit, and takes cancelled ones back.
pub struct Dispatcher {
    spec: SubscriberSpec,
    store: Arc<dyn EventStore>,
}

impl Dispatcher {
    /// Its subscription id.
    pub const ID: &'static str = "lockers_dispatch";

    /// A dispatcher appending to `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Result<Self, reel_core::ReelError> {
        let spec = SubscriberSpec::processor(Self::ID)?
            .in_categories(["reservation"])
            .handling([types::RESERVATION_CONFIRMED, types::RESERVATION_CANCELLED]);
        Ok(Self { spec, store })
    }
}

impl Dispatcher {
    /// What `event` makes the dispatcher append, if anything.
    async fn decide(&self, event: &RecordedEvent) -> Result<Option<AppendRequest>, HandlerError> {
        let Some(id) = event.stream.as_str().strip_prefix("reservation-") else { return Ok(None) };
        let what = match event.event_type.as_str() {
            types::RESERVATION_CONFIRMED => "assigned",
            types::RESERVATION_CANCELLED => "withdrawn",
            _ => return Ok(None),
        };
        // The reservation as it stood before this event, from its own stream.
        let earlier = self.store.read_stream(&event.stream, StreamVersion(0), Direction::Forward, 1_000).await?;
        let mut state = None;
        let mut confirmed = false;
        for e in earlier.iter().take_while(|e| e.stream_version < event.stream_version) {
            Reservation::apply(&mut state, e);
            confirmed |= e.event_type == types::RESERVATION_CONFIRMED;
        }
        let Some(state) = state else { return Ok(None) };
        let event_type = if what == "assigned" {
            types::RESERVATION_ASSIGNED
        } else if confirmed {
            types::RESERVATION_WITHDRAWN
        } else {
            // Cancelled before it was ever handed to the unit: nothing to take back.
            return Ok(None);
        };
        let command = ReservationCommand {
            reservation: id.to_string(),
            locker: state.request.locker.clone(),
            window: state.request.window,
        };
        let out = NewEvent::json(event_type, &command)?.with_id(caused_by(event, what));
        Ok(Some(AppendRequest::new(config_stream(&state.request.unit)?, ExpectedVersion::Any, vec![out])))
    }
}

#[async_trait]
impl Subscriber for Dispatcher {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(message.record())).await.map_err(|failure| failure.error)
    }

    async fn handle_batch(&self, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        append_decided(self.store.as_ref(), batch, |event| self.decide(event)).await
    }
}

/// Carries each unit's answer back to the reservation; a rejection is refunded.
pub struct Reconciler {
    spec: SubscriberSpec,
    store: Arc<dyn EventStore>,
    decisions: DecisionRepository,
}

impl Reconciler {
    /// Its subscription id.
    pub const ID: &'static str = "lockers_reconcile";

    /// A reconciler appending to `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Result<Self, reel_core::ReelError> {
        let spec = SubscriberSpec::processor(Self::ID)?
            .in_categories(["unit"])
            .handling([types::RESERVATION_ACCEPTED, types::RESERVATION_REJECTED]);
        Ok(Self { spec, decisions: DecisionRepository::new(store.clone()), store })
    }
}

impl Reconciler {
    /// What the unit's answer `event` makes the reconciler append, if anything.
    async fn decide(&self, event: &RecordedEvent) -> Result<Option<AppendRequest>, HandlerError> {
        if event.event_type != types::RESERVATION_ACCEPTED && event.event_type != types::RESERVATION_REJECTED {
            return Ok(None);
        }
        let answer: UnitEvent = event.data_as()?;
        let Some(id) = answer.reservation.clone() else { return Ok(None) };
        let Some(state) = reservation_at(&self.decisions, &id).await? else {
            tracing::warn!(reservation = %id, unit = %answer.unit, "a unit answered a reservation the platform does not have");
            return Ok(None);
        };
        let tags = [locker_tag(&state.request.unit, &state.request.locker), reservation_tag(&id)];
        let mut events = Vec::new();
        if event.event_type == types::RESERVATION_ACCEPTED {
            if state.status == ReservationStatus::Confirmed {
                events.push(
                    NewEvent::json(types::RESERVATION_ACCEPTED_BY_UNIT, &serde_json::json!({}))?
                        .with_id(caused_by(event, "accepted"))
                        .with_tags(tags),
                );
            }
        } else if matches!(state.status, ReservationStatus::Confirmed | ReservationStatus::Accepted) {
            let reason = answer.reason.clone().unwrap_or_else(|| "the unit rejected it".into());
            events.push(
                NewEvent::json(types::RESERVATION_REJECTED_BY_UNIT, &serde_json::json!({ "reason": reason }))?
                    .with_id(caused_by(event, "rejected"))
                    .with_tags(tags.clone()),
            );
            let owed = state.paid_cents - state.refunded_cents;
            if owed > 0 {
                let refund = serde_json::json!({ "amount_cents": owed, "reason": "rejected by the unit" });
                events.push(
                    NewEvent::json(types::REFUND_ISSUED, &refund)?.with_id(caused_by(event, "refund")).with_tags(tags),
                );
            }
        }
        if events.is_empty() {
            return Ok(None);
        }
        Ok(Some(AppendRequest::new(reservation_stream(&id)?, ExpectedVersion::Any, events)))
    }
}

#[async_trait]
impl Subscriber for Reconciler {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(message.record())).await.map_err(|failure| failure.error)
    }

    async fn handle_batch(&self, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        append_decided(self.store.as_ref(), batch, |event| self.decide(event)).await
    }
}

/// Decides every event of a batch in order and appends the outcomes together (one group
/// commit, in order). A failure names the first event whose outcome was not stored: those
/// before it are done, and it and those after it come again, where the derived ids make every
/// append that did go through a harmless retry.
async fn append_decided<'a, F, Fut>(
    store: &dyn EventStore,
    batch: &'a [RecordedEvent],
    decide: F,
) -> Result<(), BatchFailure>
where
    F: Fn(&'a RecordedEvent) -> Fut,
    Fut: std::future::Future<Output = Result<Option<AppendRequest>, HandlerError>>,
{
    let mut requests = Vec::new();
    let mut sources = Vec::new();
    let mut failed = None;
    for (index, event) in batch.iter().enumerate() {
        match decide(event).await {
            Ok(Some(request)) => {
                requests.push(request);
                sources.push(index);
            }
            Ok(None) => {}
            Err(error) => {
                failed = Some(BatchFailure::at(index, error));
                break;
            }
        }
    }
    if !requests.is_empty() {
        for (outcome, index) in store.append_many(requests).await.into_iter().zip(sources) {
            if let Err(error) = outcome {
                return Err(BatchFailure::at(index, error));
            }
        }
    }
    failed.map_or(Ok(()), Err)
}
