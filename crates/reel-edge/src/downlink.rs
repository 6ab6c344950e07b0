//! The downlink: the platform's stream for a device, copied from the central server into the
//! device's store as it grows.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reel_client::HttpStore;
use reel_core::{Direction, EventStore, ReelError, StreamName, StreamVersion};

use crate::copy::{copies, expected_before};
use crate::{CentralServer, Ownership};

/// Follows `unitconfig-NAME` on the central server and appends what is new to the device's
/// store, with the platform's event ids and versions, so local apps read the device's
/// configuration and commands without the network.
///
/// Live while the central server is reachable (a long poll on its stream alone wakes it as soon
/// as the platform appends there, and no other stream's events do), caught up after any time
/// away (it starts from the version the device already has), with nothing to retry centrally. The local copy is the central
/// stream version for version: the platform is its only writer, and the device's own API
/// refuses appends to it.
pub struct Downlink {
    ownership: Ownership,
    central: Arc<CentralServer>,
    local: Arc<dyn EventStore>,
    max_delay: Duration,
}

/// Events copied per read of the central stream.
const PAGE: usize = 1_000;

impl Downlink {
    /// A downlink for `ownership`'s device from `central` into `local`; while the server cannot
    /// be reached it tries again with backoff up to `max_delay`.
    pub fn new(
        ownership: Ownership,
        central: Arc<CentralServer>,
        local: Arc<dyn EventStore>,
        max_delay: Duration,
    ) -> Self {
        Self { ownership, central, local, max_delay }
    }

    /// Runs until `stop` resolves. Failures are logged and retried; none ends it.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let stream = match StreamName::new(self.ownership.config_stream()) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::error!(error = %e, "no downlink: the device's config stream name is invalid");
                return;
            }
        };
        let mut delay = Duration::from_millis(100);
        loop {
            let outcome = match self.central.store().await {
                Ok(central) => self.catch_up(central, &stream).await.map(|()| central),
                Err(e) => Err(e),
            };
            let pause = async {
                match outcome {
                    // Caught up: wait on the central server until the stream grows (a long poll on
                    // this stream alone, 25 s at a time).
                    Ok(central) => {
                        delay = Duration::from_millis(100);
                        match self.local.stream_version(&stream).await {
                            Ok(version) => {
                                let from = StreamVersion(version.map_or(0, |v| v.0 + 1));
                                let _ = central.wait_for_stream(&stream, from, 1, Duration::from_secs(25)).await;
                            }
                            Err(_) => tokio::time::sleep(delay).await,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, central = %self.central.url(), retry_in = ?delay, "downlink failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(self.max_delay);
                    }
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = pause => {}
            }
        }
    }

    /// Copies everything the central stream has past the local copy.
    async fn catch_up(&self, central: &HttpStore, stream: &StreamName) -> Result<(), ReelError> {
        loop {
            let from = self.local.stream_version(stream).await?.map_or(0, |v| v.0 + 1);
            let found = match central.read_stream(stream, StreamVersion(from), Direction::Forward, PAGE).await {
                Ok(found) => found,
                Err(ReelError::StreamNotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            let Some(first) = found.first() else { return Ok(()) };
            self.local.append(stream, expected_before(first.stream_version), copies(&found)).await?;
            tracing::info!(%stream, from, events = found.len(), "downlink copied configuration");
            if found.len() < PAGE {
                return Ok(());
            }
        }
    }
}
