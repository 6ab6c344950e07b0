//! Prometheus metrics: appends, append latency, events read, HTTP requests by status, and each
//! subscription's position and lag (read from the store at scrape time).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabel {
    pub subscription: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    pub events_appended: Counter,
    pub append_requests: Counter,
    pub append_seconds: Histogram,
    pub events_read: Counter,
    pub http_requests: Family<StatusLabel, Counter>,
    pub live_clients: Gauge,
    pub subscription_position: Family<SubscriptionLabel, Gauge>,
    pub subscription_lag: Family<SubscriptionLabel, Gauge>,
    pub subscription_lag_seconds: Family<SubscriptionLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub subscription_retries: Family<SubscriptionLabel, Gauge>,
    pub subscription_unavailable: Family<SubscriptionLabel, Gauge>,
    pub subscription_parked: Family<SubscriptionLabel, Gauge>,
    pub subscription_warning_at: Family<SubscriptionLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Fleet-wide device counts (no label per device: a fleet has thousands).
    pub devices: Gauge,
    pub devices_online: Gauge,
    pub devices_clock_skewed: Gauge,
    pub devices_link_failing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("reel");
        let events_appended = Counter::default();
        let append_requests = Counter::default();
        let append_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let events_read = Counter::default();
        let http_requests = Family::<StatusLabel, Counter>::default();
        let live_clients = Gauge::default();
        let subscription_position = Family::default();
        let subscription_lag = Family::default();
        let subscription_lag_seconds = Family::default();
        let subscription_retries = Family::default();
        let subscription_unavailable = Family::default();
        let subscription_parked = Family::default();
        let subscription_warning_at = Family::default();
        registry.register("events_appended", "Events appended through the API", events_appended.clone());
        registry.register("append_requests", "Append requests that succeeded", append_requests.clone());
        registry.register("append_duration_seconds", "Time to store an append", append_seconds.clone());
        registry.register("events_read", "Events returned by reads and live streams", events_read.clone());
        registry.register("http_requests", "HTTP requests by response status", http_requests.clone());
        registry.register("live_clients", "Open live (SSE) connections", live_clients.clone());
        registry.register(
            "subscription_position",
            "Last position a subscription handled",
            subscription_position.clone(),
        );
        registry.register("subscription_lag", "Events between a subscription and the head", subscription_lag.clone());
        registry.register(
            "subscription_lag_seconds",
            "Age of the oldest event after a subscription's position (for a relay: not yet acknowledged by its broker)",
            subscription_lag_seconds.clone(),
        );
        registry.register(
            "subscription_retries",
            "Failed attempts at a subscription's current batch",
            subscription_retries.clone(),
        );
        registry.register(
            "subscription_unavailable",
            "1 while a subscription waits for what it hands events to (a broker) to become reachable",
            subscription_unavailable.clone(),
        );
        registry.register(
            "subscription_parked",
            "Events a subscription parked (a relay's dead letters)",
            subscription_parked.clone(),
        );
        registry.register(
            "subscription_warning_timestamp_seconds",
            "When a subscription last reported a warning, in Unix seconds (absent when it has none)",
            subscription_warning_at.clone(),
        );
        let (devices, devices_online) = (Gauge::default(), Gauge::default());
        let (devices_clock_skewed, devices_link_failing) = (Gauge::default(), Gauge::default());
        registry.register("devices", "Devices the server keeps presence of", devices.clone());
        registry.register("devices_online", "Devices online now", devices_online.clone());
        registry.register(
            "devices_clock_skewed",
            "Devices whose clock is off by more than the reporting threshold",
            devices_clock_skewed.clone(),
        );
        registry.register(
            "devices_link_failing",
            "Units without the agent whose last configuration delivery or fetch failed",
            devices_link_failing.clone(),
        );
        Self {
            registry,
            devices,
            devices_online,
            devices_clock_skewed,
            devices_link_failing,
            events_appended,
            append_requests,
            append_seconds,
            events_read,
            http_requests,
            live_clients,
            subscription_position,
            subscription_lag,
            subscription_lag_seconds,
            subscription_retries,
            subscription_unavailable,
            subscription_parked,
            subscription_warning_at,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
