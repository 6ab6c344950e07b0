//! Behaviour beyond the shared contract: several stores (servers) on one schema, a killed LISTEN
//! connection, schema versions.

use std::sync::Arc;
use std::time::Duration;

use reel_core::{AllReader, EventStore, ExpectedVersion, NewEvent, Position, ReadAllFilter, ReelError, StreamName};
use reel_postgres::PostgresStore;

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

async fn connect(schema: &str) -> PostgresStore {
    let url = database_url();
    PostgresStore::connect(&url, schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed for these tests: {e}"))
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await.expect("admin connection");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_schema_keep_one_gap_free_order_seen_by_a_follower() {
    let schema = fresh_schema();
    let a: Arc<dyn EventStore> = Arc::new(connect(&schema).await);
    let b: Arc<dyn EventStore> = Arc::new(connect(&schema).await);
    let follower_store = a.clone();
    let follower = tokio::spawn(async move {
        let mut watch = follower_store.watch_head();
        let mut reader = AllReader::new(follower_store.clone(), Position(1), ReadAllFilter::default(), 100);
        let mut seen = Vec::new();
        while seen.len() < 400 {
            match reader.next_page().await.unwrap() {
                Some(events) => seen.extend(events.into_iter().map(|e| e.position.0)),
                None => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        watch.wait_past(Position(reader.position().0 - 1)),
                    )
                    .await;
                }
            }
        }
        seen
    });
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .flat_map(|(s, store)| {
            (0..4).map(move |w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let stream = StreamName::new(format!("unit-{s}-{w}")).unwrap();
                    for _ in 0..50 {
                        store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
                    }
                })
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), follower).await.expect("follower finished").unwrap();
    assert_eq!(seen, (1..=400).collect::<Vec<_>>(), "every event once, in position order, across both servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listen_connection_reconnects_and_followers_still_wake() {
    let schema = fresh_schema();
    let follower = connect(&schema).await;
    let writer = connect(&schema).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = admin().await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("reel-listen-{schema}")],
        )
        .await
        .unwrap();
    assert!(!killed.is_empty(), "found the LISTEN connections to terminate");
    let mut watch = follower.watch_head();
    let stream = StreamName::new("unit-1").unwrap();
    writer.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(15), watch.wait_past(Position(0))).await;
    assert!(matches!(woke, Ok(Ok(Position(1)))), "the follower woke after the LISTEN connection was killed: {woke:?}");
}

#[tokio::test]
async fn a_schema_of_a_newer_version_and_bad_names_are_refused() {
    let schema = fresh_schema();
    drop(connect(&schema).await);
    let admin = admin().await;
    admin.execute(&format!("UPDATE {schema}.reel_schema SET version = 99"), &[]).await.unwrap();
    let err = PostgresStore::connect(&database_url(), &schema).await.err().expect("refused");
    assert!(matches!(err, ReelError::SchemaTooNew { found: 99, .. }), "{err:?}");
    assert!(PostgresStore::connect(&database_url(), "Bad-Name").await.is_err());
    let err = PostgresStore::connect("postgres://nobody@127.0.0.1:1/none", "x").await.err().expect("unreachable");
    assert!(err.to_string().contains("127.0.0.1:1"), "the error names the server: {err}");
}
