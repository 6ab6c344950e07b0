//! A clap command set to operate subscriptions, for `reel` and for applications that embed the
//! engine and mount it in their own binary (feature `cli`):
//!
//! ```no_run
//! # async fn example(engine: reel_subscriptions::SubscriptionEngine) -> Result<(), reel_core::ReelError> {
//! use clap::Parser;
//! use reel_subscriptions::cli::SubscriptionCommand;
//!
//! #[derive(Parser)]
//! struct AppCli {
//!     #[command(subcommand)]
//!     subscriptions: SubscriptionCommand,
//! }
//!
//! // e.g. `myapp setup`, `myapp run --worker`, `myapp status --group projector`
//! AppCli::parse().subscriptions.run(&engine).await
//! # }
//! ```

use std::io::Write;

use clap::{Args, Subcommand};
use reel_core::{Position, ReelError, SubscriptionCriteria, SubscriptionId, Timestamp};

use crate::{EngineReport, ResetTo, SubscriptionEngine, Worker, WorkerOptions};

/// Which subscriptions: OR within `--id` and within `--group`, AND across; none given means all.
#[derive(Args, Debug, Clone, Default)]
pub struct Selection {
    /// Subscription id (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Group (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
}

impl Selection {
    /// The engine criteria (ids validated).
    pub fn criteria(&self) -> Result<SubscriptionCriteria, ReelError> {
        let ids = self.ids.iter().map(|id| SubscriptionId::new(id.clone())).collect::<Result<Vec<_>, _>>()?;
        Ok(SubscriptionCriteria { ids, groups: self.groups.clone() })
    }
}

/// Everything: operating stored subscriptions and running the application's subscribers.
#[derive(Subcommand, Debug)]
pub enum SubscriptionCommand {
    /// Operate stored subscriptions.
    #[command(flatten)]
    Operate(OperateCommand),
    /// Run the lifecycle of the registered subscribers.
    #[command(flatten)]
    Lifecycle(LifecycleCommand),
}

impl SubscriptionCommand {
    /// Runs the command against `engine`, printing to stdout.
    pub async fn run(&self, engine: &SubscriptionEngine) -> Result<(), ReelError> {
        match self {
            SubscriptionCommand::Operate(command) => command.run(engine).await,
            SubscriptionCommand::Lifecycle(command) => command.run(engine).await,
        }
    }
}

/// Commands that need no subscriber code: safe from any process (`reel subscriptions …`).
#[derive(Subcommand, Debug)]
pub enum OperateCommand {
    /// Show subscriptions: status, position, lag, retries, parked events, last error.
    #[command(alias = "status")]
    List {
        /// Which subscriptions (`--id`, `--group`).
        #[command(flatten)]
        selection: Selection,
        /// One JSON object per subscription instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print parked events (skipped after their handler kept failing) as NDJSON.
    Parked(Selection),
    /// Stop processing; the position is kept.
    Pause(Selection),
    /// Resume: failed ones where they failed, paused ones where they were paused, detached or finished ones as active.
    Reactivate(Selection),
    /// Delete (the subscriber's teardown runs where it is registered).
    Remove(Selection),
    /// Move paused subscriptions to a new starting point; they resume from it when reactivated.
    Reset {
        /// Which subscriptions (`--id`, `--group`).
        #[command(flatten)]
        selection: Selection,
        /// Replay from the first event.
        #[arg(long, conflicts_with_all = ["to_position", "to_time"])]
        to_beginning: bool,
        /// Replay from this position.
        #[arg(long, conflicts_with = "to_time")]
        to_position: Option<u64>,
        /// Replay from the first event recorded at or after this RFC 3339 time.
        #[arg(long)]
        to_time: Option<String>,
    },
}

/// Commands that run subscriber code: only in the application that registers the subscribers.
#[derive(Subcommand, Debug)]
pub enum LifecycleCommand {
    /// Track new subscribers and set them up (then booting, or active with --skip-booting).
    Setup {
        /// Which subscriptions (`--id`, `--group`).
        #[command(flatten)]
        selection: Selection,
        /// Go straight to active.
        #[arg(long)]
        skip_booting: bool,
    },
    /// Catch booting subscriptions up with the log.
    Boot(Selection),
    /// Bring active subscriptions to the head once, or keep them running with --worker.
    Run {
        /// Which subscriptions (`--id`, `--group`).
        #[command(flatten)]
        selection: Selection,
        /// Keep running (leases, wake-ups) until SIGINT/SIGTERM.
        #[arg(long)]
        worker: bool,
    },
    /// Remove detached subscriptions, calling their teardown.
    Teardown(Selection),
    /// Hand parked events to their subscribers again.
    ReplayParked(Selection),
}

impl OperateCommand {
    /// Runs the command against `engine`, printing to stdout.
    pub async fn run(&self, engine: &SubscriptionEngine) -> Result<(), ReelError> {
        match self {
            OperateCommand::List { selection, json } => list(engine, &selection.criteria()?, *json).await,
            OperateCommand::Parked(selection) => {
                for s in engine.subscriptions(&selection.criteria()?).await? {
                    for event in engine.store.parked(&s.id).await? {
                        print_line(&serde_json::to_value(&event).unwrap_or_default());
                    }
                }
                Ok(())
            }
            OperateCommand::Pause(selection) => finish(engine.pause(&selection.criteria()?).await?),
            OperateCommand::Reactivate(selection) => finish(engine.reactivate(&selection.criteria()?).await?),
            OperateCommand::Remove(selection) => finish(engine.remove(&selection.criteria()?).await?),
            OperateCommand::Reset { selection, to_beginning, to_position, to_time } => {
                let to = match (to_beginning, to_position, to_time) {
                    (true, None, None) => ResetTo::Beginning,
                    (false, Some(p), None) => ResetTo::Position(Position(*p)),
                    (false, None, Some(time)) => ResetTo::Time(Timestamp::parse_rfc3339(time).ok_or_else(|| {
                        ReelError::InvalidArgument(format!("--to-time {time:?} is not an RFC 3339 time"))
                    })?),
                    _ => {
                        return Err(ReelError::InvalidArgument(
                            "give one of --to-beginning, --to-position or --to-time".into(),
                        ))
                    }
                };
                finish(engine.reset(&selection.criteria()?, to).await?)
            }
        }
    }
}

impl LifecycleCommand {
    /// Runs the command against `engine`, printing to stdout.
    pub async fn run(&self, engine: &SubscriptionEngine) -> Result<(), ReelError> {
        match self {
            LifecycleCommand::Setup { selection, skip_booting } => {
                finish(engine.setup(&selection.criteria()?, *skip_booting).await?)
            }
            LifecycleCommand::Boot(selection) => finish(engine.boot(&selection.criteria()?).await?),
            LifecycleCommand::Run { selection, worker: false } => finish(engine.run(&selection.criteria()?).await?),
            LifecycleCommand::Run { selection, worker: true } => {
                let options = WorkerOptions { criteria: selection.criteria()?, ..WorkerOptions::default() };
                Worker::new(engine.clone(), options).run(shutdown_signal()).await
            }
            LifecycleCommand::Teardown(selection) => finish(engine.teardown(&selection.criteria()?).await?),
            LifecycleCommand::ReplayParked(selection) => finish(engine.replay_parked(&selection.criteria()?).await?),
        }
    }
}

async fn list(engine: &SubscriptionEngine, criteria: &SubscriptionCriteria, json: bool) -> Result<(), ReelError> {
    let views = engine.overview(criteria).await?;
    let mut out = std::io::stdout().lock();
    if !json {
        let _ = writeln!(
            out,
            "{:<28} {:<12} {:<15} {:<20} {:>10} {:>10} {:>8} {:>7} {:>6}  {:<32} last error / warning",
            "id", "group", "mode", "status", "position", "lag", "lag s", "retries", "parked", "held by (renewed)"
        );
    }
    for s in &views {
        if json {
            let line = serde_json::json!({
                "id": s.id,
                "group": s.group,
                "mode": s.mode,
                "status": s.status,
                "position": s.position,
                "lag": s.lag,
                "lag_seconds": s.lag_seconds,
                "unavailable": s.unavailable,
                "retries": s.retries,
                "parked": s.parked_count,
                "last_error": s.last_error,
                "lease_owner": s.lease_owner,
                "lease_renewed_at": s.lease_renewed_at,
                "lease_expires_at": s.lease_expires_at,
                "held": s.held,
                "unattended": s.unattended,
                "last_saved_at": s.last_saved_at,
                "warning": s.warning,
                "warning_at": s.warning_at,
            });
            let _ = writeln!(out, "{line}");
        } else {
            // The error when there is one; otherwise the latest warning, with its age.
            let error = match (&s.last_error, &s.warning, s.warning_at) {
                (Some(error), _, _) => error.lines().next().unwrap_or("").to_string(),
                (None, Some(warning), Some(at)) => format!("warning ({}s ago): {warning}", seconds_since(at)),
                _ => String::new(),
            };
            // An active subscription that nobody holds is not following the log: say so.
            let status = if s.unattended {
                format!("{} (no worker)", s.status)
            } else if s.unavailable {
                format!("{} (unreachable)", s.status)
            } else {
                s.status.to_string()
            };
            let holder = match (&s.lease_owner, s.lease_renewed_at, s.held) {
                (Some(owner), Some(renewed), true) => format!("{owner} ({}s ago)", seconds_since(renewed)),
                (Some(owner), _, false) => format!("{owner} (lapsed)"),
                _ => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "{:<28} {:<12} {:<15} {:<20} {:>10} {:>10} {:>8.1} {:>7} {:>6}  {:<32} {}",
                s.id.as_str(),
                s.group,
                s.mode.as_str(),
                status,
                s.position.0,
                s.lag,
                s.lag_seconds,
                s.retries,
                s.parked_count,
                holder,
                error.chars().take(80).collect::<String>()
            );
        }
    }
    Ok(())
}

/// Whole seconds from `then` to now (0 when the clocks disagree).
fn seconds_since(then: reel_core::Timestamp) -> i64 {
    ((reel_core::Timestamp::now().unix_micros() - then.unix_micros()) / 1_000_000).max(0)
}

fn print_line(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
}

/// Prints what changed; ids that matched nothing and refused changes are errors.
fn finish(report: EngineReport) -> Result<(), ReelError> {
    print_line(&serde_json::json!({
        "handled": report.handled,
        "changed": report.changed,
        "errors": report.errors.iter().map(|e| serde_json::json!({ "id": e.id, "message": e.message })).collect::<Vec<_>>(),
        "skipped": report.skipped.iter().map(|n| serde_json::json!({ "id": n.id, "reason": n.reason })).collect::<Vec<_>>(),
        "round_cap_reached": report.round_cap_reached,
    }));
    if !report.unmatched.is_empty() {
        let ids: Vec<&str> = report.unmatched.iter().map(SubscriptionId::as_str).collect();
        return Err(ReelError::SubscriptionNotFound { id: ids.join(", ") });
    }
    match report.errors.first() {
        Some(first) => Err(ReelError::SubscriptionFailed { id: first.id.to_string(), message: first.message.clone() }),
        None => Ok(()),
    }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called (not when the
/// future is first polled), so a signal that arrives while work is starting is not lost: call it
/// before starting the work it should stop.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
