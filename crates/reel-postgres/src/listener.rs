//! LISTEN for head notifications, with a slow fallback poll and reconnection: a dropped
//! listening connection never leaves followers asleep. The same connection announces what this
//! process's writer confirmed on disk (durable.rs), and its poll confirms appends whose writer
//! died between its commit and its barrier.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reel_core::backend::HeadNotifier;
use reel_core::Position;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::connect_client;
use crate::durable::{self, heads};
use crate::writer::{channel, Statements};

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
                    let mut statements = Statements::new();
                    // The highest durable head announced on the channel that this connection
                    // heard (its own announcements included) or read itself.
                    let mut heard = Position(0);
                    // This process's writer advances `head` after each barrier.
                    let mut confirmed_here = head.watch();
                    loop {
                        if poll {
                            match confirm_if_stalled(&client, &schema, &mut statements).await {
                                Ok(position) => {
                                    heard = heard.max(position);
                                    head.advance(position);
                                }
                                Err(_) => break,
                            }
                        }
                        tokio::select! {
                            payload = received.recv() => match payload {
                                Some(payload) => {
                                    poll = false;
                                    if let Ok(position) = payload.parse::<u64>() {
                                        heard = heard.max(Position(position));
                                        head.advance(Position(position));
                                    }
                                }
                                None => break,
                            },
                            // Announces what this process's writer confirmed, unless another
                            // announcement heard already covers it: under load many barriers
                            // share one NOTIFY, and none waits for it.
                            confirmed = confirmed_here.wait_past(heard) => match confirmed {
                                Ok(position) => {
                                    poll = false;
                                    if durable::announce(&client, &mut statements, &schema, position).await.is_err() {
                                        break;
                                    }
                                    heard = heard.max(position);
                                }
                                Err(_) => return,
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

/// The durable head, after confirming what is committed beyond it. A head row ahead of the
/// durable head after a second without notifications means a writer committed and then stopped
/// before its barrier (its process died): nobody was told, and its events stay invisible until
/// some barrier covers them, so this connection runs one.
async fn confirm_if_stalled(
    client: &tokio_postgres::Client,
    schema: &str,
    statements: &mut Statements,
) -> Result<Position, reel_core::ReelError> {
    let (committed, durable) = heads(client, schema).await?;
    if committed <= durable {
        return Ok(durable);
    }
    tracing::info!(%committed, %durable, "confirming appends a writer committed but did not confirm");
    let durable = durable::confirm(client, statements, schema).await?;
    durable::announce(client, statements, schema, durable).await?;
    Ok(durable)
}
