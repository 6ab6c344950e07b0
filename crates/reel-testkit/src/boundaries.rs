//! The contract of tags, queries and conditional appends (docs/DESIGN.md, invariants 22 and
//! 23), run by every backend through [`crate::store_conformance_tests!`].

use std::sync::Arc;

use reel_core::{
    AppendCondition, AppendRequest, Direction, EventId, ExpectedVersion, NewEvent, Position, Query, QueryItem,
    ReadAllFilter, ReelError, StreamVersion,
};
use tokio::sync::Barrier;

use crate::contract::{read_everything, stream, Store};

fn tagged(event_type: &str, tags: &[&str]) -> NewEvent {
    NewEvent::new(event_type, "{}").with_id(EventId::new_v7()).with_tags(tags.iter().copied())
}

fn query(items: Vec<QueryItem>) -> Query {
    Query::new(items).expect("valid test query")
}

/// Tags come back on every read, in order; `read_query` pages through matching events by
/// position and returns the head of its read; `read_all` filters by tags.
pub async fn tags_are_stored_and_queried(store: Store) {
    store
        .append(&stream("locker-7"), ExpectedVersion::Any, vec![tagged("Reserved", &["locker:7", "customer:c-1"])])
        .await
        .unwrap();
    store
        .append(&stream("locker-8"), ExpectedVersion::Any, vec![tagged("Reserved", &["locker:8", "customer:c-1"])])
        .await
        .unwrap();
    store.append(&stream("other-1"), ExpectedVersion::Any, vec![NewEvent::new("Untagged", "{}")]).await.unwrap();
    store.append(&stream("locker-7"), ExpectedVersion::Any, vec![tagged("Released", &["locker:7"])]).await.unwrap();

    let read = store.read_stream(&stream("locker-7"), StreamVersion(0), Direction::Forward, 10).await.unwrap();
    assert_eq!(read[0].tags, vec!["locker:7".to_string(), "customer:c-1".to_string()], "tags in their order");
    let all = read_everything(&store).await;
    assert_eq!(all.iter().map(|e| e.tags.len()).collect::<Vec<_>>(), vec![2, 2, 0, 1]);

    let positions = |page: &reel_core::QueryPage| page.events.iter().map(|e| e.position.0).collect::<Vec<_>>();
    let locker7 = query(vec![QueryItem::tags(["locker:7"])]);
    let page = store.read_query(&locker7, Position(0), 100).await.unwrap();
    assert_eq!(positions(&page), vec![1, 4]);
    assert_eq!(page.head, Position(4), "the head of the read, not the last match");
    assert_eq!(page.events[1].tags, vec!["locker:7".to_string()]);
    let both_tags = query(vec![QueryItem::tags(["locker:8", "customer:c-1"])]);
    assert_eq!(positions(&store.read_query(&both_tags, Position(0), 100).await.unwrap()), vec![2]);
    let typed = query(vec![QueryItem::tags(["locker:7"]).with_types(["Released"])]);
    assert_eq!(positions(&store.read_query(&typed, Position(0), 100).await.unwrap()), vec![4]);
    let any_of = query(vec![QueryItem::tags(["locker:8"]), QueryItem::types(["Untagged"])]);
    assert_eq!(positions(&store.read_query(&any_of, Position(0), 100).await.unwrap()), vec![2, 3]);
    let customer = query(vec![QueryItem::tags(["customer:c-1"])]);
    let first = store.read_query(&customer, Position(0), 1).await.unwrap();
    assert_eq!(positions(&first), vec![1]);
    let second = store.read_query(&customer, first.next_after(1), 1).await.unwrap();
    assert_eq!(positions(&second), vec![2], "paging continues after the last event");
    let nothing = query(vec![QueryItem::tags(["locker:99"])]);
    let empty = store.read_query(&nothing, Position(0), 10).await.unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.head, Position(4));

    let filter = ReadAllFilter { tags: vec!["customer:c-1".into()], ..Default::default() };
    let page = store.read_all(Position(1), &filter, 100).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.position.0).collect::<Vec<_>>(), vec![1, 2]);
    let err = store.read_query(&Query { items: vec![] }, Position(0), 10).await.unwrap_err();
    assert!(matches!(err, ReelError::InvalidArgument(_)), "{err:?}");
}

/// A condition without `after` is a uniqueness guard; with `after`, only later events count; a
/// failed condition stores nothing and is its own error; a version conflict is still reported
/// as one; an earlier append in the same group can make a later one fail.
pub async fn conditional_appends_decide_exactly(store: Store) {
    let username = query(vec![QueryItem::tags(["username:ada"]).with_types(["UserRegistered"])]);
    let guard = AppendCondition::new(username.clone());
    let register = |user: &str| vec![tagged("UserRegistered", &["username:ada", &format!("user:{user}")])];
    let first = store.append_if(&stream("user-1"), ExpectedVersion::NoStream, register("1"), guard.clone()).await;
    assert_eq!(first.unwrap().first_position, Position(1));
    let err = store.append_if(&stream("user-2"), ExpectedVersion::NoStream, register("2"), guard.clone()).await;
    assert_eq!(err, Err(ReelError::ConditionFailed { stream: stream("user-2"), position: Position(1) }));
    assert_eq!(err.unwrap_err().code(), "condition_failed");
    assert_eq!(store.head().await.unwrap(), Position(1), "a failed condition stores nothing");
    assert_eq!(store.stream_version(&stream("user-2")).await.unwrap(), None);

    // Matching events at or before `after` were seen by the decision: they do not count.
    let after_head = guard.clone().after(Position(1));
    store
        .append_if(&stream("user-3"), ExpectedVersion::Any, vec![NewEvent::new("Other", "{}")], after_head.clone())
        .await
        .unwrap();
    let err = store.append_if(&stream("user-4"), ExpectedVersion::Any, register("4"), after_head.clone()).await;
    assert!(err.is_ok(), "an event before `after` does not count: {err:?}");
    let stale = store.append_if(&stream("user-5"), ExpectedVersion::Any, register("5"), after_head).await;
    assert!(matches!(stale, Err(ReelError::ConditionFailed { position: Position(3), .. })), "{stale:?}");

    // The version is checked as always, beside the condition.
    let wrong = store
        .append_if(
            &stream("user-1"),
            ExpectedVersion::Exact(StreamVersion(7)),
            register("1b"),
            AppendCondition::new(query(vec![QueryItem::tags(["nobody"])])),
        )
        .await;
    assert!(matches!(wrong, Err(ReelError::WrongExpectedVersion { .. })), "{wrong:?}");

    // In one group: the first request's event makes the second's condition fail.
    let seat = query(vec![QueryItem::tags(["seat:1"])]);
    let head = store.head().await.unwrap();
    let condition = AppendCondition::new(seat).after(head);
    let results = store
        .append_many(vec![
            AppendRequest::new(stream("booking-1"), ExpectedVersion::Any, vec![tagged("Booked", &["seat:1"])])
                .with_condition(condition.clone()),
            AppendRequest::new(stream("booking-2"), ExpectedVersion::Any, vec![tagged("Booked", &["seat:1"])])
                .with_condition(condition),
        ])
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    let first_position = results[0].as_ref().unwrap().first_position;
    assert_eq!(results[1], Err(ReelError::ConditionFailed { stream: stream("booking-2"), position: first_position }));
}

/// Retrying a committed conditional append (same ids) returns the original result instead of
/// failing on its own events, with the version it gave or with `Any`.
pub async fn retried_conditional_append_returns_the_original(store: Store) {
    let guard = AppendCondition::new(query(vec![QueryItem::tags(["invoice:1"])])).after(Position(0));
    let events = vec![tagged("InvoiceCreated", &["invoice:1"])];
    let s = stream("invoice-1");
    let original = store.append_if(&s, ExpectedVersion::NoStream, events.clone(), guard.clone()).await.unwrap();
    let retry = store.append_if(&s, ExpectedVersion::NoStream, events.clone(), guard.clone()).await.unwrap();
    assert_eq!(retry, original);
    let retry_any = store.append_if(&s, ExpectedVersion::Any, events.clone(), guard.clone()).await.unwrap();
    assert_eq!(retry_any, original);
    assert_eq!(store.head().await.unwrap(), Position(1), "the retry stored nothing");
    let mut other_content = events.clone();
    other_content[0].tags.push("extra".into());
    let err = store.append_if(&s, ExpectedVersion::Any, other_content, guard).await.unwrap_err();
    assert_eq!(err.code(), "duplicate_event_id", "same id, other tags: {err}");
}

/// Empty query items, an empty query, too many tags, an over-long tag, a control character in
/// a tag, a condition `after` beyond the head: refused with a clear error, nothing stored.
pub async fn bad_tags_and_conditions_change_nothing(store: Store) {
    store.append(&stream("bad-1"), ExpectedVersion::Any, vec![tagged("Ok", &["a"])]).await.unwrap();
    let ok = AppendCondition::new(query(vec![QueryItem::tags(["a"])])).after(Position(1));
    let cases: Vec<(&str, Vec<NewEvent>, Option<AppendCondition>)> = vec![
        ("17 tags", vec![NewEvent::new("E", "{}").with_tags((0..17).map(|i| format!("t{i}")))], None),
        ("a 256-byte tag", vec![NewEvent::new("E", "{}").with_tags(["x".repeat(256)])], None),
        ("an empty tag", vec![NewEvent::new("E", "{}").with_tags([""])], None),
        ("a control character in a tag", vec![NewEvent::new("E", "{}").with_tags(["a\u{1}"])], None),
        (
            "an empty query item",
            vec![NewEvent::new("E", "{}")],
            Some(AppendCondition { fail_if_events_match: Query { items: vec![QueryItem::default()] }, after: None }),
        ),
        (
            "a query without items",
            vec![NewEvent::new("E", "{}")],
            Some(AppendCondition { fail_if_events_match: Query { items: vec![] }, after: None }),
        ),
        ("an after beyond the head", vec![NewEvent::new("E", "{}")], Some(ok.clone().after(Position(2)))),
    ];
    for (what, events, condition) in cases {
        let result = match condition {
            Some(condition) => store.append_if(&stream("bad-2"), ExpectedVersion::Any, events, condition).await,
            None => store.append(&stream("bad-2"), ExpectedVersion::Any, events).await,
        };
        let err = result.expect_err(what);
        assert!(
            matches!(err, ReelError::InvalidArgument(_) | ReelError::InvalidEvent { .. } | ReelError::TooLarge { .. }),
            "{what}: {err:?}"
        );
    }
    assert_eq!(store.head().await.unwrap(), Position(1), "no bad input stored anything");
    assert!(store.append_if(&stream("bad-2"), ExpectedVersion::Any, vec![NewEvent::new("E", "{}")], ok).await.is_ok());
}

/// `n` concurrent appends to `n` streams, each conditional on no event with its tag after the
/// same head; `shared` gives them all one tag. Returns how many committed.
async fn race(store: &Store, n: usize, round: usize, shared: bool) -> usize {
    let head = store.head().await.unwrap();
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            let tag = if shared { format!("slot:{round}") } else { format!("slot:{round}-{i}") };
            tokio::spawn(async move {
                let condition = AppendCondition::new(query(vec![QueryItem::tags([tag.as_str()])])).after(head);
                let events = vec![tagged("Claimed", &[tag.as_str()])];
                barrier.wait().await;
                store
                    .append_if(&stream(&format!("claim-{round}x{i}")), ExpectedVersion::NoStream, events, condition)
                    .await
            })
        })
        .collect();
    let mut committed = 0;
    for task in tasks {
        match task.await.expect("append task") {
            Ok(_) => committed += 1,
            Err(ReelError::ConditionFailed { .. }) => {}
            Err(e) => panic!("a racing append failed otherwise: {e}"),
        }
    }
    committed
}

/// 16, 64 and 256 concurrent appends whose conditions conflict: exactly one commits; with
/// disjoint tags none is refused. Twenty rounds each.
pub async fn conflicting_conditions_commit_exactly_once(store: Store) {
    let mut round = 0;
    for n in [16, 64, 256] {
        for _ in 0..20 {
            round += 1;
            assert_eq!(race(&store, n, round, true).await, 1, "{n} conflicting appends, round {round}");
            round += 1;
            assert_eq!(race(&store, n, round, false).await, n, "{n} disjoint appends, round {round}");
        }
    }
}
