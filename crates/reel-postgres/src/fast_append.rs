//! The one-round-trip append: the usual way a group is written.
//!
//! The writer decides the group against what it knows of its streams (remembered from its own
//! earlier groups, or read without any lock), then calls `append_group_v2` (migration 6), which
//! in one statement takes the head, checks that every stream is still as the writer saw it,
//! writes the events with positions after the head and moves the head. When it got the head at
//! once (no other process was appending), it commits durably and records the new head as durable
//! itself: one round trip, one flush, as a single store needs. When it had to queue behind
//! another process, it commits without waiting for the flush, so the head is released at once,
//! and the writer confirms with a barrier (durable.rs) before answering: processes then share
//! flushes instead of taking turns at them. When anything differs (another process appended to
//! one of the streams, an expected version does not hold, an id may be a retry), nothing is
//! written and the group goes the careful way (`commit_group`: lock first, then decide), which
//! gives every answer that is not a plain success.

use std::collections::HashMap;

use reel_core::backend::idempotency::{check_recent, RecentIds};
use reel_core::backend::HeadNotifier;
use reel_core::{AppendRequest, AppendResult, Position, ReelError, StreamName, Timestamp};
use tokio_postgres::Client;

use crate::durable;
use crate::writer::{load_streams, prepared, GroupWrite, Statements, StreamState};

/// Streams this writer has seen: stream id and version. Only a hint: `append_group` checks it
/// under the lock, so a stale entry costs a retry the careful way, never a wrong answer.
#[derive(Default)]
pub(crate) struct KnownStreams {
    streams: HashMap<StreamName, (i64, u64)>,
}

impl KnownStreams {
    /// Most streams remembered; past this the memory starts over.
    const MAX_STREAMS: usize = 100_000;

    fn get(&self, name: &StreamName) -> Option<(i64, u64)> {
        self.streams.get(name).copied()
    }

    fn remember(&mut self, name: &StreamName, stream_id: i64, version: u64) {
        if self.streams.len() >= Self::MAX_STREAMS {
            self.streams.clear();
        }
        self.streams.insert(name.clone(), (stream_id, version));
    }

    /// Forgets the group's streams (after the careful path, which may have changed them).
    pub(crate) fn forget(&mut self, requests: &[&AppendRequest]) {
        for request in requests {
            self.streams.remove(&request.stream);
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
    notifier: &HeadNotifier,
) -> Option<Vec<Result<AppendResult, ReelError>>> {
    let mut streams = match remembered(requests, known) {
        Some(streams) => streams,
        None => load_streams(client, statements, schema, requests).await.ok()?,
    };
    let mut group = GroupWrite::default();
    let mut offset = Position(0);
    let mut relative = Vec::with_capacity(requests.len());
    for request in requests {
        let state = streams.get_mut(request.stream.as_str())?;
        if !plainly_new(request, state) {
            return None;
        }
        relative.push(group.add(request, state, &mut offset));
    }
    let unknown = |error: ReelError| Some(requests.iter().map(|_| Err(error.clone())).collect());
    let sql = format!(
        "SELECT o_head, o_confirmed FROM {schema}.append_group_v2($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    );
    let Ok(statement) = prepared(client, statements, sql).await else { return None };
    let (head, confirmed) = match call_append_group(client, &statement, &streams, &group).await {
        Call::Written { head, confirmed } => (head, confirmed),
        Call::Changed => return None,
        Call::Unknown(error) => return unknown(error),
    };
    let durable = if confirmed {
        Position(head.0 + offset.0)
    } else {
        // It queued behind another process and committed without its flush: confirm first
        // (invariant 5); a failure leaves it committed but not acknowledged.
        match durable::confirm(client, statements, schema).await {
            Ok(durable) => durable,
            Err(e) => return unknown(durable::unconfirmed(e)),
        }
    };
    for state in streams.values() {
        if let (Some(id), Some(version)) = (state.stream_id, state.version) {
            known.remember(state.name, id, version);
        } else {
            // Created by this group: its id is read the next time.
            known.streams.remove(state.name);
        }
    }
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

/// The group's streams from memory, when every one is remembered and no request carries ids
/// (ids need the stream's recent ids, which only a read gives).
fn remembered<'a>(requests: &[&'a AppendRequest], known: &KnownStreams) -> Option<HashMap<&'a str, StreamState<'a>>> {
    let mut streams = HashMap::with_capacity(requests.len());
    for request in requests {
        if request.events.iter().any(|e| e.id.is_some()) {
            return None;
        }
        let (stream_id, version) = known.get(&request.stream)?;
        streams
            .entry(request.stream.as_str())
            .or_insert_with(|| StreamState::stored(&request.stream, stream_id, version));
    }
    Some(streams)
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

/// How a call of `append_group` ended.
enum Call {
    /// Written after `head`; `confirmed` when the commit was durable and recorded in the durable
    /// head already (nobody else was appending), otherwise a barrier must confirm it.
    Written { head: Position, confirmed: bool },
    /// Nothing written: the streams had changed, or the server refused the call (it rolled back).
    Changed,
    /// The connection failed: the call may or may not have committed. Retrying the careful way
    /// could append twice, so every request gets the error (a caller's retry with ids is exact).
    Unknown(ReelError),
}

/// Calls `append_group`.
async fn call_append_group(
    client: &Client,
    statement: &tokio_postgres::Statement,
    streams: &HashMap<&str, StreamState<'_>>,
    group: &GroupWrite<'_>,
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
                &Timestamp::now().unix_micros(),
            ],
        )
        .await;
    match row {
        Ok(row) => match row.get::<_, Option<i64>>(0) {
            Some(head) => Call::Written { head: Position(head as u64), confirmed: row.get(1) },
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
