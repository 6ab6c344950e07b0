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
    let store = store::open(cli).await?;
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
    let store = store::open(cli).await?;
    let stats = store.stats().await.context("reading statistics")?;
    print_json(&serde_json::json!({
        "event_count": stats.event_count,
        "stream_count": stats.stream_count,
        "head": stats.head,
        "file_bytes": stats.storage_bytes,
        "store": reel_postgres::redact(&cli.store),
    }))
}

pub async fn migrate(cli: &Cli) -> Result<()> {
    let version = match store::Dsn::parse(&cli.store)? {
        store::Dsn::Sqlite(_) => reel_sqlite::SCHEMA_VERSION as i64,
        store::Dsn::Postgres(_) => i64::from(reel_postgres::SCHEMA_VERSION),
        store::Dsn::Http(url) => anyhow::bail!(crate::exit::InvalidInput(format!(
            "{url} is a server: run `reel migrate` where the server's own --store is reachable"
        ))),
    };
    // Opening a store creates or upgrades its schema (and refuses one from a newer version).
    store::open(cli).await?;
    print_json(&serde_json::json!({ "store": reel_postgres::redact(&cli.store), "schema_version": version }))
}
