//! One module per subcommand.

pub mod append;
pub mod bench;
pub mod bridge;
pub mod consume;
pub mod debug;
pub mod devices;
pub mod edge;
pub mod event_line;
pub mod info;
pub mod query;
pub mod read;
pub mod relay;
pub mod serve;
pub mod subscriptions;
pub mod token;
pub mod transfer;

use anyhow::Result;

use crate::{Cli, Command};

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Append(args) => append::run(&cli, args).await,
        Command::Read(args) => read::read_stream(&cli, args).await,
        Command::ReadAll(args) => read::read_all(&cli, args).await,
        Command::Query(args) => query::run(&cli, args).await,
        Command::Streams(args) => info::streams(&cli, args).await,
        Command::Stats => info::stats(&cli).await,
        Command::Migrate => info::migrate(&cli).await,
        Command::Export(args) => transfer::export(&cli, args).await,
        Command::Import(args) => transfer::import(&cli, args).await,
        Command::Bench(args) => bench::run(&cli, args).await,
        Command::Subscriptions(args) => subscriptions::run(&cli, args).await,
        Command::Consume(args) => consume::run(&cli, args).await,
        Command::Relay(args) => relay::run(&cli, args).await,
        Command::Bridge(args) => bridge::run(&cli, args).await,
        Command::Serve(args) => serve::run(&cli, args).await,
        Command::Edge(args) => edge::run(&cli, args).await,
        Command::Token(args) => token::run(&cli, args).await,
        Command::Devices(args) => devices::run(&cli, args).await,
        Command::Debug(args) => debug::run(&cli, args).await,
    }
}
