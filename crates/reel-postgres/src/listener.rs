//! LISTEN for head notifications, with a slow fallback poll and reconnection: a dropped
//! listening connection never leaves followers asleep.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reel_core::backend::HeadNotifier;
use reel_core::Position;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::{connect_client, reader, writer::channel};

/// How often the head is read even without notifications.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// Runs until aborted.
pub async fn run(url: String, schema: String, head: Arc<HeadNotifier>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect_client(&url, &format!("reel-listen-{schema}")).await {
            Ok((client, mut connection)) => {
                // A task drives the connection and forwards notifications; it ends with the connection.
                let (notifications, mut received) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if notifications.send(n.payload().to_string()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                                return;
                            }
                        }
                    }
                });
                if client.batch_execute(&format!("LISTEN {}", channel(&schema))).await.is_ok() {
                    backoff = Duration::from_millis(100);
                    // Catch up with anything appended while not listening, then follow.
                    let mut poll = true;
                    loop {
                        if poll {
                            match reader::head(&client, &schema).await {
                                Ok(position) => head.advance(position),
                                Err(_) => break,
                            }
                        }
                        tokio::select! {
                            payload = received.recv() => match payload {
                                Some(payload) => {
                                    poll = false;
                                    if let Ok(position) = payload.parse::<u64>() {
                                        head.advance(Position(position));
                                    }
                                }
                                None => break,
                            },
                            _ = tokio::time::sleep(FALLBACK_POLL) => poll = true,
                        }
                    }
                }
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect the LISTEN connection; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
