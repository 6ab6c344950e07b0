//! Group commit across processes: one writer leads, the others hand it their groups.
//!
//! Every append takes the head row, so processes that append to one schema take turns at it:
//! one hand-off per group, and a process with a few writers has groups of one or two appends.
//! Sixteen such processes reached a seventh of what one process with the same writers did
//! (docs/BENCHMARKS.md). So when a writer sees other processes append, one writer leads
//! (it holds an advisory lock) and the others *follow*: a follower inserts its group into
//! `append_queue` and waits; the leader takes the queued groups, writes them together with its
//! own in one commit, and writes each row's answers. The head then changes hands once per
//! leader group, whatever the number of processes.
//!
//! The protocol (migration 12) needs no NOTIFY (each one wakes every listening backend of the
//! database) and no polling by followers. Rounds are numbered; the leader holds advisory lock
//! `r` from before round `r - 1` begins until round `r`'s answers are written, and publishes the
//! round in progress in a sequence before taking rows. A follower whose row is committed before
//! it reads round `c` is taken in round `c` or `c + 1`, so it waits on lock `c`, then `c + 1`,
//! checking for its answer after each (`await_append`, one round trip with the insert).
//!
//! Nothing here is needed for correctness: any writer may still append directly at any time
//! (the head row orders everything), and a follower appends directly whatever no leader took.
//! A leader that vanishes with rows taken and unanswered leaves their outcome unknown, as a lost
//! connection after a commit does (answered as such, never appended twice); rows it had not
//! taken are appended by their followers.

use std::time::{Duration, Instant};

use reel_core::{
    AppendRequest, AppendResult, EventId, ExpectedVersion, NewEvent, Position, ReelError, StreamName, StreamVersion,
};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::writer::{prepared, Statements};

/// A group a follower queued, as the leader took it.
pub(crate) struct TakenRow {
    id: Uuid,
    /// Empty when the row could not be read: the follower then appends it itself.
    pub(crate) requests: Vec<AppendRequest>,
}

/// What a follower learnt.
pub(crate) enum Followed {
    /// One entry per request: its answer, or `None` when the follower must append it itself
    /// (the leader did not write it: a check failed, which the direct path answers exactly).
    Answered(Vec<Option<Result<AppendResult, ReelError>>>),
    /// Nobody leads: nothing was taken, append directly.
    NoLeader,
}

/// This writer's part in forwarding: leading, following or neither.
pub(crate) struct Forwarding {
    /// The round this writer leads, when it leads.
    round: Option<i64>,
    /// Answers to the rows taken this round, written when the round ends.
    answers: Vec<(Uuid, Vec<u8>)>,
    /// When a take last found rows.
    followers_seen: Option<Instant>,
    /// When rows were last taken (found or not).
    last_take: Instant,
    /// When this leader last had a group of its own or of others.
    busy_at: Instant,
    /// Whether the next group that could follow tries to lead first.
    try_lead: bool,
    /// Until when this writer appends directly because the leader stalled.
    direct_until: Option<Instant>,
}

impl Forwarding {
    /// How often an idle leader with followers looks for their rows.
    const POLL: Duration = Duration::from_micros(500);
    /// How often a busy leader without followers looks for new ones.
    const TAKE_EVERY: Duration = Duration::from_millis(10);
    /// How long followers count as present after their last row.
    const FOLLOWERS_RECENT: Duration = Duration::from_millis(100);
    /// How long a leader stays idle before it lets another writer lead.
    const RESIGN_AFTER: Duration = Duration::from_millis(200);
    /// How long a follower waits for a round to end before it appends directly (a round
    /// usually takes a few milliseconds; a leading process that stopped must not stop the rest).
    const PATIENCE: Duration = Duration::from_secs(1);
    /// Longest a follower waits for a group its leader took: a leading process that is stopped
    /// (not dead: its connection stays open) must not hold the follower's writer for ever.
    const MAX_WAIT: Duration = Duration::from_secs(30);
    /// How long a follower appends directly after its leader stalled.
    const DIRECT_AFTER_STALL: Duration = Duration::from_secs(5);
    /// Most queued groups one round takes.
    const TAKE_ROWS: i64 = 64;

    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            round: None,
            answers: Vec::new(),
            followers_seen: None,
            last_take: now,
            busy_at: now,
            try_lead: true,
            direct_until: None,
        }
    }

    pub(crate) fn leading(&self) -> bool {
        self.round.is_some()
    }

    /// The connection was lost, and the locks with it.
    pub(crate) fn reset(&mut self) {
        *self = Self::new();
    }

    fn followers_recent(&self) -> bool {
        self.followers_seen.is_some_and(|at| at.elapsed() < Self::FOLLOWERS_RECENT)
    }

    /// How long the writer may wait for its own jobs before, as a leader, it must act; `None`
    /// when it only waits for jobs.
    pub(crate) fn idle_wait(&self) -> Option<Duration> {
        if !self.leading() {
            None
        } else if !self.answers.is_empty() {
            Some(Duration::ZERO)
        } else if self.followers_recent() {
            Some(Self::POLL)
        } else {
            Some(Self::TAKE_EVERY)
        }
    }

    /// Whether this group takes queued rows first (a leader without followers looks only now
    /// and then, so a lone process pays nearly nothing for it).
    pub(crate) fn take_due(&self, own_is_empty: bool) -> bool {
        self.leading()
            && (own_is_empty
                || !self.answers.is_empty()
                || self.followers_recent()
                || self.last_take.elapsed() >= Self::TAKE_EVERY)
    }

    /// Whether this leader has been idle long enough to step down.
    pub(crate) fn idle_long(&self) -> bool {
        self.leading() && self.answers.is_empty() && self.busy_at.elapsed() >= Self::RESIGN_AFTER
    }

    /// Whether groups may be handed to a leader now (not while the last one stalled).
    pub(crate) fn may_follow(&self) -> bool {
        self.direct_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Whether a group that could follow should try to lead first.
    pub(crate) fn should_try_lead(&self) -> bool {
        self.try_lead
    }

    /// Tries to become the leader; `false` when another writer leads.
    pub(crate) async fn try_lead(
        &mut self,
        client: &Client,
        statements: &mut Statements,
        schema: &str,
    ) -> Result<bool, ReelError> {
        let fail = |e| crate::storage_error("trying to lead the schema's appends", e);
        let statement = prepared(client, statements, format!("SELECT {schema}.try_lead()")).await.map_err(fail)?;
        let round: Option<i64> = client.query_one(&statement, &[]).await.map_err(fail)?.get(0);
        self.try_lead = false;
        if let Some(round) = round {
            tracing::debug!(schema, round, "leading the schema's appends");
            self.round = Some(round);
            self.busy_at = Instant::now();
        }
        Ok(round.is_some())
    }

    /// Ends the round (writes its answers), begins the next, and takes what followers queued,
    /// in one round trip.
    pub(crate) async fn cycle(
        &mut self,
        client: &Client,
        statements: &mut Statements,
        schema: &str,
    ) -> Result<Vec<TakenRow>, ReelError> {
        let Some(round) = self.round else { return Ok(Vec::new()) };
        let fail = |e| crate::storage_error("taking the appends other processes queued", e);
        let write_answers = prepared(client, statements, answers_sql(schema)).await.map_err(fail)?;
        let next_round = prepared(client, statements, format!("SELECT {schema}.next_round($1)")).await.map_err(fail)?;
        let take = prepared(
            client,
            statements,
            format!(
                "UPDATE {schema}.append_queue q SET taken = true
                 WHERE q.id IN (SELECT id FROM {schema}.append_queue WHERE NOT taken
                                ORDER BY id LIMIT {} FOR UPDATE SKIP LOCKED)
                 RETURNING q.id, q.request",
                Self::TAKE_ROWS
            ),
        )
        .await
        .map_err(fail)?;
        let (ids, bodies) = self.drain_answers();
        // Sent in this order in one round trip: answers, then the lock that releases their
        // followers, then the take that the new round's number covers.
        let (round_param, no_params): (
            [&(dyn tokio_postgres::types::ToSql + Sync); 1],
            [&(dyn tokio_postgres::types::ToSql + Sync); 0],
        ) = ([&round], []);
        let (answered, next, taken) = tokio::join!(
            async {
                if ids.is_empty() {
                    Ok(0)
                } else {
                    client.execute(&write_answers, &[&ids, &bodies]).await
                }
            },
            client.query_one(&next_round, &round_param),
            client.query(&take, &no_params),
        );
        answered.map_err(fail)?;
        self.round = Some(next.map_err(fail)?.get(0));
        let taken = taken.map_err(fail)?;
        self.last_take = Instant::now();
        if !taken.is_empty() {
            self.followers_seen = Some(self.last_take);
            self.busy_at = self.last_take;
        }
        Ok(taken
            .iter()
            .map(|row| TakenRow { id: row.get(0), requests: decode_requests(row.get(1)).unwrap_or_default() })
            .collect())
    }

    /// Keeps the answers to `rows` (`results` holds one per request, in order), for the end of
    /// the round. Only successes are answered as such: a request that was refused is handed
    /// back, and its follower appends it directly for the exact answer.
    pub(crate) fn record(&mut self, rows: &[TakenRow], results: &[Result<AppendResult, ReelError>]) {
        self.busy_at = Instant::now();
        let mut results = results.iter();
        for row in rows {
            let answers: Vec<&Result<AppendResult, ReelError>> = results.by_ref().take(row.requests.len()).collect();
            self.answers.push((row.id, encode_answers(&answers)));
        }
    }

    /// The answers kept this round, as the parameters of `answers_sql`.
    fn drain_answers(&mut self) -> (Vec<Uuid>, Vec<Vec<u8>>) {
        std::mem::take(&mut self.answers).into_iter().unzip()
    }

    /// Notes a group of this leader's own.
    pub(crate) fn note_busy(&mut self) {
        self.busy_at = Instant::now();
    }

    /// Writes what is still to be answered and stops leading.
    pub(crate) async fn resign(
        &mut self,
        client: &Client,
        statements: &mut Statements,
        schema: &str,
    ) -> Result<(), ReelError> {
        let Some(round) = self.round else { return Ok(()) };
        let fail = |e| crate::storage_error("handing on the lead of the schema's appends", e);
        if !self.answers.is_empty() {
            let write_answers = prepared(client, statements, answers_sql(schema)).await.map_err(fail)?;
            let (ids, bodies) = self.drain_answers();
            client.execute(&write_answers, &[&ids, &bodies]).await.map_err(fail)?;
        }
        let resign = prepared(client, statements, format!("SELECT {schema}.resign($1)")).await.map_err(fail)?;
        client.execute(&resign, &[&round]).await.map_err(fail)?;
        tracing::debug!(schema, round, "no longer leading the schema's appends");
        self.round = None;
        Ok(())
    }

    /// Queues the group for the leader and waits for its answers, in one round trip. An error
    /// leaves the outcome unknown, and the caller must drop the connection (the wait's locks
    /// are session locks, released one by one unless the call broke off).
    pub(crate) async fn follow(
        &mut self,
        client: &Client,
        statements: &mut Statements,
        schema: &str,
        requests: &[&AppendRequest],
    ) -> Result<Followed, ReelError> {
        let fail = |e| crate::storage_error("appending through the leading writer", e);
        let insert =
            prepared(client, statements, format!("INSERT INTO {schema}.append_queue (id, request) VALUES ($1, $2)"))
                .await
                .map_err(fail)?;
        let wait = prepared(client, statements, format!("SELECT status, answer FROM {schema}.await_append($1, $2)"))
            .await
            .map_err(fail)?;
        let id = EventId::new_v7().0;
        let body = encode_requests(requests);
        let insert_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &body];
        let patience = Self::PATIENCE.as_millis() as i32;
        let wait_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &patience];
        let queued =
            async { tokio::join!(client.execute(&insert, &insert_params), client.query_one(&wait, &wait_params)) };
        let Ok((inserted, waited)) = tokio::time::timeout(Self::MAX_WAIT, queued).await else {
            // The wait stops in the database too; the caller replaces the connection.
            let _ = client.cancel_token().cancel_query(tokio_postgres::NoTls).await;
            self.direct_until = Some(Instant::now() + Self::DIRECT_AFTER_STALL);
            return Err(crate::durable::unconfirmed(ReelError::storage(
                "appending through the leading writer",
                format!("the leading process took the append and gave no answer within {} s", Self::MAX_WAIT.as_secs()),
            )));
        };
        let (status, answer): (i16, Option<Vec<u8>>) = {
            let row = waited.map_err(|e| crate::durable::unconfirmed(fail(e)))?;
            (row.get(0), row.get(1))
        };
        match status {
            0 => Ok(Followed::Answered(decode_answers(answer.as_deref().unwrap_or_default(), requests.len()))),
            1 => {
                // Also what a failed insert gives (nothing was queued); its error says why.
                inserted.map_err(fail)?;
                self.try_lead = true;
                Ok(Followed::NoLeader)
            }
            3 => {
                tracing::warn!(schema, "the leading writer made no progress; appending directly for a while");
                self.direct_until = Some(Instant::now() + Self::DIRECT_AFTER_STALL);
                Ok(Followed::NoLeader)
            }
            _ => Err(ReelError::storage(
                "appending through the leading writer (the outcome is unknown; retry with event ids)",
                "the leading process took the append and stopped before answering",
            )),
        }
    }
}

/// Whether a group can be handed to a leader: conditions are decided by their own writer.
pub(crate) fn forwardable(requests: &[&AppendRequest]) -> bool {
    !requests.is_empty() && requests.iter().all(|r| r.condition.is_none())
}

fn answers_sql(schema: &str) -> String {
    format!(
        "UPDATE {schema}.append_queue q SET answer = a.answer
         FROM unnest($1::uuid[], $2::bytea[]) AS a(id, answer) WHERE q.id = a.id"
    )
}

// The row formats. Both sides are this crate, and a row lives for one round, so the format
// only has to be self-consistent; the version byte lets a later build refuse an older row
// (its follower then appends it itself).

const FORMAT: u8 = 1;
const ANSWERED: u8 = 0;
const HANDED_BACK: u8 = 1;
const UNKNOWN: u8 = 2;

fn encode_requests(requests: &[&AppendRequest]) -> Vec<u8> {
    let mut out = Encoder(Vec::with_capacity(64 + requests.iter().map(|r| r.events.len() * 320).sum::<usize>()));
    out.u8(FORMAT);
    out.u32(requests.len());
    for request in requests {
        out.bytes(request.stream.as_str().as_bytes());
        match request.expected {
            ExpectedVersion::Any => out.u8(0),
            ExpectedVersion::NoStream => out.u8(1),
            ExpectedVersion::StreamExists => out.u8(2),
            ExpectedVersion::Exact(v) => {
                out.u8(3);
                out.u64(v.0);
            }
        }
        out.u32(request.events.len());
        for event in &request.events {
            match event.id {
                Some(id) => {
                    out.u8(1);
                    out.0.extend_from_slice(id.as_bytes());
                }
                None => out.u8(0),
            }
            out.bytes(event.event_type.as_bytes());
            out.bytes(&event.data);
            if event.metadata.is_empty() {
                out.bytes(&[]);
            } else {
                out.bytes(&serde_json::to_vec(&event.metadata).unwrap_or_default());
            }
            out.u32(event.tags.len());
            for tag in &event.tags {
                out.bytes(tag.as_bytes());
            }
        }
    }
    out.0
}

fn decode_requests(body: &[u8]) -> Option<Vec<AppendRequest>> {
    let mut input = Decoder(body);
    if input.u8()? != FORMAT {
        return None;
    }
    let count = input.u32()?;
    let mut requests = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let stream = StreamName::new(input.string()?).ok()?;
        let expected = match input.u8()? {
            0 => ExpectedVersion::Any,
            1 => ExpectedVersion::NoStream,
            2 => ExpectedVersion::StreamExists,
            3 => ExpectedVersion::Exact(StreamVersion(input.u64()?)),
            _ => return None,
        };
        let events_count = input.u32()?;
        let mut events = Vec::with_capacity(events_count.min(4096));
        for _ in 0..events_count {
            let id = match input.u8()? {
                0 => None,
                1 => Some(EventId::from_bytes(input.take(16)?.try_into().ok()?)),
                _ => return None,
            };
            let event_type = input.string()?;
            let data = input.bytes()?.to_vec();
            let metadata = match input.bytes()? {
                [] => serde_json::Map::new(),
                json => serde_json::from_slice(json).ok()?,
            };
            let tags = (0..input.u32()?).map(|_| input.string()).collect::<Option<Vec<_>>>()?;
            events.push(NewEvent { id, event_type, data, metadata, tags });
        }
        requests.push(AppendRequest::new(stream, expected, events));
    }
    input.0.is_empty().then_some(requests)
}

fn encode_answers(results: &[&Result<AppendResult, ReelError>]) -> Vec<u8> {
    let mut out = Encoder(Vec::with_capacity(8 + results.len() * 25));
    out.u8(FORMAT);
    out.u32(results.len());
    for result in results {
        match result {
            Ok(r) => {
                out.u8(ANSWERED);
                out.u64(r.first_position.0);
                out.u64(r.last_position.0);
                out.u64(r.next_version.0);
            }
            Err(e) if refused(e) => out.u8(HANDED_BACK),
            Err(e) => {
                out.u8(UNKNOWN);
                out.bytes(e.to_string().as_bytes());
            }
        }
    }
    out.0
}

/// One entry per request; what the body does not say is handed back.
fn decode_answers(body: &[u8], requests: usize) -> Vec<Option<Result<AppendResult, ReelError>>> {
    let mut answers = Vec::with_capacity(requests);
    let mut input = Decoder(body);
    if input.u8() == Some(FORMAT) && input.u32() == Some(requests) {
        for _ in 0..requests {
            let answer = match input.u8() {
                Some(ANSWERED) => (|| {
                    Some(Ok(AppendResult {
                        first_position: Position(input.u64()?),
                        last_position: Position(input.u64()?),
                        next_version: StreamVersion(input.u64()?),
                    }))
                })(),
                Some(UNKNOWN) => input.string().map(|message| {
                    Err(ReelError::storage(
                        "appending through the leading writer (the outcome is unknown; retry with event ids)",
                        message,
                    ))
                }),
                _ => None,
            };
            answers.push(answer);
        }
    }
    answers.resize_with(requests, || None);
    answers
}

/// Whether an error says that nothing was written for the request, whatever the state.
fn refused(error: &ReelError) -> bool {
    !matches!(error, ReelError::Storage { .. } | ReelError::TimedOut { .. } | ReelError::Closed)
}

struct Encoder(Vec<u8>);

impl Encoder {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn u32(&mut self, value: usize) {
        self.0.extend_from_slice(&(value as u32).to_le_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn bytes(&mut self, value: &[u8]) {
        self.u32(value.len());
        self.0.extend_from_slice(value);
    }
}

struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()?;
        self.take(len)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_comes_back_from_its_row_unchanged() {
        let mut metadata = serde_json::Map::new();
        metadata.insert("device".into(), serde_json::json!("unit-7"));
        let first = AppendRequest::new(
            StreamName::new("locker-7").unwrap(),
            ExpectedVersion::Exact(StreamVersion(41)),
            vec![
                NewEvent {
                    id: Some(EventId::new_v7()),
                    event_type: "DoorOpened".into(),
                    data: b"{}".to_vec(),
                    metadata,
                    tags: vec!["locker:7".into()],
                },
                NewEvent::new("DoorClosed", vec![0u8, 255, 7]),
            ],
        );
        let second = AppendRequest::new(
            StreamName::new("unit-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Seen", Vec::new())],
        );
        let body = encode_requests(&[&first, &second]);
        let back = decode_requests(&body).expect("decodes");
        assert_eq!(back.len(), 2);
        for (original, decoded) in [first, second].iter().zip(&back) {
            assert_eq!(original.stream, decoded.stream);
            assert_eq!(original.expected, decoded.expected);
            assert_eq!(original.events, decoded.events);
        }
        // A row cut short or from another format is not read as a group.
        assert!(decode_requests(&body[..body.len() - 1]).is_none());
        let mut other = body.clone();
        other[0] = FORMAT + 1;
        assert!(decode_requests(&other).is_none());
    }

    #[test]
    fn only_successes_are_answered_and_everything_else_is_handed_back_or_unknown() {
        let ok = Ok(AppendResult {
            first_position: Position(10),
            last_position: Position(12),
            next_version: StreamVersion(3),
        });
        let refused = Err(ReelError::WrongExpectedVersion {
            stream: StreamName::new("s").unwrap(),
            expected: ExpectedVersion::NoStream,
            actual: Some(StreamVersion(0)),
        });
        let lost = Err(ReelError::storage("committing appends", "connection closed"));
        let answers = decode_answers(&encode_answers(&[&ok, &refused, &lost]), 3);
        assert_eq!(answers[0].as_ref().unwrap().as_ref().unwrap(), ok.as_ref().unwrap());
        assert!(answers[1].is_none(), "a refused request is appended again by its own writer");
        let unknown = answers[2].as_ref().unwrap().as_ref().unwrap_err().to_string();
        assert!(unknown.contains("outcome is unknown") && unknown.contains("connection closed"), "{unknown}");
        // An answer for another number of requests hands every request back.
        assert!(decode_answers(&encode_answers(&[&ok]), 2).iter().all(Option::is_none));
    }
}
