//! Aggregate snapshots in the same SQLite file as the events.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use reel_core::{ReelError, Snapshot, SnapshotStore, StreamName, StreamVersion, Timestamp};
use rusqlite::{params, OptionalExtension};

use crate::connection::SharedConnection;
use crate::reader::ReaderPool;

/// Snapshots of one store file. Cheap to clone. Loads use the store's reader pool (they happen
/// on every aggregate load, concurrently); saves use a connection of their own.
#[derive(Clone)]
pub struct SqliteSnapshotStore {
    conn: SharedConnection,
    readers: Arc<ReaderPool>,
}

impl SqliteSnapshotStore {
    pub(crate) fn open(path: &Path, readers: Arc<ReaderPool>) -> Result<Self, ReelError> {
        // A lost snapshot only costs a longer load: no fsync per snapshot.
        Ok(Self { conn: SharedConnection::open(path)?, readers })
    }
}

#[async_trait]
impl SnapshotStore for SqliteSnapshotStore {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), ReelError> {
        let s = snapshot.clone();
        self.conn.run("saving a snapshot", move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO snapshots (stream, version, schema_version, data, taken_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![s.stream.as_str(), s.version.0 as i64, s.schema_version, s.data, s.taken_at.unix_micros()])
        })
        .await?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, ReelError> {
        let name = stream.as_str().to_string();
        let stream = stream.clone();
        self.readers
            .run(move |_, conn| {
                conn.prepare_cached("SELECT version, schema_version, data, taken_at FROM snapshots WHERE stream = ?1")
                    .and_then(|mut s| {
                        s.query_row(params![name], |r| {
                            Ok(Snapshot {
                                stream: stream.clone(),
                                version: StreamVersion(r.get::<_, i64>(0)? as u64),
                                schema_version: r.get(1)?,
                                data: r.get(2)?,
                                taken_at: Timestamp::from_unix_micros(r.get(3)?),
                            })
                        })
                        .optional()
                    })
                    .map_err(|e| ReelError::storage("loading a snapshot", e))
            })
            .await
    }
}
