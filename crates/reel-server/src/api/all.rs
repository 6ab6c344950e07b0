//! `GET /all`: the global log from a position, filtered, with long polling (`wait`: answer as
//! soon as a matching event past `from` exists, or with an empty page after `wait` seconds).

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use reel_core::{Position, ReadAllFilter};
use serde::Deserialize;
use utoipa::IntoParams;

use reel_core::wire::encode_segment;

use super::{forbidden, AppState, Params};
use crate::error::{ApiError, ErrorBody};
use crate::scopes::Access;
pub use reel_core::api::{AllPageBody, HeadBody, Links};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadAllQuery {
    /// First position to return (default 1).
    #[param(minimum = 0)]
    pub from: Option<u64>,
    /// Most events to return, 1 to 10,000 (default 100).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
    /// Only streams of these categories (comma-separated).
    pub category: Option<String>,
    /// Only these event types (comma-separated).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Only streams whose names start with this.
    pub prefix: Option<String>,
    /// Only events carrying all of these tags (comma-separated).
    pub tag: Option<String>,
    /// Seconds to wait for a matching event when there is none yet (0 to the server's maximum).
    #[param(minimum = 0)]
    pub wait: Option<u64>,
}

fn list(text: &Option<String>) -> Vec<String> {
    text.as_deref()
        .map(|t| t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

impl ReadAllQuery {
    /// The filter, checked against the caller's scopes.
    pub fn filter(&self) -> ReadAllFilter {
        ReadAllFilter {
            categories: list(&self.category),
            event_types: list(&self.event_type),
            stream_prefix: self.prefix.clone().filter(|p| !p.is_empty()),
            tags: list(&self.tag),
        }
    }
}

/// Read the global log.
#[utoipa::path(
    get, path = "/all", tag = "log",
    params(ReadAllQuery),
    responses(
        (status = 200, description = "A page (empty when `wait` ran out)", body = AllPageBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside the token's scopes", body = ErrorBody),
    )
)]
pub async fn read_all(
    State(state): State<AppState>,
    Params(query): Params<ReadAllQuery>,
    access: Access,
) -> Result<Json<AllPageBody>, ApiError> {
    let filter = query.filter();
    if !access.can_read_log(&filter.categories, filter.stream_prefix.as_deref()) {
        return Err(forbidden("reading the whole log (filter with ?category= to the categories you may read)".into()));
    }
    let limit = super::page_limit(query.limit)?;
    let wait = wait_for(&state, query.wait)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut from = Position(query.from.unwrap_or(1).clamp(1, i64::MAX as u64));
    let mut watch = state.events.watch_head();
    let mut shutdown = state.shutdown.clone();
    loop {
        let head = state.events.head().await?;
        let page = state.events.read_all(from, &filter, limit).await?;
        from = page.next;
        let waiting = page.events.is_empty() && tokio::time::Instant::now() < deadline && !*shutdown.borrow();
        if !waiting {
            let mut events = page.events;
            // Only streams the token may read (this also keeps `$` streams from non-admins):
            // a category or prefix filter lets a token in, each event must still be its own.
            events.retain(|e| access.can_read(e.stream.as_str()));
            state.metrics.events_read.inc_by(events.len() as u64);
            let mut next = format!("/all?from={}&limit={limit}", page.next.0);
            for (name, values) in
                [("category", &filter.categories), ("type", &filter.event_types), ("tag", &filter.tags)]
            {
                if !values.is_empty() {
                    next.push_str(&format!("&{name}={}", encode_segment(&values.join(","))));
                }
            }
            return Ok(Json(AllPageBody {
                events,
                next_from: page.next.0,
                head: head.0.max(page.next.0.saturating_sub(1)),
                links: Links { next: Some(next) },
            }));
        }
        if page.next.0 <= head.0 {
            continue; // a filtered scan stopped short of the head: keep scanning
        }
        // An empty page still holds its buffer; thousands of waiting polls should not.
        drop(page);
        tokio::select! {
            _ = watch.wait_past(head) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The long-poll wait asked for, at most the server's maximum.
pub fn wait_for(state: &AppState, seconds: Option<u64>) -> Result<Duration, ApiError> {
    let wait = Duration::from_secs(seconds.unwrap_or(0));
    if wait > state.limits.max_wait {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("wait is at most {} seconds", state.limits.max_wait.as_secs()),
        ));
    }
    Ok(wait)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HeadQuery {
    /// Wait until the head is past this position …
    #[param(minimum = 0)]
    after: Option<u64>,
    /// … for at most this many seconds.
    #[param(minimum = 0)]
    wait: Option<u64>,
}

/// The log's head position, optionally waiting for it to move.
#[utoipa::path(
    get, path = "/head", tag = "log",
    params(HeadQuery),
    responses(
        (status = 200, description = "The head", body = HeadBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    )
)]
pub async fn head(
    State(state): State<AppState>,
    Params(query): Params<HeadQuery>,
    // Any valid token may ask for the head; the extractor authenticates.
    _access: Access,
) -> Result<Json<HeadBody>, ApiError> {
    let wait = wait_for(&state, query.wait)?;
    let head = state.events.head().await?;
    if let Some(after) = query.after.filter(|a| head.0 <= *a && !wait.is_zero()) {
        let mut watch = state.events.watch_head();
        let mut shutdown = state.shutdown.clone();
        tokio::select! {
            _ = watch.wait_past(Position(after)) => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
        return Ok(Json(HeadBody { head: state.events.head().await?.0 }));
    }
    Ok(Json(HeadBody { head: head.0 }))
}
