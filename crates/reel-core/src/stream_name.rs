use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ReelError;

/// A validated stream name: 1–255 bytes of UTF-8 without control characters.
///
/// The text before the first `-` is the stream's category (`unit-PL-1001` → `unit`), the rest its id part.
/// Cloning is cheap (shared text), since every recorded event carries its stream's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(Arc<str>);

impl StreamName {
    /// Longest allowed name in bytes.
    pub const MAX_BYTES: usize = 255;

    /// Validates and wraps a stream name.
    pub fn new(name: impl Into<String>) -> Result<Self, ReelError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("must not be empty".to_string())
        } else if name.len() > Self::MAX_BYTES {
            Some(format!("is {} bytes, the limit is {}", name.len(), Self::MAX_BYTES))
        } else if name.chars().any(char::is_control) {
            Some("must not contain control characters".to_string())
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ReelError::InvalidStreamName { name: printable(&name), reason }),
            None => Ok(Self(name.into())),
        }
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Text before the first `-`, or the whole name when it has none.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(category, _)| category)
    }

    /// Text after the first `-`, if any.
    pub fn id_part(&self) -> Option<&str> {
        self.0.split_once('-').map(|(_, id)| id)
    }
}

/// A short, escaped form of untrusted text for error messages.
fn printable(name: &str) -> String {
    let escaped: String = name.escape_debug().collect();
    if escaped.len() > 80 {
        let cut = (0..=80).rev().find(|i| escaped.is_char_boundary(*i)).unwrap_or(0);
        format!("{}…", &escaped[..cut])
    } else {
        escaped
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamName {
    type Error = ReelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamName> for String {
    fn from(value: StreamName) -> Self {
        value.0.to_string()
    }
}

impl std::str::FromStr for StreamName {
    type Err = ReelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_and_id_part() {
        let s = StreamName::new("unit-PL-1001").unwrap();
        assert_eq!(s.category(), "unit");
        assert_eq!(s.id_part(), Some("PL-1001"));
        let plain = StreamName::new("settings").unwrap();
        assert_eq!(plain.category(), "settings");
        assert_eq!(plain.id_part(), None);
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["".to_string(), "a".repeat(256), "unit-\n1".to_string(), "x\u{7f}".to_string()] {
            let err = StreamName::new(bad.clone()).unwrap_err();
            assert!(matches!(err, ReelError::InvalidStreamName { .. }), "{bad:?} gave {err:?}");
        }
        assert!(StreamName::new("a".repeat(255)).is_ok());
        assert!(StreamName::new("ünït-ø").is_ok());
    }

    #[test]
    fn error_message_escapes_and_truncates() {
        let err = StreamName::new(format!("{}\u{1}", "é".repeat(300))).unwrap_err();
        let text = err.to_string();
        assert!(text.len() < 300, "{text}");
    }
}
