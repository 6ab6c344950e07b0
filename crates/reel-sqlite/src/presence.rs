//! Device presence rows and work leases, in the same SQLite file as the events.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reel_core::{
    DevicePresence, Heartbeat, PresenceState, PresenceStore, ReelError, Timestamp, UnitLink, UnitRegistration,
};
use rusqlite::params;

use crate::connection::SharedConnection;

/// Presence of one store file. Cheap to clone. Heartbeats are frequent and each one only
/// replaces the last: they use a connection of their own without an fsync per write, and the
/// heartbeats that arrive while one is being written go together in the next transaction
/// (a fleet's heartbeats are a few hundred a second; one transaction each would queue them
/// behind the file's write lock until their answers took minutes).
#[derive(Clone)]
pub struct SqlitePresenceStore {
    conn: SharedConnection,
    beats: Arc<HeartbeatQueue>,
}

/// Heartbeats waiting to be written, numbered in arrival order.
#[derive(Default)]
struct HeartbeatQueue {
    /// The number of the last heartbeat queued, and those not yet taken by a writer.
    pending: Mutex<(u64, Vec<Heartbeat>)>,
    /// Every heartbeat numbered up to this one is written.
    written: AtomicU64,
}

impl HeartbeatQueue {
    /// Queues a heartbeat; returns its number.
    fn push(&self, heartbeat: Heartbeat) -> u64 {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.0 += 1;
        pending.1.push(heartbeat);
        pending.0
    }

    /// Takes every queued heartbeat, with the number of the last.
    fn take(&self) -> (Vec<Heartbeat>, u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut pending.1), pending.0)
    }

    /// Puts back heartbeats whose write failed, ahead of newer ones, for the next writer.
    fn put_back(&self, mut batch: Vec<Heartbeat>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        batch.append(&mut pending.1);
        pending.1 = batch;
    }
}

impl SqlitePresenceStore {
    pub(crate) fn open(path: &Path) -> Result<Self, ReelError> {
        Ok(Self { conn: SharedConnection::open(path)?, beats: Arc::default() })
    }
}

fn write_heartbeat(conn: &rusqlite::Connection, h: &Heartbeat) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO devices (device, display_name, interval_ms, rtt_ms, last_heard_at, clock_skew_ms,
                              config_version, config_acked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?7 IS NULL THEN NULL ELSE ?5 END)
         ON CONFLICT (device) DO UPDATE SET
            display_name = coalesce(excluded.display_name, display_name),
            interval_ms = excluded.interval_ms,
            rtt_ms = coalesce(excluded.rtt_ms, rtt_ms),
            last_heard_at = max(last_heard_at, excluded.last_heard_at),
            clock_skew_ms = excluded.clock_skew_ms,
            config_acked_at = CASE WHEN excluded.config_version > coalesce(config_version, -1)
                                   THEN excluded.last_heard_at ELSE config_acked_at END,
            config_version = coalesce(excluded.config_version, config_version)",
    )?
    .execute(params![
        h.device,
        h.display_name,
        h.interval.as_millis() as i64,
        h.rtt_ms,
        h.received_at.unix_micros(),
        h.clock_skew_ms,
        h.config_version.map(|v| v as i64),
    ])
}

fn micros(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::unix_micros)
}

#[async_trait]
impl PresenceStore for SqlitePresenceStore {
    async fn record_heartbeat(&self, h: &Heartbeat) -> Result<(), ReelError> {
        let number = self.beats.push(h.clone());
        let beats = self.beats.clone();
        self.conn
            .run("recording heartbeats", move |conn| {
                // An earlier turn may have written this one with its own.
                if beats.written.load(Ordering::Acquire) >= number {
                    return Ok(());
                }
                let (batch, last) = beats.take();
                if batch.is_empty() {
                    return Ok(());
                }
                let written = (|| {
                    let tx = conn.unchecked_transaction()?;
                    for heartbeat in &batch {
                        write_heartbeat(&tx, heartbeat)?;
                    }
                    tx.commit()
                })();
                match written {
                    Ok(()) => {
                        beats.written.fetch_max(last, Ordering::AcqRel);
                        Ok(())
                    }
                    Err(e) => {
                        beats.put_back(batch);
                        Err(e)
                    }
                }
            })
            .await?;
        Ok(())
    }

    async fn register_unit(&self, unit: &UnitRegistration) -> Result<(), ReelError> {
        let unit = unit.clone();
        self.conn
            .run("registering a unit", move |conn| {
                conn.prepare_cached(
                    "INSERT INTO devices (device, display_name, interval_ms, last_heard_at, clock_skew_ms, endpoint, link)
                     VALUES (?1, ?2, ?3, 0, 0, ?4, ?5)
                     ON CONFLICT (device) DO UPDATE SET
                        display_name = coalesce(excluded.display_name, display_name),
                        interval_ms = excluded.interval_ms, endpoint = excluded.endpoint, link = excluded.link,
                        link_error = NULL",
                )?
                .execute(params![
                    unit.device,
                    unit.display_name,
                    unit.interval.as_millis() as i64,
                    unit.endpoint,
                    unit.link.as_str()
                ])
            })
            .await?;
        Ok(())
    }

    async fn forget_device(&self, device: &str) -> Result<bool, ReelError> {
        let device = device.to_string();
        let removed = self
            .conn
            .run("forgetting a device", move |conn| {
                conn.prepare_cached("DELETE FROM devices WHERE device = ?1")?.execute(params![device])
            })
            .await?;
        Ok(removed == 1)
    }

    async fn save_fetch_position(&self, device: &str, position: u64) -> Result<(), ReelError> {
        let device = device.to_string();
        self.conn
            .run("saving a fetch position", move |conn| {
                conn.prepare_cached("UPDATE devices SET fetch_position = ?2 WHERE device = ?1 AND fetch_position < ?2")?
                    .execute(params![device, position as i64])
            })
            .await?;
        Ok(())
    }

    async fn save_link_error(&self, device: &str, error: Option<&str>) -> Result<(), ReelError> {
        let (device, error) = (device.to_string(), error.map(str::to_string));
        self.conn
            .run("saving a unit's link error", move |conn| {
                conn.prepare_cached("UPDATE devices SET link_error = ?2 WHERE device = ?1")?
                    .execute(params![device, error])
            })
            .await?;
        Ok(())
    }

    async fn devices(&self) -> Result<Vec<DevicePresence>, ReelError> {
        self.conn
            .run("listing devices", |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT device, display_name, interval_ms, rtt_ms, last_heard_at, clock_skew_ms, config_version,
                            config_acked_at, online, session, changes, since, endpoint, link, fetch_position,
                            link_error
                     FROM devices ORDER BY device",
                )?;
                let rows = statement.query_map([], |r| {
                    Ok(DevicePresence {
                        device: r.get(0)?,
                        display_name: r.get(1)?,
                        interval_ms: r.get::<_, i64>(2)? as u64,
                        rtt_ms: r.get(3)?,
                        last_heard_at: Timestamp::from_unix_micros(r.get(4)?),
                        clock_skew_ms: r.get(5)?,
                        config_version: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                        config_acked_at: r.get::<_, Option<i64>>(7)?.map(Timestamp::from_unix_micros),
                        state: PresenceState {
                            online: r.get(8)?,
                            session: r.get::<_, i64>(9)? as u64,
                            changes: r.get::<_, i64>(10)? as u64,
                            since: r.get::<_, Option<i64>>(11)?.map(Timestamp::from_unix_micros),
                        },
                        endpoint: match (r.get::<_, Option<String>>(12)?, r.get::<_, Option<String>>(13)?) {
                            (Some(endpoint), Some(link)) => Some((endpoint, link)),
                            _ => None,
                        }
                        .map(|(endpoint, link)| (endpoint, UnitLink::parse(&link).unwrap_or(UnitLink::Push))),
                        fetch_position: r.get::<_, i64>(14)? as u64,
                        link_error: r.get(15)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn save_presence_state(&self, device: &str, state: &PresenceState) -> Result<(), ReelError> {
        let (device, s) = (device.to_string(), *state);
        self.conn
            .run("saving a device's presence", move |conn| {
                conn.prepare_cached(
                    "UPDATE devices SET online = ?2, session = ?3, changes = ?4, since = ?5
                     WHERE device = ?1 AND changes <= ?4",
                )?
                .execute(params![
                    device,
                    s.online,
                    s.session as i64,
                    s.changes as i64,
                    micros(s.since)
                ])
            })
            .await?;
        Ok(())
    }

    async fn claim_partition(
        &self,
        partition: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, ReelError> {
        let (partition, owner) = (partition.to_string(), owner.to_string());
        let expires = now.unix_micros() + ttl.as_micros() as i64;
        let taken = self
            .conn
            .run("claiming a work partition", move |conn| {
                conn.prepare_cached(
                    "INSERT INTO work_leases (name, owner, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
                     WHERE work_leases.owner = excluded.owner OR work_leases.expires_at <= ?4",
                )?
                .execute(params![partition, owner, expires, now.unix_micros()])
            })
            .await?;
        Ok(taken == 1)
    }

    async fn release_partition(&self, partition: &str, owner: &str) -> Result<(), ReelError> {
        let (partition, owner) = (partition.to_string(), owner.to_string());
        self.conn
            .run("releasing a work partition", move |conn| {
                conn.prepare_cached("DELETE FROM work_leases WHERE name = ?1 AND owner = ?2")?
                    .execute(params![partition, owner])
            })
            .await?;
        Ok(())
    }

    async fn count_claims(&self, prefix: &str, now: Timestamp) -> Result<usize, ReelError> {
        let prefix = prefix.to_string();
        self.conn
            .run("counting work leases", move |conn| {
                conn.prepare_cached(
                    "SELECT count(*) FROM work_leases WHERE substr(name, 1, length(?1)) = ?1 AND expires_at > ?2",
                )?
                .query_row(params![prefix, now.unix_micros()], |r| r.get::<_, i64>(0))
            })
            .await
            .map(|n| n as usize)
    }
}
