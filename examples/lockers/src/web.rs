//! The app's HTTP API and the web UI. Commands and queries are separate endpoints: commands
//! (`POST /api/commands/…`) decide and append events; queries (`GET /api/queries/…`) read
//! projections only. Errors are `{"error": code, "message": …}` with a 4xx status for bad
//! input and refusals, and nothing is changed by a refused request.

use std::sync::{Arc, OnceLock};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use reel_core::{PresenceStore, ReelError, SubscriptionCriteria, Timestamp, UnitLink, UnitRegistration};
use reel_subscriptions::SubscriptionEngine;
use serde::{Deserialize, Serialize};

use crate::commands::{CommandError, Commands, ReserveCommand};
use crate::domain::UnitConfig;
use crate::fleet::Fleet;
use crate::queries::{Queries, UnitSort};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The write side.
    pub commands: Commands,
    /// The read side.
    pub queries: Queries,
    /// Presence rows, for registering units the platform reaches itself.
    pub presence: Arc<dyn PresenceStore>,
    /// The engine, for the projections' progress.
    pub engine: SubscriptionEngine,
    /// The simulated fleet, when it runs in this process.
    pub fleet: Arc<OnceLock<Arc<Fleet>>>,
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(ui))
        .route("/api/commands/configure", post(configure))
        .route("/api/commands/reserve", post(reserve))
        .route("/api/commands/confirm", post(confirm))
        .route("/api/commands/cancel", post(cancel))
        .route("/api/admin/units/{name}/link", post(link_unit))
        .route("/api/queries/units", get(units))
        .route("/api/queries/units/{name}/events", get(event_log))
        .route("/api/queries/units/{name}/events.csv", get(event_log_csv))
        .route("/api/queries/units/{name}/lockers", get(unit_lockers))
        .route("/api/queries/units/{name}/config", get(unit_config))
        .route("/api/queries/availability", get(availability))
        .route("/api/queries/revenue", get(revenue))
        .route("/api/queries/reservations/{id}", get(reservation))
        .route("/api/queries/projections", get(projections))
        .route("/api/simulator/units/{name}/{action}", post(simulate))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource") })
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.code, message: &self.message };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let status = match &e {
            CommandError::Invalid(_) => StatusCode::BAD_REQUEST,
            CommandError::NotFound(_) => StatusCode::NOT_FOUND,
            CommandError::Refused(_) => StatusCode::CONFLICT,
            CommandError::Store(e) => return e.clone().into(),
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<ReelError> for ApiError {
    fn from(e: ReelError) -> Self {
        let status = match &e {
            ReelError::InvalidArgument(_) | ReelError::InvalidStreamName { .. } | ReelError::InvalidEvent { .. } => {
                StatusCode::BAD_REQUEST
            }
            ReelError::StreamNotFound { .. } => StatusCode::NOT_FOUND,
            ReelError::WrongExpectedVersion { .. }
            | ReelError::ConditionFailed { .. }
            | ReelError::DuplicateEventId { .. } => StatusCode::CONFLICT,
            ReelError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ReelError::Closed | ReelError::TimedOut { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "a request failed");
        }
        Self::new(status, e.code(), e.to_string())
    }
}

/// A JSON body whose rejection is an [`ApiError`].
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let code = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE { "unsupported_media_type" } else { "invalid_json" };
    let status = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE { status } else { StatusCode::BAD_REQUEST };
    ApiError::new(status, code, rejection.body_text())
}

/// Query parameters whose rejection is an [`ApiError`].
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::invalid(rejection.body_text())
}

type Answer<T> = Result<axum::Json<T>, ApiError>;

async fn ui() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            ),
        ],
        Html(include_str!("ui.html")),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigureBody {
    unit: String,
    config: UnitConfig,
}

async fn configure(State(state): State<AppState>, Json(body): Json<ConfigureBody>) -> Answer<serde_json::Value> {
    let version = state.commands.configure(&body.unit, &body.config).await?;
    Ok(axum::Json(serde_json::json!({ "unit": body.unit, "config_version": version })))
}

async fn reserve(
    State(state): State<AppState>,
    Json(body): Json<ReserveCommand>,
) -> Answer<crate::commands::ReservationAnswer> {
    Ok(axum::Json(state.commands.reserve(&body).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservationBody {
    reservation: String,
}

async fn confirm(
    State(state): State<AppState>,
    Json(body): Json<ReservationBody>,
) -> Answer<crate::commands::ReservationAnswer> {
    Ok(axum::Json(state.commands.confirm(&body.reservation).await?))
}

async fn cancel(
    State(state): State<AppState>,
    Json(body): Json<ReservationBody>,
) -> Answer<crate::commands::ReservationAnswer> {
    Ok(axum::Json(state.commands.cancel(&body.reservation).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    endpoint: String,
    link: String,
    #[serde(default)]
    interval_ms: Option<u64>,
    #[serde(default)]
    display_name: Option<String>,
}

/// Registers a unit the platform reaches itself (it pushes configuration to it, or fetches its
/// events from it) — as `reel devices register` does.
async fn link_unit(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<LinkBody>,
) -> Answer<serde_json::Value> {
    reel_core::check_device_name(&name)?;
    let link = UnitLink::parse(&body.link)?;
    if !body.endpoint.starts_with("http://") || body.endpoint.len() > 2_000 {
        return Err(ApiError::invalid("endpoint must be an http:// URL"));
    }
    if let Some(display) = &body.display_name {
        reel_core::check_display_name(display, "display_name")?;
    }
    let interval_ms = body.interval_ms.unwrap_or(60_000);
    if !(100..=86_400_000).contains(&interval_ms) {
        return Err(ApiError::invalid("interval_ms must be 100 to 86400000"));
    }
    let unit = UnitRegistration {
        device: name.clone(),
        display_name: body.display_name,
        interval: std::time::Duration::from_millis(interval_ms),
        endpoint: body.endpoint,
        link,
    };
    state.presence.register_unit(&unit).await?;
    Ok(axum::Json(serde_json::json!({ "unit": name, "link": link.as_str() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitsParams {
    #[serde(default)]
    sort: Option<String>,
    #[serde(default)]
    order: Option<String>,
}

fn descending(order: Option<&str>) -> Result<bool, ApiError> {
    match order {
        None | Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(other) => Err(ApiError::invalid(format!("order is asc or desc, not {other:?}"))),
    }
}

async fn units(State(state): State<AppState>, Params(params): Params<UnitsParams>) -> Answer<serde_json::Value> {
    let sort = UnitSort::parse(params.sort.as_deref().unwrap_or("name"))?;
    let units = state.queries.units(sort, descending(params.order.as_deref())?).await?;
    let online = units.iter().filter(|u| u.online).count();
    Ok(axum::Json(serde_json::json!({
        "units": units, "online": online, "now_ms": Timestamp::now().unix_micros() / 1_000,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLogParams {
    #[serde(default)]
    page: Option<i64>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    order: Option<String>,
}

async fn event_log(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Params(params): Params<EventLogParams>,
) -> Answer<crate::queries::EventLogPage> {
    reel_core::check_device_name(&name)?;
    let ascending = !descending(params.order.as_deref().or(Some("desc")))?;
    let page = state.queries.event_log(&name, params.page.unwrap_or(1), params.size.unwrap_or(25), ascending).await?;
    Ok(axum::Json(page))
}

async fn event_log_csv(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    reel_core::check_device_name(&name)?;
    let csv = state.queries.event_log_csv(&name).await?;
    let disposition = format!("attachment; filename=\"{name}-events.csv\"");
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        csv,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowParams {
    #[serde(default)]
    from_ms: Option<i64>,
    #[serde(default)]
    hours: Option<u32>,
}

impl WindowParams {
    /// `[from, from + hours)` in µs (now and one hour by default), and now.
    fn window(&self) -> Result<(i64, i64, i64), ApiError> {
        let now = Timestamp::now().unix_micros();
        let from = match self.from_ms {
            Some(ms) => ms.checked_mul(1_000).ok_or_else(|| ApiError::invalid("from_ms is out of range"))?,
            None => now,
        };
        let hours = self.hours.unwrap_or(1);
        if !(1..=720).contains(&hours) {
            return Err(ApiError::invalid("hours must be 1 to 720"));
        }
        Ok((from, from.saturating_add(i64::from(hours) * 3_600_000_000), now))
    }
}

async fn unit_lockers(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Params(params): Params<WindowParams>,
) -> Answer<serde_json::Value> {
    reel_core::check_device_name(&name)?;
    let (from, to, now) = params.window()?;
    let lockers = state.queries.unit_lockers(&name, from, to, now).await?;
    Ok(axum::Json(serde_json::json!({ "unit": name, "lockers": lockers })))
}

async fn unit_config(State(state): State<AppState>, Path(name): Path<String>) -> Answer<UnitConfig> {
    let config = state.commands.unit_config(&name).await?;
    config
        .map(axum::Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("unit {name} is not configured")))
}

async fn availability(
    State(state): State<AppState>,
    Params(params): Params<WindowParams>,
) -> Answer<serde_json::Value> {
    let (from, to, now) = params.window()?;
    let locations = state.queries.availability(from, to, now).await?;
    Ok(axum::Json(serde_json::json!({ "from_ms": from / 1_000, "to_ms": to / 1_000, "locations": locations })))
}

async fn revenue(State(state): State<AppState>) -> Answer<serde_json::Value> {
    Ok(axum::Json(serde_json::json!({ "rows": state.queries.revenue().await? })))
}

async fn reservation(State(state): State<AppState>, Path(id): Path<String>) -> Answer<crate::queries::ReservationRow> {
    crate::commands::check_reservation(&id)?;
    let row = state.queries.reservation(&id).await?;
    row.map(axum::Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no reservation {id} (yet)")))
}

/// The projections and processors: which version is served, and how far behind each is.
async fn projections(State(state): State<AppState>) -> Answer<serde_json::Value> {
    let views = state.engine.overview(&SubscriptionCriteria::all()).await?;
    let serving: serde_json::Map<String, serde_json::Value> = crate::projections::NAMES
        .iter()
        .map(|n| (n.to_string(), serde_json::json!(state.queries.serving().version(n))))
        .collect();
    let subscriptions: Vec<serde_json::Value> = views
        .iter()
        .map(|v| {
            serde_json::json!({
                "id": v.id.as_str(), "status": v.status.as_str(), "position": v.position.0, "lag": v.lag,
                "lag_seconds": v.lag_seconds, "last_error": v.last_error,
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "serving": serving, "subscriptions": subscriptions })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SimulateBody {
    #[serde(default)]
    locker: Option<String>,
    #[serde(default)]
    hours: Option<u32>,
}

/// Controls of the simulated fleet: `offline`, `online` (held until `release`), `release`,
/// and `rent` (a customer rents a locker on the unit's screen).
async fn simulate(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Answer<serde_json::Value> {
    let body: SimulateBody = if body.is_empty() {
        SimulateBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
    };
    let Some(fleet) = state.fleet.get() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_simulator", "no simulated fleet runs in this process"));
    };
    let Some(unit) = fleet.unit(&name) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no simulated unit {name}")));
    };
    let internal = |e: anyhow::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "simulator", e.to_string());
    match action.as_str() {
        "offline" => fleet.set_online(&name, false, true).await.map_err(internal)?,
        "online" => fleet.set_online(&name, true, true).await.map_err(internal)?,
        "release" => fleet.set_online(&name, unit.is_online(), false).await.map_err(internal)?,
        "rent" => {
            let locker = body.locker.ok_or_else(|| ApiError::invalid("rent needs a locker"))?;
            crate::domain::check_locker(&locker)?;
            let hours = body.hours.unwrap_or(1);
            if !(1..=720).contains(&hours) {
                return Err(ApiError::invalid("hours must be 1 to 720"));
            }
            let rental = unit.rent_on_screen(&locker, hours).await.map_err(|e| match e {
                ReelError::InvalidArgument(why) => ApiError::new(StatusCode::CONFLICT, "refused", why),
                e => e.into(),
            })?;
            return Ok(axum::Json(serde_json::json!({ "unit": name, "rental": rental })));
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("simulator actions are offline, online, release and rent, not {other:?}"),
            ))
        }
    }
    Ok(axum::Json(serde_json::json!({ "unit": name, "online": unit.is_online() })))
}
