//! Where an event goes: a key or subject built from a template.

use reel_core::RecordedEvent;

/// A template such as `reel:{category}` or `events.{category}.{stream}`. Placeholders:
/// `{category}` (the stream name before its first `-`), `{stream}` (the whole stream name) and
/// `{type}` (the event type). Anything else is copied as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Category,
    Stream,
    Type,
}

/// A template that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// A `{…}` that is not one of the placeholders, or a brace left open.
    #[error("template {template:?}: {reason} (placeholders are {{category}}, {{stream}} and {{type}})")]
    Invalid {
        /// The template as given.
        template: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl KeyTemplate {
    /// Parses a template; refuses unknown placeholders, unbalanced braces and an empty template.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let invalid = |reason: String| TemplateError::Invalid { template: template.to_string(), reason };
        if template.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(invalid(format!("a '}}' without its '{{' at {:?}", &rest[open..])));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| invalid("a '{' is never closed".into()))?;
            parts.push(match &after[..close] {
                "category" => Part::Category,
                "stream" => Part::Stream,
                "type" => Part::Type,
                other => return Err(invalid(format!("unknown placeholder {{{other}}}"))),
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// The key for `event`.
    pub fn render(&self, event: &RecordedEvent) -> String {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => key.push_str(text),
                Part::Category => key.push_str(event.stream.category()),
                Part::Stream => key.push_str(event.stream.as_str()),
                Part::Type => key.push_str(&event.event_type),
            }
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_core::{EventId, Position, StreamName, StreamVersion, Timestamp};

    fn event(stream: &str, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            position: Position(1),
            stream: StreamName::new(stream).unwrap(),
            stream_version: StreamVersion(0),
            id: EventId::new_v7(),
            event_type: event_type.into(),
            data: b"{}".to_vec(),
            metadata: Default::default(),
            recorded_at: Timestamp::now(),
        }
    }

    #[test]
    fn placeholders_are_filled_and_text_is_kept() {
        let template = KeyTemplate::parse("reel:{category}:{stream}/{type}").unwrap();
        assert_eq!(template.render(&event("unit-PL-1", "Opened")), "reel:unit:unit-PL-1/Opened");
        assert_eq!(KeyTemplate::parse("all").unwrap().render(&event("a-1", "T")), "all");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (template, reason) in [
            ("", "empty"),
            ("reel:{categroy}", "unknown placeholder {categroy}"),
            ("reel:{category", "never closed"),
            ("reel:}x", "without its"),
        ] {
            let error = KeyTemplate::parse(template).unwrap_err().to_string();
            assert!(error.contains(reason), "{template:?}: {error}");
        }
    }
}
