//! The locker reservation domain of the IoT showcase, shared by the aggregate and CQRS tests.

#![allow(dead_code)]

use reel_aggregate::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// A locker in a unit. It can hold one reservation at a time.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Locker {
    pub unit: Option<String>,
    pub reservation: Option<Reservation>,
    pub events_seen: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub customer: String,
    pub confirmed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum LockerEvent {
    #[serde(rename = "LockerRegistered")]
    Registered { unit: String },
    #[serde(rename = "LockerReserved")]
    Reserved { reservation: String, customer: String },
    #[serde(rename = "ReservationConfirmed")]
    Confirmed { reservation: String },
    /// Cancelling after confirmation is allowed until pickup; it frees the locker and is marked
    /// so billing can treat it differently.
    #[serde(rename = "ReservationCancelled")]
    Cancelled { reservation: String, after_confirmation: bool },
}

impl DomainEvent for LockerEvent {
    const EVENT_TYPES: &'static [&'static str] =
        &["LockerRegistered", "LockerReserved", "ReservationConfirmed", "ReservationCancelled"];
}

#[derive(Debug, Clone)]
pub enum LockerCommand {
    Register { unit: String },
    Reserve { reservation: String, customer: String },
    Confirm { reservation: String },
    Cancel { reservation: String },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LockerError {
    #[error("the locker is not registered")]
    NotRegistered,
    #[error("the locker is already registered")]
    AlreadyRegistered,
    #[error("the locker is reserved by {0}")]
    AlreadyReserved(String),
    #[error("no reservation {0} on this locker")]
    NoSuchReservation(String),
}

impl Aggregate for Locker {
    const CATEGORY: &'static str = "locker";
    const SNAPSHOT_EVERY: Option<u64> = Some(100);
    type Event = LockerEvent;
    type Command = LockerCommand;
    type Error = LockerError;

    fn apply(&mut self, event: &LockerEvent) {
        self.events_seen += 1;
        match event {
            LockerEvent::Registered { unit } => self.unit = Some(unit.clone()),
            LockerEvent::Reserved { reservation, customer } => {
                self.reservation =
                    Some(Reservation { id: reservation.clone(), customer: customer.clone(), confirmed: false })
            }
            LockerEvent::Confirmed { .. } => {
                if let Some(r) = &mut self.reservation {
                    r.confirmed = true;
                }
            }
            LockerEvent::Cancelled { .. } => self.reservation = None,
        }
    }

    fn handle(&self, command: LockerCommand) -> Result<Vec<LockerEvent>, LockerError> {
        let current = |id: &str| match &self.reservation {
            Some(r) if r.id == id => Ok(r.clone()),
            _ => Err(LockerError::NoSuchReservation(id.to_string())),
        };
        match command {
            LockerCommand::Register { unit } if self.unit.is_none() => Ok(vec![LockerEvent::Registered { unit }]),
            LockerCommand::Register { .. } => Err(LockerError::AlreadyRegistered),
            _ if self.unit.is_none() => Err(LockerError::NotRegistered),
            LockerCommand::Reserve { reservation, customer } => match &self.reservation {
                Some(r) => Err(LockerError::AlreadyReserved(r.customer.clone())),
                None => Ok(vec![LockerEvent::Reserved { reservation, customer }]),
            },
            LockerCommand::Confirm { reservation } => {
                let r = current(&reservation)?;
                Ok(if r.confirmed { vec![] } else { vec![LockerEvent::Confirmed { reservation }] })
            }
            LockerCommand::Cancel { reservation } => {
                let r = current(&reservation)?;
                Ok(vec![LockerEvent::Cancelled { reservation, after_confirmation: r.confirmed }])
            }
        }
    }
}

pub fn reserve(id: &str, customer: &str) -> LockerCommand {
    LockerCommand::Reserve { reservation: id.into(), customer: customer.into() }
}
