//! `reel export` and `reel import`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use reel_core::{AllReader, AppendRequest, ExpectedVersion, Position, ReadAllFilter, StreamName, StreamVersion};

use super::event_line::EventLine;
use crate::exit::InvalidInput;
use crate::output::{print_json, Ndjson};
use crate::{store, Cli};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// First position to export.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// NDJSON file written by `reel export`.
    pub file: PathBuf,
}

/// A progress bar on stderr; invisible when stderr is not a terminal.
pub fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template = format!("{what} {{bar:40}} {{pos}}/{{len}} events ({{per_sec}}, eta {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

pub async fn export(cli: &Cli, args: &ExportArgs) -> Result<()> {
    let store = store::open(cli).await?;
    let head = store.head().await?;
    let bar = progress(head.0.saturating_sub(args.from.saturating_sub(1)), "exporting");
    let mut out = Ndjson::stdout();
    let mut reader = AllReader::new(store, Position(args.from.max(1)), ReadAllFilter::default(), 5000);
    // Export a consistent prefix: stop at the head seen when the export started.
    'pages: while let Some(events) = reader.next_page().await.context("reading the log")? {
        for event in &events {
            if event.position > head {
                break 'pages;
            }
            if !out.line(event)? {
                return Ok(());
            }
        }
        bar.inc(events.len() as u64);
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(())
}

/// Appends submitted per group commit while importing.
const IMPORT_CHUNK_EVENTS: usize = 5_000;

pub async fn import(cli: &Cli, args: &ImportArgs) -> Result<()> {
    let limits = store::limits(cli)?;
    // First pass: validate every line, so a malformed file stores nothing.
    let total = for_each_line(&args.file, |number, line| {
        let event = line.to_new_event(number)?;
        limits.validate(std::slice::from_ref(&event)).map_err(|e| anyhow!(InvalidInput(format!("line {number}: {e}"))))
    })?;
    if total == 0 {
        bail!(InvalidInput(format!("{} has no events", args.file.display())));
    }
    let store = store::open(cli).await?;
    let mut import = Import {
        store,
        head_before: Position(0),
        bar: progress(total as u64, "importing"),
        pending: Vec::new(),
        pending_events: 0,
        imported: 0,
        already_present: 0,
    };
    import.head_before = import.store.head().await?;
    // Second pass: consecutive events of one stream become one append with an Exact version,
    // so a re-import is recognised as a retry of the same append and stores nothing.
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let mut last: Option<(StreamName, StreamVersion)> = None;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number} of {}", args.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let line = EventLine::parse(&line, number)?;
        let (stream, version) = line.position_in_stream(number)?;
        let event = line.to_new_event(number)?;
        let follows = matches!(&last, Some((s, v)) if *s == stream && v.0 + 1 == version.0);
        match import.pending.last_mut() {
            Some((_, request)) if follows && request.events.len() < limits.max_batch_events => {
                request.events.push(event)
            }
            _ => {
                let expected = match version.0.checked_sub(1) {
                    None => ExpectedVersion::NoStream,
                    Some(v) => ExpectedVersion::Exact(StreamVersion(v)),
                };
                import.pending.push((number, AppendRequest::new(stream.clone(), expected, vec![event])));
            }
        }
        import.pending_events += 1;
        last = Some((stream, version));
        if import.pending_events >= IMPORT_CHUNK_EVENTS {
            import.submit().await?;
        }
    }
    import.submit().await?;
    import.bar.finish_and_clear();
    print_json(&serde_json::json!({
        "events": total,
        "imported": import.imported,
        "already_present": import.already_present,
    }))
}

/// An import in progress: appends gathered for the next group commit, and counts.
struct Import {
    store: std::sync::Arc<dyn reel_core::EventStore>,
    head_before: Position,
    bar: ProgressBar,
    pending: Vec<(usize, AppendRequest)>,
    pending_events: usize,
    imported: u64,
    already_present: u64,
}

impl Import {
    /// Submits the gathered appends in order, in one `append_many`.
    async fn submit(&mut self) -> Result<()> {
        let (lines, requests): (Vec<usize>, Vec<AppendRequest>) = std::mem::take(&mut self.pending).into_iter().unzip();
        self.pending_events = 0;
        let sizes: Vec<u64> = requests.iter().map(|r| r.events.len() as u64).collect();
        let results = self.store.append_many(requests).await;
        for ((line, size), result) in lines.iter().zip(sizes).zip(results) {
            let result = result.with_context(|| format!("importing the events starting at line {line}"))?;
            // A retried append answers with its original positions, which predate this import.
            if result.first_position > self.head_before {
                self.imported += size;
            } else {
                self.already_present += size;
            }
            self.bar.inc(size);
        }
        Ok(())
    }
}

/// Calls `each` with every non-empty parsed line; returns how many there were.
fn for_each_line(path: &PathBuf, mut each: impl FnMut(usize, EventLine) -> Result<()>) -> Result<usize> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut count = 0;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number} of {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = EventLine::parse(&line, number)?;
        parsed.position_in_stream(number)?;
        each(number, parsed)?;
        count += 1;
    }
    Ok(count)
}
