//! `POST /devices/{name}/heartbeat` (a device's token) and `GET /devices` (the presence table).

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use reel_core::api::{DeviceList, HeartbeatAnswer, HeartbeatBody};
use reel_core::Timestamp;

use super::streams::read_body;
use super::{forbidden, AppState, Segment};
use crate::error::{ApiError, ErrorBody};
use crate::presence::Presence;
use crate::scopes::Access;

fn presence(state: &AppState) -> Result<&Presence, ApiError> {
    state.presence.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "presence_off", "this server does not keep device presence")
    })
}

/// Send a device's heartbeat: keeps its presence current (not stored as an event). Needs write
/// access to the device's stream `unit-NAME`.
#[utoipa::path(
    post, path = "/devices/{name}/heartbeat", tag = "devices",
    params(("name" = String, Path, description = "The device's name")),
    request_body = HeartbeatBody,
    responses(
        (status = 200, description = "Recorded", body = HeartbeatAnswer),
        (status = 400, description = "Invalid name or field", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not write unit-NAME", body = ErrorBody),
        (status = 404, description = "This server does not keep presence", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    )
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    Segment(name): Segment,
    access: Access,
    body: Body,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    reel_core::check_device_name(&name)?;
    if !access.can_write(&format!("unit-{name}")) {
        return Err(forbidden(format!("heartbeats of device {name} (needs write:unit-{name})")));
    }
    let bytes = read_body(body, 64 * 1024).await?;
    let body: HeartbeatBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_heartbeat", format!("the heartbeat is not valid: {e}")))?;
    Ok(Json(presence(&state)?.heartbeat(&name, &body, Timestamp::now()).await?))
}

/// The devices the platform has heard from: online or offline and since when, round-trip time,
/// last heard from, clock skew, configuration acknowledged. A token sees the devices whose
/// `unitpresence-NAME` it may read; admin sees all.
#[utoipa::path(
    get, path = "/devices", tag = "devices",
    responses(
        (status = 200, description = "The presence table", body = DeviceList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "This server does not keep presence", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, access: Access) -> Result<Json<DeviceList>, ApiError> {
    let devices: Vec<_> = presence(&state)?
        .devices()
        .await?
        .into_iter()
        .filter(|d| access.can_read(&format!("unitpresence-{}", d.device)))
        .collect();
    let online = devices.iter().filter(|d| d.online).count();
    Ok(Json(DeviceList { devices, online }))
}
