//! The uplink: a device's streams copied to the central server, version for version.

use std::sync::Arc;

use async_trait::async_trait;
use reel_client::HttpStore;
use reel_core::{RecordedEvent, ReelError, RunMode, Unavailable};
use reel_subscriptions::{BatchFailure, HandlerError, Message, Subscriber, SubscriberSpec};

use crate::copy::{copy_run, CopyFailure};
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
        copy_run(central, run).await.map_err(|failure| match failure {
            CopyFailure::Diverged(why) => why.into(),
            CopyFailure::Refused(e) => format!("the central server refused the event: {e}").into(),
            CopyFailure::Unavailable(e) => unavailable(self.central.url(), &e),
            CopyFailure::Moved(why) => Unavailable(why).into(),
        })
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

fn unavailable(url: &str, error: &ReelError) -> HandlerError {
    Unavailable(format!("central server {url}: {error}")).into()
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
