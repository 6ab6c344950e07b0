//! The central server as a device reaches it.

use reel_client::HttpStore;
use reel_core::ReelError;
use tokio::sync::OnceCell;

/// The central server (`http://…`, with a token if it requires one), connected on first use
/// (a device may start offline) and shared by the uplink and the downlink, so a device keeps
/// one client and one follower of the central head, not one each.
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

    /// The client, connecting first if no call has yet; a failed connection is tried again by
    /// the next call.
    pub(crate) async fn store(&self) -> Result<&HttpStore, ReelError> {
        self.store.get_or_try_init(|| HttpStore::connect(&self.url, self.token.clone())).await
    }
}
