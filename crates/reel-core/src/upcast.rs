use std::collections::HashMap;
use std::sync::Arc;

use crate::{RecordedEvent, ReelError};

/// A function turning one stored event shape into the next.
pub type UpcastFn = Arc<dyn Fn(serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync>;

/// Registered upcasters: on read, an event of an old type/shape becomes the current one, step by
/// step (v1 → v2 → v3). Used by repositories and subscriptions alike.
///
/// ```
/// use reel_core::Upcasters;
///
/// let upcasters = Upcasters::new()
///     .register("LockerReservedV1", "LockerReservedV2", |mut data| {
///         data["customer"] = data["user"].take();
///         Ok(data)
///     })
///     .register("LockerReservedV2", "LockerReserved", |mut data| {
///         data["channel"] = "app".into();
///         Ok(data)
///     });
/// assert_eq!(upcasters.current_type("LockerReservedV1"), "LockerReserved");
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    by_type: HashMap<String, (String, UpcastFn)>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.by_type.iter().map(|(from, (to, _))| (from, to))).finish()
    }
}

/// Longest chain followed before giving up (a cycle is a registration mistake).
const MAX_STEPS: usize = 32;

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `from_type` → `to_type`; a later registration for the same `from_type` replaces it.
    pub fn register(
        mut self,
        from_type: impl Into<String>,
        to_type: impl Into<String>,
        transform: impl Fn(serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.by_type.insert(from_type.into(), (to_type.into(), Arc::new(transform)));
        self
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// The type an event of `event_type` ends up as.
    pub fn current_type<'a>(&'a self, mut event_type: &'a str) -> &'a str {
        for _ in 0..MAX_STEPS {
            match self.by_type.get(event_type) {
                Some((to, _)) => event_type = to,
                None => break,
            }
        }
        event_type
    }

    /// Every stored type that becomes one of `types` (the types themselves included), so a
    /// reader filtering by current types also fetches their old shapes.
    pub fn stored_types_of(&self, types: &[String]) -> Vec<String> {
        let mut all: Vec<String> = types.to_vec();
        for from in self.by_type.keys() {
            if types.iter().any(|t| t == self.current_type(from)) && !all.contains(from) {
                all.push(from.clone());
            }
        }
        all
    }

    /// The event in its current shape (unchanged when no upcaster applies).
    pub fn upcast(&self, mut event: RecordedEvent) -> Result<RecordedEvent, ReelError> {
        if !self.by_type.contains_key(&event.event_type) {
            return Ok(event);
        }
        let fail = |event: &RecordedEvent, reason: String| ReelError::InvalidEvent {
            index: None,
            reason: format!("upcasting {} at position {}: {reason}", event.event_type, event.position),
        };
        let mut data: serde_json::Value =
            serde_json::from_slice(&event.data).map_err(|e| fail(&event, format!("data is not JSON: {e}")))?;
        for _ in 0..MAX_STEPS {
            let Some((to, transform)) = self.by_type.get(&event.event_type) else {
                event.data = serde_json::to_vec(&data).map_err(|e| fail(&event, e.to_string()))?.into();
                return Ok(event);
            };
            data = transform(data).map_err(|reason| fail(&event, reason))?;
            event.event_type = to.clone();
        }
        Err(fail(&event, format!("more than {MAX_STEPS} steps: the upcasters form a cycle")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventId, Position, StreamName, StreamVersion, Timestamp};

    fn event(event_type: &str, data: &str) -> RecordedEvent {
        RecordedEvent {
            position: Position(7),
            stream: StreamName::new("locker-1").unwrap(),
            stream_version: StreamVersion(0),
            id: EventId::new_v7(),
            event_type: event_type.into(),
            data: data.as_bytes().to_vec().into(),
            metadata: Default::default(),
            tags: Vec::new(),
            recorded_at: Timestamp::now(),
        }
    }

    fn chain() -> Upcasters {
        Upcasters::new()
            .register("V1", "V2", |mut d| {
                d["customer"] = d["user"].take();
                Ok(d)
            })
            .register("V2", "V3", |mut d| {
                d["channel"] = "app".into();
                Ok(d)
            })
    }

    #[test]
    fn chains_apply_in_order() {
        let up = chain().upcast(event("V1", r#"{"user":"ada"}"#)).unwrap();
        assert_eq!(up.event_type, "V3");
        let data: serde_json::Value = serde_json::from_slice(&up.data).unwrap();
        assert_eq!(data, serde_json::json!({ "user": null, "customer": "ada", "channel": "app" }));
        let current = chain().upcast(event("V3", r#"{"x":1}"#)).unwrap();
        assert_eq!(current.data, br#"{"x":1}"#.to_vec(), "current events pass untouched");
        let mut types = chain().stored_types_of(&["V3".to_string()]);
        types.sort();
        assert_eq!(types, ["V1", "V2", "V3"]);
    }

    #[test]
    fn failures_and_cycles_are_errors() {
        let failing = Upcasters::new().register("A", "B", |_| Err("no customer".into()));
        assert!(failing.upcast(event("A", "{}")).unwrap_err().to_string().contains("no customer"));
        assert!(chain().upcast(event("V1", "not json")).is_err());
        let cycle = Upcasters::new().register("A", "B", Ok).register("B", "A", Ok);
        assert!(cycle.upcast(event("A", "{}")).unwrap_err().to_string().contains("cycle"));
    }
}
