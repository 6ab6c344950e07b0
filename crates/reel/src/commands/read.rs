//! `reel read` and `reel read-all`.

use anyhow::{Context, Result};
use clap::Args;
use reel_core::{AllReader, Direction, Position, ReadAllFilter, StreamName, StreamVersion};

use crate::output::Ndjson;
use crate::{store, Cli};
pub use reel_subscriptions::cli::shutdown_signal;

/// Events fetched per page (large pages make catch-up fast; see docs/BENCHMARKS.md).
const PAGE: usize = 5000;

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// Stream to read.
    pub stream: String,
    /// First version to read (default: the first event, or the last with --backward).
    #[arg(long)]
    pub from: Option<u64>,
    /// Newest first.
    #[arg(long)]
    pub backward: bool,
    /// Most events to print (default: all).
    #[arg(long)]
    pub limit: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ReadAllArgs {
    /// First position to read.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Only streams of this category (repeatable).
    #[arg(long)]
    pub category: Vec<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type")]
    pub event_type: Vec<String>,
    /// Only streams whose name starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only events carrying this tag (repeatable: all of them).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Most events to print (default: all).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Keep printing new events as they are appended, until interrupted.
    #[arg(long)]
    pub follow: bool,
}

pub async fn read_stream(cli: &Cli, args: &ReadArgs) -> Result<()> {
    let stream = StreamName::new(args.stream.clone())?;
    let store = store::open(cli).await?;
    let direction = if args.backward { Direction::Backward } else { Direction::Forward };
    let mut next = args.from.unwrap_or(if args.backward { u64::MAX } else { 0 });
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    let mut out = Ndjson::stdout();
    while remaining > 0 {
        let page_size = remaining.min(PAGE as u64) as usize;
        let events = store
            .read_stream(&stream, StreamVersion(next), direction, page_size)
            .await
            .with_context(|| format!("reading {stream}"))?;
        for event in &events {
            if !out.line(event)? {
                return Ok(());
            }
        }
        remaining -= events.len() as u64;
        match (events.last(), direction) {
            (None, _) => break,
            (Some(_), _) if events.len() < page_size => break,
            (Some(last), Direction::Forward) => next = last.stream_version.0 + 1,
            (Some(last), Direction::Backward) => match last.stream_version.0.checked_sub(1) {
                Some(v) => next = v,
                None => break,
            },
        }
    }
    out.flush()?;
    Ok(())
}

pub async fn read_all(cli: &Cli, args: &ReadAllArgs) -> Result<()> {
    let store = store::open(cli).await?;
    let filter = ReadAllFilter {
        categories: args.category.clone(),
        event_types: args.event_type.clone(),
        stream_prefix: args.prefix.clone(),
        tags: args.tag.clone(),
    };
    for tag in &filter.tags {
        reel_core::check_tag(tag).map_err(|e| anyhow::anyhow!(crate::exit::InvalidInput(format!("--tag: {e}"))))?;
    }
    let mut watch = store.watch_head();
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    let page_size = remaining.min(PAGE as u64) as usize;
    let mut reader = AllReader::new(store, Position(args.from.max(1)), filter, page_size);
    let mut out = Ndjson::stdout();
    let interrupted = shutdown_signal();
    tokio::pin!(interrupted);
    while remaining > 0 {
        match reader.next_page().await.context("reading the log")? {
            Some(events) => {
                for event in events.iter().take(remaining.min(usize::MAX as u64) as usize) {
                    if !out.line(event)? {
                        return Ok(());
                    }
                    remaining -= 1;
                }
            }
            None if args.follow => {
                if !out.flush()? {
                    return Ok(());
                }
                // Sleep until the head moves past what was read (no polling), or until interrupted.
                let read_up_to = Position(reader.position().0 - 1);
                tokio::select! {
                    woke = watch.wait_past(read_up_to) => { woke?; }
                    _ = &mut interrupted => break,
                }
            }
            None => break,
        }
    }
    out.flush()?;
    Ok(())
}
