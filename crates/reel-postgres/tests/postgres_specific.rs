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

/// Follows the log from the start in pages of `page`, woken by the head watch, until `count`
/// events were seen; returns their positions in the order read.
async fn follow_positions(store: Arc<dyn EventStore>, count: usize, page: usize) -> Vec<u64> {
    let mut watch = store.watch_head();
    let mut reader = AllReader::new(store.clone(), Position(1), ReadAllFilter::default(), page);
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        match reader.next_page().await.unwrap() {
            Some(events) => seen.extend(events.into_iter().map(|e| e.position.0)),
            None => {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), watch.wait_past(Position(reader.position().0 - 1)))
                        .await;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_schema_keep_one_gap_free_order_seen_by_a_follower() {
    let schema = fresh_schema();
    let a: Arc<dyn EventStore> = Arc::new(connect(&schema).await);
    let b: Arc<dyn EventStore> = Arc::new(connect(&schema).await);
    let follower_store = a.clone();
    let follower = tokio::spawn(follow_positions(follower_store, 400, 100));
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

/// 8 writers × 5,000 events (single and batched appends; a quarter of them with `Exact` to
/// shared streams, retried on conflicts) while 3 followers tail the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_and_three_followers_see_one_gap_free_order() {
    const WRITERS: u64 = 8;
    const EVENTS_PER_WRITER: u64 = 5_000;
    let schema = fresh_schema();
    let store: Arc<dyn EventStore> = Arc::new(connect(&schema).await);
    let total = WRITERS * EVENTS_PER_WRITER;
    let followers: Vec<_> =
        (0..3).map(|_| tokio::spawn(follow_positions(store.clone(), total as usize, 1000))).collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let own = StreamName::new(format!("own-{w}")).unwrap();
                let mut written = 0;
                let mut round = 0u64;
                while written < EVENTS_PER_WRITER {
                    round += 1;
                    if round.is_multiple_of(4) {
                        let shared = StreamName::new(format!("shared-{}", round % 3)).unwrap();
                        loop {
                            let expected = store
                                .stream_version(&shared)
                                .await
                                .unwrap()
                                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                            match store.append(&shared, expected, vec![NewEvent::new("Shared", "{}")]).await {
                                Ok(_) => break,
                                Err(ReelError::WrongExpectedVersion { .. }) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                        written += 1;
                    } else {
                        let n = (1 + round % 50).min(EVENTS_PER_WRITER - written);
                        let batch = (0..n).map(|_| NewEvent::new("Own", "{}")).collect();
                        store.append(&own, ExpectedVersion::Any, batch).await.unwrap();
                        written += n;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for follower in followers {
        let seen = tokio::time::timeout(Duration::from_secs(120), follower).await.expect("follower finished").unwrap();
        assert_eq!(seen.len() as u64, total);
        assert!(
            seen.iter().enumerate().all(|(i, p)| *p == i as u64 + 1),
            "a follower saw positions out of order or with a gap"
        );
    }
    assert_eq!(store.head().await.unwrap(), Position(total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_commits_its_rows_with_its_checkpoint() {
    use reel_core::{RunMode, Subscription, SubscriptionId, SubscriptionStore, Timestamp};
    let schema = fresh_schema();
    let store = connect(&schema).await;
    let subscriptions = store.subscription_store().await.unwrap();
    let admin = admin().await;
    admin.execute(&format!("CREATE TABLE {schema}.counts (n integer NOT NULL)"), &[]).await.unwrap();
    let mut s =
        Subscription::new(SubscriptionId::new("p_1").unwrap(), "projector", RunMode::FromBeginning, Timestamp::now());
    subscriptions.add(&s).await.unwrap();
    s.position = Position(10);
    let table = format!("{schema}.counts");
    let insert = format!("INSERT INTO {table} VALUES (1)");
    subscriptions
        .save_with(&mut s, None, Timestamp::now(), move |tx| {
            Box::pin(async move {
                tx.execute(insert.as_str(), &[]).await?;
                Ok(())
            })
        })
        .await
        .unwrap();
    s.position = Position(20);
    let insert = format!("INSERT INTO {table} VALUES (2)");
    let failed = subscriptions
        .save_with(&mut s, None, Timestamp::now(), move |tx| {
            Box::pin(async move {
                tx.execute(insert.as_str(), &[]).await?;
                Err("the projection refused the batch".into())
            })
        })
        .await;
    assert!(matches!(failed, Err(ReelError::SubscriptionFailed { .. })), "{failed:?}");
    let rows: i64 = admin.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(rows, 1, "the failed batch left no row");
    assert_eq!(subscriptions.get(&s.id).await.unwrap().unwrap().position, Position(10), "and no checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_during_append_is_an_error_and_the_retry_is_idempotent() {
    use reel_core::EventId;
    let schema = fresh_schema();
    let store = connect(&schema).await;
    let stream = StreamName::new("unit-1").unwrap();
    store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("First", "{}")]).await.unwrap();
    let admin = admin().await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("reel-writer-{schema}")],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let batch: Vec<NewEvent> =
        (0..3).map(|i| NewEvent::new("Tick", format!("{{\"i\":{i}}}")).with_id(EventId::new_v7())).collect();
    // The caller learns of the lost connection (or the writer already reconnected); either way a
    // retry with the same ids stores the batch exactly once.
    let first = store.append(&stream, ExpectedVersion::Exact(reel_core::StreamVersion(0)), batch.clone()).await;
    if let Err(e) = &first {
        assert!(matches!(e, ReelError::Storage { .. }), "{e:?}");
    }
    let retried =
        store.append(&stream, ExpectedVersion::Exact(reel_core::StreamVersion(0)), batch.clone()).await.unwrap();
    let again = store.append(&stream, ExpectedVersion::Exact(reel_core::StreamVersion(0)), batch).await.unwrap();
    assert_eq!(retried, again, "a retry returns the original result");
    assert_eq!(store.head().await.unwrap(), Position(4), "the batch is stored once");
}

#[tokio::test]
async fn snapshots_are_kept_per_stream_and_replaced() {
    use reel_core::{Snapshot, SnapshotStore, StreamVersion, Timestamp};
    let store = connect(&fresh_schema()).await;
    let stream = StreamName::new("locker-L1").unwrap();
    assert_eq!(store.load_snapshot(&stream).await.unwrap(), None);
    let first = Snapshot {
        stream: stream.clone(),
        version: StreamVersion(99),
        schema_version: 1,
        data: b"{}".to_vec(),
        taken_at: Timestamp::from_unix_micros(1),
    };
    store.save_snapshot(&first).await.unwrap();
    let second = Snapshot { version: StreamVersion(199), data: br#"{"n":2}"#.to_vec(), ..first.clone() };
    store.save_snapshot(&second).await.unwrap();
    assert_eq!(store.load_snapshot(&stream).await.unwrap(), Some(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_role_or_unreachable_server_is_a_clear_error_naming_the_url() {
    // Trust authentication here: an unknown role is what wrong credentials look like.
    let url = "postgres://no_such_role:secret@127.0.0.1:5432/test";
    let Err(e) = PostgresStore::connect(url, &fresh_schema()).await else { panic!("an unknown role connected") };
    let message = e.to_string();
    assert!(matches!(e, ReelError::Storage { .. }), "{e:?}");
    assert!(message.contains("no_such_role:***@127.0.0.1:5432/test"), "names the URL: {message}");
    assert!(!message.contains("secret"), "never shows the password: {message}");
    assert!(message.contains("role \"no_such_role\" does not exist"), "gives the server's reason: {message}");

    // A port nobody listens on.
    let url = "postgres://postgres@127.0.0.1:1/test";
    let Err(e) = PostgresStore::connect(url, &fresh_schema()).await else { panic!("connected to port 1") };
    let message = e.to_string();
    assert!(message.contains("127.0.0.1:1/test") && message.contains("refused"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_fails_the_append_changes_nothing_and_the_store_goes_on() {
    let schema = fresh_schema();
    let url = format!("{}?options=-c%20statement_timeout%3D300", database_url());
    let store = PostgresStore::connect(&url, &schema).await.expect("connect with a statement timeout");
    let stream = StreamName::new("unit-1").unwrap();
    store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("First", "{}")]).await.unwrap();

    // Another session holds the head lock longer than the timeout allows an append to wait.
    let mut admin = admin().await;
    let blocker = admin.transaction().await.unwrap();
    blocker.execute(&format!("SELECT position FROM {schema}.head FOR UPDATE"), &[]).await.unwrap();
    let started = std::time::Instant::now();
    let timed_out = store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Second", "{}")]).await;
    let Err(e) = timed_out else { panic!("the append waited past the statement timeout") };
    assert!(matches!(e, ReelError::Storage { .. }), "{e:?}");
    assert!(e.to_string().contains("statement timeout"), "says why: {e}");
    assert!(started.elapsed() < Duration::from_secs(10), "failed within the timeout, not after a hang");
    blocker.rollback().await.unwrap();

    assert_eq!(store.head().await.unwrap(), Position(1), "nothing of the timed-out append was stored");
    assert_eq!(store.stream_version(&stream).await.unwrap(), Some(reel_core::StreamVersion(0)));
    let next = store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Third", "{}")]).await.unwrap();
    assert_eq!(next.first_position, Position(2), "the next append goes on with no gap");
    let page = store.read_all(Position(1), &ReadAllFilter::default(), 10).await.unwrap();
    let types: Vec<&str> = page.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["First", "Third"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_is_copied_in_and_keeps_every_guarantee() {
    use reel_core::{AppendRequest, EventId, StreamVersion};
    let schema = fresh_schema();
    let store = connect(&schema).await;
    let existing = StreamName::new("unit-1").unwrap();
    store.append(&existing, ExpectedVersion::Any, vec![NewEvent::new("First", "{}")]).await.unwrap();
    let big: Vec<NewEvent> =
        (0..700).map(|i| NewEvent::new("Tick", format!("{{\"i\":{i}}}")).with_id(EventId::new_v7())).collect();
    let requests = vec![
        AppendRequest::new(StreamName::new("unit-new").unwrap(), ExpectedVersion::NoStream, big.clone()),
        AppendRequest::new(
            existing.clone(),
            ExpectedVersion::Exact(StreamVersion(0)),
            vec![NewEvent::new("Second", "{}")],
        ),
        AppendRequest::new(
            existing.clone(),
            ExpectedVersion::Exact(StreamVersion(0)),
            vec![NewEvent::new("Conflict", "{}")],
        ),
    ];
    // One append_many is one group: 701 events, over the COPY threshold.
    let results = store.append_many(requests).await;
    let first = results[0].clone().unwrap();
    assert_eq!((first.first_position, first.last_position), (Position(2), Position(701)));
    assert_eq!(results[1].clone().unwrap().first_position, Position(702));
    assert!(matches!(results[2], Err(ReelError::WrongExpectedVersion { .. })), "{:?}", results[2]);
    assert_eq!(store.head().await.unwrap(), Position(702));
    let page = store.read_all(Position(1), &ReadAllFilter::default(), 1000).await.unwrap();
    let positions: Vec<u64> = page.events.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (1..=702).collect::<Vec<_>>(), "gap-free, in order");
    assert_eq!(&page.events[700].data[..], br#"{"i":699}"#);
    // The big batch retried with the same ids is recognised and stored once.
    let again = store.append(&StreamName::new("unit-new").unwrap(), ExpectedVersion::NoStream, big).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(store.head().await.unwrap(), Position(702));
}

/// The one-call append decides on what its process remembers of a stream; another process
/// appending meanwhile must never make that memory win: conflicts, versions and retries come out
/// exactly as if every append had locked first (docs/DESIGN.md, invariants 2, 3 and 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_another_process_appended_to_is_decided_afresh() {
    let schema = fresh_schema();
    let a = connect(&schema).await;
    let b = connect(&schema).await;
    let stream = StreamName::new("unit-7").unwrap();
    let one = || vec![NewEvent::new("Opened", "{}")];
    a.append(&stream, ExpectedVersion::NoStream, one()).await.unwrap();
    a.append(&stream, ExpectedVersion::Exact(reel_core::StreamVersion(0)), one()).await.unwrap(); // a remembers v1
    b.append(&stream, ExpectedVersion::Exact(reel_core::StreamVersion(1)), one()).await.unwrap(); // now v2

    // a still remembers version 1: an append expecting 1 must be a conflict showing version 2.
    let err = a.append(&stream, ExpectedVersion::Exact(reel_core::StreamVersion(1)), one()).await.unwrap_err();
    assert!(
        matches!(&err, ReelError::WrongExpectedVersion { actual: Some(v), .. } if v.0 == 2),
        "a stale memory never wins: {err:?}"
    );
    let next = a.append(&stream, ExpectedVersion::Exact(reel_core::StreamVersion(2)), one()).await.unwrap();
    assert_eq!((next.first_position, next.next_version.0), (Position(4), 3));
    b.append(&stream, ExpectedVersion::Any, one()).await.unwrap(); // v4 by b
    let any = a.append(&stream, ExpectedVersion::Any, one()).await.unwrap();
    assert_eq!((any.first_position, any.next_version.0), (Position(6), 5), "Any lands after b's event");

    // A retry with ids whose original went through the other process is recognised.
    let id = reel_core::EventId::new_v7();
    let with_id = || vec![NewEvent::new("Closed", "{}").with_id(id)];
    let original = b.append(&stream, ExpectedVersion::Any, with_id()).await.unwrap();
    let retried = a.append(&stream, ExpectedVersion::Any, with_id()).await.unwrap();
    assert_eq!(retried, original, "the retry returns the original result and stores nothing");
    // A new stream created by one process, then appended to by the other as NoStream: conflict.
    let fresh = StreamName::new("unit-8").unwrap();
    b.append(&fresh, ExpectedVersion::NoStream, one()).await.unwrap();
    assert!(matches!(
        a.append(&fresh, ExpectedVersion::NoStream, one()).await,
        Err(ReelError::WrongExpectedVersion { .. })
    ));
    let all = a.read_all(Position(1), &ReadAllFilter::default(), 100).await.unwrap().events;
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (1..=8).collect::<Vec<_>>(), "gap-free, nothing twice");
}

/// The durable head every barrier connection has recorded (what readers may see).
/// The durable head as readers take it: the highest barrier row, or what a durable commit
/// recorded in the head row.
async fn durable_head(admin: &tokio_postgres::Client, schema: &str) -> u64 {
    let sql = format!(
        "SELECT greatest(coalesce(max(d.position), 0), (SELECT h.durable FROM {schema}.head h))
         FROM {schema}.durable_head d"
    );
    let row = admin.query_one(&sql, &[]).await.unwrap();
    row.get::<_, i64>(0) as u64
}

/// Invariant 5 with the head lock released before the flush: an append is answered only after a
/// barrier recorded a durable head at or past it, from one process or many, on the one-call path
/// and the careful one (conflicts, retries with ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_append_is_covered_by_the_durable_head() {
    use reel_core::{EventId, StreamVersion};
    let schema = fresh_schema();
    let stores: Vec<PostgresStore> = futures_util::future::join_all((0..4).map(|_| connect(&schema))).await;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (store, schema) = (stores[w % stores.len()].clone(), schema.clone());
            tokio::spawn(async move {
                let checker = admin().await;
                let own = StreamName::new(format!("unit-{w}")).unwrap();
                let shared = StreamName::new(format!("order-{}", w % 2)).unwrap();
                for i in 0..40u64 {
                    let result = if i % 4 == 3 {
                        // A retry with ids: the original, then the same append again (careful path).
                        let batch = vec![NewEvent::new("Paid", "{}").with_id(EventId::new_v7())];
                        let original = store.append(&shared, ExpectedVersion::Any, batch.clone()).await.unwrap();
                        let retried = store.append(&shared, ExpectedVersion::Any, batch).await.unwrap();
                        assert_eq!(original, retried);
                        retried
                    } else {
                        let expected = if i == 0 {
                            ExpectedVersion::NoStream
                        } else {
                            ExpectedVersion::Exact(StreamVersion(i - 1 - i / 4))
                        };
                        store.append(&own, expected, vec![NewEvent::new("Tick", "{}")]).await.unwrap()
                    };
                    let durable = durable_head(&checker, &schema).await;
                    assert!(
                        durable >= result.last_position.0,
                        "acknowledged position {} while the durable head was {durable}",
                        result.last_position
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let head = stores[0].head().await.unwrap();
    assert_eq!(head.0, 16 * 40, "every append stored once");
}

/// A writer that dies between its commit and its barrier leaves events committed but not
/// confirmed. Nobody reads them before a barrier covers them, and the listener's fallback poll
/// runs that barrier, so followers still get them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_without_a_barrier_stay_invisible_until_one_covers_them() {
    let schema = fresh_schema();
    let store = connect(&schema).await;
    let stream = StreamName::new("unit-1").unwrap();
    store.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::new("Opened", "{}")]).await.unwrap();
    let admin = admin().await;
    // The listener's fallback poll (after a second without news) may confirm the orphan before
    // the reads below ran; then they prove nothing, and the scenario is played again one
    // position further (a loaded machine can take that second; three tries make losing it every
    // time unlikely).
    let mut checked = false;
    for attempt in 0..3u64 {
        let orphan_position = 2 + attempt;
        let visible = Position(orphan_position - 1);
        let mut watch = store.watch_head();
        let name = format!("unit-orphan-{attempt}");
        // What a writer does up to its commit, without the barrier after it.
        admin
            .batch_execute(&format!(
                "BEGIN;
                 SET LOCAL synchronous_commit TO off;
                 SELECT position FROM {schema}.head FOR UPDATE;
                 INSERT INTO {schema}.streams (name, category, version) VALUES ('{name}', 'unit', 0);
                 INSERT INTO {schema}.events (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at)
                   SELECT {orphan_position}, stream_id, 0, gen_random_uuid(), 'Orphan', '\\x7b7d', NULL, 0
                   FROM {schema}.streams WHERE name = '{name}';
                 UPDATE {schema}.head SET position = {orphan_position};
                 COMMIT;"
            ))
            .await
            .unwrap();
        let orphan = StreamName::new(name.as_str()).unwrap();
        let all = store.read_all(Position(1), &ReadAllFilter::default(), 10).await.unwrap();
        let filtered = store
            .read_all(Position(1), &ReadAllFilter { event_types: vec!["Orphan".into()], ..Default::default() }, 10)
            .await
            .unwrap();
        let in_stream =
            store.read_stream(&orphan, reel_core::StreamVersion(0), reel_core::Direction::Forward, 10).await;
        let version = store.stream_version(&orphan).await.unwrap();
        let head = store.head().await.unwrap();
        // The reads are only held to invisibility when no barrier had covered the orphan.
        if durable_head(&admin, &schema).await < orphan_position {
            let positions: Vec<u64> = all.events.iter().map(|e| e.position.0).collect();
            assert_eq!(positions, (1..orphan_position).collect::<Vec<_>>(), "unconfirmed event read");
            assert!(
                filtered.events.iter().all(|e| e.position.0 < orphan_position),
                "a filtered read passed the durable head"
            );
            assert!(in_stream.map_or(true, |events| events.is_empty()), "read_stream showed an unconfirmed event");
            assert_eq!(version, None, "stream_version counted an unconfirmed event");
            assert_eq!(head, visible);
            checked = true;
        }
        // The fallback poll notices the head ahead of the durable head and confirms it.
        let woke = tokio::time::timeout(Duration::from_secs(10), watch.wait_past(visible)).await;
        assert!(
            matches!(woke, Ok(Ok(p)) if p == Position(orphan_position)),
            "followers were woken for the confirmed event: {woke:?}"
        );
        let all = store.read_all(Position(1), &ReadAllFilter::default(), 10).await.unwrap();
        assert_eq!(all.events.last().map(|e| (e.position.0, e.event_type.as_str())), Some((orphan_position, "Orphan")));
        assert!(durable_head(&admin, &schema).await >= orphan_position);
        if checked {
            break;
        }
    }
    assert!(checked, "a barrier covered the orphan before the reads could be checked, three times");
}

/// Barrier rows of closed connections are swept when a writer connects, except the highest, so
/// the table stays as small as the number of live writers and the durable head never moves back.
#[tokio::test]
async fn barrier_rows_of_closed_connections_are_swept_and_the_durable_head_never_moves_back() {
    let schema = fresh_schema();
    let admin = admin().await;
    let stream = StreamName::new("unit-1").unwrap();
    let first = connect(&schema).await;
    first.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
    let second = connect(&schema).await;
    // With a condition, so that the second writer appends (and confirms) itself instead of
    // handing its group to the first, which leads the schema's appends (forwarding.rs).
    let nothing_matches = reel_core::AppendCondition::new(
        reel_core::Query::new(vec![reel_core::QueryItem::tags(["nothing-has-this-tag"])]).unwrap(),
    );
    second.append_if(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")], nothing_matches).await.unwrap();
    drop(first);
    let writers = format!("reel-writer-{schema}");
    let count_writers = || async {
        let row = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&writers])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    for _ in 0..100 {
        if count_writers().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count_writers().await, 1, "the first store's writer connection closed");
    let rows_before: i64 =
        admin.query_one(&format!("SELECT count(*) FROM {schema}.durable_head"), &[]).await.unwrap().get(0);
    let third = connect(&schema).await;
    // The sweep runs when the third store's writer starts; an append makes sure it has.
    third.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
    let stale: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {schema}.durable_head
                 WHERE connection_pid <> ALL (SELECT pid FROM pg_stat_activity)
                   AND position < (SELECT max(position) FROM {schema}.durable_head)"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(rows_before >= 2, "both writers' rows were there: {rows_before}");
    assert_eq!(stale, 0, "rows of closed connections below the durable head were swept");
    assert_eq!(durable_head(&admin, &schema).await, 3, "the durable head is where the log ends");
    assert_eq!(second.head().await.unwrap(), Position(3));
}

/// A schema written before the durable head existed (version 5, every commit flushed) is
/// migrated with its whole log readable, and appends go on after it.
#[tokio::test]
async fn a_schema_from_before_the_durable_head_migrates_with_its_log_visible() {
    let schema = fresh_schema();
    let stream = StreamName::new("unit-1").unwrap();
    let store = connect(&schema).await;
    for _ in 0..3 {
        store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
    }
    drop(store);
    let admin = admin().await;
    admin
        .batch_execute(&format!(
            "DROP TABLE {schema}.durable_head; DROP FUNCTION {schema}.append_group_v2;
             DROP FUNCTION {schema}.append_group_v3;
             ALTER TABLE {schema}.subscriptions DROP COLUMN warning_message, DROP COLUMN warning_at;
             DROP TABLE {schema}.devices; DROP TABLE {schema}.work_leases;
             DROP FUNCTION {schema}.append_group_v4; DROP FUNCTION {schema}.condition_matches;
             DROP TABLE {schema}.event_tags;
             ALTER TABLE {schema}.events DROP COLUMN tags;
             DROP FUNCTION {schema}.append_group_v5; ALTER TABLE {schema}.head DROP COLUMN durable;
             DROP FUNCTION {schema}.await_append; DROP FUNCTION {schema}.resign;
             DROP FUNCTION {schema}.next_round; DROP FUNCTION {schema}.try_lead;
             DROP FUNCTION {schema}.append_lock; DROP SEQUENCE {schema}.append_rounds;
             DROP TABLE {schema}.append_queue;
             UPDATE {schema}.reel_schema SET version = 5;"
        ))
        .await
        .unwrap();
    let store = connect(&schema).await;
    assert_eq!(store.head().await.unwrap(), Position(3), "the migrated log is durable as it stands");
    let next = store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
    assert_eq!(next.first_position, Position(4));
    let all = store.read_all(Position(1), &ReadAllFilter::default(), 10).await.unwrap();
    assert_eq!(all.events.len(), 4);
}

/// A connection listening on the schema's head channel, named `application_name`, and the
/// payloads it receives.
async fn listen_on_head_channel(
    schema: &str,
    application_name: &str,
) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures_util::StreamExt;
    let mut config: tokio_postgres::Config = database_url().parse().unwrap();
    config.application_name(application_name);
    let (listener, mut connection) = config.connect(tokio_postgres::NoTls).await.expect("listening connection");
    let (payloads, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = payloads.send(n.payload().to_string());
            }
        }
    });
    listener.batch_execute(&format!("LISTEN reel_head_{schema}")).await.unwrap();
    (listener, received)
}

/// Invariant 7 across processes: what a writer confirmed is announced on the schema's channel
/// (by its store's listening connection), with a durable position, so other servers wake without
/// waiting for their fallback poll (which announces nothing unless a writer stalled). The test's
/// connection plays another server's listener, and is named as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_appends_are_announced_with_the_durable_head() {
    let schema = fresh_schema();
    let store = connect(&schema).await;
    let (_listener, mut received) = listen_on_head_channel(&schema, &format!("reel-listen-{schema}")).await;
    let stream = StreamName::new("unit-1").unwrap();
    let appended = store.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::new("Opened", "{}")]).await.unwrap();
    let announced = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(payload) = received.recv().await {
            let position: u64 = payload.parse().expect("the payload is a position");
            if position >= appended.last_position.0 {
                return Some(position);
            }
        }
        None
    })
    .await;
    assert_eq!(announced, Ok(Some(1)), "the append was announced with its durable position");
    assert!(durable_head(&admin().await, &schema).await >= 1, "what was announced is durable");
}

/// A server whose listener is the only one on the schema announces nothing (its own followers
/// learn the head from its writer); once another server listens, its appends are announced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_announced_only_while_another_server_listens() {
    let schema = fresh_schema();
    let store = connect(&schema).await;
    // Hears the channel without counting as a server's listener.
    let (_eavesdropper, mut received) = listen_on_head_channel(&schema, "reel-test-eavesdropper").await;
    let stream = StreamName::new("unit-1").unwrap();
    let mut follower = store.watch_head();
    for _ in 0..50 {
        let appended = store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
        let woke =
            tokio::time::timeout(Duration::from_secs(10), follower.wait_past(Position(appended.last_position.0 - 1)))
                .await
                .expect("the store's own follower is woken");
        assert!(woke.unwrap() >= appended.last_position);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut heard = Vec::new();
    while let Ok(payload) = received.try_recv() {
        heard.push(payload);
    }
    assert!(heard.is_empty(), "announced with nobody else listening: {heard:?}");

    // Another server starts; once its listener is connected, the first server's appends reach it.
    let other = connect(&schema).await;
    let listening = format!("reel-listen-{schema}");
    let admin = admin().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let row = admin
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&listening])
                .await
                .unwrap();
            if row.get::<_, i64>(0) >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the second server's listener connects");
    let announced = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let appended =
                store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            while let Ok(payload) = received.try_recv() {
                if payload.parse::<u64>().expect("the payload is a position") >= appended.last_position.0 {
                    return appended.last_position;
                }
            }
        }
    })
    .await
    .expect("appends are announced once another server listens");
    assert!(announced.0 > 50);
    let mut other_follower = other.watch_head();
    let woke = tokio::time::timeout(Duration::from_secs(10), other_follower.wait_past(Position(announced.0 - 1)))
        .await
        .expect("the other server's follower is woken");
    assert!(woke.unwrap() >= announced);
}

/// Appenders lock a group's streams (by id) before the head, on the one-call path and the careful
/// path alike, so processes appending to the same streams by both paths never deadlock
/// (PostgreSQL would break a deadlock by failing one of them, and `deadlocks` would count it).
/// Four stores × six tasks append to six shared streams with `Any` (one call), retried ids and
/// stale `Exact` versions (the careful path), and race to create the same new streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_appending_to_shared_streams_by_both_paths_never_deadlock() {
    const STORES: usize = 4;
    const TASKS: usize = 6;
    const ROUNDS: usize = 60;
    let schema = fresh_schema();
    let admin = admin().await;
    let deadlocks = || async {
        let row = admin
            .query_one("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let deadlocks_before = deadlocks().await;
    let mut stores = Vec::new();
    for _ in 0..STORES {
        stores.push(Arc::new(connect(&schema).await));
    }
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut stored = 0u64;
                for i in 0..ROUNDS {
                    let shared = StreamName::new(format!("lock-{}", (s + t + i) % 6)).unwrap();
                    let one = || vec![NewEvent::new("Step", "{}")];
                    match i % 3 {
                        0 => {
                            store.append(&shared, ExpectedVersion::Any, one()).await.unwrap();
                            stored += 1;
                        }
                        1 => {
                            let id = reel_core::EventId::new_v7();
                            let with_id = || vec![NewEvent::new("Step", "{}").with_id(id)];
                            let first = store.append(&shared, ExpectedVersion::Any, with_id()).await.unwrap();
                            let retry = store.append(&shared, ExpectedVersion::Any, with_id()).await.unwrap();
                            assert_eq!(first, retry, "a retry returns the original result");
                            stored += 1;
                        }
                        _ => {
                            let seen = store.stream_version(&shared).await.unwrap();
                            let expected = seen.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                            match store.append(&shared, expected, one()).await {
                                Ok(_) => stored += 1,
                                Err(ReelError::WrongExpectedVersion { .. }) => {}
                                Err(e) => panic!("append to {shared} failed: {e}"),
                            }
                        }
                    }
                    if i % 10 == 0 {
                        // Every store's tasks race to create the same stream.
                        let fresh = StreamName::new(format!("fresh-{i}")).unwrap();
                        match store.append(&fresh, ExpectedVersion::NoStream, one()).await {
                            Ok(_) => stored += 1,
                            Err(ReelError::WrongExpectedVersion { .. }) => {}
                            Err(e) => panic!("creating {fresh} failed: {e}"),
                        }
                    }
                }
                stored
            }));
        }
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap();
    }
    let store = &stores[0];
    assert_eq!(store.head().await.unwrap(), Position(stored), "every acknowledged event is in the log once");
    let all = store.read_all(Position(1), &ReadAllFilter::default(), 100_000).await.unwrap().events;
    assert!(all.iter().enumerate().all(|(i, e)| e.position.0 == i as u64 + 1), "gap-free positions");
    let mut versions: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for event in &all {
        let next = versions.entry(event.stream.to_string()).or_insert(0);
        assert_eq!(event.stream_version.0, *next, "{}'s versions follow its positions", event.stream);
        *next += 1;
    }
    for i in (0..ROUNDS).step_by(10) {
        assert_eq!(versions.get(&format!("fresh-{i}")), Some(&1), "exactly one creator of fresh-{i} won");
    }
    // Statistics reach pg_stat_database within a second of a backend's last transaction.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(deadlocks().await, deadlocks_before, "no deadlock was detected (and broken) meanwhile");
}

/// Invariant 5 for a writer alone on the schema: after a second without anyone else's events
/// its calls commit durably and record the durable head themselves (no barrier). Each answer is
/// still covered by the durable head, and another server reads the events at once; when another
/// server appends in between, the next answer is covered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_alone_for_a_second_still_answers_only_what_is_durable() {
    let schema = fresh_schema();
    let admin = admin().await;
    let alone = connect(&schema).await;
    let other = connect(&schema).await;
    let stream = StreamName::new("unit-1").unwrap();
    let tick = || vec![NewEvent::new("Tick", "{}")];
    alone.append(&stream, ExpectedVersion::Any, tick()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for _ in 0..3 {
        let result = alone.append(&stream, ExpectedVersion::Any, tick()).await.unwrap();
        assert!(durable_head(&admin, &schema).await >= result.last_position.0, "answered before it was durable");
        assert!(other.head().await.unwrap() >= result.last_position, "another server reads it at once");
    }
    other.append(&StreamName::new("unit-2").unwrap(), ExpectedVersion::Any, tick()).await.unwrap();
    let result = alone.append(&stream, ExpectedVersion::Any, tick()).await.unwrap();
    assert_eq!(result.first_position, Position(6), "after the other server's event");
    assert!(durable_head(&admin, &schema).await >= 6);
}

fn with_id(event_type: &str) -> NewEvent {
    NewEvent::new(event_type, "{}").with_id(reel_core::EventId::new_v7())
}

/// A writer remembers a stream's recent ids after an append with ids and decides the next one
/// from memory; what another server appended in between is still seen: a retry of its append
/// through this one is recognised, not stored twice. So is a retry of this writer's own earlier
/// append, decided from the remembered window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_recognised_after_another_server_appended_to_the_stream() {
    let schema = fresh_schema();
    let a = connect(&schema).await;
    let b = connect(&schema).await;
    let s = StreamName::new("device-1").unwrap();
    let first = vec![with_id("First"), with_id("First")];
    let first_result = a.append(&s, ExpectedVersion::Any, first.clone()).await.unwrap();
    for _ in 0..3 {
        a.append(&s, ExpectedVersion::Any, vec![with_id("Next")]).await.unwrap();
    }
    assert_eq!(a.append(&s, ExpectedVersion::Any, first).await.unwrap(), first_result, "a's own retry");
    let other = vec![with_id("FromB"), with_id("FromB")];
    let other_result = b.append(&s, ExpectedVersion::Any, other.clone()).await.unwrap();
    assert_eq!(a.append(&s, ExpectedVersion::Any, other).await.unwrap(), other_result, "b's append through a");
    a.append(&s, ExpectedVersion::Any, vec![with_id("Last")]).await.unwrap();
    assert_eq!(a.head().await.unwrap(), Position(8), "each event stored once");
}

/// The remembered window is exactly the stream's latest 1,000 events: after 1,000 later events
/// the first one's id is no longer among them (a repeat is a new event, as documented), while
/// the second's still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remembered_id_window_moves_exactly_with_the_stream_on_postgres() {
    let schema = fresh_schema();
    let store = connect(&schema).await;
    let s = StreamName::new("device-2").unwrap();
    let first = vec![with_id("First")];
    let second = vec![with_id("Second")];
    store.append(&s, ExpectedVersion::Any, first.clone()).await.unwrap();
    let second_result = store.append(&s, ExpectedVersion::Any, second.clone()).await.unwrap();
    let mut written = 0u64;
    let mut size = 0u64;
    while written < 999 {
        size = size % 7 + 1;
        let n = size.min(999 - written);
        let batch: Vec<NewEvent> =
            (0..n).map(|i| if i % 3 == 2 { NewEvent::new("Plain", "{}") } else { with_id("Filler") }).collect();
        store.append(&s, ExpectedVersion::Any, batch).await.unwrap();
        written += n;
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(reel_core::StreamVersion(1000)));
    assert_eq!(store.append(&s, ExpectedVersion::Any, second).await.unwrap(), second_result, "version 1 is inside");
    let again = store.append(&s, ExpectedVersion::Any, first).await.unwrap();
    assert_eq!(again.first_position, Position(1002), "version 0 fell out of the window");
}

/// A query item is read through the tag index (keyed by tag then position): no sequential scan
/// of the events or of the index table, on tables large enough for the planner to choose. (When
/// it expects a handful of rows it may sort those few; a tag on many events is read in index
/// order, which the LIMIT makes cheapest.)
#[tokio::test]
async fn query_items_are_read_through_the_tag_index() {
    use reel_core::{AppendRequest, Query, QueryItem};
    let schema = fresh_schema();
    let store = connect(&schema).await;
    for batch in 0..10 {
        let requests = (0..10)
            .map(|s| {
                let events = (0..200)
                    .map(|i| {
                        let n = batch * 2_000 + s * 200 + i;
                        NewEvent::new(if n % 2 == 0 { "Reserved" } else { "Released" }, "{}")
                            .with_tags([format!("locker:{}", n % 500), format!("customer:{}", n % 37)])
                    })
                    .collect();
                AppendRequest::new(StreamName::new(format!("locker-{s}")).unwrap(), ExpectedVersion::Any, events)
            })
            .collect();
        for result in store.append_many(requests).await {
            result.unwrap();
        }
    }
    let admin = admin().await;
    admin.batch_execute(&format!("ANALYZE {schema}.events; ANALYZE {schema}.event_tags;")).await.unwrap();
    let query = Query::new(vec![QueryItem::tags(["locker:7", "customer:7"]).with_types(["Released"])]).unwrap();
    let page = store.read_query(&query, Position(0), 100).await.unwrap();
    assert!(!page.events.is_empty(), "the query finds its events");
    assert!(page.events.iter().all(|e| query.matches_event(e)));
    let text = store.explain_query(&query).await.unwrap();
    assert!(text.contains("event_tags_pkey"), "through the tag index:\n{text}");
    assert!(!text.contains("Seq Scan"), "no sequential scan:\n{text}");
}

/// Invariant 23 across processes: a conditional append by one server is refused when another
/// server committed a matching event after the condition's position, on whichever path the
/// writer takes (its streams are remembered, so it tries the one-call path first), and 16
/// servers racing on one tag commit exactly one append.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditions_hold_across_servers_on_one_schema() {
    use reel_core::{AppendCondition, Query, QueryItem};
    let schema = fresh_schema();
    let a = connect(&schema).await;
    let b = connect(&schema).await;
    let mine = StreamName::new("claim-b").unwrap();
    b.append(&mine, ExpectedVersion::Any, vec![NewEvent::new("Warm", "{}")]).await.unwrap();
    let head = b.head().await.unwrap();
    let query = Query::new(vec![QueryItem::tags(["seat:1"])]).unwrap();
    a.append(
        &StreamName::new("claim-a").unwrap(),
        ExpectedVersion::Any,
        vec![NewEvent::new("Claimed", "{}").with_tags(["seat:1"])],
    )
    .await
    .unwrap();
    let refused = b
        .append_if(
            &mine,
            ExpectedVersion::Any,
            vec![NewEvent::new("Claimed", "{}").with_tags(["seat:1"])],
            AppendCondition::new(query.clone()).after(head),
        )
        .await;
    assert!(matches!(refused, Err(ReelError::ConditionFailed { position: Position(2), .. })), "{refused:?}");
    let other = Query::new(vec![QueryItem::tags(["seat:2"])]).unwrap();
    let head = b.head().await.unwrap();
    b.append_if(
        &mine,
        ExpectedVersion::Any,
        vec![NewEvent::new("Claimed", "{}").with_tags(["seat:2"])],
        AppendCondition::new(other).after(head),
    )
    .await
    .unwrap();

    let mut servers = Vec::new();
    for _ in 0..16 {
        servers.push(Arc::new(connect(&schema).await));
    }
    let head = a.head().await.unwrap();
    let race = Query::new(vec![QueryItem::tags(["seat:3"])]).unwrap();
    let tasks: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let (store, race) = (store.clone(), race.clone());
            tokio::spawn(async move {
                let stream = StreamName::new(format!("racer-{i}")).unwrap();
                let event = NewEvent::new("Claimed", "{}").with_tags(["seat:3"]);
                store
                    .append_if(&stream, ExpectedVersion::Any, vec![event], AppendCondition::new(race).after(head))
                    .await
            })
        })
        .collect();
    let mut committed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => committed += 1,
            Err(ReelError::ConditionFailed { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(committed, 1, "one of 16 servers racing on one tag commits");
}

/// How many reader connections of `schema` are open.
async fn reader_connections(admin: &tokio_postgres::Client, schema: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("reel-reader-{schema}")],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_waits_does_not_hold_up_other_reads() {
    let schema = fresh_schema();
    let store = connect(&schema).await;
    let stream = StreamName::new("unit-1").unwrap();
    store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("First", "{}")]).await.unwrap();
    let admin_client = admin().await;
    for _ in 0..20 {
        store.streams(None, None, 10).await.unwrap();
    }
    assert_eq!(reader_connections(&admin_client, &schema).await, 1, "reads one at a time share one connection");

    // Another session keeps the log locked: a read of it waits until the lock is released.
    let mut locker = admin().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(&format!("LOCK TABLE {schema}.events IN ACCESS EXCLUSIVE MODE")).await.unwrap();
    let waiting_store = store.clone();
    let waiting = tokio::spawn(async move { waiting_store.read_all(Position(1), &ReadAllFilter::default(), 10).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the read of the locked log waits");

    // Reads of other tables are answered meanwhile, on a connection of their own.
    let streams = tokio::time::timeout(Duration::from_secs(30), store.streams(None, None, 10))
        .await
        .expect("a read queued behind the waiting one");
    assert_eq!(streams.unwrap().len(), 1);
    let connections = reader_connections(&admin_client, &schema).await;
    assert!((2..=4).contains(&connections), "{connections} reader connections");

    lock.rollback().await.unwrap();
    let page = waiting.await.unwrap().unwrap();
    assert_eq!(page.events.len(), 1, "the waiting read completes once the lock is gone");
}

/// A follower's queued row (the group itself does not matter here) and its wait, which runs on
/// until the wait ends: (status, answer).
async fn queue_and_wait(
    follower: Arc<tokio_postgres::Client>,
    schema: String,
    id: uuid::Uuid,
) -> tokio::task::JoinHandle<(i16, Option<Vec<u8>>)> {
    follower
        .execute(&format!("INSERT INTO {schema}.append_queue (id, request) VALUES ($1, 'group')"), &[&id])
        .await
        .unwrap();
    tokio::spawn(async move {
        let row = follower
            .query_one(&format!("SELECT status, answer FROM {schema}.await_append($1, 300)"), &[&id])
            .await
            .unwrap();
        (row.get::<_, i16>(0), row.get::<_, Option<Vec<u8>>>(1))
    })
}

/// The forwarding protocol (migration 12, forwarding.rs) at the level of its SQL: a follower's
/// row that no leader takes is handed back; a follower waits until the round that took its row
/// has ended and then gets the answer; a leader that vanishes after taking a row leaves its
/// outcome unknown instead of letting the follower append it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_wait_ends_with_its_answer_or_says_why_there_is_none() {
    let schema = fresh_schema();
    drop(connect(&schema).await);
    let follower = Arc::new(admin().await);
    let enqueue = |id: uuid::Uuid| queue_and_wait(follower.clone(), schema.clone(), id);
    let rows = |id: uuid::Uuid| {
        let follower = follower.clone();
        let schema = schema.clone();
        async move {
            follower
                .query_one(&format!("SELECT count(*) FROM {schema}.append_queue WHERE id = $1"), &[&id])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };

    // Nobody leads: handed back at once, and the row is gone (nobody can take it later).
    let alone = uuid::Uuid::new_v4();
    assert_eq!(enqueue(alone).await.await.unwrap(), (1, None));
    assert_eq!(rows(alone).await, 0);

    // A leader takes the row in its round and answers; the follower waits for the round's end.
    let leader = admin().await;
    let round: i64 = leader.query_one(&format!("SELECT {schema}.try_lead()"), &[]).await.unwrap().get(0);
    let answered = uuid::Uuid::new_v4();
    let waiting = enqueue(answered).await;
    let taken = leader
        .query(&format!("UPDATE {schema}.append_queue SET taken = true WHERE NOT taken RETURNING id"), &[])
        .await
        .unwrap();
    assert_eq!(taken.iter().map(|r| r.get::<_, uuid::Uuid>(0)).collect::<Vec<_>>(), vec![answered]);
    leader
        .execute(&format!("UPDATE {schema}.append_queue SET answer = 'done' WHERE id = $1"), &[&answered])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the answer is not read before the round that took it has ended");
    let next: i64 = leader.query_one(&format!("SELECT {schema}.next_round($1)"), &[&round]).await.unwrap().get(0);
    assert_eq!(next, round + 1);
    let (status, answer) = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert_eq!((status, answer.as_deref()), (0, Some(&b"done"[..])));
    assert_eq!(rows(answered).await, 0, "the follower removed its answered row");

    // A second process cannot lead meanwhile.
    let other = admin().await;
    let refused: Option<i64> = other.query_one(&format!("SELECT {schema}.try_lead()"), &[]).await.unwrap().get(0);
    assert_eq!(refused, None);

    // The leader takes a row and vanishes before answering: the outcome is unknown.
    let orphan = uuid::Uuid::new_v4();
    let waiting = enqueue(orphan).await;
    leader.execute(&format!("UPDATE {schema}.append_queue SET taken = true WHERE id = $1"), &[&orphan]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the follower waits while its leader lives");
    drop(leader);
    let (status, answer) = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert_eq!((status, answer), (2, None), "taken and never answered: not handed back");
    assert_eq!(rows(orphan).await, 0);

    // With the leader gone, the other process may lead.
    let round: Option<i64> = other.query_one(&format!("SELECT {schema}.try_lead()"), &[]).await.unwrap().get(0);
    assert!(round.is_some_and(|r| r > next), "a new leader numbers its rounds after the old ones: {round:?}");

    // A leader that stalls (its process stopped, say) without taking the row: after the
    // patience (300 ms here) the follower gets its row back to append it itself.
    let stalled = uuid::Uuid::new_v4();
    let started = std::time::Instant::now();
    let (status, answer) = enqueue(stalled).await.await.unwrap();
    assert_eq!((status, answer), (3, None));
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited out its patience first");
    assert_eq!(rows(stalled).await, 0, "handed back, so no leader can take it later");

    // A row the stalled leader did take is being written: the follower keeps waiting past its
    // patience, and gets the answer once the round ends.
    let slow = uuid::Uuid::new_v4();
    let waiting = enqueue(slow).await;
    other.execute(&format!("UPDATE {schema}.append_queue SET taken = true WHERE id = $1"), &[&slow]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiting.is_finished(), "a taken row is waited for beyond the patience");
    other.execute(&format!("UPDATE {schema}.append_queue SET answer = 'late' WHERE id = $1"), &[&slow]).await.unwrap();
    let round = round.unwrap();
    other.query_one(&format!("SELECT {schema}.next_round($1)"), &[&round]).await.unwrap();
    let (status, answer) = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert_eq!((status, answer.as_deref()), (0, Some(&b"late"[..])));
}

/// Groups handed to the leading writer (forwarding.rs) keep every promise of a direct append:
/// four servers append concurrently with exact expected versions and their own event ids, each
/// append sent twice (a retry). Each retry gets its original's answer, every expected version
/// holds, and the log holds each event once, at gap-free positions, in each stream's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handed_on_groups_keep_versions_retries_and_a_gap_free_order() {
    let schema = fresh_schema();
    let mut stores: Vec<Arc<dyn EventStore>> = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(connect(&schema).await));
    }
    let writers: Vec<_> = stores
        .iter()
        .enumerate()
        .flat_map(|(s, store)| {
            (0..4).map(move |w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let stream = StreamName::new(format!("unit-{s}-{w}")).unwrap();
                    let mut expected = ExpectedVersion::NoStream;
                    let mut answers = Vec::new();
                    for _ in 0..40 {
                        let events = vec![
                            NewEvent::new("Tick", "{}").with_id(reel_core::EventId::new_v7()),
                            NewEvent::new("Tock", "{}").with_id(reel_core::EventId::new_v7()),
                        ];
                        let first = store.append(&stream, expected, events.clone()).await.unwrap();
                        let retry = store.append(&stream, expected, events).await.unwrap();
                        assert_eq!(first, retry, "a retry is answered as its original");
                        expected = ExpectedVersion::Exact(first.next_version);
                        answers.push(first);
                    }
                    (stream, answers)
                })
            })
        })
        .collect();
    let mut answered = Vec::new();
    for writer in writers {
        answered.push(writer.await.unwrap());
    }
    let everything = stores[0].read_all(Position(1), &ReadAllFilter::default(), 10_000).await.unwrap().events;
    assert_eq!(
        everything.iter().map(|e| e.position.0).collect::<Vec<_>>(),
        (1..=4 * 4 * 40 * 2).collect::<Vec<_>>(),
        "every event once, gap-free"
    );
    for (stream, answers) in answered {
        let events: Vec<_> = everything.iter().filter(|e| e.stream == stream).collect();
        assert_eq!(events.len(), 80);
        for (version, event) in events.iter().enumerate() {
            assert_eq!(event.stream_version.0, version as u64, "{stream}: versions in order");
        }
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(answer.first_position, events[2 * i].position, "{stream}: answered where stored");
            assert_eq!(answer.last_position, events[2 * i + 1].position);
        }
    }
    let admin = admin().await;
    let queued: i64 =
        admin.query_one(&format!("SELECT count(*) FROM {schema}.append_queue"), &[]).await.unwrap().get(0);
    assert_eq!(queued, 0, "every queued group was answered and removed");
    // And groups were handed on: PostgreSQL publishes a backend's table statistics at the
    // latest ten seconds after it goes idle.
    let mut handed_on = 0i64;
    for _ in 0..150 {
        handed_on = admin
            .query_one(
                "SELECT coalesce(sum(n_tup_ins), 0)::bigint FROM pg_stat_user_tables
                 WHERE schemaname = $1 AND relname = 'append_queue'",
                &[&schema],
            )
            .await
            .unwrap()
            .get(0);
        if handed_on > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handed_on > 0, "the other servers handed their groups to the leading one");
}

/// `close` on a store whose writer leads the schema's appends hands the lead on (another
/// session can take it at once), answers what it had, and later appends on it fail with
/// `Closed`; the other server goes on appending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_leader_hands_on_the_lead_and_the_other_server_goes_on() {
    let schema = fresh_schema();
    let a = connect(&schema).await;
    let b = connect(&schema).await;
    let stream = StreamName::new("unit-1").unwrap();
    a.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
    for _ in 0..5 {
        b.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
    }
    let admin = admin().await;
    let lead_is_free = || async {
        let round: Option<i64> = admin.query_one(&format!("SELECT {schema}.try_lead()"), &[]).await.unwrap().get(0);
        if let Some(round) = round {
            admin.execute(&format!("SELECT {schema}.resign($1)"), &[&round]).await.unwrap();
        }
        round.is_some()
    };
    assert!(!lead_is_free().await, "the first store's writer leads");
    a.close().await;
    assert!(lead_is_free().await, "closing handed the lead on");
    let refused = a.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await;
    assert!(matches!(refused, Err(ReelError::Closed)), "{refused:?}");
    let next = b.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Tick", "{}")]).await.unwrap();
    assert_eq!(next.first_position, Position(7));
}
