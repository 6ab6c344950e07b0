//! The single writer thread and its group commit.
//!
//! Every append goes through one thread that owns the only write connection. It takes the first
//! waiting job, gathers every other job already queued (up to a bound), and runs them all in one
//! `BEGIN IMMEDIATE … COMMIT`, so concurrent callers share one fsync. Each request keeps its own
//! atomicity: all of its checks run before any of its rows are written, and a failed check
//! rejects only that request. Positions are `head + 1` inside the write lock, so they are
//! gap-free and commit order equals position order.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reel_core::backend::{answer, requests_of, HeadNotifier, Rejected, WriteJob};
use reel_core::{
    AppendRequest, AppendResult, EventId, NewEvent, Position, ReelError, StreamName, StreamVersion, Timestamp,
};
use rusqlite::{params, Connection};

use reel_core::backend::idempotency::{check_recent, retry_start, same_append, RecentIds, StoredForRetry};

use crate::queries;
use crate::stages::{Stage, StageRecorder};
use crate::tag_index;

pub use reel_core::backend::idempotency::RECENT_ID_WINDOW;

/// Bounds of one group commit.
#[derive(Clone, Copy, Debug)]
pub struct GroupLimits {
    /// Most jobs per transaction; 1 disables group commit.
    pub max_jobs: usize,
    /// Stop gathering once this many events are in the group.
    pub max_events: usize,
}

/// What the writer does about WAL checkpoints (see `CheckpointMode`).
pub enum Checkpoints {
    /// Inside the commit that crosses the threshold, as SQLite's automatic checkpoint does.
    InsideCommit,
    /// On the writer thread, after the group whose commit crossed the threshold was answered.
    AfterAnswer,
    /// On the checkpoint thread, which the writer nudges after commits; the writer copies only
    /// the small rest the thread leaves when it raises `signal.finish`.
    Background { nudge: std::sync::mpsc::SyncSender<()>, signal: Arc<crate::checkpointer::CheckpointSignal> },
}

/// Runs until every sender is dropped, then returns after finishing queued jobs.
/// `commits` counts transactions, so group commit can be observed; `stages` records where each
/// append's time went, when given.
pub fn run_writer(
    mut conn: Connection,
    jobs: Receiver<WriteJob>,
    head: Arc<HeadNotifier>,
    limits: GroupLimits,
    commits: Arc<AtomicU64>,
    checkpoints: Checkpoints,
    stages: Option<Arc<StageRecorder>>,
) {
    let wal = WalHook::install(&conn, matches!(checkpoints, Checkpoints::InsideCommit));
    let record = |stage: Stage, duration: Duration, times: usize| {
        if let Some(stages) = &stages {
            stages.record(stage, duration, times);
        }
    };
    let mut known = KnownState::default();
    // When a restart checkpoint last waited for readers in vain (the next waits RESTART_PACE).
    let mut last_restart: Option<Instant> = None;
    // With background checkpoints: the checkpoint thread's turn, held from the writer's own copy
    // until its next commit (see `CheckpointSignal::turn`).
    let mut holding_turn = None;
    // With background checkpoints: the WAL's size at the last nudge of the checkpoint thread.
    let mut nudged_at_frames = 0;
    while let Ok(first) = jobs.recv() {
        let gathering = Instant::now();
        first.note_taken();
        record(Stage::QueueWait, gathering.saturating_duration_since(first.submitted), 1);
        let mut events = first.event_count();
        let mut group = vec![first];
        while group.len() < limits.max_jobs && events < limits.max_events {
            match jobs.try_recv() {
                Ok(job) => {
                    job.note_taken();
                    record(Stage::QueueWait, job.submitted.elapsed(), 1);
                    events += job.event_count();
                    group.push(job);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let jobs_in_group = group.len();
        record(Stage::GroupAssembly, gathering.elapsed(), jobs_in_group);
        let mut clock = GroupClock::default();
        let results = commit_group(&mut conn, &requests_of(&group), &head, &mut known, &mut clock);
        // This commit started the WAL over (if no reader was inside it): the thread may go on.
        drop(holding_turn.take());
        record(Stage::Write, clock.write, jobs_in_group);
        let inside = wal.take_checkpoint_time();
        record(Stage::Commit, clock.commit.saturating_sub(inside.unwrap_or_default()), jobs_in_group);
        if let Some(inside) = inside {
            record(Stage::Checkpoint, inside, jobs_in_group);
        }
        commits.fetch_add(1, Ordering::Relaxed);
        if let Checkpoints::Background { nudge, .. } = &checkpoints {
            // Only when the WAL has grown by NUDGE_FRAMES since the last nudge (or started over):
            // a nudge after every commit woke the thread thousands of times a second for nothing,
            // as it waits out its pace anyway (with those wake-ups, one writer measured 3–23 %
            // slower in this mode than by default).
            let frames = wal.frames();
            if frames < nudged_at_frames || frames - nudged_at_frames >= NUDGE_FRAMES {
                nudged_at_frames = frames;
                // A nudge already waiting is enough; the writer never waits for the checkpointer.
                let _ = nudge.try_send(());
            }
        }
        let replying = Instant::now();
        answer(group, results);
        record(Stage::Reply, replying.elapsed(), jobs_in_group);
        let due = match &checkpoints {
            Checkpoints::AfterAnswer => wal.frames() >= AUTO_CHECKPOINT_FRAMES,
            // Under steady load the checkpoint thread never catches up with the last commit, so
            // the WAL would never start over and would grow without end (measured: 1 GiB in 5 s
            // at 64 writers, every fsync slower for it). The thread copies all but a small rest
            // and then asks the writer to finish; past this bound (a thread that cannot keep
            // up) the writer finishes whatever is left. Either way the next transaction starts
            // the WAL over.
            Checkpoints::Background { signal, .. } => {
                // A request from before the WAL last started over is stale: taken and dropped.
                let asked = signal.finish.load(Ordering::Relaxed) && signal.finish.swap(false, Ordering::AcqRel);
                (asked && wal.frames() >= crate::checkpointer::CATCH_UP_FRAMES)
                    || wal.frames() >= BACKGROUND_WAL_BOUND_FRAMES
            }
            Checkpoints::InsideCommit => false,
        };
        if due {
            // Answered already: only jobs queued meanwhile wait for it (their queue wait shows it).
            let started = Instant::now();
            if let Checkpoints::Background { signal, .. } = &checkpoints {
                // Waits for a copy of the thread's that is under way (one round at most).
                holding_turn = Some(signal.turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            }
            checkpoint_passive(&conn);
            record(Stage::Checkpoint, started.elapsed(), 1);
        }
        if wal.frames() >= WAL_RESTART_FRAMES && last_restart.is_none_or(|at| at.elapsed() >= RESTART_PACE) {
            // PASSIVE checkpoints never start the WAL over while some reader always holds a
            // snapshot in it (a server with followers, projections and long polls always has
            // one): measured, a fleet's platform grew its WAL past 600 MiB in five minutes and
            // every read and commit slowed with it. Past this bound the writer, after answering
            // its group, copies the WAL and waits for the readers already in it (short reads)
            // so that the next commit starts it over. Only jobs queued meanwhile wait.
            let started = Instant::now();
            if let (Checkpoints::Background { signal, .. }, None) = (&checkpoints, &holding_turn) {
                // The thread's checkpoint would make this one "busy" at once.
                holding_turn = Some(signal.turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            }
            if checkpoint_restart(&conn) == Restart::WaitedInVain {
                last_restart = Some(Instant::now());
            }
            record(Stage::Checkpoint, started.elapsed(), 1);
        }
    }
}

/// Copies the whole WAL into the main file and waits for the readers still in it, so that the
/// next commit starts the WAL over; gives up quietly (and is tried again after a later group)
/// when a reader stays longer than the busy handler waits.
fn checkpoint_restart(conn: &Connection) -> Restart {
    // Readers (and another process's writer) get a short while to finish, not the writer's
    // usual ten seconds: appends queue behind this. The wait retries every 100 µs: SQLite's own
    // busy_timeout tries after 1, 2, 5, 10 … ms, and another process appending at full speed
    // holds the write lock nearly all the time and takes it again within microseconds, so
    // those sparse tries kept missing its gaps (measured: two stores grew the WAL to 245–430 MB).
    let _ = conn.busy_handler(Some(wait_for_restart));
    let outcome =
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)));
    let restart = match outcome {
        Ok((0, _)) => Restart::Done,
        // Another connection's checkpoint was running: SQLite answers at once, having waited
        // for nothing, so trying again after the next group costs little.
        Ok((_, -1)) => Restart::Busy,
        Ok(_) => {
            tracing::debug!("WAL restart checkpoint found readers still busy; tried again later");
            Restart::WaitedInVain
        }
        Err(e) => {
            tracing::warn!(error = %e, "WAL restart checkpoint failed; tried again later");
            Restart::WaitedInVain
        }
    };
    if let Err(e) = conn.busy_handler(Some(crate::schema::wait_for_lock)) {
        tracing::warn!(error = %e, "restoring the writer's lock wait failed");
    }
    restart
}

/// How a restart checkpoint ended.
#[derive(Debug, PartialEq, Eq)]
enum Restart {
    /// The WAL was copied and no reader is left in it: the next transaction starts it over.
    Done,
    /// Another connection was checkpointing; nothing was waited for.
    Busy,
    /// Readers (or another process's writer) stayed longer than the wait. Waiting again at once
    /// would stall appends [`RESTART_WAIT`] per group while readers are always busy, so the next
    /// try waits [`RESTART_PACE`].
    WaitedInVain,
}

/// The restart checkpoint's busy handler: a try every 100 µs for about [`RESTART_WAIT`].
fn wait_for_restart(attempt: i32) -> bool {
    const PAUSE: Duration = Duration::from_micros(100);
    if attempt as u128 >= RESTART_WAIT.as_micros() / PAUSE.as_micros() {
        return false;
    }
    std::thread::sleep(PAUSE);
    true
}

/// With background checkpoints, how much the WAL grows (in frames) between two nudges of the
/// checkpoint thread.
const NUDGE_FRAMES: i64 = 256;

/// Longest wait for readers in a restart checkpoint, and least time between two attempts.
const RESTART_WAIT: Duration = Duration::from_millis(50);
const RESTART_PACE: Duration = Duration::from_secs(1);

/// The WAL size (frames of 4 KiB: 64 MiB) past which the writer makes it start over.
const WAL_RESTART_FRAMES: i64 = 16_384;

/// How long one group spent before and inside `COMMIT`.
#[derive(Default)]
struct GroupClock {
    write: Duration,
    commit: Duration,
}

/// SQLite's automatic checkpoint threshold (`wal_autocheckpoint` default), in WAL frames.
const AUTO_CHECKPOINT_FRAMES: i64 = 1000;

/// With background checkpoints, the WAL size (in frames, 4 KiB each: 64 MiB) past which the
/// writer checkpoints itself so that the WAL starts over, whatever the checkpoint thread has
/// copied. Each such copy stalls the appends queued meanwhile, so a larger bound makes them
/// rarer (measured at 64 writers: with 4,000 frames about 25 a second and a p99 of 5.7× the
/// median; with this bound about 9 a second and 3.3–4.2×), at the price of a larger WAL file.
const BACKGROUND_WAL_BOUND_FRAMES: i64 = 16_384;

/// Copies what it can of the WAL into the main file without waiting for readers; a partial one
/// is finished by a later call.
fn checkpoint_passive(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
        tracing::warn!(error = %e, "WAL checkpoint failed; the next one tries again");
    }
}

/// The writer connection's WAL hook, which replaces SQLite's automatic checkpoint with the same
/// behaviour made visible: it notes how many frames the WAL holds after each commit and, when
/// `checkpoint_inside` is set, runs the PASSIVE checkpoint SQLite would run at 1,000 frames,
/// inside the commit, timing it. rusqlite has no safe binding for `sqlite3_wal_hook`.
struct WalHook {
    db: *mut rusqlite::ffi::sqlite3,
    state: Box<WalState>,
}

struct WalState {
    checkpoint_inside: bool,
    frames: AtomicI64,
    /// Microseconds of the checkpoint run inside the last commit, or -1.
    inside_micros: AtomicI64,
}

impl WalHook {
    fn install(conn: &Connection, checkpoint_inside: bool) -> Self {
        let state =
            Box::new(WalState { checkpoint_inside, frames: AtomicI64::new(0), inside_micros: AtomicI64::new(-1) });
        // SAFETY: `db` is the writer's open connection, which outlives this guard (`run_writer`
        // owns both, and the connection is dropped after it); the hook's argument points into
        // `state`, which this guard owns, and `Drop` removes the hook before freeing it.
        let db = unsafe { conn.handle() };
        unsafe {
            rusqlite::ffi::sqlite3_wal_hook(db, Some(wal_hook), &*state as *const WalState as *mut c_void);
        }
        Self { db, state }
    }

    /// Frames in the WAL after the last commit.
    fn frames(&self) -> i64 {
        self.state.frames.load(Ordering::Relaxed)
    }

    /// How long the checkpoint inside the last commit took, if one ran.
    fn take_checkpoint_time(&self) -> Option<Duration> {
        let micros = self.state.inside_micros.swap(-1, Ordering::Relaxed);
        (micros >= 0).then(|| Duration::from_micros(micros as u64))
    }
}

impl Drop for WalHook {
    fn drop(&mut self) {
        // SAFETY: see `install`; afterwards SQLite no longer holds the pointer into `state`.
        unsafe {
            rusqlite::ffi::sqlite3_wal_hook(self.db, None, std::ptr::null_mut());
        }
    }
}

/// Called by SQLite after each commit on the writer connection, with the frames now in the WAL.
unsafe extern "C" fn wal_hook(
    state: *mut c_void,
    db: *mut rusqlite::ffi::sqlite3,
    database: *const std::ffi::c_char,
    frames: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: `state` is the `WalState` registered in `WalHook::install`, alive while the hook is.
    let state = unsafe { &*(state as *const WalState) };
    state.frames.store(i64::from(frames), Ordering::Relaxed);
    if state.checkpoint_inside && i64::from(frames) >= AUTO_CHECKPOINT_FRAMES {
        let started = Instant::now();
        // SAFETY: what SQLite's own automatic checkpoint hook does with these arguments.
        unsafe {
            rusqlite::ffi::sqlite3_wal_checkpoint_v2(
                db,
                database,
                rusqlite::ffi::SQLITE_CHECKPOINT_PASSIVE,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
        state.inside_micros.store(started.elapsed().as_micros() as i64, Ordering::Relaxed);
    }
    rusqlite::ffi::SQLITE_OK
}

/// What the writer remembers between transactions: the head and recently used streams' rows.
/// Valid only while no other connection has written, which `PRAGMA data_version` tells: it
/// changes exactly when another connection (another process) commits to the file.
#[derive(Default)]
struct KnownState {
    data_version: Option<i64>,
    head: Option<Position>,
    streams: HashMap<StreamName, (i64, u64)>,
    /// The latest event ids of streams appended to with ids of the caller's, by stream id.
    recent: HashMap<i64, RecentIdWindow>,
    /// Ids held in `recent`, counted as windows come and go (summing them per commit would
    /// cost a pass over every window on the commit path).
    recent_ids: usize,
}

impl KnownState {
    /// Most streams remembered; past this the memory starts over.
    const MAX_STREAMS: usize = 100_000;
    /// Most event ids remembered in recent-id windows (about 40 bytes each); past this the
    /// windows start over.
    const MAX_RECENT_IDS: usize = 1_000_000;

    fn forget(&mut self) {
        *self = KnownState::default();
    }
}

/// One transaction for all `requests`; returns one result per request.
fn commit_group(
    conn: &mut Connection,
    requests: &[&AppendRequest],
    notifier: &HeadNotifier,
    known: &mut KnownState,
    clock: &mut GroupClock,
) -> Vec<Result<AppendResult, ReelError>> {
    let fail_all = |e: ReelError| requests.iter().map(|_| Err(e.clone())).collect::<Vec<_>>();
    let began = Instant::now();
    let now = Timestamp::now();
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(ReelError::storage("starting an append transaction", e)),
    };
    // We hold the write lock now: nobody else can commit until we are done.
    match tx.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0)) {
        Ok(version) if known.data_version == Some(version) => {}
        Ok(version) => {
            known.forget();
            known.data_version = Some(version);
        }
        Err(e) => return fail_all(ReelError::storage("checking for other writers", e)),
    }
    let mut head = match known.head {
        Some(head) => head,
        None => match queries::head(&tx) {
            Ok(head) => head,
            Err(e) => return fail_all(e),
        },
    };
    // Rows changed by this transaction, remembered only once it commits.
    let mut staged: HashMap<StreamName, (i64, u64)> = HashMap::new();
    let mut staged_recent: HashMap<i64, RecentIdWindow> = HashMap::new();
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        let row = match staged.get(&request.stream).or_else(|| known.streams.get(&request.stream)) {
            Some(row) => Some(*row),
            None => match queries::stream_row(&tx, &request.stream) {
                Ok(row) => row,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            },
        };
        let mut recent =
            RecentWindows { known: &mut known.recent, known_ids: &mut known.recent_ids, staged: &mut staged_recent };
        match append_one(&tx, request, row, &mut head, now, &mut recent) {
            Ok((result, row)) => {
                staged.insert(request.stream.clone(), row);
                results.push(Ok(result));
            }
            // Checks run before writes, so a rejected request left nothing behind.
            Err(Rejected::Check(e)) => results.push(Err(e)),
            // A write failed halfway: nothing in this transaction can be trusted.
            Err(Rejected::Write(e)) => {
                known.forget();
                return fail_all(e);
            }
        }
    }
    let committing = Instant::now();
    clock.write = committing - began;
    let committed = tx.commit();
    clock.commit = committing.elapsed();
    if let Err(e) = committed {
        known.forget();
        return fail_all(ReelError::storage("committing appends", e));
    }
    if known.streams.len() + staged.len() > KnownState::MAX_STREAMS {
        known.streams.clear();
    }
    known.streams.extend(staged);
    let staged_ids: usize = staged_recent.values().map(|w| w.ids.len()).sum();
    if known.recent_ids + staged_ids > KnownState::MAX_RECENT_IDS {
        known.recent.clear();
        known.recent_ids = 0;
    }
    known.recent.extend(staged_recent);
    known.recent_ids += staged_ids;
    known.head = Some(head);
    notifier.advance(head);
    results
}

/// Checks and stores one request; returns its result and the stream's row afterwards.
fn append_one(
    conn: &Connection,
    request: &AppendRequest,
    row: Option<(i64, u64)>,
    head: &mut Position,
    now: Timestamp,
    recent: &mut RecentWindows<'_>,
) -> Result<(AppendResult, (i64, u64)), Rejected> {
    let stream = &request.stream;
    let events = &request.events;
    let actual = row.map(|(_, v)| StreamVersion(v));

    if !request.expected.is_satisfied_by(actual) {
        if let (Some(found), Some(start)) = (row, retry_start(request.expected)) {
            if let Some(result) = earlier_append_at(conn, stream, found.0, start, events)? {
                return Ok((result, found));
            }
        }
        return Err(
            ReelError::WrongExpectedVersion { stream: stream.clone(), expected: request.expected, actual }.into()
        );
    }
    // Client-supplied ids may repeat an earlier append whatever the expected version said.
    let with_ids = events.iter().any(|e| e.id.is_some());
    if let (Some(found @ (stream_id, version)), true) = (row, with_ids) {
        let window = recent.window(conn, stream_id, version)?;
        if let Some(result) = earlier_append_among_recent(conn, stream, stream_id, window, events)? {
            return Ok((result, found));
        }
    }
    // Decided inside the write transaction, after every earlier append of this group was
    // inserted: nothing can commit between this check and the insert (invariant 22).
    if let Some(condition) = &request.condition {
        condition.check_after(*head)?;
        let after = condition.after_position();
        if let Some(position) = tag_index::first_match(conn, &condition.fail_if_events_match, after)? {
            return Err(ReelError::ConditionFailed { stream: stream.clone(), position }.into());
        }
    }
    // Ids are settled before the insert, so the window below needs no read of what was written.
    let ids: Vec<EventId> = events.iter().map(|e| e.id.unwrap_or_else(EventId::new_v7)).collect();
    let (result, row) = insert(conn, stream, row, events, &ids, head, now).map_err(Rejected::Write)?;
    // The stream's window moves with this append (a new stream's starts with it), so the next
    // append with ids is checked without a scan.
    let first_version = result.next_version.0 + 1 - events.len() as u64;
    let window = match recent.take(row.0) {
        Some(window) if window.version + 1 == first_version => Some(window),
        _ if with_ids && first_version == 0 => Some(RecentIdWindow::default()),
        // No window of the stream as it was just before: the next append with ids reads one.
        _ => None,
    };
    if let Some(window) = window {
        recent.staged.insert(row.0, window.advanced(first_version, ids));
    }
    Ok((result, row))
}

/// The event ids of a stream's latest [`RECENT_ID_WINDOW`] versions, as of `version`.
#[derive(Clone, Debug, Default)]
struct RecentIdWindow {
    /// The stream version the window ends at.
    version: u64,
    /// Event id → stream version, for the versions in the window only.
    ids: HashMap<EventId, u64>,
    /// The same ids in version order, oldest first, to drop them as the window moves.
    order: std::collections::VecDeque<EventId>,
}

impl RecentIdWindow {
    /// The window after `ids` were appended from `first_version` on.
    fn advanced(mut self, first_version: u64, ids: Vec<EventId>) -> Self {
        self.version = first_version + ids.len().max(1) as u64 - 1;
        for (i, id) in ids.into_iter().enumerate() {
            self.ids.insert(id, first_version + i as u64);
            self.order.push_back(id);
        }
        while self.order.len() as u64 > RECENT_ID_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self
    }
}

/// The windows of a group commit: those of earlier commits (`known`) move to `staged` as the
/// group uses them, and all return to `known` if it commits (a failed commit forgets them all).
struct RecentWindows<'a> {
    known: &'a mut HashMap<i64, RecentIdWindow>,
    known_ids: &'a mut usize,
    staged: &'a mut HashMap<i64, RecentIdWindow>,
}

impl RecentWindows<'_> {
    /// Takes the window of `stream_id` (from this group, from earlier ones, or none).
    fn take(&mut self, stream_id: i64) -> Option<RecentIdWindow> {
        self.staged.remove(&stream_id).or_else(|| {
            let window = self.known.remove(&stream_id)?;
            *self.known_ids -= window.ids.len();
            Some(window)
        })
    }

    /// The window of `stream_id` at `version`: remembered if it ends there, read otherwise.
    fn window(&mut self, conn: &Connection, stream_id: i64, version: u64) -> Result<&HashMap<EventId, u64>, Rejected> {
        let current = match self.take(stream_id) {
            Some(window) if window.version == version => window,
            _ => recent_window(conn, stream_id, version)?,
        };
        Ok(&self.staged.entry(stream_id).insert_entry(current).into_mut().ids)
    }
}

fn insert(
    conn: &Connection,
    stream: &StreamName,
    row: Option<(i64, u64)>,
    events: &[NewEvent],
    ids: &[EventId],
    head: &mut Position,
    now: Timestamp,
) -> Result<(AppendResult, (i64, u64)), ReelError> {
    let n = events.len() as u64;
    let first_version = row.map_or(0, |(_, v)| v + 1);
    let last_version = first_version + n - 1;
    let write_err = |e: rusqlite::Error| ReelError::storage(format!("appending to {stream}"), e);
    let stream_id = match row {
        Some((id, _)) => {
            conn.prepare_cached("UPDATE streams SET version = ?1 WHERE stream_id = ?2")
                .and_then(|mut s| s.execute(params![last_version as i64, id]))
                .map_err(write_err)?;
            id
        }
        None => {
            conn.prepare_cached("INSERT INTO streams (name, category, version) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![stream.as_str(), stream.category(), last_version as i64]))
                .map_err(write_err)?;
            conn.last_insert_rowid()
        }
    };
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO events (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(write_err)?;
    let first_position = head.next();
    let mut tag_entries = Vec::new();
    for (i, (event, id)) in events.iter().zip(ids).enumerate() {
        let metadata = metadata_text(event);
        let position = first_position.0 + i as u64;
        statement
            .execute(params![
                position as i64,
                stream_id,
                (first_version + i as u64) as i64,
                &id.as_bytes()[..],
                event.event_type,
                event.data,
                metadata,
                now.unix_micros(),
                tag_index::tags_text(&event.tags),
            ])
            .map_err(write_err)?;
        tag_entries.extend(event.tags.iter().map(|tag| (tag.as_str(), position)));
    }
    if !tag_entries.is_empty() {
        tag_index::insert_entries(conn, &mut tag_entries).map_err(write_err)?;
    }
    *head = Position(head.0 + n);
    let result = AppendResult { first_position, last_position: *head, next_version: StreamVersion(last_version) };
    Ok((result, (stream_id, last_version)))
}

/// Metadata as stored: `NULL` when empty, JSON text otherwise.
fn metadata_text(event: &NewEvent) -> Option<String> {
    (!event.metadata.is_empty()).then(|| serde_json::Value::Object(event.metadata.clone()).to_string())
}

/// The stream's events from version `start` on, at most `limit`.
fn stored_from(conn: &Connection, stream_id: i64, start: u64, limit: usize) -> Result<Vec<StoredForRetry>, ReelError> {
    let err = |e| ReelError::storage("checking for a retried append", e);
    let mut statement = conn
        .prepare_cached(
            "SELECT position, stream_version, event_id, event_type, data, metadata, tags FROM events
             WHERE stream_id = ?1 AND stream_version >= ?2 ORDER BY stream_version LIMIT ?3",
        )
        .map_err(err)?;
    let rows = statement
        .query_map(params![stream_id, start as i64, limit as i64], |r| {
            let metadata: Option<String> = r.get(5)?;
            let tags: Option<String> = r.get(6)?;
            Ok((
                Position(r.get::<_, i64>(0)? as u64),
                r.get::<_, i64>(1)? as u64,
                EventId::from_bytes(r.get::<_, [u8; 16]>(2)?),
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                metadata,
                tags,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(err)?;
    rows.into_iter()
        .map(|(position, version, id, event_type, data, metadata, tags)| {
            let metadata = match metadata {
                None => Default::default(),
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| ReelError::storage("decoding stored metadata", e))?
                }
            };
            let tags = tag_index::tags_from_text(tags)?;
            Ok(StoredForRetry { position, version, id, event_type, data, metadata, tags })
        })
        .collect()
}

/// When the stream holds events from `start` on and the first is `events[0]`, this append was
/// stored before: return its original result, or say why it does not match.
fn earlier_append_at(
    conn: &Connection,
    stream: &StreamName,
    stream_id: i64,
    start: u64,
    events: &[NewEvent],
) -> Result<Option<AppendResult>, ReelError> {
    let Some(first_id) = events[0].id else { return Ok(None) };
    let stored = stored_from(conn, stream_id, start, events.len())?;
    if stored.first().map(|s| s.id) != Some(first_id) {
        return Ok(None);
    }
    same_append(stream, &stored, events).map(Some)
}

/// Reads the event ids of the stream's latest [`RECENT_ID_WINDOW`] events, up to `version`.
fn recent_window(conn: &Connection, stream_id: i64, version: u64) -> Result<RecentIdWindow, ReelError> {
    let start = version.saturating_sub(RECENT_ID_WINDOW - 1);
    let mut statement = conn
        .prepare_cached(
            "SELECT event_id, stream_version FROM events WHERE stream_id = ?1 AND stream_version >= ?2
             ORDER BY stream_version",
        )
        .map_err(|e| ReelError::storage("checking recent event ids", e))?;
    let rows: Vec<(EventId, u64)> = statement
        .query_map(params![stream_id, start as i64], |r| {
            Ok((EventId::from_bytes(r.get::<_, [u8; 16]>(0)?), r.get::<_, i64>(1)? as u64))
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| ReelError::storage("checking recent event ids", e))?;
    Ok(RecentIdWindow { version, order: rows.iter().map(|(id, _)| *id).collect(), ids: rows.into_iter().collect() })
}

/// Looks for the batch's ids among the stream's latest [`RECENT_ID_WINDOW`] events (`recent`).
fn earlier_append_among_recent(
    conn: &Connection,
    stream: &StreamName,
    stream_id: i64,
    recent: &HashMap<EventId, u64>,
    events: &[NewEvent],
) -> Result<Option<AppendResult>, ReelError> {
    match check_recent(stream, recent, events)? {
        RecentIds::New => Ok(None),
        RecentIds::RetryFrom(version) => {
            let stored = stored_from(conn, stream_id, version, events.len())?;
            same_append(stream, &stored, events).map(Some)
        }
    }
}
