//! A program embedding the server with its own subscriber: the worker runs in the same process,
//! events appended over HTTP reach the subscriber, and the subscription shows up in the API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use reel_core::{EventStore, RunMode};
use reel_server::{Server, ServerConfig};
use reel_subscriptions::{HandlerError, Message, Subscriber, SubscriberSpec, SubscriptionEngine};

struct Counter {
    spec: SubscriberSpec,
    seen: Arc<AtomicU64>,
    warned: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Subscriber for Counter {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn handle(&self, _message: &Message<'_>) -> Result<(), HandlerError> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Warns once, after the third event (as a relay warns about an old replay).
    fn take_warning(&self) -> Option<String> {
        let third = self.seen.load(Ordering::SeqCst) >= 3;
        (third && !self.warned.swap(true, Ordering::SeqCst)).then(|| "saw three doors".to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_the_worker_for_its_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let local = reel_sqlite::SqliteStore::open(dir.path().join("reel.db")).unwrap();
    let subscriptions = Arc::new(local.subscription_store().unwrap());
    let events: Arc<dyn EventStore> = Arc::new(local);
    let seen = Arc::new(AtomicU64::new(0));
    let counter = Counter {
        spec: SubscriberSpec::new("door_counter", RunMode::FromBeginning).unwrap(),
        seen: seen.clone(),
        warned: Default::default(),
    };
    let engine = SubscriptionEngine::new(events.clone(), subscriptions, vec![Arc::new(counter)]).unwrap();
    let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
    let server = Server::start(events, engine, config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let url = format!("{base}/streams/unit-PL-1001");
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let answer = http
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"type":"DoorOpened","data":{}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
    }
    let started = std::time::Instant::now();
    while seen.load(Ordering::SeqCst) < 3 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the worker never handled the events");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let listed: serde_json::Value =
        http.get(format!("{base}/subscriptions")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["subscriptions"][0]["id"], "door_counter");
    assert_eq!(listed["subscriptions"][0]["status"], "active");
    // The subscriber's warning is kept with the subscription, for operators and for alerts.
    let started = std::time::Instant::now();
    let listed = loop {
        let listed: serde_json::Value =
            http.get(format!("{base}/subscriptions")).send().await.unwrap().json().await.unwrap();
        if !listed["subscriptions"][0]["warning"].is_null() {
            break listed;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the warning was never saved: {listed}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(listed["subscriptions"][0]["warning"], "saw three doors");
    assert!(listed["subscriptions"][0]["warning_at"].is_string(), "{listed}");
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"reel_subscription_warning_timestamp_seconds{subscription="door_counter"} "#),
        "{metrics}"
    );
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 3, "each event handled once");
}
