//! The subscriptions guide (docs/SUBSCRIPTIONS.md) as a program: a projector keeping a SQL
//! table with exactly-once checkpoints, a processor reacting to new events only, and a
//! once-subscriber writing a report, all run by one worker.
//!
//! Run with `cargo run -p reel-subscriptions --features cli --example guide`. With arguments it
//! mounts the subscription command set instead, e.g.
//! `cargo run -p reel-subscriptions --features cli --example guide -- --store app.db setup`,
//! then `… run --worker`, `… status`, `… pause --id notify_customer`.

use std::sync::Arc;
use std::time::Duration;

use reel_core::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, RunMode, StreamName, SubscriptionCriteria};
use reel_sqlite::{SqliteProjection, SqliteStore, SqliteSubscriptionStore};
use reel_subscriptions::{
    BatchFailure, HandlerError, Message, Subscriber, SubscriberSpec, SubscriptionEngine, TransactionalProjector,
    Worker, WorkerOptions,
};

/// Projector: reservations per locker unit, in a table of the store's own database. The rows and
/// the subscription's position commit in one transaction, so a crash can never count twice.
struct ReservationsPerUnit;

impl SqliteProjection for ReservationsPerUnit {
    fn setup(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS reservations_per_unit_1 (unit TEXT PRIMARY KEY, reservations INTEGER NOT NULL)",
        )?;
        Ok(())
    }

    fn teardown(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch("DROP TABLE IF EXISTS reservations_per_unit_1")?;
        Ok(())
    }

    fn apply(&self, tx: &rusqlite::Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO reservations_per_unit_1 (unit, reservations) VALUES (?1, 1)
                 ON CONFLICT (unit) DO UPDATE SET reservations = reservations + 1",
            )
            .map_err(|e| BatchFailure::at(0, e))?;
        for (index, event) in batch.iter().enumerate() {
            upsert.execute([event.stream.id_part().unwrap_or("")]).map_err(|e| BatchFailure::at(index, e))?;
        }
        Ok(())
    }
}

/// The projector as a subscriber: rows and checkpoint in one SQLite transaction.
fn reservations_per_unit(db: &SqliteSubscriptionStore) -> Result<Arc<dyn Subscriber>, reel_core::ReelError> {
    let spec = SubscriberSpec::projector("reservations_per_unit_1")?.handling(["LockerReserved"]);
    Ok(TransactionalProjector::new(spec, db.clone(), Arc::new(ReservationsPerUnit)))
}

/// Processor: reacts to reservations made from now on (history causes no side effects).
struct NotifyCustomer {
    spec: SubscriberSpec,
}

#[derive(serde::Deserialize)]
struct LockerReserved {
    customer: String,
}

#[async_trait::async_trait]
impl Subscriber for NotifyCustomer {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        let reserved: LockerReserved = message.event()?;
        println!("notify {}: locker reserved at unit {}", reserved.customer, message.stream_id().unwrap_or("?"));
        Ok(())
    }
}

/// Once-subscriber: a report over the history, then finished.
struct CountReport {
    spec: SubscriberSpec,
    count: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl Subscriber for CountReport {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn handle(&self, _message: &Message<'_>) -> Result<(), HandlerError> {
        self.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// The application's own command line, with the subscription commands mounted in it.
#[derive(clap::Parser)]
struct AppCli {
    /// The application's store.
    #[arg(long, default_value = "app.db")]
    store: std::path::PathBuf,
    #[command(subcommand)]
    subscriptions: reel_subscriptions::cli::SubscriptionCommand,
}

/// The application's subscribers, registered explicitly.
fn subscribers(db: &SqliteSubscriptionStore) -> Result<Vec<Arc<dyn Subscriber>>, reel_core::ReelError> {
    Ok(vec![
        reservations_per_unit(db)?,
        Arc::new(NotifyCustomer { spec: SubscriberSpec::processor("notify_customer")?.handling(["LockerReserved"]) }),
    ])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().len() > 1 {
        let cli = <AppCli as clap::Parser>::parse();
        let store = SqliteStore::open(&cli.store)?;
        let subscriptions = store.subscription_store()?;
        let engine =
            SubscriptionEngine::new(Arc::new(store), Arc::new(subscriptions.clone()), subscribers(&subscriptions)?)?;
        cli.subscriptions.run(&engine).await?;
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("reel.db"))?;
    let subscriptions = store.subscription_store()?;
    let reserve = |customer: &str| NewEvent::json("LockerReserved", &serde_json::json!({ "customer": customer }));
    let unit = StreamName::new("unit-PL-1001")?;
    store.append(&unit, ExpectedVersion::Any, vec![reserve("ada")?, reserve("grace")?]).await?;

    let projector = reservations_per_unit(&subscriptions)?;
    let processor =
        Arc::new(NotifyCustomer { spec: SubscriberSpec::processor("notify_customer")?.handling(["LockerReserved"]) });
    let report = Arc::new(CountReport {
        spec: SubscriberSpec::new("reservation_report", RunMode::Once)?,
        count: Default::default(),
    });
    let engine = SubscriptionEngine::new(
        Arc::new(store.clone()),
        Arc::new(subscriptions.clone()),
        vec![projector, processor, report.clone()],
    )?;

    // One worker runs them all; more worker processes on the same store would share them.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(engine.clone(), WorkerOptions::default()).run(async {
        let _ = stopped.await;
    }));
    engine.wait_for_catch_up(&SubscriptionCriteria::all(), Duration::from_secs(10)).await?;

    // Live: only this reservation reaches the processor.
    store.append(&unit, ExpectedVersion::Any, vec![reserve("linus")?]).await?;
    engine.wait_for_catch_up(&SubscriptionCriteria::all(), Duration::from_secs(10)).await?;

    let rows = subscriptions
        .with_connection(|c| {
            c.query_row("SELECT reservations FROM reservations_per_unit_1 WHERE unit = 'PL-1001'", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .await?;
    println!("projection: unit PL-1001 has {rows} reservations");
    println!("report (once): {} events", report.count.load(std::sync::atomic::Ordering::Relaxed));
    for s in engine.subscriptions(&SubscriptionCriteria::all()).await? {
        println!("{:<26} {:<9} position {}", s.id.as_str(), s.status.as_str(), s.position);
    }
    let _ = stop.send(());
    worker.await??;
    Ok(())
}
