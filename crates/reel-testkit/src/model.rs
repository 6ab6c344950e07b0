//! Model-based property test: random appends (every expected-version kind, retries, tampered
//! duplicates, batches, tags and append conditions) and queries run against the store and against
//! a plain in-memory model; every answer and the final log must agree.

use std::collections::HashMap;
use std::future::Future;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reel_core::{
    AppendCondition, AppendResult, Direction, EventId, ExpectedVersion, NewEvent, Position, Query, QueryItem,
    ReelError, StreamName, StreamVersion,
};

use crate::contract::read_everything;
use crate::TestStore;

/// The recent-id window the contract guarantees (docs/DESIGN.md, invariant 3).
const WINDOW: usize = 1_000;

/// One step of a random history (its fields are the generator's choices, described per variant).
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Op {
    /// A new batch: stream 0..3, expected-version kind, offset for `Exact`, size, client ids or
    /// not, tags (a bit per tag of three), and maybe a condition.
    Fresh { stream: usize, kind: u8, offset: i8, size: usize, client_ids: bool, tags: u8, condition: Option<Cond> },
    /// Re-send an earlier successful append, with its own expected version or with `Any`.
    Retry { pick: usize, as_any: bool },
    /// Re-send an earlier append's ids with changed data.
    Tamper { pick: usize },
    /// Read a stream back.
    Read { stream: usize },
    /// Read a query's events after a position.
    Query { cond: Cond },
}

/// A generated query and position: tag 0..3, restricted to one type or not, and how far before
/// the head its `after` is (0: at the head; 255: no `after`; past the start: 0).
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct Cond {
    pub tag: u8,
    pub typed: bool,
    pub back: u8,
}

impl Cond {
    fn query(&self) -> Query {
        let item = QueryItem::tags([format!("t:{}", self.tag)]);
        let item = if self.typed { item.with_types(["T1"]) } else { item };
        Query::new(vec![item]).expect("valid generated query")
    }

    fn after(&self, head: u64) -> Option<Position> {
        (self.back != 255).then(|| Position(head.saturating_sub(u64::from(self.back))))
    }
}

fn cond() -> impl Strategy<Value = Cond> {
    (0..3u8, any::<bool>(), prop_oneof![0..4u8, Just(255u8)]).prop_map(|(tag, typed, back)| Cond { tag, typed, back })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3usize, 0..4u8, -1..=1i8, 1..4usize, any::<bool>(), 0..8u8, proptest::option::of(cond()))
            .prop_map(|(stream, kind, offset, size, client_ids, tags, condition)| {
                Op::Fresh { stream, kind, offset, size, client_ids, tags, condition }
            }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, as_any)| Op::Retry { pick, as_any }),
        1 => any::<usize>().prop_map(|pick| Op::Tamper { pick }),
        1 => (0..3usize).prop_map(|stream| Op::Read { stream }),
        1 => cond().prop_map(|cond| Op::Query { cond }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct ModelEvent {
    id: EventId,
    event_type: String,
    data: Vec<u8>,
    tags: Vec<String>,
    position: Position,
}

/// The reference: streams as plain vectors, positions as a counter.
#[derive(Default)]
struct Model {
    streams: HashMap<String, Vec<ModelEvent>>,
    head: u64,
}

/// What the model says an append should return: a result or an error code.
type Outcome = Result<AppendResult, &'static str>;

impl Model {
    /// Positions of the events matching `query` after `after`, in order.
    fn matching(&self, query: &Query, after: Position) -> Vec<Position> {
        let mut found: Vec<Position> = self
            .streams
            .values()
            .flatten()
            .filter(|e| e.position > after && query.matches(&e.event_type, &e.tags))
            .map(|e| e.position)
            .collect();
        found.sort();
        found
    }

    fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        condition: Option<&AppendCondition>,
    ) -> Outcome {
        let stored = self.streams.get(stream).cloned().unwrap_or_default();
        let actual = stored.len().checked_sub(1).map(|v| StreamVersion(v as u64));
        if !expected.is_satisfied_by(actual) {
            let start = match expected {
                ExpectedVersion::Exact(v) => Some(v.0 as usize + 1),
                ExpectedVersion::NoStream => Some(0),
                _ => None,
            };
            if let Some(start) = start {
                if events[0].id.is_some() && stored.get(start).map(|s| Some(s.id)) == Some(events[0].id) {
                    return compare(&stored, start, events);
                }
            }
            return Err("wrong_expected_version");
        }
        let recent_start = stored.len().saturating_sub(WINDOW);
        let recent = &stored[recent_start..];
        let known = events.iter().enumerate().find_map(|(i, e)| {
            let at = recent.iter().position(|s| Some(s.id) == e.id)?;
            Some((i, recent_start + at))
        });
        match known {
            Some((0, at)) => return compare(&stored, at, events),
            Some(_) => return Err("duplicate_event_id"),
            None => {}
        }
        // Retries are recognised first: a committed conditional append is not refused by its own events.
        if let Some(condition) = condition {
            if condition.after_position().0 > self.head {
                return Err("invalid_argument");
            }
            if !self.matching(&condition.fail_if_events_match, condition.after_position()).is_empty() {
                return Err("condition_failed");
            }
        }
        let first_position = Position(self.head + 1);
        let entry = self.streams.entry(stream.to_string()).or_default();
        for e in events {
            self.head += 1;
            entry.push(ModelEvent {
                id: e.id.unwrap_or_else(EventId::new_v7),
                event_type: e.event_type.clone(),
                data: e.data.clone(),
                tags: e.tags.clone(),
                position: Position(self.head),
            });
        }
        Ok(AppendResult {
            first_position,
            last_position: Position(self.head),
            next_version: StreamVersion(entry.len() as u64 - 1),
        })
    }
}

fn compare(stored: &[ModelEvent], at: usize, events: &[NewEvent]) -> Outcome {
    for (i, e) in events.iter().enumerate() {
        match stored.get(at + i) {
            Some(s) if Some(s.id) == e.id && s.event_type == e.event_type && s.data == e.data && s.tags == e.tags => {}
            _ => return Err("duplicate_event_id"),
        }
    }
    Ok(AppendResult {
        first_position: stored[at].position,
        last_position: stored[at + events.len() - 1].position,
        next_version: StreamVersion((at + events.len() - 1) as u64),
    })
}

/// Runs 48 random histories of up to 40 steps, each on a fresh store from `factory`.
pub fn run_model_test<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = TestStore>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        runtime.block_on(async { check_history(factory().await, ops).await })
    });
    if let Err(e) = result {
        panic!("model-based test failed: {e}");
    }
}

async fn check_history(test_store: TestStore, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = test_store.store.clone();
    let names: Vec<StreamName> = (0..3).map(|i| StreamName::new(format!("model-{i}")).expect("name")).collect();
    let mut model = Model::default();
    let mut history: Vec<(usize, ExpectedVersion, Vec<NewEvent>, Option<AppendCondition>)> = Vec::new();
    let mut counter = 0u64;
    for op in ops {
        let (stream, expected, events, condition) = match op {
            Op::Query { cond } => {
                let query = cond.query();
                let after = cond.after(model.head).unwrap_or_default();
                let page =
                    store.read_query(&query, after, 1000).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got: Vec<Position> = page.events.iter().map(|e| e.position).collect();
                prop_assert_eq!(got, model.matching(&query, after), "read_query {:?} after {}", query, after);
                prop_assert_eq!(page.head, Position(model.head));
                continue;
            }
            Op::Read { stream } => {
                let got = store.read_stream(&names[stream], StreamVersion(0), Direction::Forward, 1000).await;
                let want = model.streams.get(names[stream].as_str());
                match (got, want) {
                    (Ok(got), Some(want)) => {
                        let got: Vec<(Position, &[u8])> = got.iter().map(|e| (e.position, &e.data[..])).collect();
                        let want: Vec<(Position, &[u8])> = want.iter().map(|e| (e.position, &e.data[..])).collect();
                        prop_assert_eq!(got, want);
                    }
                    (Err(ReelError::StreamNotFound { .. }), None) => {}
                    (got, want) => prop_assert!(false, "read {:?} but model has {:?}", got, want),
                }
                continue;
            }
            Op::Fresh { stream, kind, offset, size, client_ids, tags, condition } => {
                let current = model.streams.get(names[stream].as_str()).map_or(-1, |s| s.len() as i64 - 1);
                let expected = match kind {
                    0 => ExpectedVersion::Any,
                    1 => ExpectedVersion::NoStream,
                    2 => ExpectedVersion::StreamExists,
                    _ => ExpectedVersion::Exact(StreamVersion((current + offset as i64).max(0) as u64)),
                };
                let events = (0..size)
                    .map(|_| {
                        counter += 1;
                        let e = NewEvent::new(format!("T{}", counter % 3), format!("{{\"n\":{counter}}}"))
                            .with_tags((0..3).filter(|t| tags & (1 << t) != 0).map(|t| format!("t:{t}")));
                        if client_ids {
                            e.with_id(EventId::new_v7())
                        } else {
                            e
                        }
                    })
                    .collect();
                let condition =
                    condition.map(|c| AppendCondition { fail_if_events_match: c.query(), after: c.after(model.head) });
                (stream, expected, events, condition)
            }
            Op::Retry { pick, as_any } => {
                if history.is_empty() {
                    continue;
                }
                let (stream, expected, events, condition) = history[pick % history.len()].clone();
                (stream, if as_any { ExpectedVersion::Any } else { expected }, events, condition)
            }
            Op::Tamper { pick } => {
                if history.is_empty() {
                    continue;
                }
                let (stream, _, mut events, _) = history[pick % history.len()].clone();
                events[0].data = b"{\"tampered\":true}".to_vec();
                (stream, ExpectedVersion::Any, events, None)
            }
        };
        let want = model.append(names[stream].as_str(), expected, &events, condition.as_ref());
        let got = match &condition {
            Some(condition) => store.append_if(&names[stream], expected, events.clone(), condition.clone()).await,
            None => store.append(&names[stream], expected, events.clone()).await,
        };
        match (&got, &want) {
            (Ok(g), Ok(w)) => prop_assert_eq!(g, w, "append to {} with {:?}", names[stream], expected),
            (Err(g), Err(w)) => prop_assert_eq!(g.code(), *w, "append to {} with {:?}: {}", names[stream], expected, g),
            _ => prop_assert!(
                false,
                "append to {} with {:?}: store {:?}, model {:?}",
                names[stream],
                expected,
                got,
                want
            ),
        }
        if got.is_ok() && events.iter().all(|e| e.id.is_some()) {
            history.push((stream, expected, events, condition));
        }
    }
    let log = read_everything(&store).await;
    let mut expected_log: Vec<&ModelEvent> = model.streams.values().flatten().collect();
    expected_log.sort_by_key(|e| e.position);
    prop_assert_eq!(log.len(), expected_log.len());
    for (got, want) in log.iter().zip(expected_log) {
        prop_assert_eq!(got.position, want.position);
        prop_assert_eq!(&got.data, &want.data);
        prop_assert_eq!(&got.event_type, &want.event_type);
        prop_assert_eq!(&got.tags, &want.tags);
    }
    Ok(())
}
