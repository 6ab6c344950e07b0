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

/// A `reel debug append-loop` process and the acknowledgements it printed so far. A thread
/// reads its output as it comes: a process whose pipe filled up would stop appending.
struct WriterProcess {
    child: std::process::Child,
    acks: std::sync::mpsc::Receiver<serde_json::Value>,
    received: Vec<serde_json::Value>,
    reading: std::thread::JoinHandle<()>,
}

impl WriterProcess {
    fn start(cli: &Cli) -> Self {
        let mut child = cli
            .command()
            .args(["debug", "append-loop", "--writers", "8", "--max-batch", "25"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, acks) = std::sync::mpsc::channel();
        let reading = std::thread::spawn(move || {
            // A line cut off by the kill is not an acknowledgement.
            for line in BufReader::new(stdout).lines() {
                let Some(ack) = line.ok().and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok()) else {
                    break;
                };
                if sender.send(ack).is_err() {
                    break;
                }
            }
        });
        Self { child, acks, received: Vec::new(), reading }
    }

    /// Waits until `count` more acknowledgements have arrived.
    fn read_acks(&mut self, count: usize) {
        let target = self.received.len() + count;
        while self.received.len() < target {
            match self.acks.recv_timeout(std::time::Duration::from_secs(120)) {
                Ok(ack) => self.received.push(ack),
                Err(e) => panic!("writer stopped acknowledging after {} appends: {e}", self.received.len()),
            }
        }
    }

    /// `kill -9`, then every acknowledgement it printed before dying.
    fn kill(mut self) -> Vec<serde_json::Value> {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
        self.reading.join().expect("output reader");
        self.received.extend(self.acks.try_iter());
        self.received
    }
}

fn run_and_kill(cli: &Cli, acks_before_kill: usize) -> Vec<serde_json::Value> {
    let mut writer = WriterProcess::start(cli);
    writer.read_acks(acks_before_kill);
    writer.kill()
}

/// Every acknowledged batch of `acks` is in the log whole, and nothing partial is (crash.rs).
fn verify_log(url: &str, schema: &str, acks: &[serde_json::Value]) -> reel_testkit::crash::CrashReport {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store: Arc<dyn EventStore> = Arc::new(PostgresStore::connect(url, schema).await.expect("reconnect"));
        let log = reel_testkit::contract::read_everything(&store).await;
        reel_testkit::crash::verify_after_crash(acks, &log).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Rows followers queued for the leading writer so far (forwarding.rs), as PostgreSQL counts them.
fn queued_rows(url: &str, schema: &str) -> i64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
            .query_one(
                "SELECT coalesce(sum(n_tup_ins), 0)::bigint FROM pg_stat_user_tables
                 WHERE schemaname = $1 AND relname = 'append_queue'",
                &[&schema],
            )
            .await
            .expect("table statistics")
            .get(0)
    })
}

/// The process that leads the schema's appends is killed while another process's groups go
/// through it: nothing acknowledged is lost, nothing is stored twice or in part, and the other
/// process goes on appending (it leads, or appends directly, once the leader is gone).
#[test]
fn kill_9_of_the_leading_writer_process_loses_nothing_and_its_follower_goes_on() {
    let cli = Cli::postgres();
    let (url, schema) = cli.postgres.clone().unwrap();
    cli.ok(&["migrate"]);
    // Alone on the schema, the first process leads from its first group on.
    let mut leader = WriterProcess::start(&cli);
    leader.read_acks(50);
    let second = Cli { dir: tempfile::tempdir().unwrap(), store: cli.store.clone(), postgres: cli.postgres.clone() };
    let mut follower = WriterProcess::start(&second);
    follower.read_acks(150);
    leader.read_acks(20);
    // PostgreSQL publishes table statistics within about a second.
    let mut queued = 0;
    for _ in 0..50 {
        follower.read_acks(5);
        queued = queued_rows(&url, &schema);
        if queued > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(queued > 0, "the second process handed groups to the leading one");
    let mut acks = leader.kill();
    follower.read_acks(150);
    acks.extend(follower.kill());
    let report = verify_log(&url, &schema, &acks);
    assert!(report.acknowledged >= 420, "{report:?}");
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
    let report = verify_log(&url, &schema, &acks);
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
