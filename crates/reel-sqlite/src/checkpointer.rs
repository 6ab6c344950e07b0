//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that pushes the WAL past 1,000 pages:
//! that append then also copies the WAL into the main file and fsyncs it before it is answered.
//! With `CheckpointMode::Background` the writer turns the automatic checkpoint off and
//! nudges this thread after its commits instead; it runs a PASSIVE
//! checkpoint (never blocks the writer or readers) on its own connection, at most every
//! [`PACE`].
//!
//! Under steady load a PASSIVE checkpoint never catches up with the last commit, and SQLite
//! starts the WAL over only after one that did. So once the WAL holds [`CATCH_UP_FRAMES`], this
//! thread checkpoints back to back (no pacing) until at most [`SMALL_REMAINDER`] frames are left,
//! then raises [`CheckpointSignal::finish`] and stays out of the way: the writer, after answering
//! its next group, copies that rest itself, and its next transaction starts the WAL over. When
//! the writer outruns the copy (64 writers on a slow disk do), the writer's own bound
//! (`BACKGROUND_WAL_BOUND_FRAMES`, twice this threshold) finishes it instead. Either way the
//! appends queued meanwhile wait for one copy of what this thread left, not of the whole WAL.
//! After each round this thread also starts writing the copied pages out of the OS cache, so
//! the fsync that ends the writer's copy has little left to write (see `start_writeback`).
//! Commits stay exactly as durable: each one is fsync'd in the WAL before it is answered.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reel_core::ReelError;

use crate::schema::open_connection;

/// Shortest time between two checkpoints while the WAL is small.
pub const PACE: Duration = Duration::from_millis(100);

/// WAL size (frames of 4 KiB) from which this thread catches up and asks the writer to finish.
pub const CATCH_UP_FRAMES: i64 = 8_192;

/// Frames left uncopied below which the writer is asked to finish the copy.
pub const SMALL_REMAINDER: i64 = 1_024;

/// Most back-to-back checkpoints in one catch-up (a writer outrunning the copy is bounded by
/// the writer's own fallback instead).
const MAX_CATCH_UP_ROUNDS: u32 = 16;

/// What the checkpoint thread and the writer share.
#[derive(Default)]
pub struct CheckpointSignal {
    /// Set when only a small rest of a large WAL is left to copy.
    pub finish: AtomicBool,
    /// Held around every checkpoint of either. SQLite runs one checkpoint at a time and answers
    /// a second with "busy" at once, having copied nothing; under load the writer's copies then
    /// kept meeting the thread's and the WAL grew far past its bound (measured: 170–250 MB
    /// where the bound is 64 MiB). The writer holds it from its copy until its next commit,
    /// which is the one that starts the WAL over (a checkpoint running at that moment would
    /// keep it from doing so).
    pub turn: Mutex<()>,
}

/// Runs until every nudge sender is gone; checkpoints after nudges, at most every [`PACE`]
/// unless catching up, and once more at the end.
pub fn run_checkpointer(path: &Path, nudges: Receiver<()>, signal: Arc<CheckpointSignal>) -> Result<(), ReelError> {
    let conn = open_connection(path, false)?;
    // Only to start writing copied pages out early (see `start_writeback`).
    let main_file = std::fs::File::open(path)
        .map_err(|e| ReelError::storage(format!("opening {} for checkpoints", path.display()), e))?;
    let mut last = Instant::now() - PACE;
    let mut pending = false;
    // Whether the WAL was large at the last checkpoint: then the next one does not wait for PACE.
    let mut catching_up = false;
    loop {
        let wait = if !pending {
            Duration::from_secs(3600)
        } else if signal.finish.load(Ordering::Acquire) {
            // Nothing to do until the writer has copied the rest; its commit after that starts
            // the WAL over, which nudges this thread again. (Polling here woke the thread every
            // millisecond for as long as no append came.)
            Duration::from_secs(3600)
        } else if catching_up {
            Duration::ZERO
        } else {
            PACE.saturating_sub(last.elapsed())
        };
        match nudges.recv_timeout(wait) {
            Ok(()) => pending = true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // While the writer has not yet finished the copy it was asked to, a checkpoint here
        // would hold SQLite's checkpoint lock and make the writer's attempt return at once.
        let writer_finishing = signal.finish.load(Ordering::Acquire);
        if pending && !writer_finishing && (catching_up || last.elapsed() >= PACE) {
            let mut progress = checkpoint_in_turn(&conn, &signal);
            let mut rounds = 0;
            catching_up = false;
            while let Some(p) = progress {
                start_writeback(&main_file, p);
                if p.frames < CATCH_UP_FRAMES {
                    break;
                }
                catching_up = true;
                if p.frames - p.copied <= SMALL_REMAINDER {
                    signal.finish.store(true, Ordering::Release);
                    break;
                }
                if rounds >= MAX_CATCH_UP_ROUNDS {
                    break;
                }
                rounds += 1;
                progress = checkpoint_in_turn(&conn, &signal);
            }
            last = Instant::now();
            pending = false;
        }
    }
    checkpoint_in_turn(&conn, &signal);
    Ok(())
}

/// Starts writing the pages a round copied into the main file out to the disk, without waiting
/// for them. SQLite fsyncs the main file only after a checkpoint that reached the end of the
/// WAL, which under load is only the writer's final copy; that fsync used to write every page
/// this thread had copied since the WAL last started over (4.3 ms at p50, with every append
/// queued behind it). With the writes under way early, it took 1.5–1.6 ms. An fdatasync here
/// instead made commits slower (its flushes met the writer's WAL fsyncs), so this only starts
/// the writes. Durability is SQLite's as before: nothing relies on this having finished.
fn start_writeback(main_file: &std::fs::File, progress: Progress) {
    if progress.copied == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor belongs to `main_file`, which outlives the call; offset 0 and
        // length 0 mean the whole file, and the call only schedules writes of cached pages.
        let rc = unsafe { libc::sync_file_range(main_file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not start writing checkpointed pages out");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = main_file;
}

/// A checkpoint while holding [`CheckpointSignal::turn`] (a poisoned lock is still a lock).
fn checkpoint_in_turn(conn: &rusqlite::Connection, signal: &CheckpointSignal) -> Option<Progress> {
    let _turn = signal.turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    checkpoint(conn)
}

/// Frames in the WAL and frames of it copied into the main file.
#[derive(Clone, Copy, Debug)]
struct Progress {
    frames: i64,
    copied: i64,
}

fn checkpoint(conn: &rusqlite::Connection) -> Option<Progress> {
    // (busy, frames in the WAL, frames copied): a busy or partial one is simply tried again later.
    let outcome = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match outcome {
        Ok((_, frames, copied)) if frames >= 0 => Some(Progress { frames, copied }),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "background WAL checkpoint failed; the next one tries again");
            None
        }
    }
}
