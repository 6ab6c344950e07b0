//! Decisions across streams: state folded from the events of one query, and an append with the
//! matching condition, so the rule holds however many streams it spans (docs/CONSISTENCY.md).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use reel_aggregate::{Decision, DecisionRepository, DecisionAppend};
//! use reel_core::{ExpectedVersion, NewEvent, Query, QueryItem, RecordedEvent, StreamName};
//!
//! /// "A username is taken once": the decision reads every registration of the name.
//! struct Username { name: String, taken: bool }
//!
//! impl Decision for Username {
//!     fn query(&self) -> Query {
//!         Query::new(vec![QueryItem::tags([format!("username:{}", self.name)])]).unwrap()
//!     }
//!     fn apply(&mut self, _event: &RecordedEvent) {
//!         self.taken = true;
//!     }
//! }
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Arc::new(reel_sqlite::SqliteStore::open(dir.path().join("reel.db")).unwrap());
//! let decisions = DecisionRepository::new(store);
//! let register = |user: &str| {
//!     let user = user.to_string();
//!     decisions.execute(
//!         || Username { name: "ada".into(), taken: false },
//!         move |decision: &Username| {
//!             if decision.taken {
//!                 return Err("the username is taken");
//!             }
//!             let event = NewEvent::new("UserRegistered", "{}").with_tags(["username:ada"]);
//!             let stream = StreamName::new(format!("user-{user}")).unwrap();
//!             Ok(Some(DecisionAppend { stream, expected: ExpectedVersion::NoStream, events: vec![event] }))
//!         },
//!         3,
//!     )
//! };
//! assert!(register("u1").await.is_ok());
//! assert!(register("u2").await.is_err());
//! # });
//! ```

use std::sync::Arc;

use reel_core::{
    AppendCondition, AppendResult, EventStore, ExpectedVersion, NewEvent, Position, Query, RecordedEvent, ReelError,
    StreamName,
};

/// State for deciding a command, folded from the events of one query across streams.
pub trait Decision: Send + Sync {
    /// The events the decision depends on.
    fn query(&self) -> Query;
    /// Moves the state forward by one event of the query, in position order.
    fn apply(&mut self, event: &RecordedEvent);
}

/// What a decided command appends: events to one stream, with its expected version as usual.
#[derive(Clone, Debug)]
pub struct DecisionAppend {
    /// The stream.
    pub stream: StreamName,
    /// Its expected version (`Any` when only the condition matters).
    pub expected: ExpectedVersion,
    /// The events.
    pub events: Vec<NewEvent>,
}

/// A decision and the head of the read it was folded from.
pub struct LoadedDecision<D> {
    /// The state.
    pub state: D,
    /// The head of the read: the condition's `after`.
    pub head: Position,
}

/// What `execute` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionExecuted {
    /// What the append returned (`None` when the command decided to append nothing).
    pub appended: Option<AppendResult>,
    /// Retries after the condition or the expected version failed (another writer appended).
    pub retries: u32,
}

/// Why executing a decision failed.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError<E: std::fmt::Debug + std::fmt::Display> {
    /// The command was refused by the decision.
    #[error("{0}")]
    Domain(E),
    /// Other writers kept appending matching events and the allowed retries ran out.
    #[error("the decision's events kept changing under this command ({attempts} attempts)")]
    Conflict {
        /// Attempts made.
        attempts: u32,
    },
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] ReelError),
}

/// Events read per page while loading a decision.
const PAGE: usize = 1000;

/// Loads decisions from queries and appends what they decide with the matching condition.
#[derive(Clone)]
pub struct DecisionRepository {
    store: Arc<dyn EventStore>,
}

impl DecisionRepository {
    /// Decisions over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store }
    }

    /// Folds every event of the decision's query, up to the head of the first read, into it.
    pub async fn load<D: Decision>(&self, mut state: D) -> Result<LoadedDecision<D>, ReelError> {
        let query = state.query();
        let mut after = Position(0);
        let mut head = None;
        loop {
            let page = self.store.read_query(&query, after, PAGE).await?;
            // Later pages may see events past the first read's head; they are left out, and
            // the condition (after that head) catches them instead.
            let head = *head.get_or_insert(page.head);
            let full = page.events.len() >= PAGE;
            for event in page.events.iter().filter(|e| e.position <= head) {
                state.apply(event);
            }
            match page.events.last() {
                Some(last) if full && last.position < head => after = last.position,
                _ => return Ok(LoadedDecision { state, head }),
            }
        }
    }

    /// Loads a fresh decision with `make`, lets `decide` choose what to append, and appends it
    /// on condition that no event of the decision's query was stored after the read. When one
    /// was (or the append's expected version no longer holds), starts over, up to `retries` more
    /// times.
    pub async fn execute<D, E, M, F>(
        &self,
        make: M,
        decide: F,
        retries: u32,
    ) -> Result<DecisionExecuted, DecisionError<E>>
    where
        D: Decision,
        E: std::fmt::Debug + std::fmt::Display,
        M: Fn() -> D,
        F: Fn(&D) -> Result<Option<DecisionAppend>, E>,
    {
        let mut attempt = 0;
        loop {
            let loaded = self.load(make()).await?;
            let Some(append) = decide(&loaded.state).map_err(DecisionError::Domain)? else {
                return Ok(DecisionExecuted { appended: None, retries: attempt });
            };
            let condition = AppendCondition::new(loaded.state.query()).after(loaded.head);
            match self.store.append_if(&append.stream, append.expected, append.events, condition).await {
                Ok(result) => return Ok(DecisionExecuted { appended: Some(result), retries: attempt }),
                // Either check failing means the decision was made on a stale read.
                Err(ReelError::ConditionFailed { .. } | ReelError::WrongExpectedVersion { .. })
                    if attempt < retries =>
                {
                    attempt += 1
                }
                Err(ReelError::ConditionFailed { .. } | ReelError::WrongExpectedVersion { .. }) => {
                    return Err(DecisionError::Conflict { attempts: attempt + 1 })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
