//! `reel query`: the events of a query across streams and the head of the read.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use reel_core::api::QueryPageBody;
use reel_core::{Position, Query, QueryItem};

use crate::exit::InvalidInput;
use crate::{output, store, Cli};

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Events carrying this tag (repeatable: all of them).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Events of this type (repeatable: any of them).
    #[arg(long = "type")]
    pub event_type: Vec<String>,
    /// The whole query as JSON, for several items: {"items":[{"types":[…],"tags":[…]}]}.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["tag", "event_type"])]
    pub query: Option<String>,
    /// Only events after this position.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Most events to print.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

pub async fn run(cli: &Cli, args: &QueryArgs) -> Result<()> {
    let invalid = |e: reel_core::ReelError| anyhow!(InvalidInput(e.to_string()));
    let query = match &args.query {
        Some(json) => {
            let query: Query = serde_json::from_str(json)
                .map_err(|e| anyhow!(InvalidInput(format!("--query is not a valid query: {e}"))))?;
            query.validate().map_err(invalid)?;
            query
        }
        None if args.tag.is_empty() && args.event_type.is_empty() => {
            bail!(InvalidInput("give --tag and/or --type, or --query".into()))
        }
        None => {
            Query::new(vec![QueryItem::tags(args.tag.clone()).with_types(args.event_type.clone())]).map_err(invalid)?
        }
    };
    reel_core::backend::check_read_limit(args.limit).map_err(invalid)?;
    let store = store::open(cli).await?;
    let page = store.read_query(&query, Position(args.after), args.limit).await.context("reading the query")?;
    let next_after = page.next_after(args.limit).0;
    output::print_json(&QueryPageBody { events: page.events, head: page.head.0, next_after })
}
