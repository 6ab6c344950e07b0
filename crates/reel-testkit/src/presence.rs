//! The `PresenceStore` contract, for every backend.

use std::sync::Arc;
use std::time::Duration;

use reel_core::{Heartbeat, PresenceState, PresenceStore, Timestamp, UnitLink, UnitRegistration};

/// Shared handle to the presence store under test.
pub type Store = Arc<dyn PresenceStore>;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix_micros(1_700_000_000_000_000 + secs * 1_000_000)
}

fn heartbeat(device: &str, secs: i64) -> Heartbeat {
    Heartbeat {
        device: device.into(),
        display_name: None,
        interval: Duration::from_secs(10),
        rtt_ms: Some(12),
        clock_skew_ms: -40,
        config_version: None,
        received_at: at(secs),
    }
}

/// A heartbeat creates the row and later ones update it, keeping what they do not carry and
/// the state, which only `save_presence_state` changes.
pub async fn heartbeats_update_the_row_but_not_the_state(store: Store) {
    let first = Heartbeat { display_name: Some("Station A".into()), config_version: Some(2), ..heartbeat("a", 0) };
    store.record_heartbeat(&first).await.unwrap();
    store.record_heartbeat(&heartbeat("b", 1)).await.unwrap();
    let later =
        Heartbeat { rtt_ms: None, interval: Duration::from_secs(60), clock_skew_ms: 3_600_000, ..heartbeat("a", 5) };
    store.record_heartbeat(&later).await.unwrap();
    let devices = store.devices().await.unwrap();
    assert_eq!(devices.iter().map(|d| d.device.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let a = &devices[0];
    assert_eq!(a.display_name.as_deref(), Some("Station A"), "kept when not sent again");
    assert_eq!((a.interval_ms, a.rtt_ms, a.clock_skew_ms), (60_000, Some(12), 3_600_000));
    assert_eq!(a.last_heard_at, at(5));
    assert_eq!((a.config_version, a.config_acked_at), (Some(2), Some(at(0))));
    assert_eq!(a.state, PresenceState::default(), "heartbeats alone change no state");
    assert_eq!(a.endpoint, None, "an agent has no endpoint");

    // A late heartbeat (received before the latest) does not move the last time heard back.
    store.record_heartbeat(&heartbeat("a", 3)).await.unwrap();
    // A higher configuration version is an acknowledgement, with its time.
    store.record_heartbeat(&Heartbeat { config_version: Some(3), ..heartbeat("a", 7) }).await.unwrap();
    let a = store.devices().await.unwrap().remove(0);
    assert_eq!(a.last_heard_at, at(7));
    assert_eq!((a.config_version, a.config_acked_at), (Some(3), Some(at(7))));
}

/// The state is saved unless the stored one has seen more presence changes.
pub async fn presence_state_never_goes_back(store: Store) {
    store.record_heartbeat(&heartbeat("a", 0)).await.unwrap();
    let online = PresenceState { online: true, session: 1, changes: 1, since: Some(at(0)) };
    store.save_presence_state("a", &online).await.unwrap();
    let offline = PresenceState { online: false, session: 1, changes: 2, since: Some(at(20)) };
    store.save_presence_state("a", &offline).await.unwrap();
    store.save_presence_state("a", &online).await.unwrap();
    assert_eq!(store.devices().await.unwrap()[0].state, offline, "an older state does not replace a newer one");
    store.save_presence_state("nobody", &online).await.unwrap();
    assert_eq!(store.devices().await.unwrap().len(), 1, "no row is made for an unknown device");
}

/// A partition's lease is one holder's until it expires.
pub async fn partitions_are_claimed_exclusively_until_expiry(store: Store) {
    let ttl = Duration::from_secs(10);
    assert!(store.claim_partition("presence:0", "w1", at(0), ttl).await.unwrap());
    assert!(store.claim_partition("presence:1", "w2", at(0), ttl).await.unwrap(), "another partition is free");
    assert!(!store.claim_partition("presence:0", "w2", at(5), ttl).await.unwrap());
    assert!(store.claim_partition("presence:0", "w1", at(5), ttl).await.unwrap(), "renewed until 15");
    assert!(!store.claim_partition("presence:0", "w2", at(14), ttl).await.unwrap());
    assert!(store.claim_partition("presence:0", "w2", at(15), ttl).await.unwrap(), "expired: taken over");
    assert!(!store.claim_partition("presence:0", "w1", at(16), ttl).await.unwrap());
    assert_eq!(store.count_claims("presence:", at(16)).await.unwrap(), 1, "presence:1 expired at 10");
    assert_eq!(store.count_claims("presence:", at(0)).await.unwrap(), 2);
    assert_eq!(store.count_claims("other:", at(0)).await.unwrap(), 0);
    store.release_partition("presence:0", "w1").await.unwrap();
    assert!(!store.claim_partition("presence:0", "w3", at(16), ttl).await.unwrap(), "w1 could not release w2's");
    store.release_partition("presence:0", "w2").await.unwrap();
    assert!(store.claim_partition("presence:0", "w3", at(16), ttl).await.unwrap(), "released: free at once");
}

/// A registered unit has a row before it is ever heard from; heartbeats keep its endpoint and
/// registering again keeps its presence; a fetch position only moves forward.
pub async fn units_are_registered_and_forgotten(store: Store) {
    let unit = UnitRegistration {
        device: "u".into(),
        display_name: Some("Unit U".into()),
        interval: Duration::from_secs(60),
        endpoint: "http://127.0.0.1:9/unit".into(),
        link: UnitLink::Push,
    };
    store.register_unit(&unit).await.unwrap();
    let row = store.devices().await.unwrap().remove(0);
    assert_eq!(row.endpoint, Some(("http://127.0.0.1:9/unit".into(), UnitLink::Push)));
    assert_eq!((row.last_heard_at, row.interval_ms, row.fetch_position), (Timestamp::from_unix_micros(0), 60_000, 0));
    assert!(row.is_silent(at(0), 1.5), "never heard from: offline");
    store.record_heartbeat(&Heartbeat { interval: Duration::from_secs(60), ..heartbeat("u", 1) }).await.unwrap();
    store.register_unit(&UnitRegistration { link: UnitLink::Fetch, display_name: None, ..unit.clone() }).await.unwrap();
    let row = store.devices().await.unwrap().remove(0);
    assert_eq!(row.last_heard_at, at(1), "registering again keeps what was heard");
    assert_eq!(row.display_name.as_deref(), Some("Unit U"));
    assert_eq!(row.endpoint.map(|(_, link)| link), Some(UnitLink::Fetch));
    store.save_link_error("u", Some("the unit answered 500")).await.unwrap();
    assert_eq!(store.devices().await.unwrap()[0].link_error.as_deref(), Some("the unit answered 500"));
    store.save_link_error("u", None).await.unwrap();
    assert_eq!(store.devices().await.unwrap()[0].link_error, None);
    store.save_link_error("u", Some("down")).await.unwrap();
    store.register_unit(&UnitRegistration { link: UnitLink::Fetch, display_name: None, ..unit.clone() }).await.unwrap();
    assert_eq!(store.devices().await.unwrap()[0].link_error, None, "registering again starts with a clean slate");
    store.save_fetch_position("u", 40).await.unwrap();
    store.save_fetch_position("u", 30).await.unwrap();
    assert_eq!(store.devices().await.unwrap()[0].fetch_position, 40, "never back");
    assert!(store.forget_device("u").await.unwrap());
    assert!(!store.forget_device("u").await.unwrap());
    assert!(store.devices().await.unwrap().is_empty());
}

/// A fleet's heartbeats arriving at once are each recorded, none lost and none answered
/// before it is written (a backend may write those that queue together in one transaction).
pub async fn concurrent_heartbeats_are_all_recorded(store: Store) {
    let mut tasks = tokio::task::JoinSet::new();
    for device in 0..300 {
        let store = store.clone();
        tasks.spawn(async move {
            let name = format!("d{device:03}");
            store.record_heartbeat(&Heartbeat { config_version: Some(1), ..heartbeat(&name, 1) }).await.unwrap();
            // Its row is there as soon as the call returns.
            let seen = store.devices().await.unwrap();
            assert!(seen.iter().any(|d| d.device == name), "{name} recorded when acknowledged");
            store.record_heartbeat(&Heartbeat { config_version: Some(2), ..heartbeat(&name, 2) }).await.unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let devices = store.devices().await.unwrap();
    assert_eq!(devices.len(), 300);
    for d in &devices {
        assert_eq!(
            (d.last_heard_at, d.config_version, d.config_acked_at),
            (at(2), Some(2), Some(at(2))),
            "{}",
            d.device
        );
    }
}

/// Generates one test per clause. `$factory().await` returns `(Arc<dyn PresenceStore>, guard)`.
#[macro_export]
macro_rules! presence_store_conformance_tests {
    ($factory:expr) => {
        $crate::presence_store_conformance_tests!(@tests $factory; heartbeats_update_the_row_but_not_the_state, presence_state_never_goes_back, partitions_are_claimed_exclusively_until_expiry, units_are_registered_and_forgotten, concurrent_heartbeats_are_all_recorded);
    };
    (@tests $factory:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (store, _guard) = ($factory)().await;
                $crate::presence::$name(store).await;
            }
        )*
    };
}
