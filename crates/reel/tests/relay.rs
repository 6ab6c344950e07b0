//! `reel relay redis` as a real process against the real Redis at 127.0.0.1:6379.

mod common;

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{write, Cli};

fn redis() -> redis::Connection {
    redis::Client::open("redis://127.0.0.1:6379")
        .and_then(|c| c.get_connection())
        .expect("Redis must be running at 127.0.0.1:6379 (.ci/run starts it)")
}

fn spawn_relay(cli: &Cli, args: &[&str]) -> Child {
    cli.command().args(["relay", "redis"]).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the subscription `id` has saved `position`.
fn wait_for_position(cli: &Cli, id: &str, position: u64) {
    wait_until("the position saved at the head", || {
        let listed = cli.ok(&["subscriptions", "list", "--json", "--id", id]);
        let row: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap_or("null")).unwrap();
        row["position"].as_u64() == Some(position)
    });
}

/// Entries of `key`: (entry id, stream, stream version, event id).
fn entries(connection: &mut redis::Connection, key: &str) -> Vec<(String, String, u64, String)> {
    let reply: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(connection).unwrap();
    reply
        .into_iter()
        .map(|(id, flat)| {
            let fields: HashMap<String, String> = flat
                .chunks(2)
                .map(|p| (String::from_utf8_lossy(&p[0]).into_owned(), String::from_utf8_lossy(&p[1]).into_owned()))
                .collect();
            (
                id,
                fields["reel-stream"].clone(),
                fields["reel-stream-version"].parse().unwrap(),
                fields["reel-event-id"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_relay_killed_mid_way_resumes_with_nothing_lost_duplicated_or_reordered() {
    let cli = Cli::new();
    let prefix = format!("reeltest:{}", uuid::Uuid::new_v4());
    let file = cli.path("events.ndjson");
    let lines: String = (0..100).map(|i| format!("{{\"type\":\"Counted\",\"data\":{{\"i\":{i}}}}}\n")).collect();
    write(&file, &lines);
    for s in 0..40 {
        cli.ok(&["append", &format!("unit-{s}"), "--file", file.to_str().unwrap()]);
    }
    let key = format!("{prefix}:{{category}}");
    let stream_key = format!("{prefix}:unit");
    let mut connection = redis();
    let length = |c: &mut redis::Connection| -> u64 { redis::cmd("XLEN").arg(&stream_key).query(c).unwrap() };

    let mut relay = spawn_relay(&cli, &["relay_1", "--key", &key, "--batch", "20"]);
    wait_until("some events relayed", || length(&mut connection) >= 200);
    relay.kill().unwrap(); // SIGKILL
    relay.wait().unwrap();
    let before = length(&mut connection);
    assert!(before < 4_000, "killed mid-way ({before} relayed)");

    let mut relay = spawn_relay(&cli, &["relay_1", "--key", &key, "--batch", "20"]);
    wait_until("every event relayed", || length(&mut connection) >= 4_000);
    wait_for_position(&cli, "relay_1", 4_000);
    std::process::Command::new("kill").arg("-TERM").arg(relay.id().to_string()).status().unwrap();
    assert!(relay.wait().unwrap().success());

    let relayed = entries(&mut connection, &stream_key);
    assert_eq!(relayed.len(), 4_000, "every event exactly once");
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for (i, (id, stream, version, _)) in relayed.iter().enumerate() {
        assert_eq!(id, &format!("{}-0", i + 1), "entry ids are the positions, in order");
        let expected = versions.get(stream.as_str()).map_or(0, |v| v + 1);
        assert_eq!(*version, expected, "{stream} in order");
        versions.insert(stream, *version);
    }
    let _: () = redis::cmd("DEL").arg(&stream_key).query(&mut connection).unwrap();
}

#[test]
fn bad_relay_flags_are_refused_with_a_reason() {
    let cli = Cli::new();
    let error = cli.fails(&["relay", "redis", "relay_1", "--key", "reel:{nope}"], 2);
    assert!(error.contains("unknown placeholder {nope}"), "{error}");
    let error = cli.fails(&["relay", "redis", "relay_1", "--url", "http://127.0.0.1:6379"], 2);
    assert!(error.contains("redis:// URL"), "{error}");
    // Checked before anything connects: the brokers below do not exist, yet the answer is the flag.
    let error = cli.fails(&["relay", "redis", "relay_1", "--url", "redis://127.0.0.1:1", "--partitions", "7"], 2);
    assert!(error.contains("--partitions must be 16, 256 or 4096"), "{error}");
    let error = cli.fails(&["relay", "nats", "relay_1", "--url", "nats://127.0.0.1:1", "--stream", "a.b"], 2);
    assert!(error.contains("not a JetStream stream name"), "{error}");
    let error = cli.fails(&["relay", "nats", "relay_1", "--duplicate-window", "0"], 2);
    assert!(error.contains("--duplicate-window"), "{error}");
    let error = cli.fails(&["relay", "nats", "relay_1", "--url", "nats://127.0.0.1:1", "--start-time", "yesterday"], 2);
    assert!(error.contains("not an RFC 3339 time"), "{error}");
    let error = cli.fails(&["relay", "kafka", "relay_1", "--brokers", "kafka://127.0.0.1:1"], 2);
    assert!(error.contains("--brokers must be host:port"), "{error}");
    let error = cli.fails(&["relay", "kafka", "relay_1", "--brokers", "127.0.0.1:1", "--topic", "t.{what}"], 2);
    assert!(error.contains("unknown placeholder {what}"), "{error}");
    let error = cli.fails(&["bridge", "mqtt", "bridge_1", "--url", "tcp://127.0.0.1:1883"], 2);
    assert!(error.contains("mqtt://host:port"), "{error}");
    let error = cli.fails(&["bridge", "mqtt", "bridge_1", "--events-topic", "devices/#"], 2);
    assert!(error.contains("exactly one `+`"), "{error}");
}

/// The JetStream relay as a real process, killed with SIGKILL mid-way and started again: the
/// stream ends with every event once (the broker dropped the replayed ones by `Nats-Msg-Id`)
/// and each Reel stream's events in order.
#[test]
fn a_nats_relay_killed_mid_way_resumes_with_nothing_lost_duplicated_or_reordered() {
    use futures_util::StreamExt;
    let cli = Cli::new();
    let file = cli.path("events.ndjson");
    let lines: String = (0..100).map(|i| format!("{{\"type\":\"Counted\",\"data\":{{\"i\":{i}}}}}\n")).collect();
    write(&file, &lines);
    for s in 0..40 {
        cli.ok(&["append", &format!("unit-{s}"), "--file", file.to_str().unwrap()]);
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (stream, subject) = (format!("RT{}", tag.to_uppercase()), format!("rt{tag}.{{category}}.{{stream}}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let js = runtime.block_on(async {
        let client = async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("NATS with JetStream must run at 127.0.0.1:4222 (.ci/run starts it)");
        async_nats::jetstream::new(client)
    });
    let stored = || -> u64 {
        runtime.block_on(async {
            match js.get_stream(&stream).await {
                Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
                Err(_) => 0,
            }
        })
    };
    let spawn = || {
        cli.command()
            .args(["relay", "nats", "nats_1", "--stream", &stream, "--subject", &subject, "--batch", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    let mut relay = spawn();
    wait_until("some events relayed", || stored() >= 200);
    relay.kill().unwrap(); // SIGKILL
    relay.wait().unwrap();
    assert!(stored() < 4_000, "killed mid-way ({} relayed)", stored());
    let mut relay = spawn();
    wait_for_position(&cli, "nats_1", 4_000);
    std::process::Command::new("kill").arg("-TERM").arg(relay.id().to_string()).status().unwrap();
    assert!(relay.wait().unwrap().success());
    assert_eq!(stored(), 4_000, "every event exactly once: the replay after the kill was dropped by id");

    // Every message in stream order: each Reel stream's versions count up from 0, positions rise.
    let received: Vec<(u64, String, u64)> = runtime.block_on(async {
        let consumer = js
            .get_stream(&stream)
            .await
            .unwrap()
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap().take(4_000);
        let mut received = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.unwrap();
            let headers = message.headers.clone().unwrap();
            let header = |name: &str| headers.get(name).unwrap().to_string();
            received.push((
                header("reel-position").parse().unwrap(),
                header("reel-stream"),
                header("reel-stream-version").parse().unwrap(),
            ));
            message.ack().await.unwrap();
        }
        received
    });
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut last_position = 0;
    for (position, reel_stream, version) in received {
        assert!(position > last_position, "positions rise in the stream: {position} after {last_position}");
        last_position = position;
        let expected = versions.get(&reel_stream).map_or(0, |v| v + 1);
        assert_eq!(version, expected, "{reel_stream} in order");
        versions.insert(reel_stream, version);
    }
    assert_eq!(last_position, 4_000);
    runtime.block_on(async { js.delete_stream(&stream).await.unwrap() });
}
