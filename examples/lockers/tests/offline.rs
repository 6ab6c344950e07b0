//! Units that were offline: the unit is authoritative for its lockers. A locker it rented on
//! its own screen while offline wins over a central reservation for the same time, which is
//! rejected and refunded when the unit syncs; a reservation of a free locker made while the
//! unit was offline is accepted after it reconnects. Both for a unit running the agent
//! (`reel edge`) and for an MQTT unit whose configuration the platform pushes. Also the app
//! API's answers to bad requests.

mod common;

use common::{eventually, get, post, TestStore};
use lockers::domain::types;

async fn reserve_and_confirm(app: &str, unit: &str, locker: &str) -> String {
    let (status, body) =
        post(&format!("{app}/api/commands/reserve"), &format!(r#"{{"unit":"{unit}","locker":"{locker}","hours":1}}"#))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "paid");
    let id = body["reservation"].as_str().unwrap().to_string();
    let (status, body) = post(&format!("{app}/api/commands/confirm"), &format!(r#"{{"reservation":"{id}"}}"#)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("confirmed")), "{body}");
    id
}

async fn status_of(app: &str, id: &str) -> Option<String> {
    let (code, body) = get(&format!("{app}/api/queries/reservations/{id}")).await;
    (code == 200).then(|| body["status"].as_str().unwrap_or_default().to_string())
}

async fn offline_divergence(unit: &str, platform: &common::Running, fleet: &lockers::fleet::Fleet) {
    let app = &platform.app;
    let sim = fleet.unit(unit).unwrap().clone();
    eventually(30, "the unit to hold its configuration", || {
        let sim = sim.clone();
        async move { sim.config().await }
    })
    .await;
    fleet.set_online(unit, false, true).await.unwrap();
    // A customer rents locker A on the unit's screen while it is offline.
    let rental = sim.rent_on_screen("A", 4).await.unwrap();
    // Meanwhile the app reserves A (the platform cannot know) and B, both for now.
    let taken = reserve_and_confirm(app, unit, "A").await;
    let free = reserve_and_confirm(app, unit, "B").await;
    fleet.set_online(unit, true, true).await.unwrap();

    let rejected = eventually(60, "the unit's rejection to reach the reservation", || async {
        status_of(app, &taken).await.filter(|s| s == "rejected")
    })
    .await;
    assert_eq!(rejected, "rejected");
    let state = platform.commands.reservation(&taken).await.unwrap();
    assert_eq!(state.paid_cents, 250);
    assert_eq!(state.refunded_cents, 250, "the rejected reservation is refunded in full");
    assert!(
        state.reason.as_deref().unwrap_or_default().contains(&rental),
        "the reason names the unit's rental: {:?}",
        state.reason
    );
    eventually(60, "the reservation of the free locker to be accepted", || async {
        status_of(app, &free).await.filter(|s| s == "accepted")
    })
    .await;

    // The offline rental is now known centrally: the same locker cannot be reserved for now.
    let (status, body) =
        post(&format!("{app}/api/commands/reserve"), &format!(r#"{{"unit":"{unit}","locker":"A","hours":1}}"#)).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("refused")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("rental"), "{body}");
    // The unit's offline period is in its event log, in the order it happened.
    let (_, log) = get(&format!("{app}/api/queries/units/{unit}/events?size=100&order=asc")).await;
    let occurrences: Vec<&str> =
        log["rows"].as_array().unwrap().iter().map(|r| r["occurrence"].as_str().unwrap()).collect();
    let offline = occurrences.iter().position(|o| *o == types::HARDWARE_OFFLINE).expect("HardwareOffline logged");
    let rented = occurrences.iter().position(|o| *o == types::RENTAL_STARTED).expect("RentalStarted logged");
    let online = occurrences.iter().position(|o| *o == types::HARDWARE_ONLINE).expect("HardwareOnline logged");
    assert!(offline < rented && rented < online, "{occurrences:?}");
    assert!(
        occurrences.contains(&types::RESERVATION_REJECTED) && occurrences.contains(&types::RESERVATION_ACCEPTED),
        "{occurrences:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_units_win_and_central_reservations_reconcile_after_reconnect() {
    let store = TestStore::sqlite();
    let prefix = format!("lockerstest{}", std::process::id());
    let platform = common::start(&common::options(&store, Some(&prefix))).await;
    let dir = tempfile::tempdir().unwrap();
    // Four units without random activity: PL-1000 runs the agent, PL-1003 speaks MQTT.
    let (fleet, stop, task) = common::fleet(&platform, 4, 0.0, Some(&prefix), dir.path()).await;
    assert_eq!(fleet.unit("PL-1003").unwrap().link, lockers::unit::UnitLinkKind::Mqtt);
    assert_eq!(fleet.unit("PL-1000").unwrap().link, lockers::unit::UnitLinkKind::Agent);
    offline_divergence("PL-1000", &platform, &fleet).await;
    offline_divergence("PL-1003", &platform, &fleet).await;
    let _ = stop.send(true);
    task.await.unwrap();
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_api_refuses_bad_requests_and_changes_nothing() {
    let store = TestStore::sqlite();
    let platform = common::start(&common::options(&store, None)).await;
    let app = &platform.app;
    platform.commands.configure("PL-7", &lockers::fleet::default_config("PL-7", "Harbour Ferry")).await.unwrap();
    let head = platform.events.head().await.unwrap();
    let cases: Vec<(&str, &str, u16, &str)> = vec![
        ("/api/commands/reserve", "{not json", 400, "invalid_json"),
        ("/api/commands/reserve", r#"{"unit":"PL-7"}"#, 400, "invalid_json"),
        ("/api/commands/reserve", r#"{"unit":"PL-7","locker":"A","hours":2}"#, 400, "invalid_argument"),
        ("/api/commands/reserve", r#"{"unit":"PL-8","locker":"A"}"#, 404, "not_found"),
        ("/api/commands/reserve", r#"{"unit":"PL-7","locker":"Q"}"#, 404, "not_found"),
        (
            "/api/commands/reserve",
            r#"{"unit":"PL-7","locker":"A","from_ms":-99999999999999999}"#,
            400,
            "invalid_argument",
        ),
        ("/api/commands/confirm", r#"{"reservation":"x","extra":1}"#, 400, "invalid_json"),
        ("/api/commands/confirm", r#"{"reservation":"nope"}"#, 404, "not_found"),
        ("/api/commands/cancel", r#"{"reservation":""}"#, 400, "invalid_argument"),
        (
            "/api/commands/configure",
            r#"{"unit":"PL-7","config":{"display_name":"x","location":"y","lockers":[],"price_cents_per_hour":1,"rental_hours":[1]}}"#,
            400,
            "invalid_argument",
        ),
        ("/api/admin/units/PL-7/link", r#"{"endpoint":"ftp://x","link":"push"}"#, 400, "invalid_argument"),
        (
            "/api/admin/units/PL-7/link",
            r#"{"endpoint":"http://127.0.0.1:9/","link":"carrier-pigeon"}"#,
            400,
            "invalid_argument",
        ),
        ("/api/simulator/units/PL-7/offline", "", 404, "no_simulator"),
    ];
    for (path, body, status, code) in cases {
        let (got, answer) = post(&format!("{app}{path}"), body).await;
        assert_eq!((got, answer["error"].as_str()), (status, Some(code)), "{path} {body}: {answer}");
        assert!(!answer["message"].as_str().unwrap_or_default().is_empty(), "{path}: a message says why");
    }
    for (path, status) in [
        ("/api/queries/units?sort=bogus", 400),
        ("/api/queries/units?order=sideways", 400),
        ("/api/queries/units/PL-7/events?size=0", 400),
        ("/api/queries/units/PL-7/events?page=0", 400),
        ("/api/queries/units/PL-7/events?page=abc", 400),
        ("/api/queries/availability?hours=0", 400),
        ("/api/queries/units/bad%20name/events", 400),
        ("/api/queries/reservations/none", 404),
        ("/api/nothing", 404),
    ] {
        let (got, answer) = get(&format!("{app}{path}")).await;
        assert_eq!(got, status, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{path}: a JSON error: {answer}");
    }
    assert_eq!(platform.events.head().await.unwrap(), head, "no refused request stored anything");
    platform.shutdown().await;
}
