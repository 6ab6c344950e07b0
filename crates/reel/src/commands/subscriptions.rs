//! `reel subscriptions list|parked|pause|reactivate|remove|reset`: operate subscriptions from a
//! terminal. The commands live in `reel_subscriptions::cli`, which applications mount too.

use anyhow::Result;
use clap::Args;
use reel_subscriptions::cli::OperateCommand;
use reel_subscriptions::SubscriptionEngine;

use crate::{store, Cli};

#[derive(Args, Debug)]
pub struct SubscriptionsArgs {
    #[command(subcommand)]
    pub command: OperateCommand,
}

pub async fn run(cli: &Cli, args: &SubscriptionsArgs) -> Result<()> {
    let stores = store::open_with_subscriptions(cli).await?;
    // No subscribers are registered here: only commands that act on stored state are offered.
    let engine = SubscriptionEngine::new(stores.events, stores.subscriptions, vec![])?;
    args.command.run(&engine).await?;
    Ok(())
}
