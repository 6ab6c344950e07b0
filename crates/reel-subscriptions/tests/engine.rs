//! The engine's lifecycle against a real embedded store.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reel_core::{
    EventStore, ExpectedVersion, NewEvent, Position, RunMode, StreamName, SubscriptionCriteria, SubscriptionId,
    SubscriptionStatus, SubscriptionStore, Timestamp,
};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{
    ClockBasedRetryStrategy, HandlerError, ManualClock, Message, NoRetry, ResetTo, Subscriber, SubscriberSpec,
    SubscriptionEngine,
};

/// A subscriber whose behaviour the test controls and whose deliveries it records.
struct Recorder {
    spec: SubscriberSpec,
    handled: Mutex<Vec<u64>>,
    fail_at: Mutex<Option<u64>>,
    panic_at: Mutex<Option<u64>>,
    setup_fails: AtomicBool,
    teardown_fails: AtomicBool,
    setups: AtomicUsize,
    teardowns: AtomicUsize,
}

impl Recorder {
    fn new(spec: SubscriberSpec) -> Arc<Self> {
        Arc::new(Self {
            spec,
            handled: Mutex::default(),
            fail_at: Mutex::default(),
            panic_at: Mutex::default(),
            setup_fails: AtomicBool::new(false),
            teardown_fails: AtomicBool::new(false),
            setups: AtomicUsize::new(0),
            teardowns: AtomicUsize::new(0),
        })
    }

    fn handled(&self) -> Vec<u64> {
        self.handled.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Subscriber for Recorder {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }
    async fn setup(&self) -> Result<(), HandlerError> {
        self.setups.fetch_add(1, Ordering::SeqCst);
        if self.setup_fails.load(Ordering::SeqCst) {
            return Err("cannot create table".into());
        }
        Ok(())
    }
    async fn teardown(&self) -> Result<(), HandlerError> {
        self.teardowns.fetch_add(1, Ordering::SeqCst);
        if self.teardown_fails.load(Ordering::SeqCst) {
            return Err("cannot drop table".into());
        }
        Ok(())
    }
    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        let p = message.position().0;
        if *self.panic_at.lock().unwrap() == Some(p) {
            panic!("bug in handler at {p}");
        }
        if *self.fail_at.lock().unwrap() == Some(p) {
            return Err(format!("refused {p}").into());
        }
        self.handled.lock().unwrap().push(p);
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    events: Arc<SqliteStore>,
    subscriptions: Arc<dyn SubscriptionStore>,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let events = SqliteStore::open(dir.path().join("reel.db")).unwrap();
        let subscriptions = Arc::new(events.subscription_store().unwrap());
        let clock = Arc::new(ManualClock::new(Timestamp::from_unix_micros(1_000_000)));
        Self { _dir: dir, events: Arc::new(events), subscriptions, clock }
    }

    fn engine(&self, subscribers: Vec<Arc<Recorder>>) -> SubscriptionEngine {
        let subscribers = subscribers.into_iter().map(|s| s as Arc<dyn Subscriber>).collect();
        SubscriptionEngine::new(self.events.clone(), self.subscriptions.clone(), subscribers)
            .unwrap()
            .with_clock(self.clock.clone())
            .with_batch_size(3)
    }

    async fn append(&self, stream: &str, event_type: &str, count: usize) {
        let events = (0..count).map(|_| NewEvent::new(event_type, "{}")).collect();
        self.events.append(&StreamName::new(stream).unwrap(), ExpectedVersion::Any, events).await.unwrap();
    }

    async fn status(&self, id: &str) -> (SubscriptionStatus, Position) {
        let s = self.subscriptions.get(&sid(id)).await.unwrap().expect("subscription exists");
        (s.status, s.position)
    }
}

fn sid(id: &str) -> SubscriptionId {
    SubscriptionId::new(id).unwrap()
}

fn all() -> SubscriptionCriteria {
    SubscriptionCriteria::all()
}

#[tokio::test]
async fn projector_boots_from_the_beginning_then_follows() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 5).await;
    let projector = Recorder::new(SubscriberSpec::projector("doors_1").unwrap());
    let engine = f.engine(vec![projector.clone()]);
    let report = engine.setup(&all(), false).await.unwrap();
    assert_eq!(projector.setups.load(Ordering::SeqCst), 1);
    assert!(report.errors.is_empty());
    assert_eq!(f.status("doors_1").await, (SubscriptionStatus::Booting, Position(0)));
    let report = engine.boot(&all()).await.unwrap();
    assert_eq!(report.handled, 5);
    assert_eq!(f.status("doors_1").await, (SubscriptionStatus::Active, Position(5)));
    f.append("unit-2", "Opened", 2).await;
    engine.run(&all()).await.unwrap();
    assert_eq!(projector.handled(), vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(f.status("doors_1").await, (SubscriptionStatus::Active, Position(7)));
    assert_eq!(engine.run(&all()).await.unwrap().handled, 0, "nothing new, nothing handled twice");
}

#[tokio::test]
async fn processor_starts_at_the_head_and_once_finishes() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 4).await;
    let processor = Recorder::new(SubscriberSpec::processor("email").unwrap());
    let report_job = Recorder::new(SubscriberSpec::new("report", RunMode::Once).unwrap());
    let engine = f.engine(vec![processor.clone(), report_job.clone()]);
    engine.setup(&all(), false).await.unwrap();
    assert_eq!(f.status("email").await, (SubscriptionStatus::Active, Position(4)), "from now: no history");
    engine.boot(&all()).await.unwrap();
    assert_eq!(f.status("report").await, (SubscriptionStatus::Finished, Position(4)));
    f.append("unit-1", "Opened", 1).await;
    engine.run(&all()).await.unwrap();
    assert_eq!(processor.handled(), vec![5]);
    assert_eq!(report_job.handled(), vec![1, 2, 3, 4], "a finished subscription does not run");
}

#[tokio::test]
async fn skip_booting_goes_straight_to_active() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 2).await;
    let projector = Recorder::new(SubscriberSpec::projector("p_1").unwrap());
    let engine = f.engine(vec![projector.clone()]);
    engine.setup(&all(), true).await.unwrap();
    assert_eq!(f.status("p_1").await.0, SubscriptionStatus::Active);
    engine.run(&all()).await.unwrap();
    assert_eq!(projector.handled(), vec![1, 2]);
}

#[tokio::test]
async fn a_failing_event_stops_the_subscription_before_it_and_retries_on_the_clock() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 6).await;
    let projector = Recorder::new(SubscriberSpec::projector("p_1").unwrap());
    *projector.fail_at.lock().unwrap() = Some(5);
    let engine = f.engine(vec![projector.clone()]).with_retry_strategy(ClockBasedRetryStrategy::default());
    engine.setup(&all(), false).await.unwrap();
    let report = engine.boot(&all()).await.unwrap();
    assert_eq!(report.errors.len(), 1);
    assert!(report.errors[0].message.contains("refused 5"), "{:?}", report.errors);
    let s = f.subscriptions.get(&sid("p_1")).await.unwrap().unwrap();
    assert_eq!((s.status, s.position), (SubscriptionStatus::Error, Position(4)), "checkpoint never passes the failure");
    assert_eq!(s.error.as_ref().unwrap().previous_status, SubscriptionStatus::Booting);

    // Not due yet: nothing happens.
    f.clock.advance(Duration::from_secs(4));
    engine.boot(&all()).await.unwrap();
    assert_eq!(f.status("p_1").await.0, SubscriptionStatus::Error);
    // Due: the boot step is retried, fails again, attempt 1.
    f.clock.advance(Duration::from_secs(1));
    engine.boot(&all()).await.unwrap();
    let s = f.subscriptions.get(&sid("p_1")).await.unwrap().unwrap();
    assert_eq!((s.status, s.retry_attempt), (SubscriptionStatus::Error, 1));
    // The run step does not retry a boot failure.
    f.clock.advance(Duration::from_secs(60));
    engine.run(&all()).await.unwrap();
    assert_eq!(f.status("p_1").await.0, SubscriptionStatus::Error);
    // Fixed: the next due retry catches up and the subscription becomes active.
    *projector.fail_at.lock().unwrap() = None;
    engine.boot(&all()).await.unwrap();
    let s = f.subscriptions.get(&sid("p_1")).await.unwrap().unwrap();
    assert_eq!((s.status, s.position, s.retry_attempt), (SubscriptionStatus::Active, Position(6), 0));
    assert_eq!(projector.handled(), vec![1, 2, 3, 4, 5, 6], "each event handled once, in order");
}

#[tokio::test]
async fn after_the_last_attempt_it_stays_in_error_until_reactivated() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 2).await;
    let projector = Recorder::new(SubscriberSpec::projector("p_1").unwrap());
    *projector.fail_at.lock().unwrap() = Some(2);
    let strategy = ClockBasedRetryStrategy {
        base_delay: Duration::from_secs(1),
        delay_factor: 1.0,
        max_attempts: 2,
        ..Default::default()
    };
    let engine = f.engine(vec![projector.clone()]).with_retry_strategy(strategy);
    engine.setup(&all(), true).await.unwrap();
    for _ in 0..5 {
        engine.run(&all()).await.unwrap();
        f.clock.advance(Duration::from_secs(2));
    }
    let s = f.subscriptions.get(&sid("p_1")).await.unwrap().unwrap();
    assert_eq!((s.status, s.retry_attempt), (SubscriptionStatus::Error, 2));
    *projector.fail_at.lock().unwrap() = None;
    engine.run(&all()).await.unwrap();
    assert_eq!(f.status("p_1").await.0, SubscriptionStatus::Error, "no more automatic retries");
    engine.reactivate(&all()).await.unwrap();
    assert_eq!(f.status("p_1").await.0, SubscriptionStatus::Active, "back to the status it failed in");
    engine.run(&all()).await.unwrap();
    assert_eq!(projector.handled(), vec![1, 2]);
}

#[tokio::test]
async fn panics_and_undecodable_events_become_errors() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 3).await;
    let projector = Recorder::new(SubscriberSpec::projector("p_1").unwrap());
    *projector.panic_at.lock().unwrap() = Some(2);
    let engine = f.engine(vec![projector.clone()]).with_retry_strategy(NoRetry);
    engine.setup(&all(), true).await.unwrap();
    let report = engine.run(&all()).await.unwrap();
    assert!(report.errors[0].message.contains("panicked: bug in handler at 2"), "{:?}", report.errors);
    assert_eq!(f.status("p_1").await, (SubscriptionStatus::Error, Position(1)));

    struct Typed(SubscriberSpec);
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Opened {
        door: u32,
    }
    #[async_trait::async_trait]
    impl Subscriber for Typed {
        fn spec(&self) -> &SubscriberSpec {
            &self.0
        }
        async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
            let _opened: Opened = message.event()?;
            Ok(())
        }
    }
    let typed: Arc<dyn Subscriber> = Arc::new(Typed(SubscriberSpec::projector("typed_1").unwrap()));
    let engine = SubscriptionEngine::new(f.events.clone(), f.subscriptions.clone(), vec![typed])
        .unwrap()
        .with_retry_strategy(NoRetry);
    engine.setup(&SubscriptionCriteria::ids([sid("typed_1")]), true).await.unwrap();
    let report = engine.run(&SubscriptionCriteria::ids([sid("typed_1")])).await.unwrap();
    assert!(report.errors[0].message.contains("does not decode"), "{:?}", report.errors);
    assert_eq!(f.status("typed_1").await, (SubscriptionStatus::Error, Position(0)));
}

#[tokio::test]
async fn setup_failure_is_an_error_retried_by_setup() {
    let f = Fixture::new();
    let projector = Recorder::new(SubscriberSpec::projector("p_1").unwrap());
    projector.setup_fails.store(true, Ordering::SeqCst);
    let engine = f.engine(vec![projector.clone()]);
    let report = engine.setup(&all(), false).await.unwrap();
    assert!(report.errors[0].message.contains("setup failed: cannot create table"));
    let s = f.subscriptions.get(&sid("p_1")).await.unwrap().unwrap();
    assert_eq!(s.error.unwrap().previous_status, SubscriptionStatus::New);
    projector.setup_fails.store(false, Ordering::SeqCst);
    f.clock.advance(Duration::from_secs(5));
    engine.setup(&all(), false).await.unwrap();
    assert_eq!(f.status("p_1").await.0, SubscriptionStatus::Booting);
    assert_eq!(projector.setups.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_new_version_rebuilds_while_the_old_one_is_detached_and_stays_detached() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 3).await;
    let v1 = Recorder::new(SubscriberSpec::projector("profile_1").unwrap());
    let engine = f.engine(vec![v1.clone()]);
    engine.setup(&all(), false).await.unwrap();
    engine.boot(&all()).await.unwrap();

    let v2 = Recorder::new(SubscriberSpec::projector("profile_2").unwrap());
    let engine = f.engine(vec![v2.clone()]);
    engine.setup(&all(), false).await.unwrap();
    engine.boot(&all()).await.unwrap();
    engine.run(&all()).await.unwrap();
    assert_eq!(f.status("profile_1").await.0, SubscriptionStatus::Detached);
    assert_eq!(f.status("profile_2").await, (SubscriptionStatus::Active, Position(3)));
    assert_eq!(v2.handled(), vec![1, 2, 3], "the new version rebuilt from the beginning");

    // Rolling back to v1 does not silently reactivate its detached subscription.
    let engine = f.engine(vec![v1.clone()]);
    engine.setup(&all(), false).await.unwrap();
    engine.run(&all()).await.unwrap();
    assert_eq!(f.status("profile_1").await.0, SubscriptionStatus::Detached);
    engine.reactivate(&SubscriptionCriteria::ids([sid("profile_1")])).await.unwrap();
    assert_eq!(f.status("profile_1").await.0, SubscriptionStatus::Active);
}

#[tokio::test]
async fn teardown_and_remove() {
    let f = Fixture::new();
    let a = Recorder::new(SubscriberSpec::projector("a_1").unwrap());
    let b = Recorder::new(SubscriberSpec::projector("b_1").unwrap());
    let engine = f.engine(vec![a.clone(), b.clone()]);
    engine.setup(&all(), true).await.unwrap();

    // Only a_1 left in the code: b_1 becomes detached, teardown removes it (no subscriber to call).
    let engine_a = f.engine(vec![a.clone()]);
    engine_a.run(&all()).await.unwrap();
    assert_eq!(f.status("b_1").await.0, SubscriptionStatus::Detached);
    let report = engine_a.teardown(&all()).await.unwrap();
    assert_eq!(report.changed, vec![sid("b_1")]);
    assert!(f.subscriptions.get(&sid("b_1")).await.unwrap().is_none());

    // remove calls teardown, and removes even when teardown fails.
    a.teardown_fails.store(true, Ordering::SeqCst);
    let report = engine_a.remove(&SubscriptionCriteria::ids([sid("a_1")])).await.unwrap();
    assert_eq!(a.teardowns.load(Ordering::SeqCst), 1);
    assert!(report.errors[0].message.contains("cannot drop table"));
    assert!(f.subscriptions.get(&sid("a_1")).await.unwrap().is_none());
}

#[tokio::test]
async fn pause_and_reactivate() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 2).await;
    let projector = Recorder::new(SubscriberSpec::projector("p_1").unwrap());
    let engine = f.engine(vec![projector.clone()]);
    engine.setup(&all(), false).await.unwrap();
    engine.pause(&all()).await.unwrap();
    assert_eq!(f.status("p_1").await.0, SubscriptionStatus::Paused);
    engine.boot(&all()).await.unwrap();
    engine.run(&all()).await.unwrap();
    assert!(projector.handled().is_empty(), "a paused subscription is left alone");
    engine.reactivate(&all()).await.unwrap();
    assert_eq!(f.status("p_1").await.0, SubscriptionStatus::Booting, "back to where it was paused");
    engine.boot(&all()).await.unwrap();
    assert_eq!(projector.handled(), vec![1, 2]);

    // A new subscription is not running: pausing skips it with a note, no error, unchanged.
    let newcomer = Recorder::new(SubscriberSpec::projector("n_1").unwrap());
    let engine = f.engine(vec![projector.clone(), newcomer]);
    engine.run(&all()).await.unwrap();
    let report = engine.pause(&SubscriptionCriteria::ids([sid("n_1")])).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.skipped[0].reason.contains("new"), "{:?}", report.skipped);
    assert_eq!(f.status("n_1").await.0, SubscriptionStatus::New);
}

#[tokio::test]
async fn criteria_select_by_id_and_group_and_report_unknown_ids() {
    let f = Fixture::new();
    let a = Recorder::new(SubscriberSpec::projector("a_1").unwrap());
    let b = Recorder::new(SubscriberSpec::processor("b_1").unwrap());
    let c = Recorder::new(SubscriberSpec::projector("c_1").unwrap().in_group("reports"));
    let engine = f.engine(vec![a, b, c]);
    let projectors = SubscriptionCriteria { ids: vec![], groups: vec!["projector".into()] };
    engine.setup(&projectors, true).await.unwrap();
    let ids: Vec<String> = engine.subscriptions(&all()).await.unwrap().iter().map(|s| s.id.to_string()).collect();
    assert_eq!(ids, ["a_1"], "only the projector group was set up");
    let report = engine.pause(&SubscriptionCriteria::ids([sid("a_1"), sid("nope")])).await.unwrap();
    assert_eq!(report.unmatched, vec![sid("nope")]);
    assert_eq!(f.status("a_1").await.0, SubscriptionStatus::Paused);
}

#[tokio::test]
async fn ignored_events_still_move_the_position() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 3).await;
    f.append("unit-1", "Closed", 2).await;
    let closer = Recorder::new(SubscriberSpec::projector("closed_1").unwrap().handling(["Closed"]));
    let rare = Recorder::new(SubscriberSpec::projector("rare_1").unwrap().handling(["NeverHappens"]));
    let engine = f.engine(vec![closer.clone(), rare]);
    engine.setup(&all(), false).await.unwrap();
    engine.boot(&all()).await.unwrap();
    assert_eq!(closer.handled(), vec![4, 5]);
    assert_eq!(f.status("rare_1").await, (SubscriptionStatus::Active, Position(5)), "lag is zero, not five");
}

#[tokio::test]
async fn duplicate_or_invalid_subscriber_ids_are_refused() {
    let f = Fixture::new();
    let a = Recorder::new(SubscriberSpec::projector("same").unwrap());
    let b = Recorder::new(SubscriberSpec::processor("same").unwrap());
    let subscribers: Vec<Arc<dyn Subscriber>> = vec![a, b];
    let err = SubscriptionEngine::new(f.events.clone(), f.subscriptions.clone(), subscribers).err().expect("refused");
    assert!(err.to_string().contains("registered twice"), "{err}");
    assert!(SubscriberSpec::projector("").is_err());
    assert!(SubscriberSpec::projector("with space").is_err());
}

#[tokio::test]
async fn reset_replays_from_the_beginning_a_position_or_a_time() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 3).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let middle = Timestamp::now();
    f.append("unit-1", "Opened", 3).await;
    let projector = Recorder::new(SubscriberSpec::projector("p_1").unwrap());
    let engine = f.engine(vec![projector.clone()]);
    engine.setup(&all(), true).await.unwrap();
    engine.run(&all()).await.unwrap();
    let report = engine.reset(&all(), ResetTo::Beginning).await.unwrap();
    assert!(report.errors[0].message.contains("only a paused subscription"), "{:?}", report.errors);

    engine.pause(&all()).await.unwrap();
    engine.reset(&all(), ResetTo::Time(middle)).await.unwrap();
    assert_eq!(f.status("p_1").await, (SubscriptionStatus::Paused, Position(3)));
    engine.reactivate(&all()).await.unwrap();
    engine.run(&all()).await.unwrap();
    engine.pause(&all()).await.unwrap();
    engine.reset(&all(), ResetTo::Position(Position(6))).await.unwrap();
    engine.reactivate(&all()).await.unwrap();
    engine.run(&all()).await.unwrap();
    engine.pause(&all()).await.unwrap();
    engine.reset(&all(), ResetTo::Beginning).await.unwrap();
    engine.reactivate(&all()).await.unwrap();
    engine.run(&all()).await.unwrap();
    assert_eq!(projector.handled(), vec![1, 2, 3, 4, 5, 6, 4, 5, 6, 6, 1, 2, 3, 4, 5, 6]);
    assert!(engine.reset(&all(), ResetTo::Position(Position(99))).await.is_err(), "outside the log");
}

#[tokio::test]
async fn a_parking_subscriber_parks_what_keeps_failing_and_replays_it_later() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 5).await;
    let projector = Recorder::new(SubscriberSpec::projector("p_1").unwrap().park_failures());
    *projector.fail_at.lock().unwrap() = Some(3);
    let engine = f.engine(vec![projector.clone()]).with_retry_strategy(NoRetry);
    engine.setup(&all(), true).await.unwrap();
    engine.run(&all()).await.unwrap();
    let s = f.subscriptions.get(&sid("p_1")).await.unwrap().unwrap();
    assert_eq!((s.status, s.position), (SubscriptionStatus::Error, Position(2)));
    assert_eq!(s.error.unwrap().failed_at, Some(Position(3)));

    // Retries are used up (none): the event is parked, visibly, and the subscription goes on.
    engine.run(&all()).await.unwrap();
    assert_eq!(f.status("p_1").await, (SubscriptionStatus::Active, Position(5)));
    assert_eq!(projector.handled(), vec![1, 2, 4, 5]);
    let parked = f.subscriptions.parked(&sid("p_1")).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].position, parked[0].event_type.as_str()), (Position(3), "Opened"));
    assert!(parked[0].error.contains("refused 3"), "{:?}", parked[0]);

    // Still broken: replay keeps it parked. Fixed: replay handles it and forgets it.
    let report = engine.replay_parked(&all()).await.unwrap();
    assert_eq!(report.errors.len(), 1);
    assert_eq!(f.subscriptions.parked(&sid("p_1")).await.unwrap().len(), 1);
    *projector.fail_at.lock().unwrap() = None;
    let report = engine.replay_parked(&all()).await.unwrap();
    assert_eq!(report.handled, 1);
    assert!(f.subscriptions.parked(&sid("p_1")).await.unwrap().is_empty());
    assert_eq!(projector.handled(), vec![1, 2, 4, 5, 3]);
}

#[tokio::test]
async fn without_parking_a_failure_is_never_skipped() {
    let f = Fixture::new();
    f.append("unit-1", "Opened", 3).await;
    let projector = Recorder::new(SubscriberSpec::projector("p_1").unwrap());
    *projector.fail_at.lock().unwrap() = Some(2);
    let engine = f.engine(vec![projector.clone()]).with_retry_strategy(NoRetry);
    engine.setup(&all(), true).await.unwrap();
    for _ in 0..3 {
        engine.run(&all()).await.unwrap();
    }
    assert_eq!(f.status("p_1").await, (SubscriptionStatus::Error, Position(1)));
    assert!(f.subscriptions.parked(&sid("p_1")).await.unwrap().is_empty());
    assert_eq!(projector.handled(), vec![1]);
}

#[tokio::test]
async fn a_typed_subscriber_gets_only_its_own_event_types_decoded() {
    #[derive(serde::Deserialize)]
    struct DoorOpened {
        door: u32,
    }
    impl reel_subscriptions::EventPayload for DoorOpened {
        const EVENT_TYPES: &'static [&'static str] = &["DoorOpened", "DoorOpenedV1"];
    }
    struct Doors(SubscriberSpec, Mutex<Vec<u32>>);
    #[async_trait::async_trait]
    impl Subscriber for Doors {
        fn spec(&self) -> &SubscriberSpec {
            &self.0
        }
        async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
            let opened: DoorOpened = message.event()?;
            self.1.lock().unwrap().push(opened.door);
            Ok(())
        }
    }
    let f = Fixture::new();
    let unit = StreamName::new("unit-1").unwrap();
    let events = vec![
        NewEvent::json("DoorOpened", &serde_json::json!({ "door": 1 })).unwrap(),
        NewEvent::json("PowerLost", &serde_json::json!({ "volts": 0 })).unwrap(),
        NewEvent::json("DoorOpenedV1", &serde_json::json!({ "door": 2 })).unwrap(),
    ];
    f.events.append(&unit, ExpectedVersion::Any, events).await.unwrap();
    let doors =
        Arc::new(Doors(SubscriberSpec::projector("doors_1").unwrap().for_events::<DoorOpened>(), Mutex::default()));
    let subscribers: Vec<Arc<dyn Subscriber>> = vec![doors.clone()];
    let engine = SubscriptionEngine::new(f.events.clone(), f.subscriptions.clone(), subscribers).unwrap();
    engine.setup(&all(), true).await.unwrap();
    let report = engine.run(&all()).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(*doors.1.lock().unwrap(), vec![1, 2], "PowerLost was never delivered");
    assert_eq!(f.status("doors_1").await, (SubscriptionStatus::Active, Position(3)));
}
