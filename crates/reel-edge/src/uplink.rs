//! The uplink: a device's streams copied to the central server, version for version.

use std::sync::Arc;

use async_trait::async_trait;
use reel_client::HttpStore;
use reel_core::{
    Direction, EventStore, ExpectedVersion, NewEvent, RecordedEvent, ReelError, RunMode, StreamName, StreamVersion,
    Unavailable,
};
use reel_subscriptions::{BatchFailure, HandlerError, Message, Subscriber, SubscriberSpec};

use crate::{CentralServer, Ownership};

/// A subscription on the device's store that appends every event of the streams the device owns
/// to the central server, in the device's order, with the device's event ids and `Exact`
/// expected versions.
///
/// Each run of consecutive events of one stream in a batch is one append. Because the device is
/// the only writer of its streams, the expected version always holds centrally, except after a
/// crash between an append and the saved position: the retry then finds its own events there
/// (by id), skips them and appends the rest. If the central stream holds an event the device
/// did not write, or is behind what the device already sent, nothing is overwritten or skipped:
/// the batch fails at that event with a message that says so, and the subscription retries,
/// then stays in `Error` (`reel subscriptions list`, the dashboard, `/metrics`).
///
/// While the central server cannot be reached (or refuses the token) the failure is
/// [`Unavailable`]: retried with backoff for as long as it lasts, never counted against the
/// retries; local appends go on regardless, and nothing queued expires.
pub struct Uplink {
    spec: SubscriberSpec,
    ownership: Ownership,
    central: Arc<CentralServer>,
}

impl Uplink {
    /// The subscription id every device's uplink has in its own store.
    pub const ID: &'static str = "uplink";

    /// An uplink for `ownership`'s streams to `central`. Nothing is contacted until there is
    /// something to send.
    pub fn new(ownership: Ownership, central: Arc<CentralServer>) -> Result<Self, ReelError> {
        let spec = SubscriberSpec::new(Self::ID, RunMode::FromBeginning)?.in_group("edge").in_categories(["unit"]);
        Ok(Self { spec, ownership, central })
    }

    /// The central store, connected on first use (the device may start offline).
    async fn central(&self) -> Result<&HttpStore, HandlerError> {
        self.central.store().await.map_err(|e| unavailable(self.central.url(), &e))
    }

    /// Appends one stream's run of events centrally, or finds it (or its start) there already.
    async fn push(&self, run: &[RecordedEvent]) -> Result<(), HandlerError> {
        let central = self.central().await?;
        let stream = &run[0].stream;
        let first = run[0].stream_version;
        match central.append(stream, expected_before(first), copies(run)).await {
            Ok(_) => Ok(()),
            // Not where the run starts, or a retry of an earlier append that covered only part
            // of this run (the server refuses those as duplicates): look at what is there.
            Err(ReelError::WrongExpectedVersion { .. } | ReelError::DuplicateEventId { .. }) => {
                self.reconcile(central, run).await
            }
            Err(e) => Err(classify(self.central.url(), e)),
        }
    }

    /// The central stream is not where this run starts: after a crash or a lost answer it holds
    /// the run's first events already (same ids, same versions), possibly from an append whose
    /// batch ended elsewhere; anything else is a stream the device did not write alone.
    async fn reconcile(&self, central: &HttpStore, run: &[RecordedEvent]) -> Result<(), HandlerError> {
        let stream = &run[0].stream;
        let first = run[0].stream_version;
        let found = match central.read_stream(stream, first, Direction::Forward, run.len()).await {
            Ok(found) => found,
            Err(ReelError::StreamNotFound { .. }) => Vec::new(),
            Err(e) => return Err(classify(self.central.url(), e)),
        };
        if found.is_empty() {
            let actual = central.stream_version(stream).await.map_err(|e| classify(self.central.url(), e))?;
            if actual.map_or(first.0 > 0, |v| v.0 + 1 < first.0) {
                return Err(diverged(
                    stream,
                    format!(
                        "the central copy is at version {} but this device already sent up to version {}",
                        actual.map_or("none (no stream)".to_string(), |v| v.0.to_string()),
                        first.0.saturating_sub(1)
                    ),
                ));
            }
            // Exactly where the run starts after all: it moved meanwhile; try again.
            return Err(Unavailable(format!("central stream {stream} changed while the uplink looked at it")).into());
        }
        for (sent, there) in run.iter().zip(&found) {
            if sent.id != there.id {
                return Err(diverged(
                    stream,
                    format!(
                        "version {} is event {} centrally but {} on this device",
                        there.stream_version.0, there.id, sent.id
                    ),
                ));
            }
        }
        if found.len() < run.len() {
            let rest = &run[found.len()..];
            match central.append(stream, expected_before(rest[0].stream_version), copies(rest)).await {
                Ok(_) => {}
                Err(ReelError::WrongExpectedVersion { .. }) => {
                    return Err(diverged(stream, "it changed while the uplink was catching up".into()))
                }
                Err(e) => return Err(classify(self.central.url(), e)),
            }
        }
        tracing::info!(%stream, from = first.0, found = found.len(), "uplink found events already sent; went on after them");
        Ok(())
    }
}

/// Most events in one central append, and most bytes of event data and metadata: well inside a
/// server's default limits (10,000 events, 16 MiB per request) whatever the engine's batch size
/// and the events' sizes.
const MAX_APPEND_EVENTS: usize = 1_000;
const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;

/// How many of `run`'s first events go in one append (at least one).
fn append_size(run: &[RecordedEvent]) -> usize {
    let mut bytes = 0;
    let fits = run
        .iter()
        .take(MAX_APPEND_EVENTS)
        .take_while(|e| {
            let metadata =
                if e.metadata.is_empty() { 0 } else { serde_json::to_vec(&e.metadata).map_or(0, |m| m.len()) };
            bytes += e.data.len() + e.event_type.len() + metadata;
            bytes <= MAX_APPEND_BYTES
        })
        .count();
    fits.max(1)
}

/// The expected version for an append whose first event is at `first`.
pub(crate) fn expected_before(first: StreamVersion) -> ExpectedVersion {
    match first.0 {
        0 => ExpectedVersion::NoStream,
        v => ExpectedVersion::Exact(StreamVersion(v - 1)),
    }
}

/// The events as another store keeps them: same ids, types, data and metadata.
pub(crate) fn copies(run: &[RecordedEvent]) -> Vec<NewEvent> {
    run.iter()
        .map(|e| NewEvent::new(e.event_type.clone(), e.data.clone()).with_id(e.id).with_metadata(e.metadata.clone()))
        .collect()
}

/// Errors that the server's answer makes final for this event; everything else (unreachable,
/// overloaded, a token refused) is waited out.
fn classify(url: &str, error: ReelError) -> HandlerError {
    match error {
        ReelError::InvalidEvent { .. }
        | ReelError::InvalidStreamName { .. }
        | ReelError::TooLarge { .. }
        | ReelError::DuplicateEventId { .. } => format!("the central server refused the event: {error}").into(),
        other => unavailable(url, &other),
    }
}

fn unavailable(url: &str, error: &ReelError) -> HandlerError {
    Unavailable(format!("central server {url}: {error}")).into()
}

fn diverged(stream: &StreamName, why: String) -> HandlerError {
    format!(
        "central stream {stream} holds what this device did not write ({why}); the uplink stops here and \
         overwrites nothing: compare both copies and stop whoever else writes it centrally"
    )
    .into()
}

#[async_trait]
impl Subscriber for Uplink {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(message.record())).await.map_err(|failure| failure.error)
    }

    async fn handle_batch(&self, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        let mut index = 0;
        while index < batch.len() {
            let stream = &batch[index].stream;
            let end = index + batch[index..].iter().take_while(|e| &e.stream == stream).count();
            if !self.ownership.device_owns(stream.as_str()) {
                index = end;
                continue;
            }
            while index < end {
                let part = append_size(&batch[index..end]);
                if let Err(error) = self.push(&batch[index..index + part]).await {
                    return Err(BatchFailure { index, error });
                }
                index += part;
            }
        }
        Ok(())
    }
}
