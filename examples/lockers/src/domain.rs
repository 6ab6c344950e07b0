//! The locker platform's vocabulary: units, lockers, reservations, the events that record them,
//! the streams they live in, and the rules decided from them.
//!
//! Streams (each has one writing side):
//! - `unitconfig-NAME` (the platform): the unit's configuration (`UnitConfigured`) and the
//!   reservations handed to it (`ReservationAssigned`, `ReservationWithdrawn`).
//! - `unit-NAME` (the unit): what happened at the unit — lockers opened and closed, rentals,
//!   payments on its screen, hardware state, and its answer to each reservation.
//! - `reservation-ID` (the platform): one reservation from the app, from request to its end.
//!
//! Every event about a locker's time carries the tag `locker:NAME/LOCKER`, so the rule "a
//! locker is never reserved twice for overlapping windows" reads one tag across every
//! reservation stream and the unit's own rentals, and is appended on condition that nothing
//! with that tag was stored since (see [`LockerCalendar`]).

use std::collections::HashMap;

use reel_aggregate::Decision;
use reel_core::{Query, QueryItem, RecordedEvent, ReelError, StreamName};
use serde::{Deserialize, Serialize};

/// Platform-owned stream of a unit's configuration and the commands for it.
pub fn config_stream(unit: &str) -> Result<StreamName, ReelError> {
    StreamName::new(format!("unitconfig-{unit}"))
}

/// Unit-owned stream of what happened at the unit.
pub fn unit_stream(unit: &str) -> Result<StreamName, ReelError> {
    StreamName::new(format!("unit-{unit}"))
}

/// Platform-owned stream of one reservation.
pub fn reservation_stream(reservation: &str) -> Result<StreamName, ReelError> {
    StreamName::new(format!("reservation-{reservation}"))
}

/// The tag every event about a locker's time carries.
pub fn locker_tag(unit: &str, locker: &str) -> String {
    format!("locker:{unit}/{locker}")
}

/// The tag every event of one reservation carries.
pub fn reservation_tag(reservation: &str) -> String {
    format!("reservation:{reservation}")
}

/// Checks a unit name (it becomes part of stream names and tags).
pub fn check_unit(name: &str) -> Result<(), ReelError> {
    reel_core::check_device_name(name)
}

/// Checks a locker's name within its unit: 1–8 letters or digits.
pub fn check_locker(name: &str) -> Result<(), ReelError> {
    if name.is_empty() || name.len() > 8 || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ReelError::InvalidArgument(format!("locker {name:?} must be 1-8 letters or digits")));
    }
    Ok(())
}

/// A time window `[from, to)` in Unix microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Start (inclusive).
    pub from_us: i64,
    /// End (exclusive).
    pub to_us: i64,
}

impl Window {
    /// Whether the two windows share any instant.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.from_us < other.to_us && other.from_us < self.to_us
    }

    /// Whether `at` is inside.
    pub fn contains(&self, at_us: i64) -> bool {
        self.from_us <= at_us && at_us < self.to_us
    }
}

/// A unit's configuration, pushed by the platform (`UnitConfigured`, the whole of it each time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitConfig {
    /// The unit's name for people.
    pub display_name: String,
    /// Where it stands ("Camping Festitent").
    pub location: String,
    /// Its lockers ("A", "B", …).
    pub lockers: Vec<String>,
    /// Price per hour, in cents.
    pub price_cents_per_hour: i64,
    /// Rental periods offered, in hours.
    pub rental_hours: Vec<u32>,
}

impl UnitConfig {
    /// Checks it: a location and display name, 1–64 distinct valid lockers, a price of 0 to
    /// 100,000 cents an hour, 1–8 rental periods of 1–720 hours.
    pub fn validate(&self) -> Result<(), ReelError> {
        let bad = |why: String| Err(ReelError::InvalidArgument(why));
        reel_core::check_display_name(&self.display_name, "display_name")?;
        reel_core::check_display_name(&self.location, "location")?;
        if self.lockers.is_empty() || self.lockers.len() > 64 {
            return bad("a unit has 1 to 64 lockers".into());
        }
        for (i, locker) in self.lockers.iter().enumerate() {
            check_locker(locker)?;
            if self.lockers[..i].contains(locker) {
                return bad(format!("locker {locker} is listed twice"));
            }
        }
        if !(0..=100_000).contains(&self.price_cents_per_hour) {
            return bad("price_cents_per_hour must be 0 to 100000".into());
        }
        if self.rental_hours.is_empty() || self.rental_hours.len() > 8 {
            return bad("rental_hours lists 1 to 8 periods".into());
        }
        if self.rental_hours.iter().any(|h| !(1..=720).contains(h)) {
            return bad("each rental period is 1 to 720 hours".into());
        }
        Ok(())
    }

    /// The price of `hours` hours.
    pub fn price(&self, hours: u32) -> i64 {
        self.price_cents_per_hour * i64::from(hours)
    }
}

/// Event types, one place for their names.
pub mod types {
    /// `unitconfig-*`: the unit's whole configuration.
    pub const UNIT_CONFIGURED: &str = "UnitConfigured";
    /// `unitconfig-*`: a confirmed reservation handed to the unit.
    pub const RESERVATION_ASSIGNED: &str = "ReservationAssigned";
    /// `unitconfig-*`: a reservation taken back from the unit (cancelled).
    pub const RESERVATION_WITHDRAWN: &str = "ReservationWithdrawn";

    /// `unit-*`: a locker door opened.
    pub const LOCKER_OPENED: &str = "LockerOpened";
    /// `unit-*`: a locker door closed.
    pub const LOCKER_CLOSED: &str = "LockerClosed";
    /// `unit-*`: a locker was taken (on the screen, or by a reservation's holder).
    pub const RENTAL_STARTED: &str = "RentalStarted";
    /// `unit-*`: a rental ended and the locker is free.
    pub const RENTAL_ENDED: &str = "RentalEnded";
    /// `unit-*`: a payment on the unit's screen started.
    pub const PAYMENT_STARTED: &str = "PaymentStarted";
    /// `unit-*`: a payment on the unit's screen succeeded.
    pub const PAYMENT_SUCCEEDED: &str = "PaymentSucceeded";
    /// `unit-*`: a payment on the unit's screen failed.
    pub const PAYMENT_FAILED: &str = "PaymentFailed";
    /// `unit-*`: the unit's connection came back.
    pub const HARDWARE_ONLINE: &str = "HardwareOnline";
    /// `unit-*`: the unit lost its connection (recorded locally, synced later).
    pub const HARDWARE_OFFLINE: &str = "HardwareOffline";
    /// `unit-*`: a hardware fault.
    pub const HARDWARE_ERROR: &str = "HardwareError";
    /// `unit-*`: the unit took a reservation handed to it.
    pub const RESERVATION_ACCEPTED: &str = "ReservationAccepted";
    /// `unit-*`: the unit refused a reservation (its locker was rented on its own screen).
    pub const RESERVATION_REJECTED: &str = "ReservationRejected";

    /// `reservation-*`: requested through the app, holding the window until confirmed.
    pub const RESERVATION_REQUESTED: &str = "ReservationRequested";
    /// `reservation-*`: the app's payment started.
    pub const RESERVATION_PAYMENT_STARTED: &str = "ReservationPaymentStarted";
    /// `reservation-*`: the app's payment succeeded.
    pub const RESERVATION_PAYMENT_SUCCEEDED: &str = "ReservationPaymentSucceeded";
    /// `reservation-*`: the app's payment failed; the window is free again.
    pub const RESERVATION_PAYMENT_FAILED: &str = "ReservationPaymentFailed";
    /// `reservation-*`: confirmed by the customer after paying.
    pub const RESERVATION_CONFIRMED: &str = "ReservationConfirmed";
    /// `reservation-*`: cancelled by the customer.
    pub const RESERVATION_CANCELLED: &str = "ReservationCancelled";
    /// `reservation-*`: the unit accepted it.
    pub const RESERVATION_ACCEPTED_BY_UNIT: &str = "ReservationAcceptedByUnit";
    /// `reservation-*`: the unit rejected it; the window is free.
    pub const RESERVATION_REJECTED_BY_UNIT: &str = "ReservationRejectedByUnit";
    /// `reservation-*`: money returned.
    pub const REFUND_ISSUED: &str = "RefundIssued";

    /// Every type a unit records.
    pub const UNIT_EVENTS: &[&str] = &[
        LOCKER_OPENED,
        LOCKER_CLOSED,
        RENTAL_STARTED,
        RENTAL_ENDED,
        PAYMENT_STARTED,
        PAYMENT_SUCCEEDED,
        PAYMENT_FAILED,
        HARDWARE_ONLINE,
        HARDWARE_OFFLINE,
        HARDWARE_ERROR,
        RESERVATION_ACCEPTED,
        RESERVATION_REJECTED,
    ];
}

/// What a unit records (`unit-NAME`). Each carries the unit and its location, so projections
/// need nothing else to place it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitEvent {
    /// The unit.
    pub unit: String,
    /// Its location at the time.
    pub location: String,
    /// The locker, for locker events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locker: Option<String>,
    /// The rental, for rentals and the unit's payments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rental: Option<String>,
    /// The reservation, for a rental that serves one and for the unit's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// The rented window, for `RentalStarted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Amount in cents, for payments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    /// Why, for failures, errors and rejections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it happened on the unit's clock (Unix microseconds); the store's time says when the
    /// platform learned of it.
    pub occurred_us: i64,
}

/// A reservation as the app requested it (`ReservationRequested`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationRequested {
    /// Its id.
    pub reservation: String,
    /// The unit.
    pub unit: String,
    /// The locker.
    pub locker: String,
    /// The unit's location.
    pub location: String,
    /// The reserved window.
    pub window: Window,
    /// The price.
    pub amount_cents: i64,
    /// Unconfirmed, it stops holding the window at this time.
    pub hold_until_us: i64,
}

/// A reservation handed to a unit, or taken back (`ReservationAssigned`, `ReservationWithdrawn`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationCommand {
    /// The reservation.
    pub reservation: String,
    /// The locker.
    pub locker: String,
    /// The window.
    pub window: Window,
}

/// Where a reservation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Requested, payment under way.
    Requested,
    /// Paid, waiting for the customer's confirmation.
    Paid,
    /// Payment failed: the window is free.
    PaymentFailed,
    /// Confirmed: handed to the unit.
    Confirmed,
    /// The unit accepted it.
    Accepted,
    /// The unit rejected it (refunded when paid).
    Rejected,
    /// Cancelled by the customer.
    Cancelled,
}

impl ReservationStatus {
    /// Whether the reservation still holds its window (unless an unconfirmed hold expired).
    pub fn holds_window(self) -> bool {
        matches!(self, Self::Requested | Self::Paid | Self::Confirmed | Self::Accepted)
    }
}

/// One reservation folded from its stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    /// What was requested.
    pub request: ReservationRequested,
    /// Where it stands.
    pub status: ReservationStatus,
    /// Paid, in cents.
    pub paid_cents: i64,
    /// Refunded, in cents.
    pub refunded_cents: i64,
    /// The unit's reason, when it rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Reservation {
    /// Whether it holds its window at `now`: confirmed ones until they end, unconfirmed ones
    /// until their hold expires.
    pub fn holds_window_at(&self, now_us: i64) -> bool {
        match self.status {
            ReservationStatus::Requested | ReservationStatus::Paid => now_us < self.request.hold_until_us,
            status => status.holds_window(),
        }
    }

    /// Moves it forward by one event of its stream.
    pub fn apply(this: &mut Option<Reservation>, event: &RecordedEvent) {
        if event.event_type == types::RESERVATION_REQUESTED {
            if let Ok(request) = event.data_as::<ReservationRequested>() {
                *this = Some(Reservation {
                    request,
                    status: ReservationStatus::Requested,
                    paid_cents: 0,
                    refunded_cents: 0,
                    reason: None,
                });
            }
            return;
        }
        let Some(state) = this.as_mut() else { return };
        let amount = || amount_of(event);
        match event.event_type.as_str() {
            types::RESERVATION_PAYMENT_SUCCEEDED => {
                state.paid_cents += amount();
                state.status = ReservationStatus::Paid;
            }
            types::RESERVATION_PAYMENT_FAILED => state.status = ReservationStatus::PaymentFailed,
            types::RESERVATION_CONFIRMED => state.status = ReservationStatus::Confirmed,
            types::RESERVATION_ACCEPTED_BY_UNIT => state.status = ReservationStatus::Accepted,
            types::RESERVATION_REJECTED_BY_UNIT => {
                state.status = ReservationStatus::Rejected;
                state.reason = reason_of(event);
            }
            types::RESERVATION_CANCELLED => state.status = ReservationStatus::Cancelled,
            types::REFUND_ISSUED => state.refunded_cents += amount(),
            _ => {}
        }
    }
}

/// `amount_cents` of an event's data, 0 without one.
pub fn amount_of(event: &RecordedEvent) -> i64 {
    serde_json::from_slice::<serde_json::Value>(&event.data)
        .ok()
        .and_then(|v| v.get("amount_cents").and_then(|a| a.as_i64()))
        .unwrap_or(0)
}

/// `reason` of an event's data.
pub fn reason_of(event: &RecordedEvent) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(&event.data)
        .ok()
        .and_then(|v| v.get("reason").and_then(|a| a.as_str()).map(str::to_string))
}

/// A reservation's own events, for commands on it (confirm, cancel, the unit's answer).
pub struct ReservationDecision {
    /// Its id.
    pub id: String,
    /// Its state, once requested.
    pub state: Option<Reservation>,
    /// Events read (the stream's expected version is `seen - 1`).
    pub seen: u64,
}

impl ReservationDecision {
    /// Nothing read yet.
    pub fn new(id: &str) -> Self {
        Self { id: id.to_string(), state: None, seen: 0 }
    }
}

impl Decision for ReservationDecision {
    fn query(&self) -> Query {
        Query::new(vec![QueryItem::tags([reservation_tag(&self.id)])]).expect("one tag item is a valid query")
    }

    fn apply(&mut self, event: &RecordedEvent) {
        if event.stream.as_str().starts_with("reservation-") {
            self.seen += 1;
            Reservation::apply(&mut self.state, event);
        }
    }
}

/// Every claim on one locker's time, from every reservation stream and from the unit's own
/// rentals: what the rule "never reserved twice for overlapping windows" is decided on.
pub struct LockerCalendar {
    unit: String,
    locker: String,
    /// Reservations by id.
    reservations: HashMap<String, Reservation>,
    /// The unit's rentals by id: their window, cut short when they ended.
    rentals: HashMap<String, Window>,
}

impl LockerCalendar {
    /// Nothing read yet.
    pub fn new(unit: &str, locker: &str) -> Self {
        Self { unit: unit.into(), locker: locker.into(), reservations: HashMap::new(), rentals: HashMap::new() }
    }

    /// Event types that change a locker's calendar.
    pub const TYPES: &'static [&'static str] = &[
        types::RESERVATION_REQUESTED,
        types::RESERVATION_PAYMENT_SUCCEEDED,
        types::RESERVATION_PAYMENT_FAILED,
        types::RESERVATION_CONFIRMED,
        types::RESERVATION_CANCELLED,
        types::RESERVATION_ACCEPTED_BY_UNIT,
        types::RESERVATION_REJECTED_BY_UNIT,
        types::RENTAL_STARTED,
        types::RENTAL_ENDED,
    ];

    /// The first claim that overlaps `window` at `now`: a reservation's id or a rental's.
    pub fn conflict(&self, window: &Window, now_us: i64) -> Option<String> {
        let reserved = self
            .reservations
            .iter()
            .find(|(_, r)| r.holds_window_at(now_us) && r.request.window.overlaps(window))
            .map(|(id, _)| format!("reservation {id}"));
        reserved.or_else(|| {
            self.rentals.iter().find(|(_, w)| w.overlaps(window)).map(|(id, _)| format!("rental {id} at the unit"))
        })
    }
}

impl Decision for LockerCalendar {
    fn query(&self) -> Query {
        Query::new(
            vec![QueryItem::tags([locker_tag(&self.unit, &self.locker)]).with_types(Self::TYPES.iter().copied())],
        )
        .expect("one item with a tag is a valid query")
    }

    fn apply(&mut self, event: &RecordedEvent) {
        match event.event_type.as_str() {
            types::RENTAL_STARTED | types::RENTAL_ENDED => {
                let Ok(data) = event.data_as::<UnitEvent>() else { return };
                let Some(rental) = data.rental else { return };
                // A rental that serves a reservation is that reservation's window, counted once.
                if data.reservation.is_some() {
                    return;
                }
                if event.event_type == types::RENTAL_STARTED {
                    if let Some(window) = data.window {
                        self.rentals.insert(rental, window);
                    }
                } else if let Some(window) = self.rentals.get_mut(&rental) {
                    window.to_us = window.to_us.min(data.occurred_us.max(window.from_us));
                }
            }
            _ => {
                let id = serde_json::from_slice::<serde_json::Value>(&event.data)
                    .ok()
                    .and_then(|v| v.get("reservation").and_then(|r| r.as_str()).map(str::to_string))
                    .or_else(|| event.stream.as_str().strip_prefix("reservation-").map(str::to_string));
                let Some(id) = id else { return };
                let mut state = self.reservations.remove(&id);
                Reservation::apply(&mut state, event);
                if let Some(state) = state {
                    self.reservations.insert(id, state);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_when_they_share_an_instant() {
        let w = |a, b| Window { from_us: a, to_us: b };
        assert!(w(0, 10).overlaps(&w(5, 15)));
        assert!(w(5, 15).overlaps(&w(0, 10)));
        assert!(w(0, 10).overlaps(&w(2, 3)));
        assert!(!w(0, 10).overlaps(&w(10, 20)), "touching ends do not overlap");
        assert!(!w(10, 20).overlaps(&w(0, 10)));
    }

    #[test]
    fn a_config_is_checked() {
        let good = UnitConfig {
            display_name: "PL-1".into(),
            location: "Camping".into(),
            lockers: vec!["A".into(), "B".into()],
            price_cents_per_hour: 250,
            rental_hours: vec![1, 4],
        };
        assert!(good.validate().is_ok());
        assert_eq!(good.price(4), 1000);
        let twice = UnitConfig { lockers: vec!["A".into(), "A".into()], ..good.clone() };
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        let negative = UnitConfig { price_cents_per_hour: -1, ..good.clone() };
        assert!(negative.validate().is_err());
        let no_periods = UnitConfig { rental_hours: vec![], ..good };
        assert!(no_periods.validate().is_err());
    }
}
