//! `POST /streams/{stream}` (append one event, a batch, or a CloudEvents batch) and
//! `GET /streams/{stream}` (read a stream, with paging links).

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use reel_core::wire::{check_unique_ids, encode_segment, EventInput};
use reel_core::{AppendCondition, Direction, EventId, ExpectedVersion, NewEvent, ReelError, StreamName, StreamVersion};
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::{forbidden, AppState, Params, Segment};
use crate::error::{ApiError, ErrorBody};
use crate::scopes::Access;
pub use reel_core::api::{AppendResponse, Links, StreamPage};

/// An event to append.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewEventDoc {
    /// What happened, e.g. `DoorOpened`.
    #[schema(rename = "type", min_length = 1)]
    event_type: String,
    /// The payload as JSON (or give `data_base64`).
    data: Option<serde_json::Value>,
    /// The payload as base64 bytes, when it is not JSON.
    data_base64: Option<String>,
    /// A UUID; makes retries safe (a retry with the same ids stores nothing twice).
    #[schema(format = "uuid")]
    id: Option<String>,
    /// A JSON object: correlation, causation, device …
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Tags such as `locker:7` (at most 16, each 1 to 255 bytes without control characters),
    /// which queries and conditions select events by across streams.
    tags: Option<Vec<String>>,
}

/// One event (`type`, `data` …) or a batch (`events`), with an optional expected version and
/// an optional condition checked beside it in the same commit.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AppendDoc {
    /// `any` (default), `no_stream`, `exists`, or the stream's current version (a number).
    #[schema(value_type = Option<serde_json::Value>, example = json!("no_stream"))]
    expected_version: Option<String>,
    /// The batch, appended atomically.
    events: Option<Vec<NewEventDoc>>,
    #[schema(rename = "type")]
    event_type: Option<String>,
    data: Option<serde_json::Value>,
    data_base64: Option<String>,
    id: Option<String>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    tags: Option<Vec<String>>,
    /// Stores nothing (409 `condition_failed`, with the first matching `position`) if an event
    /// matching `fail_if_events_match` is stored after `after` (anywhere, without `after`).
    condition: Option<AppendCondition>,
}

#[derive(Deserialize)]
struct AppendWire {
    #[serde(default)]
    expected_version: Option<serde_json::Value>,
    #[serde(default)]
    events: Option<Vec<EventInput>>,
    #[serde(rename = "type", default)]
    event_type: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    condition: Option<AppendCondition>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AppendQuery {
    /// Expected version (instead of the body's; the only way for a CloudEvents batch).
    expected_version: Option<String>,
}

/// Parses `any`, `no_stream`, `exists` or a number.
fn expected_version(value: &serde_json::Value) -> Result<ExpectedVersion, ApiError> {
    let invalid = |what: String| {
        ApiError::bad_request(
            "invalid_expected_version",
            format!(
                "expected_version must be \"any\", \"no_stream\", \"exists\" or a version from 0 to {}, got {what}",
                i64::MAX
            ),
        )
    };
    match value {
        serde_json::Value::String(text) => match text.as_str() {
            "any" | "no_stream" | "exists" => Ok(text.parse().map_err(|_| invalid(value.to_string()))?),
            _ => Err(invalid(value.to_string())),
        },
        serde_json::Value::Number(n) => n
            .as_u64()
            .filter(|v| *v <= i64::MAX as u64)
            .map(|v| ExpectedVersion::Exact(StreamVersion(v)))
            .ok_or_else(|| invalid(n.to_string())),
        other => Err(invalid(other.to_string())),
    }
}

fn stream_name(text: String) -> Result<StreamName, ApiError> {
    Ok(StreamName::new(text)?)
}

/// Append to a stream.
#[utoipa::path(
    post, path = "/streams/{stream}", tag = "streams",
    params(("stream" = String, Path, description = "Stream name, e.g. unit-PL-1001"), AppendQuery),
    request_body(content(
        (AppendDoc = "application/json"),
        (Vec<serde_json::Value> = "application/cloudevents-batch+json")
    )),
    responses(
        (status = 201, description = "Stored", body = AppendResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside the token's scopes", body = ErrorBody),
        (status = 409, description = "Wrong expected version (with `expected` and `actual`), a reused event id, or a failed condition (`condition_failed`, with the first matching `position`)", body = ErrorBody),
        (status = 413, description = "Body, batch or event over the limit", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
pub async fn append(
    State(state): State<AppState>,
    Segment(stream): Segment,
    Params(query): Params<AppendQuery>,
    access: Access,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let stream = stream_name(stream)?;
    if !access.can_write(stream.as_str()) {
        return Err(forbidden(format!("appending to {stream}")));
    }
    if let Some(owned) = state.read_only_streams.iter().find(|r| r.matches(stream.as_str())) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "stream_read_only",
            format!("{stream} is written by {}, never through this server; nothing was stored", owned.written_by),
        ));
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let cloudevents = match media.as_str() {
        "application/json" => false,
        "application/cloudevents-batch+json" => true,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "send application/json or application/cloudevents-batch+json, not {:?}",
                    if content_type.is_empty() { "no content type" } else { content_type }
                ),
            ))
        }
    };
    let bytes = read_body(body, state.limits.max_body_bytes).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_encoding", format!("the body is not UTF-8: {e}")))?;
    let query_expected = query.expected_version.map(|v| match v.parse::<u64>() {
        Ok(n) => serde_json::Value::from(n),
        Err(_) => serde_json::Value::String(v),
    });
    let (events, body_expected, condition) =
        if cloudevents { (cloud_events(text)?, None, None) } else { events_of(text)? };
    // A condition reads across streams, so it needs the whole log (as `POST /query` does).
    if condition.is_some() && !access.can_read_log(&[], None) {
        return Err(forbidden("an append condition (it reads the whole log)".into()));
    }
    let expected = match (query_expected, body_expected) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_expected_version",
                "give expected_version in the query or the body, not both",
            ))
        }
        (Some(v), None) | (None, Some(v)) => expected_version(&v)?,
        (None, None) => ExpectedVersion::Any,
    };
    check_unique_ids(&events)?;
    let count = events.len() as u64;
    let started = Instant::now();
    let result = match condition {
        Some(condition) => state.events.append_if(&stream, expected, events, condition).await?,
        None => state.events.append(&stream, expected, events).await?,
    };
    state.metrics.append_seconds.observe(started.elapsed().as_secs_f64());
    state.metrics.append_requests.inc();
    state.metrics.events_appended.inc_by(count);
    let response = AppendResponse {
        stream: stream.to_string(),
        first_position: result.first_position.0,
        last_position: result.last_position.0,
        positions: (result.first_position.0..=result.last_position.0).collect(),
        next_version: result.next_version.0,
    };
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

/// Reads at most `limit` bytes of body; 413 beyond.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is over the limit of {limit} bytes"),
            )
        } else {
            ApiError::bad_request("invalid_body", format!("reading the body failed: {e}"))
        }
    })
}

/// An append body's events, expected version and condition.
type AppendParts = (Vec<NewEvent>, Option<serde_json::Value>, Option<AppendCondition>);

fn events_of(text: &str) -> Result<AppendParts, ApiError> {
    let wire: AppendWire = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() { "invalid_json" } else { "invalid_body" };
        ApiError::bad_request(code, format!("{e}"))
    })?;
    let single = wire.event_type.is_some()
        || wire.data.is_some()
        || wire.data_base64.is_some()
        || wire.id.is_some()
        || wire.metadata.is_some()
        || wire.tags.is_some();
    let events = match (wire.events, single) {
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "give one event (type, data …) or a batch (events), not both",
            ))
        }
        (Some(batch), false) => {
            if batch.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "the batch is empty: `events` needs at least one event",
                ));
            }
            batch.iter().enumerate().map(|(i, e)| e.to_new_event(Some(i))).collect::<Result<Vec<_>, _>>()?
        }
        (None, true) => {
            let Some(event_type) = wire.event_type else {
                return Err(ApiError::bad_request("invalid_event", "missing field `type`"));
            };
            let input = EventInput {
                event_type,
                data: wire.data,
                data_base64: wire.data_base64,
                id: wire.id,
                metadata: wire.metadata,
                tags: wire.tags,
                stream: None,
                stream_version: None,
            };
            vec![input.to_new_event(None)?]
        }
        (None, false) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the body needs one event (`type` and `data`) or a batch (`events`)",
            ))
        }
    };
    Ok((events, wire.expected_version, wire.condition))
}

/// A CloudEvents JSON batch (structured mode, spec 1.0). The event id becomes the Reel id when it
/// is a UUID; otherwise a UUID derived from `source` and `id`, so a redelivered CloudEvent is
/// still stored once. The other attributes go into metadata under `cloudevents`.
fn cloud_events(text: &str) -> Result<Vec<NewEvent>, ApiError> {
    let batch: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() { "invalid_json" } else { "invalid_body" };
        ApiError::bad_request(code, format!("a CloudEvents batch is a JSON array of event objects: {e}"))
    })?;
    if batch.is_empty() {
        return Err(ApiError::bad_request("invalid_body", "the CloudEvents batch is empty"));
    }
    let mut events = Vec::with_capacity(batch.len());
    for (index, mut attributes) in batch.into_iter().enumerate() {
        let invalid = |reason: String| ReelError::InvalidEvent { index: Some(index), reason };
        let mut text_attribute = |name: &str| match attributes.remove(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s),
            Some(_) => Err(invalid(format!("CloudEvents attribute `{name}` must be a non-empty string"))),
            None => Err(invalid(format!("missing CloudEvents attribute `{name}`"))),
        };
        let spec = text_attribute("specversion")?;
        if spec != "1.0" {
            return Err(invalid(format!("specversion {spec:?} is not supported (1.0 is)")).into());
        }
        let (id, source, event_type) = (text_attribute("id")?, text_attribute("source")?, text_attribute("type")?);
        let data = match (attributes.remove("data"), attributes.remove("data_base64")) {
            (Some(_), Some(_)) => return Err(invalid("give data or data_base64, not both".into()).into()),
            (Some(value), None) => serde_json::to_vec(&value).unwrap_or_default(),
            (None, Some(serde_json::Value::String(encoded))) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| invalid(format!("data_base64 is not base64: {e}")))?,
            (None, Some(_)) => return Err(invalid("data_base64 must be a string".into()).into()),
            (None, None) => b"null".to_vec(),
        };
        let event_id = match id.parse::<uuid::Uuid>() {
            Ok(uuid) => EventId(uuid),
            Err(_) => EventId(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("{source}\n{id}").as_bytes())),
        };
        attributes.insert("id".into(), id.into());
        attributes.insert("source".into(), source.into());
        attributes.insert("specversion".into(), spec.into());
        let mut event = NewEvent::new(event_type, data).with_id(event_id);
        event.metadata.insert("cloudevents".into(), serde_json::Value::Object(attributes));
        events.push(event);
    }
    Ok(events)
}

/// Waits up to `wait` for `stream` to have events at `from`, then reads them (a stream that still
/// does not exist is `StreamNotFound`).
async fn wait_for_stream(
    state: &AppState,
    stream: &StreamName,
    from: u64,
    limit: usize,
    wait: std::time::Duration,
) -> Result<Vec<reel_core::RecordedEvent>, ReelError> {
    let waiters = state.live.waiters();
    let notify = waiters.notify_of(stream.as_str());
    let outcome = read_or_wait(state, stream, from, limit, wait, &notify).await;
    waiters.done(stream.as_str(), notify);
    outcome
}

async fn read_or_wait(
    state: &AppState,
    stream: &StreamName,
    from: u64,
    limit: usize,
    wait: std::time::Duration,
    notify: &tokio::sync::Notify,
) -> Result<Vec<reel_core::RecordedEvent>, ReelError> {
    // Enabled before the stream is looked at again: an event appended in between wakes it.
    let woken = notify.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    let read = || state.events.read_stream(stream, StreamVersion(from), Direction::Forward, limit);
    match read().await {
        Ok(events) if events.is_empty() => {}
        Err(ReelError::StreamNotFound { .. }) => {}
        other => return other,
    }
    let mut shutdown = state.shutdown.clone();
    tokio::select! {
        _ = woken => {}
        _ = tokio::time::sleep(wait) => {}
        _ = shutdown.changed() => {}
    }
    read().await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadStreamQuery {
    /// First version to return (forward: default 0; backward: default the latest).
    #[param(minimum = 0)]
    from: Option<u64>,
    /// Most events to return, 1 to 10,000 (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// `forward` (default) or `backward`.
    direction: Option<DirectionParam>,
    /// Forward only: seconds to wait when the stream has nothing at `from` yet (or does not
    /// exist yet), answering as soon as it does (0 to the server's maximum).
    wait: Option<u64>,
}

#[derive(Deserialize, Clone, Copy, ToSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum DirectionParam {
    Forward,
    Backward,
}

/// Read a stream.
#[utoipa::path(
    get, path = "/streams/{stream}", tag = "streams",
    params(("stream" = String, Path, description = "Stream name"), ReadStreamQuery),
    responses(
        (status = 200, description = "A page of the stream", body = StreamPage),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside the token's scopes", body = ErrorBody),
        (status = 404, description = "No such stream", body = ErrorBody),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    Segment(stream): Segment,
    Params(query): Params<ReadStreamQuery>,
    access: Access,
) -> Result<Json<StreamPage>, ApiError> {
    let stream = stream_name(stream)?;
    if !access.can_read(stream.as_str()) {
        return Err(forbidden(format!("reading {stream}")));
    }
    let limit = super::page_limit(query.limit)?;
    let backward = query.direction == Some(DirectionParam::Backward);
    let (direction, default_from) =
        if backward { (Direction::Backward, i64::MAX as u64) } else { (Direction::Forward, 0) };
    let from = query.from.unwrap_or(default_from).min(i64::MAX as u64);
    let wait = super::all::wait_for(&state, query.wait)?;
    if backward && !wait.is_zero() {
        return Err(ApiError::bad_request("invalid_query", "wait is for reading forward"));
    }
    let events = match state.events.read_stream(&stream, StreamVersion(from), direction, limit).await {
        Ok(events) if events.is_empty() && !wait.is_zero() => {
            wait_for_stream(&state, &stream, from, limit, wait).await?
        }
        Err(ReelError::StreamNotFound { .. }) if !wait.is_zero() => {
            wait_for_stream(&state, &stream, from, limit, wait).await?
        }
        other => other?,
    };
    state.metrics.events_read.inc_by(events.len() as u64);
    let next = match (events.len() == limit, events.last()) {
        (true, Some(last)) if !backward => Some(last.stream_version.0 + 1),
        (true, Some(last)) if last.stream_version.0 > 0 => Some(last.stream_version.0 - 1),
        _ => None,
    };
    let encoded = encode_segment(stream.as_str());
    let direction = if backward { "backward" } else { "forward" };
    let links =
        Links { next: next.map(|from| format!("/streams/{encoded}?from={from}&limit={limit}&direction={direction}")) };
    Ok(Json(StreamPage { stream: stream.to_string(), events, links }))
}
