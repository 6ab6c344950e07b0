//! NATS JetStream: publish with `Nats-Msg-Id` = the event id, and wait for the acks.
//!
//! JetStream drops a message whose id it saw within the stream's duplicate window, so a replay
//! after a crash, a retry or a reset stores nothing twice, as long as it comes within that
//! window. The window is time-limited: before it publishes events that may have been published
//! already (the first batch after a start, or positions it already passed, after a reset), the
//! relay compares their age with the window and warns (a log line and the
//! `replays_beyond_window` count) when the broker will no longer recognise them.
//!
//! Order: messages of one connection reach the stream in the order they were sent, and the
//! relay never has two messages of the same Reel stream in flight at once. So if the broker
//! refuses one event, no later event of that stream has been stored, and the replay from the
//! refused event keeps every stream in order.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamErrorKind, PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use reel_core::{Position, RecordedEvent, Timestamp};

use crate::envelope::{Envelope, Payload};
use crate::relay::{Delivery, DeliveryError, Sink};
use crate::template::{percent_escape, KeyTemplate};

/// Where and how a JetStream relay publishes.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream that stores the subjects (created when missing).
    pub stream: String,
    /// The subject of each event; placeholder values are escaped (see [`escape_subject_token`]).
    pub subjects: KeyTemplate,
    /// The stream's duplicate window: a message id seen within it is dropped by the broker.
    pub duplicate_window: Duration,
    /// How long to wait for a publish ack before the broker counts as unavailable.
    pub ack_timeout: Duration,
    /// The event's data, or a CloudEvent.
    pub payload: Payload,
}

impl JetStreamOptions {
    /// The defaults: stream `REEL`, subjects `reel.{category}.{stream}`, a 2-minute duplicate
    /// window (NATS's own default) and a 5-second ack timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "REEL".into(),
            subjects: KeyTemplate::parse("reel.{category}.{stream}").expect("the default template is valid"),
            duplicate_window: Duration::from_secs(120),
            ack_timeout: Duration::from_secs(5),
            payload: Payload::Data,
        }
    }

    /// The subjects the JetStream stream must hold: the template's text before its first
    /// placeholder followed by `>`, or the template itself when it has none.
    pub fn stream_subjects(&self) -> String {
        if self.subjects.is_literal() {
            return self.subjects.literal_prefix().to_string();
        }
        let prefix = self.subjects.literal_prefix();
        match prefix.rsplit_once('.') {
            Some((head, _)) => format!("{head}.>"),
            None => ">".to_string(),
        }
    }
}

/// Writes `value` as one subject token. NATS subjects separate tokens with `.`, use `*` and `>`
/// as wildcards and cannot hold whitespace, so those bytes, `%` itself and every byte that is
/// not printable ASCII are written as `%XX` (upper-case hex of the UTF-8 bytes); an empty value
/// is `%00` (a stream name never holds a NUL, so this is unambiguous). `unit-PL 1.a` becomes
/// `unit-PL%201%2Ea`.
pub fn escape_subject_token(value: &str, out: &mut String) {
    if value.is_empty() {
        out.push_str("%00");
        return;
    }
    percent_escape(value, out, |byte| byte.is_ascii_graphic() && !matches!(byte, b'.' | b'*' | b'>' | b'%'));
}

/// Publishes to NATS JetStream.
pub struct JetStreamSink {
    context: jetstream::Context,
    subjects: KeyTemplate,
    payload: Payload,
    duplicate_window: Duration,
    replays: Mutex<ReplayWatch>,
    replays_beyond_window: AtomicU64,
    /// The warning not yet taken by the relay (shown with its subscription).
    warning: Mutex<Option<String>>,
    duplicates: AtomicU64,
}

/// What the sink knows about what it may have published before.
#[derive(Default)]
struct ReplayWatch {
    /// Nothing published since the start: the first batch may repeat what a crashed run sent.
    started: bool,
    /// Highest position published by this run; anything at or below it is a replay (a reset).
    highest: Position,
}

/// A JetStream stream that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamSetupError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// JetStream refused to create or describe the stream.
    #[error("JetStream stream {stream}: {reason}")]
    Stream {
        /// The JetStream stream.
        stream: String,
        /// Why.
        reason: String,
    },
}

impl JetStreamSink {
    /// Connects, then creates the JetStream stream with the configured duplicate window and
    /// subjects, or verifies an existing one: its duplicate window must be the configured one
    /// (it decides which replays the broker recognises) and it must hold the relay's subjects.
    pub async fn connect(options: JetStreamOptions) -> Result<Self, JetStreamSetupError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .connect(options.url.as_str())
            .await
            .map_err(|e| JetStreamSetupError::Connect { url: options.url.clone(), reason: e.to_string() })?;
        let mut context = jetstream::new(client);
        context.set_timeout(options.ack_timeout);
        let stream_error = |reason: String| JetStreamSetupError::Stream { stream: options.stream.clone(), reason };
        let subjects = options.stream_subjects();
        match context.get_stream(&options.stream).await {
            Ok(existing) => {
                let config = &existing.cached_info().config;
                if config.duplicate_window != options.duplicate_window {
                    return Err(stream_error(format!(
                        "its duplicate window is {:?}, the relay is configured for {:?}; give --duplicate-window {} \
                         or change the stream, since the window decides which replays the broker drops",
                        config.duplicate_window,
                        options.duplicate_window,
                        config.duplicate_window.as_secs_f64()
                    )));
                }
                if !config.subjects.iter().any(|held| subject_covers(held, &subjects)) {
                    return Err(stream_error(format!(
                        "it holds the subjects {:?}, not {subjects:?} where the relay publishes",
                        config.subjects
                    )));
                }
            }
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                context
                    .create_stream(stream::Config {
                        name: options.stream.clone(),
                        subjects: vec![subjects],
                        duplicate_window: options.duplicate_window,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| stream_error(format!("cannot create it: {e}")))?;
            }
            Err(e) => return Err(stream_error(e.to_string())),
        }
        Ok(Self {
            context,
            subjects: options.subjects,
            payload: options.payload,
            duplicate_window: options.duplicate_window,
            replays: Mutex::new(ReplayWatch::default()),
            replays_beyond_window: AtomicU64::new(0),
            warning: Mutex::new(None),
            duplicates: AtomicU64::new(0),
        })
    }

    /// Events sent again after the duplicate window had passed (the broker may hold them twice).
    pub fn replays_beyond_window(&self) -> u64 {
        self.replays_beyond_window.load(Ordering::Relaxed)
    }

    /// Events the broker reported as duplicates (a replay it recognised and dropped).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Warns when `batch` may repeat earlier publishes that the broker no longer recognises.
    fn watch_replays(&self, batch: &[RecordedEvent]) {
        let Some(first) = batch.first() else { return };
        let Ok(mut watch) = self.replays.lock() else { return };
        let may_repeat = !watch.started || first.position <= watch.highest;
        watch.started = true;
        watch.highest = watch.highest.max(batch.last().map_or(first.position, |e| e.position));
        drop(watch);
        if !may_repeat {
            return;
        }
        let window = self.duplicate_window.as_micros() as i64;
        let now = Timestamp::now().unix_micros();
        let beyond = batch.iter().filter(|e| now - e.recorded_at.unix_micros() > window).count();
        if beyond > 0 {
            self.replays_beyond_window.fetch_add(beyond as u64, Ordering::Relaxed);
            let warning = format!(
                "replayed {beyond} events from position {} older than the JetStream duplicate window ({:?}): \
                 those published before will not be recognised by the broker and may be stored twice",
                first.position, self.duplicate_window
            );
            tracing::warn!(from = %first.position, events = beyond, "{warning}");
            if let Ok(mut pending) = self.warning.lock() {
                *pending = Some(warning);
            }
        }
    }

    fn message(&self, event: &RecordedEvent) -> (String, PublishMessage) {
        let subject = self.subjects.render_with(event, escape_subject_token);
        let mut message = PublishMessage::build().payload(self.payload.of(event)).message_id(event.id.to_string());
        for (name, value) in Envelope::of(event).headers {
            message = message.header(name, value.as_str());
        }
        (subject, message)
    }
}

/// True when the subject filter `held` (with `*` and `>` wildcards) matches every subject that
/// `wanted` (itself a filter) matches.
fn subject_covers(held: &str, wanted: &str) -> bool {
    let held: Vec<&str> = held.split('.').collect();
    let wanted: Vec<&str> = wanted.split('.').collect();
    for (i, token) in held.iter().enumerate() {
        match (*token, wanted.get(i)) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(w)) if *w != ">" => {}
            (t, Some(w)) if t == *w => {}
            _ => return false,
        }
    }
    held.len() == wanted.len()
}

fn classify(kind: PublishErrorKind, error: String) -> DeliveryError {
    match kind {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::StreamNotFound => {
            DeliveryError::Unavailable(format!("JetStream: {error}"))
        }
        _ if error.contains("temporarily unavailable") => DeliveryError::Unavailable(format!("JetStream: {error}")),
        _ => DeliveryError::Refused(format!("JetStream: {error}")),
    }
}

#[async_trait]
impl Sink for JetStreamSink {
    async fn publish(&self, batch: &[RecordedEvent]) -> Delivery {
        self.watch_replays(batch);
        let mut failure: Option<(usize, DeliveryError)> = None;
        let mut in_flight: Vec<(usize, PublishAckFuture)> = Vec::with_capacity(batch.len());
        let mut streams_in_flight: HashSet<&str> = HashSet::new();
        for (index, event) in batch.iter().enumerate() {
            // Never two messages of one stream in flight: settle the acks first.
            if streams_in_flight.contains(event.stream.as_str()) {
                self.settle(&mut in_flight, &mut failure).await;
                streams_in_flight.clear();
                if failure.is_some() {
                    break;
                }
            }
            let (subject, message) = self.message(event);
            match self.context.send_publish(subject, message).await {
                Ok(ack) => in_flight.push((index, ack)),
                Err(e) => {
                    failure = Some((index, classify(e.kind(), e.to_string())));
                    break;
                }
            }
            streams_in_flight.insert(event.stream.as_str());
        }
        self.settle(&mut in_flight, &mut failure).await;
        match failure {
            None => Delivery::all(batch.len()),
            Some((index, error)) => Delivery { acknowledged: index, error: Some(error) },
        }
    }

    fn take_warning(&self) -> Option<String> {
        self.warning.lock().ok()?.take()
    }
}

impl JetStreamSink {
    /// Awaits every ack in flight; keeps the earliest failure.
    async fn settle(
        &self,
        in_flight: &mut Vec<(usize, PublishAckFuture)>,
        failure: &mut Option<(usize, DeliveryError)>,
    ) {
        for (index, ack) in in_flight.drain(..) {
            match ack.await {
                Ok(ack) if ack.duplicate => {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    if failure.as_ref().is_none_or(|(first, _)| index < *first) {
                        *failure = Some((index, classify(e.kind(), e.to_string())));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        escape_subject_token(value, &mut out);
        out
    }

    #[test]
    fn subject_tokens_escape_what_nats_cannot_hold() {
        assert_eq!(escaped("unit-PL-1"), "unit-PL-1");
        assert_eq!(escaped("unit-PL 1.a"), "unit-PL%201%2Ea");
        assert_eq!(escaped("a*b>c%d"), "a%2Ab%3Ec%25d");
        assert_eq!(escaped(""), "%00");
        assert_eq!(escaped("ü"), "%C3%BC");
    }

    #[test]
    fn the_stream_holds_the_subjects_of_the_template() {
        let mut options = JetStreamOptions::new("nats://127.0.0.1:4222");
        assert_eq!(options.stream_subjects(), "reel.>");
        options.subjects = KeyTemplate::parse("{category}.events").unwrap();
        assert_eq!(options.stream_subjects(), ">");
        options.subjects = KeyTemplate::parse("all.events").unwrap();
        assert_eq!(options.stream_subjects(), "all.events");
        options.subjects = KeyTemplate::parse("out.reel-{category}").unwrap();
        assert_eq!(options.stream_subjects(), "out.>");
    }

    #[test]
    fn subject_filters_cover_narrower_ones() {
        assert!(subject_covers("reel.>", "reel.>"));
        assert!(subject_covers(">", "reel.>"));
        assert!(subject_covers("reel.*", "reel.a"));
        assert!(!subject_covers("reel.*", "reel.>"));
        assert!(!subject_covers("other.>", "reel.>"));
        assert!(!subject_covers("reel", "reel.>"));
        assert!(subject_covers("all.events", "all.events"));
    }
}
