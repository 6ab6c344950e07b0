//! `reel subscriptions list|pause|reactivate|remove|reset`: operate subscriptions from a terminal.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use reel_core::{Position, SubscriptionCriteria, SubscriptionId, SubscriptionStore, Timestamp};
use reel_subscriptions::{EngineReport, ResetTo, SubscriptionEngine};

use crate::exit::InvalidInput;
use crate::output::{print_json, Ndjson};
use crate::{store, Cli};

#[derive(Args, Debug)]
pub struct SubscriptionsArgs {
    #[command(subcommand)]
    pub command: SubscriptionsCommand,
}

/// Which subscriptions: OR within --id and within --group, AND across; none given means all.
#[derive(Args, Debug, Clone)]
pub struct Selection {
    /// Subscription id (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Group (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
}

impl Selection {
    fn criteria(&self) -> Result<SubscriptionCriteria> {
        let ids = self.ids.iter().map(|id| SubscriptionId::new(id.clone())).collect::<Result<Vec<_>, _>>()?;
        Ok(SubscriptionCriteria { ids, groups: self.groups.clone() })
    }
}

#[derive(Subcommand, Debug)]
pub enum SubscriptionsCommand {
    /// Show subscriptions: status, position, lag, retries, last error.
    List {
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
    /// Delete (the subscriber's teardown runs where it is registered, not here).
    Remove(Selection),
    /// Move paused subscriptions to a new starting point; they resume from it when reactivated.
    Reset {
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

pub async fn run(cli: &Cli, args: &SubscriptionsArgs) -> Result<()> {
    let stores = store::open_with_subscriptions(cli)?;
    // No subscribers are registered here: operations act on the stored subscriptions only.
    let engine = SubscriptionEngine::new(stores.events.clone(), stores.subscriptions.clone(), vec![])?;
    match &args.command {
        SubscriptionsCommand::List { selection, json } => {
            list(&engine, stores.subscriptions.as_ref(), stores.events.head().await?, selection, *json).await
        }
        SubscriptionsCommand::Parked(selection) => parked(&engine, stores.subscriptions.as_ref(), selection).await,
        SubscriptionsCommand::Pause(selection) => finish(engine.pause(&selection.criteria()?).await?),
        SubscriptionsCommand::Reactivate(selection) => finish(engine.reactivate(&selection.criteria()?).await?),
        SubscriptionsCommand::Remove(selection) => finish(engine.remove(&selection.criteria()?).await?),
        SubscriptionsCommand::Reset { selection, to_beginning, to_position, to_time } => {
            let to = match (to_beginning, to_position, to_time) {
                (true, None, None) => ResetTo::Beginning,
                (false, Some(p), None) => ResetTo::Position(Position(*p)),
                (false, None, Some(time)) => ResetTo::Time(
                    Timestamp::parse_rfc3339(time)
                        .ok_or_else(|| anyhow!(InvalidInput(format!("--to-time {time:?} is not an RFC 3339 time"))))?,
                ),
                _ => bail!(InvalidInput("give one of --to-beginning, --to-position or --to-time".into())),
            };
            finish(engine.reset(&selection.criteria()?, to).await?)
        }
    }
}

async fn parked(engine: &SubscriptionEngine, store: &dyn SubscriptionStore, selection: &Selection) -> Result<()> {
    let mut out = Ndjson::stdout();
    for s in engine.subscriptions(&selection.criteria()?).await.context("listing subscriptions")? {
        for event in store.parked(&s.id).await? {
            if !out.line(&event)? {
                return Ok(());
            }
        }
    }
    out.flush()?;
    Ok(())
}

async fn list(
    engine: &SubscriptionEngine,
    store: &dyn SubscriptionStore,
    head: Position,
    selection: &Selection,
    json: bool,
) -> Result<()> {
    let subscriptions = engine.subscriptions(&selection.criteria()?).await.context("listing subscriptions")?;
    let mut parked = Vec::with_capacity(subscriptions.len());
    for s in &subscriptions {
        parked.push(store.parked(&s.id).await?.len());
    }
    if json {
        let mut out = Ndjson::stdout();
        for (s, parked) in subscriptions.iter().zip(&parked) {
            out.line(&serde_json::json!({
                "id": s.id,
                "group": s.group,
                "mode": s.run_mode,
                "status": s.status,
                "position": s.position,
                "lag": head.0.saturating_sub(s.position.0),
                "retries": s.retry_attempt,
                "parked": parked,
                "last_error": s.error.as_ref().map(|e| &e.message),
                "lease_owner": s.lease.as_ref().map(|l| &l.owner),
                "last_saved_at": s.last_saved_at,
            }))?;
        }
        out.flush()?;
        return Ok(());
    }
    println!(
        "{:<28} {:<12} {:<15} {:<9} {:>10} {:>10} {:>7} {:>6}  last error",
        "id", "group", "mode", "status", "position", "lag", "retries", "parked"
    );
    for (s, parked) in subscriptions.iter().zip(&parked) {
        let error = s.error.as_ref().map(|e| e.message.lines().next().unwrap_or("").to_string()).unwrap_or_default();
        println!(
            "{:<28} {:<12} {:<15} {:<9} {:>10} {:>10} {:>7} {:>6}  {}",
            s.id.as_str(),
            s.group,
            s.run_mode.as_str(),
            s.status.as_str(),
            s.position.0,
            head.0.saturating_sub(s.position.0),
            s.retry_attempt,
            parked,
            error.chars().take(80).collect::<String>()
        );
    }
    Ok(())
}

/// Prints what changed; unknown ids and refused changes make the command fail.
fn finish(report: EngineReport) -> Result<()> {
    print_json(&serde_json::json!({
        "changed": report.changed,
        "errors": report.errors.iter().map(|e| serde_json::json!({ "id": e.id, "message": e.message })).collect::<Vec<_>>(),
    }))?;
    if !report.unmatched.is_empty() {
        let ids: Vec<&str> = report.unmatched.iter().map(SubscriptionId::as_str).collect();
        return Err(reel_core::ReelError::SubscriptionNotFound { id: ids.join(", ") }.into());
    }
    if let Some(first) = report.errors.first() {
        bail!("{} subscription(s) refused: {}: {}", report.errors.len(), first.id, first.message);
    }
    Ok(())
}
