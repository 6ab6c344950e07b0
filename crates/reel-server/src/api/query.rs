//! `POST /query`: the events of a query across streams (by tags and types), after a position,
//! with the head of the read: what a decision across streams is made on, before an append with
//! the matching condition (docs/CONSISTENCY.md).

use axum::body::Body;
use axum::extract::State;
use axum::Json;
use reel_core::{Position, Query};

use super::{forbidden, AppState};
use crate::error::{ApiError, ErrorBody};
use crate::scopes::Access;
pub use reel_core::api::{QueryPageBody, QueryRequest};

/// Read the events matching a query.
#[utoipa::path(
    post, path = "/query", tag = "log",
    request_body(content = QueryRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A page of matching events and the head of the read", body = QueryPageBody),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not read the whole log", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
    )
)]
pub async fn query(State(state): State<AppState>, access: Access, body: Body) -> Result<Json<QueryPageBody>, ApiError> {
    // A query spans streams, so it needs the whole log (as `GET /all` without filters does).
    if !access.can_read_log(&[], None) {
        return Err(forbidden("querying across streams (the token may not read the whole log)".into()));
    }
    let bytes = super::streams::read_body(body, state.limits.max_body_bytes).await?;
    let request: QueryRequest = serde_json::from_slice(&bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() { "invalid_json" } else { "invalid_body" };
        ApiError::bad_request(code, e.to_string())
    })?;
    if request.after > i64::MAX as u64 {
        return Err(ApiError::bad_request("invalid_argument", format!("after must be at most {}", i64::MAX)));
    }
    let limit = super::page_limit(request.limit)?;
    let query = Query::new(request.items)?;
    let page = state.events.read_query(&query, Position(request.after), limit).await?;
    let next_after = page.next_after(limit).0;
    state.metrics.events_read.inc_by(page.events.len() as u64);
    Ok(Json(QueryPageBody { events: page.events, head: page.head.0, next_after }))
}
