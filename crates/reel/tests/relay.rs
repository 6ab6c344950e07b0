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

/// The position the subscription `id` has saved (0 before it exists).
fn saved_position(cli: &Cli, id: &str) -> u64 {
    let listed = cli.ok(&["subscriptions", "list", "--json", "--id", id]);
    let row: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap_or("null")).unwrap();
    row["position"].as_u64().unwrap_or(0)
}

/// Waits until the subscription `id` has saved `position`.
fn wait_for_position(cli: &Cli, id: &str, position: u64) {
    wait_until("the position saved at the head", || saved_position(cli, id) == position);
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
    append_counted(&cli, (0..40).map(|s| format!("unit-{s}")));
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
    append_counted(&cli, (0..40).map(|s| format!("unit-{s}")));
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

/// The Kafka relay as a real process (against the broker `.ci/run` starts at 127.0.0.1:9092),
/// killed with SIGKILL mid-way and started again: a consumer group gets every event, and the
/// first time it sees each event id, each Reel stream's events are in order (Kafka keeps no ids
/// across producer sessions, so what the killed relay had sent may come again; consumers drop
/// ids they have seen, as the README says).
#[test]
fn a_kafka_relay_killed_mid_way_resumes_with_nothing_lost_or_reordered() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let cli = Cli::new();
    append_counted(&cli, (0..40).map(|s| format!("unit-{s}")));
    let prefix = format!("reeltest-{}", uuid::Uuid::new_v4().simple());
    let topic = format!("{prefix}.{{category}}");
    let spawn = || {
        cli.command()
            .args(["relay", "kafka", "kafka_1", "--brokers", "127.0.0.1:9092", "--topic", &topic, "--batch", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut relay = spawn();
    wait_until("some events relayed", || saved_position(&cli, "kafka_1") >= 200);
    relay.kill().unwrap(); // SIGKILL
    relay.wait().unwrap();
    assert!(saved_position(&cli, "kafka_1") < 4_000, "killed mid-way");
    let mut relay = spawn();
    wait_for_position(&cli, "kafka_1", 4_000);
    std::process::Command::new("kill").arg("-TERM").arg(relay.id().to_string()).status().unwrap();
    assert!(relay.wait().unwrap().success());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let received: Vec<(String, String, u64, String)> = runtime.block_on(async {
        let consumer: StreamConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9092")
            .set("group.id", format!("{prefix}-group"))
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("a Kafka broker must run at 127.0.0.1:9092 (.ci/run starts tansu)");
        consumer.subscribe(&[&format!("{prefix}.unit")]).unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut received = Vec::new();
        while seen.len() < 4_000 {
            let next = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await;
            let message = next.expect("the consumer group stopped getting events").unwrap();
            let headers: HashMap<String, String> = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            seen.insert(headers["reel-event-id"].clone());
            received.push((
                headers["reel-event-id"].clone(),
                headers["reel-stream"].clone(),
                headers["reel-stream-version"].parse().unwrap(),
                key,
            ));
        }
        received
    });
    let mut seen = std::collections::HashSet::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    for (id, stream, version, key) in received {
        assert_eq!(key, stream, "the key is the stream");
        if !seen.insert(id) {
            continue; // sent again after the kill, recognised by its id
        }
        let expected = versions.get(&stream).map_or(0, |v| v + 1);
        assert_eq!(version, expected, "{stream} in order");
        versions.insert(stream, version);
    }
    assert_eq!(versions.len(), 40, "every stream");
    assert!(versions.values().all(|v| *v == 99), "every event of every stream: {versions:?}");
}

/// Appends 100 `Counted` events to each of `streams`.
fn append_counted(cli: &Cli, streams: impl IntoIterator<Item = String>) {
    let file = cli.path("events.ndjson");
    let lines: String = (0..100).map(|i| format!("{{\"type\":\"Counted\",\"data\":{{\"i\":{i}}}}}\n")).collect();
    write(&file, &lines);
    for stream in streams {
        cli.ok(&["append", &stream, "--file", file.to_str().unwrap()]);
    }
}

/// Appends 40 streams of 100 events: `order-0` … `order-19` and `unit-0` … `unit-19`.
fn append_orders_and_units(cli: &Cli) {
    append_counted(cli, (0..20).flat_map(|s| [format!("order-{s}"), format!("unit-{s}")]));
}

/// Checks that `key` holds exactly the events of `category`, each once, each stream in order,
/// with the positions as entry ids.
fn assert_relayed_once_in_order(connection: &mut redis::Connection, key: &str, category: &str, count: usize) {
    let relayed = entries(connection, key);
    assert_eq!(relayed.len(), count, "{key}: every {category} event exactly once");
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut last_position = 0;
    for (id, stream, version, _) in &relayed {
        assert!(stream.starts_with(&format!("{category}-")), "{key} holds only {category} events: {stream}");
        let position: u64 = id.trim_end_matches("-0").parse().unwrap();
        assert!(position > last_position, "{key}: positions ascend");
        last_position = position;
        let expected = versions.get(stream.as_str()).map_or(0, |v| v + 1);
        assert_eq!(*version, expected, "{stream} in order");
        versions.insert(stream, *version);
    }
    let _: () = redis::cmd("DEL").arg(key).query(connection).unwrap();
}

/// `reel relay --config`: two relays from one file, each with its own filter, batch size and
/// key, run side by side in one process, both listed as ordinary subscriptions.
#[test]
fn a_config_file_runs_several_relays_side_by_side() {
    let cli = Cli::new();
    append_orders_and_units(&cli);
    let prefix = format!("reeltest:{}", uuid::Uuid::new_v4());
    let config = cli.path("relays.toml");
    write(
        &config,
        &format!(
            r#"
# Orders to their own key, in batches of 7.
[[relay]]
sink = "redis"
id = "orders_out"
category = ["order"]
batch = 7
key = "{prefix}:{{category}}"

[[relay]]
sink = "redis"
id = "units_out"
stream_prefix = ["unit-"]
batch = 50
key = "{prefix}:{{category}}"
payload = "cloudevents"
"#
        ),
    );
    let mut relays = cli
        .command()
        .args(["relay", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_position(&cli, "orders_out", 4_000);
    wait_for_position(&cli, "units_out", 4_000);
    let listed = common::lines(&cli.ok(&["subscriptions", "list", "--json"]));
    let mut ids: Vec<&str> = listed.iter().map(|row| row["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["orders_out", "units_out"]);
    assert!(listed.iter().all(|row| row["group"] == "relay"), "{listed:?}");
    std::process::Command::new("kill").arg("-TERM").arg(relays.id().to_string()).status().unwrap();
    assert!(relays.wait().unwrap().success(), "both relays stop on SIGTERM");

    let mut connection = redis();
    assert_relayed_once_in_order(&mut connection, &format!("{prefix}:order"), "order", 2_000);
    let payload: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:unit"))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query(&mut connection)
        .unwrap();
    let fields: Vec<String> = payload[0].1.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
    let data = fields.iter().position(|f| f == "data").map(|i| &fields[i + 1]).expect("a data field");
    let cloud_event: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(cloud_event["specversion"], "1.0", "the second relay's own payload option");
    assert_relayed_once_in_order(&mut connection, &format!("{prefix}:unit"), "unit", 2_000);
}

/// A bad relay file is refused as a whole, with the relay and the key named, before any broker
/// is contacted and before any subscription is created.
#[test]
fn bad_relay_files_are_refused_with_a_reason_and_change_nothing() {
    let cli = Cli::new();
    let config = cli.path("relays.toml");
    let good = "[[relay]]\nsink = \"redis\"\nid = \"good\"\nurl = \"redis://127.0.0.1:1\"\n";
    let cases = [
        ("[[relay]]\nsink = \"redis\"\nid = \"r1\"\ntopicc = \"x\"\n", "unexpected argument '--topicc'"),
        ("[[relay]]\nsink = \"redis\"\nkey = \"x\"\n", "needs id"),
        ("[[relay]]\nsink = \"rabbit\"\nid = \"r1\"\n", "rabbit"),
        ("[[relay]]\nsink = \"redis\"\nid = \"r1\"\nbatch = \"many\"\n", "many"),
        ("[[relay]]\nsink = \"redis\"\nid = \"r1\"\nkey = \"reel:{nope}\"\n", "unknown placeholder {nope}"),
        ("[[relay]]\nsink = \"nats\"\nid = \"r1\"\nduplicate_window = 0\n", "--duplicate-window"),
        ("[[relay]]\nsink = \"redis\"\nid = \"r1\"\ncategory = [{ a = 1 }]\n", "cannot be a table"),
        ("[relay]\nsink = \"redis\"\n", "line 6: duplicate key"),
        ("[[relays]]\nsink = \"redis\"\nid = \"r1\"\n", "unknown top-level key \"relays\""),
        ("[[relay]\n", "line 6"),
    ];
    for (text, reason) in cases {
        // A good relay first: nothing of it may start when a later one is bad.
        write(&config, &format!("{good}\n{text}"));
        let error = cli.fails(&["relay", "--config", config.to_str().unwrap()], 2);
        assert!(error.contains(reason), "{text:?} → {error}");
        assert_eq!(error.trim().lines().count(), 1, "one line: {error}");
    }
    write(&config, &format!("{good}\n{}", good.replace("redis://127.0.0.1:1", "redis://127.0.0.1:2")));
    let error = cli.fails(&["relay", "--config", config.to_str().unwrap()], 2);
    assert!(error.contains("two relays have the id \"good\""), "{error}");
    let error = cli.fails(&["serve", "--relays", config.to_str().unwrap()], 2);
    assert!(error.contains("two relays have the id"), "{error}");
    write(&config, "# nothing yet\n");
    let error = cli.fails(&["relay", "--config", config.to_str().unwrap()], 2);
    assert!(error.contains("no [[relay]] table"), "{error}");
    let error = cli.fails(&["relay", "--config", cli.path("missing.toml").to_str().unwrap()], 2);
    assert!(error.contains("cannot read"), "{error}");
    assert_eq!(cli.ok(&["subscriptions", "list", "--json"]).trim(), "", "no subscription was created");
}

/// `reel serve --relays`: events appended over HTTP reach Redis through a relay running in
/// the server's process, and the relay shows in the server's own subscription listing.
#[test]
fn a_server_runs_the_relays_of_its_config_file() {
    let cli = Cli::new();
    let prefix = format!("reeltest:{}", uuid::Uuid::new_v4());
    let config = cli.path("relays.toml");
    let http = common::http();
    // A server whose only relay runs `once` keeps serving after the relay finished.
    let once = cli.path("once.toml");
    write(
        &once,
        &format!("[[relay]]\nsink = \"redis\"\nid = \"once_out\"\nmode = \"once\"\nkey = \"{prefix}:once\"\n"),
    );
    let mut served = cli.serve(&["--relays", once.to_str().unwrap()]);
    wait_until("the once relay finished", || {
        let listed = http.get(format!("{}/subscriptions", served.base)).send().unwrap().text().unwrap();
        listed.contains("finished")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(served.child.try_wait().unwrap().is_none(), "the server still runs after its once relay finished");
    drop(served);

    write(&config, &format!("[[relay]]\nsink = \"redis\"\nid = \"served_out\"\nkey = \"{prefix}:{{category}}\"\n"));
    let served = cli.serve(&["--relays", config.to_str().unwrap()]);
    for i in 0..50 {
        let body = serde_json::json!({ "type": "Counted", "data": { "i": i } });
        let answer = http.post(format!("{}/streams/unit-{}", served.base, i % 5)).json(&body).send().unwrap();
        assert!(answer.status().is_success(), "{}", answer.text().unwrap());
    }
    let mut connection = redis();
    let key = format!("{prefix}:unit");
    wait_until("the relay inside the server delivers", || {
        redis::cmd("XLEN").arg(&key).query::<u64>(&mut connection).unwrap() >= 50
    });
    let listed: serde_json::Value = http.get(format!("{}/subscriptions", served.base)).send().unwrap().json().unwrap();
    assert!(listed.to_string().contains("served_out"), "{listed}");
    assert_relayed_once_in_order(&mut connection, &key, "unit", 50);
}
