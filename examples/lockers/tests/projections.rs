//! Projections rebuilt from the beginning arrive at the rows the live ones hold, on SQLite and
//! PostgreSQL; and the fix-a-projection flow: version 2 builds while version 1 serves, queries
//! switch once it caught up, and retiring version 1 drops its subscription and tables.

mod common;

use std::time::Duration;

use common::{eventually, get, TestStore};
use lockers::platform::{retire, Stores};
use lockers::projections::{subscription_id, NAMES};
use reel_core::{SubscriptionCriteria, SubscriptionId};
use reel_subscriptions::SubscriptionEngine;

/// Every table of a projection version, with the columns to compare.
fn tables(name: &str, prefix: &str, version: u32) -> Vec<(String, &'static str)> {
    let t = |base: &str| format!("{prefix}lockers_{base}_{version}");
    match name {
        "units" => vec![(
            t("units"),
            "unit, display_name, location, lockers, price_cents_per_hour, rental_hours, config_events, configured_us",
        )],
        "eventlog" => vec![(t("eventlog"), "position, unit, location, occurrence, locker, occurred_us, recorded_us")],
        "availability" => vec![
            (t("availability_lockers"), "unit, locker, location, occupied"),
            (
                t("availability_reservations"),
                "reservation, unit, locker, location, from_us, to_us, hold_until_us, amount_cents, status",
            ),
        ],
        _ => vec![(t("revenue"), "location, day, cents"), (t("revenue_places"), "reservation, location")],
    }
}

async fn wait_caught_up(app: &str) {
    eventually(60, "every projection and processor to reach the head", || async {
        let (_, body) = get(&format!("{app}/api/queries/projections")).await;
        let subs = body["subscriptions"].as_array()?.clone();
        (subs.len() >= 6 && subs.iter().all(|s| s["lag"] == 0 && s["status"] == "active")).then_some(())
    })
    .await;
}

async fn rebuilt_equals_live(store: TestStore) {
    store.clean().await;
    let prefix = format!("lockersproj{}", std::process::id());
    let mqtt = matches!(store, TestStore::Sqlite(_)).then_some(prefix.as_str());
    let platform = common::start(&common::options(&store, mqtt)).await;
    let dir = tempfile::tempdir().unwrap();
    let (fleet, stop, task) = common::fleet(&platform, 20, 3.0, mqtt, dir.path()).await;
    // Reservations too: paid, confirmed, cancelled, declined.
    for i in 0..20 {
        let unit = format!("PL-{}", 1000 + (i % 5));
        let card = if i % 7 == 0 { "tok_fail" } else { "tok_ok" };
        let body = format!(
            r#"{{"unit":"{unit}","locker":"H","from_ms":{},"hours":1,"card":"{card}"}}"#,
            1_900_000_000_000i64 + i * 3_600_000
        );
        let (_, answer) = common::post(&format!("{}/api/commands/reserve", platform.app), &body).await;
        if let Some(id) = answer["reservation"].as_str() {
            let command = format!(r#"{{"reservation":"{id}"}}"#);
            common::post(&format!("{}/api/commands/confirm", platform.app), &command).await;
            if i % 3 == 0 {
                common::post(&format!("{}/api/commands/cancel", platform.app), &command).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = stop.send(true);
    task.await.unwrap();
    drop(fleet);
    wait_caught_up(&platform.app).await;
    let head = platform.events.head().await.unwrap();
    assert!(head.0 > 300, "the fleet recorded events ({head:?})");

    // Version 2 of every projection, built from the beginning alone.
    let stores = Stores::open(&store.location()).await.unwrap();
    let mut projectors = Vec::new();
    for name in NAMES {
        projectors.push(stores.projector(name, 2).await.unwrap());
    }
    let engine = SubscriptionEngine::new(stores.events.clone(), stores.subscriptions.clone(), projectors).unwrap();
    let ids: Vec<SubscriptionId> = NAMES.iter().map(|n| SubscriptionId::new(subscription_id(n, 2)).unwrap()).collect();
    let criteria = SubscriptionCriteria::ids(ids);
    engine.setup(&criteria, false).await.unwrap().into_result().unwrap();
    engine.run_until_idle(&criteria, 10).await.unwrap().into_result().unwrap();
    let prefix = stores.naming(1).prefix;
    for name in NAMES {
        for ((live, columns), (rebuilt, _)) in tables(name, &prefix, 1).into_iter().zip(tables(name, &prefix, 2)) {
            let live_rows = platform.queries.dump(&live, columns).await.unwrap();
            let rebuilt_rows = platform.queries.dump(&rebuilt, columns).await.unwrap();
            assert!(!live_rows.is_empty(), "{live} has rows");
            assert_eq!(live_rows.len(), rebuilt_rows.len(), "{rebuilt} has as many rows as {live}");
            assert!(live_rows == rebuilt_rows, "{rebuilt} equals {live}");
        }
    }
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_rebuilt_projections_equal_the_live_ones() {
    rebuilt_equals_live(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_rebuilt_projections_equal_the_live_ones() {
    rebuilt_equals_live(TestStore::postgres("rebuild")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_projection_version_builds_while_the_old_one_serves_then_replaces_it() {
    let store = TestStore::sqlite();
    let options = common::options(&store, None);
    let platform = common::start(&options).await;
    for i in 0..30 {
        let unit = format!("PL-{}", 2000 + i);
        platform.commands.configure(&unit, &lockers::fleet::default_config(&unit, "Main Stadium")).await.unwrap();
    }
    wait_caught_up(&platform.app).await;
    platform.shutdown().await;

    // Deploy with eventlog=2 and units=2: version 1 keeps serving until version 2 caught up.
    let mut bumped = options.clone();
    bumped.versions.insert("units".into(), 2);
    let platform = common::start(&bumped).await;
    let (_, body) = get(&format!("{}/api/queries/projections", platform.app)).await;
    let ids: Vec<&str> = body["subscriptions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"lockers_units_1") && ids.contains(&"lockers_units_2"), "both versions run: {ids:?}");
    eventually(30, "version 2 of the units table to be served", || async {
        let (_, body) = get(&format!("{}/api/queries/projections", platform.app)).await;
        (body["serving"]["units"] == 2).then_some(())
    })
    .await;
    let (_, units) = get(&format!("{}/api/queries/units", platform.app)).await;
    assert_eq!(units["units"].as_array().unwrap().len(), 30, "version 2 serves every unit");
    platform.shutdown().await;

    // Retire version 1: its subscription and tables are gone; version 2 serves alone.
    assert!(retire(&store.location(), "units", 1).await.unwrap());
    assert!(!retire(&store.location(), "units", 1).await.unwrap(), "retiring twice finds nothing");
    let stores = Stores::open(&store.location()).await.unwrap();
    assert!(!stores.has_subscription("lockers_units_1").await.unwrap());
    let gone = stores.read.rows("SELECT COUNT(*) FROM lockers_units_1", vec![]).await;
    assert!(gone.is_err(), "the old table was dropped");
    let platform = common::start(&bumped).await;
    let (_, body) = get(&format!("{}/api/queries/projections", platform.app)).await;
    assert_eq!(body["serving"]["units"], 2);
    let (_, units) = get(&format!("{}/api/queries/units", platform.app)).await;
    assert_eq!(units["units"].as_array().unwrap().len(), 30);
    platform.shutdown().await;
}
