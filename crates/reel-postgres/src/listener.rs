//! LISTEN for head notifications, with a slow fallback poll and reconnection: a dropped
//! listening connection never leaves followers asleep. The same connection announces what this
//! process's writer confirmed on disk (durable.rs) while another server listens on the schema,
//! and its poll confirms appends whose writer died between its commit and its barrier.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Quiet time between announcements on a schema's channel under load, per listening process.
/// Every announcement is delivered to every listener of the schema, so its cost grows with
/// their number: without a quiet interval every barrier of every process sent a NOTIFY, which
/// across 16 processes cost about a third of the append throughput (docs/BENCHMARKS.md). With
/// it, the deliveries per second stay about the same however many processes listen, and an
/// append after a quiet interval is announced at once.
const QUIET_PER_LISTENER: Duration = Duration::from_micros(250);

/// How often the listeners of the schema are counted again. A count can include a process that
/// is just going away (its backend ends a moment after it), so it is not kept for long.
const COUNT_LISTENERS_EVERY: Duration = Duration::from_secs(1);

/// How often they are counted while this connection is the only one. Nothing is announced then
/// (nobody else would hear it), so a process that starts listening hears another's appends at
/// most about this late, once (or at its fallback poll, when that process stops appending right
/// after a count); its own first read of the head covers what came before.
const COUNT_ALONE_EVERY: Duration = Duration::from_millis(100);

/// The quiet interval for `listeners` processes, plus up to as much again at random, so that
/// processes waiting for the same interval to end do not all announce at once.
fn quiet_interval(listeners: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let quiet = QUIET_PER_LISTENER * listeners.max(1);
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    quiet + Duration::from_nanos(random % quiet.as_nanos() as u64)
}

/// How many connections listen on the schema's channel (one per store), by application name.
async fn count_listeners(
    client: &tokio_postgres::Client,
    application_name: &str,
) -> Result<u32, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = left($1, 63)", &[&application_name])
        .await?;
    Ok(row.get::<_, i64>(0) as u32)
}

/// The highest durable head announced on the channel that this connection heard (its own
/// announcements included), and when an announcement was last heard or sent.
struct Heard {
    position: Position,
    at: Instant,
}

impl Heard {
    /// An announcement received on the channel: followers of this process learn the new head.
    fn hear(&mut self, payload: &str, head: &HeadNotifier) {
        if let Ok(position) = payload.parse::<u64>() {
            self.position = self.position.max(Position(position));
            self.at = Instant::now();
            head.advance(Position(position));
        }
    }

    /// An announcement this connection sent.
    fn announced(&mut self, position: Position) {
        self.position = self.position.max(position);
        self.at = Instant::now();
    }
}

/// Runs until aborted.
pub async fn run(url: String, schema: String, head: Arc<HeadNotifier>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let application_name = format!("reel-listen-{schema}");
        match connect_client(&url, &application_name).await {
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
                    let mut heard = Heard { position: Position(0), at: Instant::now() };
                    let mut listeners = 1;
                    let mut listeners_counted_at: Option<Instant> = None;
                    // What this process confirmed while it listened alone, not announced.
                    let mut kept_alone = Position(0);
                    // This process's writer advances `head` after each barrier.
                    let mut confirmed_here = head.watch();
                    loop {
                        if poll {
                            match confirm_if_stalled(&client, &schema, &mut statements).await {
                                // Not counted as heard: what this process confirmed before its
                                // listener was ready must still be announced to the others.
                                Ok(position) => head.advance(position),
                                Err(_) => break,
                            }
                        }
                        tokio::select! {
                            payload = received.recv() => match payload {
                                Some(payload) => {
                                    poll = false;
                                    heard.hear(&payload, &head);
                                }
                                None => break,
                            },
                            // Announces what this process's writer confirmed, unless an
                            // announcement heard meanwhile covers it. Under load, announcements
                            // are coalesced: after any announcement on the channel (from any
                            // process) the next one waits out a short quiet interval, so
                            // barriers of every process share one NOTIFY, which each listener
                            // of the schema has to receive and the database to deliver.
                            confirmed = confirmed_here.wait_past(heard.position.max(kept_alone)) => match confirmed {
                                Ok(_) => {
                                    poll = false;
                                    let count_every = if listeners == 1 { COUNT_ALONE_EVERY } else { COUNT_LISTENERS_EVERY };
                                    if !matches!(listeners_counted_at, Some(at) if at.elapsed() < count_every) {
                                        match count_listeners(&client, &application_name).await {
                                            Ok(count) => listeners = count,
                                            Err(_) => break,
                                        }
                                        listeners_counted_at = Some(Instant::now());
                                    }
                                    // Exactly one: nobody else listens on the schema. This
                                    // process's followers learnt the head from its writer, and
                                    // the announcement would only come back here (with one
                                    // writer it was a NOTIFY transaction every other append).
                                    // A count of 0 did not even find this connection (a pooler
                                    // renamed it): then announce as if others listened.
                                    if listeners == 1 {
                                        kept_alone = confirmed_here.current();
                                        continue;
                                    }
                                    let quiet_until = heard.at + quiet_interval(listeners);
                                    if Instant::now() < quiet_until {
                                        tokio::time::sleep_until(quiet_until.into()).await;
                                    }
                                    while let Ok(payload) = received.try_recv() {
                                        heard.hear(&payload, &head);
                                    }
                                    let position = confirmed_here.current();
                                    if position > heard.position {
                                        if durable::announce(&client, &mut statements, &schema, position).await.is_err() {
                                            break;
                                        }
                                        heard.announced(position);
                                    }
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
