//! The engine next to running workers and operators: detaching orphans, leases respected by
//! one-off operations, pausing over a group, reactivating after a failed setup, event filters,
//! and who holds what. Each test fails on an engine that ignores the rule it names
//! (docs/DESIGN.md, invariants 9, 11, 12 and 14).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reel_core::{
    EventStore, ExpectedVersion, NewEvent, Position, StreamName, SubscriptionCriteria, SubscriptionId,
    SubscriptionStatus, SubscriptionStore, Timestamp,
};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{
    HandlerError, Message, NoRetry, Subscriber, SubscriberSpec, SubscriptionEngine, Worker, WorkerOptions,
};

use SubscriptionStatus::*;

/// Records what it handled, per subscriber; can fail its setup, or change its own subscription
/// behind the engine's back while handling (as an operator in another process would).
struct Probe {
    spec: SubscriberSpec,
    seen: Arc<Mutex<BTreeMap<String, Vec<u64>>>>,
    setup_fails: std::sync::atomic::AtomicBool,
    meddle: Option<Arc<dyn SubscriptionStore>>,
    /// How long each event takes to handle.
    delay: Duration,
}

#[async_trait::async_trait]
impl Subscriber for Probe {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }
    async fn setup(&self) -> Result<(), HandlerError> {
        if self.setup_fails.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("database not reachable".into());
        }
        Ok(())
    }
    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        tokio::time::sleep(self.delay).await;
        if let Some(store) = &self.meddle {
            let mut stored = store.get(&self.spec.id).await?.expect("stored");
            store.update(&mut stored).await?;
        }
        self.seen.lock().unwrap().entry(self.spec.id.to_string()).or_default().push(message.position().0);
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    events: Arc<SqliteStore>,
    subscriptions: Arc<dyn SubscriptionStore>,
    seen: Arc<Mutex<BTreeMap<String, Vec<u64>>>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let events = SqliteStore::open(dir.path().join("reel.db")).unwrap();
        let subscriptions = Arc::new(events.subscription_store().unwrap());
        Self { _dir: dir, events: Arc::new(events), subscriptions, seen: Arc::default() }
    }

    fn probe(&self, spec: SubscriberSpec) -> Arc<Probe> {
        Arc::new(Probe {
            spec,
            seen: self.seen.clone(),
            setup_fails: Default::default(),
            meddle: None,
            delay: Duration::ZERO,
        })
    }

    fn engine(&self, subscribers: Vec<Arc<Probe>>) -> SubscriptionEngine {
        let subscribers = subscribers.into_iter().map(|s| s as Arc<dyn Subscriber>).collect();
        SubscriptionEngine::new(self.events.clone(), self.subscriptions.clone(), subscribers)
            .unwrap()
            .with_retry_strategy(NoRetry)
    }

    async fn append(&self, stream: &str, count: usize) {
        let events = (0..count).map(|_| NewEvent::new("Opened", "{}")).collect();
        self.events.append(&StreamName::new(stream).unwrap(), ExpectedVersion::Any, events).await.unwrap();
    }

    async fn status(&self, id: &str) -> SubscriptionStatus {
        self.subscriptions.get(&sid(id)).await.unwrap().expect("subscription exists").status
    }

    fn seen(&self, id: &str) -> Vec<u64> {
        self.seen.lock().unwrap().get(id).cloned().unwrap_or_default()
    }
}

fn sid(id: &str) -> SubscriptionId {
    SubscriptionId::new(id).unwrap()
}

fn all() -> SubscriptionCriteria {
    SubscriptionCriteria::all()
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_detaches_what_no_subscriber_claims_within_its_groups_only() {
    let f = Fixture::new();
    f.append("unit-1", 3).await;
    // The old deployment: profile_1, a report in another group, and a subscriber that an older
    // process still runs.
    let old = f.engine(vec![
        f.probe(SubscriberSpec::projector("profile_1").unwrap()),
        f.probe(SubscriberSpec::projector("report_1").unwrap().in_group("reports")),
        f.probe(SubscriberSpec::projector("legacy_1").unwrap()),
    ]);
    old.setup(&all(), true).await.unwrap();
    old.run(&all()).await.unwrap().into_result().unwrap();
    let now = Timestamp::now();
    assert!(f
        .subscriptions
        .acquire_lease(&sid("legacy_1"), "old-process", now, Duration::from_secs(600))
        .await
        .unwrap());

    // The new deployment renames profile_1 to profile_2 and runs a worker for everything.
    let new = f.engine(vec![f.probe(SubscriberSpec::projector("profile_2").unwrap())]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = WorkerOptions { detach_every: Duration::from_millis(50), ..WorkerOptions::default() };
    let worker = tokio::spawn(Worker::new(new.clone(), options).run(async {
        let _ = stopped.await;
    }));
    until("profile_1 to be detached", async || f.status("profile_1").await == Detached).await;
    new.wait_for_catch_up(&all(), Duration::from_secs(10)).await.unwrap();
    assert_eq!(f.seen("profile_2"), vec![1, 2, 3], "the new version rebuilt from the beginning");
    assert_eq!(f.status("report_1").await, Active, "another group's subscription is not this worker's business");
    assert_eq!(f.status("legacy_1").await, Active, "a subscription another live process holds is not orphaned");

    // Once the old process lets go, the next periodic check detaches it too.
    f.subscriptions.release_lease(&sid("legacy_1"), "old-process").await.unwrap();
    until("legacy_1 to be detached", async || f.status("legacy_1").await == Detached).await;
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_outside_the_worker_leaves_held_subscriptions_to_their_worker() {
    let f = Fixture::new();
    // The worker's handler is slow, so the worker is still busy with each append's events when
    // the application's own run comes.
    let slow = Probe {
        spec: SubscriberSpec::projector("doors_1").unwrap(),
        seen: f.seen.clone(),
        setup_fails: Default::default(),
        meddle: None,
        delay: Duration::from_millis(200),
    };
    let worker_engine = f.engine(vec![Arc::new(slow)]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = WorkerOptions { owner: "worker-a".into(), ..WorkerOptions::default() };
    let worker = tokio::spawn(Worker::new(worker_engine.clone(), options).run(async {
        let _ = stopped.await;
    }));
    until("the worker to hold doors_1", async || {
        f.subscriptions.get(&sid("doors_1")).await.unwrap().and_then(|s| s.lease).is_some_and(|l| l.owner == "worker-a")
    })
    .await;

    // The application (or `reel … run` without --worker) runs the same subscriber itself.
    let mut app = vec![];
    for _ in 0..5 {
        f.append("unit-1", 2).await;
        let operation = f.engine(vec![f.probe(SubscriberSpec::projector("doors_1").unwrap())]);
        let report = operation.run(&all()).await.unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        app.push(report);
    }
    worker_engine.wait_for_catch_up(&all(), Duration::from_secs(10)).await.unwrap();
    assert!(app.iter().all(|r| r.handled == 0), "the operation handed nothing over while the worker held it");
    for report in &app {
        let skipped = &report.skipped;
        assert!(skipped.iter().any(|n| n.id == sid("doors_1") && n.reason.contains("worker-a")), "{skipped:?}");
    }
    assert_eq!(f.seen("doors_1"), (1..=10).collect::<Vec<_>>(), "every event exactly once");
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn one_refused_save_never_aborts_the_other_subscriptions() {
    let f = Fixture::new();
    f.append("unit-1", 2).await;
    let mut meddler = Probe {
        spec: SubscriberSpec::projector("a_1").unwrap(),
        seen: f.seen.clone(),
        setup_fails: Default::default(),
        meddle: None,
        delay: Duration::ZERO,
    };
    meddler.meddle = Some(f.subscriptions.clone());
    let engine = f.engine(vec![Arc::new(meddler), f.probe(SubscriberSpec::projector("b_1").unwrap())]);
    engine.setup(&all(), true).await.unwrap();
    let report = engine.run(&all()).await.expect("one subscription's refused save is not the run's error");
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].id, sid("a_1"));
    assert!(report.errors[0].message.contains("changed"), "{}", report.errors[0].message);
    assert_eq!(f.seen("b_1"), vec![1, 2], "b_1 ran although a_1's save was refused before it");
    let a = f.subscriptions.get(&sid("a_1")).await.unwrap().unwrap();
    assert_eq!(a.position, Position(0), "the refused save moved nothing");
    assert!(a.lease.is_none(), "the operation gave its lease back");
}

#[tokio::test]
async fn pausing_after_a_failed_setup_then_reactivating_retries_the_setup() {
    let f = Fixture::new();
    f.append("unit-1", 2).await;
    let projector = f.probe(SubscriberSpec::projector("p_1").unwrap());
    projector.setup_fails.store(true, std::sync::atomic::Ordering::SeqCst);
    let engine = f.engine(vec![projector.clone()]);
    let report = engine.setup(&all(), false).await.unwrap();
    assert_eq!(report.errors.len(), 1);
    assert_eq!(f.status("p_1").await, Error);
    engine.pause(&all()).await.unwrap().into_result().unwrap();
    assert_eq!(f.status("p_1").await, Paused);

    let report = engine.reactivate(&all()).await.unwrap();
    assert!(report.errors.is_empty(), "reactivate lands on a status the diagram allows: {:?}", report.errors);
    assert_eq!(f.status("p_1").await, New, "it starts over, so the setup runs again");
    projector.setup_fails.store(false, std::sync::atomic::Ordering::SeqCst);
    engine.setup(&all(), false).await.unwrap().into_result().unwrap();
    assert_eq!(f.status("p_1").await, Booting);
    engine.boot(&all()).await.unwrap().into_result().unwrap();
    assert_eq!((f.status("p_1").await, f.seen("p_1")), (Active, vec![1, 2]));
}

#[tokio::test]
async fn pausing_a_group_skips_members_that_are_not_running() {
    let f = Fixture::new();
    let group = |id: &str| SubscriberSpec::projector(id).unwrap().in_group("g");
    let once = SubscriberSpec::new("once_1", reel_core::RunMode::Once).unwrap().in_group("g");
    let engine = f.engine(vec![f.probe(group("active_1")), f.probe(once.clone()), f.probe(group("gone_1"))]);
    engine.setup(&all(), true).await.unwrap();
    engine.run(&all()).await.unwrap();
    // gone_1 loses its subscriber (detached), new_1 is tracked but never set up.
    let engine = f.engine(vec![f.probe(group("active_1")), f.probe(once), f.probe(group("new_1"))]);
    engine.run(&all()).await.unwrap();
    let statuses: Vec<_> =
        engine.subscriptions(&all()).await.unwrap().into_iter().map(|s| (s.id.to_string(), s.status)).collect();
    assert_eq!(
        statuses,
        [("active_1".into(), Active), ("gone_1".into(), Detached), ("new_1".into(), New), ("once_1".into(), Finished)]
    );

    let groups = SubscriptionCriteria { ids: vec![], groups: vec!["g".into()] };
    let report = engine.pause(&groups).await.unwrap().into_result().expect("pausing a group does not fail");
    assert_eq!(report.changed, vec![sid("active_1")]);
    let skipped: Vec<_> = report.skipped.iter().map(|n| n.id.to_string()).collect();
    assert_eq!(skipped, ["gone_1", "new_1", "once_1"]);
    assert_eq!(f.status("active_1").await, Paused);
    assert_eq!(f.status("once_1").await, Finished);
}

#[tokio::test]
async fn an_empty_type_list_is_refused_and_star_hides_reserved_streams() {
    let f = Fixture::new();
    let empty = f.probe(SubscriberSpec::projector("empty_1").unwrap().handling(Vec::<String>::new()));
    let err = SubscriptionEngine::new(f.events.clone(), f.subscriptions.clone(), vec![empty]).err().expect("refused");
    assert!(err.to_string().contains("empty list of event types"), "{err}");

    f.append("unit-1", 1).await;
    f.append("$tokens", 1).await;
    f.append("unit-2", 1).await;
    let star = f.probe(SubscriberSpec::projector("star_1").unwrap().handling(["*"]));
    let reserved = f.probe(SubscriberSpec::projector("tokens_1").unwrap().in_categories(["$tokens"]));
    let engine = f.engine(vec![star, reserved]);
    engine.setup(&all(), false).await.unwrap();
    engine.boot(&all()).await.unwrap().into_result().unwrap();
    assert_eq!(f.seen("star_1"), vec![1, 3], "`*` means every event type, but not Reel's own `$…` streams");
    assert_eq!(f.seen("tokens_1"), vec![2], "naming the `$…` category delivers it");
    let star = f.subscriptions.get(&sid("star_1")).await.unwrap().unwrap();
    assert_eq!(star.position, Position(3), "the position still moves past hidden events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_who_holds_a_subscription_and_which_active_ones_nobody_runs() {
    let f = Fixture::new();
    let engine = f.engine(vec![f.probe(SubscriberSpec::projector("run_1").unwrap())]);
    engine.setup(&all(), true).await.unwrap();
    let view = &engine.overview(&all()).await.unwrap()[0];
    assert_eq!(view.status, Active);
    assert!(view.unattended && !view.held && view.lease_owner.is_none(), "{view:?}");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = WorkerOptions { owner: "worker-b".into(), ..WorkerOptions::default() };
    let worker = tokio::spawn(Worker::new(engine.clone(), options).run(async {
        let _ = stopped.await;
    }));
    until("the worker to take the lease", async || engine.overview(&all()).await.unwrap()[0].held).await;
    let view = &engine.overview(&all()).await.unwrap()[0];
    assert_eq!(view.lease_owner.as_deref(), Some("worker-b"));
    assert!(!view.unattended);
    let renewed = view.lease_renewed_at.expect("renewal time");
    assert!(renewed <= Timestamp::now() && view.lease_expires_at.unwrap() > renewed, "{view:?}");
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    let view = &engine.overview(&all()).await.unwrap()[0];
    assert!(view.unattended && view.lease_owner.is_none(), "a stopped worker lets go: {view:?}");
}
