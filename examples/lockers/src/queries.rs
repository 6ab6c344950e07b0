//! The app's read side: each query reads one projection's tables (the version being served),
//! never the event log, so its cost does not grow with the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use reel_core::{PresenceStore, ReelError, Timestamp};
use serde::Serialize;

use crate::projections::{Availability, EventLog, Naming, Revenue, UnitsTable, NAMES};
use crate::sql::{ReadModel, Value};

/// Which version of each projection queries read: the newest one that has caught up, so a
/// version being rebuilt never serves half-built rows.
pub struct Serving {
    versions: HashMap<&'static str, AtomicU32>,
    schema: Option<String>,
}

impl Serving {
    /// Every projection served at version 1; `schema` for PostgreSQL.
    pub fn new(schema: Option<String>) -> Self {
        Self { versions: NAMES.iter().map(|n| (*n, AtomicU32::new(1))).collect(), schema }
    }

    /// The version served for `name`.
    pub fn version(&self, name: &str) -> u32 {
        self.versions.get(name).map_or(1, |v| v.load(Ordering::Relaxed))
    }

    /// Serves `version` of `name` from now on.
    pub fn serve(&self, name: &str, version: u32) {
        if let Some(v) = self.versions.get(name) {
            v.store(version, Ordering::Relaxed);
        }
    }

    /// The tables of the version served for `name`.
    pub fn naming(&self, name: &str) -> Naming {
        let version = self.version(name);
        match &self.schema {
            Some(schema) => Naming::postgres(schema, version),
            None => Naming::sqlite(version),
        }
    }
}

/// One row of the units table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UnitRow {
    /// The unit's name.
    pub name: String,
    /// Its name for people.
    pub display_name: String,
    /// Where it stands.
    pub location: String,
    /// Its lockers.
    pub lockers: Vec<String>,
    /// Online now.
    pub online: bool,
    /// Round-trip time of its last exchange (ms), when online.
    pub response_ms: Option<u32>,
    /// When it was last heard from (Unix ms); `None`: never.
    pub last_online_ms: Option<i64>,
    /// When it last acknowledged new configuration (Unix ms); `None`: never.
    pub config_pushed_ms: Option<i64>,
    /// Configuration events it holds, and how many there are.
    pub config_held: Option<u64>,
    /// How many configuration events there are for it.
    pub config_events: i64,
    /// `agent` (it runs `reel edge`), `push` or `fetch` (the platform reaches it).
    pub link: String,
    /// Why the platform's last delivery to or fetch from it failed.
    pub link_error: Option<String>,
}

/// A page of a unit's event log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventLogPage {
    /// The rows.
    pub rows: Vec<EventLogRow>,
    /// This page, from 1.
    pub page: i64,
    /// Pages in all.
    pub pages: i64,
    /// Records in all.
    pub total: i64,
}

/// One row of a unit's event log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventLogRow {
    /// Position in the log.
    pub position: i64,
    /// The unit's location.
    pub location: String,
    /// What happened (the event type).
    pub occurrence: String,
    /// The locker, if any.
    pub locker: Option<String>,
    /// When it happened at the unit (Unix ms).
    pub occurred_ms: i64,
    /// When the platform stored it (Unix ms).
    pub recorded_ms: i64,
}

/// Free lockers at one location.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LocationAvailability {
    /// The location.
    pub location: String,
    /// Units there.
    pub units: i64,
    /// Lockers there.
    pub lockers: i64,
    /// Taken at the unit now.
    pub occupied: i64,
    /// Free for the window asked (now when none).
    pub free: i64,
}

/// One locker of a unit, for the reservation form.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LockerAvailability {
    /// The locker.
    pub locker: String,
    /// Taken at the unit now.
    pub occupied: bool,
    /// Free for the window asked.
    pub free: bool,
}

/// Revenue of one location on one day.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RevenueRow {
    /// The location.
    pub location: String,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Cents taken, refunds subtracted.
    pub cents: i64,
}

/// A reservation as the availability projection has it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReservationRow {
    /// Its id.
    pub reservation: String,
    /// The unit.
    pub unit: String,
    /// The locker.
    pub locker: String,
    /// Start (Unix ms).
    pub from_ms: i64,
    /// End (Unix ms).
    pub to_ms: i64,
    /// Price in cents.
    pub amount_cents: i64,
    /// Where it stands.
    pub status: String,
}

/// How the units table is sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitSort {
    /// By name.
    Name,
    /// By location.
    Location,
    /// By response time (offline last).
    Response,
    /// By last online.
    LastOnline,
    /// By last configuration pushed.
    ConfigPushed,
}

impl UnitSort {
    /// From its API name.
    pub fn parse(text: &str) -> Result<Self, ReelError> {
        Ok(match text {
            "name" => Self::Name,
            "location" => Self::Location,
            "response" => Self::Response,
            "last_online" => Self::LastOnline,
            "config_pushed" => Self::ConfigPushed,
            other => {
                return Err(ReelError::InvalidArgument(format!(
                    "sort is name, location, response, last_online or config_pushed, not {other:?}"
                )))
            }
        })
    }
}

/// The queries.
#[derive(Clone)]
pub struct Queries {
    read: ReadModel,
    presence: Arc<dyn PresenceStore>,
    serving: Arc<Serving>,
}

/// Longest event-log page.
pub const MAX_PAGE_SIZE: i64 = 500;

/// The windows in which a reservation holds its locker at `$1`..`$2` (from, to), for SQL.
fn holds(r: &str) -> String {
    format!(
        "{r}.from_us < $2 AND {r}.to_us > $1 AND ({r}.status IN ('confirmed', 'accepted') \
         OR ({r}.status IN ('requested', 'paid') AND {r}.hold_until_us > $3))"
    )
}

impl Queries {
    /// Queries over `read`, with presence from `presence`.
    pub fn new(read: ReadModel, presence: Arc<dyn PresenceStore>, serving: Arc<Serving>) -> Self {
        Self { read, presence, serving }
    }

    /// Which versions are served.
    pub fn serving(&self) -> &Arc<Serving> {
        &self.serving
    }

    /// The units table, sorted.
    pub async fn units(&self, sort: UnitSort, descending: bool) -> Result<Vec<UnitRow>, ReelError> {
        let table = UnitsTable::table(&self.serving.naming("units"));
        let rows = self
            .read
            .rows(&format!("SELECT unit, display_name, location, lockers, config_events FROM {table}"), vec![])
            .await?;
        let presence: HashMap<String, reel_core::DevicePresence> =
            self.presence.devices().await?.into_iter().map(|d| (d.device.clone(), d)).collect();
        let ms = |t: Timestamp| t.unix_micros() / 1_000;
        let mut units: Vec<UnitRow> = rows
            .into_iter()
            .map(|row| {
                let name = row[0].text();
                let seen = presence.get(&name);
                let online = seen.is_some_and(|d| d.state.online);
                UnitRow {
                    display_name: seen.and_then(|d| d.display_name.clone()).unwrap_or_else(|| row[1].text()),
                    location: row[2].text(),
                    lockers: row[3].text().split(',').filter(|l| !l.is_empty()).map(str::to_string).collect(),
                    online,
                    response_ms: if online { seen.and_then(|d| d.rtt_ms) } else { None },
                    last_online_ms: seen.map(|d| ms(d.last_heard_at)).filter(|t| *t > 0),
                    config_pushed_ms: seen.and_then(|d| d.config_acked_at).map(ms),
                    config_held: seen.and_then(|d| d.config_version),
                    config_events: row[4].int(),
                    link: seen.and_then(|d| d.endpoint.as_ref()).map_or("agent", |(_, link)| link.as_str()).to_string(),
                    link_error: seen.and_then(|d| d.link_error.clone()),
                    name,
                }
            })
            .collect();
        units.sort_by(|a, b| {
            let order = match sort {
                UnitSort::Name => a.name.cmp(&b.name),
                UnitSort::Location => a.location.cmp(&b.location),
                UnitSort::Response => {
                    (a.response_ms.is_none(), a.response_ms).cmp(&(b.response_ms.is_none(), b.response_ms))
                }
                UnitSort::LastOnline => a.last_online_ms.cmp(&b.last_online_ms),
                UnitSort::ConfigPushed => a.config_pushed_ms.cmp(&b.config_pushed_ms),
            };
            let order = order.then_with(|| a.name.cmp(&b.name));
            if descending {
                order.reverse()
            } else {
                order
            }
        });
        Ok(units)
    }

    /// A page of a unit's event log, newest first unless `ascending`.
    pub async fn event_log(
        &self,
        unit: &str,
        page: i64,
        size: i64,
        ascending: bool,
    ) -> Result<EventLogPage, ReelError> {
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(ReelError::InvalidArgument(format!("size must be 1 to {MAX_PAGE_SIZE}")));
        }
        if page < 1 {
            return Err(ReelError::InvalidArgument("page starts at 1".into()));
        }
        let table = self.event_log_table();
        let total = self.read.rows(&format!("SELECT COUNT(*) FROM {table} WHERE unit = $1"), vec![unit.into()]).await?;
        let total = total.first().map_or(0, |r| r[0].int());
        let pages = ((total + size - 1) / size).max(1);
        let rows = self.event_log_rows(unit, ascending, size, (page - 1).saturating_mul(size)).await?;
        Ok(EventLogPage { rows, page, pages, total })
    }

    /// Every row of a unit's event log as CSV, oldest first.
    pub async fn event_log_csv(&self, unit: &str) -> Result<String, ReelError> {
        let rows = self.event_log_rows(unit, true, i64::MAX, 0).await?;
        let mut csv = String::from("position,location,occurrence,unit,locker,occurred,recorded\n");
        for row in rows {
            let field = |text: &str| {
                if text.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", text.replace('"', "\"\""))
                } else {
                    text.to_string()
                }
            };
            let time = |ms: i64| reel_core::Timestamp::from_unix_micros(ms * 1_000).to_string();
            csv.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                row.position,
                field(&row.location),
                field(&row.occurrence),
                field(unit),
                field(row.locker.as_deref().unwrap_or("")),
                time(row.occurred_ms),
                time(row.recorded_ms)
            ));
        }
        Ok(csv)
    }

    fn event_log_table(&self) -> String {
        EventLog::table(&self.serving.naming("eventlog"))
    }

    async fn event_log_rows(
        &self,
        unit: &str,
        ascending: bool,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<EventLogRow>, ReelError> {
        let direction = if ascending { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT position, location, occurrence, locker, occurred_us, recorded_us FROM {} WHERE unit = $1 \
             ORDER BY occurred_us {direction}, position {direction} LIMIT $2 OFFSET $3",
            self.event_log_table()
        );
        let rows = self.read.rows(&sql, vec![unit.into(), limit.into(), offset.into()]).await?;
        Ok(rows
            .into_iter()
            .map(|r| EventLogRow {
                position: r[0].int(),
                location: r[1].text(),
                occurrence: r[2].text(),
                locker: match &r[3] {
                    Value::Text(Some(l)) => Some(l.clone()),
                    _ => None,
                },
                occurred_ms: r[4].int() / 1_000,
                recorded_ms: r[5].int() / 1_000,
            })
            .collect())
    }

    /// Free lockers per location for the window `[from, to)` (Unix µs), at `now`.
    pub async fn availability(
        &self,
        from_us: i64,
        to_us: i64,
        now_us: i64,
    ) -> Result<Vec<LocationAvailability>, ReelError> {
        let naming = self.serving.naming("availability");
        let lockers = Availability::lockers_table(&naming);
        let reservations = Availability::reservations_table(&naming);
        let sql = format!(
            "SELECT l.location, COUNT(DISTINCT l.unit), COUNT(*), CAST(SUM(l.occupied) AS BIGINT), \
             CAST(SUM(CASE WHEN l.occupied = 0 AND NOT EXISTS (SELECT 1 FROM {reservations} r WHERE r.unit = l.unit \
             AND r.locker = l.locker AND {}) THEN 1 ELSE 0 END) AS BIGINT) FROM {lockers} l GROUP BY l.location \
             ORDER BY l.location",
            holds("r")
        );
        let rows = self.read.rows(&sql, vec![from_us.into(), to_us.into(), now_us.into()]).await?;
        Ok(rows
            .into_iter()
            .map(|r| LocationAvailability {
                location: r[0].text(),
                units: r[1].int(),
                lockers: r[2].int(),
                occupied: r[3].int(),
                free: r[4].int(),
            })
            .collect())
    }

    /// A unit's lockers, each free or not for `[from, to)` at `now`.
    pub async fn unit_lockers(
        &self,
        unit: &str,
        from_us: i64,
        to_us: i64,
        now_us: i64,
    ) -> Result<Vec<LockerAvailability>, ReelError> {
        let naming = self.serving.naming("availability");
        let lockers = Availability::lockers_table(&naming);
        let reservations = Availability::reservations_table(&naming);
        let sql = format!(
            "SELECT l.locker, l.occupied, (SELECT COUNT(*) FROM {reservations} r WHERE r.unit = l.unit \
             AND r.locker = l.locker AND {}) FROM {lockers} l WHERE l.unit = $4 ORDER BY l.locker",
            holds("r")
        );
        let rows = self.read.rows(&sql, vec![from_us.into(), to_us.into(), now_us.into(), unit.into()]).await?;
        Ok(rows
            .into_iter()
            .map(|r| LockerAvailability {
                locker: r[0].text(),
                occupied: r[1].int() != 0,
                free: r[1].int() == 0 && r[2].int() == 0,
            })
            .collect())
    }

    /// A reservation as projected.
    pub async fn reservation(&self, id: &str) -> Result<Option<ReservationRow>, ReelError> {
        let table = Availability::reservations_table(&self.serving.naming("availability"));
        let sql = format!(
            "SELECT reservation, unit, locker, from_us, to_us, amount_cents, status FROM {table} WHERE reservation = $1"
        );
        let rows = self.read.rows(&sql, vec![id.into()]).await?;
        Ok(rows.into_iter().next().map(|r| ReservationRow {
            reservation: r[0].text(),
            unit: r[1].text(),
            locker: r[2].text(),
            from_ms: r[3].int() / 1_000,
            to_ms: r[4].int() / 1_000,
            amount_cents: r[5].int(),
            status: r[6].text(),
        }))
    }

    /// Revenue per location and day, newest days first.
    pub async fn revenue(&self) -> Result<Vec<RevenueRow>, ReelError> {
        let table = Revenue::table(&self.serving.naming("revenue"));
        let sql = format!("SELECT location, day, cents FROM {table} ORDER BY day DESC, location LIMIT 1000");
        let rows = self.read.rows(&sql, vec![]).await?;
        Ok(rows
            .into_iter()
            .map(|r| RevenueRow { location: r[0].text(), day: r[1].text(), cents: r[2].int() })
            .collect())
    }

    /// Raw rows of a projection's table, ordered by every column: to compare two versions.
    pub async fn dump(&self, table: &str, columns: &str) -> Result<Vec<Vec<Value>>, ReelError> {
        self.read.rows(&format!("SELECT {columns} FROM {table} ORDER BY {columns}"), vec![]).await
    }
}
