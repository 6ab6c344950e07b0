//! Opening a store file: pragmas, the Reel marker, versioned migrations.

use std::path::Path;

use reel_core::ReelError;
use rusqlite::{Connection, OpenFlags};

/// `PRAGMA application_id` of a Reel store ("REEL").
const APPLICATION_ID: i32 = 0x5245_454c;

/// Migrations in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: streams and events. `position` is the rowid, assigned by the single writer as head + 1,
    // so positions are gap-free and commit order equals position order. No index on the random
    // event id: idempotency is checked per stream (see writer.rs).
    "CREATE TABLE streams (
        stream_id INTEGER PRIMARY KEY,
        name      TEXT NOT NULL UNIQUE,
        category  TEXT NOT NULL,
        version   INTEGER NOT NULL
     );
     CREATE INDEX streams_by_category ON streams(category, name);
     CREATE TABLE events (
        position       INTEGER PRIMARY KEY,
        stream_id      INTEGER NOT NULL,
        stream_version INTEGER NOT NULL,
        event_id       BLOB NOT NULL,
        event_type     TEXT NOT NULL,
        data           BLOB NOT NULL,
        metadata       TEXT,
        recorded_at    INTEGER NOT NULL
     );
     CREATE UNIQUE INDEX events_by_stream ON events(stream_id, stream_version);",
    // 2: subscriptions (one row per subscriber id), with room for a worker lease.
    "CREATE TABLE subscriptions (
        id                    TEXT PRIMARY KEY,
        group_name            TEXT NOT NULL,
        run_mode              TEXT NOT NULL,
        status                TEXT NOT NULL,
        position              INTEGER NOT NULL,
        retry_attempt         INTEGER NOT NULL,
        error_message         TEXT,
        error_previous_status TEXT,
        paused_from           TEXT,
        last_saved_at         INTEGER NOT NULL,
        lease_owner           TEXT,
        lease_expires_at      INTEGER,
        revision              INTEGER NOT NULL DEFAULT 0,
        error_position        INTEGER
     );
     CREATE TABLE parked_events (
        subscription_id TEXT NOT NULL,
        position        INTEGER NOT NULL,
        event_id        BLOB NOT NULL,
        event_type      TEXT NOT NULL,
        error           TEXT NOT NULL,
        parked_at       INTEGER NOT NULL,
        PRIMARY KEY (subscription_id, position)
     );",
    // 3: the latest aggregate snapshot per stream.
    "CREATE TABLE snapshots (
        stream         TEXT PRIMARY KEY,
        version        INTEGER NOT NULL,
        schema_version INTEGER NOT NULL,
        data           BLOB NOT NULL,
        taken_at       INTEGER NOT NULL
     );",
    // 4: when a lease holder last renewed (shown to operators beside the owner).
    "ALTER TABLE subscriptions ADD COLUMN lease_renewed_at INTEGER;",
    // 5: the latest warning a subscriber reported while it kept running, and when.
    "ALTER TABLE subscriptions ADD COLUMN warning_message TEXT;
     ALTER TABLE subscriptions ADD COLUMN warning_at INTEGER;",
    // 6: device presence (a row per device, updated by heartbeats) and the leases that split
    // presence work between worker processes. Units without the agent are registered with the
    // endpoint the platform pings and pushes configuration to, or fetches events from.
    "CREATE TABLE devices (
        device          TEXT PRIMARY KEY,
        display_name    TEXT,
        interval_ms     INTEGER NOT NULL,
        rtt_ms          INTEGER,
        last_heard_at   INTEGER NOT NULL,
        clock_skew_ms   INTEGER NOT NULL,
        config_version  INTEGER,
        config_acked_at INTEGER,
        online          INTEGER NOT NULL DEFAULT 0,
        session         INTEGER NOT NULL DEFAULT 0,
        changes         INTEGER NOT NULL DEFAULT 0,
        since           INTEGER,
        endpoint        TEXT,
        link            TEXT,
        fetch_position  INTEGER NOT NULL DEFAULT 0,
        link_error      TEXT
     );
     CREATE TABLE work_leases (
        name       TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        expires_at INTEGER NOT NULL
     );",
    // 7: tags. Each event's tags are kept with it (a JSON array, NULL when none) and indexed by
    // tag then position, which serves queries and append conditions (tag_index.rs). Existing
    // events have no tags, so the index starts empty.
    "ALTER TABLE events ADD COLUMN tags TEXT;
     CREATE TABLE event_tags (
        tag      TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (tag, position)
     ) WITHOUT ROWID;",
];

/// Newest schema version this build knows.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

fn storage<'a>(path: &'a Path, what: &str) -> impl Fn(rusqlite::Error) -> ReelError + 'a {
    let what = what.to_string();
    move |e| ReelError::storage(format!("{what} {}", path.display()), e)
}

/// Opens (creating if needed) the store file and brings its schema up to date.
pub fn open_and_migrate(path: &Path) -> Result<Connection, ReelError> {
    if path.is_dir() {
        return Err(ReelError::InvalidArgument(format!(
            "store path {} is a directory; give a file path such as {}/reel.db",
            path.display(),
            path.display()
        )));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| ReelError::storage(format!("creating directory {}", parent.display()), e))?;
    }
    let mut conn = open_connection(path, false)?;
    enable_wal(&conn).map_err(storage(path, "enabling WAL on"))?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Switches a new file to WAL mode. Two processes creating the same file at once both try; the
/// switch needs the file to itself, and SQLite answers "database is locked" at once instead of
/// calling the busy handler (it would deadlock otherwise), so the loser retries for a while.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Page cache of a reading connection: hot streams and index pages stay in memory.
pub const READER_CACHE_KIB: i64 = 32 * 1024;

/// SQLite's default page cache: the writer's, and a reader's during a scan of the whole log,
/// which reads every page once (through a large cache each page lands in memory that has gone
/// cold in the CPU's caches; `reel bench read` measured 4–8 % on a full scan).
pub const SMALL_CACHE_KIB: i64 = 2 * 1024;

/// Opens one more connection to an existing store (writer or reader).
pub fn open_connection(path: &Path, read_only: bool) -> Result<Connection, ReelError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(storage(path, "opening"))?;
    // synchronous=FULL: a commit returns only after the WAL is fsync'd (durable before acknowledged).
    // A big page cache helps readers; the writer keeps SQLite's default, because every commit
    // walks the writer's whole cache (pcache1TruncateUnsafe) and a big one slows each append.
    let cache_kib = if read_only { READER_CACHE_KIB } else { SMALL_CACHE_KIB };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL;
         PRAGMA cache_size = -{cache_kib};
         PRAGMA temp_store = MEMORY;"
    ))
    .map_err(storage(path, "configuring"))?;
    conn.busy_handler(Some(wait_for_lock)).map_err(storage(path, "configuring"))?;
    Ok(conn)
}

/// How a connection waits for the write lock another connection holds (the appender and a
/// subscription saving its position share one file): SQLite's own `busy_timeout` sleeps 1, 2,
/// 5, 10 … up to 100 ms between tries, so a lock held for a millisecond could cost the waiter
/// tens of milliseconds. This retries every 100 µs for the first 10 ms, then every millisecond,
/// and gives up ("database is locked") after about 10 s, as before.
pub(crate) fn wait_for_lock(attempt: i32) -> bool {
    const FINE_TRIES: i32 = 100;
    const COARSE_TRIES: i32 = 10_000;
    let pause = match attempt {
        a if a < FINE_TRIES => std::time::Duration::from_micros(100),
        a if a < FINE_TRIES + COARSE_TRIES => std::time::Duration::from_millis(1),
        _ => return false,
    };
    std::thread::sleep(pause);
    true
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), ReelError> {
    let err = storage(path, "migrating");
    // An up-to-date store opens without taking the write lock (another process may hold it).
    let current = |conn: &Connection| -> rusqlite::Result<bool> {
        let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(app_id == APPLICATION_ID && version == SCHEMA_VERSION)
    };
    if current(conn).map_err(&err)? {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(&err)?;
    let app_id: i32 = tx.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(&err)?;
    let version: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(&err)?;
    let has_tables: bool =
        tx.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0)).map_err(&err)?;
    if app_id != APPLICATION_ID && (app_id != 0 || has_tables) {
        return Err(ReelError::InvalidArgument(format!(
            "{} is an SQLite database but not a Reel store",
            path.display()
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(ReelError::SchemaTooNew { found: version, supported: SCHEMA_VERSION });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tracing::info!(path = %path.display(), to = index + 1, "migrating store schema");
        tx.execute_batch(sql).map_err(&err)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(&err)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(&err)?;
    tx.commit().map_err(&err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_newer_schema_and_foreign_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reel.db");
        drop(open_and_migrate(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(conn);
        assert!(matches!(open_and_migrate(&path), Err(ReelError::SchemaTooNew { .. })));

        let other = dir.path().join("other.db");
        Connection::open(&other).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
        let err = open_and_migrate(&other).unwrap_err();
        assert!(err.to_string().contains("not a Reel store"), "{err}");

        let err = open_and_migrate(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[test]
    fn connections_are_durable_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reel.db");
        drop(open_and_migrate(&path).unwrap());
        let writer = open_connection(&path, false).unwrap();
        let synchronous: i64 = writer.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(synchronous, 2, "commits must fsync (synchronous = FULL)");
        let mode: String = writer.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn reopening_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/reel.db");
        drop(open_and_migrate(&path).unwrap());
        let conn = open_and_migrate(&path).unwrap();
        let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
