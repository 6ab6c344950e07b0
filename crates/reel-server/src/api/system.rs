//! `GET /health`, `GET /metrics`, `GET /stats`, `GET /streams` and `GET /openapi.json`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use reel_core::{StreamInfo, StreamName};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{forbidden, AppState, Params};
use crate::error::{ApiError, ErrorBody};
use crate::scopes::Access;
pub use reel_core::api::{Links, StatsBody, StreamEntry, StreamList};

/// Liveness and store reachability.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the store cannot be reached.
    pub status: String,
    /// Whether the store answered.
    pub store: bool,
    /// The head position, when the store answered.
    pub head: Option<u64>,
    /// Why the store did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Liveness and store reachability (no token needed).
#[utoipa::path(
    get, path = "/health", tag = "system",
    security(()),
    responses(
        (status = 200, description = "Serving", body = Health),
        (status = 503, description = "The store cannot be reached", body = Health),
    )
)]
pub async fn health(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(std::time::Duration::from_secs(5), state.events.head()).await {
        Ok(Ok(head)) => {
            Json(Health { status: "ok".into(), store: true, head: Some(head.0), error: None }).into_response()
        }
        Ok(Err(e)) => unavailable(e.to_string()),
        Err(_) => unavailable("the store did not answer within 5 s".into()),
    }
}

fn unavailable(error: String) -> Response {
    let body = Health { status: "unavailable".into(), store: false, head: None, error: Some(error) };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Prometheus metrics (admin).
#[utoipa::path(
    get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Needs the admin scope", body = ErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>, access: Access) -> Result<Response, ApiError> {
    if !access.is_admin() {
        return Err(forbidden("reading metrics (needs admin)".into()));
    }
    let m = &state.metrics;
    m.subscription_position.clear();
    m.subscription_lag.clear();
    m.subscription_lag_seconds.clear();
    m.subscription_retries.clear();
    m.subscription_unavailable.clear();
    m.subscription_parked.clear();
    m.subscription_warning_at.clear();
    for s in state.engine.overview(&reel_core::SubscriptionCriteria::all()).await? {
        let label = crate::metrics::SubscriptionLabel { subscription: s.id.to_string() };
        m.subscription_position.get_or_create(&label).set(s.position.0 as i64);
        m.subscription_lag.get_or_create(&label).set(s.lag as i64);
        m.subscription_lag_seconds.get_or_create(&label).set(s.lag_seconds);
        m.subscription_retries.get_or_create(&label).set(i64::from(s.retries));
        m.subscription_unavailable.get_or_create(&label).set(i64::from(s.unavailable));
        m.subscription_parked.get_or_create(&label).set(s.parked_count as i64);
        if let Some(at) = s.warning_at {
            m.subscription_warning_at.get_or_create(&label).set(at.unix_micros() as f64 / 1_000_000.0);
        }
    }
    if let Some(presence) = &state.presence {
        let devices = presence.devices().await?;
        let count = |keep: fn(&reel_core::api::DeviceEntry) -> bool| devices.iter().filter(|d| keep(d)).count() as i64;
        m.devices.set(devices.len() as i64);
        m.devices_online.set(count(|d| d.online));
        m.devices_clock_skewed.set(count(|d| d.clock_skew_reported));
        m.devices_link_failing.set(count(|d| d.link_error.is_some()));
    }
    let body = state.metrics.encode();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

/// Event and stream counts, head and size (admin).
#[utoipa::path(
    get, path = "/stats", tag = "system",
    responses(
        (status = 200, description = "Statistics", body = StatsBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Needs the admin scope", body = ErrorBody),
    )
)]
pub async fn stats(State(state): State<AppState>, access: Access) -> Result<Json<StatsBody>, ApiError> {
    if !access.is_admin() {
        return Err(forbidden("reading statistics (needs admin)".into()));
    }
    let s = state.events.stats().await?;
    Ok(Json(StatsBody {
        event_count: s.event_count,
        stream_count: s.stream_count,
        head: s.head.0,
        storage_bytes: s.storage_bytes,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamsQuery {
    /// Only streams of this category.
    category: Option<String>,
    /// Streams named after this one (paging).
    after: Option<String>,
    /// Most streams to return, 1 to 10,000 (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// List streams by name, optionally of one category.
#[utoipa::path(
    get, path = "/streams", tag = "streams",
    params(StreamsQuery),
    responses(
        (status = 200, description = "Streams the caller may read", body = StreamList),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    )
)]
pub async fn streams(
    State(state): State<AppState>,
    Params(query): Params<StreamsQuery>,
    access: Access,
) -> Result<Json<StreamList>, ApiError> {
    let limit = super::page_limit(query.limit)?;
    let after = query.after.map(StreamName::new).transpose()?;
    let found: Vec<StreamInfo> = state.events.streams(query.category.as_deref(), after.as_ref(), limit).await?;
    let next = (found.len() == limit).then(|| found.last().map(|s| s.stream.to_string())).flatten();
    let streams = found
        .into_iter()
        .filter(|s| access.can_read(s.stream.as_str()))
        .map(|s| StreamEntry { stream: s.stream.to_string(), version: s.version.0 })
        .collect();
    let mut link = None;
    if let Some(after) = next {
        let mut url = format!("/streams?after={}&limit={limit}", reel_core::wire::encode_segment(&after));
        if let Some(category) = &query.category {
            url.push_str(&format!("&category={}", reel_core::wire::encode_segment(category)));
        }
        link = Some(url);
    }
    Ok(Json(StreamList { streams, links: Links { next: link } }))
}

/// The OpenAPI document of this API.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::document()).into_response()
}
