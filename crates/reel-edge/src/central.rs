//! The central server as a device reaches it.

use reel_client::HttpStore;
use reel_core::ReelError;
use tokio::sync::OnceCell;

/// The central server (`http://…`, with a token if it requires one), contacted on first use
/// (a device may start offline) and shared by the uplink, the downlink and the heartbeats, so a
/// device keeps one client (one connection pool), not one each.
pub struct CentralServer {
    url: String,
    token: Option<String>,
    store: OnceCell<HttpStore>,
}

impl CentralServer {
    /// The server at `url`; nothing is contacted until it is first used.
    pub fn new(url: impl Into<String>, token: Option<String>) -> Self {
        Self { url: url.into(), token, store: OnceCell::new() }
    }

    /// Its address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client. It keeps no long poll of its own on the central head (each of thousands of
    /// devices would be woken by every append of every other one); the downlink waits on its
    /// own stream instead.
    pub(crate) async fn store(&self) -> Result<&HttpStore, ReelError> {
        self.store.get_or_try_init(|| async { HttpStore::unfollowed(&self.url, self.token.clone()) }).await
    }
}
