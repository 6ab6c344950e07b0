//! Loading (snapshot, then later events, upcast on the way) and saving aggregates.

use std::sync::Arc;

use reel_core::{
    AppendResult, Direction, EventStore, ExpectedVersion, NewEvent, ReelError, Snapshot, SnapshotStore, StreamName,
    StreamVersion, Timestamp, Upcasters,
};

use crate::{Aggregate, DomainEvent};

/// Why loading, saving or executing failed.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error("{0}")]
    Domain(#[source] E),
    /// A stored event has a type the aggregate does not know.
    #[error("{stream} has an event of unknown type {event_type:?} at position {position}")]
    UnknownEventType {
        /// The aggregate's stream.
        stream: StreamName,
        /// The stored type.
        event_type: String,
        /// Its global position.
        position: u64,
    },
    /// A stored event of a known type does not decode.
    #[error("{stream}: event {event_type} at position {position} does not decode: {reason}")]
    Undecodable {
        /// The aggregate's stream.
        stream: StreamName,
        /// The stored type.
        event_type: String,
        /// Its global position.
        position: u64,
        /// The decoding error.
        reason: String,
    },
    /// Another writer changed the aggregate and the allowed retries ran out.
    #[error("{stream} kept changing under this command ({attempts} attempts)")]
    Conflict {
        /// The aggregate's stream.
        stream: StreamName,
        /// Attempts made.
        attempts: u32,
    },
    /// The store failed or refused (invalid id, wrong expected version, …).
    #[error(transparent)]
    Store(#[from] ReelError),
}

/// An aggregate's state and the version it was loaded at.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The aggregate's id (the stream name without its category).
    pub id: String,
    /// The state.
    pub state: A,
    /// Version of its last event, `None` when it has none yet.
    pub version: Option<StreamVersion>,
    /// Whether a snapshot was used.
    pub from_snapshot: bool,
}

/// What `execute` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// What the append returned (`None` when the command produced no events).
    pub appended: Option<AppendResult>,
    /// Retries after concurrency conflicts.
    pub retries: u32,
}

/// Loads and saves aggregates of type `A`.
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    upcasters: Arc<Upcasters>,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            upcasters: self.upcasters.clone(),
            _aggregate: std::marker::PhantomData,
        }
    }
}

/// Events read per page while loading.
const PAGE: usize = 1000;

impl<A: Aggregate> Repository<A> {
    /// A repository over `store`, without snapshots or upcasters.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, snapshots: None, upcasters: Arc::default(), _aggregate: std::marker::PhantomData }
    }

    /// Uses `snapshots` (taken every `A::SNAPSHOT_EVERY` events).
    pub fn with_snapshots(mut self, snapshots: Arc<dyn SnapshotStore>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// Upcasts old event shapes on load.
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// The stream of aggregate `id`.
    pub fn stream(&self, id: &str) -> Result<StreamName, ReelError> {
        StreamName::new(format!("{}-{id}", A::CATEGORY))
    }

    /// The aggregate: its latest usable snapshot, then every later event.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, AggregateError<A::Error>> {
        let stream = self.stream(id)?;
        let mut loaded = Loaded { id: id.to_string(), state: A::default(), version: None, from_snapshot: false };
        let mut next = 0;
        // A snapshot can only exist once the stream has `SNAPSHOT_EVERY` events: the first read
        // asks for that many, and only a full first page looks a snapshot up. Short aggregates
        // (most of them) never pay for the lookup.
        let snapshot_after = match (&self.snapshots, A::SNAPSHOT_EVERY) {
            (Some(_), Some(every)) => Some(every.clamp(1, PAGE as u64) as usize),
            _ => None,
        };
        let mut first_page = snapshot_after.is_some();
        loop {
            let limit = if first_page { snapshot_after.unwrap_or(PAGE) } else { PAGE };
            let page = match self.store.read_stream(&stream, StreamVersion(next), Direction::Forward, limit).await {
                Ok(page) => page,
                Err(ReelError::StreamNotFound { .. }) => return Ok(loaded),
                Err(e) => return Err(e.into()),
            };
            if first_page && page.len() == limit {
                first_page = false;
                if let Some(snapshot) = self.usable_snapshot(&stream).await {
                    match serde_json::from_slice::<A>(&snapshot.data) {
                        Ok(state) => {
                            loaded.state = state;
                            loaded.version = Some(snapshot.version);
                            loaded.from_snapshot = true;
                            next = snapshot.version.0 + 1;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(%stream, error = %e, "ignoring a snapshot that does not decode; rebuilding from events")
                        }
                    }
                }
            }
            first_page = false;
            for stored in &page {
                self.apply_stored(&stream, &mut loaded, stored)?;
            }
            if page.len() < limit {
                return Ok(loaded);
            }
            next = page.last().map_or(next, |e| e.stream_version.0 + 1);
        }
    }

    /// Upcasts, decodes and applies one stored event (or skips an unknown one when tolerated).
    fn apply_stored(
        &self,
        stream: &StreamName,
        loaded: &mut Loaded<A>,
        stored: &reel_core::RecordedEvent,
    ) -> Result<(), AggregateError<A::Error>> {
        let stored = self.upcasters.upcast(stored.clone())?;
        loaded.version = Some(stored.stream_version);
        if !A::Event::EVENT_TYPES.contains(&stored.event_type.as_str()) {
            if A::TOLERATES_UNKNOWN_EVENTS {
                return Ok(());
            }
            return Err(AggregateError::UnknownEventType {
                stream: stream.clone(),
                event_type: stored.event_type,
                position: stored.position.0,
            });
        }
        let event = decode::<A>(stream, &stored)?;
        loaded.state.apply(&event);
        Ok(())
    }

    /// Appends `events` to aggregate `id` if it is still at `expected` (`None`: not created yet),
    /// then snapshots `state_after` when a snapshot is due.
    pub async fn save(
        &self,
        id: &str,
        expected: Option<StreamVersion>,
        events: &[A::Event],
        state_after: &A,
    ) -> Result<Option<AppendResult>, AggregateError<A::Error>> {
        if events.is_empty() {
            return Ok(None);
        }
        let stream = self.stream(id)?;
        let new_events = events.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let expected = expected.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let result = self.store.append(&stream, expected, new_events).await?;
        self.snapshot_if_due(&stream, expected, &result, state_after).await;
        Ok(Some(result))
    }

    /// Loads, handles `command`, saves. On a concurrency conflict, tries again from a fresh load
    /// up to `retries` more times.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        retries: u32,
    ) -> Result<Executed, AggregateError<A::Error>> {
        let mut attempt = 0;
        loop {
            let mut loaded = self.load(id).await?;
            let events = loaded.state.handle(command.clone()).map_err(AggregateError::Domain)?;
            for event in &events {
                loaded.state.apply(event);
            }
            match self.save(id, loaded.version, &events, &loaded.state).await {
                Ok(appended) => return Ok(Executed { appended, retries: attempt }),
                Err(AggregateError::Store(ReelError::WrongExpectedVersion { .. })) if attempt < retries => attempt += 1,
                Err(AggregateError::Store(ReelError::WrongExpectedVersion { stream, .. })) => {
                    return Err(AggregateError::Conflict { stream, attempts: attempt + 1 })
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn usable_snapshot(&self, stream: &StreamName) -> Option<Snapshot> {
        A::SNAPSHOT_EVERY?;
        let snapshots = self.snapshots.as_ref()?;
        match snapshots.load_snapshot(stream).await {
            Ok(Some(s)) if s.schema_version == A::SNAPSHOT_SCHEMA => Some(s),
            Ok(Some(s)) => {
                tracing::info!(%stream, found = s.schema_version, current = A::SNAPSHOT_SCHEMA, "ignoring a snapshot of another schema version");
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "could not load a snapshot; rebuilding from events");
                None
            }
        }
    }

    /// Snapshot when the append crossed a multiple of `SNAPSHOT_EVERY`. A failed snapshot only
    /// costs a longer load later, so it is logged, not returned.
    async fn snapshot_if_due(&self, stream: &StreamName, expected: ExpectedVersion, result: &AppendResult, state: &A) {
        let (Some(every), Some(snapshots)) = (A::SNAPSHOT_EVERY, &self.snapshots) else { return };
        let before = match expected {
            ExpectedVersion::Exact(v) => v.0 + 1,
            _ => 0,
        };
        let after = result.next_version.0 + 1;
        if every == 0 || before / every == after / every {
            return;
        }
        let data = match serde_json::to_vec(state) {
            Ok(data) => data,
            Err(e) => return tracing::warn!(%stream, error = %e, "could not serialize a snapshot"),
        };
        let snapshot = Snapshot {
            stream: stream.clone(),
            version: result.next_version,
            schema_version: A::SNAPSHOT_SCHEMA,
            data,
            taken_at: Timestamp::now(),
        };
        if let Err(e) = snapshots.save_snapshot(&snapshot).await {
            tracing::warn!(%stream, error = %e, "could not save a snapshot");
        }
    }
}

/// The stored form of an event: the enum's tag as type, its content as data.
fn encode<E: DomainEvent>(event: &E) -> Result<NewEvent, ReelError> {
    let value = serde_json::to_value(event)
        .map_err(|e| ReelError::InvalidArgument(format!("event does not serialize: {e}")))?;
    let event_type = value.get("type").and_then(|t| t.as_str()).ok_or_else(|| {
        ReelError::InvalidArgument(
            "domain events must be serde enums tagged #[serde(tag = \"type\", content = \"data\")]".into(),
        )
    })?;
    let data = value.get("data").cloned().unwrap_or(serde_json::Value::Null);
    NewEvent::json(event_type, &data)
}

fn decode<A: Aggregate>(
    stream: &StreamName,
    stored: &reel_core::RecordedEvent,
) -> Result<A::Event, AggregateError<A::Error>> {
    let undecodable = |reason: String| AggregateError::Undecodable {
        stream: stream.clone(),
        event_type: stored.event_type.clone(),
        position: stored.position.0,
        reason,
    };
    let data: serde_json::Value = serde_json::from_slice(&stored.data).map_err(|e| undecodable(e.to_string()))?;
    let tagged = serde_json::json!({ "type": stored.event_type, "data": data });
    serde_json::from_value(tagged).map_err(|e| undecodable(e.to_string()))
}
