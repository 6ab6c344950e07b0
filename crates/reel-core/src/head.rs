use tokio::sync::watch;

use crate::{Position, ReelError};

/// The sending side of head notifications, owned by a backend.
#[derive(Debug)]
pub struct HeadNotifier(watch::Sender<Position>);

impl HeadNotifier {
    /// A notifier starting at `head`.
    pub fn new(head: Position) -> Self {
        Self(watch::Sender::new(head))
    }

    /// Announces that the head moved to `head` (ignored when it is not past the current one).
    pub fn advance(&self, head: Position) {
        self.0.send_if_modified(|current| {
            if head > *current {
                *current = head;
                true
            } else {
                false
            }
        });
    }

    /// A new watcher.
    pub fn watch(&self) -> HeadWatch {
        HeadWatch(self.0.subscribe())
    }

    /// How many watchers are alive (a backend may skip work when nobody watches).
    pub fn watcher_count(&self) -> usize {
        self.0.receiver_count()
    }

    /// The last announced head.
    pub fn current(&self) -> Position {
        *self.0.borrow()
    }
}

/// Wakes a follower when the log's head moves (no polling).
#[derive(Clone, Debug)]
pub struct HeadWatch(watch::Receiver<Position>);

impl HeadWatch {
    /// The last head this watcher knows.
    pub fn current(&self) -> Position {
        *self.0.borrow()
    }

    /// Waits until the head is past `position` and returns the new head.
    pub async fn wait_past(&mut self, position: Position) -> Result<Position, ReelError> {
        let head = self.0.wait_for(|head| *head > position).await.map_err(|_| ReelError::Closed)?;
        Ok(*head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn wakes_when_head_passes() {
        let notifier = HeadNotifier::new(Position(3));
        let mut watch = notifier.watch();
        assert_eq!(watch.wait_past(Position(2)).await.unwrap(), Position(3));
        let waiter = tokio::spawn(async move { watch.wait_past(Position(3)).await });
        notifier.advance(Position(2));
        notifier.advance(Position(9));
        assert_eq!(waiter.await.unwrap().unwrap(), Position(9));
    }
}
