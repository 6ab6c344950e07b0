//! `GET /all/live` and `GET /streams/{stream}/live`: Server-Sent Events. Each event's SSE id is
//! its position; a client that reconnects with `Last-Event-ID` resumes right after it. Comments
//! are sent as heartbeats. A client that falls more than the live buffer behind gets a final
//! `dropped` event (with the position to resume from) and the connection ends.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use reel_core::{AllReader, Direction, Position, ReadAllFilter, RecordedEvent, StreamName, StreamVersion};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;

use super::all::ReadAllQuery;
use super::{forbidden, AppState, Params, Segment};
use crate::error::{ApiError, ErrorBody};
use crate::live::LiveEvent;
use crate::scopes::Access;

/// Which events a live client wants.
enum Selection {
    /// The log, filtered, and only streams the caller may read.
    All {
        filter: ReadAllFilter,
        access: Access,
    },
    Stream(StreamName),
}

impl Selection {
    fn wants(&self, event: &RecordedEvent) -> bool {
        match self {
            Selection::Stream(stream) => &event.stream == stream,
            Selection::All { filter, access } => filter.matches(event) && access.can_read(event.stream.as_str()),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamLiveQuery {
    /// First position to send (default: only new events); `Last-Event-ID` wins.
    #[param(minimum = 0)]
    from: Option<u64>,
}

/// Where to start: after `Last-Event-ID`, else `from`, else at the live tail.
fn start(headers: &HeaderMap, from: Option<u64>) -> Result<Option<Position>, ApiError> {
    match headers.get("last-event-id") {
        Some(value) => {
            let text = value.to_str().unwrap_or("");
            let last: u64 = text.trim().parse().map_err(|_| {
                ApiError::bad_request(
                    "invalid_last_event_id",
                    format!("Last-Event-ID must be a position, got {text:?}"),
                )
            })?;
            Ok(Some(Position(last.saturating_add(1).min(i64::MAX as u64))))
        }
        None => Ok(from.map(|f| Position(f.clamp(1, i64::MAX as u64)))),
    }
}

/// Follow the global log live (Server-Sent Events).
#[utoipa::path(
    get, path = "/all/live", tag = "log",
    params(ReadAllQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this position")),
    responses(
        (status = 200, description = "An event stream: `data` is a RecordedEvent, `id` its position", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside the token's scopes", body = ErrorBody),
    )
)]
pub async fn all_live(
    State(state): State<AppState>,
    Params(query): Params<ReadAllQuery>,
    access: Access,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let filter = query.filter();
    if !access.can_read_log(&filter.categories, filter.stream_prefix.as_deref()) {
        return Err(forbidden("reading the whole log (filter with ?category= to the categories you may read)".into()));
    }
    let from = start(&headers, query.from)?;
    let selection = Selection::All { filter, access };
    live(state, selection, from).await
}

/// Follow one stream live (Server-Sent Events).
#[utoipa::path(
    get, path = "/streams/{stream}/live", tag = "streams",
    params(("stream" = String, Path, description = "Stream name"), StreamLiveQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this position")),
    responses(
        (status = 200, description = "An event stream: `data` is a RecordedEvent, `id` its position", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside the token's scopes", body = ErrorBody),
    )
)]
pub async fn stream_live(
    State(state): State<AppState>,
    Segment(stream): Segment,
    Params(query): Params<StreamLiveQuery>,
    access: Access,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let stream = StreamName::new(stream)?;
    if !access.can_read(stream.as_str()) {
        return Err(forbidden(format!("reading {stream}")));
    }
    let from = start(&headers, query.from)?;
    live(state, Selection::Stream(stream), from).await
}

async fn live(state: AppState, selection: Selection, from: Option<Position>) -> Result<Response, ApiError> {
    // Subscribed before catching up, so nothing appended meanwhile is missed.
    let tail = state.live.subscribe();
    // Without a start, "new events" are those appended after the client has its response: the
    // head is read before the response goes out. Read later (in the feed task), an append the
    // client made right after connecting could land below it and never be sent.
    let from = match from {
        Some(from) => from,
        None => state.events.head().await?.next(),
    };
    let (sender, receiver) = mpsc::channel::<Event>(64);
    let heartbeat = state.limits.heartbeat;
    state.metrics.live_clients.inc();
    tokio::spawn(feed(state, selection, from, tail, sender));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat")).into_response())
}

fn data_event(event: &RecordedEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_default();
    Event::default().id(event.position.0.to_string()).data(data)
}

fn final_event(kind: &str, resume_from: Position, message: &str) -> Event {
    let body = serde_json::json!({ "reason": kind, "message": message, "resume_from": resume_from.0 });
    Event::default().event(kind).data(body.to_string())
}

/// Catches the client up from the store, then relays the live tail; ends when the client goes.
async fn feed(
    state: AppState,
    selection: Selection,
    mut next: Position,
    mut tail: broadcast::Receiver<Arc<LiveEvent>>,
    sender: mpsc::Sender<Event>,
) {
    let mut shutdown = state.shutdown.clone();
    let outcome = async {
        catch_up(&state, &selection, &mut next, &sender).await?;
        loop {
            let received = tokio::select! {
                received = tail.recv() => received,
                _ = sender.closed() => return None,
                _ = shutdown.changed() => {
                    return Some(final_event("shutdown", next, "the server is shutting down; reconnect to resume"));
                }
            };
            match received {
                Ok(live) if live.event.position < next => {}
                Ok(live) => {
                    next = live.event.position.next();
                    if selection.wants(&live.event) {
                        state.metrics.events_read.inc();
                        let frame = Event::default().id(live.event.position.0.to_string()).data(&live.json);
                        sender.send(frame).await.ok()?;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let message = format!(
                        "this client fell {missed} events behind the live tail (the limit is {}); reconnect with Last-Event-ID to resume",
                        state.limits.live_buffer
                    );
                    return Some(final_event("dropped", next, &message));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
    .await;
    if let Some(last) = outcome {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), sender.send(last)).await;
    }
    state.metrics.live_clients.dec();
}

/// Sends stored events from `next` up to the head.
async fn catch_up(
    state: &AppState,
    selection: &Selection,
    next: &mut Position,
    sender: &mpsc::Sender<Event>,
) -> Option<()> {
    match selection {
        Selection::All { filter, .. } => {
            let mut reader = AllReader::new(state.events.clone(), *next, filter.clone(), 1000);
            while let Ok(Some(page)) = reader.next_page().await {
                for event in page.iter().filter(|e| selection.wants(e)) {
                    sender.send(data_event(event)).await.ok()?;
                }
                state.metrics.events_read.inc_by(page.len() as u64);
            }
            *next = reader.position();
        }
        Selection::Stream(stream) => {
            let mut version = StreamVersion(0);
            loop {
                let Ok(page) = state.events.read_stream(stream, version, Direction::Forward, 1000).await else { break };
                let Some(last) = page.last() else { break };
                version = StreamVersion(last.stream_version.0 + 1);
                for event in &page {
                    if event.position >= *next {
                        sender.send(data_event(event)).await.ok()?;
                        *next = event.position.next();
                    }
                }
            }
        }
    }
    Some(())
}
