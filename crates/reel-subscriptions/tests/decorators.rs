//! Immediate projections (run after append), the catch-up and throw-on-error decorators, and
//! waiting for catch-up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reel_core::{
    EventStore, ExpectedVersion, NewEvent, ReelError, StreamName, SubscriptionCriteria, SubscriptionStore,
};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{
    CatchUpSubscriptionEngine, EngineOperations, HandlerError, Message, NoRetry, RunAfterAppend, Subscriber,
    SubscriberSpec, SubscriptionEngine, ThrowOnErrorSubscriptionEngine, Worker, WorkerOptions,
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
    let immediate = ThrowOnErrorSubscriptionEngine::new(CatchUpSubscriptionEngine::new(engine));
    let store = RunAfterAppend::new(events.clone(), immediate, SubscriptionCriteria::all(), None);

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
async fn throw_on_error_turns_a_failed_subscription_into_an_error() {
    let (_dir, events, subscriptions) = open();
    let mut failing = Probe::new(SubscriberSpec::projector("strict_1").unwrap());
    failing.fail_on = Some("Opened");
    let engine = SubscriptionEngine::new(events.clone(), subscriptions, vec![Arc::new(failing)])
        .unwrap()
        .with_retry_strategy(NoRetry);
    let strict = ThrowOnErrorSubscriptionEngine::new(engine);
    strict.setup(&SubscriptionCriteria::all(), true).await.unwrap();
    let store = RunAfterAppend::new(events.clone(), strict, SubscriptionCriteria::all(), None);
    let err = store.append(&StreamName::new("unit-1").unwrap(), ExpectedVersion::Any, opened()).await.unwrap_err();
    assert!(matches!(&err, ReelError::SubscriptionFailed { id, .. } if id == "strict_1"), "{err:?}");
    assert_eq!(events.head().await.unwrap().0, 1, "the append itself was stored");
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
