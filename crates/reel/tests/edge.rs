//! `reel edge` as real processes: a device's local API over its own store, and the uplink to a
//! central `reel serve` on loopback. The device works with the central server away, survives
//! `kill -9`, and the central copy ends up equal to the device's streams, exactly once.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, Cli, Served};

/// A port nobody listens on yet, for a central server that starts later.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port()
}

fn edge(device: &Cli, name: &str, central: &str) -> Served {
    edge_with(device, name, central, &[])
}

/// `reel edge` with `extra` global flags (such as `--token T`).
fn edge_with(device: &Cli, name: &str, central: &str, extra: &[&str]) -> Served {
    let args = [
        extra,
        &["edge", "--device", name, "--central", central, "--listen", "127.0.0.1:0", "--max-retry-delay", "0.5"],
    ]
    .concat();
    device.spawn_server(&args)
}

fn append(server: &Served, stream: &str, n: usize) {
    let answer = server.post_json(&format!("/streams/{stream}"), &format!(r#"{{"type":"Tick","data":{{"n":{n}}}}}"#));
    assert_eq!(answer.status, 201, "local append to {stream}: {}", answer.text);
}

/// Appends events `first..first + n` (`{"n": i}`) to `stream` on the device in one local append.
fn append_many(server: &Served, stream: &str, first: usize, n: usize) {
    let events: Vec<String> = (first..first + n).map(|i| format!(r#"{{"type":"Tick","data":{{"n":{i}}}}}"#)).collect();
    let answer = server.post_json(&format!("/streams/{stream}"), &format!(r#"{{"events":[{}]}}"#, events.join(",")));
    assert_eq!(answer.status, 201, "local append to {stream}: {}", answer.text);
}

/// The device's uplink subscription as `reel subscriptions list --json` shows it.
fn uplink_status(device: &Cli) -> serde_json::Value {
    let listed = device.ok(&["subscriptions", "list", "--json"]);
    serde_json::from_str(listed.lines().next().unwrap_or("null")).unwrap()
}

/// Events the central server recorded about `device`'s presence (online, offline): the only
/// events it stores beside the device's own.
fn presence_changes(server: &Served, device: &str) -> u64 {
    events(server, &format!("unitpresence-{device}")).len() as u64
}

/// Every event of `stream` on `server`: (version, id, data).
fn events(server: &Served, stream: &str) -> Vec<(u64, String, serde_json::Value)> {
    let mut all = Vec::new();
    loop {
        let page = server.get(&format!("/streams/{stream}?from={}&limit=1000", all.len()));
        if page.status == 404 {
            return all;
        }
        assert_eq!(page.status, 200, "{}", page.text);
        let batch = page.body["events"].as_array().expect("events").clone();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch.iter().map(|e| {
            (e["stream_version"].as_u64().unwrap(), e["id"].as_str().unwrap().to_string(), e["data"].clone())
        }));
    }
}

#[test]
fn a_device_works_offline_survives_kill_9_and_its_streams_reach_the_central_server_exactly_once() {
    let device = Cli::new();
    let central = Cli::new();
    let port = free_port();
    let central_url = format!("http://127.0.0.1:{port}");

    // The central server is not there: local appends work anyway (5,000 events in all: some
    // one by one across two streams, the rest in local batches).
    let mut agent = edge(&device, "d1", &central_url);
    for n in 0..200 {
        append(&agent, "unit-d1", n);
        if n % 4 == 0 {
            append(&agent, "unit-d1-doors", n);
        }
    }
    append(&agent, "shelf-1", 0);
    for first in (200..2_500).step_by(500) {
        append_many(&agent, "unit-d1", first, 500.min(2_500 - first));
    }
    // Killed hard while offline, then restarted: nothing queued is lost.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let agent = edge(&device, "d1", &central_url);
    for first in (2_500..4_950).step_by(500) {
        append_many(&agent, "unit-d1", first, 500.min(4_950 - first));
    }

    let server = central.spawn_server(&["serve", "--listen", &format!("127.0.0.1:{port}")]);
    wait_until("the central copy catches up", Duration::from_secs(60), || {
        events(&server, "unit-d1").len() == 4_950 && events(&server, "unit-d1-doors").len() == 50
    });
    for stream in ["unit-d1", "unit-d1-doors"] {
        assert_eq!(events(&server, stream), events(&agent, stream), "{stream}: same ids, versions, data, order");
    }
    let numbers: Vec<u64> = events(&server, "unit-d1").iter().map(|(_, _, data)| data["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..4_950).collect::<Vec<_>>(), "in the device's order");
    assert!(events(&server, "shelf-1").is_empty(), "streams the device does not own stay on the device");

    // A restart after everything was sent sends nothing again.
    drop(agent);
    let agent = edge(&device, "d1", &central_url);
    append(&agent, "unit-d1", 4_950);
    wait_until("the new event arrives", Duration::from_secs(30), || events(&server, "unit-d1").len() == 4_951);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(events(&server, "unit-d1"), events(&agent, "unit-d1"));
    assert_eq!(central.head(), 5_001 + presence_changes(&server, "d1"), "each event once: 4,951 + 50");
}

#[test]
fn the_platforms_streams_are_read_only_on_the_device() {
    let device = Cli::new();
    let agent = edge(&device, "d3", &format!("http://127.0.0.1:{}", free_port()));
    let refused = agent.post_json("/streams/unitconfig-d3", r#"{"type":"PriceSet","data":{"price":3}}"#);
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.body["error"], "stream_read_only");
    assert!(refused.body["message"].as_str().unwrap().contains("the platform"), "{}", refused.text);
    append(&agent, "unitconfig-d30", 0);
    assert_eq!(device.head(), 1, "only the other stream was stored");
}

#[test]
fn a_central_stream_the_device_did_not_write_alone_stops_the_uplink_and_is_not_overwritten() {
    let device = Cli::new();
    let central = Cli::new();
    let server = central.serve(&[]);
    // Someone else wrote the device's stream centrally.
    let foreign = server.post_json("/streams/unit-d2", r#"{"type":"Forged","data":{}}"#);
    assert_eq!(foreign.status, 201);
    let agent = edge(&device, "d2", &server.base);
    for n in 0..3 {
        append(&agent, "unit-d2", n);
    }
    let mut listed = serde_json::Value::Null;
    wait_until("the uplink reports the divergence", Duration::from_secs(30), || {
        listed = uplink_status(&device);
        listed["last_error"].as_str().is_some_and(|e| e.contains("did not write"))
    });
    assert_eq!(listed["id"], "uplink");
    assert_eq!(listed["status"], "error", "{listed}");
    assert_eq!(listed["position"], 0, "it stopped before the first event: {listed}");
    let there = events(&server, "unit-d2");
    assert_eq!(there.len(), 1, "the central stream was not overwritten: {there:?}");
}

#[test]
fn configuration_set_centrally_reaches_the_device_live_and_after_it_was_away() {
    let device = Cli::new();
    let central = Cli::new();
    let server = central.serve(&[]);
    let set = |price: u32| {
        let answer =
            server.post_json("/streams/unitconfig-d4", &format!(r#"{{"type":"PriceSet","data":{{"price":{price}}}}}"#));
        assert_eq!(answer.status, 201, "{}", answer.text);
    };
    // Set while the device was away: it arrives once the device runs.
    set(1);
    set(2);
    let agent = edge(&device, "d4", &server.base);
    wait_until("the queued configuration arrives", Duration::from_secs(30), || {
        events(&agent, "unitconfig-d4").len() == 2
    });
    // Set while it runs: it arrives live.
    set(3);
    let started = Instant::now();
    wait_until("the live change arrives", Duration::from_secs(30), || events(&agent, "unitconfig-d4").len() == 3);
    println!("live configuration change reached the device in {:?}", started.elapsed());
    // Away again (killed), changed meanwhile, back: caught up, nothing twice.
    drop(agent);
    set(4);
    let agent = edge(&device, "d4", &server.base);
    wait_until("the configuration catches up", Duration::from_secs(30), || events(&agent, "unitconfig-d4").len() == 4);
    let local = events(&agent, "unitconfig-d4");
    assert_eq!(local, events(&server, "unitconfig-d4"), "same ids, versions and data as the platform's");
    let prices: Vec<u64> = local.iter().map(|(_, _, data)| data["price"].as_u64().unwrap()).collect();
    assert_eq!(prices, [1, 2, 3, 4]);
}

/// A token created on `central`'s store with `scopes`: (secret, id).
fn token(central: &Cli, name: &str, scopes: &[String]) -> (String, String) {
    let mut args = vec!["token", "create", "--name", name];
    for scope in scopes {
        args.extend(["--scope", scope.as_str()]);
    }
    let created: serde_json::Value = serde_json::from_str(&central.ok(&args)).unwrap();
    (created["token"].as_str().unwrap().to_string(), created["id"].as_str().unwrap().to_string())
}

/// A device's token as the platform would issue it: its own streams and its configuration.
fn device_token(central: &Cli, name: &str) -> (String, String) {
    let own = format!("unit-{name}");
    let scopes = [
        format!("write:{own}"),
        format!("write:{own}-*"),
        format!("read:{own}"),
        format!("read:{own}-*"),
        format!("read:unitconfig-{name}"),
    ];
    token(central, name, &scopes)
}

#[test]
fn a_token_revoked_while_the_device_works_stops_nothing_local_and_a_new_one_resumes_the_uplink() {
    let device = Cli::new();
    let central = Cli::new();
    let (admin, _) = token(&central, "admin", &["admin".to_string()]);
    let (first, first_id) = device_token(&central, "d5");
    let server = central.serve(&["--require-tokens"]);
    let central_events = |stream: &str| {
        let page = server.call("GET", &format!("/streams/{stream}?limit=1000"), None, b"", Some(&admin));
        page.body["events"].as_array().map_or(0, |events| events.len())
    };
    let agent = edge_with(&device, "d5", &server.base, &["--token", &first]);
    for n in 0..10 {
        append(&agent, "unit-d5", n);
    }
    wait_until("the first events arrive", Duration::from_secs(30), || central_events("unit-d5") == 10);

    central.ok(&["token", "revoke", &first_id]);
    // Until the server has taken the revocation in, an append may still pass: wait for it.
    wait_until("the revocation takes effect", Duration::from_secs(10), || {
        server.call("GET", "/streams/unit-d5", None, b"", Some(&first)).status == 401
    });
    for n in 10..20 {
        append(&agent, "unit-d5", n);
    }
    wait_until("the uplink says why it waits", Duration::from_secs(30), || {
        let listed = uplink_status(&device);
        listed["unavailable"] == true && listed["last_error"].as_str().is_some_and(|e| e.contains("unknown or revoked"))
    });
    assert_eq!(central_events("unit-d5"), 10, "nothing is sent without a valid token");

    // A new token (the agent restarted with it): everything pending arrives, nothing twice.
    let (second, _) = device_token(&central, "d5");
    drop(agent);
    let agent = edge_with(&device, "d5", &server.base, &["--token", &second]);
    wait_until("the pending events arrive", Duration::from_secs(30), || central_events("unit-d5") == 20);
    assert_eq!(events(&agent, "unit-d5").len(), 20);
}

#[test]
fn a_central_server_killed_mid_backlog_gets_every_event_once_after_its_restart() {
    let device = Cli::new();
    let central = Cli::new();
    let port = free_port();
    let central_url = format!("http://127.0.0.1:{port}");
    let agent = edge(&device, "d6", &central_url);
    // A backlog built offline, 500 events per local append.
    const BACKLOG: u64 = 20_000;
    for batch in 0..BACKLOG / 500 {
        append_many(&agent, "unit-d6", batch as usize * 500, 500);
    }
    let listen = format!("127.0.0.1:{port}");
    let mut server = central.spawn_server(&["serve", "--listen", &listen]);
    // Killed as soon as the first events are in: the uplink is in the middle of the backlog.
    let started = Instant::now();
    let arrived = loop {
        let head =
            server.get("/head").body["head"].as_u64().unwrap_or(0).saturating_sub(presence_changes(&server, "d6"));
        if head > 0 {
            break head;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the uplink never started");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(arrived < BACKLOG, "killed part-way ({arrived} of {BACKLOG} in)");
    server.child.kill().unwrap(); // SIGKILL, mid-backlog
    server.child.wait().unwrap();
    let server = central.spawn_server(&["serve", "--listen", &listen]);
    wait_until("the whole backlog arrives", Duration::from_secs(90), || {
        server.get("/head").body["head"].as_u64().unwrap().saturating_sub(presence_changes(&server, "d6")) == BACKLOG
    });
    let there = events(&server, "unit-d6");
    assert_eq!(there, events(&agent, "unit-d6"), "same ids, versions and data, in the device's order");
    assert_eq!(there.len() as u64, BACKLOG, "nothing twice");
}

/// A TCP proxy to `target` that breaks its first `broken` connections: even ones after part of
/// the request went through (the server sees half a request), odd ones as soon as the answer
/// starts (the server committed, the client never hears it). Later connections pass.
/// Returns its port and how many requests and answers it cut.
fn breaking_proxy(target: String, broken: usize) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
    let port = listener.local_addr().unwrap().port();
    let (requests_cut, answers_cut) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (requests, answers) = (requests_cut.clone(), answers_cut.clone());
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(&target) else { continue };
            let cut_request = n < broken && n % 2 == 0;
            let cut_answer = n < broken && n % 2 == 1;
            let (mut from_client, mut to_upstream) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (requests, answers) = (requests.clone(), answers.clone());
            std::thread::spawn(move || {
                let mut buffer = [0u8; 16 * 1024];
                let mut sent = 0;
                while let Ok(read) = from_client.read(&mut buffer) {
                    if read == 0 {
                        break;
                    }
                    let part =
                        if cut_request && sent + read > 20_000 { (20_000 - sent.min(20_000)).min(read) } else { read };
                    if to_upstream.write_all(&buffer[..part]).is_err() {
                        break;
                    }
                    sent += part;
                    if part < read {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let _ = to_upstream.shutdown(Shutdown::Both);
                        let _ = from_client.shutdown(Shutdown::Both);
                        break;
                    }
                }
            });
            let (mut from_upstream, mut to_client) = (upstream, client);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 16 * 1024];
                while let Ok(read) = from_upstream.read(&mut buffer) {
                    if read == 0 || cut_answer {
                        if read > 0 {
                            answers.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = to_client.shutdown(Shutdown::Both);
                        let _ = from_upstream.shutdown(Shutdown::Both);
                        break;
                    }
                    if to_client.write_all(&buffer[..read]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, requests_cut, answers_cut)
}

#[test]
fn connections_broken_mid_request_and_mid_answer_lose_nothing_and_store_nothing_twice() {
    let device = Cli::new();
    let central = Cli::new();
    let server = central.serve(&[]);
    let (proxy, requests_cut, answers_cut) = breaking_proxy(server.base.trim_start_matches("http://").to_string(), 12);
    let agent = edge(&device, "d7", &format!("http://127.0.0.1:{proxy}"));
    for batch in 0..20 {
        append_many(&agent, "unit-d7", batch * 250, 250);
    }
    let stored = || server.get("/head").body["head"].as_u64().unwrap().saturating_sub(presence_changes(&server, "d7"));
    wait_until("every event arrives through the broken connections", Duration::from_secs(90), || stored() == 5_000);
    std::thread::sleep(Duration::from_millis(500));
    let there = events(&server, "unit-d7");
    assert_eq!(there, events(&agent, "unit-d7"), "same ids, versions and data, in the device's order");
    assert_eq!(stored(), 5_000, "nothing twice");
    let (requests, answers) = (requests_cut.load(Ordering::SeqCst), answers_cut.load(Ordering::SeqCst));
    assert!(requests > 0 && answers > 0, "both kinds of break happened: {requests} requests, {answers} answers cut");
}
