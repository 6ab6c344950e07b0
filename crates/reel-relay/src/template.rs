//! Where an event goes: a key or subject built from a template.

use reel_core::RecordedEvent;

/// A template such as `reel:{category}` or `events.{category}.{stream}`. Placeholders:
/// `{category}` (the stream name before its first `-`), `{id}` (the stream name after its first
/// `-`: `unitconfig-PL-7` → `PL-7`), `{stream}` (the whole stream name) and `{type}` (the event
/// type). Anything else is copied as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Category,
    Id,
    Stream,
    Type,
}

/// A template that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// A `{…}` that is not one of the placeholders, or a brace left open.
    #[error("template {template:?}: {reason} (placeholders are {{category}}, {{id}}, {{stream}} and {{type}})")]
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
                "id" => Part::Id,
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
        self.render_with(event, |value, key| key.push_str(value))
    }

    /// The key for `event`, each placeholder's value written by `escape` (the text written in
    /// the template is copied as it is).
    pub fn render_with(&self, event: &RecordedEvent, escape: impl Fn(&str, &mut String)) -> String {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => key.push_str(text),
                Part::Category => escape(event.stream.category(), &mut key),
                Part::Id => escape(event.stream.id_part().unwrap_or(""), &mut key),
                Part::Stream => escape(event.stream.as_str(), &mut key),
                Part::Type => escape(&event.event_type, &mut key),
            }
        }
        key
    }

    /// The text before the first placeholder (all of it when there is none).
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(text)) => text,
            _ => "",
        }
    }

    /// True when the template has no placeholder: every event gets the same key.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }
}

/// Writes `value` with every byte that `keep` refuses as `%XX` (upper-case hex of the UTF-8
/// bytes): the escaping of subject tokens and topic levels, whose forbidden bytes differ.
pub(crate) fn percent_escape(value: &str, out: &mut String, keep: impl Fn(u8) -> bool) {
    for byte in value.bytes() {
        if keep(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
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
            data: reel_core::Bytes::from_static(b"{}"),
            metadata: Default::default(),
            tags: Vec::new(),
            recorded_at: Timestamp::now(),
        }
    }

    #[test]
    fn placeholders_are_filled_and_text_is_kept() {
        let template = KeyTemplate::parse("reel:{category}:{stream}/{type}").unwrap();
        assert_eq!(template.render(&event("unit-PL-1", "Opened")), "reel:unit:unit-PL-1/Opened");
        let template = KeyTemplate::parse("devices/{id}/config").unwrap();
        assert_eq!(template.render(&event("unitconfig-PL-1", "Set")), "devices/PL-1/config");
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
