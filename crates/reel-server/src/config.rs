//! Server settings and request limits, with the defaults `reel serve` uses.

use std::net::SocketAddr;
use std::time::Duration;

/// The port `reel serve` listens on by default (on 127.0.0.1).
pub const DEFAULT_PORT: u16 = 7311;

/// Limits every request is held to.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Longest a client may take to send its request headers; also how long an idle keep-alive
    /// connection is kept.
    pub header_timeout: Duration,
    /// Longest `wait` a long poll may ask for.
    pub max_wait: Duration,
    /// Events a live (SSE) client may fall behind the log's live tail before it is dropped.
    pub live_buffer: usize,
    /// Interval of SSE heartbeat comments.
    pub heartbeat: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            header_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
            live_buffer: 10_000,
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Whether requests need a token. Required on any address other than loopback.
    pub require_tokens: bool,
    /// Request limits.
    pub limits: RequestLimits,
    /// How long a graceful shutdown waits for open requests.
    pub shutdown_grace: Duration,
    /// Whether the server also runs the worker runtime for its engine's subscribers.
    pub run_worker: bool,
    /// Streams this server serves but never appends to, because another side writes them
    /// (`reel edge`: the platform's streams for the device). Appends to them get 403
    /// `stream_read_only`.
    pub read_only_streams: Vec<ReadOnlyStreams>,
}

/// Streams written elsewhere: a stream name, or a prefix ending in `*`, and who writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOnlyStreams {
    /// `unitconfig-PL-1001`, or `unitconfig-*`.
    pub pattern: String,
    /// Who writes them, for the error message (`the platform`).
    pub written_by: String,
}

impl ReadOnlyStreams {
    /// Whether `stream` is one of them.
    pub fn matches(&self, stream: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => stream.starts_with(prefix),
            None => self.pattern == stream,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            require_tokens: false,
            limits: RequestLimits::default(),
            shutdown_grace: Duration::from_secs(10),
            run_worker: true,
            read_only_streams: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// Refuses to serve a non-loopback address without tokens.
    pub fn check(&self) -> Result<(), reel_core::ReelError> {
        if !self.require_tokens && !self.listen.ip().is_loopback() {
            return Err(reel_core::ReelError::InvalidArgument(format!(
                "refusing to serve {} without tokens: anyone on the network could read and write; \
                 pass --require-tokens (and create one with `reel token create`) or listen on 127.0.0.1",
                self.listen
            )));
        }
        if self.limits.max_body_bytes == 0 || self.limits.live_buffer == 0 {
            return Err(reel_core::ReelError::InvalidArgument("request limits must be at least 1".into()));
        }
        Ok(())
    }
}
