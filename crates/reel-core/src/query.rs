//! Tags, queries over them and the condition an append can carry: consistency boundaries that
//! span streams (docs/CONSISTENCY.md).
//!
//! ```
//! use reel_core::{AppendCondition, Position, Query, QueryItem};
//!
//! // "No reservation of locker 7 was stored after position 120."
//! let query = Query::new(vec![QueryItem::tags(["locker:7"]).with_types(["LockerReserved"])]).unwrap();
//! let condition = AppendCondition::new(query.clone()).after(Position(120));
//! assert!(query.matches("LockerReserved", &["locker:7".to_string(), "customer:c-1".to_string()]));
//! assert!(!query.matches("LockerReleased", &["locker:7".to_string()]));
//! assert_eq!(condition.after, Some(Position(120)));
//! ```

use serde::{Deserialize, Serialize};

use crate::{AppendLimits, Position, RecordedEvent, ReelError};

/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 255;

/// Most items in one query, and most types or tags in one item.
pub const MAX_QUERY_ITEMS: usize = 64;

/// Checks one tag: 1 to [`MAX_TAG_BYTES`] bytes, no control characters.
pub fn check_tag(tag: &str) -> Result<(), ReelError> {
    if tag.is_empty() {
        return Err(ReelError::InvalidArgument("a tag must not be empty".into()));
    }
    if tag.len() > MAX_TAG_BYTES {
        return Err(ReelError::TooLarge { what: "tag (bytes)".into(), size: tag.len(), limit: MAX_TAG_BYTES });
    }
    if tag.chars().any(char::is_control) {
        return Err(ReelError::InvalidArgument(format!("tag {tag:?} contains a control character")));
    }
    Ok(())
}

/// One item of a [`Query`]: an event matches it when its type is one of `types` (none listed:
/// any type) and its tags include every one of `tags`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QueryItem {
    /// Event types, any of (empty: any type).
    #[serde(default)]
    pub types: Vec<String>,
    /// Tags the event must all carry.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl QueryItem {
    /// Events carrying all of `tags`, of any type.
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(tags: I) -> Self {
        Self { types: Vec::new(), tags: tags.into_iter().map(Into::into).collect() }
    }

    /// Events of any of `types`, whatever their tags.
    pub fn types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        Self { types: types.into_iter().map(Into::into).collect(), tags: Vec::new() }
    }

    /// Restricts the item to `types`.
    pub fn with_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether an event of `event_type` carrying `tags` matches this item.
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self.tags.iter().all(|t| tags.contains(t))
    }

    fn validate(&self, index: usize) -> Result<(), ReelError> {
        let invalid = |reason: String| ReelError::InvalidArgument(format!("query item #{index}: {reason}"));
        if self.types.is_empty() && self.tags.is_empty() {
            return Err(invalid("it names no type and no tag, so it would match every event".into()));
        }
        if self.types.len() > MAX_QUERY_ITEMS || self.tags.len() > MAX_QUERY_ITEMS {
            return Err(invalid(format!("at most {MAX_QUERY_ITEMS} types and {MAX_QUERY_ITEMS} tags")));
        }
        for tag in &self.tags {
            check_tag(tag).map_err(|e| invalid(e.to_string()))?;
        }
        for event_type in &self.types {
            if event_type.is_empty()
                || event_type.len() > AppendLimits::MAX_TYPE_BYTES
                || event_type.chars().any(char::is_control)
            {
                return Err(invalid(format!("{event_type:?} is not a valid event type")));
            }
        }
        Ok(())
    }
}

/// A set of events across streams: those matching any of its items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// The items, any of.
    pub items: Vec<QueryItem>,
}

impl Query {
    /// A checked query: at least one item, each naming a type or a tag, valid tags and types.
    pub fn new(items: Vec<QueryItem>) -> Result<Self, ReelError> {
        let query = Self { items };
        query.validate()?;
        Ok(query)
    }

    /// Checks what [`Query::new`] checks (for queries built from JSON).
    pub fn validate(&self) -> Result<(), ReelError> {
        if self.items.is_empty() {
            return Err(ReelError::InvalidArgument("a query needs at least one item".into()));
        }
        if self.items.len() > MAX_QUERY_ITEMS {
            return Err(ReelError::InvalidArgument(format!("a query has at most {MAX_QUERY_ITEMS} items")));
        }
        self.items.iter().enumerate().try_for_each(|(i, item)| item.validate(i))
    }

    /// Whether an event of `event_type` carrying `tags` matches the query.
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        self.items.iter().any(|item| item.matches(event_type, tags))
    }

    /// Whether a stored event matches the query.
    pub fn matches_event(&self, event: &RecordedEvent) -> bool {
        self.matches(&event.event_type, &event.tags)
    }
}

/// The condition of a conditional append: it commits only if no event matching
/// `fail_if_events_match` is stored after `after` (anywhere in the log when `after` is absent,
/// which makes it a uniqueness guard). Decided in the same ordered commit that assigns the
/// append's positions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AppendCondition {
    /// The events whose existence makes the append fail.
    pub fail_if_events_match: Query,
    /// Only events after this position count: the head returned by the read the decision was
    /// made on ([`QueryPage::head`]), not the position of the last matching event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub after: Option<Position>,
}

impl AppendCondition {
    /// Fails if any event matching `query` is stored at all.
    pub fn new(query: Query) -> Self {
        Self { fail_if_events_match: query, after: None }
    }

    /// Only events after `position` count.
    pub fn after(mut self, position: Position) -> Self {
        self.after = Some(position);
        self
    }

    /// The position after which matching events count (0: every event).
    pub fn after_position(&self) -> Position {
        self.after.unwrap_or(Position(0))
    }

    /// Checks the query, and `after` against the head when the append is decided.
    pub fn check_after(&self, head: Position) -> Result<(), ReelError> {
        match self.after {
            Some(after) if after > head => Err(ReelError::InvalidArgument(format!(
                "the condition's after position {after} is beyond the head {head}; use the head a read returned"
            ))),
            _ => Ok(()),
        }
    }
}

/// One page of a [`Query`]'s events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryPage {
    /// Matching events after the page's start, in position order.
    pub events: Vec<RecordedEvent>,
    /// The head when the page was read. Pass it as the condition's `after`: every event up to it
    /// was considered, matching or not.
    pub head: Position,
}

impl QueryPage {
    /// Where the next page starts: after the last event returned, or at the head when the page
    /// came back short.
    pub fn next_after(&self, limit: usize) -> Position {
        match self.events.last() {
            Some(last) if self.events.len() >= limit => last.position,
            _ => self.head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_item_needs_its_types_and_all_its_tags() {
        let item = QueryItem::tags(["a", "b"]).with_types(["X", "Y"]);
        assert!(item.matches("X", &tags(&["b", "c", "a"])));
        assert!(!item.matches("X", &tags(&["a"])));
        assert!(!item.matches("Z", &tags(&["a", "b"])));
        assert!(QueryItem::types(["X"]).matches("X", &[]));
        let query = Query::new(vec![QueryItem::tags(["a"]), QueryItem::types(["Z"])]).unwrap();
        assert!(query.matches("Z", &[]) && query.matches("Q", &tags(&["a"])) && !query.matches("Q", &tags(&["b"])));
    }

    #[test]
    fn bad_queries_and_tags_are_refused() {
        assert!(Query::new(vec![]).is_err());
        assert!(Query::new(vec![QueryItem::default()]).is_err());
        assert!(Query::new(vec![QueryItem::tags([""])]).is_err());
        assert!(Query::new(vec![QueryItem::tags(["a\nb"])]).is_err());
        assert!(Query::new(vec![QueryItem::tags(["x".repeat(MAX_TAG_BYTES + 1)])]).is_err());
        assert!(Query::new(vec![QueryItem::types([""])]).is_err());
        assert!(check_tag("locker:7").is_ok());
        let condition = AppendCondition::new(Query::new(vec![QueryItem::tags(["a"])]).unwrap()).after(Position(9));
        assert!(condition.check_after(Position(8)).is_err());
        assert!(condition.check_after(Position(9)).is_ok());
    }

    #[test]
    fn a_condition_reads_from_json() {
        let json = r#"{"fail_if_events_match":{"items":[{"types":["T"],"tags":["a"]}]},"after":4}"#;
        let condition: AppendCondition = serde_json::from_str(json).unwrap();
        assert_eq!(condition.after, Some(Position(4)));
        assert_eq!(condition.fail_if_events_match.items[0].tags, tags(&["a"]));
        assert!(serde_json::from_str::<AppendCondition>(r#"{"fail_if":{}}"#).is_err());
    }
}
