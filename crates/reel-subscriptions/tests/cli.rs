//! The mountable command set, parsed like an application's CLI and run against a real store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Parser;
use reel_core::{
    EventStore, ExpectedVersion, NewEvent, ReelError, StreamName, SubscriptionCriteria, SubscriptionStatus,
};
use reel_sqlite::SqliteStore;
use reel_subscriptions::cli::SubscriptionCommand;
use reel_subscriptions::{HandlerError, Message, Subscriber, SubscriberSpec, SubscriptionEngine};

#[derive(Parser)]
struct AppCli {
    #[command(subcommand)]
    subscriptions: SubscriptionCommand,
}

struct Count(SubscriberSpec, AtomicU64);

#[async_trait::async_trait]
impl Subscriber for Count {
    fn spec(&self) -> &SubscriberSpec {
        &self.0
    }
    async fn handle(&self, _message: &Message<'_>) -> Result<(), HandlerError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn run(engine: &SubscriptionEngine, args: &[&str]) -> Result<(), ReelError> {
    let cli =
        AppCli::try_parse_from([&["app"][..], args].concat()).map_err(|e| ReelError::InvalidArgument(e.to_string()))?;
    cli.subscriptions.run(engine).await
}

#[tokio::test]
async fn an_application_drives_its_subscribers_through_the_mounted_commands() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("reel.db")).unwrap());
    store
        .append(&StreamName::new("unit-1").unwrap(), ExpectedVersion::Any, vec![NewEvent::new("T", "{}")])
        .await
        .unwrap();
    let counter = Arc::new(Count(SubscriberSpec::projector("count_1").unwrap(), AtomicU64::new(0)));
    let engine =
        SubscriptionEngine::new(store.clone(), Arc::new(store.subscription_store().unwrap()), vec![counter.clone()])
            .unwrap();

    run(&engine, &["setup"]).await.unwrap();
    run(&engine, &["boot", "--group", "projector"]).await.unwrap();
    assert_eq!(counter.1.load(Ordering::SeqCst), 1);
    run(&engine, &["pause", "--id", "count_1"]).await.unwrap();
    run(&engine, &["status", "--json"]).await.unwrap();
    let status = engine.subscriptions(&SubscriptionCriteria::all()).await.unwrap()[0].status;
    assert_eq!(status, SubscriptionStatus::Paused);
    run(&engine, &["reset", "--id", "count_1", "--to-beginning"]).await.unwrap();
    run(&engine, &["reactivate"]).await.unwrap();
    run(&engine, &["run"]).await.unwrap();
    assert_eq!(counter.1.load(Ordering::SeqCst), 2, "replayed after the reset");
    let err = run(&engine, &["pause", "--id", "nobody"]).await.unwrap_err();
    assert!(matches!(err, ReelError::SubscriptionNotFound { .. }), "{err:?}");
    assert!(run(&engine, &["reset", "--to-time", "yesterday"]).await.is_err());
}
