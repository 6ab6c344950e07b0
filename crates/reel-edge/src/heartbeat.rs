//! Heartbeats: how the platform knows a device is online.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reel_core::api::HeartbeatBody;
use reel_core::{EventStore, StreamName, Timestamp};

use crate::{CentralServer, Ownership};

/// Sends the device's heartbeat to the central server every `interval`: its declared interval
/// (the platform counts it offline only after a multiple of it in silence), the round-trip
/// time of the previous heartbeat, its clock reading (the platform reports skew and orders
/// nothing by it) and how much of its configuration it holds (the platform's "last config
/// acknowledged"). Heartbeats are not events anywhere; one that fails is not retried, the next
/// one is sent on time.
pub struct Heartbeats {
    ownership: Ownership,
    central: Arc<CentralServer>,
    local: Arc<dyn EventStore>,
    interval: Duration,
    display_name: Option<String>,
    clock_offset_ms: i64,
}

impl Heartbeats {
    /// Heartbeats of `ownership`'s device to `central` every `interval`, reading how much
    /// configuration the device holds from `local`.
    pub fn new(
        ownership: Ownership,
        central: Arc<CentralServer>,
        local: Arc<dyn EventStore>,
        interval: Duration,
    ) -> Self {
        Self { ownership, central, local, interval, display_name: None, clock_offset_ms: 0 }
    }

    /// The device's name for people, shown in the platform's devices table.
    pub fn with_display_name(mut self, name: Option<String>) -> Self {
        self.display_name = name;
        self
    }

    /// Reports the device's clock this far off (milliseconds): to see, on a test fleet, that a
    /// wrong device clock is reported and changes nothing else.
    pub fn with_clock_offset_ms(mut self, offset: i64) -> Self {
        self.clock_offset_ms = offset;
        self
    }

    /// Runs until `stop` resolves.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let config = StreamName::new(self.ownership.config_stream()).ok();
        let mut rtt_ms: Option<u32> = None;
        let mut failing = false;
        loop {
            let config_version = match &config {
                Some(stream) => self.local.stream_version(stream).await.ok().map(|v| v.map_or(0, |v| v.0 + 1)),
                None => None,
            };
            let body = HeartbeatBody {
                interval_ms: self.interval.as_millis() as u64,
                clock_ms: Timestamp::now().unix_micros() / 1_000 + self.clock_offset_ms,
                rtt_ms,
                display_name: self.display_name.clone(),
                config_version,
            };
            let started = Instant::now();
            let sent = match self.central.store().await {
                Ok(central) => central.heartbeat(self.ownership.device(), &body).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(answer) => {
                    rtt_ms = Some(started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32);
                    if failing {
                        tracing::info!(central = %self.central.url(), "heartbeats reach the central server again");
                    }
                    failing = false;
                    if answer.clock_skew_ms.abs() > 5_000 {
                        tracing::warn!(
                            skew_ms = answer.clock_skew_ms,
                            "this device's clock differs from the platform's"
                        );
                    }
                }
                Err(e) => {
                    rtt_ms = None;
                    if !failing {
                        tracing::warn!(central = %self.central.url(), error = %e, "heartbeat not delivered; the next one is sent on time");
                    }
                    failing = true;
                }
            }
            let next = self.interval.saturating_sub(started.elapsed());
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(next) => {}
            }
        }
    }
}
