use std::collections::HashSet;

use crate::{check_tag, AppendRequest, NewEvent, ReelError};

/// Limits every append is checked against before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendLimits {
    /// Largest event (type + data + metadata) in bytes. Default 1 MiB.
    pub max_event_bytes: usize,
    /// Most events in one append. Default 10,000.
    pub max_batch_events: usize,
    /// Most tags on one event. Default 16.
    pub max_tags_per_event: usize,
}

impl Default for AppendLimits {
    fn default() -> Self {
        Self { max_event_bytes: 1024 * 1024, max_batch_events: 10_000, max_tags_per_event: 16 }
    }
}

impl AppendLimits {
    /// Longest event type in bytes.
    pub const MAX_TYPE_BYTES: usize = 255;

    /// Checks a request: its events (see [`AppendLimits::validate`]) and its condition's query.
    pub fn validate_request(&self, request: &AppendRequest) -> Result<(), ReelError> {
        self.validate(&request.events)?;
        match &request.condition {
            Some(condition) => condition.fail_if_events_match.validate(),
            None => Ok(()),
        }
    }

    /// Checks a batch: not empty, within limits, non-empty types without control characters,
    /// no id twice within the batch.
    pub fn validate(&self, events: &[NewEvent]) -> Result<(), ReelError> {
        if events.is_empty() {
            return Err(ReelError::InvalidArgument("an append needs at least one event".into()));
        }
        if events.len() > self.max_batch_events {
            return Err(ReelError::TooLarge {
                what: "batch (events)".into(),
                size: events.len(),
                limit: self.max_batch_events,
            });
        }
        let mut ids = HashSet::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let invalid = |reason: String| ReelError::InvalidEvent { index: Some(index), reason };
            if event.event_type.is_empty() {
                return Err(invalid("event type must not be empty".into()));
            }
            if event.event_type.len() > Self::MAX_TYPE_BYTES {
                return Err(invalid(format!("event type is longer than {} bytes", Self::MAX_TYPE_BYTES)));
            }
            if event.event_type.chars().any(char::is_control) {
                return Err(invalid("event type must not contain control characters".into()));
            }
            let size = event.size_bytes();
            if size > self.max_event_bytes {
                return Err(ReelError::TooLarge {
                    what: format!("event #{index} (bytes)"),
                    size,
                    limit: self.max_event_bytes,
                });
            }
            if event.tags.len() > self.max_tags_per_event {
                return Err(ReelError::TooLarge {
                    what: format!("event #{index} (tags)"),
                    size: event.tags.len(),
                    limit: self.max_tags_per_event,
                });
            }
            for tag in &event.tags {
                check_tag(tag).map_err(|e| invalid(e.to_string()))?;
            }
            if let Some(id) = event.id {
                if !ids.insert(id) {
                    return Err(invalid(format!("event id {id} appears twice in the batch")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventId;

    #[test]
    fn rejects_each_kind_of_bad_batch() {
        let limits = AppendLimits { max_event_bytes: 100, max_batch_events: 3, max_tags_per_event: 2 };
        assert!(limits.validate(&[NewEvent::new("T", "{}").with_tags(["a", "b", "c"])]).is_err());
        assert!(limits.validate(&[NewEvent::new("T", "{}").with_tags(["a\u{7}"])]).is_err());
        assert!(limits.validate(&[NewEvent::new("T", "{}").with_tags([""])]).is_err());
        assert!(limits.validate(&[NewEvent::new("T", "{}").with_tags(["a", "b"])]).is_ok());
        assert!(limits.validate(&[]).is_err());
        assert!(limits.validate(&[NewEvent::new("", "{}")]).is_err());
        assert!(limits.validate(&[NewEvent::new("a\tb", "{}")]).is_err());
        assert!(limits.validate(&[NewEvent::new("T", vec![b'x'; 200])]).is_err());
        assert!(limits.validate(&vec![NewEvent::new("T", "{}"); 4]).is_err());
        let id = EventId::new_v7();
        let twice = [NewEvent::new("T", "{}").with_id(id), NewEvent::new("T", "{}").with_id(id)];
        assert!(matches!(limits.validate(&twice), Err(ReelError::InvalidEvent { index: Some(1), .. })));
        assert!(limits.validate(&vec![NewEvent::new("T", "{}"); 3]).is_ok());
    }
}
