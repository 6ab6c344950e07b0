//! The WAL stays bounded with two stores on one file. Alone in this test binary: cargo runs
//! test binaries one after another, so no other test loads the machine while it measures.

use reel_core::{EventStore, ExpectedVersion, NewEvent, Position, StreamName};
use reel_sqlite::{CheckpointMode, SqliteOptions, SqliteStore};

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

/// Two stores on one file (as two processes would be), in each checkpoint mode, with two
/// appenders each of 800 KB groups. With background checkpoints there are two threads and two
/// writers whose turns are not shared, so their checkpoints meet and are answered "busy" at
/// times.
///
/// - At about 30 MB/s together the WAL must keep starting over through the mode's own
///   checkpoints, well before the writer's 64 MiB fallback (measured: at most 26 MB at 50 MB/s;
///   70 MB with a checkpoint thread that copied nothing). The rate leaves room for a loaded
///   machine: at 50 MB/s with a release build running beside it, the WAL once reached the
///   fallback. The 200 MB written reach the fallback at any rate if the thread copies nothing.
///
/// This test is alone in its file so that no other test shares the CPUs and the disk with it:
/// beside the other SQLite tests the paced WAL reached 54 MB once, where alone it stays under
/// the bound.
/// - As fast as they can, no transaction starts with the whole WAL copied (one writer begins
///   while the other's checkpoint is copying), so only the writer's restart checkpoint starts
///   it over. It must do so at its 64 MiB bound: with its tries a second apart, and SQLite's
///   sparse busy retries missing the other writer's gaps, 400 MB grew the WAL to 245–430 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_keep_the_wal_bounded_in_every_checkpoint_mode() {
    // (groups per appender, pause after each, largest WAL file allowed)
    let paced = (62, Some(std::time::Duration::from_millis(110)), 48_000_000);
    // 16,384 frames of 4 KiB plus their headers, and a few groups of both stores on top.
    let full_speed = (125, None, 16_384 * 4_120 + 32 * 100 * 8_200);
    for mode in [CheckpointMode::InsideCommit, CheckpointMode::Background] {
        for (groups, pause, bound) in [paced, full_speed] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("reel.db");
            let options = || SqliteOptions { checkpoints: mode, ..SqliteOptions::default() };
            let stores =
                [SqliteStore::open_with(&path, options()).unwrap(), SqliteStore::open_with(&path, options()).unwrap()];
            let payload = format!("\"{}\"", "x".repeat(8_000));
            let wal_path = dir.path().join("reel.db-wal");
            let largest_wal = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut appenders = Vec::new();
            for (s, store) in stores.iter().enumerate() {
                for a in 0..2 {
                    let (store, payload, wal_path, largest_wal) =
                        (store.clone(), payload.clone(), wal_path.clone(), largest_wal.clone());
                    appenders.push(tokio::spawn(async move {
                        for i in 0..groups {
                            let events = (0..100).map(|_| NewEvent::new("Big", payload.clone())).collect();
                            let name = stream(&format!("big-{s}-{a}-{i}"));
                            store.append(&name, ExpectedVersion::Any, events).await.unwrap();
                            let wal = std::fs::metadata(&wal_path).map_or(0, |m| m.len());
                            largest_wal.fetch_max(wal, std::sync::atomic::Ordering::Relaxed);
                            if let Some(pause) = pause {
                                tokio::time::sleep(pause).await;
                            }
                        }
                    }));
                }
            }
            for appender in appenders {
                appender.await.unwrap();
            }
            let how = if pause.is_some() { "at 30 MB/s" } else { "at full speed" };
            let head = stores[0].head().await.unwrap();
            assert_eq!(head, Position(400 * groups), "{mode:?} {how}: every append of both stored");
            let all = stores[1].read_all(Position(1), &reel_core::ReadAllFilter::default(), 1_000).await.unwrap();
            assert!(all.events.iter().enumerate().all(|(i, e)| e.position.0 == i as u64 + 1), "{mode:?}: one order");
            let largest = largest_wal.load(std::sync::atomic::Ordering::Relaxed);
            assert!(largest <= bound, "{mode:?} {how}: the WAL file grew to {largest} bytes (bound {bound})");
            assert!(largest > 0, "{mode:?} {how}: the WAL was used");
        }
    }
}
