//! API tokens, kept as events in the store's own `$tokens` stream (so every server on a shared
//! PostgreSQL database sees the same tokens, and creation and revocation are audited like any
//! other change). A token is shown once; only the SHA-256 of its secret is stored, and secrets
//! are compared in constant time.
//!
//! ```no_run
//! # async fn example(store: std::sync::Arc<dyn reel_core::EventStore>) -> Result<(), reel_core::ReelError> {
//! let created = reel_server::tokens::create(&*store, "locker-app", &["write:unit-*".parse()?]).await?;
//! println!("give this to the app once: {}", created.token);
//! reel_server::tokens::revoke(&*store, &created.record.id).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use reel_core::{Direction, EventStore, ExpectedVersion, NewEvent, ReelError, StreamName, StreamVersion, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::RwLock;

use crate::scopes::{Access, Scope};

/// The stream tokens are kept in.
pub const TOKENS_STREAM: &str = "$tokens";

/// How stale the in-memory token list may get before a request refreshes it.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// A token as listed (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// Public id, the part after `reel_`.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// Its scopes, as text.
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Hex SHA-256 of the secret.
    #[serde(skip_serializing)]
    secret_sha256: String,
}

/// A new token: the text to hand out (shown once) and its record.
#[derive(Debug)]
pub struct CreatedToken {
    /// `reel_<id>_<secret>`.
    pub token: String,
    /// What is stored.
    pub record: TokenRecord,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind")]
enum TokenEvent {
    Created { id: String, name: String, scopes: Vec<String>, secret_sha256: String, created_at: Timestamp },
    Revoked { id: String, revoked_at: Timestamp },
}

fn tokens_stream() -> StreamName {
    StreamName::new(TOKENS_STREAM).expect("a valid stream name")
}

fn sha256_hex(secret: &[u8]) -> String {
    Sha256::digest(secret).iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ReelError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| ReelError::storage("making a random token", e))?;
    Ok(bytes)
}

/// Creates a token with `scopes` (at least one).
pub async fn create(store: &dyn EventStore, name: &str, scopes: &[Scope]) -> Result<CreatedToken, ReelError> {
    if scopes.is_empty() {
        return Err(ReelError::InvalidArgument("a token needs at least one --scope".into()));
    }
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ReelError::InvalidArgument("a token name is 1-100 characters without control characters".into()));
    }
    let id: String = random_bytes::<6>()?.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let record = TokenRecord {
        id: id.clone(),
        name: name.to_string(),
        scopes: scopes.iter().map(Scope::to_string).collect(),
        created_at: Timestamp::now(),
        revoked_at: None,
        secret_sha256: sha256_hex(secret.as_bytes()),
    };
    let event = TokenEvent::Created {
        id: id.clone(),
        name: record.name.clone(),
        scopes: record.scopes.clone(),
        secret_sha256: record.secret_sha256.clone(),
        created_at: record.created_at,
    };
    append(store, "TokenCreated", &event).await?;
    Ok(CreatedToken { token: format!("reel_{id}_{secret}"), record })
}

/// Revokes the token with `id`; unknown or already revoked ids are errors.
pub async fn revoke(store: &dyn EventStore, id: &str) -> Result<(), ReelError> {
    let tokens = list(store).await?;
    match tokens.iter().find(|t| t.id == id) {
        None => Err(ReelError::InvalidArgument(format!("no token with id {id:?} (see `reel token list`)"))),
        Some(t) if t.revoked_at.is_some() => Err(ReelError::InvalidArgument(format!("token {id} is already revoked"))),
        Some(_) => {
            append(store, "TokenRevoked", &TokenEvent::Revoked { id: id.into(), revoked_at: Timestamp::now() }).await
        }
    }
}

/// Every token ever created, revoked ones included, oldest first.
pub async fn list(store: &dyn EventStore) -> Result<Vec<TokenRecord>, ReelError> {
    let mut registry = Tokens::default();
    registry.catch_up(store).await?;
    let mut records: Vec<TokenRecord> = registry.by_id.into_values().collect();
    records.sort_by_key(|r| r.created_at);
    Ok(records)
}

async fn append(store: &dyn EventStore, event_type: &str, event: &TokenEvent) -> Result<(), ReelError> {
    let data = serde_json::to_vec(event).map_err(|e| ReelError::storage("encoding a token event", e))?;
    store.append(&tokens_stream(), ExpectedVersion::Any, vec![NewEvent::new(event_type, data)]).await?;
    Ok(())
}

/// The token list folded from `$tokens`.
#[derive(Default)]
struct Tokens {
    by_id: BTreeMap<String, TokenRecord>,
    /// Next version to read.
    next: u64,
}

impl Tokens {
    async fn catch_up(&mut self, store: &dyn EventStore) -> Result<(), ReelError> {
        loop {
            let page =
                match store.read_stream(&tokens_stream(), StreamVersion(self.next), Direction::Forward, 1000).await {
                    Ok(page) => page,
                    Err(ReelError::StreamNotFound { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                };
            let Some(last) = page.last() else { return Ok(()) };
            self.next = last.stream_version.0 + 1;
            for event in &page {
                match serde_json::from_slice::<TokenEvent>(&event.data) {
                    Ok(TokenEvent::Created { id, name, scopes, secret_sha256, created_at }) => {
                        let record =
                            TokenRecord { id: id.clone(), name, scopes, created_at, revoked_at: None, secret_sha256 };
                        self.by_id.insert(id, record);
                    }
                    Ok(TokenEvent::Revoked { id, revoked_at }) => {
                        if let Some(record) = self.by_id.get_mut(&id) {
                            record.revoked_at = Some(revoked_at);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(position = %event.position, error = %e, "ignoring an unreadable token event")
                    }
                }
            }
        }
    }
}

/// Why a request is refused before its scopes are looked at.
#[derive(Debug, PartialEq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// Not a token of this store, or revoked.
    Invalid,
}

/// Checks bearer tokens against the store's tokens, refreshing its copy at most once a second
/// (a revocation takes effect on every server within about a second).
pub struct TokenRegistry {
    store: Arc<dyn EventStore>,
    state: RwLock<(Tokens, Option<Instant>)>,
}

impl TokenRegistry {
    /// A registry reading `store`'s `$tokens`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, state: RwLock::new((Tokens::default(), None)) }
    }

    /// Active tokens right now.
    pub async fn active_count(&self) -> Result<usize, ReelError> {
        let mut state = self.state.write().await;
        state.0.catch_up(&*self.store).await?;
        state.1 = Some(Instant::now());
        Ok(state.0.by_id.values().filter(|t| t.revoked_at.is_none()).count())
    }

    /// The access `token` (the text after `Bearer `) grants.
    pub async fn check(&self, token: Option<&str>) -> Result<Result<Access, AuthFailure>, ReelError> {
        let Some(token) = token else { return Ok(Err(AuthFailure::Missing)) };
        let Some((id, secret)) = token.strip_prefix("reel_").and_then(|rest| rest.split_once('_')) else {
            return Ok(Err(AuthFailure::Invalid));
        };
        // Requests share a read lock; one refreshes under the write lock when the list is stale,
        // and at once for an id not seen yet (a token just created). A refresh reads only the
        // `$tokens` events past the last one seen: usually none.
        let needs_refresh = |state: &(Tokens, Option<Instant>)| {
            state.1.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) || !state.0.by_id.contains_key(id)
        };
        if needs_refresh(&*self.state.read().await) {
            let mut state = self.state.write().await;
            if needs_refresh(&state) {
                state.0.catch_up(&*self.store).await?;
                state.1 = Some(Instant::now());
            }
        }
        let state = self.state.read().await;
        let Some(record) = state.0.by_id.get(id) else { return Ok(Err(AuthFailure::Invalid)) };
        let presented = sha256_hex(secret.as_bytes());
        let matches: bool = presented.as_bytes().ct_eq(record.secret_sha256.as_bytes()).into();
        if !matches || record.revoked_at.is_some() {
            return Ok(Err(AuthFailure::Invalid));
        }
        let scopes = record.scopes.iter().filter_map(|s| s.parse().ok()).collect();
        Ok(Ok(Access::Scopes(scopes)))
    }
}
