//! Device presence rows and work leases in the store's schema.

use std::time::Duration;

use async_trait::async_trait;
use reel_core::{
    DevicePresence, Heartbeat, PresenceState, PresenceStore, ReelError, Timestamp, UnitLink, UnitRegistration,
};

use crate::PostgresStore;

#[async_trait]
impl PresenceStore for PostgresStore {
    async fn record_heartbeat(&self, h: &Heartbeat) -> Result<(), ReelError> {
        let schema = self.schema();
        self.heartbeat_client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {schema}.devices AS d (device, display_name, interval_ms, rtt_ms, last_heard_at,
                                                     clock_skew_ms, config_version, config_acked_at)
                     VALUES ($1, $2, $3, $4, $5::bigint, $6, $7::bigint, CASE WHEN $7::bigint IS NULL THEN NULL ELSE $5::bigint END)
                     ON CONFLICT (device) DO UPDATE SET
                        display_name = coalesce(excluded.display_name, d.display_name),
                        interval_ms = excluded.interval_ms,
                        rtt_ms = coalesce(excluded.rtt_ms, d.rtt_ms),
                        last_heard_at = greatest(d.last_heard_at, excluded.last_heard_at),
                        clock_skew_ms = excluded.clock_skew_ms,
                        config_acked_at = CASE WHEN excluded.config_version > coalesce(d.config_version, -1)
                                               THEN excluded.last_heard_at ELSE d.config_acked_at END,
                        config_version = coalesce(excluded.config_version, d.config_version)"
                ),
                &[
                    &h.device,
                    &h.display_name,
                    &(h.interval.as_millis() as i64),
                    &h.rtt_ms.map(|v| v as i32),
                    &h.received_at.unix_micros(),
                    &h.clock_skew_ms,
                    &h.config_version.map(|v| v as i64),
                ],
            )
            .await
            .map_err(|e| crate::storage_error("recording a heartbeat", e))?;
        Ok(())
    }

    async fn register_unit(&self, unit: &UnitRegistration) -> Result<(), ReelError> {
        let schema = self.schema();
        self.reader()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {schema}.devices AS d (device, display_name, interval_ms, last_heard_at, clock_skew_ms,
                                                     endpoint, link)
                     VALUES ($1, $2, $3, 0, 0, $4, $5)
                     ON CONFLICT (device) DO UPDATE SET
                        display_name = coalesce(excluded.display_name, d.display_name),
                        interval_ms = excluded.interval_ms, endpoint = excluded.endpoint, link = excluded.link,
                        link_error = NULL"
                ),
                &[
                    &unit.device,
                    &unit.display_name,
                    &(unit.interval.as_millis() as i64),
                    &unit.endpoint,
                    &unit.link.as_str(),
                ],
            )
            .await
            .map_err(|e| crate::storage_error("registering a unit", e))?;
        Ok(())
    }

    async fn forget_device(&self, device: &str) -> Result<bool, ReelError> {
        let schema = self.schema();
        let removed = self
            .reader()
            .await?
            .execute(&format!("DELETE FROM {schema}.devices WHERE device = $1"), &[&device])
            .await
            .map_err(|e| crate::storage_error("forgetting a device", e))?;
        Ok(removed == 1)
    }

    async fn save_fetch_position(&self, device: &str, position: u64) -> Result<(), ReelError> {
        let schema = self.schema();
        self.reader()
            .await?
            .execute(
                &format!("UPDATE {schema}.devices SET fetch_position = $2 WHERE device = $1 AND fetch_position < $2"),
                &[&device, &(position as i64)],
            )
            .await
            .map_err(|e| crate::storage_error("saving a fetch position", e))?;
        Ok(())
    }

    async fn save_link_error(&self, device: &str, error: Option<&str>) -> Result<(), ReelError> {
        let schema = self.schema();
        self.reader()
            .await?
            .execute(&format!("UPDATE {schema}.devices SET link_error = $2 WHERE device = $1"), &[&device, &error])
            .await
            .map_err(|e| crate::storage_error("saving a unit's link error", e))?;
        Ok(())
    }

    async fn devices(&self) -> Result<Vec<DevicePresence>, ReelError> {
        let schema = self.schema();
        let rows = self
            .reader()
            .await?
            .query(
                &format!(
                    "SELECT device, display_name, interval_ms, rtt_ms, last_heard_at, clock_skew_ms, config_version,
                            config_acked_at, online, session, changes, since, endpoint, link, fetch_position,
                            link_error
                     FROM {schema}.devices ORDER BY device"
                ),
                &[],
            )
            .await
            .map_err(|e| crate::storage_error("listing devices", e))?;
        Ok(rows
            .iter()
            .map(|r| DevicePresence {
                device: r.get(0),
                display_name: r.get(1),
                interval_ms: r.get::<_, i64>(2) as u64,
                rtt_ms: r.get::<_, Option<i32>>(3).map(|v| v as u32),
                last_heard_at: Timestamp::from_unix_micros(r.get(4)),
                clock_skew_ms: r.get(5),
                config_version: r.get::<_, Option<i64>>(6).map(|v| v as u64),
                config_acked_at: r.get::<_, Option<i64>>(7).map(Timestamp::from_unix_micros),
                state: PresenceState {
                    online: r.get(8),
                    session: r.get::<_, i64>(9) as u64,
                    changes: r.get::<_, i64>(10) as u64,
                    since: r.get::<_, Option<i64>>(11).map(Timestamp::from_unix_micros),
                },
                endpoint: match (r.get::<_, Option<String>>(12), r.get::<_, Option<String>>(13)) {
                    (Some(endpoint), Some(link)) => Some((endpoint, UnitLink::parse(&link).unwrap_or(UnitLink::Push))),
                    _ => None,
                },
                fetch_position: r.get::<_, i64>(14) as u64,
                link_error: r.get(15),
            })
            .collect())
    }

    async fn save_presence_state(&self, device: &str, s: &PresenceState) -> Result<(), ReelError> {
        let schema = self.schema();
        self.reader()
            .await?
            .execute(
                &format!(
                    "UPDATE {schema}.devices SET online = $2, session = $3, changes = $4, since = $5
                     WHERE device = $1 AND changes <= $4"
                ),
                &[&device, &s.online, &(s.session as i64), &(s.changes as i64), &s.since.map(Timestamp::unix_micros)],
            )
            .await
            .map_err(|e| crate::storage_error("saving a device's presence", e))?;
        Ok(())
    }

    async fn claim_partition(
        &self,
        partition: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, ReelError> {
        let schema = self.schema();
        let expires = now.unix_micros() + ttl.as_micros() as i64;
        let taken = self
            .reader()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {schema}.work_leases AS l (name, owner, expires_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
                     WHERE l.owner = excluded.owner OR l.expires_at <= $4"
                ),
                &[&partition, &owner, &expires, &now.unix_micros()],
            )
            .await
            .map_err(|e| crate::storage_error("claiming a work partition", e))?;
        Ok(taken == 1)
    }

    async fn release_partition(&self, partition: &str, owner: &str) -> Result<(), ReelError> {
        let schema = self.schema();
        self.reader()
            .await?
            .execute(&format!("DELETE FROM {schema}.work_leases WHERE name = $1 AND owner = $2"), &[&partition, &owner])
            .await
            .map_err(|e| crate::storage_error("releasing a work partition", e))?;
        Ok(())
    }

    async fn count_claims(&self, prefix: &str, now: Timestamp) -> Result<usize, ReelError> {
        let schema = self.schema();
        let row = self
            .reader()
            .await?
            .query_one(
                &format!(
                    "SELECT count(*) FROM {schema}.work_leases WHERE left(name, length($1)) = $1 AND expires_at > $2"
                ),
                &[&prefix, &now.unix_micros()],
            )
            .await
            .map_err(|e| crate::storage_error("counting work leases", e))?;
        Ok(row.get::<_, i64>(0) as usize)
    }
}
