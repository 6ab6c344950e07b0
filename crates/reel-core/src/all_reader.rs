use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::{AllPage, EventStore, Position, ReadAllFilter, RecordedEvent, ReelError};

/// Reads the global log page by page, fetching the next page while the caller handles the current
/// one, so a catch-up costs max(read, handle) per page instead of their sum. Memory stays bounded
/// by two pages. Needs a Tokio runtime.
///
/// ```no_run
/// # async fn example(store: std::sync::Arc<dyn reel_core::EventStore>) -> Result<(), reel_core::ReelError> {
/// use reel_core::{AllReader, Position, ReadAllFilter};
///
/// let mut reader = AllReader::new(store, Position(1), ReadAllFilter::default(), 1000);
/// while let Some(events) = reader.next_page().await? {
///     for event in events {
///         println!("{} {}", event.position, event.event_type);
///     }
/// }
/// # Ok(()) }
/// ```
pub struct AllReader {
    store: Arc<dyn EventStore>,
    filter: Arc<ReadAllFilter>,
    page_size: usize,
    next: Position,
    ahead: Option<JoinHandle<Result<AllPage, ReelError>>>,
}

impl AllReader {
    /// A reader starting at position `from`.
    pub fn new(store: Arc<dyn EventStore>, from: Position, filter: ReadAllFilter, page_size: usize) -> Self {
        Self { store, filter: Arc::new(filter), page_size, next: Position(from.0.max(1)), ahead: None }
    }

    /// Where the next page starts; a follower may save it as its checkpoint once it has handled
    /// everything returned so far.
    pub fn position(&self) -> Position {
        self.next
    }

    /// The next page of matching events, or `None` once the reader has reached the head.
    /// After `None`, calling again picks up events appended since.
    pub async fn next_page(&mut self) -> Result<Option<Vec<RecordedEvent>>, ReelError> {
        loop {
            let page = match self.ahead.take() {
                Some(pending) => pending.await.map_err(|e| ReelError::storage("reading ahead", e))??,
                None => self.store.read_all(self.next, &self.filter, self.page_size).await?,
            };
            let scanned = page.next > self.next;
            self.next = page.next;
            if !scanned {
                return Ok(None);
            }
            // More may follow: start reading it now.
            let (store, filter, from, size) = (self.store.clone(), self.filter.clone(), self.next, self.page_size);
            self.ahead = Some(tokio::spawn(async move { store.read_all(from, &filter, size).await }));
            if !page.events.is_empty() {
                return Ok(Some(page.events));
            }
        }
    }
}

impl Drop for AllReader {
    fn drop(&mut self) {
        if let Some(pending) = self.ahead.take() {
            pending.abort();
        }
    }
}
