//! What the relay tests share: a store with an engine running one relay, a log of interleaved
//! streams, and a loop that runs the relay until it reaches the head.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reel_core::{EventStore, ExpectedVersion, NewEvent, StreamName, Subscription, SubscriptionCriteria};
use reel_sqlite::SqliteStore;
use reel_subscriptions::{ClockBasedRetryStrategy, Subscriber, SubscriptionEngine};

/// A new store in its own directory and an engine running `relay` on it, set up.
pub async fn engine_with(
    relay: Arc<dyn Subscriber>,
    retry: ClockBasedRetryStrategy,
    batch_size: usize,
) -> (tempfile::TempDir, Arc<SqliteStore>, SubscriptionEngine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
    let engine = SubscriptionEngine::new(store.clone(), Arc::new(store.subscription_store().unwrap()), vec![relay])
        .unwrap()
        .with_batch_size(batch_size)
        .with_retry_strategy(retry);
    engine.setup(&SubscriptionCriteria::all(), true).await.unwrap();
    (dir, store, engine)
}

/// Appends `per_stream` events to each of `streams` streams (`cat<s % 10>-<s>`), ten at a time,
/// interleaved across streams so that every batch a relay reads mixes streams and keys.
pub async fn append(store: &SqliteStore, streams: usize, per_stream: usize) {
    for round in 0..per_stream / 10 {
        for s in 0..streams {
            let stream = StreamName::new(format!("cat{}-{s}", s % 10)).unwrap();
            let events = (0..10).map(|i| NewEvent::new("Counted", format!("{{\"n\":{}}}", round * 10 + i))).collect();
            store.append(&stream, ExpectedVersion::Any, events).await.unwrap();
        }
    }
}

/// Runs the relay until its position reaches the head (or fails the test after `timeout`).
pub async fn relay_until_caught_up(store: &SqliteStore, engine: &SubscriptionEngine, timeout: Duration) {
    let head = store.head().await.unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        engine.boot(&SubscriptionCriteria::all()).await.unwrap();
        engine.run(&SubscriptionCriteria::all()).await.unwrap();
        let subscription = &engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap()[0];
        if subscription.position >= head {
            return;
        }
        assert!(Instant::now() < deadline, "relay stuck at {} of {head}: {subscription:?}", subscription.position);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the engine's one subscription has saved a position (the relay is part-way).
#[allow(dead_code)]
pub async fn wait_until_relaying(engine: &SubscriptionEngine) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap()[0].position.0 == 0 {
        assert!(Instant::now() < deadline, "the relay never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the engine's one subscription shows a broker outage retried at least
/// `min_retries` times, and returns it as it was then.
#[allow(dead_code)]
pub async fn wait_for_outage(engine: &SubscriptionEngine, min_retries: u32, within: Duration) -> Subscription {
    let deadline = Instant::now() + within;
    loop {
        let s = engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap().remove(0);
        if s.error.as_ref().is_some_and(|e| e.is_unavailable()) && s.retry_attempt >= min_retries {
            return s;
        }
        assert!(Instant::now() < deadline, "the outage never showed as retries: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A broker process of the test's own on a free port, to stop and start again mid-test (the
/// shared brokers of the machine stay up for the other tests). Not every test binary that shares
/// this module uses it.
#[allow(dead_code)]
pub struct PrivateServer {
    port: u16,
    program: String,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

#[allow(dead_code)]
impl PrivateServer {
    /// Starts the first of `programs` that exists with `args`, in which `{port}` becomes the port.
    pub fn start(programs: &[&str], args: &[&str]) -> Self {
        let program = programs
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| panic!("one of {programs:?} must be installed for this test"))
            .to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let args = args.iter().map(|a| a.replace("{port}", &port.to_string())).collect();
        let mut server = Self { port, program, args, child: None };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the process (again) and waits until it accepts connections.
    pub fn restart(&mut self) {
        let child = std::process::Command::new(&self.program)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private {} did not start", self.program);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Suspends the process (SIGSTOP): its port still accepts connections but nothing answers,
    /// as with a broker that hangs; its data stays, unlike after [`PrivateServer::stop`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let child = self.child.as_ref().expect("the server runs");
        let status = std::process::Command::new("kill").arg(which).arg(child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill {which} {}", child.id());
    }

    /// Kills the process (SIGKILL): the broker is gone at once, as in a crash.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        // A paused process does not die of SIGKILL until it is resumed on some kernels.
        if self.child.is_some() {
            self.resume();
        }
        self.stop();
    }
}
