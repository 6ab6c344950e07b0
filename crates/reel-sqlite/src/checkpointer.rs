//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that pushes the WAL past 1,000 pages:
//! that append then also copies the WAL into the main file and fsyncs it before it is answered.
//! With `CheckpointMode::Background` the writer turns the automatic checkpoint off and
//! nudges this thread after its commits instead; it runs a PASSIVE
//! checkpoint (never blocks the writer or readers) on its own connection, at most every
//! [`PACE`]. Under steady load it never catches up with the last commit, so the WAL would never
//! start over; the writer therefore finishes the copy itself once the WAL passes 4,000 frames.
//! Commits stay exactly as durable: each one is fsync'd in the WAL before it is answered.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use reel_core::ReelError;

use crate::schema::open_connection;

/// Shortest time between two checkpoints.
pub const PACE: Duration = Duration::from_millis(100);

/// Runs until every nudge sender is gone; checkpoints after nudges, at most every [`PACE`], and
/// once more at the end.
pub fn run_checkpointer(path: &Path, nudges: Receiver<()>) -> Result<(), ReelError> {
    let conn = open_connection(path, false)?;
    let mut last = Instant::now() - PACE;
    let mut pending = false;
    loop {
        let wait = if pending { PACE.saturating_sub(last.elapsed()) } else { Duration::from_secs(3600) };
        match nudges.recv_timeout(wait) {
            Ok(()) => pending = true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if pending && last.elapsed() >= PACE {
            checkpoint(&conn);
            last = Instant::now();
            pending = false;
        }
    }
    checkpoint(&conn);
    Ok(())
}

fn checkpoint(conn: &rusqlite::Connection) {
    // (busy, frames in the WAL, frames copied): a busy or partial one is simply tried again later.
    let outcome = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "background WAL checkpoint failed; the next one tries again");
    }
}
