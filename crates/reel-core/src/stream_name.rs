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

    /// The partition of this stream among `16^digits` partitions: the first `digits` hex digits
    /// of a stable hash of the name. Going from 16 to 256 partitions splits each partition into
    /// 16 and moves no stream across the old boundaries. `digits` is 1 to 4.
    pub fn partition(&self, digits: u8) -> u32 {
        let digits = u32::from(digits.clamp(1, 4));
        (stable_hash(self.0.as_bytes()) >> (64 - 4 * digits)) as u32
    }

    /// Text after the first `-`, if any.
    pub fn id_part(&self) -> Option<&str> {
        self.0.split_once('-').map(|(_, id)| id)
    }
}

/// 64-bit FNV-1a followed by MurmurHash3's 64-bit finalizer: both fixed by their
/// specifications, so partitions never move between versions or machines (a std `Hasher` gives
/// no such promise); the finalizer spreads similar names over the top bits the partition uses.
fn stable_hash(bytes: &[u8]) -> u64 {
    let fnv = bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3));
    let mut h = fnv;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
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
    fn partitions_are_stable_and_split_cleanly() {
        // Fixed values: a change here would move streams between partitions of running systems.
        assert_eq!(stable_hash(b"unit-PL-1001"), 0xbb884ab08ed9ded0);
        for i in 0..2000 {
            let s = StreamName::new(format!("unit-PL-{i}")).unwrap();
            let p16 = s.partition(1);
            let p256 = s.partition(2);
            assert!(p16 < 16 && p256 < 256);
            assert_eq!(p256 >> 4, p16, "a 256-way partition lies inside its 16-way parent");
        }
        let spread: std::collections::HashSet<u32> =
            (0..2000).map(|i| StreamName::new(format!("unit-{i}")).unwrap().partition(1)).collect();
        assert_eq!(spread.len(), 16, "all 16 partitions get streams");
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
