//! Behaviour of the embedded backend beyond the shared contract: group commit and
//! several writers sharing one file.

use std::sync::Arc;

use reel_core::{EventStore, ExpectedVersion, NewEvent, Position, StreamName, StreamVersion};
use reel_sqlite::{SqliteOptions, SqliteStore};

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = stream(&format!("group-{i}"));
                store.append(&s, ExpectedVersion::NoStream, vec![NewEvent::new("E", "{}")]).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.head().await.unwrap(), Position(200));
    let commits = store.commit_count();
    assert!(commits < 200, "200 concurrent appends took {commits} commits: group commit is not grouping");

    // With group commit off, every append is its own transaction.
    let single = SqliteStore::open_with(
        dir.path().join("single.db"),
        SqliteOptions { group_commit: false, ..SqliteOptions::default() },
    )
    .unwrap();
    let single = Arc::new(single);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let single = single.clone();
            tokio::spawn(async move {
                single.append(&stream(&format!("one-{i}")), ExpectedVersion::Any, vec![NewEvent::new("E", "{}")]).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(single.commit_count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_keep_one_order() {
    // Two handles with their own writer threads stand in for two processes sharing the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reel.db");
    let a = Arc::new(SqliteStore::open(&path).unwrap());
    let b = Arc::new(SqliteStore::open(&path).unwrap());
    let mut tasks = Vec::new();
    for (name, store) in [("a", a.clone()), ("b", b.clone())] {
        tasks.push(tokio::spawn(async move {
            for i in 0..200u64 {
                let s = stream("shared-1");
                loop {
                    let v = store.stream_version(&s).await.unwrap();
                    let expected = v.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                    let event = NewEvent::new(format!("{name}{i}"), "{}");
                    match store.append(&s, expected, vec![event]).await {
                        Ok(_) => break,
                        Err(reel_core::ReelError::WrongExpectedVersion { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let events =
        a.read_stream(&stream("shared-1"), StreamVersion(0), reel_core::Direction::Forward, 1000).await.unwrap();
    assert_eq!(events.len(), 400);
    for (i, e) in events.iter().enumerate() {
        assert_eq!((e.position.0, e.stream_version.0), (i as u64 + 1, i as u64));
    }
    // b sees a's appends through the external-change watch.
    let mut watch = b.watch_head();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), watch.wait_past(Position(399))).await;
    assert!(seen.is_ok(), "b's head watch learned of the other writer's appends");
}

/// With background checkpoints no append runs a WAL checkpoint, yet the WAL is still copied
/// into the main file: after enough appends to cross SQLite's 1,000-page threshold,
/// the main file holds them within moments. With the automatic checkpoint off and no background
/// thread the main file would stay at its initial few pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_checkpoints_copy_the_wal_into_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reel.db");
    let options = SqliteOptions { background_checkpoints: true, ..SqliteOptions::default() };
    let store = SqliteStore::open_with(&path, options).unwrap();
    let initial = std::fs::metadata(&path).unwrap().len();
    let payload = vec![b'x'; 2000];
    for i in 0..40 {
        let events =
            (0..100).map(|_| NewEvent::new("Big", format!("\"{}\"", String::from_utf8_lossy(&payload)))).collect();
        store.append(&stream(&format!("big-{i}")), ExpectedVersion::Any, events).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let size = std::fs::metadata(&path).unwrap().len();
        if size > initial + 4_000_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the main file stayed at {size} bytes: no checkpoint ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(store.head().await.unwrap(), Position(4000), "every append answered and stored");
}
