//! Aggregate snapshots in the store's schema.

use async_trait::async_trait;
use reel_core::{ReelError, Snapshot, SnapshotStore, StreamName, StreamVersion, Timestamp};

use crate::PostgresStore;

#[async_trait]
impl SnapshotStore for PostgresStore {
    async fn save_snapshot(&self, s: &Snapshot) -> Result<(), ReelError> {
        let schema = self.schema();
        self.reader()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {schema}.snapshots (stream, version, schema_version, data, taken_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (stream) DO UPDATE SET version = $2, schema_version = $3, data = $4, taken_at = $5"
                ),
                &[&s.stream.as_str(), &(s.version.0 as i64), &(s.schema_version as i32), &s.data, &s.taken_at.unix_micros()],
            )
            .await
            .map_err(|e| crate::storage_error("saving a snapshot", e))?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, ReelError> {
        let schema = self.schema();
        let row = self
            .reader()
            .await?
            .query_opt(
                &format!("SELECT version, schema_version, data, taken_at FROM {schema}.snapshots WHERE stream = $1"),
                &[&stream.as_str()],
            )
            .await
            .map_err(|e| crate::storage_error("loading a snapshot", e))?;
        Ok(row.map(|r| Snapshot {
            stream: stream.clone(),
            version: StreamVersion(r.get::<_, i64>(0) as u64),
            schema_version: r.get::<_, i32>(1) as u32,
            data: r.get(2),
            taken_at: Timestamp::from_unix_micros(r.get(3)),
        }))
    }
}
