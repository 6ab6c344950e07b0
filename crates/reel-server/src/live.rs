//! The live tail: one reader follows the log and broadcasts each new event to every live (SSE)
//! client, so a thousand clients cost one read of the log, not a thousand. A client first catches
//! up from the store (from `Last-Event-ID` or `from`), then switches to the broadcast; one that
//! falls more than the buffer behind is dropped with a final `dropped` event telling it where to
//! resume, instead of being buffered without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reel_core::{AllReader, EventStore, Position, ReadAllFilter, RecordedEvent};
use tokio::sync::{broadcast, Notify};

/// An event of the live tail with its JSON, encoded once for every client.
pub struct LiveEvent {
    pub event: RecordedEvent,
    pub json: String,
}

/// The shared tail of the log.
#[derive(Clone)]
pub struct LiveTail {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    waiters: Arc<StreamWaiters>,
}

/// Long polls waiting for one stream to grow (`GET /streams/{s}?wait=…`), woken by the live
/// tail when an event of their stream passes: ten thousand idle device downlinks cost one map
/// lookup per event, not a wake-up each.
#[derive(Default)]
pub struct StreamWaiters {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
}

impl StreamWaiters {
    /// What wakes waiters of `stream` (create the `notified()` future, enable it, then look
    /// at the stream once more before waiting, so nothing appended in between is missed).
    pub fn notify_of(&self, stream: &str) -> Arc<Notify> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.entry(stream.to_string()).or_default().clone()
    }

    /// Gives up waiting on `notify` for `stream`: forgets it when nobody else waits.
    pub fn done(&self, stream: &str, notify: Arc<Notify>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.get(stream).is_some_and(|n| Arc::ptr_eq(n, &notify)) && Arc::strong_count(&notify) <= 2 {
            waiting.remove(stream);
        }
    }

    fn wake(&self, stream: &str) {
        let notify = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(stream);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}

impl LiveTail {
    /// Starts following `store` from its current head; runs until `shutdown` fires.
    pub async fn start(
        store: Arc<dyn EventStore>,
        buffer: usize,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, reel_core::ReelError> {
        let (sender, _) = broadcast::channel(buffer);
        let head = store.head().await?;
        let waiters = Arc::new(StreamWaiters::default());
        let tail = Self { sender: sender.clone(), waiters: waiters.clone() };
        tokio::spawn(async move {
            let mut reader = AllReader::new(store.clone(), head.next(), ReadAllFilter::default(), 1000);
            let mut watch = store.watch_head();
            loop {
                match reader.next_page().await {
                    Ok(Some(page)) if !page.is_empty() => {
                        for event in page {
                            waiters.wake(event.stream.as_str());
                            // No receivers is fine: nobody is watching right now.
                            let json = serde_json::to_string(&event).unwrap_or_default();
                            let _ = sender.send(Arc::new(LiveEvent { event, json }));
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "live tail: reading the log failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
                let known = reader.position();
                tokio::select! {
                    _ = watch.wait_past(Position(known.0.saturating_sub(1))) => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
        Ok(tail)
    }

    /// The long polls waiting for streams.
    pub fn waiters(&self) -> &StreamWaiters {
        &self.waiters
    }

    /// A receiver of events appended from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.sender.subscribe()
    }
}
