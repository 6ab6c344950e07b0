//! `reel serve` as a real process: the HTTP API, bad input, tokens and scopes, long polls, live
//! streams and subscriptions.

mod common;

use std::io::{BufRead, BufReader, Read};

use common::{lines, Cli, Served};

fn head(server: &Served) -> u64 {
    server.get("/head").body["head"].as_u64().expect("head")
}

#[test]
fn append_read_conflict_and_paging() {
    let cli = Cli::new();
    let server = cli.serve(&[]);
    let one = server.post_json("/streams/unit-PL-1001", r#"{"type":"DoorOpened","data":{"door":3}}"#);
    assert_eq!((one.status, one.body["positions"].clone()), (201, serde_json::json!([1])), "{}", one.text);
    let batch = server.post_json(
        "/streams/unit-PL-1001",
        r#"{"expected_version":0,"events":[{"type":"A","data":1},{"type":"B","data_base64":"AAE=","metadata":{"by":"t"}}]}"#,
    );
    assert_eq!(batch.status, 201, "{}", batch.text);
    assert_eq!(
        (batch.body["positions"].clone(), batch.body["next_version"].as_u64()),
        (serde_json::json!([2, 3]), Some(2))
    );

    let conflict = server.post_json("/streams/unit-PL-1001", r#"{"expected_version":0,"type":"A","data":1}"#);
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.body["error"], "wrong_expected_version");
    assert_eq!((conflict.body["expected"].as_u64(), conflict.body["actual"].as_u64()), (Some(0), Some(2)));
    let created = server.post_json("/streams/unit-PL-2", r#"{"expected_version":"no_stream","type":"A","data":1}"#);
    assert_eq!(created.status, 201);
    let exists = server.post_json("/streams/unit-PL-3", r#"{"expected_version":"exists","type":"A","data":1}"#);
    assert_eq!((exists.status, exists.body["actual"].clone()), (409, serde_json::Value::Null));

    let page = server.get("/streams/unit-PL-1001?limit=2");
    assert_eq!(page.status, 200);
    let versions: Vec<u64> =
        page.body["events"].as_array().unwrap().iter().map(|e| e["stream_version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [0, 1]);
    let next = page.body["links"]["next"].as_str().expect("a next link").to_string();
    let rest = server.get(&next);
    assert_eq!(rest.body["events"][0]["data_base64"], "AAE=");
    assert_eq!(rest.body["events"][0]["metadata"]["by"], "t");
    assert!(rest.body["links"]["next"].is_null(), "last page: {}", rest.text);
    let backward = server.get("/streams/unit-PL-1001?direction=backward&limit=1");
    assert_eq!(backward.body["events"][0]["stream_version"], 2);

    let missing = server.get("/streams/unit-PL-404");
    assert_eq!((missing.status, missing.body["error"].as_str()), (404, Some("stream_not_found")));
    let all = server.get("/all?from=2&limit=2&category=unit");
    assert_eq!(all.body["events"].as_array().unwrap().len(), 2);
    assert_eq!(all.body["next_from"], 4);
    let typed = server.get("/all?type=DoorOpened");
    assert_eq!(typed.body["events"].as_array().unwrap().len(), 1);

    // The same events through the CLI: the server wrote to the ordinary store.
    drop(server);
    assert_eq!(lines(&cli.ok(&["read", "unit-PL-1001"])).len(), 3);
}

#[test]
fn bad_input_gets_a_json_4xx_and_changes_nothing() {
    let cli = Cli::new();
    let server = cli.serve(&["--max-body-bytes", "4096"]);
    server.post_json("/streams/unit-1", r#"{"type":"A","data":1}"#);
    let before = head(&server);
    let id = "0190a6f0-0000-7000-8000-000000000001";
    let long_name = format!("/streams/{}", "x".repeat(300));
    // 130 × "é" percent-encoded: 260 bytes once decoded.
    let long_encoded = format!("/streams/{}", "%C3%A9".repeat(130));
    let big_batch =
        format!(r#"{{"events":[{}]}}"#, (0..200).map(|_| r#"{"type":"A","data":1}"#).collect::<Vec<_>>().join(","));
    let json = Some("application/json");
    // (what, path, content type, body, status, error code)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("invalid JSON", "/streams/unit-1", json, b"{\"type\":".to_vec(), 400, "invalid_json"),
        ("wrong field type", "/streams/unit-1", json, br#"{"type":5,"data":1}"#.to_vec(), 400, "invalid_body"),
        ("missing type", "/streams/unit-1", json, br#"{"data":1}"#.to_vec(), 400, "invalid_event"),
        (
            "missing type in a batch",
            "/streams/unit-1",
            json,
            br#"{"events":[{"data":1}]}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "unknown expected_version",
            "/streams/unit-1",
            json,
            br#"{"expected_version":"latest","type":"A","data":1}"#.to_vec(),
            400,
            "invalid_expected_version",
        ),
        (
            "negative version",
            "/streams/unit-1",
            json,
            br#"{"expected_version":-1,"type":"A","data":1}"#.to_vec(),
            400,
            "invalid_expected_version",
        ),
        (
            "huge version",
            "/streams/unit-1",
            json,
            br#"{"expected_version":18446744073709551615,"type":"A","data":1}"#.to_vec(),
            400,
            "invalid_expected_version",
        ),
        (
            "fractional version",
            "/streams/unit-1",
            json,
            br#"{"expected_version":1.5,"type":"A","data":1}"#.to_vec(),
            400,
            "invalid_expected_version",
        ),
        (
            "invalid UUID",
            "/streams/unit-1",
            json,
            br#"{"type":"A","data":1,"id":"not-a-uuid"}"#.to_vec(),
            400,
            "invalid_event",
        ),
        (
            "control character in the name",
            "/streams/unit%01x",
            json,
            br#"{"type":"A","data":1}"#.to_vec(),
            400,
            "invalid_stream_name",
        ),
        (
            "name over the limit, percent-encoded",
            &long_encoded,
            json,
            br#"{"type":"A","data":1}"#.to_vec(),
            400,
            "invalid_stream_name",
        ),
        (
            "invalid UTF-8 in the name",
            "/streams/unit-%FF",
            json,
            br#"{"type":"A","data":1}"#.to_vec(),
            400,
            "invalid_path",
        ),
        ("name over the limit", &long_name, json, br#"{"type":"A","data":1}"#.to_vec(), 400, "invalid_stream_name"),
        ("empty batch", "/streams/unit-1", json, br#"{"events":[]}"#.to_vec(), 400, "invalid_body"),
        ("body over the limit", "/streams/unit-1", json, big_batch.clone().into_bytes(), 413, "too_large"),
        (
            "wrong content type",
            "/streams/unit-1",
            Some("text/plain"),
            br#"{"type":"A","data":1}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            "/streams/unit-1",
            None,
            br#"{"type":"A","data":1}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "non-UTF-8 body",
            "/streams/unit-1",
            json,
            b"{\"type\":\"A\",\"data\":\"\xff\xfe\"}".to_vec(),
            400,
            "invalid_encoding",
        ),
        (
            "duplicate ids in one batch",
            "/streams/unit-1",
            json,
            format!(r#"{{"events":[{{"type":"A","data":1,"id":"{id}"}},{{"type":"B","data":2,"id":"{id}"}}]}}"#)
                .into_bytes(),
            400,
            "invalid_event",
        ),
        (
            "event and batch at once",
            "/streams/unit-1",
            json,
            br#"{"type":"A","data":1,"events":[{"type":"A","data":1}]}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "metadata not an object",
            "/streams/unit-1",
            json,
            br#"{"type":"A","data":1,"metadata":[1]}"#.to_vec(),
            400,
            "invalid_event",
        ),
        (
            "empty CloudEvents batch",
            "/streams/unit-1",
            Some("application/cloudevents-batch+json"),
            b"[]".to_vec(),
            400,
            "invalid_body",
        ),
        (
            "CloudEvent without source",
            "/streams/unit-1",
            Some("application/cloudevents-batch+json"),
            br#"[{"specversion":"1.0","id":"1","type":"A"}]"#.to_vec(),
            400,
            "invalid_event",
        ),
    ];
    for (what, path, content_type, body, status, code) in &cases {
        let answer = server.call("POST", path, *content_type, body, None);
        assert_eq!((answer.status, answer.body["error"].as_str()), (*status, Some(*code)), "{what}: {}", answer.text);
        assert!(answer.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: a message");
    }
    for (what, path, status) in [
        ("limit 0", "/all?limit=0", 400),
        ("limit over the maximum", "/all?limit=100000", 400),
        ("from negative", "/all?from=-1", 400),
        ("from not a number", "/streams/unit-1?from=abc", 400),
        ("wait too long", "/all?wait=100000", 400),
        ("unknown direction", "/streams/unit-1?direction=sideways", 400),
        ("unknown route", "/nope", 404),
    ] {
        let answer = server.get(path);
        assert_eq!(answer.status, status, "{what}: {}", answer.text);
        assert!(answer.body["error"].is_string(), "{what}: JSON error body: {}", answer.text);
    }
    let unknown = server.call("POST", "/subscriptions/nobody/pause", None, b"", None);
    assert_eq!((unknown.status, unknown.body["error"].as_str()), (404, Some("subscription_not_found")));
    assert_eq!(head(&server), before, "no bad request stored anything");

    // The store's batch and event limits, through the API.
    drop(server);
    let tight = cli.serve(&["--max-batch-events", "10", "--max-event-bytes", "1000"]);
    let over = tight.call("POST", "/streams/unit-1", json, big_batch.as_bytes(), None);
    assert_eq!((over.status, over.body["error"].as_str()), (413, Some("too_large")), "batch: {}", over.text);
    let big_event = format!(r#"{{"type":"A","data":"{}"}}"#, "x".repeat(3000));
    let over = tight.post_json("/streams/unit-1", &big_event);
    assert_eq!((over.status, over.body["error"].as_str()), (413, Some("too_large")), "event: {}", over.text);
    assert_eq!(head(&tight), before);
}

#[test]
fn tokens_scopes_and_revocation() {
    let cli = Cli::new();
    let refused = cli.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(refused.status.code(), Some(2), "a non-loopback address without tokens is refused");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("without tokens") && stderr.trim_end().lines().count() == 1, "{stderr}");

    let token = |scopes: &[&str]| {
        let mut args = vec!["token", "create", "--name", "test"];
        for scope in scopes {
            args.extend(["--scope", scope]);
        }
        let created: serde_json::Value = serde_json::from_str(&cli.ok(&args)).unwrap();
        (created["token"].as_str().unwrap().to_string(), created["id"].as_str().unwrap().to_string())
    };
    let (admin, _) = token(&["admin"]);
    let (unit, unit_id) = token(&["write:unit-PL-1001", "read:unitconfig-PL-1001", "read:unit-*"]);
    cli.fails(&["token", "create", "--scope", "root"], 2);
    cli.fails(&["token", "create", "--scope", "write:$tokens"], 2);
    let listed = lines(&cli.ok(&["token", "list"]));
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|t| t.get("secret_sha256").is_none() && t.get("token").is_none()), "no secrets listed");

    let server = cli.serve(&["--require-tokens"]);
    let event = br#"{"type":"DoorOpened","data":{}}"#;
    let post =
        |path: &str, token: Option<&str>| server.call("POST", path, Some("application/json"), event, token).status;
    let get = |path: &str, token: Option<&str>| server.call("GET", path, None, b"", token);
    assert_eq!(post("/streams/unit-PL-1001", None), 401, "no token");
    assert_eq!(post("/streams/unit-PL-1001", Some("reel_0000_nope")), 401, "bad token");
    let wrong_secret = format!("{}x", &unit[..unit.len() - 1]);
    assert_eq!(post("/streams/unit-PL-1001", Some(&wrong_secret)), 401, "right id, wrong secret");
    assert_eq!(post("/streams/unit-PL-1001", Some(&unit)), 201, "in scope");
    assert_eq!(post("/streams/unit-PL-1002", Some(&unit)), 403, "another unit's stream");
    assert_eq!(post("/streams/unitconfig-PL-1001", Some(&unit)), 403, "read-only scope");
    assert_eq!(post("/streams/unitconfig-PL-1001", Some(&admin)), 201);
    assert_eq!(get("/streams/unitconfig-PL-1001", Some(&unit)).status, 200);
    assert_eq!(get("/streams/unit-PL-1001", Some(&unit)).status, 200, "read:unit-*");
    assert_eq!(get("/all", Some(&unit)).status, 403, "the whole log needs read:*");
    assert_eq!(post("/streams/unit", Some(&admin)), 201, "a stream named just `unit`, outside read:unit-*");
    let by_category = get("/all?category=unit", Some(&unit));
    assert_eq!(by_category.status, 200, "its categories are fine");
    let seen: Vec<&str> =
        by_category.body["events"].as_array().unwrap().iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert!(seen.contains(&"unit-PL-1001") && !seen.contains(&"unit"), "only streams it may read: {seen:?}");
    assert_eq!(get("/streams/$tokens", Some(&unit)).status, 403, "reserved streams");
    assert_eq!(get("/subscriptions", Some(&unit)).status, 403, "admin only");
    assert_eq!(get("/metrics", Some(&unit)).status, 403, "admin only");
    assert_eq!(get("/subscriptions", Some(&admin)).status, 200);
    assert_eq!(get("/metrics", Some(&admin)).status, 200);
    assert_eq!(get("/health", None).status, 200, "health needs no token");
    let forbidden = get("/all", Some(&unit));
    assert_eq!(forbidden.body["error"], "forbidden");
    let (reader, _) = token(&["read:*"]);
    let everything = get("/all", Some(&reader));
    assert_eq!(everything.status, 200, "{}", everything.text);
    let streams: Vec<&str> =
        everything.body["events"].as_array().unwrap().iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert!(
        !streams.is_empty() && streams.iter().all(|s| !s.starts_with('$')),
        "read:* never shows $tokens: {streams:?}"
    );
    assert!(get("/all", Some(&admin)).text.contains("$tokens"), "admin sees everything");

    cli.ok(&["token", "revoke", &unit_id]);
    cli.fails(&["token", "revoke", &unit_id], 2);
    cli.fails(&["token", "revoke", "nosuchid"], 2);
    let started = std::time::Instant::now();
    while post("/streams/unit-PL-1001", Some(&unit)) != 401 {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the revocation never took effect");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn long_poll_answers_when_an_event_arrives() {
    let cli = Cli::new();
    let server = cli.serve(&[]);
    server.post_json("/streams/unit-1", r#"{"type":"A","data":1}"#);
    let base = server.base.clone();
    let poll = std::thread::spawn(move || {
        let text = common::http().get(format!("{base}/all?from=2&wait=30")).send().unwrap().text().unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!poll.is_finished(), "nothing past 1 yet: the poll waits");
    server.post_json("/streams/unit-2", r#"{"type":"B","data":2}"#);
    let page = poll.join().unwrap();
    assert_eq!(page["events"][0]["position"], 2, "{page}");
    let empty = server.get("/all?from=3&wait=1");
    assert_eq!((empty.status, empty.body["events"].as_array().map(Vec::len)), (200, Some(0)), "timed out empty");
    let moved = server.get("/head?after=1&wait=1");
    assert_eq!(moved.body["head"], 2);
}

#[test]
fn a_long_poll_on_one_stream_answers_when_that_stream_grows_and_not_for_others() {
    let cli = Cli::new();
    let server = cli.serve(&[]);
    let base = server.base.clone();
    // The stream does not exist yet: the poll waits for it.
    let poll = std::thread::spawn(move || {
        let text =
            common::http().get(format!("{base}/streams/unitconfig-9?from=0&wait=30")).send().unwrap().text().unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    server.post_json("/streams/unit-9", r#"{"type":"Other","data":1}"#);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!poll.is_finished(), "an event of another stream does not answer it");
    server.post_json("/streams/unitconfig-9", r#"{"type":"PriceSet","data":{"price":2}}"#);
    let page = poll.join().unwrap();
    assert_eq!(page["events"][0]["type"], "PriceSet", "{page}");
    // Past the end, it waits and answers empty; a stream that never appears answers 404.
    let empty = server.get("/streams/unitconfig-9?from=1&wait=1");
    assert_eq!((empty.status, empty.body["events"].as_array().map(Vec::len)), (200, Some(0)));
    assert_eq!(server.get("/streams/unitconfig-10?wait=1").status, 404);
    let refused = server.get("/streams/unitconfig-9?direction=backward&wait=1");
    assert_eq!((refused.status, refused.body["error"].as_str()), (400, Some("invalid_query")));
    assert_eq!(server.get("/streams/unitconfig-9?wait=61").status, 400, "beyond the server's maximum");
}

/// Reads SSE frames (blank-line separated) from a live response.
fn frames(reader: &mut impl BufRead, count: usize) -> Vec<String> {
    let mut frames = Vec::new();
    let mut frame = String::new();
    while frames.len() < count {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended after {frames:?}");
        if line == "\n" {
            frames.push(std::mem::take(&mut frame));
        } else {
            frame.push_str(&line);
        }
    }
    frames
}

/// The next `count` frames that carry events, skipping heartbeats (comment-only frames), which
/// a loaded machine may send before the first event arrives.
fn event_frames(reader: &mut impl BufRead, count: usize) -> Vec<String> {
    // Heartbeats come at least every 15 s, so a missing event fails here instead of hanging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut events = Vec::new();
    while events.len() < count {
        assert!(std::time::Instant::now() < deadline, "only {} of {count} events arrived in 60 s", events.len());
        let frame = frames(reader, 1).remove(0);
        if !frame.lines().all(|line| line.starts_with(':')) {
            events.push(frame);
        }
    }
    events
}

#[test]
fn live_streams_resume_with_last_event_id_and_send_heartbeats() {
    let cli = Cli::new();
    let server = cli.serve(&["--heartbeat", "1"]);
    for i in 0..3 {
        server.post_json(&format!("/streams/unit-{i}"), r#"{"type":"A","data":1}"#);
    }
    let response = common::http().get(format!("{}/all/live", server.base)).header("Last-Event-ID", "1").send().unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut reader = BufReader::new(response);
    let caught_up = frames(&mut reader, 2);
    assert!(caught_up[0].starts_with("id: 2\n") && caught_up[1].starts_with("id: 3\n"), "{caught_up:?}");
    server.post_json("/streams/unit-9", r#"{"type":"Live","data":{"n":9}}"#);
    let live = frames(&mut reader, 1);
    assert!(live[0].contains("id: 4\n") && live[0].contains(r#""type":"Live""#), "{live:?}");
    let quiet = frames(&mut reader, 1);
    assert!(quiet[0].starts_with(":heartbeat") || quiet[0].contains(": heartbeat"), "a heartbeat: {quiet:?}");

    let one = common::http().get(format!("{}/streams/unit-9/live?from=1", server.base)).send().unwrap();
    let mut reader = BufReader::new(one);
    let mine = frames(&mut reader, 1);
    assert!(mine[0].starts_with("id: 4\n"), "only its stream: {mine:?}");
}

#[test]
fn a_live_client_that_stops_reading_is_dropped_with_a_final_event() {
    let cli = Cli::new();
    let server = cli.serve(&["--live-buffer", "16"]);
    let response = common::http().get(format!("{}/all/live", server.base)).send().unwrap();
    let mut reader = BufReader::new(response);
    // Far more than the socket buffers hold, while this client reads nothing.
    let payload = format!(r#"{{"type":"Big","data":"{}"}}"#, "x".repeat(4000));
    let batch = format!(r#"{{"events":[{}]}}"#, vec![payload.as_str(); 500].join(","));
    for _ in 0..20 {
        assert_eq!(server.post_json("/streams/unit-1", &batch).status, 201);
    }
    let mut text = String::new();
    let mut chunk = vec![0u8; 1 << 16];
    let started = std::time::Instant::now();
    while !text.contains("event: dropped") {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "never dropped");
        let n = reader.read(&mut chunk).unwrap();
        assert!(n > 0, "the stream ended without a final event");
        text = String::from_utf8_lossy(&chunk[..n]).to_string() + &text[text.len().saturating_sub(100)..];
    }
    assert!(text.contains("resume_from"), "says where to resume: {text}");
    assert_eq!(head(&server), 10_000, "the log itself is whole");
}

#[test]
fn subscriptions_are_listed_paused_and_reactivated() {
    let cli = Cli::new();
    cli.ok(&["append", "unit-1", "--type", "A", "--data", "{}"]);
    let out = cli.command().args(["consume", "reporter", "--mode", "once", "--print"]).output().unwrap();
    assert!(out.status.success());
    cli.ok(&["append", "unit-1", "--type", "A", "--data", "{}"]);
    let server = cli.serve(&[]);
    let listed = server.get("/subscriptions");
    let s = &listed.body["subscriptions"][0];
    assert_eq!(
        (s["id"].as_str(), s["status"].as_str(), s["lag"].as_u64()),
        (Some("reporter"), Some("finished"), Some(1))
    );
    let reactivated = server.call("POST", "/subscriptions/reporter/reactivate", None, b"", None);
    assert_eq!((reactivated.status, reactivated.body["subscription"]["status"].as_str()), (200, Some("active")));
    let paused = server.call("POST", "/subscriptions/reporter/pause", None, b"", None);
    assert_eq!(paused.body["subscription"]["status"], "paused");
    let again = server.call("POST", "/subscriptions/reporter/pause", None, b"", None);
    assert!(again.status == 200 || again.status == 409, "{}", again.text);
    let metrics = server.get("/metrics").text;
    assert!(metrics.contains(r#"reel_subscription_lag{subscription="reporter"} 1"#), "{metrics}");
    assert!(metrics.contains("reel_http_requests_total{status=\"200\"}"), "{metrics}");
    let removed = server.call("POST", "/subscriptions/reporter/remove", None, b"", None);
    assert_eq!((removed.status, removed.body["subscription"].clone()), (200, serde_json::Value::Null));
    assert_eq!(server.get("/subscriptions").body["subscriptions"], serde_json::json!([]));
}

#[test]
fn a_cloudevents_batch_is_stored_once_even_when_redelivered() {
    let cli = Cli::new();
    let server = cli.serve(&[]);
    let batch = br#"[{"specversion":"1.0","id":"evt-1","source":"/lockers/PL-1001","type":"DoorOpened","data":{"door":2},"time":"2026-11-23T10:00:00Z"},
                     {"specversion":"1.0","id":"evt-2","source":"/lockers/PL-1001","type":"DoorClosed","data_base64":"AAE="}]"#;
    let ce = Some("application/cloudevents-batch+json");
    let first = server.call("POST", "/streams/unit-PL-1001?expected_version=no_stream", ce, batch, None);
    assert_eq!(first.status, 201, "{}", first.text);
    let again = server.call("POST", "/streams/unit-PL-1001?expected_version=no_stream", ce, batch, None);
    assert_eq!(
        (again.status, again.body["positions"].clone()),
        (201, first.body["positions"].clone()),
        "{}",
        again.text
    );
    assert_eq!(head(&server), 2);
    let stored = server.get("/streams/unit-PL-1001");
    let event = &stored.body["events"][0];
    assert_eq!((event["type"].as_str(), event["data"]["door"].as_u64()), (Some("DoorOpened"), Some(2)));
    assert_eq!(event["metadata"]["cloudevents"]["source"], "/lockers/PL-1001");
    assert_eq!(event["metadata"]["cloudevents"]["time"], "2026-11-23T10:00:00Z");
    assert_eq!(stored.body["events"][1]["data_base64"], "AAE=");
}

#[test]
fn the_cli_works_against_a_remote_server_with_a_token() {
    let server_side = Cli::new();
    let created: serde_json::Value =
        serde_json::from_str(&server_side.ok(&["token", "create", "--scope", "admin", "--name", "ops"])).unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let server = server_side.serve(&["--require-tokens"]);

    let remote = Cli::new();
    let run = |args: &[&str]| {
        let out =
            remote.command().env("REEL_STORE", &server.base).env("REEL_TOKEN", &token).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&["append", "unit-PL-1001", "--type", "DoorOpened", "--data", r#"{"door":3}"#]);
    assert_eq!(code, Some(0), "{err}");
    // Position 1 is the token's own event, in the reserved `$tokens` stream.
    assert!(out.contains(r#""first_position":2"#), "{out}");
    let (code, _, err) = run(&["append", "unit-PL-1001", "--type", "X", "--data", "{}", "--expected-version", "5"]);
    assert_eq!(code, Some(3), "a conflict is exit 3 remotely too: {err}");
    let (_, out, _) = run(&["read", "unit-PL-1001"]);
    assert_eq!(lines(&out)[0]["data"]["door"], 3);
    let (code, _, _) = run(&["read", "unit-PL-404"]);
    assert_eq!(code, Some(5));
    let (_, out, _) = run(&["read-all", "--category", "unit"]);
    assert_eq!(lines(&out).len(), 1);
    let (code, out, err) = run(&["consume", "remote_1", "--mode", "once", "--print"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines(&out).len(), 1, "the consumer read the remote log");
    assert!(remote.path("reel-data/subscriptions.db").exists(), "its position is kept locally");
    assert_eq!(server_side.head(), 2, "and the events live on the server's store");

    let out = remote
        .command()
        .env("REEL_STORE", &server.base)
        .env("REEL_TOKEN", "reel_0000_wrong")
        .args(["read", "unit-PL-1001"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a refused token is the caller's mistake");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401") && stderr.trim_end().lines().count() == 1, "{stderr}");
}

#[test]
fn slow_headers_and_idle_connections_are_closed_after_the_header_timeout() {
    use std::io::Write;
    use std::net::TcpStream;
    let cli = Cli::new();
    let server = cli.serve(&["--header-timeout", "1"]);
    let address = server.base.trim_start_matches("http://").to_string();
    let closed_within = |mut socket: TcpStream| {
        socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        // Ends (EOF) when the server closes; a read timeout here would mean it kept the connection.
        socket.read_to_end(&mut rest).map(|_| rest)
    };
    // Headers that never finish.
    let mut slow = TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let answer = closed_within(slow).expect("the server closed a connection whose headers never finished");
    assert!(answer.is_empty() || String::from_utf8_lossy(&answer).contains("408"), "{answer:?}");
    // A keep-alive connection left idle after one request.
    let mut idle = TcpStream::connect(&address).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = closed_within(idle).expect("the server closed an idle keep-alive connection");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "the request itself was answered");
}

#[test]
fn sigterm_ends_live_streams_with_a_final_event_and_exits_cleanly() {
    let cli = Cli::new();
    let mut server = cli.serve(&[]);
    server.post_json("/streams/unit-1", r#"{"type":"A","data":1}"#);
    let response = common::http().get(format!("{}/all/live?from=1", server.base)).send().unwrap();
    let mut reader = BufReader::new(response);
    assert!(frames(&mut reader, 1)[0].starts_with("id: 1\n"));
    let status = std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let last = frames(&mut reader, 1);
    assert!(last[0].starts_with("event: shutdown\n") && last[0].contains("\"resume_from\":2"), "{last:?}");
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "exit 0 after a graceful stop: {exit}");
}

#[test]
fn the_api_works_on_postgres_too() {
    let cli = Cli::postgres();
    let server = cli.serve(&[]);
    let response = common::http().get(format!("{}/all/live", server.base)).send().unwrap();
    let mut live = BufReader::new(response);
    let first =
        server.post_json("/streams/unit-PL-1001", r#"{"expected_version":"no_stream","type":"DoorOpened","data":{}}"#);
    assert_eq!((first.status, first.body["positions"].clone()), (201, serde_json::json!([1])), "{}", first.text);
    let conflict =
        server.post_json("/streams/unit-PL-1001", r#"{"expected_version":"no_stream","type":"DoorOpened","data":{}}"#);
    assert_eq!(conflict.status, 409);
    assert!(event_frames(&mut live, 1)[0].starts_with("id: 1\n"), "the live tail wakes through LISTEN/NOTIFY");
    let page = server.get("/all?from=1");
    assert_eq!(page.body["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(server.get("/health").body["status"], "ok");
}

/// Tags and conditions over HTTP: `POST /query` with the head of the read, a conditional append
/// that fails with 409 `condition_failed` and the first matching position, bad queries and
/// conditions as 400 storing nothing, `?tag=` on `/all`, and a token that may not read the whole
/// log refused a condition.
#[test]
fn queries_and_conditional_appends_over_http() {
    let cli = Cli::new();
    let server = cli.serve(&[]);
    let reserve = |stream: &str, after: u64| {
        server.post_json(
            &format!("/streams/{stream}"),
            &format!(
                r#"{{"expected_version":"no_stream","type":"LockerReserved","data":{{"from":1}},"tags":["locker:7","customer:c-1"],
                   "condition":{{"fail_if_events_match":{{"items":[{{"types":["LockerReserved"],"tags":["locker:7"]}}]}},"after":{after}}}}}"#
            ),
        )
    };
    let query = r#"{"items":[{"types":["LockerReserved"],"tags":["locker:7"]}]}"#;
    let read = server.post_json("/query", query);
    assert_eq!((read.status, read.body["head"].as_u64()), (200, Some(0)), "{}", read.text);
    let first = reserve("reservation-r1", 0);
    assert_eq!(first.status, 201, "{}", first.text);
    let second = reserve("reservation-r2", 0);
    assert_eq!(second.status, 409, "{}", second.text);
    assert_eq!(second.body["error"], "condition_failed");
    assert_eq!((second.body["position"].as_u64(), second.body["stream"].as_str()), (Some(1), Some("reservation-r2")));

    let read = server.post_json("/query", query);
    assert_eq!(read.body["events"][0]["tags"], serde_json::json!(["locker:7", "customer:c-1"]));
    assert_eq!((read.body["head"].as_u64(), read.body["next_after"].as_u64()), (Some(1), Some(1)));
    let paged = server.post_json("/query", r#"{"items":[{"tags":["customer:c-1"]}],"after":1,"limit":5}"#);
    assert_eq!(paged.body["events"].as_array().unwrap().len(), 0);

    for (path, body) in [
        ("/query", r#"{"items":[]}"#),
        ("/query", r#"{"items":[{}]}"#),
        ("/query", r#"{"items":[{"tags":[""]}]}"#),
        ("/query", r#"{"items":[{"tags":["a"]}],"limit":0}"#),
        ("/query", r#"{"items":[{"tags":["a"]}],"surprise":1}"#),
        ("/streams/x-1", r#"{"type":"T","data":1,"tags":["bad\u0001tag"]}"#),
        ("/streams/x-1", r#"{"type":"T","data":1,"condition":{"fail_if_events_match":{"items":[{}]}}}"#),
        (
            "/streams/x-1",
            r#"{"type":"T","data":1,"condition":{"fail_if_events_match":{"items":[{"tags":["a"]}]},"after":99}}"#,
        ),
        ("/streams/x-1", r#"{"type":"T","data":1,"condition":{"fail_if":{}}}"#),
    ] {
        let answer = server.post_json(path, body);
        assert_eq!(answer.status, 400, "{path} {body}: {}", answer.text);
        assert!(answer.body["error"].is_string() && answer.body["message"].is_string(), "{}", answer.text);
    }
    let too_many = format!(
        r#"{{"type":"T","data":1,"tags":[{}]}}"#,
        (0..17).map(|i| format!("\"t{i}\"")).collect::<Vec<_>>().join(",")
    );
    assert_eq!(server.post_json("/streams/x-1", &too_many).status, 413);
    assert_eq!(head(&server), 1, "nothing bad was stored");

    let tagged = server.get("/all?tag=locker:7");
    assert_eq!(tagged.body["events"].as_array().unwrap().len(), 1);
    assert!(tagged.body["links"]["next"].as_str().unwrap().contains("tag=locker%3A7"), "{}", tagged.text);
    assert_eq!(server.get("/all?tag=locker:8").body["events"].as_array().unwrap().len(), 0);
    drop(server);

    let created: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "token",
        "create",
        "--name",
        "unit",
        "--scope",
        "write:unit-*",
        "--scope",
        "read:unit-*",
    ]))
    .unwrap();
    let unit = created["token"].as_str().unwrap().to_string();
    let server = cli.serve(&["--require-tokens"]);
    let conditional = br#"{"type":"T","data":1,"condition":{"fail_if_events_match":{"items":[{"tags":["a"]}]}}}"#;
    let refused = server.call("POST", "/streams/unit-1", Some("application/json"), conditional, Some(&unit));
    assert_eq!((refused.status, refused.body["error"].as_str()), (403, Some("forbidden")), "{}", refused.text);
    let query = server.call("POST", "/query", Some("application/json"), br#"{"items":[{"tags":["a"]}]}"#, Some(&unit));
    assert_eq!(query.status, 403);
}
