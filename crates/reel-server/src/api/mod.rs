//! The HTTP API: one module per resource, plus the pieces they share (state, authorisation,
//! query parsing that answers in JSON).

pub mod all;
pub mod devices;
pub mod live;
pub mod query;
pub mod streams;
pub mod subscriptions;
pub mod system;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use reel_core::EventStore;
use reel_subscriptions::SubscriptionEngine;
use serde::de::DeserializeOwned;

use crate::config::RequestLimits;
use crate::error::ApiError;
use crate::live::LiveTail;
use crate::metrics::Metrics;
use crate::scopes::Access;
use crate::tokens::{AuthFailure, TokenRegistry};

/// What every handler can reach, shared (cloned per request, so it is one `Arc`).
pub type AppState = Arc<AppContext>;

/// The server's shared parts.
pub struct AppContext {
    pub events: Arc<dyn EventStore>,
    pub engine: SubscriptionEngine,
    /// `None` when tokens are not required.
    pub tokens: Option<Arc<TokenRegistry>>,
    pub limits: RequestLimits,
    pub metrics: Arc<Metrics>,
    pub live: LiveTail,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Streams appended to elsewhere, never through this server.
    pub read_only_streams: Vec<crate::config::ReadOnlyStreams>,
    /// Device presence, when the server keeps it.
    pub presence: Option<crate::presence::Presence>,
}

impl AppContext {
    /// The caller's access, from its bearer token; 401 without a valid one when tokens are on.
    pub async fn access(&self, headers: &HeaderMap) -> Result<Access, ApiError> {
        let Some(tokens) = &self.tokens else { return Ok(Access::Open) };
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match tokens.check(bearer).await? {
            Ok(access) => Ok(access),
            Err(AuthFailure::Missing) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server requires a token: send `Authorization: Bearer <token>` (create one with `reel token create`)",
            )),
            Err(AuthFailure::Invalid) => {
                Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the token is unknown or revoked"))
            }
        }
    }
}

/// The caller's access from its bearer token, as an extractor: a handler that takes an
/// `Access` argument is authorised before it runs (401 without a valid token when tokens are on).
impl FromRequestParts<AppState> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.access(&parts.headers).await
    }
}

pub use reel_core::api::MAX_PAGE;

/// The page size asked for (default 100), 1 to [`MAX_PAGE`].
pub fn page_limit(asked: Option<usize>) -> Result<usize, ApiError> {
    match asked.unwrap_or(100) {
        limit @ 1..=MAX_PAGE => Ok(limit),
        other => Err(ApiError::bad_request("invalid_query", format!("limit must be 1 to {MAX_PAGE}, got {other}"))),
    }
}

/// 403 for a valid token without the scope.
pub fn forbidden(what: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("the token's scopes do not allow {what}"))
}

/// Query parameters whose errors are JSON 400s like every other error.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            Err(e) => Err(ApiError::bad_request("invalid_query", e.body_text())),
        }
    }
}

/// A path segment (percent-decoded), with JSON errors.
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Segment(value)),
            Err(e) => Err(ApiError::bad_request("invalid_path", e.body_text())),
        }
    }
}
