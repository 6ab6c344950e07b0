//! Behaviour of the embedded backend beyond the shared contract: group commit and
//! several writers sharing one file.

use std::sync::Arc;

use reel_core::{EventStore, ExpectedVersion, NewEvent, Position, StreamName, StreamVersion};
use reel_sqlite::{CheckpointMode, SqliteOptions, SqliteStore, Stage};

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

/// Whichever thread checkpoints (inside the commit, on the writer after answering, or a thread of
/// its own), the WAL is copied into the main file: after enough appends to cross the 1,000-page
/// threshold, the main file holds them within moments. The writer's WAL hook replaces SQLite's
/// automatic checkpoint, so a mode that forgot to checkpoint would leave the main file at its
/// initial few pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_checkpoint_mode_copies_the_wal_into_the_main_file() {
    for mode in [CheckpointMode::InsideCommit, CheckpointMode::AfterAnswer, CheckpointMode::Background] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reel.db");
        let options = SqliteOptions { checkpoints: mode, ..SqliteOptions::default() };
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
            assert!(std::time::Instant::now() < deadline, "{mode:?}: the main file stayed at {size} bytes");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(store.head().await.unwrap(), Position(4000), "{mode:?}: every append answered and stored");
    }
}

/// With background checkpoints the WAL still starts over under sustained load: the checkpoint
/// thread copies it while appends go on, and the writer finishes the copy (what the thread left,
/// or everything once the WAL passes its 64 MiB bound). A WAL that never started over would grow
/// by every byte appended; here 400 MB go through it. The bound is soft (a copy of the writer's
/// that meets one of the thread's is tried again after the next group, and each group here adds
/// up to 13 MB), so the file may pass 64 MiB, but never by more than a few groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_checkpoints_keep_the_wal_bounded_under_sustained_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reel.db");
    let options = SqliteOptions { checkpoints: CheckpointMode::Background, ..SqliteOptions::default() };
    let store = SqliteStore::open_with(&path, options).unwrap();
    let payload = format!("\"{}\"", "x".repeat(8_000));
    let mut appenders = Vec::new();
    for a in 0..4 {
        let (store, payload) = (store.clone(), payload.clone());
        appenders.push(tokio::spawn(async move {
            for i in 0..125 {
                let events = (0..100).map(|_| NewEvent::new("Big", payload.clone())).collect();
                store.append(&stream(&format!("big-{a}-{i}")), ExpectedVersion::Any, events).await.unwrap();
            }
        }));
    }
    for appender in appenders {
        appender.await.unwrap();
    }
    assert_eq!(store.head().await.unwrap(), Position(50_000), "every append answered and stored");
    let wal = std::fs::metadata(dir.path().join("reel.db-wal")).map_or(0, |m| m.len());
    // 16,384 frames of 4 KiB plus their headers, and a few groups of 4 appends of 800 KB.
    let bound = 16_384 * 4_120 + 8 * 4 * 100 * 8_200;
    assert!(wal <= bound, "the WAL file grew to {wal} bytes (bound {bound}): it did not start over");
    assert!(wal > 0, "the WAL was used");
}

/// The stage report accounts for every append job and shows checkpoints apart from commits,
/// whichever thread runs them on the writer's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stage_report_counts_every_append_and_shows_checkpoints_apart() {
    for mode in [CheckpointMode::InsideCommit, CheckpointMode::AfterAnswer] {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions { checkpoints: mode, record_stages: true, ..SqliteOptions::default() };
        let store = SqliteStore::open_with(dir.path().join("reel.db"), options).unwrap();
        let payload = format!("\"{}\"", "x".repeat(2000));
        for i in 0..300 {
            let events = (0..10).map(|_| NewEvent::new("Big", payload.clone())).collect();
            store.append(&stream(&format!("s-{}", i % 7)), ExpectedVersion::Any, events).await.unwrap();
        }
        let report = store.stage_report().expect("recording was asked for");
        let count = |stage: Stage| report.iter().find(|s| s.stage == stage).map_or(0, |s| s.count);
        assert_eq!(count(Stage::QueueWait), 300, "{mode:?}: one queue wait per append");
        assert_eq!(count(Stage::Commit), 300, "{mode:?}: every append waited for one commit");
        // The last reply is recorded once it was sent, which may be just after its caller read
        // the report.
        assert!((299..=300).contains(&count(Stage::Reply)), "{mode:?}: one reply per append");
        assert!(count(Stage::Checkpoint) >= 1, "{mode:?}: 6 MB through the WAL crossed the threshold: {report:?}");
        // Each caller noted when it ran again after its answer, so every append is split.
        assert_eq!(count(Stage::WakeUp), 300, "{mode:?}: one wake-up per append");
        let splits = store.append_splits(&[0.99]).expect("recording was asked for");
        let (all, slowest) = (&splits[0], &splits[1]);
        // The 0.99 quantile of 300 is rank 296 (of 0–299), so the slowest are the last four.
        assert_eq!((all.appends, slowest.appends), (300, 4), "{mode:?}: {splits:?}");
        for split in &splits {
            let parts = split.queued_ms + split.in_writer_ms + split.wake_up_ms;
            assert!((split.total_ms - parts).abs() < 1e-9 && split.in_writer_ms > 0.0, "{mode:?}: {split:?}");
        }
        assert!(slowest.total_ms >= all.total_ms, "{mode:?}: the slowest are chosen by their whole time: {splits:?}");
        assert_eq!(store.append_splits(&[]).unwrap()[0].appends, 0, "{mode:?}: the splits start over");
        // Queue wait and commit are recorded before the answer is sent, so they are exact.
        store.append(&stream("s-0"), ExpectedVersion::Any, vec![NewEvent::new("Small", "{}")]).await.unwrap();
        let next = store.stage_report().unwrap();
        let count = |stage: Stage| next.iter().find(|s| s.stage == stage).map_or(0, |s| s.count);
        assert_eq!((count(Stage::QueueWait), count(Stage::Commit)), (1, 1), "{mode:?}: a report starts over");
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = SqliteStore::open(dir.path().join("reel.db")).unwrap();
    assert!(plain.stage_report().is_none(), "nothing is recorded unless asked");
    assert!(plain.append_splits(&[0.99]).is_none(), "nothing is split unless asked");
}

fn with_id(event_type: &str) -> NewEvent {
    NewEvent::new(event_type, "{}").with_id(reel_core::EventId::new_v7())
}

/// The writer remembers each stream's latest event ids after an append that carried ids, so
/// the next one is checked without reading them again. What another writer of the same file
/// appended in between is seen all the same: a retry of its append through this store is
/// recognised, not stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_recognised_after_another_writer_of_the_file_appended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reel.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let s = stream("device-1");
    a.append(&s, ExpectedVersion::Any, vec![with_id("First")]).await.unwrap();
    a.append(&s, ExpectedVersion::Any, vec![with_id("Second")]).await.unwrap();
    let other = vec![with_id("FromB"), with_id("FromB")];
    let original = b.append(&s, ExpectedVersion::Any, other.clone()).await.unwrap();
    assert_eq!(a.append(&s, ExpectedVersion::Any, other).await.unwrap(), original, "b's append recognised by a");
    assert_eq!(a.head().await.unwrap(), Position(4), "stored once");
}

/// The remembered window is exactly the latest `RECENT_ID_WINDOW` events, as a fresh read
/// would give: after 1,000 later events the first one's id is no longer among them (a repeat is
/// a new event, as documented), while the second's still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remembered_id_window_moves_exactly_with_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("reel.db")).unwrap();
    let s = stream("device-2");
    let first = vec![with_id("First")];
    let second = vec![with_id("Second")];
    store.append(&s, ExpectedVersion::Any, first.clone()).await.unwrap();
    let second_result = store.append(&s, ExpectedVersion::Any, second.clone()).await.unwrap();
    // 999 more (versions 2..=1000), in appends of various sizes, some without ids.
    let mut written = 0;
    for size in (1..).cycle() {
        if written == 999 {
            break;
        }
        let size = size.min(999 - written) as usize;
        let batch: Vec<NewEvent> =
            (0..size).map(|i| if i % 3 == 2 { NewEvent::new("Plain", "{}") } else { with_id("Filler") }).collect();
        store.append(&s, ExpectedVersion::Any, batch).await.unwrap();
        written += size as u64;
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(StreamVersion(1000)));
    assert_eq!(store.append(&s, ExpectedVersion::Any, second).await.unwrap(), second_result, "version 1 is inside");
    let again = store.append(&s, ExpectedVersion::Any, first).await.unwrap();
    assert_eq!(again.first_position, Position(1002), "version 0 fell out of the window");
}

/// Readers that are always busy (followers, projections, long polls) never let a PASSIVE
/// checkpoint start the WAL over, in either of these modes; the writer bounds it anyway (64 MiB, see `WAL_RESTART_FRAMES`),
/// so it does not grow with everything appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_stays_bounded_while_readers_are_always_busy() {
    for mode in [CheckpointMode::InsideCommit, CheckpointMode::Background] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reel.db");
        let store =
            SqliteStore::open_with(&path, SqliteOptions { checkpoints: mode, ..SqliteOptions::default() }).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (store, stop) = (store.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                // Followers that read the whole log over and over, a page of 1,000 at a time.
                let filter = reel_core::ReadAllFilter::default();
                let mut from = reel_core::Position(1);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let page = store.read_all(from, &filter, 1_000).await.unwrap();
                    from = if page.events.is_empty() { reel_core::Position(1) } else { page.next };
                }
            }));
        }
        let data = vec![b'x'; 2_000];
        let payload = format!("{{\"pad\":\"{}\"}}", String::from_utf8(data).unwrap());
        let mut largest_wal = 0;
        // 320 MiB of events in batches of 500, with the readers running throughout.
        for batch in 0..320 {
            let events = (0..500).map(|_| NewEvent::new("Padded", payload.clone())).collect();
            store.append(&stream(&format!("pad-{batch}")), ExpectedVersion::Any, events).await.unwrap();
            let wal = std::fs::metadata(dir.path().join("reel.db-wal")).map(|m| m.len()).unwrap_or(0);
            largest_wal = largest_wal.max(wal);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            reader.await.unwrap();
        }
        assert_eq!(store.head().await.unwrap(), reel_core::Position(160_000));
        // Without the bound the WAL holds all of it (323 MiB measured for half as much); with it,
        // 64 MiB plus what is appended between two attempts that succeed (at most one a second,
        // each waiting 50 ms for readers; on a loaded machine some find readers still busy).
        assert!(
            largest_wal < 320 * 1024 * 1024,
            "{mode:?}: the WAL stayed bounded: at most {} MiB",
            largest_wal / (1024 * 1024)
        );
    }
}
