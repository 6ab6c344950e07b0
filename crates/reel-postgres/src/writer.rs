//! The writer task: group commit under the head-row lock.
//!
//! Concurrent appends of this process are gathered into one transaction. It locks the group's
//! streams (in stream id order) and then the head row, which every appender of every process
//! must do, so transactions that append commit one after another in position order: positions
//! are gap-free and a follower can never see position p + 1 before p. The head is taken once per
//! group, not once per append, and released at commit without waiting for the flush; a barrier
//! then confirms the group on disk before anyone is answered (durable.rs).

use std::collections::HashMap;
use std::sync::Arc;

use reel_core::backend::idempotency::{
    check_recent, retry_start, same_append, RecentIds, StoredForRetry, RECENT_ID_WINDOW,
};
use reel_core::backend::{answer, fail_all, requests_of, HeadNotifier, Rejected, WriteJob};

use crate::fast_append::{try_append, Contention, KnownStreams};
use crate::forwarding::{forwardable, Followed, Forwarding};
use reel_core::{
    AppendRequest, AppendResult, EventId, NewEvent, Position, ReelError, StreamName, StreamVersion, Timestamp,
};
use tokio::sync::mpsc;
use tokio_postgres::{Client, GenericClient, Transaction};

/// Most jobs in one transaction.
const MAX_GROUP: usize = 512;

/// Statements prepared on the writer's connection, by SQL text: each statement then costs one
/// round trip instead of two (prepare, execute).
pub(crate) type Statements = HashMap<String, tokio_postgres::Statement>;

/// The prepared statement for `sql` on this connection (inside a transaction or not).
pub(crate) async fn prepared<C: GenericClient>(
    client: &C,
    cache: &mut Statements,
    sql: String,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    if let Some(statement) = cache.get(&sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(&sql).await?;
    cache.insert(sql, statement.clone());
    Ok(statement)
}

/// Runs until every sender is dropped. Reconnects with `connect` when the connection is lost.
pub async fn run_writer<C, F>(
    mut client: Client,
    schema: String,
    mut jobs: mpsc::Receiver<WriteJob>,
    head: Arc<HeadNotifier>,
    closing: Arc<tokio::sync::Notify>,
    connect: C,
) where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<Client, ReelError>>,
{
    let mut statements = Statements::new();
    let mut known = KnownStreams::default();
    let mut contention = Contention::new();
    let mut forwarding = Forwarding::new();
    // An operator's switch (docs/OPERATIONS.md): every writer appends directly, as before
    // schema version 12.
    let forwarding_enabled = std::env::var("REEL_PG_FORWARDING").map_or(true, |v| v != "off");
    sweep_durable_rows(&client, &schema).await;
    loop {
        // A leader also wakes to take what followers queued, and to write their answers.
        // `Err`: no job will come (every sender is gone, or the store is closing).
        let next = async {
            match forwarding.idle_wait() {
                None => jobs.recv().await.ok_or(()).map(Some),
                Some(wait) => tokio::select! {
                    job = jobs.recv() => job.ok_or(()).map(Some),
                    _ = tokio::time::sleep(wait) => Ok(None),
                },
            }
        };
        let first = tokio::select! {
            _ = closing.notified() => break,
            next = next => match next {
                Ok(first) => first,
                Err(()) => break,
            },
        };
        let mut group = Vec::new();
        if let Some(first) = first {
            gather_resubmissions(&jobs).await;
            group.push(first);
            while group.len() < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
        }
        if client.is_closed() {
            // The connection's locks went with it: whatever it led or followed is over.
            forwarding.reset();
            match connect().await {
                Ok(fresh) => {
                    client = fresh;
                    statements.clear();
                    known = KnownStreams::default();
                    contention = Contention::new();
                    sweep_durable_rows(&client, &schema).await;
                }
                Err(e) => {
                    fail_all(group, &e);
                    continue;
                }
            }
        }
        let requests = requests_of(&group);
        let mut taken = Vec::new();
        if forwarding.take_due(requests.is_empty()) {
            match forwarding.cycle(&client, &mut statements, &schema).await {
                Ok(rows) => taken = rows,
                Err(e) => {
                    // Rows taken and not answered now count as unknown to their followers.
                    tracing::warn!(error = %e, "leading writer lost its round; reconnecting");
                    drop_connection(&mut client, &mut statements, &connect).await;
                    forwarding.reset();
                }
            }
        }
        if requests.is_empty() && taken.is_empty() {
            // A job may carry no request (every one failed validation); it is answered too.
            drop(requests);
            answer(group, Vec::new());
            if forwarding.idle_long() {
                if let Err(e) = forwarding.resign(&client, &mut statements, &schema).await {
                    tracing::warn!(error = %e, "could not hand on the lead; reconnecting");
                    drop_connection(&mut client, &mut statements, &connect).await;
                    forwarding.reset();
                }
            }
            continue;
        }
        if forwarding_enabled
            && !forwarding.leading()
            && !contention.alone()
            && forwarding.may_follow()
            && forwardable(&requests)
        {
            if forwarding.should_try_lead() {
                if let Err(e) = forwarding.try_lead(&client, &mut statements, &schema).await {
                    tracing::warn!(error = %e, "could not ask to lead; appending directly");
                }
            }
            if !forwarding.leading() {
                match forwarding.follow(&client, &mut statements, &schema, &requests).await {
                    Ok(Followed::Answered(answers)) => {
                        contention.note_shared();
                        let results = finish_followed(
                            &mut client,
                            &mut statements,
                            &schema,
                            &requests,
                            answers,
                            &mut known,
                            &mut contention,
                            &head,
                        )
                        .await;
                        drop(requests);
                        answer(group, results);
                        continue;
                    }
                    Ok(Followed::NoLeader) => {}
                    Err(e) => {
                        drop(requests);
                        fail_all(group, &e);
                        drop_connection(&mut client, &mut statements, &connect).await;
                        continue;
                    }
                }
            }
        }
        if forwarding.leading() {
            forwarding.note_busy();
        }
        let all: Vec<&AppendRequest> =
            requests.iter().copied().chain(taken.iter().flat_map(|row| row.requests.iter())).collect();
        let mut results =
            append_directly(&mut client, &mut statements, &schema, &all, &mut known, &mut contention, &head).await;
        let theirs = results.split_off(requests.len());
        forwarding.record(&taken, &theirs);
        drop(all);
        drop(requests);
        answer(group, results);
    }
    if forwarding.leading() && !client.is_closed() {
        // Followers waiting for this round get their answers before the lead is handed on.
        if let Err(e) = forwarding.resign(&client, &mut statements, &schema).await {
            tracing::warn!(error = %e, "could not hand on the lead while stopping");
        }
    }
}

/// The usual path: one call when the group is plain, the careful path otherwise.
async fn append_directly(
    client: &mut Client,
    statements: &mut Statements,
    schema: &str,
    requests: &[&AppendRequest],
    known: &mut KnownStreams,
    contention: &mut Contention,
    head: &HeadNotifier,
) -> Vec<Result<AppendResult, ReelError>> {
    if requests.is_empty() {
        return Vec::new();
    }
    let events: usize = requests.iter().map(|r| r.events.len()).sum();
    let fast = if events < COPY_FROM_EVENTS {
        try_append(client, statements, schema, requests, known, contention, head).await
    } else {
        None
    };
    match fast {
        Some(results) => results,
        None => commit_group(client, statements, schema, requests, known, head).await,
    }
}

/// A followed group's answers: the leader's, and for what it handed back, this writer's own.
/// The leader answered after its commit was durable, so the durable head covers every answered
/// position (commit order is position order).
#[allow(clippy::too_many_arguments)]
async fn finish_followed(
    client: &mut Client,
    statements: &mut Statements,
    schema: &str,
    requests: &[&AppendRequest],
    answers: Vec<Option<Result<AppendResult, ReelError>>>,
    known: &mut KnownStreams,
    contention: &mut Contention,
    head: &HeadNotifier,
) -> Vec<Result<AppendResult, ReelError>> {
    let durable = answers.iter().flatten().flatten().map(|r| r.last_position).max();
    if let Some(durable) = durable {
        head.advance(durable);
    }
    let handed_back: Vec<&AppendRequest> =
        requests.iter().zip(&answers).filter(|(_, a)| a.is_none()).map(|(r, _)| *r).collect();
    let mut own = append_directly(client, statements, schema, &handed_back, known, contention, head).await.into_iter();
    answers.into_iter().map(|a| a.unwrap_or_else(|| own.next().expect("one result per request"))).collect()
}

/// Replaces the connection: a wait that broke off may have left session locks held on it.
async fn drop_connection<C, F>(client: &mut Client, statements: &mut Statements, connect: &C)
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<Client, ReelError>>,
{
    match connect().await {
        Ok(fresh) => {
            *client = fresh;
            statements.clear();
        }
        Err(e) => tracing::warn!(error = %e, "could not reconnect the writer; trying again with the next group"),
    }
}

/// Most times the writer yields to let answered appenders submit again before a group closes.
const MAX_GATHER_YIELDS: usize = 8;

/// Lets the runtime run the appenders the last group answered before this group closes, for as
/// long as each yield brings more jobs. An appender that is answered usually appends again at
/// once; without this, it just misses the group being formed and groups split in halves (with
/// four appenders per process, groups averaged 2.3 appends), which doubles the lock hand-offs
/// between processes. A yield costs microseconds, and nothing is waited for when nobody appends.
async fn gather_resubmissions(jobs: &mpsc::Receiver<WriteJob>) {
    for _ in 0..MAX_GATHER_YIELDS {
        let queued = jobs.len();
        tokio::task::yield_now().await;
        if jobs.len() == queued {
            return;
        }
    }
}

/// Drops the durable-head rows of closed connections; a failure only leaves a few rows behind.
async fn sweep_durable_rows(client: &Client, schema: &str) {
    if let Err(e) = crate::durable::sweep(client, schema).await {
        tracing::warn!(error = %e, "could not sweep durable-head rows");
    }
}

/// One group in one transaction, in four round trips whatever its size: `BEGIN`; the head lock
/// pipelined with the stream lookup (and, for appends that carry ids, their streams' recent ids);
/// one statement writing every stream row, every event and the head; `COMMIT`.
///
/// The decisions (expected version, retry or duplicate id) are made in memory in submission
/// order, over the stored state plus what earlier appends of the same group have added, so a
/// retry that lands in the same group as its original is still recognised.
async fn commit_group(
    client: &mut Client,
    statements: &mut Statements,
    schema: &str,
    requests: &[&AppendRequest],
    known: &mut KnownStreams,
    notifier: &HeadNotifier,
) -> Vec<Result<AppendResult, ReelError>> {
    // Forgotten first: whatever happens below, nothing stale about these streams is kept.
    known.forget(requests);
    let fail_all = |e: ReelError| requests.iter().map(|_| Err(e.clone())).collect::<Vec<_>>();
    let now = Timestamp::now();
    let mut attempts = 0;
    let (tx, head, mut streams) = loop {
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(e) => return fail_all(crate::storage_error("starting an append transaction", e)),
        };
        match lock_and_load(&tx, statements, schema, requests).await {
            Ok(Some((head, streams))) => break (tx, head, streams),
            // Another process created one of the group's streams meanwhile; it is locked with
            // the others on the next attempt.
            Ok(None) if attempts < MAX_LOCK_ATTEMPTS => attempts += 1,
            Ok(None) => {
                return fail_all(ReelError::storage(
                    "locking the streams of an append",
                    "other processes kept creating its streams; try again",
                ))
            }
            Err(e) => return fail_all(e),
        }
    };
    // Every append ordered before this group has committed (the head is held), so what the
    // index says now, plus what this group places before a request, is all that can match it.
    let stored_matches = match stored_condition_matches(&tx, statements, schema, requests).await {
        Ok(found) => found,
        Err(e) => return fail_all(e),
    };
    let mut group = GroupWrite::default();
    let mut head_after = head;
    let mut results = Vec::with_capacity(requests.len());
    for (request, stored_match) in requests.iter().zip(stored_matches) {
        let state = streams.get_mut(request.stream.as_str()).expect("every stream of the group was looked up");
        match decide(&tx, statements, schema, request, state).await {
            Ok(Decision::Append) => match condition_holds(request, stored_match, &group, head_after) {
                Ok(()) => results.push(Ok(group.add(request, state, &mut head_after))),
                Err(e) => results.push(Err(e)),
            },
            Ok(Decision::Retried(result)) => results.push(Ok(result)),
            Err(Rejected::Check(e)) => results.push(Err(e)),
            Err(Rejected::Write(e)) => return fail_all(e),
        }
    }
    if head_after != head {
        if let Err(e) = group.write(&tx, statements, schema, &streams, head_after, now).await {
            return fail_all(e);
        }
    }
    if let Err(e) = tx.commit().await {
        return fail_all(crate::storage_error("committing appends", e));
    }
    // The commit did not wait for its flush, and a retry may have been answered from another
    // process's commit that is not confirmed yet: nothing is acknowledged before a barrier.
    if results.iter().any(|r| r.is_ok()) {
        match crate::durable::confirm(client, statements, schema).await {
            Ok(durable) => notifier.advance(durable),
            Err(e) => return fail_all(crate::durable::unconfirmed(e)),
        }
    }
    // The streams were read under their locks and moved by this group only, so the writer knows
    // them exactly now, windows of recent ids included. Forgetting them instead made every group
    // that went this way (a refused condition, a retry) cost the next one a read of up to 1,000
    // ids per stream, for every stream in it.
    known.remember_written(streams);
    results
}

/// For each request with a condition, the first stored event matching it after its `after`:
/// every condition of the group in one statement.
async fn stored_condition_matches(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    schema: &str,
    requests: &[&AppendRequest],
) -> Result<Vec<Option<Position>>, ReelError> {
    let mut found = vec![None; requests.len()];
    let mut rows = crate::tag_index::ConditionRows::default();
    for (i, request) in requests.iter().enumerate() {
        if let Some(condition) = &request.condition {
            rows.add(i, condition);
        }
    }
    if rows.is_empty() {
        return Ok(found);
    }
    let fail = |e| crate::storage_error("checking append conditions", e);
    let sql = format!("SELECT item, match_position FROM {schema}.condition_matches($1, $2, $3, $4)");
    let statement = prepared(tx, statements, sql).await.map_err(fail)?;
    let matches =
        tx.query(&statement, &[&rows.first_tags, &rows.other_tags, &rows.types, &rows.after]).await.map_err(fail)?;
    for row in matches {
        // Items are numbered from 1 in the order they were added.
        let item = (row.get::<_, i64>(0) as usize).wrapping_sub(1);
        let position = Position(row.get::<_, i64>(1) as u64);
        let request = rows.requests.get(item).map(|r| *r as usize);
        if let Some(slot) = request.and_then(|r| found.get_mut(r)) {
            *slot = Some(slot.map_or(position, |p: Position| p.min(position)));
        }
    }
    Ok(found)
}

/// Whether the request's condition holds: no stored match, none among the events this group
/// placed before it, and an `after` that is not beyond the head.
fn condition_holds(
    request: &AppendRequest,
    stored_match: Option<Position>,
    group: &GroupWrite<'_>,
    head: Position,
) -> Result<(), ReelError> {
    let Some(condition) = &request.condition else { return Ok(()) };
    condition.check_after(head)?;
    let in_group = group.first_match(&condition.fail_if_events_match, condition.after_position());
    match stored_match.into_iter().chain(in_group).min() {
        Some(position) => Err(ReelError::ConditionFailed { stream: request.stream.clone(), position }),
        None => Ok(()),
    }
}

/// Times the careful path starts over when streams of its group appear between its locks.
const MAX_LOCK_ATTEMPTS: usize = 8;

/// A stream as the group sees it: stored state plus this group's appends so far.
pub(crate) struct StreamState<'a> {
    pub(crate) name: &'a StreamName,
    /// `None` while the stream is not stored (it may still be created by this group).
    pub(crate) stream_id: Option<i64>,
    /// Version before the group.
    pub(crate) stored_version: Option<u64>,
    /// Version after the group's appends so far.
    pub(crate) version: Option<u64>,
    /// Recent ids (stored window plus this group's), loaded only for streams appended with ids.
    pub(crate) recent: HashMap<EventId, u64>,
    /// Whether `recent` held every id of the stream's latest [`RECENT_ID_WINDOW`] versions up to
    /// `stored_version` before the group (so a writer may remember the window after it).
    pub(crate) window_complete: bool,
    /// This group's events for the stream, in version order.
    pending: Vec<Pending<'a>>,
}

impl<'a> StreamState<'a> {
    /// A stream not stored (yet).
    fn absent(name: &'a StreamName) -> Self {
        Self {
            name,
            stream_id: None,
            stored_version: None,
            version: None,
            recent: HashMap::new(),
            // A stream with no events has an empty window.
            window_complete: true,
            pending: Vec::new(),
        }
    }

    /// A stored stream at `version`, its recent ids not known.
    pub(crate) fn stored(name: &'a StreamName, stream_id: i64, version: u64) -> Self {
        Self {
            stream_id: Some(stream_id),
            stored_version: Some(version),
            version: Some(version),
            window_complete: false,
            ..Self::absent(name)
        }
    }
}

struct Pending<'a> {
    position: Position,
    version: u64,
    id: EventId,
    event: &'a NewEvent,
}

/// Locks the group's stored streams (in stream id order) and then the head, which serialises
/// appenders of every process, and reads each stream of the group; the statements are pipelined
/// and run in order on the server. `None` when a stream of the group was created by another
/// process between the two locks: its row is not locked, so the caller starts over.
async fn lock_and_load<'a>(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    schema: &str,
    requests: &[&'a AppendRequest],
) -> Result<Option<(Position, HashMap<&'a str, StreamState<'a>>)>, ReelError> {
    match load(tx, statements, schema, requests, true).await? {
        (Some((head, stored)), streams) if stored == streams.values().filter(|s| s.stream_id.is_some()).count() => {
            Ok(Some((head, streams)))
        }
        (Some(_), _) => Ok(None),
        (None, _) => Err(ReelError::storage("locking the head", "the head row is missing")),
    }
}

/// Reads each stream of the group (and the recent ids of those appended with ids) without any
/// lock: what the one-call append decides on, and checks again under the lock.
pub(crate) async fn load_streams<'a>(
    client: &Client,
    statements: &mut Statements,
    schema: &str,
    requests: &[&'a AppendRequest],
) -> Result<HashMap<&'a str, StreamState<'a>>, ReelError> {
    Ok(load(client, statements, schema, requests, false).await?.1)
}

/// The group's streams, locked and followed by the head lock when `lock`: then the head's
/// position comes back too, with how many of the group's streams exist once the head is held.
async fn load<'a, C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    schema: &str,
    requests: &[&'a AppendRequest],
    lock: bool,
) -> Result<(Option<(Position, usize)>, HashMap<&'a str, StreamState<'a>>), ReelError> {
    let storage = |what: &'static str| move |e: tokio_postgres::Error| crate::storage_error(what, e);
    let mut names: Vec<&str> = requests.iter().map(|r| r.stream.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut with_ids: Vec<&str> =
        requests.iter().filter(|r| r.events.iter().any(|e| e.id.is_some())).map(|r| r.stream.as_str()).collect();
    with_ids.sort_unstable();
    with_ids.dedup();

    // Streams first, in stream id order, then the head: the order `append_group_v5` (migration
    // 7) takes them in, so appenders never deadlock. The head is taken with its row lock alone
    // and the transaction commits without waiting for its flush; the barrier after it waits
    // for the flush instead (see durable.rs).
    let lookup_sql = if lock {
        format!(
            "SELECT name, stream_id, version FROM {schema}.streams WHERE name = ANY($1) ORDER BY stream_id FOR UPDATE"
        )
    } else {
        format!("SELECT name, stream_id, version FROM {schema}.streams WHERE name = ANY($1)")
    };
    let lookup = prepared(client, statements, lookup_sql).await.map_err(storage("looking up streams"))?;
    let lock_sql =
        format!("SELECT h.position, set_config('synchronous_commit', 'off', true) FROM {schema}.head h FOR UPDATE");
    let lock_statement = prepared(client, statements, lock_sql).await.map_err(storage("locking the head"))?;
    // A statement of its own, so that its snapshot is taken once the head is held.
    let count_sql = format!("SELECT count(*) FROM {schema}.streams WHERE name = ANY($1)");
    let count = prepared(client, statements, count_sql).await.map_err(storage("looking up streams"))?;
    let recent_sql = format!(
        "SELECT s.name, e.event_id, e.stream_version FROM {schema}.streams s
         JOIN {schema}.events e ON e.stream_id = s.stream_id AND e.stream_version >= s.version - {}
         WHERE s.name = ANY($1)",
        RECENT_ID_WINDOW - 1
    );
    let recent = prepared(client, statements, recent_sql).await.map_err(storage("reading recent event ids"))?;
    // Joined, not try-joined: when a lock fails, the later statements fail too ("transaction is
    // aborted"), and the first error is the one that says why.
    let (found, head, recent) = tokio::join!(
        async { client.query(&lookup, &[&names]).await.map_err(storage("looking up streams")) },
        async {
            if !lock {
                return Ok(None);
            }
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&names];
            let (head, count) = tokio::join!(client.query_one(&lock_statement, &[]), client.query_one(&count, &params));
            let head: i64 = head.map_err(storage("locking the head"))?.get(0);
            let existing: i64 = count.map_err(storage("looking up streams"))?.get(0);
            Ok(Some((Position(head as u64), existing as usize)))
        },
        async {
            if with_ids.is_empty() {
                return Ok(Vec::new());
            }
            client.query(&recent, &[&with_ids]).await.map_err(storage("reading recent event ids"))
        },
    );
    let (found, head, recent) = (found?, head?, recent?);

    let mut streams: HashMap<&'a str, StreamState<'a>> = HashMap::with_capacity(names.len());
    for request in requests {
        streams.entry(request.stream.as_str()).or_insert_with(|| StreamState::absent(&request.stream));
    }
    for row in &found {
        if let Some(state) = streams.get_mut(row.get::<_, &str>(0)) {
            let version = row.get::<_, i64>(2) as u64;
            state.stream_id = Some(row.get(1));
            state.stored_version = Some(version);
            state.version = Some(version);
            state.window_complete = false;
        }
    }
    for row in &recent {
        if let Some(state) = streams.get_mut(row.get::<_, &str>(0)) {
            state.recent.insert(EventId(row.get(1)), row.get::<_, i64>(2) as u64);
        }
    }
    // The ids were read by a statement of their own, after the lookup: the window is the one at
    // the looked-up version only if no id is newer (a newer read may start its window later).
    for name in &with_ids {
        if let Some(state) = streams.get_mut(name) {
            if let Some(version) = state.stored_version {
                state.window_complete = state.recent.values().all(|v| *v <= version);
            }
        }
    }
    Ok((head, streams))
}

enum Decision {
    Append,
    Retried(AppendResult),
}

/// Expected version and idempotency for one append, against the stream as the group sees it.
async fn decide(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    schema: &str,
    request: &AppendRequest,
    state: &StreamState<'_>,
) -> Result<Decision, Rejected> {
    let stream = &request.stream;
    let events = &request.events;
    let actual = state.version.map(StreamVersion);
    if !request.expected.is_satisfied_by(actual) {
        if let (Some(_), Some(start), Some(first_id)) = (state.version, retry_start(request.expected), events[0].id) {
            let stored = stored_from(tx, statements, schema, state, start, events.len()).await?;
            if stored.first().map(|s| s.id) == Some(first_id) {
                return Ok(Decision::Retried(same_append(stream, &stored, events)?));
            }
        }
        return Err(
            ReelError::WrongExpectedVersion { stream: stream.clone(), expected: request.expected, actual }.into()
        );
    }
    if state.version.is_some() && events.iter().any(|e| e.id.is_some()) {
        if let RecentIds::RetryFrom(from) = check_recent(stream, &state.recent, events)? {
            let stored = stored_from(tx, statements, schema, state, from, events.len()).await?;
            return Ok(Decision::Retried(same_append(stream, &stored, events)?));
        }
    }
    Ok(Decision::Append)
}

/// The group's accepted appends, written by one statement.
#[derive(Default)]
pub(crate) struct GroupWrite<'a> {
    pub(crate) positions: Vec<i64>,
    pub(crate) names: Vec<&'a str>,
    pub(crate) versions: Vec<i64>,
    pub(crate) ids: Vec<uuid::Uuid>,
    pub(crate) types: Vec<&'a str>,
    pub(crate) data: Vec<&'a [u8]>,
    pub(crate) metadata: Vec<Option<serde_json::Value>>,
    pub(crate) tags: Vec<Option<serde_json::Value>>,
    /// Each event's tags, for deciding later conditions of the same group.
    tag_lists: Vec<&'a [String]>,
}

impl<'a> GroupWrite<'a> {
    /// The first event this group has placed so far that matches `query` after `after`.
    pub(crate) fn first_match(&self, query: &reel_core::Query, after: Position) -> Option<Position> {
        (0..self.positions.len())
            .find(|&i| self.positions[i] as u64 > after.0 && query.matches(self.types[i], self.tag_lists[i]))
            .map(|i| Position(self.positions[i] as u64))
    }

    /// Places the request's events after the group's head and the stream's version.
    pub(crate) fn add(
        &mut self,
        request: &'a AppendRequest,
        state: &mut StreamState<'a>,
        head: &mut Position,
    ) -> AppendResult {
        let first_position = head.next();
        let first_version = state.version.map_or(0, |v| v + 1);
        for (i, event) in request.events.iter().enumerate() {
            let (position, version) = (Position(first_position.0 + i as u64), first_version + i as u64);
            let id = event.id.unwrap_or_else(EventId::new_v7);
            self.positions.push(position.0 as i64);
            self.names.push(request.stream.as_str());
            self.versions.push(version as i64);
            self.ids.push(id.0);
            self.types.push(event.event_type.as_str());
            self.data.push(event.data.as_slice());
            self.metadata.push((!event.metadata.is_empty()).then(|| serde_json::Value::Object(event.metadata.clone())));
            self.tags.push(crate::tag_index::tags_json(&event.tags));
            self.tag_lists.push(&event.tags);
            state.recent.insert(id, version);
            state.pending.push(Pending { position, version, id, event });
        }
        let n = request.events.len() as u64;
        let last_version = first_version + n - 1;
        state.version = Some(last_version);
        *head = Position(head.0 + n);
        AppendResult { first_position, last_position: *head, next_version: StreamVersion(last_version) }
    }

    /// Stream rows (updated or created), events and the head in one statement.
    async fn write(
        &self,
        tx: &Transaction<'_>,
        statements: &mut Statements,
        schema: &str,
        streams: &HashMap<&str, StreamState<'_>>,
        head: Position,
        now: Timestamp,
    ) -> Result<(), ReelError> {
        let (mut updated_ids, mut updated_versions) = (Vec::new(), Vec::new());
        let (mut created, mut created_categories, mut created_versions) = (Vec::new(), Vec::new(), Vec::new());
        for state in streams.values() {
            let Some(version) = state.version.filter(|v| Some(*v) != state.stored_version) else { continue };
            match state.stream_id {
                Some(id) => {
                    updated_ids.push(id);
                    updated_versions.push(version as i64);
                }
                None => {
                    created.push(state.name.as_str());
                    created_categories.push(state.name.category());
                    created_versions.push(version as i64);
                }
            }
        }
        if self.positions.len() >= COPY_FROM_EVENTS {
            let rows = StreamRows { updated_ids, updated_versions, created, created_categories, created_versions };
            return self.write_with_copy(tx, statements, schema, streams, rows, head, now).await;
        }
        let sql = format!(
            "WITH updated AS (
                UPDATE {schema}.streams s SET version = u.version
                FROM UNNEST($1::bigint[], $2::bigint[]) AS u(stream_id, version)
                WHERE s.stream_id = u.stream_id RETURNING s.stream_id, s.name),
             created AS (
                INSERT INTO {schema}.streams (name, category, version)
                SELECT * FROM UNNEST($3::text[], $4::text[], $5::bigint[]) RETURNING stream_id, name),
             touched AS (SELECT * FROM updated UNION ALL SELECT * FROM created),
             inserted AS (
                INSERT INTO {schema}.events
                    (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, tags)
                SELECT x.p, t.stream_id, x.v, x.i, x.t, x.d, x.m, $13, x.g
                FROM UNNEST($6::bigint[], $7::text[], $8::bigint[], $9::uuid[], $10::text[], $11::bytea[], $12::jsonb[],
                            $15::jsonb[])
                    AS x(p, n, v, i, t, d, m, g)
                JOIN touched t ON t.name = x.n
                ORDER BY x.p
                RETURNING 1),
             tagged AS (
                INSERT INTO {schema}.event_tags (tag, position)
                SELECT DISTINCT g.tag, x.p FROM UNNEST($6::bigint[], $15::jsonb[]) AS x(p, tags),
                    jsonb_array_elements_text(x.tags) AS g(tag)
                WHERE x.tags IS NOT NULL),
             moved AS (UPDATE {schema}.head SET position = $14)
             SELECT (SELECT count(*) FROM inserted)"
        );
        let fail = |e| crate::storage_error("writing appended events", e);
        let statement = prepared(tx, statements, sql).await.map_err(fail)?;
        let row = tx
            .query_one(
                &statement,
                &[
                    &updated_ids,
                    &updated_versions,
                    &created,
                    &created_categories,
                    &created_versions,
                    &self.positions,
                    &self.names,
                    &self.versions,
                    &self.ids,
                    &self.types,
                    &self.data,
                    &self.metadata,
                    &now.unix_micros(),
                    &(head.0 as i64),
                    &self.tags,
                ],
            )
            .await
            .map_err(fail)?;
        let inserted = row.get::<_, i64>(0) as usize;
        if inserted != self.positions.len() {
            // Cannot happen while every appender holds the head lock; refusing to commit keeps
            // positions gap-free if it ever did.
            return Err(ReelError::storage(
                "writing appended events",
                format!("{inserted} of {} events matched a stream row", self.positions.len()),
            ));
        }
        Ok(())
    }
}

/// Stream rows a group changes.
struct StreamRows<'a> {
    updated_ids: Vec<i64>,
    updated_versions: Vec<i64>,
    created: Vec<&'a str>,
    created_categories: Vec<&'a str>,
    created_versions: Vec<i64>,
}

/// From this many events a group is written with `COPY … FROM STDIN BINARY`, which costs the
/// server far less per row than an `INSERT … SELECT FROM UNNEST`, for two more round trips.
const COPY_FROM_EVENTS: usize = 512;

impl GroupWrite<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn write_with_copy(
        &self,
        tx: &Transaction<'_>,
        statements: &mut Statements,
        schema: &str,
        streams: &HashMap<&str, StreamState<'_>>,
        rows: StreamRows<'_>,
        head: Position,
        now: Timestamp,
    ) -> Result<(), ReelError> {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::Type;

        let fail = |e| crate::storage_error("writing appended events", e);
        let sql = format!(
            "WITH updated AS (
                UPDATE {schema}.streams s SET version = u.version
                FROM UNNEST($1::bigint[], $2::bigint[]) AS u(stream_id, version)
                WHERE s.stream_id = u.stream_id)
             INSERT INTO {schema}.streams (name, category, version)
             SELECT * FROM UNNEST($3::text[], $4::text[], $5::bigint[]) RETURNING name, stream_id"
        );
        let statement = prepared(tx, statements, sql).await.map_err(fail)?;
        let created = tx
            .query(
                &statement,
                &[
                    &rows.updated_ids,
                    &rows.updated_versions,
                    &rows.created,
                    &rows.created_categories,
                    &rows.created_versions,
                ],
            )
            .await
            .map_err(fail)?;
        let mut ids: HashMap<&str, i64> =
            streams.iter().filter_map(|(name, state)| Some((*name, state.stream_id?))).collect();
        for row in &created {
            let name: &str = row.get(0);
            if let Some((known, _)) = streams.get_key_value(name) {
                ids.insert(known, row.get(1));
            }
        }
        let copy = format!(
            "COPY {schema}.events
                (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, tags)
             FROM STDIN BINARY"
        );
        let sink = tx.copy_in(&copy).await.map_err(fail)?;
        let types = [
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::UUID,
            Type::TEXT,
            Type::BYTEA,
            Type::JSONB,
            Type::INT8,
            Type::JSONB,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures_util::pin_mut!(writer);
        let recorded_at = now.unix_micros();
        for i in 0..self.positions.len() {
            let stream_id = ids.get(self.names[i]).copied().ok_or_else(|| {
                ReelError::storage("writing appended events", format!("no stream row for {}", self.names[i]))
            })?;
            writer
                .as_mut()
                .write(&[
                    &self.positions[i],
                    &stream_id,
                    &self.versions[i],
                    &self.ids[i],
                    &self.types[i],
                    &self.data[i],
                    &self.metadata[i],
                    &recorded_at,
                    &self.tags[i],
                ])
                .await
                .map_err(fail)?;
        }
        let written = writer.finish().await.map_err(fail)?;
        if written as usize != self.positions.len() {
            return Err(ReelError::storage(
                "writing appended events",
                format!("COPY stored {written} of {} events", self.positions.len()),
            ));
        }
        let sql = format!(
            "WITH tagged AS (
                INSERT INTO {schema}.event_tags (tag, position)
                SELECT DISTINCT g.tag, x.p FROM UNNEST($2::bigint[], $3::jsonb[]) AS x(p, tags),
                    jsonb_array_elements_text(x.tags) AS g(tag)
                WHERE x.tags IS NOT NULL)
             UPDATE {schema}.head SET position = $1"
        );
        let statement = prepared(tx, statements, sql).await.map_err(fail)?;
        tx.execute(&statement, &[&(head.0 as i64), &self.positions, &self.tags]).await.map_err(fail)?;
        Ok(())
    }
}

/// The channel of a schema's head announcements.
pub fn channel(schema: &str) -> String {
    format!("reel_head_{schema}")
}

/// The stream's events from version `start` on, at most `limit`: stored ones first, then this
/// group's.
async fn stored_from(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    schema: &str,
    state: &StreamState<'_>,
    start: u64,
    limit: usize,
) -> Result<Vec<StoredForRetry>, Rejected> {
    let mut found = Vec::with_capacity(limit);
    if let (Some(stream_id), Some(stored_version)) = (state.stream_id, state.stored_version) {
        if start <= stored_version {
            let sql = format!(
                "SELECT position, stream_version, event_id, event_type, data, metadata, tags FROM {schema}.events
                 WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3"
            );
            let fail = |e| Rejected::Write(crate::storage_error("checking for a retried append", e));
            let statement = prepared(tx, statements, sql).await.map_err(fail)?;
            let rows = tx.query(&statement, &[&stream_id, &(start as i64), &(limit as i64)]).await.map_err(fail)?;
            found.extend(rows.iter().map(|r| StoredForRetry {
                position: Position(r.get::<_, i64>(0) as u64),
                version: r.get::<_, i64>(1) as u64,
                id: EventId(r.get(2)),
                event_type: r.get(3),
                data: r.get(4),
                metadata: match r.get::<_, Option<serde_json::Value>>(5) {
                    Some(serde_json::Value::Object(map)) => map,
                    _ => Default::default(),
                },
                tags: crate::tag_index::tags_from_json(r.get(6)),
            }));
        }
    }
    let more = limit - found.len();
    found.extend(state.pending.iter().filter(|p| p.version >= start).take(more).map(|p| StoredForRetry {
        position: p.position,
        version: p.version,
        id: p.id,
        event_type: p.event.event_type.clone(),
        data: p.event.data.clone(),
        metadata: p.event.metadata.clone(),
        tags: p.event.tags.clone(),
    }));
    Ok(found)
}
