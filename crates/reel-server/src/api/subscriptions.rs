//! `GET /subscriptions` and `POST /subscriptions/{id}/pause|reactivate|remove` (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use reel_core::{SubscriptionCriteria, SubscriptionId};
use reel_subscriptions::{EngineReport, SubscriptionView};
use serde::Serialize;
use utoipa::ToSchema;

use super::{forbidden, AppState, Segment};
use crate::error::{ApiError, ErrorBody};
use crate::scopes::Access;

/// A subscription as operators see it.
#[derive(ToSchema)]
#[schema(as = Subscription)]
#[allow(dead_code)]
pub struct SubscriptionDoc {
    id: String,
    group: String,
    /// `continuous`, `once` …
    mode: String,
    /// `new`, `booting`, `active`, `paused`, `error`, `finished`, `detached`.
    status: String,
    /// Last position handled.
    position: u64,
    /// Events between its position and the head.
    lag: u64,
    /// Seconds since the oldest event after its position was recorded (0 at the head); for a
    /// relay, the age of the oldest event its broker has not acknowledged.
    lag_seconds: f64,
    /// In `error` because what it hands events to is unreachable; it retries by itself.
    unavailable: bool,
    /// Failed attempts at the current batch.
    retries: u32,
    last_error: Option<String>,
    /// The worker (or one-off operation) holding its lease, if any.
    lease_owner: Option<String>,
    /// When the holder last took or renewed the lease (RFC 3339).
    lease_renewed_at: Option<String>,
    /// When the lease lapses unless renewed (RFC 3339).
    lease_expires_at: Option<String>,
    /// A live lease holds it: a worker runs it now.
    held: bool,
    /// Active, but no worker holds it: it is not following the log.
    unattended: bool,
    last_saved_at: String,
    parked_count: u64,
    /// Events it skipped after they kept failing.
    parked: Vec<serde_json::Value>,
    /// The latest warning it reported while it kept running (for a relay: events replayed
    /// after its broker's duplicate window had passed), until replaced or reset.
    warning: Option<String>,
    /// When that warning was reported (RFC 3339).
    warning_at: Option<String>,
}

/// Subscriptions and the head they lag behind.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionList {
    #[schema(value_type = Vec<SubscriptionDoc>)]
    pub subscriptions: Vec<SubscriptionView>,
}

/// List subscriptions: status, position, lag, retries, last error, parked events.
#[utoipa::path(
    get, path = "/subscriptions", tag = "subscriptions",
    responses(
        (status = 200, description = "Every subscription", body = SubscriptionList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Needs the admin scope", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, access: Access) -> Result<Json<SubscriptionList>, ApiError> {
    if !access.is_admin() {
        return Err(forbidden("managing subscriptions (needs admin)".into()));
    }
    let subscriptions = state.engine.overview(&SubscriptionCriteria::all()).await?;
    Ok(Json(SubscriptionList { subscriptions }))
}

#[derive(Serialize, ToSchema)]
pub struct OperationResult {
    /// The subscription after the operation (absent once removed).
    #[schema(value_type = Option<SubscriptionDoc>)]
    pub subscription: Option<SubscriptionView>,
}

macro_rules! operation {
    ($name:ident, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(
                            post, path = $path, tag = "subscriptions",
                            params(("id" = String, Path, description = "Subscription id")),
                            responses(
                                (status = 200, description = "Done", body = OperationResult),
                                (status = 400, description = "Invalid id", body = ErrorBody),
                                (status = 401, description = "No valid token", body = ErrorBody),
                                (status = 403, description = "Needs the admin scope", body = ErrorBody),
                                (status = 404, description = "No such subscription", body = ErrorBody),
                                (status = 409, description = "Not allowed in its current status", body = ErrorBody),
                            )
                        )]
        pub async fn $name(
            State(state): State<AppState>,
            Segment(id): Segment,
            access: Access,
        ) -> Result<Json<OperationResult>, ApiError> {
            operate(state, id, access, stringify!($name)).await
        }
    };
}

operation!(pause, "/subscriptions/{id}/pause", "Pause a subscription.");
operation!(
    reactivate,
    "/subscriptions/{id}/reactivate",
    "Reactivate a paused, failed, finished or detached subscription."
);
operation!(remove, "/subscriptions/{id}/remove", "Remove a subscription and its parked events.");

async fn operate(
    state: AppState,
    id: String,
    access: Access,
    operation: &str,
) -> Result<Json<OperationResult>, ApiError> {
    if !access.is_admin() {
        return Err(forbidden("managing subscriptions (needs admin)".into()));
    }
    let id = SubscriptionId::new(id)?;
    let criteria = SubscriptionCriteria::ids([id.clone()]);
    let exists = !state.engine.subscriptions(&criteria).await?.is_empty();
    if !exists {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "subscription_not_found",
            format!("subscription {id} not found"),
        ));
    }
    let report: EngineReport = match operation {
        "pause" => state.engine.pause(&criteria).await?,
        "reactivate" => state.engine.reactivate(&criteria).await?,
        _ => state.engine.remove(&criteria).await?,
    };
    if let Some(error) = report.errors.first() {
        return Err(ApiError::new(StatusCode::CONFLICT, "illegal_transition", error.message.clone()));
    }
    // One named subscription the operation does not apply to (pausing a finished one): say why.
    if let Some(note) = report.skipped.first() {
        return Err(ApiError::new(StatusCode::CONFLICT, "illegal_transition", format!("{}: {}", note.id, note.reason)));
    }
    let subscription = state.engine.overview(&criteria).await?.into_iter().next();
    Ok(Json(OperationResult { subscription }))
}
