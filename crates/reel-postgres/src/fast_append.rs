//! The one-round-trip append: the usual way a group is written.
//!
//! The writer decides the group against what it knows of its streams (remembered from its own
//! earlier groups, or read without any lock), then calls `append_group_v5` (migrations 7, 10 and 11), which
//! in one statement locks the group's streams and checks that each is still as the writer saw
//! it, then takes the head, writes the events with positions after it and moves it. The head is
//! held only for that insert, and the call commits without waiting for its flush; a barrier
//! (durable.rs) sent right behind it in the same round trip waits for the flush before anyone is
//! answered. So processes share flushes instead of taking turns at them, and a single process
//! still pays one round trip per group. When anything differs (another process appended to one
//! of the streams, an expected version does not hold, an id may be a retry, a condition fails or
//! depends on an event of the same group), nothing is written
//! and the group goes the careful way (`commit_group`: lock first, then decide), which gives
//! every answer that is not a plain success.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reel_core::backend::idempotency::{check_recent, RecentIds, RECENT_ID_WINDOW};
use reel_core::backend::HeadNotifier;
use reel_core::{AppendRequest, AppendResult, EventId, Position, ReelError, StreamName, Timestamp};
use tokio_postgres::Client;

use crate::durable;
use crate::writer::{load_streams, prepared, GroupWrite, Statements, StreamState};

/// Streams this writer has seen: stream id and version. Only a hint: `append_group` checks it
/// under the lock, so a stale entry costs a retry the careful way, never a wrong answer.
///
/// For streams appended with ids it also keeps their latest [`RECENT_ID_WINDOW`] event ids at a
/// version, so the next append with ids is decided without reading them. The window is used
/// only while the stream's version is the one it was kept at, and the call checks that version
/// under the lock: events up to a version never change, so the window is the stored one.
///
/// Both memories are bounded, and past their bound they forget what was used longest ago. They
/// used to start over instead: a fleet of more than 1,000 devices appending with ids then read
/// every window again on every append (up to 1,000 rows per stream), and the writer spent most
/// of its time on those reads.
#[derive(Default)]
pub(crate) struct KnownStreams {
    streams: HashMap<StreamName, (i64, u64)>,
    windows: HashMap<StreamName, Window>,
    /// Ids held by all windows together.
    window_ids: usize,
    /// Counts uses, to tell which window was used longest ago.
    clock: u64,
}

/// A stream's recent ids at `version`, and when it was last used.
struct Window {
    version: u64,
    ids: HashMap<EventId, u64>,
    used: u64,
}

impl KnownStreams {
    /// Most streams remembered; past this the half used longest ago is forgotten.
    const MAX_STREAMS: usize = 100_000;
    /// Most ids all windows hold together (a full window holds 1,000; about 50 bytes each).
    const MAX_WINDOW_IDS: usize = 1_000_000;

    fn get(&self, name: &StreamName) -> Option<(i64, u64)> {
        self.streams.get(name).copied()
    }

    fn remember(&mut self, name: &StreamName, stream_id: i64, version: u64) {
        if self.streams.len() >= Self::MAX_STREAMS && !self.streams.contains_key(name) {
            // Streams carry no use stamp; dropping an arbitrary half costs one read per
            // forgotten stream that is appended to again.
            let mut keep = false;
            self.streams.retain(|_, _| {
                keep = !keep;
                keep
            });
        }
        self.streams.insert(name.clone(), (stream_id, version));
    }

    /// Keeps the ids of the window that ends at `version` (`ids` may hold older ones too).
    fn remember_window(&mut self, name: &StreamName, version: u64, mut ids: HashMap<EventId, u64>) {
        // A window holds one id per version up to `version`, so only one grown past its size
        // holds versions that fell out of it.
        if ids.len() as u64 > RECENT_ID_WINDOW {
            let start = (version + 1).saturating_sub(RECENT_ID_WINDOW);
            ids.retain(|_, v| *v >= start);
        }
        self.forget_window(name);
        self.window_ids += ids.len();
        self.clock += 1;
        self.windows.insert(name.clone(), Window { version, ids, used: self.clock });
        if self.window_ids > Self::MAX_WINDOW_IDS {
            self.evict_windows();
        }
    }

    /// Forgets the windows used longest ago until all of them hold at most three quarters of
    /// the bound, so that eviction runs once per many windows, not on every one.
    fn evict_windows(&mut self) {
        let mut by_use: Vec<(u64, usize)> = self.windows.values().map(|w| (w.used, w.ids.len())).collect();
        by_use.sort_unstable();
        let (mut held, mut cutoff) = (self.window_ids, 0);
        for (used, len) in by_use {
            if held <= Self::MAX_WINDOW_IDS / 4 * 3 {
                break;
            }
            held -= len;
            cutoff = used;
        }
        self.windows.retain(|_, w| w.used > cutoff);
        self.window_ids = self.windows.values().map(|w| w.ids.len()).sum();
    }

    fn forget_window(&mut self, name: &StreamName) {
        if let Some(window) = self.windows.remove(name) {
            self.window_ids -= window.ids.len();
        }
    }

    /// Whether the window of `name` ends at `version`.
    fn has_window(&self, name: &StreamName, version: u64) -> bool {
        self.windows.get(name).is_some_and(|w| w.version == version)
    }

    /// Takes the window of `name` if it ends at `version` (it comes back after the write).
    fn take_window(&mut self, name: &StreamName, version: u64) -> Option<HashMap<EventId, u64>> {
        if !self.has_window(name, version) {
            return None;
        }
        let window = self.windows.remove(name)?;
        self.window_ids -= window.ids.len();
        Some(window.ids)
    }

    /// Remembers the group's streams as a committed group left them: each version, and the
    /// window of recent ids where it held the stored window plus the group's own ids.
    pub(crate) fn remember_written(&mut self, streams: HashMap<&str, StreamState<'_>>) {
        for state in streams.into_values() {
            if let (Some(id), Some(version)) = (state.stream_id, state.version) {
                self.remember(state.name, id, version);
                if state.window_complete {
                    // The stored window plus this group's ids: the window at the new version.
                    self.remember_window(state.name, version, state.recent);
                } else {
                    self.forget_window(state.name);
                }
            } else {
                // Created by this group: its id is read the next time.
                self.streams.remove(state.name);
                self.forget_window(state.name);
            }
        }
    }

    /// Forgets the group's streams (before the careful path, which may change them).
    pub(crate) fn forget(&mut self, requests: &[&AppendRequest]) {
        for request in requests {
            self.streams.remove(&request.stream);
            self.forget_window(&request.stream);
        }
    }
}

/// Writes the group in one call when every request is a plain append of new events. `None`
/// when it cannot say so without the lock (or the streams changed meanwhile): nothing was
/// written, and the caller takes the careful path.
pub(crate) async fn try_append(
    client: &Client,
    statements: &mut Statements,
    schema: &str,
    requests: &[&AppendRequest],
    known: &mut KnownStreams,
    contention: &mut Contention,
    notifier: &HeadNotifier,
) -> Option<Vec<Result<AppendResult, ReelError>>> {
    let mut streams = group_streams(client, statements, schema, requests, known).await.ok()?;
    let mut group = GroupWrite::default();
    let mut offset = Position(0);
    let mut relative = Vec::with_capacity(requests.len());
    let mut conditions = crate::tag_index::ConditionRows::default();
    for (i, request) in requests.iter().enumerate() {
        let state = streams.get_mut(request.stream.as_str())?;
        if !plainly_new(request, state) {
            return None;
        }
        if let Some(condition) = &request.condition {
            // An event placed by an earlier request of the group decides it: the careful path
            // answers that (the call checks stored events only).
            if group.first_match(&condition.fail_if_events_match, Position(0)).is_some() {
                return None;
            }
            conditions.add(i, condition);
        }
        relative.push(group.add(request, state, &mut offset));
    }
    let unknown = |error: ReelError| Some(requests.iter().map(|_| Err(error.clone())).collect());
    let sql = format!(
        "SELECT {schema}.append_group_v5($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                                         $18, $19, $20, $21)"
    );
    let Ok(statement) = prepared(client, statements, sql).await else { return None };
    let alone = contention.alone();
    let (head, durable) = if alone {
        // Nobody else is appending: the call commits durably and records its own durable head.
        match call_append_group(client, &statement, &streams, &group, &conditions, true).await {
            Call::Written { head } => (head, Position(head.0 + offset.0)),
            Call::Changed => return None,
            Call::Unknown(error) => return unknown(error),
        }
    } else {
        // The call commits without waiting for its flush; the barrier right behind it, in the
        // same round trip, waits for it (invariant 5). When the call wrote nothing, the barrier
        // only records a head that was durable already.
        let Ok(barrier) = durable::barrier(client, statements, schema).await else { return None };
        let (call, confirmed) = tokio::join!(
            call_append_group(client, &statement, &streams, &group, &conditions, false),
            durable::run_barrier(client, &barrier)
        );
        let head = match call {
            Call::Written { head } => head,
            Call::Changed => return None,
            Call::Unknown(error) => return unknown(error),
        };
        // A failed barrier leaves the group committed but not acknowledged.
        match confirmed {
            Ok(durable) => (head, durable),
            Err(e) => return unknown(durable::unconfirmed(e)),
        }
    };
    contention.observe(head, Position(head.0 + offset.0));
    known.remember_written(streams);
    notifier.advance(durable);
    Some(
        relative
            .into_iter()
            .map(|r| {
                Ok(AppendResult {
                    first_position: Position(head.0 + r.first_position.0),
                    last_position: Position(head.0 + r.last_position.0),
                    next_version: r.next_version,
                })
            })
            .collect(),
    )
}

/// Whether other processes append to the schema, as told by the heads this writer's calls
/// found: a call that finds the head where this writer's last group left it saw nobody else.
pub(crate) struct Contention {
    own_end: Option<Position>,
    other_seen_at: Instant,
}

impl Contention {
    /// How long a writer must have appended alone before its calls commit durably themselves.
    const ALONE_AFTER: Duration = Duration::from_secs(1);

    /// A writer that has not seen anything yet counts as sharing the schema.
    pub(crate) fn new() -> Self {
        Self { own_end: None, other_seen_at: Instant::now() }
    }

    /// Alone long enough that a durable commit under the head keeps nobody waiting for its flush.
    pub(crate) fn alone(&self) -> bool {
        self.other_seen_at.elapsed() >= Self::ALONE_AFTER
    }

    /// Notes that another process appended (a leader answered this writer's group).
    pub(crate) fn note_shared(&mut self) {
        self.other_seen_at = Instant::now();
    }

    /// Notes a group written after `head` and ending at `end`.
    fn observe(&mut self, head: Position, end: Position) {
        if self.own_end != Some(head) {
            self.other_seen_at = Instant::now();
        }
        self.own_end = Some(end);
    }
}

/// The group's streams: from memory where the writer remembers a stream (and, for one appended
/// with ids, its window of recent ids), read without a lock for the others. Only those are read:
/// reading every stream of the group whenever one was unknown (a stream the previous group
/// created, say) made a fleet's groups read up to 1,000 ids for each of their device streams.
async fn group_streams<'a>(
    client: &Client,
    statements: &mut Statements,
    schema: &str,
    requests: &[&'a AppendRequest],
    known: &mut KnownStreams,
) -> Result<HashMap<&'a str, StreamState<'a>>, ReelError> {
    let remembered_enough = |request: &AppendRequest| {
        known.get(&request.stream).is_some_and(|(_, version)| {
            request.events.iter().all(|e| e.id.is_none()) || known.has_window(&request.stream, version)
        })
    };
    let unknown: std::collections::HashSet<&str> =
        requests.iter().filter(|r| !remembered_enough(r)).map(|r| r.stream.as_str()).collect();
    let to_read: Vec<&'a AppendRequest> =
        requests.iter().filter(|r| unknown.contains(r.stream.as_str())).copied().collect();
    let mut streams = if to_read.is_empty() {
        HashMap::with_capacity(requests.len())
    } else {
        load_streams(client, statements, schema, &to_read).await?
    };
    for request in requests {
        let name = request.stream.as_str();
        if unknown.contains(name) || streams.contains_key(name) {
            continue;
        }
        let Some((stream_id, version)) = known.get(&request.stream) else { continue };
        let mut state = StreamState::stored(&request.stream, stream_id, version);
        if let Some(ids) = known.take_window(&request.stream, version) {
            state.recent = ids;
            state.window_complete = true;
        }
        streams.insert(name, state);
    }
    Ok(streams)
}

/// Whether the request is certainly a new append against the stream as seen: its expected
/// version holds and none of its ids is among the recent ones. Anything else (a conflict, a
/// retry, a duplicate id) is answered under the lock.
fn plainly_new(request: &AppendRequest, state: &StreamState<'_>) -> bool {
    let actual = state.version.map(reel_core::StreamVersion);
    if !request.expected.is_satisfied_by(actual) {
        return false;
    }
    if state.version.is_none() || request.events.iter().all(|e| e.id.is_none()) {
        return true;
    }
    matches!(check_recent(&request.stream, &state.recent, &request.events), Ok(RecentIds::New))
}

/// How a call of `append_group_v5` ended.
enum Call {
    /// Written after `head` (durably, or for a barrier to confirm, as the call was asked).
    Written { head: Position },
    /// Nothing written: the streams had changed, or the server refused the call (it rolled back).
    Changed,
    /// The connection failed: the call may or may not have committed. Retrying the careful way
    /// could append twice, so every request gets the error (a caller's retry with ids is exact).
    Unknown(ReelError),
}

/// Calls `append_group_v5`.
async fn call_append_group(
    client: &Client,
    statement: &tokio_postgres::Statement,
    streams: &HashMap<&str, StreamState<'_>>,
    group: &GroupWrite<'_>,
    conditions: &crate::tag_index::ConditionRows,
    durable: bool,
) -> Call {
    let (mut checked_ids, mut checked_versions, mut final_ids, mut final_versions) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut new_names, mut new_categories, mut new_versions) = (Vec::new(), Vec::new(), Vec::new());
    for state in streams.values() {
        match (state.stream_id, state.stored_version, state.version) {
            (Some(id), Some(stored), Some(version)) => {
                checked_ids.push(id);
                checked_versions.push(stored as i64);
                if version != stored {
                    final_ids.push(id);
                    final_versions.push(version as i64);
                }
            }
            (None, _, Some(version)) => {
                new_names.push(state.name.as_str());
                new_categories.push(state.name.category());
                new_versions.push(version as i64);
            }
            _ => {}
        }
    }
    let row = client
        .query_one(
            statement,
            &[
                &checked_ids,
                &checked_versions,
                &new_names,
                &new_categories,
                &new_versions,
                &final_ids,
                &final_versions,
                &group.positions,
                &group.names,
                &group.versions,
                &group.ids,
                &group.types,
                &group.data,
                &group.metadata,
                // NULL when no event has tags: the call then skips the tag index.
                &group.tags.iter().any(Option::is_some).then_some(&group.tags),
                &Timestamp::now().unix_micros(),
                &durable,
                &conditions.first_tags,
                &conditions.other_tags,
                &conditions.types,
                &conditions.after,
            ],
        )
        .await;
    match row {
        Ok(row) => match row.get::<_, Option<i64>>(0) {
            Some(head) => Call::Written { head: Position(head as u64) },
            None => Call::Changed,
        },
        // The server answered with an error: the statement rolled back whole.
        Err(e) if e.as_db_error().is_some() => {
            tracing::debug!(error = %e, "one-call append refused; taking the careful path");
            Call::Changed
        }
        Err(e) => Call::Unknown(crate::storage_error("appending (the outcome is unknown; retry with event ids)", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(first_version: u64) -> HashMap<EventId, u64> {
        (first_version..first_version + RECENT_ID_WINDOW).map(|v| (EventId(uuid::Uuid::new_v4()), v)).collect()
    }

    #[test]
    fn windows_past_the_bound_forget_the_ones_used_longest_ago() {
        let mut known = KnownStreams::default();
        let streams: Vec<StreamName> =
            (0..1_100).map(|i| StreamName::new(format!("device-{i}")).expect("valid name")).collect();
        for stream in &streams {
            known.remember_window(stream, RECENT_ID_WINDOW - 1, window(0));
            // The first stream is used again after every other one: it stays the newest.
            let first = known.take_window(&streams[0], RECENT_ID_WINDOW - 1).expect("the first window is kept");
            known.remember_window(&streams[0], RECENT_ID_WINDOW - 1, first);
        }
        assert!(known.window_ids <= KnownStreams::MAX_WINDOW_IDS, "{} ids held", known.window_ids);
        assert_eq!(known.window_ids, known.windows.values().map(|w| w.ids.len()).sum::<usize>());
        assert!(known.has_window(&streams[0], RECENT_ID_WINDOW - 1), "the window used most often was forgotten");
        assert!(known.has_window(&streams[1_099], RECENT_ID_WINDOW - 1), "the newest window was forgotten");
        assert!(!known.has_window(&streams[1], RECENT_ID_WINDOW - 1), "the window used longest ago was kept");
        // Forgetting the rest keeps the count true.
        let all: Vec<AppendRequest> =
            streams.iter().map(|s| AppendRequest::new(s.clone(), reel_core::ExpectedVersion::Any, vec![])).collect();
        known.forget(&all.iter().collect::<Vec<_>>());
        assert_eq!(known.window_ids, 0);
    }

    #[test]
    fn streams_past_the_bound_are_thinned_not_all_forgotten() {
        let mut known = KnownStreams::default();
        for i in 0..=KnownStreams::MAX_STREAMS {
            let name = StreamName::new(format!("s-{i}")).expect("valid name");
            known.remember(&name, i as i64, 0);
        }
        assert!(known.streams.len() > KnownStreams::MAX_STREAMS / 3, "{} remembered", known.streams.len());
        assert!(known.streams.len() <= KnownStreams::MAX_STREAMS);
        assert!(known.get(&StreamName::new(format!("s-{}", KnownStreams::MAX_STREAMS)).unwrap()).is_some());
    }
}
