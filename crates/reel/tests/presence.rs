//! Device presence as real processes: `reel edge` agents send heartbeats to a central
//! `reel serve`, which records only changes between online and offline, one event per change,
//! with session numbers that a late or repeated event cannot undo.

mod common;

use std::time::Duration;

use common::{wait_until, Cli, Served};

/// `reel edge` for device `name` with `flags` after the subcommand.
fn agent(device: &Cli, name: &str, central: &str, flags: &[&str]) -> Served {
    let args = [
        &["edge", "--device", name, "--central", central, "--listen", "127.0.0.1:0", "--max-retry-delay", "0.5"],
        flags,
    ]
    .concat();
    device.spawn_server(&args)
}

/// The central server's presence table, by device name.
fn devices(central: &Served) -> std::collections::BTreeMap<String, serde_json::Value> {
    let answer = central.get("/devices");
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| (d["device"].as_str().unwrap().to_string(), d.clone()))
        .collect()
}

fn online(central: &Served, device: &str) -> Option<bool> {
    devices(central).get(device).map(|d| d["online"].as_bool().unwrap())
}

/// The presence changes recorded for `device`: (type, session).
fn changes(central: &Served, device: &str) -> Vec<(String, u64)> {
    let page = central.get(&format!("/streams/unitpresence-{device}?limit=1000"));
    if page.status == 404 {
        return Vec::new();
    }
    page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["data"]["session"].as_u64().unwrap()))
        .collect()
}

fn came(session: u64) -> (String, u64) {
    ("UnitCameOnline".into(), session)
}

fn went(session: u64) -> (String, u64) {
    ("UnitWentOffline".into(), session)
}

#[test]
fn presence_flips_after_the_devices_own_silence_threshold_once_per_change_and_late_events_change_nothing() {
    let central = Cli::new();
    let server = central.serve(&[]);
    let (fast, slow) = (Cli::new(), Cli::new());
    let mut p1 = agent(&fast, "p1", &server.base, &["--heartbeat-interval", "1", "--display-name", "Station 1"]);
    // Declares a long interval: silence of a few seconds is normal for it.
    let mut p2 = agent(&slow, "p2", &server.base, &["--heartbeat-interval", "30"]);
    wait_until("both devices online", Duration::from_secs(10), || {
        online(&server, "p1") == Some(true) && online(&server, "p2") == Some(true)
    });
    let metrics = server.get("/metrics").text;
    for line in
        ["reel_devices 2", "reel_devices_online 2", "reel_devices_clock_skewed 0", "reel_devices_link_failing 0"]
    {
        assert!(metrics.lines().any(|l| l == line), "{line} in /metrics:\n{metrics}");
    }
    let listed = devices(&server);
    assert_eq!(listed["p1"]["display_name"], "Station 1");
    assert_eq!(listed["p1"]["interval_ms"], 1000);
    assert_eq!(listed["p2"]["interval_ms"], 30_000);

    // p1 dies without a word: offline once 1.5 s pass in silence, with one event.
    p1.child.kill().unwrap();
    p1.child.wait().unwrap();
    wait_until("p1 offline", Duration::from_secs(10), || online(&server, "p1") == Some(false));
    assert_eq!(changes(&server, "p1"), [came(1), went(1)]);
    assert!(server.get("/metrics").text.lines().any(|l| l == "reel_devices_online 1"));

    // A late and a repeated change of the session that is over do not bring it back.
    for late in
        [r#"{"type":"UnitCameOnline","data":{"session":1}}"#, r#"{"type":"UnitWentOffline","data":{"session":1}}"#]
    {
        assert_eq!(server.post_json("/streams/unitpresence-p1", late).status, 201);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(online(&server, "p1"), Some(false), "a late UnitCameOnline of session 1 changed nothing");

    // Back: a new session, recorded after the late events.
    p1 = agent(&fast, "p1", &server.base, &["--heartbeat-interval", "1"]);
    wait_until("p1 online again", Duration::from_secs(10), || online(&server, "p1") == Some(true));
    assert_eq!(devices(&server)["p1"]["session"], 2);
    assert_eq!(changes(&server, "p1"), [came(1), went(1), came(1), went(1), came(2)]);
    assert_eq!(devices(&server)["p1"]["display_name"], "Station 1", "kept from the earlier heartbeats");

    // A late UnitWentOffline of session 1 while session 2 is on does not flip it back.
    let late = r#"{"type":"UnitWentOffline","data":{"session":1}}"#;
    assert_eq!(server.post_json("/streams/unitpresence-p1", late).status, 201);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(online(&server, "p1"), Some(true));
    assert_eq!(changes(&server, "p1").len(), 6, "no change recorded for it");

    // The device with the long interval is still online after more than 1.5 s of silence;
    // heartbeats themselves were never stored as events.
    assert_eq!(online(&server, "p2"), Some(true));
    assert_eq!(changes(&server, "p2"), [came(1)]);
    p2.child.kill().unwrap();
    p2.child.wait().unwrap();
    drop(p1);
}

#[test]
fn a_heartbeat_with_bad_fields_or_without_the_devices_scope_is_refused_and_records_nothing() {
    let central = Cli::new();
    let create = |scopes: &[&str]| {
        let mut args = vec!["token", "create", "--name", "t"];
        for scope in scopes {
            args.extend(["--scope", scope]);
        }
        let created: serde_json::Value = serde_json::from_str(&central.ok(&args)).unwrap();
        created["token"].as_str().unwrap().to_string()
    };
    let admin = create(&["admin"]);
    let device = create(&["write:unit-q1", "write:unit-q1-*", "read:unitconfig-q1"]);
    let server = central.serve(&["--require-tokens"]);
    let beat = |name: &str, body: &str, token: &str| {
        server.call(
            "POST",
            &format!("/devices/{name}/heartbeat"),
            Some("application/json"),
            body.as_bytes(),
            Some(token),
        )
    };
    let good = r#"{"interval_ms":5000,"clock_ms":1700000000000}"#;
    for (name, body, status, code) in [
        ("q1", r#"{"interval_ms":10,"clock_ms":1700000000000}"#, 400, "invalid_argument"),
        ("q1", r#"{"interval_ms":5000}"#, 400, "invalid_heartbeat"),
        ("q1", r#"{"interval_ms":5000,"clock_ms":1,"colour":"red"}"#, 400, "invalid_heartbeat"),
        ("q1", r#"{"interval_ms":5000,"clock_ms":1700000000000,"display_name":"a\nb"}"#, 400, "invalid_argument"),
        ("q 1", good, 400, "invalid_argument"),
        ("q2", good, 403, "forbidden"),
    ] {
        let answer = beat(name, body, &device);
        assert_eq!(
            (answer.status, answer.body["error"].as_str()),
            (status, Some(code)),
            "{name} {body}: {}",
            answer.text
        );
    }
    let list = server.call("GET", "/devices", None, b"", Some(&admin));
    assert_eq!(list.body["devices"], serde_json::json!([]), "nothing recorded");

    // A device token: its own heartbeat, but no other device's streams or configuration.
    assert_eq!(beat("q1", good, &device).status, 200);
    let other =
        server.call("POST", "/streams/unit-q2", Some("application/json"), br#"{"type":"X","data":{}}"#, Some(&device));
    assert_eq!(other.status, 403, "{}", other.text);
    assert_eq!(server.call("GET", "/streams/unitconfig-q2", None, b"", Some(&device)).status, 403);
    let listed = server.call("GET", "/devices", None, b"", Some(&admin));
    assert_eq!(listed.body["devices"][0]["device"], "q1");
    let own = server.call("GET", "/devices", None, b"", Some(&device));
    assert_eq!(own.body["devices"], serde_json::json!([]), "the device token may not read presence");
}

#[test]
fn a_device_clock_an_hour_off_is_reported_and_changes_no_order_and_no_presence() {
    let central = Cli::new();
    let server = central.serve(&[]);
    let (ahead, behind) = (Cli::new(), Cli::new());
    let fast = agent(&ahead, "k1", &server.base, &["--heartbeat-interval", "1", "--simulate-clock-offset", "3600"]);
    let slow = agent(&behind, "k2", &server.base, &["--heartbeat-interval", "1", "--simulate-clock-offset", "-3600"]);
    for n in 0..20 {
        for (agent, stream) in [(&fast, "unit-k1"), (&slow, "unit-k2")] {
            let event = format!(r#"{{"type":"Tick","data":{{"n":{n}}}}}"#);
            assert_eq!(agent.post_json(&format!("/streams/{stream}"), &event).status, 201);
        }
    }
    let numbers = |stream: &str| -> Vec<u64> {
        let page = server.get(&format!("/streams/{stream}?limit=100"));
        page.body["events"]
            .as_array()
            .map_or(Vec::new(), |events| events.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect())
    };
    wait_until("both devices' events arrive", Duration::from_secs(20), || {
        numbers("unit-k1").len() == 20 && numbers("unit-k2").len() == 20
    });
    assert_eq!(numbers("unit-k1"), (0..20).collect::<Vec<_>>(), "in the device's order");
    assert_eq!(numbers("unit-k2"), (0..20).collect::<Vec<_>>());
    wait_until("both online", Duration::from_secs(10), || {
        online(&server, "k1") == Some(true) && online(&server, "k2") == Some(true)
    });
    // Several heartbeats later: reported, and still one session each.
    std::thread::sleep(Duration::from_secs(3));
    let listed = devices(&server);
    for (device, sign) in [("k1", 1), ("k2", -1)] {
        let skew = listed[device]["clock_skew_ms"].as_i64().unwrap();
        assert!((skew * sign - 3_600_000).abs() < 5_000, "{device}: skew {skew}");
        assert_eq!(listed[device]["clock_skew_reported"], true);
        assert_eq!(listed[device]["online"], true);
        assert_eq!(changes(&server, device), [came(1)], "{device}: no flapping");
    }
}

#[test]
fn two_servers_on_one_database_record_each_change_once_and_a_dead_ones_share_is_taken_over() {
    let central = Cli::postgres();
    let mut first = central.serve(&["--presence-lease", "3"]);
    let second = central.serve(&["--presence-lease", "3"]);
    // Each takes its share (renewed every second): 8 of the 16 partitions each.
    std::thread::sleep(Duration::from_secs(3));
    let names: Vec<String> = (0..16).map(|i| format!("fleet-{i}")).collect();
    // Heartbeats land on either server, as behind a load balancer.
    let beat_all = |round: usize, servers: &[&Served]| {
        for (i, name) in names.iter().enumerate() {
            let server = servers[(i + round) % servers.len()];
            let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
            let body = format!(r#"{{"interval_ms":1000,"clock_ms":{clock}}}"#);
            let answer = server.post_json(&format!("/devices/{name}/heartbeat"), &body);
            assert_eq!(answer.status, 200, "{}", answer.text);
        }
    };
    let mut round = 0;
    wait_until("every device online", Duration::from_secs(20), || {
        beat_all(round, &[&first, &second]);
        round += 1;
        std::thread::sleep(Duration::from_millis(300));
        devices(&second).values().filter(|d| d["online"] == true).count() == names.len()
    });
    // Both servers swept all along; still every device came online once.
    for _ in 0..5 {
        beat_all(round, &[&first, &second]);
        round += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut deciders = std::collections::BTreeSet::new();
    for name in &names {
        assert_eq!(changes(&second, name), [came(1)], "{name}");
        let page = second.get(&format!("/streams/unitpresence-{name}"));
        deciders.insert(page.body["events"][0]["metadata"]["recorded_by"].as_str().unwrap().to_string());
    }
    assert_eq!(deciders.len(), 2, "both servers took a share of the fleet: {deciders:?}");

    // The first server dies (kill -9: its leases are not given back) and the devices fall
    // silent: the second takes over the first one's partitions once their leases lapse.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    wait_until("every device offline", Duration::from_secs(60), || {
        devices(&second).values().all(|d| d["online"] == false)
    });
    for name in &names {
        assert_eq!(changes(&second, name), [came(1), went(1)], "{name}");
    }
}

#[test]
fn a_registered_push_unit_is_pinged_by_reel_serve_and_gets_its_configuration_once() {
    let central = Cli::new();
    let unit = reel_testkit::unit_endpoint::UnitEndpoint::start(0);
    let (url, posts) = (unit.url.clone(), unit.posts.clone());
    for (args, reason) in [
        (vec!["devices", "register", "u 1", "--endpoint", url.as_str(), "--link", "push"], "device name"),
        (vec!["devices", "register", "u1", "--endpoint", "ftp://x", "--link", "push"], "--endpoint"),
        (vec!["devices", "register", "u1", "--endpoint", url.as_str(), "--link", "carrier-pigeon"], "push or fetch"),
        (
            vec!["devices", "register", "u1", "--endpoint", url.as_str(), "--link", "push", "--interval", "0"],
            "--interval",
        ),
    ] {
        let error = central.fails(&args, 2);
        assert!(error.contains(reason), "{args:?}: {error}");
    }
    assert_eq!(central.ok(&["devices", "list"]), "", "bad registrations stored nothing");
    central.ok(&[
        "devices",
        "register",
        "u1",
        "--endpoint",
        &url,
        "--link",
        "push",
        "--interval",
        "1",
        "--display-name",
        "Unit 1",
    ]);
    central.ok(&["append", "unitconfig-u1", "--type", "PriceSet", "--data", r#"{"price":5}"#]);
    let server = central.serve(&[]);
    wait_until("the unit gets its configuration", Duration::from_secs(20), || !posts.lock().unwrap().is_empty());
    wait_until("the unit shows online with it acknowledged", Duration::from_secs(10), || {
        let d = &devices(&server)["u1"];
        d["online"] == true && d["config_version"] == 1
    });
    let listed = devices(&server);
    assert_eq!((listed["u1"]["link"].as_str(), listed["u1"]["display_name"].as_str()), (Some("push"), Some("Unit 1")));
    assert!(listed["u1"]["rtt_ms"].is_u64(), "pings measure the round trip");
    std::thread::sleep(Duration::from_secs(2));
    let delivered = posts.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "delivered once: {delivered:?}");
    let event = &events_of(&server, "unitconfig-u1")[0];
    assert_eq!(delivered[0].0, event["id"].as_str().unwrap(), "the event id is the idempotency key");
    assert_eq!(delivered[0].1["data"]["price"], 5);
    drop(server);
    let line = central.ok(&["devices", "list"]);
    assert!(line.contains(r#""device":"u1""#), "{line}");
    central.ok(&["devices", "forget", "u1"]);
    assert_eq!(central.ok(&["devices", "list"]), "");
    assert!(central.fails(&["devices", "forget", "u1"], 2).contains("no device named u1"));
}

fn events_of(server: &Served, stream: &str) -> Vec<serde_json::Value> {
    server.get(&format!("/streams/{stream}")).body["events"].as_array().cloned().unwrap_or_default()
}
