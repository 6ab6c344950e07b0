//! The write side against a remote server: a repository over `HttpStore` decides commands with
//! optimistic concurrency exactly as it does locally (the locker domain of the aggregate tests).

mod common;

#[path = "../../reel-aggregate/tests/locker_domain/mod.rs"]
mod locker_domain;

use std::sync::Arc;

use locker_domain::{Locker, LockerCommand, LockerError};
use reel_aggregate::{AggregateError, Repository};
use reel_core::EventStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_through_the_server_have_one_winner() {
    let running = common::serve().await;
    let store: Arc<dyn EventStore> = Arc::new(running.client.clone());
    let repository = Arc::new(Repository::<Locker>::new(store));
    repository.execute("PL-1001-07", LockerCommand::Register { unit: "PL-1001".into() }, 3).await.unwrap();
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let repository = repository.clone();
            tokio::spawn(async move {
                let command = LockerCommand::Reserve { reservation: format!("r{i}"), customer: format!("c{i}") };
                repository.execute("PL-1001-07", command, 10).await
            })
        })
        .collect();
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => won += 1,
            Err(AggregateError::Domain(LockerError::AlreadyReserved(_))) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(won, 1, "exactly one reservation wins");
    let loaded = repository.load("PL-1001-07").await.unwrap();
    assert!(loaded.state.reservation.is_some());
    assert_eq!(loaded.version.map(|v| v.0), Some(1), "registered and reserved: two events");
}
