//! The CLI on PostgreSQL: the same commands, `kill -9` of writer processes, and consumers taking
//! over from each other across processes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;

use common::{lines, Cli};
use reel_core::EventStore;
use reel_postgres::PostgresStore;

#[test]
fn commands_work_against_postgres() {
    let cli = Cli::postgres();
    let out = cli.ok(&["append", "unit-1", "--type", "Opened", "--data", r#"{"door":1}"#]);
    assert!(out.contains("\"first_position\":1"), "{out}");
    cli.fails(&["append", "unit-1", "--type", "Opened", "--data", "{}", "--expected-version", "7"], 3);
    let events = lines(&cli.ok(&["read-all"]));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["door"], 1);
    let exported = cli.ok(&["export"]);
    let file = cli.path("export.ndjson");
    std::fs::write(&file, &exported).unwrap();
    let again: serde_json::Value = serde_json::from_str(&cli.ok(&["import", file.to_str().unwrap()])).unwrap();
    assert_eq!(again["already_present"], 1, "re-importing into the same store stores nothing");
    let out = cli.command().args(["consume", "c1", "--mode", "once", "--print"]).output().unwrap();
    assert_eq!(lines(&String::from_utf8(out.stdout).unwrap()).len(), 1);
    let listed = lines(&cli.ok(&["subscriptions", "list", "--json"]));
    assert_eq!(listed[0]["status"], "finished");
    let migrated: serde_json::Value = serde_json::from_str(&cli.ok(&["migrate"])).unwrap();
    assert_eq!(migrated["schema_version"], reel_postgres::SCHEMA_VERSION);
}

#[test]
fn a_store_url_that_cannot_connect_is_one_line_naming_the_url_without_its_password() {
    let cli = Cli::new();
    let run = |url: &str| {
        let out = cli.command().args(["stats"]).env("REEL_STORE", url).output().expect("run reel");
        assert_eq!(out.status.code(), Some(1), "storage failures exit 1");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        stderr
    };
    let stderr = run("postgres://bob:hunter2@127.0.0.1:5432/test");
    assert!(stderr.contains("postgres://bob:***@127.0.0.1:5432/test"), "{stderr}");
    assert!(stderr.contains("role \"bob\" does not exist") && !stderr.contains("hunter2"), "{stderr}");
    let stderr = run("postgres://postgres@127.0.0.1:5432/no_such_database");
    assert!(stderr.contains("database \"no_such_database\" does not exist"), "{stderr}");
}

fn run_and_kill(cli: &Cli, acks_before_kill: usize) -> Vec<serde_json::Value> {
    let mut child = cli
        .command()
        .args(["debug", "append-loop", "--writers", "8", "--max-batch", "25"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut acks = Vec::new();
    let mut line = String::new();
    while acks.len() < acks_before_kill {
        line.clear();
        assert!(reader.read_line(&mut line).expect("read ack") > 0, "writer exited early");
        acks.push(serde_json::from_str(&line).expect("ack json"));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    for line in reader.lines() {
        match line.ok().and_then(|l| serde_json::from_str(&l).ok()) {
            Some(ack) => acks.push(ack),
            None => break,
        }
    }
    acks
}

#[test]
fn kill_9_of_writer_processes_leaves_no_partial_batch_and_loses_no_acknowledged_event() {
    let cli = Cli::postgres();
    let (url, schema) = cli.postgres.clone().unwrap();
    // Two writer processes at once, killed one after the other.
    let second = Cli { dir: tempfile::tempdir().unwrap(), store: cli.store.clone(), postgres: cli.postgres.clone() };
    cli.ok(&["migrate"]);
    let other = std::thread::spawn(move || run_and_kill(&second, 150));
    let mut acks = run_and_kill(&cli, 150);
    acks.extend(other.join().unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(async {
        let store: Arc<dyn EventStore> = Arc::new(PostgresStore::connect(&url, &schema).await.expect("reconnect"));
        let log = reel_testkit::contract::read_everything(&store).await;
        reel_testkit::crash::verify_after_crash(&acks, &log)
    });
    let report = report.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.acknowledged >= 300, "{report:?}");
}

#[test]
fn a_standby_consumer_takes_over_on_postgres() {
    let cli = Cli::postgres();
    for _ in 0..3 {
        cli.ok(&["append", "unit-1", "--type", "Tick", "--data", "{}"]);
    }
    let spawn = || {
        let mut child = cli
            .command()
            .args(["consume", "shared", "--print", "--lease-ttl", "1", "--batch", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn consumer");
        let out = BufReader::new(child.stdout.take().unwrap());
        (child, out)
    };
    let read = |out: &mut BufReader<std::process::ChildStdout>| {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "consumer ended");
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["position"].as_u64().unwrap()
    };
    let (mut first, mut first_out) = spawn();
    assert_eq!((read(&mut first_out), read(&mut first_out), read(&mut first_out)), (1, 2, 3));
    let (mut second, mut second_out) = spawn();
    first.kill().unwrap();
    first.wait().unwrap();
    for _ in 0..3 {
        cli.ok(&["append", "unit-1", "--type", "Tick", "--data", "{}"]);
    }
    let mut taken_over = vec![read(&mut second_out)];
    while taken_over.last() != Some(&6) {
        taken_over.push(read(&mut second_out));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(taken_over[0] == 3 || taken_over[0] == 4, "resumed at the saved position: {taken_over:?}");
    assert_eq!(taken_over, (taken_over[0]..=6).collect::<Vec<_>>());
}
