//! Immediate projections (run after append), running until idle, reports as results, and
//! waiting for catch-up (docs/DESIGN.md, invariants 13 and 15).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reel_core::{
    EventStore, ExpectedVersion, NewEvent, Position, ReelError, StreamName, SubscriptionCriteria, SubscriptionId,
    SubscriptionStatus, SubscriptionStore,
};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{
    HandlerError, Message, NoRetry, RunAfterAppend, Subscriber, SubscriberSpec, SubscriptionEngine, Worker,
    WorkerOptions, DEFAULT_MAX_ROUNDS,
};

/// Records positions; optionally fails on an event type; optionally appends an `Audited` event
/// for each `Opened` it sees (a processor causing more events).
struct Probe {
    spec: SubscriberSpec,
    seen: Mutex<Vec<u64>>,
    fail_on: Option<&'static str>,
    audit_into: Option<Arc<dyn EventStore>>,
}

impl Probe {
    fn new(spec: SubscriberSpec) -> Self {
        Self { spec, seen: Mutex::default(), fail_on: None, audit_into: None }
    }
    fn seen(&self) -> Vec<u64> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Subscriber for Probe {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }
    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        if Some(message.event_type()) == self.fail_on {
            return Err("refusing this one".into());
        }
        if let (Some(store), "Opened") = (&self.audit_into, message.event_type()) {
            let audit = StreamName::new("audit-1")?;
            store.append(&audit, ExpectedVersion::Any, vec![NewEvent::new("Audited", "{}")]).await?;
        }
        self.seen.lock().unwrap().push(message.position().0);
        Ok(())
    }
}

fn open() -> (tempfile::TempDir, Arc<SqliteStore>, Arc<dyn SubscriptionStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("reel.db")).unwrap();
    let subscriptions: Arc<dyn SubscriptionStore> = Arc::new(store.subscription_store().unwrap());
    (dir, Arc::new(store), subscriptions)
}

fn opened() -> Vec<NewEvent> {
    vec![NewEvent::new("Opened", "{}")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_return_after_immediate_projections_ran_including_events_they_caused() {
    let (_dir, events, subscriptions) = open();
    let projector = Arc::new(Probe::new(SubscriberSpec::projector("all_1").unwrap()));
    let mut auditor = Probe::new(SubscriberSpec::processor("auditor").unwrap().handling(["Opened"]));
    auditor.audit_into = Some(events.clone());
    let auditor = Arc::new(auditor);
    let engine =
        SubscriptionEngine::new(events.clone(), subscriptions, vec![projector.clone(), auditor.clone()]).unwrap();
    engine.setup(&SubscriptionCriteria::all(), true).await.unwrap();
    let store =
        RunAfterAppend::new(events.clone(), engine, SubscriptionCriteria::all(), None).until_idle(DEFAULT_MAX_ROUNDS);

    let unit = StreamName::new("unit-1").unwrap();
    store.append(&unit, ExpectedVersion::Any, opened()).await.unwrap();
    assert_eq!(auditor.seen(), vec![1]);
    assert_eq!(projector.seen(), vec![1, 2], "the Audited event the processor appended was projected too");
    store.append(&unit, ExpectedVersion::Any, opened()).await.unwrap();
    assert_eq!(projector.seen(), vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_hand_each_event_to_an_immediate_projection_once() {
    let (_dir, events, subscriptions) = open();
    let projector = Arc::new(Probe::new(SubscriberSpec::projector("all_1").unwrap()));
    let engine = SubscriptionEngine::new(events.clone(), subscriptions, vec![projector.clone()]).unwrap();
    engine.setup(&SubscriptionCriteria::all(), true).await.unwrap();
    let store = Arc::new(RunAfterAppend::new(events.clone(), engine, SubscriptionCriteria::all(), None));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamName::new(format!("unit-{i}")).unwrap();
                for _ in 0..10 {
                    store.append(&stream, ExpectedVersion::Any, opened()).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(projector.seen(), (1..=80).collect::<Vec<_>>(), "every event once, in order");
}

#[tokio::test]
async fn a_failing_projection_never_turns_a_committed_append_into_an_error() {
    let (_dir, events, subscriptions) = open();
    let mut failing = Probe::new(SubscriberSpec::projector("strict_1").unwrap());
    failing.fail_on = Some("Opened");
    let engine = SubscriptionEngine::new(events.clone(), subscriptions.clone(), vec![Arc::new(failing)])
        .unwrap()
        .with_retry_strategy(NoRetry);
    engine.setup(&SubscriptionCriteria::all(), true).await.unwrap().into_result().unwrap();
    let store = RunAfterAppend::new(events.clone(), engine, SubscriptionCriteria::all(), None);
    let unit = StreamName::new("unit-1").unwrap();

    // Through append_and_run: the append and the projection's failure come back separately.
    let outcome = store.append_and_run(&unit, ExpectedVersion::Any, opened()).await.unwrap();
    assert_eq!(outcome.append.first_position, Position(1));
    let report = outcome.run.unwrap();
    assert!(report.errors.iter().any(|e| e.id.as_str() == "strict_1"), "{report:?}");
    let err = report.into_result().unwrap_err();
    assert!(matches!(&err, ReelError::SubscriptionFailed { id, .. } if id == "strict_1"), "{err:?}");
    // Through the EventStore trait: the append's result stands, so a caller never retries it.
    let result = store.append(&unit, ExpectedVersion::Any, opened()).await.unwrap();
    assert_eq!(result.first_position, Position(2));

    assert_eq!(events.head().await.unwrap().0, 2, "each append stored exactly once");
    let id = SubscriptionId::new("strict_1").unwrap();
    let stored = subscriptions.get(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, SubscriptionStatus::Error, "the subscription follows its retry strategy");
    assert_eq!(stored.position, Position(0), "positioned right before the failing event");
    // An append that itself fails is still an error, and nothing ran.
    let err = store.append_and_run(&unit, ExpectedVersion::NoStream, opened()).await.unwrap_err();
    assert!(matches!(err, ReelError::WrongExpectedVersion { .. }), "{err:?}");
}

#[tokio::test]
async fn the_limit_hands_each_subscription_exactly_that_many_events_per_append() {
    let (_dir, events, subscriptions) = open();
    let unit = StreamName::new("unit-1").unwrap();
    let many: Vec<NewEvent> = (0..10).map(|_| NewEvent::new("Opened", "{}")).collect();
    events.append(&unit, ExpectedVersion::Any, many).await.unwrap();
    let projector = Arc::new(Probe::new(SubscriberSpec::projector("limited_1").unwrap()));
    let engine = SubscriptionEngine::new(events.clone(), subscriptions.clone(), vec![projector.clone()]).unwrap();
    engine.setup(&SubscriptionCriteria::all(), true).await.unwrap();
    let store = RunAfterAppend::new(events.clone(), engine, SubscriptionCriteria::all(), Some(3));

    let outcome = store.append_and_run(&unit, ExpectedVersion::Any, opened()).await.unwrap();
    assert_eq!(outcome.run.unwrap().handled, 3);
    assert_eq!(projector.seen(), vec![1, 2, 3], "exactly the limit, in order");
    let stored = subscriptions.get(&SubscriptionId::new("limited_1").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.position, Position(3), "the position stops at the last event handed over");
    store.append(&unit, ExpectedVersion::Any, opened()).await.unwrap();
    assert_eq!(projector.seen(), (1..=6).collect::<Vec<_>>(), "the next append goes on from there");
}

/// Appends an event for every event it sees: the chain never ends.
struct Echo {
    spec: SubscriberSpec,
    store: Arc<dyn EventStore>,
}

#[async_trait::async_trait]
impl Subscriber for Echo {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }
    async fn handle(&self, _message: &Message<'_>) -> Result<(), HandlerError> {
        let stream = StreamName::new("echo-1")?;
        self.store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Echo", "{}")]).await?;
        Ok(())
    }
}

#[tokio::test]
async fn run_until_idle_says_when_it_stopped_at_its_round_cap() {
    let (_dir, events, subscriptions) = open();
    let echo = Arc::new(Echo { spec: SubscriberSpec::processor("echo").unwrap(), store: events.clone() });
    let engine = SubscriptionEngine::new(events.clone(), subscriptions, vec![echo]).unwrap();
    engine.setup(&SubscriptionCriteria::all(), true).await.unwrap();
    events.append(&StreamName::new("unit-1").unwrap(), ExpectedVersion::Any, opened()).await.unwrap();

    let report = engine.run_until_idle(&SubscriptionCriteria::all(), 3).await.unwrap();
    assert!(report.round_cap_reached, "{report:?}");
    assert_eq!(report.handled, 3, "one event per round, three rounds");

    let quiet = Arc::new(Probe::new(SubscriberSpec::projector("quiet_1").unwrap()));
    let (_dir2, events2, subscriptions2) = open();
    let engine = SubscriptionEngine::new(events2.clone(), subscriptions2, vec![quiet]).unwrap();
    events2.append(&StreamName::new("unit-1").unwrap(), ExpectedVersion::Any, opened()).await.unwrap();
    engine.setup(&SubscriptionCriteria::all(), false).await.unwrap();
    let report = engine.run_until_idle(&SubscriptionCriteria::all(), 3).await.unwrap();
    assert!(!report.round_cap_reached, "{report:?}");
    assert_eq!(report.handled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_catch_up_counts_subscribers_without_a_stored_subscription() {
    let (_dir, events, subscriptions) = open();
    events.append(&StreamName::new("unit-1").unwrap(), ExpectedVersion::Any, opened()).await.unwrap();
    let projector = Arc::new(Probe::new(SubscriberSpec::projector("brand_new_1").unwrap()));
    let engine = SubscriptionEngine::new(events.clone(), subscriptions.clone(), vec![projector.clone()]).unwrap();
    // Nobody runs it yet, and it has no row: it is not caught up.
    let err = engine.wait_for_catch_up(&SubscriptionCriteria::all(), Duration::from_millis(100)).await.unwrap_err();
    assert!(err.to_string().contains("brand_new_1"), "{err}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(engine.clone(), WorkerOptions::default()).run(async {
        let _ = stopped.await;
    }));
    engine.wait_for_catch_up(&SubscriptionCriteria::all(), Duration::from_secs(30)).await.unwrap();
    assert_eq!(projector.seen(), vec![1]);
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();

    let mut failing = Probe::new(SubscriberSpec::projector("broken_1").unwrap());
    failing.fail_on = Some("Opened");
    let engine = SubscriptionEngine::new(events.clone(), subscriptions, vec![Arc::new(failing)]).unwrap();
    engine.setup(&SubscriptionCriteria::all(), false).await.unwrap();
    engine.boot(&SubscriptionCriteria::all()).await.unwrap();
    let err = engine.wait_for_catch_up(&SubscriptionCriteria::all(), Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, ReelError::SubscriptionFailed { .. }), "{err:?}");
}
