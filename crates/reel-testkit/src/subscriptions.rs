//! The `SubscriptionStore` contract, for every backend.

use std::sync::Arc;

use reel_core::{
    Position, ReelError, RunMode, Subscription, SubscriptionCriteria, SubscriptionError, SubscriptionId,
    SubscriptionStatus, SubscriptionStore, SubscriptionWarning, Timestamp,
};

/// Shared handle to the subscription store under test.
pub type Store = Arc<dyn SubscriptionStore>;

fn id(text: &str) -> SubscriptionId {
    SubscriptionId::new(text).expect("valid test id")
}

/// Every field survives a save and a load.
pub async fn round_trips_every_field(store: Store) {
    let mut s = Subscription::new(id("profile_1"), "projector", RunMode::Once, Timestamp::from_unix_micros(42));
    store.add(&s).await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap(), Some(s.clone()));
    s.status = SubscriptionStatus::Error;
    s.position = Position(1234);
    s.retry_attempt = 3;
    s.error = Some(SubscriptionError {
        message: "boom\nsecond line".into(),
        previous_status: SubscriptionStatus::Booting,
        failed_at: Some(Position(77)),
    });
    s.paused_from = Some(SubscriptionStatus::Active);
    s.last_saved_at = Timestamp::from_unix_micros(99);
    s.warning =
        Some(SubscriptionWarning { message: "replayed old events".into(), at: Timestamp::from_unix_micros(98) });
    store.update(&mut s).await.unwrap();
    assert_eq!(s.revision, 1, "a save bumps the revision");
    assert_eq!(store.get(&s.id).await.unwrap(), Some(s.clone()));
    // And a cleared warning is cleared in the store too.
    s.warning = None;
    store.update(&mut s).await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap(), Some(s));
}

/// Adding an id twice fails; updating or getting an unknown id says so; a save from a stale copy
/// is refused; removing is idempotent.
pub async fn add_update_remove(store: Store) {
    let s = Subscription::new(id("a"), "g", RunMode::FromNow, Timestamp::now());
    store.add(&s).await.unwrap();
    assert!(store.add(&s).await.is_err(), "second add of the same id");
    let mut ghost = Subscription::new(id("ghost"), "g", RunMode::FromNow, Timestamp::now());
    assert!(matches!(store.update(&mut ghost).await, Err(ReelError::SubscriptionNotFound { .. })));
    assert_eq!(store.get(&ghost.id).await.unwrap(), None);
    // Two copies loaded at once: the second save is refused instead of overwriting the first.
    let mut first = store.get(&s.id).await.unwrap().unwrap();
    let mut second = first.clone();
    first.status = SubscriptionStatus::Paused;
    store.update(&mut first).await.unwrap();
    second.position = Position(9);
    assert!(matches!(store.update(&mut second).await, Err(ReelError::SubscriptionChanged { .. })));
    assert_eq!(store.get(&s.id).await.unwrap().unwrap().status, SubscriptionStatus::Paused);
    store.remove(&s.id).await.unwrap();
    store.remove(&s.id).await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap(), None);
}

/// `find` applies criteria (OR within ids and within groups, AND across) and orders by id.
pub async fn find_by_criteria(store: Store) {
    for (name, group) in [("c", "x"), ("a", "x"), ("b", "y"), ("d", "z")] {
        store.add(&Subscription::new(id(name), group, RunMode::FromBeginning, Timestamp::now())).await.unwrap();
    }
    let ids = |subs: Vec<Subscription>| subs.into_iter().map(|s| s.id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(store.find(&SubscriptionCriteria::all()).await.unwrap()), ["a", "b", "c", "d"]);
    let groups = SubscriptionCriteria { ids: vec![], groups: vec!["x".into(), "z".into()] };
    assert_eq!(ids(store.find(&groups).await.unwrap()), ["a", "c", "d"]);
    let both = SubscriptionCriteria { ids: vec![id("a"), id("b")], groups: vec!["x".into()] };
    assert_eq!(ids(store.find(&both).await.unwrap()), ["a"]);
}

/// One worker holds a lease until it expires; a save by a worker that lost it changes nothing.
pub async fn leases_are_exclusive_until_expiry(store: Store) {
    use std::time::Duration;
    let mut s = Subscription::new(id("leased"), "g", RunMode::FromBeginning, Timestamp::from_unix_micros(0));
    store.add(&s).await.unwrap();
    let t0 = Timestamp::from_unix_micros(1_000_000);
    let at = |secs: i64| Timestamp::from_unix_micros(t0.unix_micros() + secs * 1_000_000);
    let ttl = Duration::from_secs(10);
    assert!(store.acquire_lease(&s.id, "worker-a", t0, ttl).await.unwrap());
    assert!(!store.acquire_lease(&s.id, "worker-b", at(5), ttl).await.unwrap(), "held by a");
    assert!(store.acquire_lease(&s.id, "worker-a", at(5), ttl).await.unwrap(), "a renews until 15");
    assert!(!store.acquire_lease(&s.id, "worker-b", at(14), ttl).await.unwrap());
    let lease = store.get(&s.id).await.unwrap().unwrap().lease.unwrap();
    assert_eq!((lease.owner.as_str(), lease.expires_at), ("worker-a", at(15)));
    s.position = Position(7);
    store.update_leased(&mut s, "worker-a", at(14)).await.unwrap();
    assert!(store.acquire_lease(&s.id, "worker-b", at(15), ttl).await.unwrap(), "expired: b takes over");
    s.position = Position(8);
    let lost = store.update_leased(&mut s, "worker-a", at(16)).await;
    assert!(matches!(lost, Err(ReelError::LeaseLost { .. })), "{lost:?}");
    assert_eq!(store.get(&s.id).await.unwrap().unwrap().position, Position(7), "a's late save changed nothing");
    store.release_lease(&s.id, "worker-a").await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap().unwrap().lease.unwrap().owner, "worker-b", "a cannot release b's lease");
    store.release_lease(&s.id, "worker-b").await.unwrap();
    assert!(store.get(&s.id).await.unwrap().unwrap().lease.is_none());
    assert!(!store.acquire_lease(&id("unknown"), "worker-a", t0, ttl).await.unwrap());
}

/// Parked events are listed by position, replaced by position, removed one by one and with
/// their subscription.
pub async fn parks_and_unparks_events(store: Store) {
    use reel_core::{EventId, ParkedEvent};
    let s = Subscription::new(id("parker"), "g", RunMode::FromBeginning, Timestamp::now());
    store.add(&s).await.unwrap();
    let parked = |position: u64, error: &str| ParkedEvent {
        subscription: s.id.clone(),
        position: Position(position),
        event_id: EventId::new_v7(),
        event_type: "Broken".into(),
        error: error.into(),
        parked_at: Timestamp::from_unix_micros(position as i64),
    };
    store.park(&parked(9, "first")).await.unwrap();
    store.park(&parked(4, "other")).await.unwrap();
    let again = parked(9, "second");
    store.park(&again).await.unwrap();
    let listed = store.parked(&s.id).await.unwrap();
    assert_eq!(listed.iter().map(|p| p.position.0).collect::<Vec<_>>(), [4, 9]);
    assert_eq!(listed[1], again, "parking a position again replaces it");
    store.unpark(&s.id, Position(4)).await.unwrap();
    assert_eq!(store.parked(&s.id).await.unwrap().len(), 1);
    store.remove(&s.id).await.unwrap();
    assert!(store.parked(&s.id).await.unwrap().is_empty(), "removing a subscription forgets its parked events");
}

/// Generates one test per clause. `$factory().await` returns `(Arc<dyn SubscriptionStore>, guard)`.
#[macro_export]
macro_rules! subscription_store_conformance_tests {
    ($factory:expr) => {
        $crate::subscription_store_conformance_tests!(@tests $factory; round_trips_every_field, add_update_remove, find_by_criteria, leases_are_exclusive_until_expiry, parks_and_unparks_events);
    };
    (@tests $factory:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (store, _guard) = ($factory)().await;
                $crate::subscriptions::$name(store).await;
            }
        )*
    };
}
