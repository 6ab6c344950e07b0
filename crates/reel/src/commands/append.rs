//! `reel append`.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use reel_core::{AppendCondition, ExpectedVersion, NewEvent, Position, Query, QueryItem, StreamName};
use serde_json::value::RawValue;

use super::event_line::{metadata_object, parse_id, EventLine};
use crate::exit::InvalidInput;
use crate::{output, store, Cli};

#[derive(Args, Debug)]
pub struct AppendArgs {
    /// Stream to append to, e.g. unit-PL-1001.
    pub stream: String,
    /// Event type (with --data).
    #[arg(long = "type", conflicts_with = "file", required_unless_present = "file")]
    pub event_type: Option<String>,
    /// Event data as JSON (with --type).
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub data: Option<String>,
    /// Event metadata as a JSON object.
    #[arg(long, conflicts_with = "file")]
    pub metadata: Option<String>,
    /// Event id (UUID); makes retries idempotent. Generated when absent.
    #[arg(long, conflicts_with = "file")]
    pub id: Option<String>,
    /// NDJSON file of events ({"type", "data", "id"?, "metadata"?} per line), or - for stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// any, no-stream, exists, or the version of the stream's last event.
    #[arg(long, default_value = "any", allow_hyphen_values = true)]
    pub expected_version: String,
    /// A tag on the event, e.g. locker:7 (repeatable).
    #[arg(long, conflicts_with = "file")]
    pub tag: Vec<String>,
    /// Condition: store nothing if an event carrying this tag is stored (repeatable: an event
    /// carrying all of them), after --after when given.
    #[arg(long, value_name = "TAG")]
    pub fail_if_tag: Vec<String>,
    /// Condition: only events of this type count (repeatable: any of them).
    #[arg(long, value_name = "TYPE")]
    pub fail_if_type: Vec<String>,
    /// Condition: only events after this position count (the head of the read the decision
    /// was made on, e.g. `reel query`'s `head`).
    #[arg(long, value_name = "POSITION")]
    pub after: Option<u64>,
    /// The whole condition as JSON, for several query items:
    /// {"fail_if_events_match":{"items":[{"types":[…],"tags":[…]}]},"after":N}.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["fail_if_tag", "fail_if_type", "after"])]
    pub condition: Option<String>,
}

pub async fn run(cli: &Cli, args: &AppendArgs) -> Result<()> {
    // Everything is validated before the store is even opened: bad input changes nothing.
    let stream = StreamName::new(args.stream.clone())?;
    let expected: ExpectedVersion = args.expected_version.parse()?;
    let events = match &args.file {
        Some(path) => read_event_file(path)?,
        None => vec![single_event(args)?],
    };
    store::limits(cli)?.validate(&events)?;
    let condition = condition(args)?;
    let store = store::open(cli).await?;
    let result = match condition {
        Some(condition) => store.append_if(&stream, expected, events, condition).await,
        None => store.append(&stream, expected, events).await,
    }
    .with_context(|| format!("appending to {stream}"))?;
    output::print_json(&result)
}

/// The condition the flags describe, validated; `None` without condition flags.
fn condition(args: &AppendArgs) -> Result<Option<AppendCondition>> {
    let invalid = |e: reel_core::ReelError| anyhow!(InvalidInput(e.to_string()));
    if let Some(json) = &args.condition {
        let condition: AppendCondition = serde_json::from_str(json)
            .map_err(|e| anyhow!(InvalidInput(format!("--condition is not a valid condition: {e}"))))?;
        condition.fail_if_events_match.validate().map_err(invalid)?;
        return Ok(Some(condition));
    }
    if args.fail_if_tag.is_empty() && args.fail_if_type.is_empty() {
        if args.after.is_some() {
            bail!(InvalidInput("--after needs --fail-if-tag or --fail-if-type".into()));
        }
        return Ok(None);
    }
    let item = QueryItem::tags(args.fail_if_tag.clone()).with_types(args.fail_if_type.clone());
    let query = Query::new(vec![item]).map_err(invalid)?;
    Ok(Some(AppendCondition { fail_if_events_match: query, after: args.after.map(Position) }))
}

fn single_event(args: &AppendArgs) -> Result<NewEvent> {
    let (Some(event_type), Some(data)) = (&args.event_type, &args.data) else {
        bail!(InvalidInput("give --type and --data, or --file".into()));
    };
    let raw: &RawValue =
        serde_json::from_str(data).map_err(|e| anyhow!(InvalidInput(format!("--data is not valid JSON: {e}"))))?;
    let mut event = NewEvent::new(event_type.clone(), raw.get().as_bytes().to_vec());
    if let Some(metadata) = &args.metadata {
        let value: serde_json::Value = serde_json::from_str(metadata)
            .map_err(|e| anyhow!(InvalidInput(format!("--metadata is not valid JSON: {e}"))))?;
        event.metadata = metadata_object(value).context("--metadata")?;
    }
    if let Some(id) = &args.id {
        event.id = Some(parse_id(id).context("--id")?);
    }
    event.tags = args.tag.clone();
    Ok(event)
}

/// Reads every line first, so a bad line anywhere stores nothing.
fn read_event_file(path: &PathBuf) -> Result<Vec<NewEvent>> {
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    let mut events = Vec::new();
    for (index, line) in BufReader::new(reader).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number} of {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(EventLine::parse(&line, number)?.to_new_event(number)?);
    }
    if events.is_empty() {
        bail!(InvalidInput(format!("{} has no events", path.display())));
    }
    Ok(events)
}
