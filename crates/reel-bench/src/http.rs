//! `reel bench http`: the HTTP server as a separate process (`reel serve` on an embedded store),
//! loaded from this process over 127.0.0.1. The baseline, measured in the same run, is the same
//! appends made in-process on an embedded store (no HTTP).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reel_core::{EventStore, ExpectedVersion, NewEvent};
use reel_sqlite::SqliteStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{bench_stream, measure_async, payload, run_tasks, timed, timed_row, with_ratio, Row};

/// What to measure.
pub(super) struct HttpPlan {
    pub(super) connections: u64,
    pub(super) single_events: u64,
    pub(super) batches: u64,
    pub(super) event_size: usize,
    pub(super) subscribers: u64,
    pub(super) fanout_seconds: u64,
    pub(super) idle_polls: u64,
    pub(super) sweep_seconds: u64,
}

/// The `reel` binary to serve with: `REEL_BIN`, or the `reel` next to this binary (both are built
/// into the same target directory).
fn reel_binary() -> Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("REEL_BIN") {
        return Ok(path.into());
    }
    let sibling = std::env::current_exe()?.with_file_name("reel");
    anyhow::ensure!(
        sibling.exists(),
        "no reel binary next to reel-bench; build it (cargo build --release) or set REEL_BIN"
    );
    Ok(sibling)
}

/// A `reel serve` child process, killed when dropped.
pub(super) struct ServerProcess {
    child: std::process::Child,
    pub(super) base: String,
    address: String,
    store: std::path::PathBuf,
    live_buffer: usize,
}

impl ServerProcess {
    pub(super) fn start(store: &std::path::Path) -> Result<Self> {
        Self::start_at(store, "127.0.0.1:0", 100_000)
    }

    /// With `reel serve`'s defaults (a live buffer of 10,000 events), as an operator runs it.
    pub(super) fn start_default(store: &std::path::Path) -> Result<Self> {
        Self::start_at(store, "127.0.0.1:0", 10_000)
    }

    /// Kills it (SIGKILL: nothing is flushed or released).
    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address and store.
    pub(super) fn restart(&mut self) -> Result<()> {
        self.kill();
        // The port may take a moment to be free again.
        let started = std::time::Instant::now();
        loop {
            match Self::start_at(&self.store, &self.address, self.live_buffer) {
                Ok(again) => {
                    *self = again;
                    return Ok(());
                }
                Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    eprintln!("restarting the server: {e:#}; trying again");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// CPU time the server has used (user and system), in seconds.
    pub(super) fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Files (sockets included) the server has open.
    pub(super) fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |dir| dir.count())
    }

    fn start_at(store: &std::path::Path, listen: &str, live_buffer: usize) -> Result<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(reel_binary()?)
            .args(["serve", "--listen", listen, "--live-buffer", &live_buffer.to_string()])
            .env("REEL_STORE", store)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("starting reel serve")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
        let started: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("server said {line:?}"))?;
        let base = started["listening"].as_str().context("no address")?.to_string();
        let address = base.trim_start_matches("http://").to_string();
        Ok(Self { child, base, address, store: store.to_path_buf(), live_buffer })
    }

    /// Resident memory of the server, in MiB.
    pub(super) fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_client() -> Result<reqwest::Client> {
    // One connection per client: each task below keeps its own.
    Ok(reqwest::Client::builder().pool_max_idle_per_host(1).tcp_nodelay(true).build()?)
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> Result<(), reel_core::ReelError> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| reel_core::ReelError::storage("posting", e))?;
    if response.status() != 201 {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(reel_core::ReelError::storage("posting", format!("{status}: {text}")));
    }
    Ok(())
}

pub(super) async fn bench_http(dir: &std::path::Path, plan: &HttpPlan) -> Result<(Vec<Row>, serde_json::Value)> {
    let data = String::from_utf8(payload(plan.event_size))?;
    let mut rows = Vec::new();
    let per_task = (plan.single_events / plan.connections).max(1);
    let total = per_task * plan.connections;

    // Baseline: the same single appends in-process, no HTTP.
    let local = SqliteStore::open(dir.join("baseline.db"))?;
    let baseline = measure_async(
        format!("baseline: {} in-process tasks, single-event appends (no HTTP)", plan.connections),
        total,
        async {
            run_tasks(plan.connections, |t| {
                let (store, data) = (local.clone(), data.clone());
                async move {
                    for _ in 0..per_task {
                        store
                            .append(&bench_stream(t), ExpectedVersion::Any, vec![NewEvent::new("Bench", data.clone())])
                            .await?;
                    }
                    Ok(())
                }
            })
            .await
        },
    )
    .await?;
    let baseline_rate = baseline.events_per_sec;
    rows.push(baseline);
    drop(local);

    let server = ServerProcess::start(&dir.join("http.db"))?;
    let row =
        measure_async(format!("HTTP: single-event appends over {} connections", plan.connections), total, async {
            run_tasks(plan.connections, |t| {
                let (address, data) = (server.address.clone(), data.clone());
                async move {
                    let mut connection = Connection::open(&address).await?;
                    let body = format!(r#"{{"type":"Bench","data":{data}}}"#);
                    for _ in 0..per_task {
                        connection.post(&format!("/streams/bench-{t}"), &body).await?;
                    }
                    Ok(())
                }
            })
            .await
        })
        .await?;
    rows.push(with_ratio(row, baseline_rate));

    let sweep = if plan.sweep_seconds > 0 {
        latency_sweep(dir, &server.address, &data, plan.sweep_seconds, &mut rows).await?
    } else {
        vec![]
    };

    let batch_body =
        Arc::new(format!(r#"{{"events":[{}]}}"#, vec![format!(r#"{{"type":"Bench","data":{data}}}"#); 100].join(",")));
    let batches = plan.batches;
    let row = measure_async(
        format!("HTTP: batches of 100 events, 16 connections ({batches} batches)"),
        batches * 100,
        async {
            run_tasks(16, |t| {
                let (address, body) = (server.address.clone(), batch_body.clone());
                async move {
                    let mut connection = Connection::open(&address).await?;
                    for i in (t..batches).step_by(16) {
                        connection.post(&format!("/streams/bench-{}", 1000 + i % 100), &body).await?;
                    }
                    Ok(())
                }
            })
            .await
        },
    )
    .await?;
    rows.push(with_ratio(row, baseline_rate));

    let (p50, p99, delivered, expected) = sse_fanout(&server, plan).await?;
    println!(
        "SSE fan-out: {} subscribers, 1,000 events/s for {} s: p50 {p50:.1} ms, p99 {p99:.1} ms ({delivered} of {expected} deliveries)",
        plan.subscribers, plan.fanout_seconds
    );
    let (idle_mib, rss_before, rss_after, answered) = idle_long_polls(&server, plan).await?;
    println!(
        "{} idle long polls: server memory {rss_before:.0} → {rss_after:.0} MiB (+{idle_mib:.0} MiB, {:.1} KiB each); {answered} answered when an event arrived",
        plan.idle_polls,
        idle_mib * 1024.0 / plan.idle_polls.max(1) as f64
    );
    Ok((
        rows,
        serde_json::json!({
            "sse_subscribers": plan.subscribers,
            "sse_seconds": plan.fanout_seconds,
            "sse_p50_ms": p50,
            "sse_p99_ms": p99,
            "sse_delivered": delivered,
            "sse_expected": expected,
            "idle_polls": plan.idle_polls,
            "idle_server_rss_before_mib": rss_before,
            "idle_server_rss_after_mib": rss_after,
            "idle_polls_answered": answered,
            "latency_sweep": sweep,
        }),
    ))
}

/// A keep-alive HTTP/1.1 connection that posts JSON and reads each answer: as little client work
/// as possible, so the figures are the server's (a client library costs several times more CPU,
/// and the two share this machine's cores).
/// Single-event appends for a fixed time at 1, 16 and 64 writers, each call timed: in-process
/// (the baseline, a store of its own) and over HTTP (each writer on a keep-alive connection).
async fn latency_sweep(
    dir: &std::path::Path,
    address: &str,
    data: &str,
    seconds: u64,
    rows: &mut Vec<Row>,
) -> Result<Vec<serde_json::Value>> {
    let mut points = Vec::new();
    for writers in [1u64, 16, 64] {
        let local = Arc::new(SqliteStore::open(dir.join(format!("sweep-{writers}.db")))?);
        let event = Arc::new(data.to_string());
        let baseline = timed(writers, seconds, move |w, _| {
            let (store, data) = (local.clone(), event.clone());
            async move {
                let events = vec![NewEvent::new("Bench", data.as_bytes().to_vec())];
                store.append(&bench_stream(w), ExpectedVersion::Any, events).await.map(|_| ())
            }
        })
        .await?;
        rows.push(timed_row(
            format!("baseline: {writers} in-process writer(s), single appends, {seconds} s"),
            &baseline,
            None,
        ));
        let mut connections = Vec::new();
        for _ in 0..writers {
            connections.push(tokio::sync::Mutex::new(Connection::open(address).await?));
        }
        let (connections, body) = (Arc::new(connections), Arc::new(format!(r#"{{"type":"Bench","data":{data}}}"#)));
        let over_http =
            timed(writers, seconds, move |w, _| {
                let (connections, body) = (connections.clone(), body.clone());
                async move {
                    connections[w as usize].lock().await.post(&format!("/streams/sweep{writers}-{w}"), &body).await
                }
            })
            .await?;
        let baseline_rate = baseline.events as f64 / baseline.elapsed.as_secs_f64();
        rows.push(timed_row(
            format!("HTTP: {writers} connection(s), single appends, {seconds} s"),
            &over_http,
            Some((baseline_rate, "in-process")),
        ));
        for (what, t) in [("in-process", &baseline), ("http", &over_http)] {
            points.push(serde_json::json!({
                "what": what, "writers": writers, "events_per_sec": t.events as f64 / t.elapsed.as_secs_f64(),
                "p50_ms": t.quantile_ms(0.5), "p95_ms": t.quantile_ms(0.95), "p99_ms": t.quantile_ms(0.99),
                "p999_ms": t.quantile_ms(0.999),
            }));
        }
    }
    Ok(points)
}

struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    async fn open(address: &str) -> Result<Self, reel_core::ReelError> {
        let socket = TcpStream::connect(address).await.map_err(|e| reel_core::ReelError::storage("connecting", e))?;
        let _ = socket.set_nodelay(true);
        Ok(Self { stream: BufReader::new(socket) })
    }

    /// Posts `body` to `path`; anything but 201 is an error.
    async fn post(&mut self, path: &str, body: &str) -> Result<(), reel_core::ReelError> {
        let fail = |e: std::io::Error| reel_core::ReelError::storage("posting", e);
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await.map_err(fail)?;
        let mut status = String::new();
        self.stream.read_line(&mut status).await.map_err(fail)?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.map_err(fail)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut answer = vec![0u8; length];
        self.stream.read_exact(&mut answer).await.map_err(fail)?;
        if !status.starts_with("HTTP/1.1 201") {
            return Err(reel_core::ReelError::storage(
                "posting",
                format!("{}: {}", status.trim(), String::from_utf8_lossy(&answer)),
            ));
        }
        Ok(())
    }
}

/// Opens an HTTP/1.0 request (the answer then ends with the connection, unchunked).
async fn open(address: &str, path: &str) -> Result<TcpStream> {
    let mut socket = TcpStream::connect(address).await?;
    socket.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes()).await?;
    Ok(socket)
}

/// Subscribers on `/all/live`; a generator appends at 1,000 events/s, each event carrying the
/// microsecond it was sent; latency is its arrival at each subscriber minus that.
async fn sse_fanout(server: &ServerProcess, plan: &HttpPlan) -> Result<(f64, f64, u64, u64)> {
    let base = Instant::now();
    let count = plan.fanout_seconds * 1000;
    let mut subscribers = Vec::new();
    for _ in 0..plan.subscribers {
        let socket = open(&server.address, "/all/live").await?;
        subscribers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(socket).lines();
            let mut latencies: Vec<u32> = Vec::with_capacity(count as usize);
            while latencies.len() < count as usize {
                let next = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
                let Ok(Ok(Some(line))) = next else { break };
                if let Some(at) = line.find("{\"t\":") {
                    let rest = &line[at + 5..];
                    let sent: u64 = rest[..rest.find('}').unwrap_or(rest.len())].parse().unwrap_or(0);
                    let now = base.elapsed().as_micros() as u64;
                    latencies.push(now.saturating_sub(sent) as u32);
                }
            }
            latencies
        }));
    }
    // Let every subscriber reach the live tail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client = http_client()?;
    let url = format!("{}/streams/fanout-1", server.base);
    let started = Instant::now();
    for i in 0..count {
        if let Some(wait) = (started + Duration::from_millis(i)).checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let body = format!(r#"{{"type":"Tick","data":{{"t":{}}}}}"#, base.elapsed().as_micros());
        post(&client, &url, body).await?;
    }
    let mut all: Vec<u32> = Vec::new();
    for subscriber in subscribers {
        all.extend(subscriber.await?);
    }
    if all.is_empty() {
        bail!("no subscriber received anything");
    }
    let delivered = all.len() as u64;
    all.sort_unstable();
    let quantile = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Ok((quantile(0.5), quantile(0.99), delivered, count * plan.subscribers))
}

/// Idle long polls: memory they cost the server, and that they all answer on the next append.
async fn idle_long_polls(server: &ServerProcess, plan: &HttpPlan) -> Result<(f64, f64, f64, u64)> {
    let head: serde_json::Value = reqwest::get(format!("{}/head", server.base)).await?.json().await?;
    let from = head["head"].as_u64().unwrap_or(0) + 1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_mib();
    let mut polls = Vec::with_capacity(plan.idle_polls as usize);
    for _ in 0..plan.idle_polls {
        polls.push(open(&server.address, &format!("/all?from={from}&wait=60")).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_mib();
    post(&http_client()?, &format!("{}/streams/wake-1", server.base), r#"{"type":"Wake","data":{}}"#.into()).await?;
    let mut answered = 0;
    let readers: Vec<_> = polls
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let mut answer = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer)).await;
                read.is_ok() && (answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"))
            })
        })
        .collect();
    for reader in readers {
        if reader.await? {
            answered += 1;
        }
    }
    Ok((after - before, before, after, answered))
}
