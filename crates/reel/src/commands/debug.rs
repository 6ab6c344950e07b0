//! Hidden tools for the test suite.

use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Subcommand};
use reel_core::{EventId, ExpectedVersion, NewEvent, StreamName};
use tokio::sync::Mutex;

use crate::output::Ndjson;
use crate::{store, Cli};

#[derive(Args, Debug)]
pub struct DebugArgs {
    #[command(subcommand)]
    pub command: DebugCommand,
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Append tagged batches forever from several tasks, printing one line per acknowledged
    /// append. The crash test kills this process with SIGKILL and checks the store.
    AppendLoop {
        /// Concurrent writer tasks.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Largest batch; sizes cycle through 1..=max.
        #[arg(long, default_value_t = 20)]
        max_batch: usize,
    },
}

pub async fn run(cli: &Cli, args: &DebugArgs) -> Result<()> {
    match args.command {
        DebugCommand::AppendLoop { writers, max_batch } => append_loop(cli, writers.max(1), max_batch.max(1)).await,
    }
}

/// Failures in a row after which a writer of the append loop stops.
const MAX_FAILURES_IN_A_ROW: u32 = 100;

async fn append_loop(cli: &Cli, writers: usize, max_batch: usize) -> Result<()> {
    let store = store::open(cli).await?;
    let out = Arc::new(Mutex::new(Ndjson::stdout()));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (store, out) = (store.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = 0;
            for round in 0u64.. {
                let stream = StreamName::new(format!("crash-{writer}-{}", round % 5))?;
                let size = 1 + (round as usize + writer) % max_batch;
                let batch = EventId::new_v7().to_string();
                let events = (0..size)
                    .map(|index| {
                        let mut metadata = serde_json::Map::new();
                        metadata.insert("batch".into(), batch.clone().into());
                        metadata.insert("size".into(), size.into());
                        metadata.insert("index".into(), index.into());
                        NewEvent::new("Tick", vec![b'x'; 200]).with_metadata(metadata)
                    })
                    .collect();
                // An append that failed is not acknowledged; the loop goes on, as a server
                // would, and gives up only when the store keeps failing.
                let result = match store.append(&stream, ExpectedVersion::Any, events).await {
                    Ok(result) => {
                        failures = 0;
                        result
                    }
                    Err(e) if failures < MAX_FAILURES_IN_A_ROW => {
                        failures += 1;
                        eprintln!("append failed (not acknowledged): {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let ack = serde_json::json!({
                    "batch": batch,
                    "size": size,
                    "first_position": result.first_position,
                    "last_position": result.last_position,
                });
                let mut out = out.lock().await;
                out.line(&ack)?;
                out.flush()?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
