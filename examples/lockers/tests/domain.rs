//! The reservation rules, on SQLite and on PostgreSQL: a locker is never reserved twice for
//! overlapping windows (also under 64 concurrent requests for one locker), disjoint windows
//! all fit, cancellation and confirmation rules, refunds, and bad input that changes nothing.

mod common;

use std::sync::Arc;

use common::TestStore;
use lockers::commands::{CommandError, Commands, ReserveCommand};
use lockers::domain::{types, ReservationStatus};
use lockers::fleet::default_config;
use lockers::platform::Stores;
use reel_core::{EventStore, Timestamp};

const HOUR_MS: i64 = 3_600_000;

fn reserve(unit: &str, locker: &str, from_ms: i64, hours: u32) -> ReserveCommand {
    ReserveCommand {
        unit: unit.into(),
        locker: locker.into(),
        from_ms: Some(from_ms),
        hours: Some(hours),
        card: None,
        reservation: None,
    }
}

async fn commands(store: &TestStore) -> (Commands, Arc<dyn EventStore>) {
    store.clean().await;
    let stores = Stores::open(&store.location()).await.unwrap();
    let commands = Commands::new(stores.events.clone());
    commands.configure("PL-1", &default_config("PL-1", "Camping Festitent")).await.unwrap();
    (commands, stores.events)
}

async fn no_overlapping_reservations(store: TestStore) {
    let (commands, _) = commands(&store).await;
    let tomorrow = Timestamp::now().unix_micros() / 1_000 + 24 * HOUR_MS;
    // 64 requests for locker A, all overlapping (each starts within the first's 4 hours).
    let racers: Vec<_> = (0..64)
        .map(|i| {
            let commands = commands.clone();
            tokio::spawn(async move { commands.reserve(&reserve("PL-1", "A", tomorrow + i * 60_000, 4)).await })
        })
        .collect();
    let mut paid = 0;
    let mut refused = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(answer) => {
                assert_eq!(answer.status, ReservationStatus::Paid);
                paid += 1;
            }
            Err(CommandError::Refused(why)) => {
                assert!(why.contains("overlapping"), "{why}");
                refused += 1;
            }
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
    assert_eq!((paid, refused), (1, 63), "exactly one of 64 overlapping requests wins");

    // 24 disjoint one-hour windows of locker B all fit, concurrently.
    let disjoint: Vec<_> = (0..24)
        .map(|i| {
            let commands = commands.clone();
            tokio::spawn(async move { commands.reserve(&reserve("PL-1", "B", tomorrow + i * HOUR_MS, 1)).await })
        })
        .collect();
    for one in disjoint {
        let answer = one.await.unwrap().expect("a disjoint window fits");
        assert_eq!(answer.status, ReservationStatus::Paid);
    }
    // Touching windows do not overlap; one that straddles two does.
    assert!(commands.reserve(&reserve("PL-1", "B", tomorrow + 24 * HOUR_MS, 1)).await.is_ok());
    let straddle = commands.reserve(&reserve("PL-1", "B", tomorrow + HOUR_MS / 2, 1)).await;
    assert!(matches!(straddle, Err(CommandError::Refused(_))), "{straddle:?}");
}

async fn cancel_and_confirm_rules(store: TestStore) {
    let (commands, events) = commands(&store).await;
    let now_ms = Timestamp::now().unix_micros() / 1_000;
    let later = now_ms + 48 * HOUR_MS;

    // A declined card: the window is free again, and it cannot be confirmed.
    let declined = commands
        .reserve(&ReserveCommand { card: Some("tok_fail".into()), ..reserve("PL-1", "C", later, 1) })
        .await
        .unwrap();
    assert_eq!(declined.status, ReservationStatus::PaymentFailed);
    let refused = commands.confirm(&declined.reservation).await;
    assert!(matches!(refused, Err(CommandError::Refused(_))), "{refused:?}");
    let paid = commands.reserve(&reserve("PL-1", "C", later, 1)).await.expect("a failed payment frees the window");

    // Confirm, then cancel before it starts: cancelled, refunded in full, window free.
    assert_eq!(commands.confirm(&paid.reservation).await.unwrap().status, ReservationStatus::Confirmed);
    assert_eq!(
        commands.confirm(&paid.reservation).await.unwrap().status,
        ReservationStatus::Confirmed,
        "confirming twice is harmless"
    );
    let cancelled = commands.cancel(&paid.reservation).await.unwrap();
    assert_eq!(cancelled.status, ReservationStatus::Cancelled);
    let state = commands.reservation(&paid.reservation).await.unwrap();
    assert_eq!((state.paid_cents, state.refunded_cents), (250, 250));
    let again = commands.cancel(&paid.reservation).await.unwrap();
    assert_eq!(again.status, ReservationStatus::Cancelled, "cancelling twice changes nothing");
    assert_eq!(commands.reservation(&paid.reservation).await.unwrap().refunded_cents, 250, "refunded once");
    let confirm_cancelled = commands.confirm(&paid.reservation).await;
    assert!(matches!(confirm_cancelled, Err(CommandError::Refused(_))), "{confirm_cancelled:?}");
    assert!(
        commands.reserve(&reserve("PL-1", "C", later, 1)).await.is_ok(),
        "a cancelled reservation frees its window"
    );

    // One that has started cannot be cancelled.
    let now = commands.reserve(&reserve("PL-1", "D", now_ms, 1)).await.unwrap();
    commands.confirm(&now.reservation).await.unwrap();
    let late = commands.cancel(&now.reservation).await;
    assert!(matches!(&late, Err(CommandError::Refused(why)) if why.contains("started")), "{late:?}");

    // A retried request (same reservation id) is the same reservation, stored once.
    let id = "retry-1".to_string();
    let command = ReserveCommand { reservation: Some(id.clone()), ..reserve("PL-1", "E", later, 4) };
    let first = commands.reserve(&command).await.unwrap();
    let head = events.head().await.unwrap();
    let second = commands.reserve(&command).await.unwrap();
    assert_eq!((first.reservation.as_str(), second.reservation.as_str()), (id.as_str(), id.as_str()));
    assert_eq!(events.head().await.unwrap(), head, "the retry stored nothing");

    // Bad input is refused and stores nothing.
    let head = events.head().await.unwrap();
    let cases = [
        reserve("PL-9", "A", later, 1),
        reserve("PL-1", "Z", later, 1),
        reserve("PL-1", "A", later, 2),
        reserve("PL-1", "A", now_ms - 10 * HOUR_MS, 1),
        reserve("bad name", "A", later, 1),
        reserve("PL-1", "A/../B", later, 1),
        ReserveCommand { reservation: Some("no spaces allowed".into()), ..reserve("PL-1", "A", later, 1) },
    ];
    for case in cases {
        let outcome = commands.reserve(&case).await;
        assert!(matches!(outcome, Err(CommandError::Invalid(_) | CommandError::NotFound(_))), "{case:?}: {outcome:?}");
    }
    let mut config = default_config("PL-1", "x");
    config.rental_hours = vec![0];
    assert!(matches!(commands.configure("PL-1", &config).await, Err(CommandError::Invalid(_))));
    assert!(matches!(commands.cancel("no-such").await, Err(CommandError::NotFound(_))));
    assert_eq!(events.head().await.unwrap(), head, "refused commands stored nothing");

    // Every event of a reservation carries its locker's tag, so the rule sees it.
    let page = events
        .read_query(
            &reel_core::Query::new(vec![
                reel_core::QueryItem::tags(["locker:PL-1/C"]).with_types([types::REFUND_ISSUED])
            ])
            .unwrap(),
            reel_core::Position(0),
            10,
        )
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1, "the refund is tagged with the locker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_never_reserves_a_locker_twice() {
    no_overlapping_reservations(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_never_reserves_a_locker_twice() {
    no_overlapping_reservations(TestStore::postgres("overlap")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cancel_and_confirm_rules() {
    cancel_and_confirm_rules(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cancel_and_confirm_rules() {
    cancel_and_confirm_rules(TestStore::postgres("rules")).await;
}
