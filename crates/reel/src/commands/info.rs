//! `reel streams` and `reel stats`.

use anyhow::{Context, Result};
use clap::Args;

use crate::output::{print_json, Ndjson};
use crate::{store, Cli};

#[derive(Args, Debug)]
pub struct StreamsArgs {
    /// Only streams of this category.
    #[arg(long)]
    pub category: Option<String>,
}

pub async fn streams(cli: &Cli, args: &StreamsArgs) -> Result<()> {
    let store = store::open(cli)?;
    let mut out = Ndjson::stdout();
    let mut after = None;
    loop {
        let page = store.streams(args.category.as_deref(), after.as_ref(), 1000).await.context("listing streams")?;
        for info in &page {
            if !out.line(info)? {
                return Ok(());
            }
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.stream.clone()),
            _ => break,
        }
    }
    out.flush()?;
    Ok(())
}

pub async fn stats(cli: &Cli) -> Result<()> {
    let store = store::open(cli)?;
    let stats = store.stats().await.context("reading statistics")?;
    print_json(&serde_json::json!({
        "event_count": stats.event_count,
        "stream_count": stats.stream_count,
        "head": stats.head,
        "file_bytes": stats.storage_bytes,
        "store": cli.store,
    }))
}
