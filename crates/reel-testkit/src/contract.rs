//! One function per clause of the store contract. Each panics with a message saying what broke.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use reel_core::{
    scan_all, AllReader, AppendRequest, Direction, EventId, EventStore, EventView, ExpectedVersion, NewEvent, Position,
    ReadAllFilter, RecordedEvent, ReelError, StreamName, StreamVersion,
};
use serde_json::json;

/// Shared handle to the store under test.
pub type Store = Arc<dyn EventStore>;

/// A stream name (panics on an invalid literal: test input only).
pub fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("valid test stream name")
}

/// A JSON event with a fresh client id.
pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::json(event_type, &json!({ "n": n })).expect("json").with_id(EventId::new_v7())
}

fn events(event_type: &str, count: u64) -> Vec<NewEvent> {
    (0..count).map(|n| event(event_type, n)).collect()
}

/// Every event in the log, read page by page.
pub async fn read_everything(store: &Store) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut reader = AllReader::new(store.clone(), Position(1), ReadAllFilter::default(), 1000);
    while let Some(events) = reader.next_page().await.expect("read_all") {
        all.extend(events);
    }
    all
}

async fn head(store: &Store) -> Position {
    store.head().await.expect("head")
}

/// Appended events come back with their data, metadata, ids, versions and positions.
pub async fn appends_and_reads_back(store: Store) {
    assert_eq!(head(&store).await, Position(0), "a new store is empty");
    let s = stream("order-1");
    let mut metadata = serde_json::Map::new();
    metadata.insert("correlation".into(), json!("c-1"));
    let first = event("Placed", 1).with_metadata(metadata.clone());
    let without_id = NewEvent::new("Raw", vec![0u8, 159, 146, 150]);
    let result = store.append(&s, ExpectedVersion::NoStream, vec![first.clone(), without_id]).await.unwrap();
    assert_eq!((result.first_position, result.last_position), (Position(1), Position(2)));
    assert_eq!(result.next_version, StreamVersion(1));

    let read = store.read_stream(&s, StreamVersion(0), Direction::Forward, 10).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].id, first.id.unwrap());
    assert_eq!(read[0].event_type, "Placed");
    assert_eq!(read[0].data, first.data);
    assert_eq!(read[0].metadata, metadata);
    assert_eq!((read[0].stream_version, read[0].position), (StreamVersion(0), Position(1)));
    assert_eq!(read[1].data, vec![0u8, 159, 146, 150], "binary data round-trips");
    assert_eq!(read[1].stream, s);
    assert_eq!(read[0].recorded_at, read[1].recorded_at, "one append, one commit time");
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(StreamVersion(1)));
    assert_eq!(store.stream_version(&stream("order-2")).await.unwrap(), None);
    assert_eq!(read_everything(&store).await, read);
}

/// A rejected append stores none of its events. (Invariant 1.)
pub async fn append_is_atomic(store: Store) {
    let s = stream("atomic-1");
    store.append(&s, ExpectedVersion::Any, events("A", 3)).await.unwrap();
    let mut batch = events("B", 10);
    batch[7].event_type.clear();
    let err = store.append(&s, ExpectedVersion::Any, batch).await.unwrap_err();
    assert!(matches!(err, ReelError::InvalidEvent { index: Some(7), .. }), "{err:?}");
    let err = store.append(&s, ExpectedVersion::Exact(StreamVersion(0)), events("C", 10)).await.unwrap_err();
    assert!(matches!(err, ReelError::WrongExpectedVersion { .. }), "{err:?}");
    assert_eq!(head(&store).await, Position(3), "nothing of the rejected batches was stored");
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(StreamVersion(2)));
}

/// Each kind of expected version passes and fails as documented, and a failure stores nothing. (Invariant 2.)
pub async fn optimistic_concurrency(store: Store) {
    let s = stream("occ-1");
    let wrong = |r: Result<_, ReelError>, expected, actual| match r {
        Err(ReelError::WrongExpectedVersion { expected: e, actual: a, .. }) => {
            assert_eq!((e, a), (expected, actual), "error reports expected and actual");
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    };
    wrong(store.append(&s, ExpectedVersion::StreamExists, events("E", 1)).await, ExpectedVersion::StreamExists, None);
    let exact0 = ExpectedVersion::Exact(StreamVersion(0));
    wrong(store.append(&s, exact0, events("E", 1)).await, exact0, None);
    store.append(&s, ExpectedVersion::NoStream, events("E", 1)).await.unwrap();
    wrong(
        store.append(&s, ExpectedVersion::NoStream, events("E", 1)).await,
        ExpectedVersion::NoStream,
        Some(StreamVersion(0)),
    );
    let exact5 = ExpectedVersion::Exact(StreamVersion(5));
    wrong(store.append(&s, exact5, events("E", 1)).await, exact5, Some(StreamVersion(0)));
    let r = store.append(&s, exact0, events("E", 2)).await.unwrap();
    assert_eq!(r.next_version, StreamVersion(2));
    wrong(store.append(&s, exact0, events("E", 1)).await, exact0, Some(StreamVersion(2)));
    store.append(&s, ExpectedVersion::StreamExists, events("E", 1)).await.unwrap();
    store.append(&s, ExpectedVersion::Any, events("E", 1)).await.unwrap();
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(StreamVersion(4)));
    assert_eq!(head(&store).await, Position(5), "failed appends stored nothing");
}

/// Retrying an `Exact` or `NoStream` append returns the original result and stores nothing. (Invariant 3.)
pub async fn retry_with_exact_version_is_idempotent(store: Store) {
    let s = stream("idem-1");
    let created = events("Created", 2);
    let first = store.append(&s, ExpectedVersion::NoStream, created.clone()).await.unwrap();
    let batch = events("Changed", 3);
    let exact = ExpectedVersion::Exact(StreamVersion(1));
    let original = store.append(&s, exact, batch.clone()).await.unwrap();
    store.append(&stream("other-1"), ExpectedVersion::Any, events("X", 2)).await.unwrap();
    store.append(&s, ExpectedVersion::Exact(StreamVersion(4)), events("Later", 1)).await.unwrap();
    let head_before = head(&store).await;
    assert_eq!(store.append(&s, exact, batch.clone()).await.unwrap(), original);
    assert_eq!(store.append(&s, ExpectedVersion::NoStream, created).await.unwrap(), first);
    assert_eq!(head(&store).await, head_before, "a retry stores nothing");
    // A retry that only starts like the original is not the same append.
    let mut longer = batch.clone();
    longer.push(event("Changed", 9));
    let err = store.append(&s, exact, longer).await.unwrap_err();
    assert!(matches!(err, ReelError::DuplicateEventId { .. }), "{err:?}");
    assert_eq!(head(&store).await, head_before);
}

/// Retrying an `Any` or `StreamExists` append among the recent events returns the original result. (Invariant 3.)
pub async fn retry_with_any_version_is_idempotent(store: Store) {
    let s = stream("idem-2");
    store.append(&s, ExpectedVersion::Any, events("A", 5)).await.unwrap();
    let batch = events("B", 4);
    let original = store.append(&s, ExpectedVersion::Any, batch.clone()).await.unwrap();
    store.append(&s, ExpectedVersion::Any, events("C", 5)).await.unwrap();
    let head_before = head(&store).await;
    assert_eq!(store.append(&s, ExpectedVersion::Any, batch.clone()).await.unwrap(), original);
    assert_eq!(store.append(&s, ExpectedVersion::StreamExists, batch.clone()).await.unwrap(), original);
    // Even an `Exact` that matches the current version must not store a second copy.
    let current = ExpectedVersion::Exact(StreamVersion(13));
    assert_eq!(store.append(&s, current, batch).await.unwrap(), original);
    assert_eq!(head(&store).await, head_before);
    let all = read_everything(&store).await;
    let unique: HashSet<EventId> = all.iter().map(|e| e.id).collect();
    assert_eq!(unique.len(), all.len(), "no event id twice");
}

/// The same id with different content is `DuplicateEventId`; so is a batch that reuses a later id. (Invariant 3.)
pub async fn same_id_with_other_content_is_rejected(store: Store) {
    let s = stream("dup-1");
    let batch = events("A", 3);
    store.append(&s, ExpectedVersion::Any, batch.clone()).await.unwrap();
    let head_before = head(&store).await;
    let mut changed = batch.clone();
    changed[0].data = b"{\"n\":42}".to_vec();
    for expected in [ExpectedVersion::Any, ExpectedVersion::NoStream, ExpectedVersion::Exact(StreamVersion(2))] {
        let err = store.append(&s, expected, changed.clone()).await.unwrap_err();
        assert!(matches!(err, ReelError::DuplicateEventId { .. }), "{expected:?}: {err:?}");
    }
    let reused_later = vec![event("New", 0), batch[1].clone()];
    let err = store.append(&s, ExpectedVersion::Any, reused_later).await.unwrap_err();
    assert!(matches!(err, ReelError::DuplicateEventId { .. }), "{err:?}");
    assert_eq!(head(&store).await, head_before, "rejected duplicates store nothing");
    // Ids are per stream: the same id in another stream is a different event.
    store.append(&stream("dup-2"), ExpectedVersion::Any, vec![batch[0].clone()]).await.unwrap();
}

/// The same append sent many times at once (a client retrying before the first answer came
/// back) is stored once; every caller gets the same result. (Invariant 3.)
pub async fn concurrent_identical_retries_store_once(store: Store) {
    let s = stream("retry-storm-1");
    store.append(&s, ExpectedVersion::Any, events("Before", 1)).await.unwrap();
    let batch = events("Once", 3);
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (store, s, batch) = (store.clone(), s.clone(), batch.clone());
            let expected = if i % 2 == 0 { ExpectedVersion::Any } else { ExpectedVersion::Exact(StreamVersion(0)) };
            tokio::spawn(async move { store.append(&s, expected, batch).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task").expect("every identical retry succeeds"));
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "every caller got the original result: {results:?}");
    assert_eq!(head(&store).await, Position(4), "the batch is stored once");
}

/// A retry is still recognised after 999 later events in the same stream. (Invariant 3.)
pub async fn retry_recognised_within_recent_window(store: Store) {
    let s = stream("window-1");
    let batch = events("First", 1);
    let original = store.append(&s, ExpectedVersion::Any, batch.clone()).await.unwrap();
    for chunk in 0..10u64 {
        let filler = events("Filler", if chunk == 9 { 99 } else { 100 });
        store.append(&s, ExpectedVersion::Any, filler).await.unwrap();
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(StreamVersion(999)));
    assert_eq!(store.append(&s, ExpectedVersion::Any, batch).await.unwrap(), original);
    assert_eq!(head(&store).await, Position(1000));
}

/// Positions run 1..N without gaps and `read_all` returns them in order. (Invariant 4.)
pub async fn positions_are_gap_free_and_ordered(store: Store) {
    for i in 0..30u64 {
        let s = stream(&format!("gap-{}", i % 4));
        let _ = store.append(&s, ExpectedVersion::Exact(StreamVersion(99)), events("Bad", 1)).await;
        store.append(&s, ExpectedVersion::Any, events("E", 1 + i % 3)).await.unwrap();
    }
    let all = read_everything(&store).await;
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>(), "positions 1..N, no gap");
    assert_eq!(head(&store).await, Position(all.len() as u64));
}

/// Filters by category, type and prefix; a filtered page's `next` moves past what it skipped. (Invariant 6.)
pub async fn read_all_filters_and_skips_ahead(store: Store) {
    store.append(&stream("unit-1"), ExpectedVersion::Any, events("Opened", 2)).await.unwrap();
    store.append(&stream("unitconfig-1"), ExpectedVersion::Any, events("Configured", 1)).await.unwrap();
    store.append(&stream("unit-2"), ExpectedVersion::Any, events("Closed", 1)).await.unwrap();
    store.append(&stream("order-1"), ExpectedVersion::Any, events("Opened", 1)).await.unwrap();
    let read = |filter: ReadAllFilter| {
        let store = store.clone();
        async move {
            let page = store.read_all(Position(1), &filter, 100).await.unwrap();
            page.events.iter().map(|e| e.position.0).collect::<Vec<_>>()
        }
    };
    let category = ReadAllFilter { categories: vec!["unit".into()], ..Default::default() };
    assert_eq!(read(category).await, vec![1, 2, 4]);
    let types = ReadAllFilter { event_types: vec!["Opened".into()], ..Default::default() };
    assert_eq!(read(types).await, vec![1, 2, 5]);
    let prefix = ReadAllFilter { stream_prefix: Some("unit".into()), ..Default::default() };
    assert_eq!(read(prefix).await, vec![1, 2, 3, 4]);
    let both =
        ReadAllFilter { categories: vec!["unit".into()], event_types: vec!["Closed".into()], ..Default::default() };
    assert_eq!(read(both).await, vec![4]);

    let rare = ReadAllFilter { event_types: vec!["Nothing".into()], ..Default::default() };
    let page = store.read_all(Position(1), &rare, 10).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next, Position(6), "an empty filtered page still advances to the head");
    let limited = store
        .read_all(Position(1), &ReadAllFilter { categories: vec!["unit".into()], ..Default::default() }, 2)
        .await
        .unwrap();
    assert_eq!(limited.next, Position(3), "a full page continues right after its last event");
    let err = store.read_all(Position(1), &ReadAllFilter::default(), 0).await.unwrap_err();
    assert!(matches!(err, ReelError::InvalidArgument(_)), "{err:?}");
}

/// `scan_all` shows every event up to the head, in position order, as `read_all` returns it; a
/// visitor that stops gets the position to go on from, and a scan from there sees the rest and
/// nothing twice. (Invariants 3 and 6.)
pub async fn scan_shows_each_event_once_in_order(store: Store) {
    let count = |n: &mut u64, _: &EventView<'_>| {
        *n += 1;
        ControlFlow::Continue(())
    };
    let (seen, next) = scan_all(&*store, Position(1), 0u64, count).await.unwrap();
    assert_eq!((seen, next), (0, Position(1)), "an empty store shows nothing");

    // More events than a page of a store that scans in pages, over three streams, one of them
    // with metadata and tags.
    let mut metadata = serde_json::Map::new();
    metadata.insert("device".into(), json!("d-7"));
    let tagged = event("Tagged", 0).with_metadata(metadata).with_tags(["locker:7", "site:north"]);
    store.append(&stream("scan-a"), ExpectedVersion::Any, vec![tagged]).await.unwrap();
    for round in 0..5 {
        for name in ["scan-a", "scan-b", "scan-c"] {
            store.append(&stream(name), ExpectedVersion::Any, events(&format!("E{round}"), 170)).await.unwrap();
        }
    }
    let head = head(&store).await;
    assert_eq!(head, Position(2_551));
    let expected = read_everything(&store).await;
    let copy = |all: &mut Vec<RecordedEvent>, e: &EventView<'_>| {
        all.push(e.to_recorded().expect("a stored event decodes"));
        ControlFlow::Continue(())
    };
    let (copies, next) = scan_all(&*store, Position(1), Vec::new(), copy).await.unwrap();
    assert!(copies == expected, "the scan differs from read_all (first difference at {:?})", {
        copies.iter().zip(&expected).position(|(a, b)| a != b).or(Some(copies.len().min(expected.len())))
    });
    assert_eq!(next, head.next());
    assert_eq!(copies[0].tags, vec!["locker:7".to_string(), "site:north".to_string()]);

    let positions = |stop_after: usize| {
        move |seen: &mut Vec<u64>, e: &EventView<'_>| {
            seen.push(e.position.0);
            if seen.len() == stop_after {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    };
    let (first, resume) = scan_all(&*store, Position(1), Vec::new(), positions(1_234)).await.unwrap();
    assert_eq!(first, (1..=1_234).collect::<Vec<_>>(), "a stopped scan shows a prefix");
    assert_eq!(resume, Position(1_235), "a stopped scan goes on after the event that stopped it");
    let (rest, end) = scan_all(&*store, resume, Vec::new(), positions(usize::MAX)).await.unwrap();
    assert_eq!(rest, (1_235..=head.0).collect::<Vec<_>>(), "the rest, each once");
    assert_eq!(end, head.next());

    let (seen, next) = scan_all(&*store, end, 0u64, count).await.unwrap();
    assert_eq!((seen, next), (0, end), "a scan from past the head shows nothing");
    store.append(&stream("scan-b"), ExpectedVersion::Any, events("Late", 3)).await.unwrap();
    let (late, next) = scan_all(&*store, end, Vec::new(), positions(usize::MAX)).await.unwrap();
    assert_eq!(late, vec![2_552, 2_553, 2_554], "a scan from the last end shows what came since");
    assert_eq!(next, Position(2_555));
}

/// `read_stream` pages forward and backward; a missing stream is `StreamNotFound`. (Invariant 6.)
pub async fn read_stream_pages_both_ways(store: Store) {
    let s = stream("paged-1");
    store.append(&s, ExpectedVersion::Any, events("E", 10)).await.unwrap();
    let versions = |evs: Vec<RecordedEvent>| evs.iter().map(|e| e.stream_version.0).collect::<Vec<_>>();
    let fwd = store.read_stream(&s, StreamVersion(3), Direction::Forward, 4).await.unwrap();
    assert_eq!(versions(fwd), vec![3, 4, 5, 6]);
    let back = store.read_stream(&s, StreamVersion::LAST, Direction::Backward, 3).await.unwrap();
    assert_eq!(versions(back), vec![9, 8, 7]);
    let back = store.read_stream(&s, StreamVersion(1), Direction::Backward, 5).await.unwrap();
    assert_eq!(versions(back), vec![1, 0]);
    let past_end = store.read_stream(&s, StreamVersion(10), Direction::Forward, 5).await.unwrap();
    assert!(past_end.is_empty());
    let err = store.read_stream(&stream("missing-1"), StreamVersion(0), Direction::Forward, 5).await.unwrap_err();
    assert!(matches!(err, ReelError::StreamNotFound { .. }), "{err:?}");
}

/// Empty batches, oversized events and batches, bad types, duplicate ids in a batch: rejected, nothing stored. (Invariant 8.)
pub async fn bad_input_changes_nothing(store: Store) {
    let s = stream("bad-1");
    store.append(&s, ExpectedVersion::Any, events("Ok", 1)).await.unwrap();
    let id = EventId::new_v7();
    let cases: Vec<(&str, Vec<NewEvent>)> = vec![
        ("empty batch", vec![]),
        ("empty type", vec![NewEvent::new("", "{}")]),
        ("control character in type", vec![NewEvent::new("A\nB", "{}")]),
        ("event over 1 MiB", vec![NewEvent::new("Big", vec![b'x'; 1024 * 1024 + 1])]),
        ("batch over 10,000 events", (0..10_001).map(|_| NewEvent::new("E", "{}")).collect()),
        ("duplicate id in batch", vec![NewEvent::new("E", "{}").with_id(id), NewEvent::new("E", "{}").with_id(id)]),
    ];
    for (what, batch) in cases {
        let result = store.append(&s, ExpectedVersion::Any, batch).await;
        assert!(result.is_err(), "{what} was accepted");
        let result = store.append(&stream("bad-new"), ExpectedVersion::NoStream, vec![]).await;
        assert!(result.is_err(), "{what}: empty batch on new stream accepted");
    }
    assert_eq!(head(&store).await, Position(1), "no bad input stored anything");
    assert_eq!(store.stream_version(&stream("bad-new")).await.unwrap(), None);
}

/// `append_many` answers each request on its own: one failing request does not sink the others. (Invariant 1.)
pub async fn append_many_keeps_each_request_atomic(store: Store) {
    let req = |name: &str, expected, count| AppendRequest::new(stream(name), expected, events("M", count));
    let results = store
        .append_many(vec![
            req("many-1", ExpectedVersion::NoStream, 2),
            req("many-2", ExpectedVersion::Exact(StreamVersion(4)), 3),
            req("many-1", ExpectedVersion::Exact(StreamVersion(1)), 1),
            req("many-3", ExpectedVersion::Any, 0),
        ])
        .await;
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap().last_position, Position(2));
    assert!(matches!(results[1], Err(ReelError::WrongExpectedVersion { .. })), "{:?}", results[1]);
    let third = results[2].as_ref().unwrap();
    assert_eq!((third.first_position, third.next_version), (Position(3), StreamVersion(2)), "requests apply in order");
    assert!(results[3].is_err(), "an empty request is rejected");
    assert_eq!(head(&store).await, Position(3));
    assert_eq!(store.stream_version(&stream("many-2")).await.unwrap(), None);
}

/// A follower waiting on the head wakes when an event is appended. (Invariant 7.)
pub async fn head_watch_wakes_followers(store: Store) {
    let mut watch = store.watch_head();
    let start = head(&store).await;
    let follower = tokio::spawn(async move { watch.wait_past(start).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!follower.is_finished(), "nothing appended yet");
    let r = store.append(&stream("wake-1"), ExpectedVersion::Any, events("E", 1)).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), follower).await.expect("follower woke").unwrap().unwrap();
    assert!(woke >= r.last_position, "woke at {woke}, appended at {}", r.last_position);
}

/// Streams are listed by category with their versions; stats count events and streams.
pub async fn streams_and_stats(store: Store) {
    for name in ["unit-b", "unit-a", "order-1"] {
        store.append(&stream(name), ExpectedVersion::Any, events("E", 2)).await.unwrap();
    }
    let units = store.streams(Some("unit"), None, 10).await.unwrap();
    let names: Vec<&str> = units.iter().map(|s| s.stream.as_str()).collect();
    assert_eq!(names, vec!["unit-a", "unit-b"]);
    assert_eq!(units[0].version, StreamVersion(1));
    let after = store.streams(None, Some(&stream("order-1")), 10).await.unwrap();
    assert_eq!(after.len(), 2);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.event_count, stats.stream_count, stats.head), (6, 3, Position(6)));
}

/// 16 writers × 500 appends on shared and own streams while a follower tails the log:
/// positions exactly 1..N, versions contiguous per stream, no event twice, and the follower
/// sees every event once, in order. (Invariant 4.)
pub async fn concurrent_writers_keep_order(store: Store) {
    const WRITERS: u64 = 16;
    const APPENDS: u64 = 500;
    let follower_store = store.clone();
    let follower = tokio::spawn(async move {
        let mut watch = follower_store.watch_head();
        let mut seen: Vec<RecordedEvent> = Vec::new();
        let mut from = Position(1);
        loop {
            let page = follower_store.read_all(from, &ReadAllFilter::default(), 500).await.expect("follow");
            if let Some(last) = page.events.last() {
                if last.metadata.get("stop").is_some() {
                    seen.extend(page.events);
                    return seen;
                }
            }
            from = page.next;
            let caught_up = page.events.is_empty();
            seen.extend(page.events);
            if caught_up {
                let _ = tokio::time::timeout(Duration::from_secs(5), watch.wait_past(Position(from.0 - 1))).await;
            }
        }
    });
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut stored = 0u64;
            for i in 0..APPENDS {
                let shared = stream(&format!("shared-{}", i % 4));
                let own = stream(&format!("own-{w}"));
                if i % 2 == 0 {
                    // Exact on a contended stream: re-read and retry on conflict.
                    loop {
                        let current = store.stream_version(&shared).await.unwrap();
                        let expected = current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                        match store.append(&shared, expected, events("Shared", 1)).await {
                            Ok(_) => break,
                            Err(ReelError::WrongExpectedVersion { .. }) => continue,
                            Err(e) => panic!("append failed: {e}"),
                        }
                    }
                    stored += 1;
                } else {
                    let n = 1 + i % 3;
                    store.append(&own, ExpectedVersion::Any, events("Own", n)).await.unwrap();
                    stored += n;
                }
            }
            stored
        }));
    }
    let mut expected_total = 0;
    for writer in writers {
        expected_total += writer.await.unwrap();
    }
    let mut stop = serde_json::Map::new();
    stop.insert("stop".into(), json!(true));
    store
        .append(&stream("control-stop"), ExpectedVersion::Any, vec![event("Stop", 0).with_metadata(stop)])
        .await
        .unwrap();
    expected_total += 1;

    let all = read_everything(&store).await;
    assert_eq!(all.len() as u64, expected_total, "every acknowledged event stored once");
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (1..=expected_total).collect::<Vec<_>>(), "positions exactly 1..N");
    let ids: HashSet<EventId> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), all.len(), "no event twice");
    let mut versions: HashMap<&StreamName, Vec<u64>> = HashMap::new();
    for e in &all {
        versions.entry(&e.stream).or_default().push(e.stream_version.0);
    }
    for (s, v) in versions {
        assert_eq!(v, (0..v.len() as u64).collect::<Vec<_>>(), "versions of {s} contiguous and in position order");
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), follower).await.expect("follower finished").unwrap();
    assert_eq!(seen, all, "the follower saw every event exactly once, in order");
}
