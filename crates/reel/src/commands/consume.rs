//! `reel consume`: run a subscription whose handler is a command (any language) or stdout.
//!
//! It is an ordinary subscription of the engine: same lifecycle, retry, leases (a second
//! `reel consume` with the same id stands by and takes over when the first dies) and operator
//! commands (`reel subscriptions pause|reactivate|reset` from another terminal).

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use clap::Args;
use reel_core::{
    Position, RecordedEvent, RunMode, SubscriptionCriteria, SubscriptionId, SubscriptionStatus, Timestamp,
};
use reel_subscriptions::{
    BatchFailure, ClockBasedRetryStrategy, HandlerError, Message, ResetTo, Subscriber, SubscriberSpec,
    SubscriptionEngine, Worker, WorkerOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::read::shutdown_signal;
use crate::exit::InvalidInput;
use crate::{store, Cli};

/// What every command that runs one subscription takes: `reel consume`, `reel relay …`.
#[derive(Args, Clone, Debug)]
pub struct SubscriberArgs {
    /// Subscription id (letters, digits, _ - . :); its position is kept in the store.
    pub id: String,
    /// from-beginning, from-now or once (once: exit after reaching the head).
    #[arg(long, default_value = "from-beginning")]
    pub mode: String,
    /// Only these event types (comma-separated or repeated).
    #[arg(long = "types", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only streams of this category (repeatable).
    #[arg(long)]
    pub category: Vec<String>,
    /// Only events carrying this tag (repeatable: all of them).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Events per batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Seconds a lease lasts; a dead consumer's subscription is taken over after it.
    #[arg(long, default_value_t = 10.0)]
    pub lease_ttl: f64,
    /// Split the subscription into 16, 256 or 4096 partitions by stream (per-stream order kept);
    /// several consumers share the partitions through their leases.
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Run only this partition (0-based; needs --partitions).
    #[arg(long, requires = "partitions")]
    pub partition: Option<u32>,
    /// Retries of a failed batch before it stays failed (or is parked).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Seconds before the first retry; each further retry waits twice as long.
    #[arg(long, default_value_t = 5.0)]
    pub retry_delay: f64,
    /// After the retries, park an event that keeps failing (see `reel subscriptions parked`) and go on.
    #[arg(long)]
    pub park_failures: bool,
    /// Hand the parked events to the handler again before following the log.
    #[arg(long)]
    pub replay_parked: bool,
    /// A new subscription starts at the event at this position instead (an existing one keeps
    /// its position; move it with `reel subscriptions reset`).
    #[arg(long, conflicts_with = "start_time")]
    pub start_position: Option<u64>,
    /// A new subscription starts at the first event recorded at or after this RFC 3339 time.
    #[arg(long)]
    pub start_time: Option<String>,
}

impl SubscriberArgs {
    /// Checks every flag without opening anything, so a command can refuse bad input before it
    /// connects to a broker.
    pub fn check(&self) -> Result<()> {
        self.mode.parse::<RunMode>()?;
        SubscriptionId::new(self.id.clone())?;
        seconds(self.lease_ttl, "--lease-ttl")?;
        seconds(self.retry_delay, "--retry-delay")?;
        if let Some(count) = self.partitions {
            partition_digits(count)?;
            if let Some(p) = self.partition.filter(|p| *p >= count) {
                bail!(InvalidInput(format!("--partition must be below {count}, got {p}")));
            }
        }
        self.start()?;
        Ok(())
    }

    /// Where a new subscription starts when `--start-position` or `--start-time` says so.
    fn start(&self) -> Result<Option<ResetTo>> {
        Ok(match (&self.start_position, &self.start_time) {
            (Some(position), _) => Some(ResetTo::Position(Position(*position))),
            (None, Some(time)) => Some(ResetTo::Time(Timestamp::parse_rfc3339(time).ok_or_else(|| {
                anyhow::anyhow!(InvalidInput(format!(
                    "--start-time {time:?} is not an RFC 3339 time such as 2026-12-01T10:00:00Z"
                )))
            })?)),
            (None, None) => None,
        })
    }
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub subscriber: SubscriberArgs,
    /// Group, for operating several subscriptions together.
    #[arg(long, default_value = "consume")]
    pub group: String,
    /// Seconds a command may run per batch before it is killed (a failed batch).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Write each batch to stdout as NDJSON; the position is saved after each written batch.
    #[arg(long, conflicts_with_all = ["command", "webhook"])]
    pub print: bool,
    /// POST each batch as JSON (`{"subscription", "events": [...]}`) to this http:// URL; a 2xx
    /// answer means handled.
    #[arg(long, conflicts_with = "command")]
    pub webhook: Option<String>,
    /// The command to run per batch, events as NDJSON on its stdin; exit 0 means handled.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn run(cli: &Cli, args: &ConsumeArgs) -> Result<()> {
    if !args.print && args.webhook.is_none() && args.command.is_empty() {
        bail!(InvalidInput(
            "give --print, --webhook URL or a command after --, e.g. reel consume my_sub -- ./handle.sh".into()
        ));
    }
    if let Some(url) = &args.webhook {
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            bail!(InvalidInput(format!(
                "--webhook must be an http:// URL (https is not supported by this build), got {url:?}"
            )));
        }
    }
    let timeout = seconds(args.timeout, "--timeout")?;
    let subscriber = |spec| -> Result<Arc<dyn Subscriber>> {
        Ok(if args.print {
            SinkSubscriber::shared(spec, PrintSink)
        } else if let Some(url) = &args.webhook {
            SinkSubscriber::shared(spec, WebhookSink::new(url.clone(), timeout).map_err(|e| anyhow::anyhow!(e))?)
        } else {
            SinkSubscriber::shared(spec, CommandSink { command: args.command.clone(), timeout })
        })
    };
    run_subscription(cli, &args.subscriber, &args.group, subscriber).await
}

/// A duration flag in seconds, refused outside (0, 1 day).
pub fn seconds(value: f64, flag: &str) -> Result<Duration> {
    if value.is_finite() && value > 0.0 && value < 86_400.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(anyhow::anyhow!(InvalidInput(format!("{flag} must be between 0 and 86400 seconds"))))
    }
}

/// Runs one subscription (or its partitions) in a worker until SIGINT/SIGTERM, or until it is
/// finished in `once` mode. `subscriber` makes the handler for the spec built from the flags.
pub async fn run_subscription(
    cli: &Cli,
    args: &SubscriberArgs,
    group: &str,
    subscriber: impl FnOnce(SubscriberSpec) -> Result<Arc<dyn Subscriber>>,
) -> Result<()> {
    // Installed before anything starts, so an early SIGTERM still stops gracefully.
    let signal = shutdown_signal();
    let stores = store::open_with_subscriptions(cli).await?;
    let run = PreparedSubscription::new(&stores, args, group, subscriber).await?;
    run_all(vec![run], signal).await
}

/// One subscription ready to run: its own engine (batch size and retry strategy are per
/// engine), the ids its worker takes (one, or one per partition) and its run mode.
pub struct PreparedSubscription {
    id: SubscriptionId,
    engine: SubscriptionEngine,
    options: WorkerOptions,
    run_ids: Vec<SubscriptionId>,
    mode: RunMode,
    subscriptions: Arc<dyn reel_core::SubscriptionStore>,
}

impl PreparedSubscription {
    /// Builds the engine for the spec the flags describe and applies the start flags and
    /// `--replay-parked`, all before the worker starts.
    pub async fn new(
        stores: &store::Stores,
        args: &SubscriberArgs,
        group: &str,
        subscriber: impl FnOnce(SubscriberSpec) -> Result<Arc<dyn Subscriber>>,
    ) -> Result<Self> {
        let mode: RunMode = args.mode.parse()?;
        let id = SubscriptionId::new(args.id.clone())?;
        let lease_ttl = seconds(args.lease_ttl, "--lease-ttl")?;
        let retry = ClockBasedRetryStrategy {
            base_delay: seconds(args.retry_delay, "--retry-delay")?,
            delay_factor: 2.0,
            max_attempts: args.retries,
            ..ClockBasedRetryStrategy::default()
        };
        let mut spec = SubscriberSpec::new(id.as_str(), mode)?
            .in_group(group)
            .in_categories(args.category.clone())
            .with_tags(args.tag.clone());
        spec.check()?;
        if !args.types.is_empty() {
            spec = spec.handling(args.types.clone());
        }
        if args.park_failures {
            spec = spec.park_failures();
        }
        let mut run_ids = vec![id.clone()];
        if let Some(count) = args.partitions {
            let digits = partition_digits(count)?;
            spec = spec.partitioned(digits)?;
            run_ids = match args.partition {
                Some(p) if p < count => {
                    vec![SubscriptionId::new(format!("{id}:{p:0width$x}", width = digits as usize))?]
                }
                Some(p) => bail!(InvalidInput(format!("--partition must be below {count}, got {p}"))),
                None => (0..count)
                    .map(|p| SubscriptionId::new(format!("{id}:{p:0width$x}", width = digits as usize)))
                    .collect::<Result<_, _>>()?,
            };
        }
        let start = args.start()?;
        let subscriber = subscriber(spec)?;
        let engine = SubscriptionEngine::new(stores.events.clone(), stores.subscriptions.clone(), vec![subscriber])?
            .with_batch_size(args.batch.clamp(1, reel_sqlite::MAX_READ_LIMIT))
            .with_retry_strategy(retry);
        if let Some(start) = start {
            let criteria = SubscriptionCriteria::ids(run_ids.clone());
            let existing = stores.subscriptions.find(&criteria).await?;
            if existing.is_empty() {
                engine.setup(&criteria, true).await?;
                engine.pause(&criteria).await?;
                engine.reset(&criteria, start).await?;
                engine.reactivate(&criteria).await?;
            } else {
                eprintln!(
                    "{id} exists already (at position {}): the start flags apply to a new subscription only; \
                     move it with `reel subscriptions reset`",
                    existing[0].position
                );
            }
        }
        if args.replay_parked {
            let report = engine.replay_parked(&SubscriptionCriteria::ids(run_ids.clone())).await?;
            eprintln!("{id}: replayed {} parked event(s); {} still failing", report.handled, report.errors.len());
        }
        let options = WorkerOptions {
            criteria: SubscriptionCriteria::ids(run_ids.clone()),
            lease_ttl,
            ..WorkerOptions::default()
        };
        Ok(Self { id, engine, options, run_ids, mode, subscriptions: stores.subscriptions.clone() })
    }

    /// The subscription's id (its partitions are `ID:0` …).
    pub fn id(&self) -> &SubscriptionId {
        &self.id
    }

    /// Runs the worker until `stop` resolves or, in `once` mode, every part is finished.
    async fn run(self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        let Self { engine, options, run_ids, mode, subscriptions, .. } = self;
        let finished = async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(found) = subscriptions.find(&SubscriptionCriteria::ids(run_ids.clone())).await {
                    if found.len() == run_ids.len() && found.iter().all(|s| s.status == SubscriptionStatus::Finished) {
                        return;
                    }
                }
            }
        };
        let stop = async move {
            tokio::select! {
                _ = stop => {}
                _ = finished, if mode == RunMode::Once => {}
            }
        };
        Worker::new(engine, options).run(stop).await?;
        Ok(())
    }
}

/// Runs several subscriptions side by side until `signal` resolves (each `once` subscription
/// stops by itself when finished). The first that fails stops the others and its error is
/// returned, so a supervisor restarts the whole set rather than running it half.
pub async fn run_all(runs: Vec<PreparedSubscription>, signal: impl std::future::Future<Output = ()>) -> Result<()> {
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for run in runs {
        let mut stop = stop.clone();
        workers.spawn(run.run(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }));
    }
    tokio::pin!(signal);
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            _ = &mut signal, if !*stop_sender.borrow() => { let _ = stop_sender.send(true); }
            done = workers.join_next() => match done {
                None => return outcome,
                Some(result) => {
                    let result = result.map_err(anyhow::Error::from).and_then(|r| r);
                    if let Err(e) = result {
                        let _ = stop_sender.send(true);
                        if outcome.is_ok() {
                            outcome = Err(e);
                        }
                    }
                }
            },
        }
    }
}

/// The hex digits of a partition suffix for `--partitions count`.
fn partition_digits(count: u32) -> Result<u8> {
    match count {
        16 => Ok(1),
        256 => Ok(2),
        4096 => Ok(3),
        _ => bail!(InvalidInput(format!("--partitions must be 16, 256 or 4096, got {count}"))),
    }
}

/// Where `reel consume` delivers whole batches; a failure fails the whole batch.
#[async_trait]
trait BatchSink: Send + Sync + 'static {
    async fn deliver(&self, subscription: &SubscriptionId, batch: &[RecordedEvent]) -> Result<(), String>;
}

/// A subscriber that hands whole batches to a sink.
struct SinkSubscriber<S> {
    spec: SubscriberSpec,
    sink: S,
}

impl<S: BatchSink> SinkSubscriber<S> {
    fn shared(spec: SubscriberSpec, sink: S) -> Arc<dyn Subscriber> {
        Arc::new(Self { spec, sink })
    }
}

#[async_trait]
impl<S: BatchSink> Subscriber for SinkSubscriber<S> {
    fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    async fn handle(&self, message: &Message<'_>) -> Result<(), HandlerError> {
        Ok(self.sink.deliver(&self.spec.id, std::slice::from_ref(message.record())).await?)
    }

    async fn handle_batch(&self, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        self.sink
            .deliver(&self.spec.id, batch)
            .await
            .map_err(|message| BatchFailure { index: 0, error: message.into() })
    }
}

/// Writes batches to stdout.
struct PrintSink;

#[async_trait]
impl BatchSink for PrintSink {
    async fn deliver(&self, _: &SubscriptionId, batch: &[RecordedEvent]) -> Result<(), String> {
        let mut out = std::io::stdout().lock();
        let written = batch.iter().try_for_each(|event| {
            serde_json::to_writer(&mut out, event)?;
            out.write_all(b"\n")
        });
        written.and_then(|_| out.flush()).map_err(|e| format!("writing to stdout: {e}"))
    }
}

/// Runs a command per batch with the events as NDJSON on its stdin.
struct CommandSink {
    command: Vec<String>,
    timeout: Duration,
}

#[async_trait]
impl BatchSink for CommandSink {
    async fn deliver(&self, _: &SubscriptionId, batch: &[RecordedEvent]) -> Result<(), String> {
        let mut input = Vec::with_capacity(batch.len() * 512);
        for event in batch {
            serde_json::to_writer(&mut input, event).map_err(|e| e.to_string())?;
            input.push(b'\n');
        }
        let mut child = tokio::process::Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.command[0]))?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let run = async {
            // A command that does not read its input is not an error by itself; its exit code decides.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
            let mut errors = Vec::new();
            let _ = stderr.read_to_end(&mut errors).await;
            (child.wait().await, errors)
        };
        let (status, errors) = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| format!("command timed out after {:?} and was killed", self.timeout))?;
        let errors = String::from_utf8_lossy(&errors);
        if !errors.is_empty() {
            eprint!("{errors}");
        }
        let status = status.map_err(|e| format!("waiting for the command: {e}"))?;
        if status.success() {
            return Ok(());
        }
        let last_line = errors.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        let how = status.code().map_or_else(|| "was killed by a signal".to_string(), |c| format!("exited with {c}"));
        Err(if last_line.is_empty() { format!("command {how}") } else { format!("command {how}: {last_line}") })
    }
}

/// POSTs batches to an HTTP endpoint over one pooled connection.
struct WebhookSink {
    url: String,
    client: reqwest::Client,
}

impl WebhookSink {
    fn new(url: String, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot set up the webhook client: {e}"))?;
        Ok(Self { url, client })
    }
}

#[async_trait]
impl BatchSink for WebhookSink {
    async fn deliver(&self, subscription: &SubscriptionId, batch: &[RecordedEvent]) -> Result<(), String> {
        let body = serde_json::to_vec(&serde_json::json!({ "subscription": subscription, "events": batch }))
            .map_err(|e| e.to_string())?;
        let sent = self.client.post(&self.url).header("Content-Type", "application/json").body(body).send().await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Err(format!("webhook did not answer in time: {e}")),
            Err(e) => return Err(format!("webhook unreachable: {e}")),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.lines().next().unwrap_or("").chars().take(200).collect();
        Err(format!("webhook answered {}: {text}", status.as_u16()))
    }
}
