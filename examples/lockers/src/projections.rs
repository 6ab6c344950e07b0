//! The platform's projections, each a table set of its own with a version in its name
//! (`lockers_eventlog_1`), each rebuildable alone by starting its next version from the
//! beginning:
//!
//! - [`UnitsTable`]: one row per unit — its configuration and how many configuration events
//!   it has (what it holds is in its heartbeats).
//! - [`EventLog`]: the locker event log, one row per unit event, by unit and time.
//! - [`Availability`]: every locker with whether it is occupied, and every reservation with its
//!   window and status: free lockers per location, now or for a window.
//! - [`Revenue`]: money taken per location and day (refunds subtracted).

use std::sync::Arc;

use reel_core::{HandlerError, RecordedEvent};

use crate::domain::{types, ReservationRequested, UnitConfig, UnitEvent};
use crate::sql::{SqlProjection, Statement, Value};

/// The projections this platform keeps, by name.
pub const NAMES: [&str; 4] = ["units", "eventlog", "availability", "revenue"];

/// Where a projection's tables are: the table prefix for its backend and its version.
#[derive(Clone, Debug)]
pub struct Naming {
    /// `""` on SQLite, `"schema".` on PostgreSQL.
    pub prefix: String,
    /// The projection's version: bumping it builds a new set of tables from the beginning.
    pub version: u32,
}

impl Naming {
    /// SQLite tables of version `version`.
    pub fn sqlite(version: u32) -> Self {
        Self { prefix: String::new(), version }
    }

    /// PostgreSQL tables in `schema`, of version `version`.
    pub fn postgres(schema: &str, version: u32) -> Self {
        Self { prefix: format!("\"{schema}\"."), version }
    }

    /// The table (qualified) and index-safe base name of `name`.
    fn table(&self, name: &str) -> (String, String) {
        let base = format!("lockers_{name}_{}", self.version);
        (format!("{}{base}", self.prefix), base)
    }
}

/// The subscription id of a projection's version: `lockers_eventlog_1`.
pub fn subscription_id(name: &str, version: u32) -> String {
    format!("lockers_{name}_{version}")
}

/// The categories a projection reads.
pub fn categories(name: &str) -> &'static [&'static str] {
    match name {
        "units" => &["unitconfig"],
        "eventlog" => &["unit"],
        "revenue" => &["unit", "reservation"],
        _ => &["unitconfig", "unit", "reservation"],
    }
}

/// A projection by name.
pub fn build(name: &str, naming: &Naming) -> Option<Arc<dyn SqlProjection>> {
    Some(match name {
        "units" => Arc::new(UnitsTable::new(naming)),
        "eventlog" => Arc::new(EventLog::new(naming)),
        "availability" => Arc::new(Availability::new(naming)),
        "revenue" => Arc::new(Revenue::new(naming)),
        _ => return None,
    })
}

fn sql(text: String) -> Arc<str> {
    text.into()
}

/// The unit's name from its stream (`unit-PL-1`, `unitconfig-PL-1`).
fn unit_of(event: &RecordedEvent) -> Option<&str> {
    let name = event.stream.as_str();
    name.strip_prefix("unitconfig-").or_else(|| name.strip_prefix("unit-"))
}

/// The units table.
pub struct UnitsTable {
    table: String,
    upsert: Arc<str>,
    count: Arc<str>,
}

impl UnitsTable {
    /// The units table under `naming`.
    pub fn table(naming: &Naming) -> String {
        naming.table("units").0
    }

    /// Its tables under `naming`.
    pub fn new(naming: &Naming) -> Self {
        let (table, _) = naming.table("units");
        let upsert = sql(format!(
            "INSERT INTO {table} (unit, display_name, location, lockers, price_cents_per_hour, rental_hours, \
             config_events, configured_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (unit) DO UPDATE SET \
             display_name = excluded.display_name, location = excluded.location, lockers = excluded.lockers, \
             price_cents_per_hour = excluded.price_cents_per_hour, rental_hours = excluded.rental_hours, \
             config_events = excluded.config_events, configured_us = excluded.configured_us"
        ));
        let count = sql(format!("UPDATE {table} SET config_events = $1 WHERE unit = $2"));
        Self { table, upsert, count }
    }
}

impl SqlProjection for UnitsTable {
    fn create_tables(&self) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS {} (unit TEXT PRIMARY KEY, display_name TEXT NOT NULL, location TEXT NOT NULL, \
             lockers TEXT NOT NULL, price_cents_per_hour BIGINT NOT NULL, rental_hours TEXT NOT NULL, \
             config_events BIGINT NOT NULL, configured_us BIGINT NOT NULL)",
            self.table
        )]
    }

    fn drop_tables(&self) -> Vec<String> {
        vec![format!("DROP TABLE IF EXISTS {}", self.table)]
    }

    fn statements(&self, event: &RecordedEvent, out: &mut Vec<Statement>) -> Result<(), HandlerError> {
        let Some(unit) = unit_of(event) else { return Ok(()) };
        let events = event.stream_version.0 as i64 + 1;
        if event.event_type == types::UNIT_CONFIGURED {
            let config: UnitConfig = event.data_as()?;
            out.push(Statement {
                sql: self.upsert.clone(),
                params: vec![
                    unit.into(),
                    config.display_name.into(),
                    config.location.into(),
                    config.lockers.join(",").into(),
                    config.price_cents_per_hour.into(),
                    config.rental_hours.iter().map(u32::to_string).collect::<Vec<_>>().join(",").into(),
                    events.into(),
                    event.recorded_at.unix_micros().into(),
                ],
            });
        } else {
            out.push(Statement { sql: self.count.clone(), params: vec![events.into(), unit.into()] });
        }
        Ok(())
    }
}

/// The locker event log.
pub struct EventLog {
    table: String,
    index: String,
    insert: Arc<str>,
}

impl EventLog {
    /// The event log table under `naming`.
    pub fn table(naming: &Naming) -> String {
        naming.table("eventlog").0
    }

    /// Its tables under `naming`.
    pub fn new(naming: &Naming) -> Self {
        let (table, base) = naming.table("eventlog");
        let insert = sql(format!(
            "INSERT INTO {table} (position, unit, location, occurrence, locker, occurred_us, recorded_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (position) DO NOTHING"
        ));
        Self { index: format!("{base}_by_unit"), table, insert }
    }
}

impl SqlProjection for EventLog {
    fn create_tables(&self) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (position BIGINT PRIMARY KEY, unit TEXT NOT NULL, location TEXT NOT NULL, \
                 occurrence TEXT NOT NULL, locker TEXT, occurred_us BIGINT NOT NULL, recorded_us BIGINT NOT NULL)",
                self.table
            ),
            format!("CREATE INDEX IF NOT EXISTS {} ON {} (unit, occurred_us, position)", self.index, self.table),
        ]
    }

    fn drop_tables(&self) -> Vec<String> {
        vec![format!("DROP TABLE IF EXISTS {}", self.table)]
    }

    fn statements(&self, event: &RecordedEvent, out: &mut Vec<Statement>) -> Result<(), HandlerError> {
        if !types::UNIT_EVENTS.contains(&event.event_type.as_str()) {
            return Ok(());
        }
        let Some(unit) = unit_of(event) else { return Ok(()) };
        let data: UnitEvent = event.data_as()?;
        out.push(Statement {
            sql: self.insert.clone(),
            params: vec![
                (event.position.0 as i64).into(),
                unit.into(),
                data.location.into(),
                event.event_type.clone().into(),
                data.locker.into(),
                data.occurred_us.into(),
                event.recorded_at.unix_micros().into(),
            ],
        });
        Ok(())
    }
}

/// Lockers and reservations, for availability.
pub struct Availability {
    lockers: String,
    reservations: String,
    index: String,
    add_locker: Arc<str>,
    occupy: Arc<str>,
    add_reservation: Arc<str>,
    set_status: Arc<str>,
}

impl Availability {
    /// Its tables under `naming`.
    pub fn new(naming: &Naming) -> Self {
        let (lockers, _) = naming.table("availability_lockers");
        let (reservations, base) = naming.table("availability_reservations");
        Self {
            add_locker: sql(format!(
                "INSERT INTO {lockers} (unit, locker, location, occupied) VALUES ($1, $2, $3, 0) \
                 ON CONFLICT (unit, locker) DO UPDATE SET location = excluded.location"
            )),
            occupy: sql(format!(
                "INSERT INTO {lockers} (unit, locker, location, occupied) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (unit, locker) DO UPDATE SET occupied = excluded.occupied"
            )),
            add_reservation: sql(format!(
                "INSERT INTO {reservations} (reservation, unit, locker, location, from_us, to_us, hold_until_us, \
                 amount_cents, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'requested') \
                 ON CONFLICT (reservation) DO NOTHING"
            )),
            set_status: sql(format!("UPDATE {reservations} SET status = $1 WHERE reservation = $2")),
            index: format!("{base}_by_locker"),
            lockers,
            reservations,
        }
    }

    /// The lockers table.
    pub fn lockers_table(naming: &Naming) -> String {
        naming.table("availability_lockers").0
    }

    /// The reservations table.
    pub fn reservations_table(naming: &Naming) -> String {
        naming.table("availability_reservations").0
    }
}

impl SqlProjection for Availability {
    fn create_tables(&self) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (unit TEXT NOT NULL, locker TEXT NOT NULL, location TEXT NOT NULL, \
                 occupied BIGINT NOT NULL, PRIMARY KEY (unit, locker))",
                self.lockers
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (reservation TEXT PRIMARY KEY, unit TEXT NOT NULL, locker TEXT NOT NULL, \
                 location TEXT NOT NULL, from_us BIGINT NOT NULL, to_us BIGINT NOT NULL, hold_until_us BIGINT NOT NULL, \
                 amount_cents BIGINT NOT NULL, status TEXT NOT NULL)",
                self.reservations
            ),
            format!("CREATE INDEX IF NOT EXISTS {} ON {} (unit, locker, to_us)", self.index, self.reservations),
        ]
    }

    fn drop_tables(&self) -> Vec<String> {
        vec![format!("DROP TABLE IF EXISTS {}", self.lockers), format!("DROP TABLE IF EXISTS {}", self.reservations)]
    }

    fn statements(&self, event: &RecordedEvent, out: &mut Vec<Statement>) -> Result<(), HandlerError> {
        let reservation = || event.stream.as_str().strip_prefix("reservation-").unwrap_or_default().to_string();
        let status = |status: &str| Statement {
            sql: self.set_status.clone(),
            params: vec![status.into(), reservation().into()],
        };
        match event.event_type.as_str() {
            types::UNIT_CONFIGURED => {
                let Some(unit) = unit_of(event) else { return Ok(()) };
                let config: UnitConfig = event.data_as()?;
                for locker in &config.lockers {
                    out.push(Statement {
                        sql: self.add_locker.clone(),
                        params: vec![unit.into(), locker.as_str().into(), config.location.as_str().into()],
                    });
                }
            }
            types::RENTAL_STARTED | types::RENTAL_ENDED => {
                let Some(unit) = unit_of(event) else { return Ok(()) };
                let data: UnitEvent = event.data_as()?;
                let Some(locker) = data.locker else { return Ok(()) };
                let occupied = i64::from(event.event_type == types::RENTAL_STARTED);
                out.push(Statement {
                    sql: self.occupy.clone(),
                    params: vec![unit.into(), locker.into(), data.location.into(), occupied.into()],
                });
            }
            types::RESERVATION_REQUESTED => {
                let r: ReservationRequested = event.data_as()?;
                out.push(Statement {
                    sql: self.add_reservation.clone(),
                    params: vec![
                        r.reservation.into(),
                        r.unit.into(),
                        r.locker.into(),
                        r.location.into(),
                        r.window.from_us.into(),
                        r.window.to_us.into(),
                        r.hold_until_us.into(),
                        r.amount_cents.into(),
                    ],
                });
            }
            types::RESERVATION_PAYMENT_SUCCEEDED => out.push(status("paid")),
            types::RESERVATION_PAYMENT_FAILED => out.push(status("payment_failed")),
            types::RESERVATION_CONFIRMED => out.push(status("confirmed")),
            types::RESERVATION_ACCEPTED_BY_UNIT => out.push(status("accepted")),
            types::RESERVATION_REJECTED_BY_UNIT => out.push(status("rejected")),
            types::RESERVATION_CANCELLED => out.push(status("cancelled")),
            _ => {}
        }
        Ok(())
    }
}

/// Revenue per location and day.
pub struct Revenue {
    table: String,
    places: String,
    add: Arc<str>,
    place: Arc<str>,
    add_for_reservation: Arc<str>,
}

impl Revenue {
    /// Its tables under `naming`.
    pub fn new(naming: &Naming) -> Self {
        let (table, _) = naming.table("revenue");
        let (places, _) = naming.table("revenue_places");
        Self {
            add: sql(format!(
                "INSERT INTO {table} (location, day, cents) VALUES ($1, $2, $3) \
                 ON CONFLICT (location, day) DO UPDATE SET cents = {table}.cents + excluded.cents"
            )),
            place: sql(format!(
                "INSERT INTO {places} (reservation, location) VALUES ($1, $2) ON CONFLICT (reservation) DO NOTHING"
            )),
            add_for_reservation: sql(format!(
                "INSERT INTO {table} (location, day, cents) SELECT location, CAST($1 AS TEXT), CAST($2 AS BIGINT) FROM {places} WHERE reservation = $3 \
                 ON CONFLICT (location, day) DO UPDATE SET cents = {table}.cents + excluded.cents"
            )),
            table,
            places,
        }
    }

    /// The revenue table.
    pub fn table(naming: &Naming) -> String {
        naming.table("revenue").0
    }
}

impl SqlProjection for Revenue {
    fn create_tables(&self) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (location TEXT NOT NULL, day TEXT NOT NULL, cents BIGINT NOT NULL, \
                 PRIMARY KEY (location, day))",
                self.table
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (reservation TEXT PRIMARY KEY, location TEXT NOT NULL)",
                self.places
            ),
        ]
    }

    fn drop_tables(&self) -> Vec<String> {
        vec![format!("DROP TABLE IF EXISTS {}", self.table), format!("DROP TABLE IF EXISTS {}", self.places)]
    }

    fn statements(&self, event: &RecordedEvent, out: &mut Vec<Statement>) -> Result<(), HandlerError> {
        let day = || Value::from(day_of(event.recorded_at.unix_micros()));
        let reservation = || Value::from(event.stream.as_str().strip_prefix("reservation-").unwrap_or_default());
        match event.event_type.as_str() {
            types::PAYMENT_SUCCEEDED => {
                let data: UnitEvent = event.data_as()?;
                let cents = data.amount_cents.unwrap_or(0);
                out.push(Statement { sql: self.add.clone(), params: vec![data.location.into(), day(), cents.into()] });
            }
            types::RESERVATION_REQUESTED => {
                let r: ReservationRequested = event.data_as()?;
                out.push(Statement { sql: self.place.clone(), params: vec![r.reservation.into(), r.location.into()] });
            }
            types::RESERVATION_PAYMENT_SUCCEEDED | types::REFUND_ISSUED => {
                let mut cents = crate::domain::amount_of(event);
                if event.event_type == types::REFUND_ISSUED {
                    cents = -cents;
                }
                out.push(Statement {
                    sql: self.add_for_reservation.clone(),
                    params: vec![day(), cents.into(), reservation()],
                });
            }
            _ => {}
        }
        Ok(())
    }
}

/// `YYYY-MM-DD` (UTC) of a time in Unix microseconds.
pub fn day_of(unix_micros: i64) -> String {
    // Days to a civil date (the proleptic Gregorian calendar), after H. Hinnant's algorithm.
    let days = unix_micros.div_euclid(86_400_000_000) + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_civil_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(951_782_400_000_000), "2000-02-29");
        assert_eq!(day_of(1_796_428_800_000_000 - 1), "2026-12-04");
        assert_eq!(day_of(1_796_428_800_000_000), "2026-12-05");
    }
}
