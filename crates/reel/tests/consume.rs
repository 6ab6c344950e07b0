//! `reel consume` and `reel subscriptions …` as real processes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use common::{lines, Cli};

fn append(cli: &Cli, count: usize) {
    for i in 0..count {
        cli.ok(&["append", "unit-1", "--type", "Opened", "--data", &format!("{{\"i\":{i}}}")]);
    }
}

fn spawn_consumer(cli: &Cli, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    // Its log goes to a file named after its pid, shown when it does not stop cleanly.
    let log = tempfile::NamedTempFile::new().expect("log file");
    let (file, path) = log.keep().expect("keep log file");
    let mut child = cli.command().arg("consume").args(args).stdout(Stdio::piped()).stderr(file).spawn().expect("spawn");
    std::fs::rename(&path, consumer_log(&child)).expect("name log file");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    (child, stdout)
}

fn consumer_log(child: &Child) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("reel-consumer-{}.log", child.id()))
}

fn read_positions(reader: &mut BufReader<ChildStdout>, count: usize) -> Vec<u64> {
    let mut positions = Vec::new();
    let mut line = String::new();
    while positions.len() < count {
        line.clear();
        assert!(reader.read_line(&mut line).expect("read") > 0, "consumer ended after {positions:?}");
        let event: serde_json::Value = serde_json::from_str(&line).expect("json");
        positions.push(event["position"].as_u64().expect("position"));
    }
    positions
}

fn terminate(child: &mut Child) {
    std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill -TERM");
    let status = child.wait().expect("wait");
    let log = std::fs::read_to_string(consumer_log(child)).unwrap_or_default();
    let _ = std::fs::remove_file(consumer_log(child));
    assert!(status.success(), "graceful stop exits 0, got {status}; its log:\n{log}");
}

/// The subscription as `reel subscriptions list --json` shows it (`Null` before it exists).
fn subscription(cli: &Cli, id: &str) -> serde_json::Value {
    lines(&cli.ok(&["subscriptions", "list", "--json", "--id", id])).into_iter().next().unwrap_or_default()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn print_consumer_follows_live_and_saves_its_position() {
    let cli = Cli::new();
    append(&cli, 3);
    let (mut child, mut out) = spawn_consumer(&cli, &["c1", "--print"]);
    assert_eq!(read_positions(&mut out, 3), vec![1, 2, 3]);
    append(&cli, 2);
    assert_eq!(read_positions(&mut out, 2), vec![4, 5]);
    terminate(&mut child);
    let s = subscription(&cli, "c1");
    assert_eq!((s["status"].as_str(), s["position"].as_u64(), s["lag"].as_u64()), (Some("active"), Some(5), Some(0)));
    assert!(s["lease_owner"].is_null(), "lease released on SIGTERM");
    // A restart resumes after the saved position.
    append(&cli, 1);
    let (mut child, mut out) = spawn_consumer(&cli, &["c1", "--print"]);
    assert_eq!(read_positions(&mut out, 1), vec![6]);
    terminate(&mut child);
}

#[test]
fn a_failing_command_puts_the_subscription_in_error_with_its_message() {
    let cli = Cli::new();
    append(&cli, 2);
    let out = cli
        .command()
        .args(["consume", "ok_1", "--mode", "once", "--", "sh", "-c", "cat > seen.ndjson"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = std::fs::read_to_string(cli.path("seen.ndjson")).unwrap();
    assert_eq!(lines(&seen).len(), 2, "the command got the batch as NDJSON on stdin");
    assert_eq!(subscription(&cli, "ok_1")["status"], "finished");

    let (mut child, _out) = spawn_consumer(&cli, &["bad_1", "--", "sh", "-c", "echo database is down >&2; exit 3"]);
    wait_until("the failure to be recorded", || subscription(&cli, "bad_1")["status"] == "error");
    terminate(&mut child);
    let s = subscription(&cli, "bad_1");
    let error = s["last_error"].as_str().unwrap();
    assert!(error.contains("exited with 3: database is down"), "{error}");
    assert_eq!(s["position"], 0, "a failed batch is never skipped");

    let (mut child, _out) = spawn_consumer(&cli, &["missing_1", "--", "/no/such/program"]);
    wait_until("the start failure", || subscription(&cli, "missing_1")["status"] == "error");
    terminate(&mut child);
    assert!(subscription(&cli, "missing_1")["last_error"].as_str().unwrap().contains("cannot start /no/such/program"));

    let err = cli.fails(&["subscriptions", "pause", "--id", "nobody"], 5);
    assert!(err.contains("nobody"), "{err}");
    cli.fails(&["consume", "x", "--mode", "sometimes", "--print"], 2);
    cli.fails(&["consume", "has space", "--print"], 2);
    cli.fails(&["consume", "x"], 2);
}

#[test]
fn pause_and_reactivate_from_another_terminal() {
    let cli = Cli::new();
    append(&cli, 1);
    let (mut child, mut out) = spawn_consumer(&cli, &["p1", "--print"]);
    assert_eq!(read_positions(&mut out, 1), vec![1]);
    cli.ok(&["subscriptions", "pause", "--id", "p1"]);
    append(&cli, 2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(subscription(&cli, "p1")["position"], 1, "paused: nothing processed");
    cli.ok(&["subscriptions", "reset", "--id", "p1", "--to-beginning"]);
    cli.ok(&["subscriptions", "reactivate", "--id", "p1"]);
    assert_eq!(read_positions(&mut out, 3), vec![1, 2, 3], "reset replays from the start once reactivated");
    terminate(&mut child);
}

#[test]
fn a_standby_consumer_takes_over_after_kill_9() {
    let cli = Cli::new();
    append(&cli, 3);
    let (mut first, mut first_out) = spawn_consumer(&cli, &["shared", "--print", "--lease-ttl", "1", "--batch", "1"]);
    let mut seen = read_positions(&mut first_out, 3);
    let (mut second, mut second_out) = spawn_consumer(&cli, &["shared", "--print", "--lease-ttl", "1", "--batch", "1"]);
    first.kill().expect("kill -9");
    first.wait().unwrap();
    // Lines the first one printed before dying still count.
    let mut rest = String::new();
    while first_out.read_line(&mut rest).unwrap_or(0) > 0 {}
    seen.extend(
        rest.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["position"].as_u64()),
    );
    append(&cli, 3);
    // At least once: a batch printed but not yet saved when the first died is delivered again
    // (with --batch 1, at most the one event); nothing is skipped.
    let mut taken_over = read_positions(&mut second_out, 1);
    while taken_over.last() != Some(&6) {
        taken_over.extend(read_positions(&mut second_out, 1));
    }
    terminate(&mut second);
    assert!(taken_over[0] == 3 || taken_over[0] == 4, "resumed at the saved position: {taken_over:?}");
    assert_eq!(taken_over, (taken_over[0]..=6).collect::<Vec<_>>(), "in order, nothing skipped");
    assert_eq!(seen, vec![1, 2, 3]);
}

#[test]
fn a_slow_batch_keeps_its_lease_and_is_never_processed_twice() {
    slow_batch_is_processed_once(Cli::new());
}

#[test]
fn a_slow_batch_keeps_its_lease_and_is_never_processed_twice_on_postgres() {
    slow_batch_is_processed_once(Cli::postgres());
}

fn slow_batch_is_processed_once(cli: Cli) {
    append(&cli, 3);
    // Each batch takes longer than the lease: only the heartbeat keeps the lease alive.
    let handler = ["--", "sh", "-c", "cat >> deliveries.ndjson; sleep 2"];
    let args = |extra: &[&'static str]| [&["slow", "--lease-ttl", "1", "--batch", "10"][..], extra].concat();
    let (mut first, _) = spawn_consumer(&cli, &args(&handler));
    wait_until("the first batch to start", || std::fs::metadata(cli.path("deliveries.ndjson")).is_ok());
    let (mut second, _) = spawn_consumer(&cli, &args(&handler));
    std::thread::sleep(Duration::from_millis(2500));
    append(&cli, 3);
    let delivered = || {
        std::fs::read_to_string(cli.path("deliveries.ndjson"))
            .map(|t| lines(&t).iter().map(|e| e["position"].as_u64().unwrap()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    wait_until("all six events", || delivered().len() >= 6);
    wait_until("the last batch to be saved", || subscription(&cli, "slow")["position"] == 6);
    terminate(&mut first);
    terminate(&mut second);
    assert_eq!(delivered(), vec![1, 2, 3, 4, 5, 6], "every event delivered exactly once");
}

#[test]
fn a_frozen_worker_loses_its_lease_and_delivers_nothing_once_resumed() {
    frozen_worker_delivers_nothing_after_takeover(Cli::new());
}

#[test]
fn a_frozen_worker_loses_its_lease_and_delivers_nothing_once_resumed_on_postgres() {
    frozen_worker_delivers_nothing_after_takeover(Cli::postgres());
}

/// `kill -STOP` stands for a stalled host (a long GC pause, a VM migration): the standby takes the
/// lease once it lapses, and the stalled worker, resumed, must not deliver alongside it.
fn frozen_worker_delivers_nothing_after_takeover(cli: Cli) {
    append(&cli, 3);
    // Each delivery line is tagged with the pid of the worker that delivered it.
    let handler = ["--", "sh", "-c", "sed \"s/^/$PPID /\" >> deliveries.txt"];
    let args = |extra: &[&'static str]| [&["frozen", "--lease-ttl", "1", "--batch", "1"][..], extra].concat();
    let (mut first, _) = spawn_consumer(&cli, &args(&handler));
    wait_until("the first worker to save 1..3", || subscription(&cli, "frozen")["position"] == 3);
    let signal = |name: &str, child: &Child| {
        let status = std::process::Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
        assert!(status.expect("kill").success());
    };
    signal("STOP", &first);
    let (mut second, _) = spawn_consumer(&cli, &args(&handler));
    append(&cli, 3);
    wait_until("the standby to take over and catch up", || subscription(&cli, "frozen")["position"] == 6);
    signal("CONT", &first);
    append(&cli, 3);
    wait_until("the last events", || subscription(&cli, "frozen")["position"] == 9);
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&mut first);
    terminate(&mut second);
    let deliveries: Vec<(u32, u64)> = std::fs::read_to_string(cli.path("deliveries.txt"))
        .expect("deliveries")
        .lines()
        .map(|line| {
            let (pid, event) = line.split_once(' ').expect("pid and event");
            let event: serde_json::Value = serde_json::from_str(event).expect("event json");
            (pid.parse().expect("pid"), event["position"].as_u64().expect("position"))
        })
        .collect();
    let by = |pid: u32| deliveries.iter().filter(|(p, _)| *p == pid).map(|(_, position)| *position).collect::<Vec<_>>();
    assert_eq!(by(first.id()), vec![1, 2, 3], "the frozen worker delivered nothing after its lease lapsed");
    assert_eq!(by(second.id()), vec![4, 5, 6, 7, 8, 9], "the standby delivered the rest once each, in order");
}

#[test]
fn a_poison_event_is_parked_listed_and_replayed() {
    let cli = Cli::new();
    append(&cli, 3); // data {"i":0}, {"i":1}, {"i":2}
    let poisoned = ["--", "sh", "-c", "if grep -q '\"i\":1'; then echo cannot handle >&2; exit 1; fi"];
    let args =
        |extra: &[&'static str]| [&["poison", "--batch", "1", "--retries", "0", "--park-failures"][..], extra].concat();
    let (mut child, _) = spawn_consumer(&cli, &args(&poisoned));
    wait_until("the rest of the log", || subscription(&cli, "poison")["position"] == 3);
    terminate(&mut child);
    let s = subscription(&cli, "poison");
    assert_eq!((s["status"].as_str(), s["parked"].as_u64()), (Some("active"), Some(1)));
    let parked = lines(&cli.ok(&["subscriptions", "parked", "--id", "poison"]));
    assert_eq!(parked[0]["position"], 2);
    assert!(parked[0]["error"].as_str().unwrap().contains("cannot handle"), "{parked:?}");

    let fixed = ["--", "sh", "-c", "cat > /dev/null"];
    let (mut child, _) = spawn_consumer(&cli, &args(&[&["--replay-parked"][..], &fixed[..]].concat()));
    wait_until("the replay", || subscription(&cli, "poison")["parked"] == 0);
    terminate(&mut child);
}

#[test]
fn partitions_split_the_work_and_together_cover_the_log_once() {
    let cli = Cli::new();
    for unit in 0..20 {
        cli.ok(&["append", &format!("unit-{unit}"), "--type", "Tick", "--data", "{}"]);
    }
    let run = |extra: &[&str]| {
        let out = cli
            .command()
            .args([&["consume", "parts", "--mode", "once", "--partitions", "16", "--print"][..], extra].concat())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        lines(&String::from_utf8(out.stdout).unwrap())
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let mut seen = run(&["--partition", "3"]);
    let one_partition = seen.len();
    seen.extend(run(&[]));
    seen.sort();
    assert!(one_partition < 20, "one partition holds only some streams");
    assert_eq!(seen, (1..=20).collect::<Vec<_>>(), "all partitions together: every event once");
    cli.fails(&["consume", "parts", "--partitions", "17", "--print"], 2);
    cli.fails(&["consume", "parts", "--partitions", "16", "--partition", "16", "--print"], 2);
}

/// A one-thread HTTP server on 127.0.0.1 that answers every request with `status` and hands the
/// request bodies to the test.
fn webhook_server(status: u16) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (bodies, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buffer = [0u8; 8192];
            let body = loop {
                let n = stream.read(&mut buffer).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break Some(String::from_utf8_lossy(&request[end + 4..end + 4 + length]).to_string());
                    }
                }
            };
            let reason = if status < 300 { "OK" } else { "Server Error" };
            let _ = write!(stream, "HTTP/1.1 {status} {reason}\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope");
            if let Some(body) = body {
                if bodies.send(body).is_err() {
                    return;
                }
            }
        }
    });
    (url, received)
}

#[test]
fn webhook_consumer_posts_batches_and_a_refusal_is_a_failure() {
    let cli = Cli::new();
    append(&cli, 3);
    let (url, bodies) = webhook_server(200);
    let (mut child, _) = spawn_consumer(&cli, &["hook_1", "--webhook", &url, "--batch", "2"]);
    let mut positions = Vec::new();
    while positions.len() < 3 {
        let body: serde_json::Value =
            serde_json::from_str(&bodies.recv_timeout(Duration::from_secs(30)).expect("a POST")).unwrap();
        assert_eq!(body["subscription"], "hook_1");
        positions.extend(body["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()));
    }
    assert_eq!(positions, vec![1, 2, 3]);
    wait_until("the position", || subscription(&cli, "hook_1")["position"] == 3);
    terminate(&mut child);

    let (url, _bodies) = webhook_server(500);
    let (mut child, _) = spawn_consumer(&cli, &["hook_2", "--webhook", &url]);
    wait_until("the failure", || subscription(&cli, "hook_2")["status"] == "error");
    terminate(&mut child);
    let error = subscription(&cli, "hook_2")["last_error"].as_str().unwrap().to_string();
    assert!(error.contains("webhook answered 500"), "{error}");
    cli.fails(&["consume", "x", "--webhook", "https://example.com/hook"], 2);
}

#[test]
fn a_hanging_or_killed_command_fails_its_batch() {
    let cli = Cli::new();
    append(&cli, 1);
    let (mut child, _) = spawn_consumer(&cli, &["hang_1", "--timeout", "0.5", "--", "sleep", "30"]);
    wait_until("the timeout", || subscription(&cli, "hang_1")["status"] == "error");
    terminate(&mut child);
    let error = subscription(&cli, "hang_1")["last_error"].as_str().unwrap().to_string();
    assert!(error.contains("timed out"), "{error}");
    assert_eq!(subscription(&cli, "hang_1")["position"], 0);

    let (mut child, _) = spawn_consumer(&cli, &["killed_1", "--", "sh", "-c", "kill -9 $$"]);
    wait_until("the failure", || subscription(&cli, "killed_1")["status"] == "error");
    terminate(&mut child);
    let error = subscription(&cli, "killed_1")["last_error"].as_str().unwrap().to_string();
    assert!(error.contains("killed by a signal"), "{error}");
}
