//! The examples of the Dynamic Consistency Boundary specification, decided across streams with
//! `DecisionRepository` under concurrency: a unique username, course capacity with a limit per
//! student, invoice numbers without gaps, and the locker rule (no overlapping reservations of
//! one locker, whatever reservation stream they are in). docs/CONSISTENCY.md walks through them.

use std::collections::HashSet;
use std::sync::Arc;

use reel_aggregate::{Decision, DecisionAppend, DecisionError, DecisionRepository};
use reel_core::{EventStore, ExpectedVersion, NewEvent, Query, QueryItem, RecordedEvent, StreamName};
use serde_json::json;

fn store() -> (Arc<dyn EventStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = reel_sqlite::SqliteStore::open(dir.path().join("reel.db")).unwrap();
    (Arc::new(store), dir)
}

fn stream(name: String) -> StreamName {
    StreamName::new(name).unwrap()
}

/// Runs `n` tasks at once; returns their results in order.
async fn concurrently<T, F, Fut>(n: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(task(i))).collect();
    let mut results = Vec::with_capacity(n);
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    results
}

// ---- unique username ----

struct Username {
    name: String,
    taken: bool,
}

impl Decision for Username {
    fn query(&self) -> Query {
        Query::new(vec![
            QueryItem::tags([format!("username:{}", self.name)]).with_types(["AccountRegistered", "UsernameReleased"])
        ])
        .unwrap()
    }
    fn apply(&mut self, event: &RecordedEvent) {
        self.taken = event.event_type == "AccountRegistered";
    }
}

async fn register(decisions: &DecisionRepository, account: usize, name: &str) -> Result<(), String> {
    let name = name.to_string();
    decisions
        .execute(
            || Username { name: name.clone(), taken: false },
            |decision| {
                if decision.taken {
                    return Err(format!("username {} is taken", decision.name));
                }
                let event = NewEvent::json("AccountRegistered", &json!({ "username": decision.name }))
                    .unwrap()
                    .with_tags([format!("username:{}", decision.name), format!("account:{account}")]);
                Ok(Some(DecisionAppend {
                    stream: stream(format!("account-{account}")),
                    expected: ExpectedVersion::NoStream,
                    events: vec![event],
                }))
            },
            5,
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_username_is_registered_once_however_many_accounts_race_for_it() {
    let (store, _dir) = store();
    let decisions = DecisionRepository::new(store.clone());
    let results = concurrently(32, |i| {
        let decisions = decisions.clone();
        async move { register(&decisions, i, "ada").await }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.contains("taken")), "{results:?}");
    assert!(register(&decisions, 99, "grace").await.is_ok(), "another name is free");
}

// ---- course capacity and a limit of courses per student ----

const CAPACITY: usize = 3;
const COURSES_PER_STUDENT: usize = 2;

struct Subscription {
    course: String,
    student: String,
    course_subscriptions: usize,
    student_subscriptions: usize,
}

impl Decision for Subscription {
    fn query(&self) -> Query {
        Query::new(vec![
            QueryItem::tags([format!("course:{}", self.course)]).with_types(["StudentSubscribed"]),
            QueryItem::tags([format!("student:{}", self.student)]).with_types(["StudentSubscribed"]),
        ])
        .unwrap()
    }
    fn apply(&mut self, event: &RecordedEvent) {
        if event.tags.contains(&format!("course:{}", self.course)) {
            self.course_subscriptions += 1;
        }
        if event.tags.contains(&format!("student:{}", self.student)) {
            self.student_subscriptions += 1;
        }
    }
}

async fn subscribe(decisions: &DecisionRepository, course: String, student: String) -> Result<u32, String> {
    decisions
        .execute(
            || Subscription {
                course: course.clone(),
                student: student.clone(),
                course_subscriptions: 0,
                student_subscriptions: 0,
            },
            |d| {
                if d.course_subscriptions >= CAPACITY {
                    return Err(format!("course {} is full", d.course));
                }
                if d.student_subscriptions >= COURSES_PER_STUDENT {
                    return Err(format!("student {} has {COURSES_PER_STUDENT} courses", d.student));
                }
                let event = NewEvent::new("StudentSubscribed", "{}")
                    .with_tags([format!("course:{}", d.course), format!("student:{}", d.student)]);
                Ok(Some(DecisionAppend {
                    stream: stream(format!("course-{}", d.course)),
                    expected: ExpectedVersion::Any,
                    events: vec![event],
                }))
            },
            50,
        )
        .await
        .map(|executed| executed.retries)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_course_takes_its_capacity_and_a_student_their_limit_under_concurrency() {
    let (store, _dir) = store();
    let decisions = DecisionRepository::new(store.clone());
    let results = concurrently(12, |i| {
        let decisions = decisions.clone();
        async move { subscribe(&decisions, "rust".into(), format!("s{i}")).await }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), CAPACITY, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.contains("is full")), "{results:?}");

    let results = concurrently(6, |i| {
        let decisions = decisions.clone();
        async move { subscribe(&decisions, format!("c{i}"), "busy".into()).await }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), COURSES_PER_STUDENT, "{results:?}");
}

// ---- invoice numbers without gaps ----

#[derive(Default)]
struct NextInvoice {
    last: u64,
}

impl Decision for NextInvoice {
    fn query(&self) -> Query {
        Query::new(vec![QueryItem::tags(["invoices"]).with_types(["InvoiceCreated"])]).unwrap()
    }
    fn apply(&mut self, event: &RecordedEvent) {
        let data: serde_json::Value = event.data_as().unwrap();
        self.last = data["number"].as_u64().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invoice_numbers_have_no_gaps_and_no_repeats_under_concurrency() {
    let (store, _dir) = store();
    let decisions = DecisionRepository::new(store.clone());
    let results = concurrently(24, |i| {
        let decisions = decisions.clone();
        async move {
            decisions
                .execute(
                    NextInvoice::default,
                    |d| {
                        let number = d.last + 1;
                        let event = NewEvent::json("InvoiceCreated", &json!({ "number": number, "order": i }))
                            .unwrap()
                            .with_tags(["invoices".to_string(), format!("invoice:{number}")]);
                        Ok::<_, String>(Some(DecisionAppend {
                            stream: stream(format!("invoice-{number}")),
                            expected: ExpectedVersion::NoStream,
                            events: vec![event],
                        }))
                    },
                    100,
                )
                .await
        }
    })
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let loaded = decisions.load(NextInvoice::default()).await.unwrap();
    assert_eq!(loaded.state.last, 24);
    let page = store.read_query(&NextInvoice::default().query(), reel_core::Position(0), 100).await.unwrap();
    let numbers: Vec<u64> =
        page.events.iter().map(|e| e.data_as::<serde_json::Value>().unwrap()["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=24).collect::<Vec<_>>(), "consecutive, each once, in log order");
}

// ---- the locker rule ----

/// The reservations of one locker, from every reservation stream.
struct LockerWindows {
    locker: u32,
    windows: Vec<(String, u64, u64)>,
}

impl Decision for LockerWindows {
    fn query(&self) -> Query {
        Query::new(vec![
            QueryItem::tags([format!("locker:{}", self.locker)]).with_types(["LockerReserved", "ReservationCancelled"])
        ])
        .unwrap()
    }
    fn apply(&mut self, event: &RecordedEvent) {
        let data: serde_json::Value = event.data_as().unwrap();
        let reservation = data["reservation"].as_str().unwrap().to_string();
        match event.event_type.as_str() {
            "LockerReserved" => {
                self.windows.push((reservation, data["from"].as_u64().unwrap(), data["to"].as_u64().unwrap()))
            }
            _ => self.windows.retain(|(r, _, _)| *r != reservation),
        }
    }
}

#[derive(Debug)]
struct Overlap;

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the locker is reserved for an overlapping window")
    }
}

async fn reserve(
    decisions: &DecisionRepository,
    reservation: String,
    locker: u32,
    window: (u64, u64),
) -> Result<u32, DecisionError<Overlap>> {
    decisions
        .execute(
            || LockerWindows { locker, windows: vec![] },
            |d| {
                if d.windows.iter().any(|(_, from, to)| window.0 < *to && *from < window.1) {
                    return Err(Overlap);
                }
                let data = json!({ "reservation": reservation, "locker": locker, "from": window.0, "to": window.1 });
                let event = NewEvent::json("LockerReserved", &data)
                    .unwrap()
                    .with_tags([format!("locker:{locker}"), format!("reservation:{reservation}")]);
                Ok(Some(DecisionAppend {
                    stream: stream(format!("reservation-{reservation}")),
                    expected: ExpectedVersion::NoStream,
                    events: vec![event],
                }))
            },
            100,
        )
        .await
        .map(|executed| executed.retries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locker_is_never_reserved_twice_for_overlapping_windows() {
    let (store, _dir) = store();
    let decisions = DecisionRepository::new(store.clone());
    // 64 requests for overlapping windows of locker 7, each in a reservation stream of its own.
    let results = concurrently(64, |i| {
        let decisions = decisions.clone();
        async move { reserve(&decisions, format!("r{i}"), 7, (100 + i as u64, 200 + i as u64)).await }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, DecisionError::Domain(Overlap))));

    // Disjoint windows of one locker all fit (conflicting reads are retried, never refused).
    let results = concurrently(16, |i| {
        let decisions = decisions.clone();
        async move { reserve(&decisions, format!("d{i}"), 8, (i as u64 * 10, i as u64 * 10 + 10)).await }
    })
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // Different lockers never conflict: nothing is retried.
    let results = concurrently(32, |i| {
        let decisions = decisions.clone();
        async move { reserve(&decisions, format!("l{i}"), 100 + i as u32, (0, 10)).await }
    })
    .await;
    assert_eq!(results.iter().map(|r| *r.as_ref().unwrap()).sum::<u32>(), 0, "disjoint tags are never refused");

    // A cancelled reservation frees its window.
    let locker7 = LockerWindows { locker: 7, windows: vec![] }.query();
    let winner = store.read_query(&locker7, reel_core::Position(0), 10).await.unwrap();
    let winner = winner.events[0].data_as::<serde_json::Value>().unwrap();
    let reservation = winner["reservation"].as_str().unwrap().to_string();
    let cancelled = NewEvent::json("ReservationCancelled", &json!({ "reservation": reservation }))
        .unwrap()
        .with_tags(["locker:7".to_string(), format!("reservation:{reservation}")]);
    store
        .append(
            &stream(format!("reservation-{reservation}")),
            ExpectedVersion::Exact(reel_core::StreamVersion(0)),
            vec![cancelled],
        )
        .await
        .unwrap();
    assert!(reserve(&decisions, "again".into(), 7, (150, 160)).await.is_ok());
    let ids: HashSet<String> = store
        .read_query(&locker7, reel_core::Position(0), 100)
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.data_as::<serde_json::Value>().unwrap()["reservation"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "the first reservation and the one made after its cancellation");
}
