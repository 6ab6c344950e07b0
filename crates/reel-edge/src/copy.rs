//! Copying a run of a device's events into another store exactly: same ids, same versions,
//! once. Used by the uplink (device to central server) and by the platform's fetch from units.

use reel_core::{
    Direction, EventStore, ExpectedVersion, NewEvent, RecordedEvent, ReelError, StreamName, StreamVersion,
};

/// Why a run was not copied.
#[derive(Debug)]
pub(crate) enum CopyFailure {
    /// The target stream holds what the device did not write; nothing was overwritten.
    Diverged(String),
    /// The target refused the events themselves (invalid, too large): final for them.
    Refused(ReelError),
    /// The target could not be reached or answered with a failure that may pass.
    Unavailable(ReelError),
    /// The target stream moved while it was looked at: try again.
    Moved(String),
}

/// Appends `run` (consecutive events of one stream, from the source store) to `target` with
/// the source's ids and `Exact` versions. When the target is not where the run starts, it
/// looks: events already there with the same ids (a retry after a lost answer or a crash) are
/// skipped and the rest appended; anything else is [`CopyFailure::Diverged`].
pub(crate) async fn copy_run(target: &dyn EventStore, run: &[RecordedEvent]) -> Result<(), CopyFailure> {
    let stream = &run[0].stream;
    let first = run[0].stream_version;
    match target.append(stream, expected_before(first), copies(run)).await {
        Ok(_) => Ok(()),
        // Not where the run starts, or a retry of an earlier append that covered only part of
        // this run (stores refuse those as duplicates): look at what is there.
        Err(ReelError::WrongExpectedVersion { .. } | ReelError::DuplicateEventId { .. }) => {
            reconcile(target, run).await
        }
        Err(e) => Err(classify(e)),
    }
}

/// The target stream is not where this run starts: after a crash or a lost answer it holds the
/// run's first events already (same ids, same versions), possibly from an append whose batch
/// ended elsewhere; anything else is a stream the device did not write alone.
async fn reconcile(target: &dyn EventStore, run: &[RecordedEvent]) -> Result<(), CopyFailure> {
    let stream = &run[0].stream;
    let first = run[0].stream_version;
    let found = match target.read_stream(stream, first, Direction::Forward, run.len()).await {
        Ok(found) => found,
        Err(ReelError::StreamNotFound { .. }) => Vec::new(),
        Err(e) => return Err(classify(e)),
    };
    if found.is_empty() {
        let actual = target.stream_version(stream).await.map_err(classify)?;
        if actual.map_or(first.0 > 0, |v| v.0 + 1 < first.0) {
            return Err(diverged(
                stream,
                format!(
                    "the copy is at version {} but this device already sent up to version {}",
                    actual.map_or("none (no stream)".to_string(), |v| v.0.to_string()),
                    first.0.saturating_sub(1)
                ),
            ));
        }
        // Exactly where the run starts after all: it moved meanwhile; try again.
        return Err(CopyFailure::Moved(format!("stream {stream} changed while it was looked at")));
    }
    for (sent, there) in run.iter().zip(&found) {
        if sent.id != there.id {
            return Err(diverged(
                stream,
                format!(
                    "version {} is event {} there but {} on this device",
                    there.stream_version.0, there.id, sent.id
                ),
            ));
        }
    }
    if found.len() < run.len() {
        let rest = &run[found.len()..];
        match target.append(stream, expected_before(rest[0].stream_version), copies(rest)).await {
            Ok(_) => {}
            Err(ReelError::WrongExpectedVersion { .. }) => {
                return Err(diverged(stream, "it changed while the copy was catching up".into()))
            }
            Err(e) => return Err(classify(e)),
        }
    }
    tracing::info!(%stream, from = first.0, found = found.len(), "events found already copied; went on after them");
    Ok(())
}

/// The expected version for an append whose first event is at `first`.
pub(crate) fn expected_before(first: StreamVersion) -> ExpectedVersion {
    match first.0 {
        0 => ExpectedVersion::NoStream,
        v => ExpectedVersion::Exact(StreamVersion(v - 1)),
    }
}

/// The events as another store keeps them: same ids, types, data, metadata and tags.
pub(crate) fn copies(run: &[RecordedEvent]) -> Vec<NewEvent> {
    run.iter().map(RecordedEvent::to_new_event).collect()
}

/// Errors that make the answer final for these events; everything else (unreachable,
/// overloaded, a token refused) is waited out.
fn classify(error: ReelError) -> CopyFailure {
    match error {
        ReelError::InvalidEvent { .. }
        | ReelError::InvalidStreamName { .. }
        | ReelError::TooLarge { .. }
        | ReelError::DuplicateEventId { .. } => CopyFailure::Refused(error),
        other => CopyFailure::Unavailable(other),
    }
}

fn diverged(stream: &StreamName, why: String) -> CopyFailure {
    CopyFailure::Diverged(format!(
        "central stream {stream} holds what this device did not write ({why}); copying stops here and \
         overwrites nothing: compare both copies and stop whoever else writes it centrally"
    ))
}
