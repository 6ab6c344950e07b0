//! Token scopes: `admin`, `read:<pattern>` and `write:<pattern>`, where a pattern is a stream
//! name or a prefix ending in `*` (`unit-PL-1001`, `unit-*`, `*`). Streams whose names start with
//! `$` are Reel's own (tokens live in `$tokens`) and only `admin` reaches them.

use std::fmt;
use std::str::FromStr;

use reel_core::ReelError;

/// One permission of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything, including subscriptions, metrics and `$` streams.
    Admin,
    /// Read streams matching the pattern.
    Read(StreamPattern),
    /// Append to streams matching the pattern.
    Write(StreamPattern),
}

/// A stream name, or a prefix when it ends in `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPattern {
    text: String,
}

impl StreamPattern {
    /// Whether `stream` matches; `$` streams never do.
    pub fn matches(&self, stream: &str) -> bool {
        if stream.starts_with('$') {
            return false;
        }
        match self.text.strip_suffix('*') {
            Some(prefix) => stream.starts_with(prefix),
            None => self.text == stream,
        }
    }

    /// Whether every stream of `category` matches (for reading the log filtered by category).
    pub fn covers_category(&self, category: &str) -> bool {
        match self.text.strip_suffix('*') {
            Some(prefix) => format!("{category}-").starts_with(prefix) || category.starts_with(prefix),
            None => false,
        }
    }

    /// Whether every stream whose name starts with `prefix` matches.
    pub fn covers_prefix(&self, prefix: &str) -> bool {
        !prefix.starts_with('$') && self.text.strip_suffix('*').is_some_and(|own| prefix.starts_with(own))
    }

    /// Whether it matches every stream.
    pub fn is_everything(&self) -> bool {
        self.text == "*"
    }
}

impl FromStr for Scope {
    type Err = ReelError;

    fn from_str(text: &str) -> Result<Self, ReelError> {
        let invalid = |reason: &str| ReelError::InvalidArgument(format!("scope {text:?} {reason}"));
        if text == "admin" {
            return Ok(Scope::Admin);
        }
        let (kind, pattern) = text
            .split_once(':')
            .ok_or_else(|| invalid("is not admin, read:<stream pattern> or write:<stream pattern>"))?;
        if pattern.is_empty() || pattern.chars().any(char::is_control) || pattern.len() > 255 {
            return Err(invalid("needs a stream name or a prefix ending in *"));
        }
        if pattern.trim_end_matches('*').contains('*') || pattern.ends_with("**") {
            return Err(invalid("may only have one * and only at the end"));
        }
        if pattern.starts_with('$') {
            return Err(invalid("names a reserved $ stream; only admin reaches those"));
        }
        let pattern = StreamPattern { text: pattern.to_string() };
        match kind {
            "read" => Ok(Scope::Read(pattern)),
            "write" => Ok(Scope::Write(pattern)),
            _ => Err(invalid("is not admin, read:<stream pattern> or write:<stream pattern>")),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Read(p) => write!(f, "read:{}", p.text),
            Scope::Write(p) => write!(f, "write:{}", p.text),
        }
    }
}

/// What a caller may do: everything when tokens are off, else the union of its token's scopes.
#[derive(Clone, Debug)]
pub enum Access {
    /// Tokens are not required (loopback only).
    Open,
    /// A token's scopes.
    Scopes(Vec<Scope>),
}

impl Access {
    /// May manage subscriptions, read metrics and `$` streams.
    pub fn is_admin(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Scopes(scopes) => scopes.contains(&Scope::Admin),
        }
    }

    /// May read `stream`.
    pub fn can_read(&self, stream: &str) -> bool {
        self.is_admin() || self.patterns(true).any(|p| p.matches(stream))
    }

    /// May append to `stream`.
    pub fn can_write(&self, stream: &str) -> bool {
        self.is_admin() || self.patterns(false).any(|p| p.matches(stream))
    }

    /// May read the log filtered to `categories` and `prefix` (all of it when neither is set).
    pub fn can_read_log(&self, categories: &[String], prefix: Option<&str>) -> bool {
        if self.is_admin() || self.patterns(true).any(StreamPattern::is_everything) {
            return true;
        }
        let by_prefix = prefix.is_some_and(|prefix| self.patterns(true).any(|p| p.covers_prefix(prefix)));
        let by_category =
            !categories.is_empty() && categories.iter().all(|c| self.patterns(true).any(|p| p.covers_category(c)));
        by_prefix || by_category
    }

    fn patterns(&self, read: bool) -> impl Iterator<Item = &StreamPattern> {
        let scopes: &[Scope] = match self {
            Access::Open => &[],
            Access::Scopes(scopes) => scopes,
        };
        scopes.iter().filter_map(move |s| match (s, read) {
            (Scope::Read(p), true) | (Scope::Write(p), false) => Some(p),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(scopes: &[&str]) -> Access {
        Access::Scopes(scopes.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn patterns_match_names_and_prefixes_but_never_reserved_streams() {
        let a = access(&["write:unit-PL-1001", "read:unitconfig-PL-1001", "read:unit-*"]);
        assert!(a.can_write("unit-PL-1001") && !a.can_write("unit-PL-1002"));
        assert!(a.can_read("unitconfig-PL-1001") && a.can_read("unit-PL-7") && !a.can_read("unitconfig-PL-2"));
        assert!(!a.can_read("$tokens") && !access(&["read:*"]).can_read("$tokens"));
        assert!(access(&["admin"]).can_read("$tokens"));
        assert!(a.can_read_log(&["unit".into()], None) && !a.can_read_log(&[], None));
        assert!(!a.can_read_log(&["unitconfig".into()], None));
        assert!(a.can_read_log(&[], Some("unit-PL")) && !a.can_read_log(&[], Some("uni")));
        assert!(access(&["read:*"]).can_read_log(&[], None));
        assert!(!a.is_admin());
    }

    #[test]
    fn bad_scopes_are_refused_with_reasons() {
        for bad in ["", "root", "read:", "read:a*b", "read:**", "delete:x", "write:$tokens", "read:a\nb"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
        assert_eq!("read:unit-*".parse::<Scope>().unwrap().to_string(), "read:unit-*");
    }
}
