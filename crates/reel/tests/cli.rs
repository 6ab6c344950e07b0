//! The `reel` command line, run as a real process.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{lines, write, Cli};

#[test]
fn append_read_and_conflict_exit_codes() {
    let cli = Cli::new();
    let out = cli.ok(&[
        "append",
        "unit-PL-1001",
        "--type",
        "DoorOpened",
        "--data",
        r#"{"door":3}"#,
        "--expected-version",
        "no-stream",
    ]);
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((result["first_position"].as_u64(), result["next_version"].as_u64()), (Some(1), Some(0)));
    let err = cli.fails(&["append", "unit-PL-1001", "--type", "X", "--data", "{}", "--expected-version", "5"], 3);
    assert!(err.contains("wrong expected version"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");

    let id = "0190a6a0-0000-7000-8000-000000000001";
    cli.ok(&["append", "unit-PL-1001", "--type", "A", "--data", "{}", "--id", id]);
    let again = cli.ok(&["append", "unit-PL-1001", "--type", "A", "--data", "{}", "--id", id]);
    assert!(again.contains("\"first_position\":2"), "retry returns the original result: {again}");
    cli.fails(&["append", "unit-PL-1001", "--type", "A", "--data", "{\"x\":1}", "--id", id], 4);
    cli.fails(&["read", "unit-nothing"], 5);

    let events = lines(&cli.ok(&["read", "unit-PL-1001"]));
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["data"]["door"], 3);
    for field in ["position", "stream", "stream_version", "id", "type", "data", "metadata", "recorded_at"] {
        assert!(events[0].get(field).is_some(), "missing {field}");
    }
}

#[test]
fn bad_input_is_rejected_and_stores_nothing() {
    let cli = Cli::new();
    cli.ok(&["append", "s-1", "--type", "T", "--data", "{}"]);
    let long = "x".repeat(256);
    let control = "unit-\u{7}";
    let cases: Vec<Vec<&str>> = vec![
        vec!["append", "", "--type", "T", "--data", "{}"],
        vec!["append", &long, "--type", "T", "--data", "{}"],
        vec!["append", control, "--type", "T", "--data", "{}"],
        vec!["append", "s-1", "--type", "", "--data", "{}"],
        vec!["append", "s-1", "--type", "T", "--data", "{not json"],
        vec!["append", "s-1", "--type", "T", "--data", "{}", "--metadata", "[1,2]"],
        vec!["append", "s-1", "--type", "T", "--data", "{}", "--metadata", "nope"],
        vec!["append", "s-1", "--type", "T", "--data", "{}", "--id", "not-a-uuid"],
        vec!["append", "s-1", "--type", "T", "--data", "{}", "--expected-version", "-1"],
        vec!["append", "s-1", "--type", "T", "--data", "{}", "--expected-version", "seven"],
        vec!["--max-event-bytes", "10", "append", "s-1", "--type", "T", "--data", r#"{"long":"xxxxxxxxxxxx"}"#],
        vec!["append", "s-1", "--type", "T"],
        vec!["append", "s-1", "--type", "T", "--data", "{}", "--file", "x.ndjson"],
        vec!["read", "s-1", "--limit", "-3"],
        vec!["no-such-command"],
    ];
    for args in cases {
        let err = cli.fails(&args, 2);
        assert_eq!(err.lines().count(), 1, "{args:?}: one-line error, got {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    assert_eq!(cli.head(), 1, "no bad input stored anything");
}

#[test]
fn append_file_is_atomic_and_reports_bad_lines() {
    let cli = Cli::new();
    let good = (0..5).map(|i| format!(r#"{{"type":"T","data":{{"i":{i}}}}}"#)).collect::<Vec<_>>().join("\n");
    write(&cli.path("good.ndjson"), &good);
    let bad = format!("{good}\n{{\"type\":\"T\",\"data\":{{\"i\":5}}}}\n{{\"type\":\"T\", oops}}\n");
    write(&cli.path("bad.ndjson"), &bad);
    let err = cli.fails(&["append", "batch-1", "--file", cli.path("bad.ndjson").to_str().unwrap()], 2);
    assert!(err.contains("line 7"), "names the line: {err}");
    write(&cli.path("empty.ndjson"), "\n\n");
    let err = cli.fails(&["append", "batch-1", "--file", cli.path("empty.ndjson").to_str().unwrap()], 2);
    assert!(err.contains("no events"), "{err}");
    let err = cli.fails(
        &["--max-batch-events", "3", "append", "batch-1", "--file", cli.path("good.ndjson").to_str().unwrap()],
        2,
    );
    assert!(err.contains("limit"), "{err}");
    write(&cli.path("meta.ndjson"), "{\"type\":\"T\",\"data\":1,\"metadata\":5}\n");
    cli.fails(&["append", "batch-1", "--file", cli.path("meta.ndjson").to_str().unwrap()], 2);
    assert!(!cli.store.exists() || cli.head() == 0, "nothing stored");

    let out = cli.ok(&["append", "batch-1", "--file", cli.path("good.ndjson").to_str().unwrap()]);
    assert!(out.contains("\"last_position\":5"), "{out}");
    let out = cli.run_with_stdin(&["append", "batch-2", "--file", "-"], &good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cli.head(), 10);
}

#[test]
fn paging_reads_forward_backward_and_filtered() {
    let cli = Cli::new();
    let many =
        (0..2500).map(|i| format!(r#"{{"type":"T{}","data":{{"i":{i}}}}}"#, i % 2)).collect::<Vec<_>>().join("\n");
    write(&cli.path("many.ndjson"), &many);
    cli.ok(&["append", "unit-1", "--file", cli.path("many.ndjson").to_str().unwrap()]);
    cli.ok(&["append", "order-1", "--type", "T0", "--data", "{}"]);
    assert_eq!(lines(&cli.ok(&["read", "unit-1"])).len(), 2500);
    let back = lines(&cli.ok(&["read", "unit-1", "--backward", "--limit", "1500"]));
    assert_eq!(back.len(), 1500);
    assert_eq!(back[0]["stream_version"], 2499);
    assert_eq!(back[1499]["stream_version"], 1000);
    let from = lines(&cli.ok(&["read", "unit-1", "--from", "2490"]));
    assert_eq!(from.len(), 10);
    let t1 = lines(&cli.ok(&["read-all", "--type", "T1"]));
    assert_eq!(t1.len(), 1250);
    let orders = lines(&cli.ok(&["read-all", "--category", "order"]));
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["position"], 2501);
    let streams = lines(&cli.ok(&["streams", "--category", "unit"]));
    assert_eq!(streams.len(), 1);
}

#[test]
fn export_import_round_trip_is_idempotent() {
    let source = Cli::new();
    for i in 0..30 {
        source.ok(&[
            "append",
            &format!("unit-{}", i % 4),
            "--type",
            "T",
            "--data",
            &format!(r#"{{"i":{i}}}"#),
            "--metadata",
            r#"{"device":"d"}"#,
        ]);
    }
    let exported = source.ok(&["export"]);
    let file = source.path("export.ndjson");
    write(&file, &exported);
    let target = Cli::new();
    let first: serde_json::Value = serde_json::from_str(&target.ok(&["import", file.to_str().unwrap()])).unwrap();
    assert_eq!((first["imported"].as_u64(), first["already_present"].as_u64()), (Some(30), Some(0)));
    let again: serde_json::Value = serde_json::from_str(&target.ok(&["import", file.to_str().unwrap()])).unwrap();
    assert_eq!((again["imported"].as_u64(), again["already_present"].as_u64()), (Some(0), Some(30)));
    assert_eq!(target.head(), 30);
    assert_eq!(
        target.ok(&["export"]).replace(|c: char| c.is_ascii_digit(), ""),
        exported.replace(|c: char| c.is_ascii_digit(), "")
    );
    let strip_time = |text: &str| {
        lines(text)
            .into_iter()
            .map(|mut v| {
                v["recorded_at"] = serde_json::Value::Null;
                v
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip_time(&target.ok(&["export"])), strip_time(&exported), "same events, ids, versions and positions");

    let broken = format!("{exported}{{\"stream\":\"unit-9\",\"type\":\"T\"}}\n");
    write(&source.path("broken.ndjson"), &broken);
    let fresh = Cli::new();
    let err = fresh.fails(&["import", source.path("broken.ndjson").to_str().unwrap()], 2);
    assert!(err.contains("line 31"), "{err}");
    assert!(!fresh.store.exists() || fresh.head() == 0, "a malformed import stores nothing");
}

#[test]
fn bench_without_the_bench_binary_is_a_one_line_error() {
    let cli = Cli::new();
    let out =
        cli.command().args(["bench", "append"]).env("REEL_BENCH_BIN", cli.dir.path().join("missing")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build --release -p reel-bench") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn store_path_problems_are_clear() {
    let cli = Cli::new();
    let err = cli.fails(&["--store", cli.dir.path().to_str().unwrap(), "stats"], 2);
    assert!(err.contains("is a directory"), "{err}");
    let err = cli.fails(&["--store", "/proc/reel-cannot-create/reel.db", "stats"], 1);
    assert!(err.contains("/proc/reel-cannot-create"), "names the path: {err}");
    let err = cli.fails(&["--store", "mysql://x/y", "stats"], 2);
    assert!(err.contains("not supported"), "{err}");
    cli.ok(&["append", "s-1", "--type", "T", "--data", "{}"]);
    let conn = rusqlite::Connection::open(&cli.store).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = cli.fails(&["stats"], 2);
    assert!(err.contains("schema version 99"), "{err}");
}

#[test]
fn follow_prints_appends_from_other_processes() {
    let cli = Cli::new();
    cli.ok(&["append", "live-1", "--type", "Before", "--data", "{}"]);
    let mut follower =
        cli.command().args(["read-all", "--follow"]).stdout(Stdio::piped()).spawn().expect("spawn follower");
    let mut reader = BufReader::new(follower.stdout.take().expect("stdout"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("first line");
    assert!(line.contains("Before"), "{line}");
    let started = Instant::now();
    cli.ok(&["append", "live-1", "--type", "After", "--data", "{}"]);
    line.clear();
    reader.read_line(&mut line).expect("followed line");
    assert!(line.contains("After"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(30));
    follower.kill().expect("stop follower");
    let _ = follower.wait();
}

/// CPU time (user + system, in clock ticks) a process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn idle_follower_does_not_spin() {
    let cli = Cli::new();
    cli.ok(&["append", "idle-1", "--type", "E", "--data", "{}"]);
    let mut follower = cli.command().args(["read-all", "--follow"]).stdout(Stdio::piped()).spawn().expect("spawn");
    let mut reader = BufReader::new(follower.stdout.take().expect("stdout"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("caught up");
    let before = cpu_ticks(follower.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(follower.id()) - before;
    follower.kill().expect("stop follower");
    let _ = follower.wait();
    // A polling loop burns a whole core (~200 ticks in 2 s); a woken follower uses next to nothing.
    assert!(used < 20, "idle follower used {used} ticks of CPU in 2 s");
}

/// Tags, `reel query`, conditional appends (exit 6 when the condition fails, nothing stored), tag
/// filters on `read-all` and `consume`, tags kept through export and import.
#[test]
fn tags_queries_and_conditional_appends_from_the_command_line() {
    let cli = Cli::new();
    let reserve = |stream: &str, after: Option<&str>| {
        let mut args = vec![
            "append",
            stream,
            "--type",
            "LockerReserved",
            "--data",
            r#"{"from":100,"to":200}"#,
            "--tag",
            "locker:7",
            "--tag",
            "customer:c-1",
            "--expected-version",
            "no-stream",
            "--fail-if-tag",
            "locker:7",
            "--fail-if-type",
            "LockerReserved",
        ];
        if let Some(after) = after {
            args.extend(["--after", after]);
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    cli.ok(&["append", "other-1", "--type", "Noise", "--data", "{}", "--tag", "locker:8"]);
    let page: serde_json::Value =
        serde_json::from_str(&cli.ok(&["query", "--tag", "locker:7", "--type", "LockerReserved"])).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 0);
    assert_eq!(page["head"], 1, "the head of the read, to decide on");
    cli.ok(&as_str(&reserve("reservation-r1", Some("1"))));
    let err = cli.fails(&as_str(&reserve("reservation-r2", Some("1"))), 6);
    assert!(err.contains("condition failed") && err.contains("position 2"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    cli.fails(&as_str(&reserve("reservation-r3", None)), 6);
    assert_eq!(cli.head(), 2, "failed conditions stored nothing");
    let err = cli.fails(&as_str(&reserve("reservation-r4", Some("99"))), 2);
    assert!(err.contains("beyond the head"), "{err}");
    cli.fails(&["append", "x-1", "--type", "T", "--data", "{}", "--after", "1"], 2);
    cli.fails(&["append", "x-1", "--type", "T", "--data", "{}", "--tag", ""], 2);
    cli.fails(
        &["append", "x-1", "--type", "T", "--data", "{}", "--condition", r#"{"fail_if_events_match":{"items":[{}]}}"#],
        2,
    );
    cli.fails(&["query"], 2);
    cli.fails(&["query", "--query", r#"{"items":[]}"#], 2);
    assert_eq!(cli.head(), 2, "bad input stored nothing");
    let condition = r#"{"fail_if_events_match":{"items":[{"tags":["locker:9"]},{"types":["Nothing"]}]},"after":2}"#;
    cli.ok(&["append", "reservation-r5", "--type", "T", "--data", "{}", "--tag", "locker:9", "--condition", condition]);

    let page: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "query",
        "--query",
        r#"{"items":[{"tags":["locker:7"]},{"tags":["locker:9"]}]}"#,
    ]))
    .unwrap();
    let positions: Vec<u64> =
        page["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, vec![2, 3]);
    assert_eq!(page["events"][0]["tags"], serde_json::json!(["locker:7", "customer:c-1"]));

    let tagged = lines(&cli.ok(&["read-all", "--tag", "customer:c-1"]));
    assert_eq!(tagged.iter().map(|e| e["position"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2]);
    let consumed = lines(&cli.ok(&["consume", "tagged_1", "--mode", "once", "--tag", "locker:8", "--print"]));
    assert_eq!(consumed.iter().map(|e| e["position"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1]);

    let export = cli.ok(&["export"]);
    let copy = Cli::new();
    write(&copy.path("log.ndjson"), &export);
    copy.ok(&["import", copy.path("log.ndjson").to_str().unwrap()]);
    let imported = lines(&copy.ok(&["read-all"]));
    assert_eq!(imported[1]["tags"], serde_json::json!(["locker:7", "customer:c-1"]), "tags survive export and import");
    let page: serde_json::Value = serde_json::from_str(&copy.ok(&["query", "--tag", "locker:7"])).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "and are indexed again");
}

fn as_str(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
