use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ReelError;

/// Global position of an event in the log. The first event is at 1; `Position(0)` means "before the first".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event.
    pub const ZERO: Position = Position(0);

    /// The position after this one.
    pub fn next(self) -> Position {
        Position(self.0.saturating_add(1))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Version of an event within its stream: 0 for the first event of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamVersion(pub u64);

impl StreamVersion {
    /// The first event of a stream.
    pub const FIRST: StreamVersion = StreamVersion(0);
    /// The highest version; reading backward from it starts at the stream's last event.
    pub const LAST: StreamVersion = StreamVersion(u64::MAX);
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the writer believes about the stream's current version (optimistic concurrency).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Whether a stream whose current version is `actual` satisfies this expectation.
    pub fn is_satisfied_by(self, actual: Option<StreamVersion>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::StreamExists => actual.is_some(),
            ExpectedVersion::Exact(v) => actual == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no-stream"),
            ExpectedVersion::StreamExists => f.write_str("exists"),
            ExpectedVersion::Exact(v) => v.fmt(f),
        }
    }
}

impl FromStr for ExpectedVersion {
    type Err = ReelError;

    /// Parses `any`, `no-stream` (or `no_stream`), `exists` (or `stream-exists`) or a version number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(ExpectedVersion::Any),
            "no-stream" | "no_stream" => Ok(ExpectedVersion::NoStream),
            "exists" | "stream-exists" | "stream_exists" => Ok(ExpectedVersion::StreamExists),
            number if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) => number
                .parse::<u64>()
                .ok()
                .filter(|v| *v <= i64::MAX as u64)
                .map(|v| ExpectedVersion::Exact(StreamVersion(v)))
                .ok_or_else(|| ReelError::InvalidArgument(format!("expected version {s} is too large"))),
            other => Err(ReelError::InvalidArgument(format!(
                "expected version must be any, no-stream, exists or a non-negative number, got {:?}",
                other
            ))),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectedVersion::Exact(v) => serializer.serialize_u64(v.0),
            ExpectedVersion::Any => serializer.serialize_str("any"),
            ExpectedVersion::NoStream => serializer.serialize_str("no_stream"),
            ExpectedVersion::StreamExists => serializer.serialize_str("exists"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_forms() {
        assert_eq!("any".parse::<ExpectedVersion>().unwrap(), ExpectedVersion::Any);
        assert_eq!("no-stream".parse::<ExpectedVersion>().unwrap(), ExpectedVersion::NoStream);
        assert_eq!("exists".parse::<ExpectedVersion>().unwrap(), ExpectedVersion::StreamExists);
        assert_eq!("7".parse::<ExpectedVersion>().unwrap(), ExpectedVersion::Exact(StreamVersion(7)));
    }

    #[test]
    fn rejects_negative_and_garbage() {
        for bad in ["-1", "", "seven", "1.5", "99999999999999999999", " 1"] {
            assert!(bad.parse::<ExpectedVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn satisfaction() {
        let v3 = Some(StreamVersion(3));
        assert!(ExpectedVersion::Any.is_satisfied_by(None));
        assert!(ExpectedVersion::NoStream.is_satisfied_by(None));
        assert!(!ExpectedVersion::NoStream.is_satisfied_by(v3));
        assert!(ExpectedVersion::StreamExists.is_satisfied_by(v3));
        assert!(!ExpectedVersion::StreamExists.is_satisfied_by(None));
        assert!(ExpectedVersion::Exact(StreamVersion(3)).is_satisfied_by(v3));
        assert!(!ExpectedVersion::Exact(StreamVersion(2)).is_satisfied_by(v3));
    }
}
