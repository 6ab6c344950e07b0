//! Model-based property test: random appends (every expected-version kind, retries, tampered
//! duplicates, batches) run against the store and against a plain in-memory model; every answer
//! and the final log must agree.

use std::collections::HashMap;
use std::future::Future;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reel_core::{
    AppendResult, Direction, EventId, ExpectedVersion, NewEvent, Position, ReelError, StreamName, StreamVersion,
};

use crate::contract::read_everything;
use crate::TestStore;

/// The recent-id window the contract guarantees (docs/DESIGN.md, invariant 3).
const WINDOW: usize = 1_000;

/// One step of a random history (its fields are the generator's choices, described per variant).
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Op {
    /// A new batch: stream 0..3, expected-version kind, offset for `Exact`, size, client ids or not.
    Fresh { stream: usize, kind: u8, offset: i8, size: usize, client_ids: bool },
    /// Re-send an earlier successful append, with its own expected version or with `Any`.
    Retry { pick: usize, as_any: bool },
    /// Re-send an earlier append's ids with changed data.
    Tamper { pick: usize },
    /// Read a stream back.
    Read { stream: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3usize, 0..4u8, -1..=1i8, 1..4usize, any::<bool>())
            .prop_map(|(stream, kind, offset, size, client_ids)| Op::Fresh { stream, kind, offset, size, client_ids }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, as_any)| Op::Retry { pick, as_any }),
        1 => any::<usize>().prop_map(|pick| Op::Tamper { pick }),
        1 => (0..3usize).prop_map(|stream| Op::Read { stream }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct ModelEvent {
    id: EventId,
    event_type: String,
    data: Vec<u8>,
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
    fn append(&mut self, stream: &str, expected: ExpectedVersion, events: &[NewEvent]) -> Outcome {
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
        let first_position = Position(self.head + 1);
        let entry = self.streams.entry(stream.to_string()).or_default();
        for e in events {
            self.head += 1;
            entry.push(ModelEvent {
                id: e.id.unwrap_or_else(EventId::new_v7),
                event_type: e.event_type.clone(),
                data: e.data.clone(),
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
            Some(s) if Some(s.id) == e.id && s.event_type == e.event_type && s.data == e.data => {}
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
    let mut history: Vec<(usize, ExpectedVersion, Vec<NewEvent>)> = Vec::new();
    let mut counter = 0u64;
    for op in ops {
        let (stream, expected, events) = match op {
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
            Op::Fresh { stream, kind, offset, size, client_ids } => {
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
                        let e = NewEvent::new(format!("T{}", counter % 3), format!("{{\"n\":{counter}}}"));
                        if client_ids {
                            e.with_id(EventId::new_v7())
                        } else {
                            e
                        }
                    })
                    .collect();
                (stream, expected, events)
            }
            Op::Retry { pick, as_any } => {
                if history.is_empty() {
                    continue;
                }
                let (stream, expected, events) = history[pick % history.len()].clone();
                (stream, if as_any { ExpectedVersion::Any } else { expected }, events)
            }
            Op::Tamper { pick } => {
                if history.is_empty() {
                    continue;
                }
                let (stream, _, mut events) = history[pick % history.len()].clone();
                events[0].data = b"{\"tampered\":true}".to_vec();
                (stream, ExpectedVersion::Any, events)
            }
        };
        let want = model.append(names[stream].as_str(), expected, &events);
        let got = store.append(&names[stream], expected, events.clone()).await;
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
            history.push((stream, expected, events));
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
    }
    Ok(())
}
