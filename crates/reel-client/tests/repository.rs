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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_stored_byte_for_byte() {
    use reel_core::{Direction, ExpectedVersion, NewEvent, StreamName, StreamVersion};
    let running = common::serve().await;
    let stream = StreamName::new("unit-PL-1001").unwrap();
    let json = br#"{"zeta":1,"alpha":[1.50,2e3],"mid":"\u00e9"}"#.to_vec();
    let binary = vec![0u8, 159, 146, 150];
    let events = vec![NewEvent::new("Json", json.clone()), NewEvent::new("Binary", binary.clone())];
    running.client.append(&stream, ExpectedVersion::NoStream, events).await.unwrap();
    let read = running.client.read_stream(&stream, StreamVersion(0), Direction::Forward, 10).await.unwrap();
    assert_eq!(read[0].data, json, "key order, number spelling and escapes kept");
    assert_eq!(read[1].data, binary);
}
