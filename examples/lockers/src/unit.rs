//! One simulated locker unit: what a real unit's controller does, on the unit's own terms.
//!
//! The unit is authoritative for its physical state. It records what happens at it (doors,
//! rentals on its screen, payments, hardware) whether or not it is connected, and it answers
//! each reservation the platform hands it with `ReservationAccepted` or `ReservationRejected`:
//! a locker it rented on its own screen (perhaps while offline) is never given to a central
//! reservation for an overlapping window.
//!
//! How its events reach the platform depends on its link:
//! - `agent`: its own embedded Reel store, with `reel edge`'s uplink, downlink and heartbeats
//!   (the unit pushes; configuration arrives through the downlink);
//! - `mqtt`: events published to the MQTT bridge (the unit pushes), held while offline and
//!   published in order when back; configuration pushed by the platform to its endpoint;
//! - `fetch`: its own embedded store served over Reel's HTTP API, from which the platform
//!   fetches its events (the platform polls).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use reel_core::{Direction, EventId, EventStore, ExpectedVersion, NewEvent, StreamVersion, Timestamp};
use reel_sqlite::SqliteStore;
use serde::Serialize;

use crate::domain::{config_stream, locker_tag, types, unit_stream, ReservationCommand, UnitConfig, UnitEvent, Window};

/// How a unit is connected to the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitLinkKind {
    /// Runs the agent (`reel edge`).
    Agent,
    /// Publishes over MQTT; the platform pushes its configuration.
    Mqtt,
    /// Serves Reel's HTTP API; the platform fetches its events.
    Fetch,
}

/// Where a unit's events go.
pub enum Outlet {
    /// Its own store (agent and fetch units).
    Store(SqliteStore),
    /// The MQTT broker, through one shared client; held here while offline.
    Mqtt {
        /// The shared connection.
        client: rumqttc::AsyncClient,
        /// The unit's events topic.
        topic: String,
        /// Events recorded while offline, published when back.
        held: Mutex<Vec<serde_json::Value>>,
    },
}

/// A unit's view of its lockers.
#[derive(Default)]
struct UnitState {
    config: Option<UnitConfig>,
    /// Configuration events taken (the next one expected).
    config_taken: u64,
    /// Lockers in use: rental id, window, and the reservation it serves.
    rentals: HashMap<String, (String, Window, Option<String>)>,
    /// Reservations accepted and not yet started or withdrawn.
    accepted: HashMap<String, ReservationCommand>,
    /// Reservations already answered (accepted or rejected).
    answered: HashSet<String>,
}

/// One simulated unit.
pub struct SimUnit {
    /// Its name.
    pub name: String,
    /// Its link.
    pub link: UnitLinkKind,
    /// Where it stands.
    pub location: String,
    outlet: Outlet,
    state: tokio::sync::Mutex<UnitState>,
    online: AtomicBool,
}

/// A small random number source (xorshift), so the simulation needs no crate for it.
pub struct Random(u64);

impl Random {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.below(1_000_000) as f64) < p * 1_000_000.0
    }
}

impl SimUnit {
    /// A unit sending its events through `outlet`; configured at install with `config` when the
    /// platform cannot push configuration to it (fetch units).
    pub fn new(
        name: String,
        link: UnitLinkKind,
        location: String,
        outlet: Outlet,
        installed: Option<UnitConfig>,
    ) -> Self {
        let state = UnitState { config: installed, ..UnitState::default() };
        Self { name, link, location, outlet, state: tokio::sync::Mutex::new(state), online: AtomicBool::new(true) }
    }

    /// Its own store, for agent and fetch units.
    pub fn store(&self) -> Option<&SqliteStore> {
        match &self.outlet {
            Outlet::Store(store) => Some(store),
            Outlet::Mqtt { .. } => None,
        }
    }

    /// Whether it is connected.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    /// Marks it connected or not, recording the change at the unit. An MQTT unit publishes
    /// what it held once back.
    pub async fn set_online(&self, online: bool) -> Result<(), reel_core::ReelError> {
        if self.online.swap(online, Ordering::SeqCst) == online {
            return Ok(());
        }
        let event_type = if online { types::HARDWARE_ONLINE } else { types::HARDWARE_OFFLINE };
        self.record(event_type, self.event(None), None).await?;
        if online {
            self.flush().await;
        }
        Ok(())
    }

    fn event(&self, locker: Option<&str>) -> UnitEvent {
        UnitEvent {
            unit: self.name.clone(),
            location: self.location.clone(),
            locker: locker.map(str::to_string),
            rental: None,
            reservation: None,
            window: None,
            amount_cents: None,
            reason: None,
            occurred_us: Timestamp::now().unix_micros(),
        }
    }

    /// Records one event at the unit.
    async fn record(
        &self,
        event_type: &str,
        event: UnitEvent,
        tag: Option<String>,
    ) -> Result<(), reel_core::ReelError> {
        let id = EventId::new_v7();
        let tags: Vec<String> = tag.into_iter().collect();
        match &self.outlet {
            Outlet::Store(store) => {
                let new = NewEvent::json(event_type, &event)?.with_id(id).with_tags(tags);
                store.append(&unit_stream(&self.name)?, ExpectedVersion::Any, vec![new]).await?;
            }
            Outlet::Mqtt { held, .. } => {
                let payload =
                    serde_json::json!({ "id": id.to_string(), "type": event_type, "data": event, "tags": tags });
                held.lock().unwrap_or_else(|p| p.into_inner()).push(payload);
                if self.is_online() {
                    self.flush().await;
                }
            }
        }
        Ok(())
    }

    /// Publishes what an MQTT unit holds, in order, as one message (QoS 1: the broker keeps it
    /// for the bridge; the bridge stores it with the unit's ids, so a redelivery is no duplicate).
    async fn flush(&self) {
        let Outlet::Mqtt { client, topic, held } = &self.outlet else { return };
        let batch: Vec<serde_json::Value> = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let body = serde_json::Value::Array(batch.clone()).to_string();
        if let Err(e) = client.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, body).await {
            tracing::warn!(unit = %self.name, error = %e, "publishing held events failed; kept for the next try");
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            let later = std::mem::take(&mut *held);
            *held = batch;
            held.extend(later);
        }
    }

    /// Takes configuration events that reached its own store through the downlink.
    pub async fn take_downlinked(&self) -> Result<(), reel_core::ReelError> {
        let Outlet::Store(store) = &self.outlet else { return Ok(()) };
        let stream = config_stream(&self.name)?;
        let from = self.state.lock().await.config_taken;
        let events = match store.read_stream(&stream, StreamVersion(from), Direction::Forward, 100).await {
            Ok(events) => events,
            Err(reel_core::ReelError::StreamNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        for event in events {
            let data: serde_json::Value = event.data_as()?;
            self.take_config(event.stream_version.0, &event.event_type, data).await?;
        }
        Ok(())
    }

    /// Takes one configuration event (version `version` of its config stream) unless taken.
    pub async fn take_config(
        &self,
        version: u64,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<(), reel_core::ReelError> {
        let mut state = self.state.lock().await;
        if version < state.config_taken {
            return Ok(());
        }
        state.config_taken = version + 1;
        match event_type {
            types::UNIT_CONFIGURED => {
                state.config = Some(
                    serde_json::from_value(data).map_err(|e| reel_core::ReelError::InvalidArgument(e.to_string()))?,
                );
            }
            types::RESERVATION_ASSIGNED => {
                let command: ReservationCommand =
                    serde_json::from_value(data).map_err(|e| reel_core::ReelError::InvalidArgument(e.to_string()))?;
                if !state.answered.insert(command.reservation.clone()) {
                    return Ok(());
                }
                let taken = state
                    .rentals
                    .iter()
                    .find(|(locker, (_, window, _))| **locker == command.locker && window.overlaps(&command.window))
                    .map(|(_, (rental, _, _))| rental.clone());
                let mut answer = self.event(Some(&command.locker));
                answer.reservation = Some(command.reservation.clone());
                answer.window = Some(command.window);
                drop(state);
                match taken {
                    Some(rental) => {
                        answer.reason =
                            Some(format!("locker {} was rented at the unit (rental {rental})", command.locker));
                        self.record(types::RESERVATION_REJECTED, answer, None).await?;
                    }
                    None => {
                        self.state.lock().await.accepted.insert(command.reservation.clone(), command);
                        self.record(types::RESERVATION_ACCEPTED, answer, None).await?;
                    }
                }
            }
            types::RESERVATION_WITHDRAWN => {
                if let Ok(command) = serde_json::from_value::<ReservationCommand>(data) {
                    state.accepted.remove(&command.reservation);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Its configuration, once it has one.
    pub async fn config(&self) -> Option<UnitConfig> {
        self.state.lock().await.config.clone()
    }

    /// One step of life at the unit: reservations that start or end, and with probability
    /// `activity` something a customer does at its screen.
    pub async fn step(&self, random: &mut Random, activity: f64) -> Result<(), reel_core::ReelError> {
        let now = Timestamp::now().unix_micros();
        let Some(config) = self.config().await else { return Ok(()) };
        // Accepted reservations whose window started become rentals; rentals past their end end.
        let (starting, ending) = {
            let state = self.state.lock().await;
            let starting: Vec<ReservationCommand> = state
                .accepted
                .values()
                .filter(|r| r.window.contains(now) && !state.rentals.contains_key(&r.locker))
                .cloned()
                .collect();
            let ending: Vec<String> =
                state.rentals.iter().filter(|(_, (_, w, _))| w.to_us <= now).map(|(l, _)| l.clone()).collect();
            (starting, ending)
        };
        for locker in ending {
            self.end_rental(&locker).await?;
        }
        for reservation in starting {
            self.state.lock().await.accepted.remove(&reservation.reservation);
            let rental = format!("r{}", uuid::Uuid::now_v7().simple());
            self.start_rental(&reservation.locker, rental, reservation.window, Some(reservation.reservation), 0)
                .await?;
        }
        if !random.chance(activity) {
            return Ok(());
        }
        let locker = config.lockers[random.below(config.lockers.len() as u64) as usize].clone();
        let rented = self.state.lock().await.rentals.contains_key(&locker);
        match random.below(20) {
            0 => {
                let mut error = self.event(None);
                error.reason = Some(["coin jam", "door sensor", "printer"][random.below(3) as usize].into());
                self.record(types::HARDWARE_ERROR, error, None).await
            }
            // The customer comes back early: the locker opens, closes, and is free.
            1..=6 if rented => self.end_rental(&locker).await,
            // The customer opens their locker and closes it again.
            _ if rented => {
                self.record(types::LOCKER_OPENED, self.event(Some(&locker)), None).await?;
                self.record(types::LOCKER_CLOSED, self.event(Some(&locker)), None).await
            }
            // A rental on the screen, unless an accepted reservation needs the locker.
            _ => {
                let hours = config.rental_hours[random.below(config.rental_hours.len() as u64) as usize];
                let window = Window { from_us: now, to_us: now + i64::from(hours) * 3_600_000_000 };
                let promised =
                    self.state.lock().await.accepted.values().any(|r| r.locker == locker && r.window.overlaps(&window));
                if promised {
                    return Ok(());
                }
                let rental = format!("r{}", uuid::Uuid::now_v7().simple());
                let amount = config.price(hours);
                let mut payment = self.event(Some(&locker));
                payment.rental = Some(rental.clone());
                payment.amount_cents = Some(amount);
                self.record(types::PAYMENT_STARTED, payment.clone(), None).await?;
                if random.chance(0.05) {
                    payment.reason = Some("card declined".into());
                    return self.record(types::PAYMENT_FAILED, payment, None).await;
                }
                self.record(types::PAYMENT_SUCCEEDED, payment, None).await?;
                self.start_rental(&locker, rental, window, None, amount).await
            }
        }
    }

    async fn start_rental(
        &self,
        locker: &str,
        rental: String,
        window: Window,
        reservation: Option<String>,
        amount: i64,
    ) -> Result<(), reel_core::ReelError> {
        self.state.lock().await.rentals.insert(locker.to_string(), (rental.clone(), window, reservation.clone()));
        let mut started = self.event(Some(locker));
        started.rental = Some(rental);
        started.window = Some(window);
        started.reservation = reservation;
        started.amount_cents = (amount > 0).then_some(amount);
        self.record(types::RENTAL_STARTED, started, Some(locker_tag(&self.name, locker))).await?;
        self.record(types::LOCKER_OPENED, self.event(Some(locker)), None).await?;
        self.record(types::LOCKER_CLOSED, self.event(Some(locker)), None).await
    }

    async fn end_rental(&self, locker: &str) -> Result<(), reel_core::ReelError> {
        let Some((rental, _, reservation)) = self.state.lock().await.rentals.remove(locker) else { return Ok(()) };
        self.record(types::LOCKER_OPENED, self.event(Some(locker)), None).await?;
        self.record(types::LOCKER_CLOSED, self.event(Some(locker)), None).await?;
        let mut ended = self.event(Some(locker));
        ended.rental = Some(rental);
        ended.reservation = reservation;
        self.record(types::RENTAL_ENDED, ended, Some(locker_tag(&self.name, locker))).await
    }

    /// Rents `locker` on its screen now for `hours` (whatever the platform thinks): for tests
    /// and the demo's "rented while offline" case. Fails when the locker is in use.
    pub async fn rent_on_screen(&self, locker: &str, hours: u32) -> Result<String, reel_core::ReelError> {
        if self.state.lock().await.rentals.contains_key(locker) {
            return Err(reel_core::ReelError::InvalidArgument(format!("locker {locker} is in use")));
        }
        if !self.config().await.is_some_and(|c| c.lockers.iter().any(|l| l == locker)) {
            return Err(reel_core::ReelError::InvalidArgument(format!("unit {} has no locker {locker}", self.name)));
        }
        let now = Timestamp::now().unix_micros();
        let window = Window { from_us: now, to_us: now + i64::from(hours) * 3_600_000_000 };
        let rental = format!("r{}", uuid::Uuid::now_v7().simple());
        let amount = self.config().await.map_or(0, |c| c.price(hours));
        let mut payment = self.event(Some(locker));
        payment.rental = Some(rental.clone());
        payment.amount_cents = Some(amount);
        self.record(types::PAYMENT_STARTED, payment.clone(), None).await?;
        self.record(types::PAYMENT_SUCCEEDED, payment, None).await?;
        self.start_rental(locker, rental.clone(), window, None, amount).await?;
        Ok(rental)
    }
}
