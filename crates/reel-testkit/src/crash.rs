//! Checks a store after a writer process was killed with `kill -9` mid-append.
//!
//! The writer tags every event's metadata with `batch` (a UUID), `size` (events in the batch)
//! and prints one acknowledgement line per append that returned Ok:
//! `{"batch": "<uuid>", "size": n, "first_position": p, "last_position": q}`.

use std::collections::HashMap;

use reel_core::RecordedEvent;
use serde_json::Value;

/// What the check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Appends the writer acknowledged before it died.
    pub acknowledged: usize,
    /// Batches found in the store (acknowledged or not).
    pub batches_stored: usize,
    /// Events in the store.
    pub events_stored: usize,
}

/// Every acknowledged batch is stored whole at its acknowledged positions, no batch is partial,
/// and positions run 1..N.
pub fn verify_after_crash(acks: &[Value], log: &[RecordedEvent]) -> Result<CrashReport, String> {
    for (i, e) in log.iter().enumerate() {
        if e.position.0 != i as u64 + 1 {
            return Err(format!("gap: event #{i} has position {}", e.position));
        }
    }
    let mut batches: HashMap<String, (u64, Vec<u64>)> = HashMap::new();
    for e in log {
        let batch = e.metadata.get("batch").and_then(Value::as_str).ok_or("event without batch tag")?;
        let size = e.metadata.get("size").and_then(Value::as_u64).ok_or("event without size tag")?;
        let entry = batches.entry(batch.to_string()).or_insert((size, Vec::new()));
        entry.1.push(e.position.0);
    }
    for (batch, (size, positions)) in &batches {
        if positions.len() as u64 != *size {
            return Err(format!("batch {batch} is partial: {} of {size} events stored", positions.len()));
        }
        if positions.windows(2).any(|w| w[1] != w[0] + 1) {
            return Err(format!("batch {batch} is not contiguous: {positions:?}"));
        }
    }
    for ack in acks {
        let batch = ack["batch"].as_str().ok_or("ack without batch")?;
        let (_, positions) = batches.get(batch).ok_or_else(|| format!("acknowledged batch {batch} was lost"))?;
        let first = ack["first_position"].as_u64().ok_or("ack without first_position")?;
        let last = ack["last_position"].as_u64().ok_or("ack without last_position")?;
        if positions.first() != Some(&first) || positions.last() != Some(&last) {
            return Err(format!("batch {batch} acknowledged at {first}..{last} but stored at {positions:?}"));
        }
    }
    Ok(CrashReport { acknowledged: acks.len(), batches_stored: batches.len(), events_stored: log.len() })
}
