//! An [`EventStore`] that talks to a `reel serve` over HTTP, so the subscription engine,
//! repositories and the CLI (`--store http://…`) work against a remote server.
//!
//! Calls are retried with backoff when the server cannot be reached or answers 502/503/504.
//! Appends are safe to retry because every event is sent with an id (one is assigned when the
//! caller gave none), so a retried append is recognised and stored once.
//!
//! ```no_run
//! # async fn example() -> Result<(), reel_core::ReelError> {
//! use reel_core::{EventStore, ExpectedVersion, NewEvent, StreamName};
//!
//! let store = reel_client::HttpStore::connect("http://127.0.0.1:7311", Some("reel_…".into())).await?;
//! let stream = StreamName::new("unit-PL-1001")?;
//! store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("DoorOpened", r#"{"door":3}"#)]).await?;
//! # Ok(()) }
//! ```

mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reel_core::api;
use reel_core::backend::HeadNotifier;
use reel_core::wire::encode_segment;
use reel_core::{
    AllPage, AppendCondition, AppendRequest, AppendResult, Direction, EventId, EventStore, ExpectedVersion, HeadWatch,
    NewEvent, Position, Query, QueryPage, ReadAllFilter, RecordedEvent, ReelError, StoreStats, StreamInfo, StreamName,
    StreamVersion,
};
use reqwest::{Method, StatusCode};

/// How many times a call is tried when the server is unreachable or overloaded.
const ATTEMPTS: u32 = 6;

/// A remote store. Cheap to clone.
#[derive(Clone)]
pub struct HttpStore {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    head: Arc<HeadNotifier>,
    /// `None` for a client that does not follow the head.
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(follower) = &self.follower {
            follower.abort();
        }
    }
}

impl HttpStore {
    /// Connects to the server at `base` (`http://host:port`), checking that it answers and that
    /// the token (if any) is accepted.
    pub async fn connect(base: &str, token: Option<String>) -> Result<Self, ReelError> {
        let unfollowed = Self::unfollowed(base, token)?;
        let client = unfollowed.client();
        let head: api::HeadBody = client.call(Method::GET, "/head", None, None).await?;
        let notifier = Arc::new(HeadNotifier::new(Position(head.head)));
        let follower = Some(tokio::spawn(follow_head(client, notifier.clone())));
        let Inner { base, token, http, .. } = &*unfollowed.inner;
        let (base, token, http) = (base.clone(), token.clone(), http.clone());
        Ok(Self { inner: Arc::new(Inner { base, token, http, head: notifier, follower }) })
    }

    /// A client of the server at `base` that contacts nothing until it is used and does not
    /// follow the head (its `watch_head` never wakes): for reading from and appending to many
    /// servers without keeping a long poll open to each, as the platform does with units.
    pub fn unfollowed(base: &str, token: Option<String>) -> Result<Self, ReelError> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(ReelError::InvalidArgument(format!(
                "{base}: only http:// servers are supported (terminate TLS in a proxy in front of reel serve)"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| ReelError::storage("building the HTTP client", e))?;
        let head = Arc::new(HeadNotifier::new(Position(0)));
        Ok(Self { inner: Arc::new(Inner { base, token, http, head, follower: None }) })
    }

    /// Sends device `device`'s heartbeat (`POST /devices/{name}/heartbeat`): the platform keeps
    /// its presence from them.
    pub async fn heartbeat(&self, device: &str, body: &api::HeartbeatBody) -> Result<api::HeartbeatAnswer, ReelError> {
        let body = serde_json::to_vec(body).map_err(|e| ReelError::storage("encoding a heartbeat", e))?;
        let path = format!("/devices/{}/heartbeat", encode_segment(device));
        self.client().call(Method::POST, &path, Some(body.as_slice()), None).await
    }

    /// Up to `limit` events of `stream` from version `from` on, waiting up to `wait` (at most the
    /// server's maximum, 60 s by default) for the first when there are none yet: a long poll on
    /// one stream, woken by the server only when that stream grows. An empty answer means none
    /// arrived in time (also when the stream does not exist yet).
    pub async fn wait_for_stream(
        &self,
        stream: &StreamName,
        from: StreamVersion,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<RecordedEvent>, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        let path = format!(
            "/streams/{}?from={}&limit={}&wait={}",
            encode_segment(stream.as_str()),
            from.0.min(i64::MAX as u64),
            limit.min(api::MAX_PAGE),
            wait.as_secs()
        );
        match self.client().call::<api::StreamPage>(Method::GET, &path, None, Some(stream)).await {
            Ok(page) => Ok(page.events),
            Err(ReelError::StreamNotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The devices the server keeps presence of (`GET /devices`).
    pub async fn devices(&self) -> Result<api::DeviceList, ReelError> {
        self.client().call(Method::GET, "/devices", None, None).await
    }

    fn client(&self) -> Client {
        Client { base: self.inner.base.clone(), token: self.inner.token.clone(), http: self.inner.http.clone() }
    }
}

/// Long-polls `/head` so `watch_head` wakes followers without polling tightly.
async fn follow_head(client: Client, notifier: Arc<HeadNotifier>) {
    loop {
        let after = notifier.current().0;
        match client.call::<api::HeadBody>(Method::GET, &format!("/head?after={after}&wait=25"), None, None).await {
            Ok(head) => notifier.advance(Position(head.head)),
            Err(e) => {
                tracing::warn!(error = %e, "following the remote head failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[derive(Clone)]
struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// One call, retried with backoff on transport errors and 502/503/504. `stream` names the
    /// stream for errors that need it.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        stream: Option<&StreamName>,
    ) -> Result<T, ReelError> {
        let url = format!("{}{path}", self.base);
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=ATTEMPTS {
            let mut request = self.http.request(method.clone(), &url).timeout(Duration::from_secs(60));
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_vec());
            }
            let retry = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let bytes = response.bytes().await.map_err(|e| ReelError::storage(format!("reading {url}"), e))?;
                    if status.is_success() {
                        return serde_json::from_slice(&bytes)
                            .map_err(|e| ReelError::storage(format!("decoding the answer of {url}"), e));
                    }
                    let error = wire::error(status, &bytes, stream);
                    if !matches!(
                        status,
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                    ) {
                        return Err(error);
                    }
                    error
                }
                Err(e) => ReelError::storage(format!("calling {url}"), e),
            };
            if attempt == ATTEMPTS {
                return Err(retry);
            }
            tracing::debug!(%url, attempt, error = %retry, "retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        unreachable!("the last attempt returns")
    }
}

impl HttpStore {
    /// One append, with its condition when it has one.
    async fn append_request(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        condition: Option<&AppendCondition>,
    ) -> Result<AppendResult, ReelError> {
        // Every event gets an id before the first attempt, so a retry after a lost answer is
        // recognised by the server and stored once (a conditional one too: the server answers a
        // retry of a committed append with its result before it looks at the condition).
        let events: Vec<NewEvent> =
            events.into_iter().map(|e| if e.id.is_some() { e } else { e.with_id(EventId::new_v7()) }).collect();
        let body = wire::append_body(expected, &events, condition)?;
        let answer: api::AppendResponse = self
            .client()
            .call(
                Method::POST,
                &format!("/streams/{}", encode_segment(stream.as_str())),
                Some(body.as_slice()),
                Some(stream),
            )
            .await?;
        Ok(AppendResult {
            first_position: Position(answer.first_position),
            last_position: Position(answer.last_position),
            next_version: StreamVersion(answer.next_version),
        })
    }
}

#[async_trait]
impl EventStore for HttpStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, ReelError> {
        self.append_request(stream, expected, events, None).await
    }

    /// One call per request, in order (the server groups concurrent calls into one commit).
    async fn append_many(&self, requests: Vec<AppendRequest>) -> Vec<Result<AppendResult, ReelError>> {
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            let condition = request.condition.as_ref();
            results
                .push(self.append_request(&request.stream, request.expected, request.events.clone(), condition).await);
        }
        results
    }

    async fn read_query(&self, query: &Query, after: Position, limit: usize) -> Result<QueryPage, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        query.validate()?;
        let mut page = QueryPage::default();
        let mut after = after;
        let mut first = true;
        // The server pages at MAX_PAGE; larger reads take several calls, all answered up to the
        // head of the first (a later page's events past it are left for the next read).
        loop {
            let want = (limit - page.events.len()).min(api::MAX_PAGE);
            let request = api::QueryRequest { items: query.items.clone(), after: after.0, limit: Some(want) };
            let body = serde_json::to_vec(&request).map_err(|e| ReelError::storage("encoding a query", e))?;
            let answer: api::QueryPageBody = self.client().call(Method::POST, "/query", Some(&body), None).await?;
            if first {
                page.head = Position(answer.head);
                first = false;
            }
            let got = answer.events.len();
            page.events.extend(answer.events.into_iter().filter(|e| e.position <= page.head));
            if got < want || page.events.len() >= limit {
                break;
            }
            after = Position(answer.next_after);
        }
        Ok(page)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        let direction = match direction {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        };
        let mut events = Vec::new();
        let mut from = from.0.min(i64::MAX as u64);
        // The server pages at MAX_PAGE; larger reads take several calls.
        while events.len() < limit {
            let want = (limit - events.len()).min(api::MAX_PAGE);
            let path =
                format!("/streams/{}?from={from}&limit={want}&direction={direction}", encode_segment(stream.as_str()));
            let page: api::StreamPage = self.client().call(Method::GET, &path, None, Some(stream)).await?;
            let got = page.events.len();
            events.extend(page.events);
            let Some(last) = events.last() else { break };
            if got < want {
                break;
            }
            from = match direction {
                "forward" => last.stream_version.0 + 1,
                _ if last.stream_version.0 == 0 => break,
                _ => last.stream_version.0 - 1,
            };
        }
        Ok(events)
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<StreamVersion>, ReelError> {
        match self.read_stream(stream, StreamVersion(i64::MAX as u64), Direction::Backward, 1).await {
            Ok(events) => Ok(events.first().map(|e| e.stream_version)),
            Err(ReelError::StreamNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read_all(&self, from: Position, filter: &ReadAllFilter, limit: usize) -> Result<AllPage, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        let mut path = format!("/all?from={}&limit={}", from.0.max(1), limit.min(api::MAX_PAGE));
        for (name, values) in [("category", &filter.categories), ("type", &filter.event_types), ("tag", &filter.tags)] {
            if !values.is_empty() {
                path.push_str(&format!("&{name}={}", encode_segment(&values.join(","))));
            }
        }
        if let Some(prefix) = &filter.stream_prefix {
            path.push_str(&format!("&prefix={}", encode_segment(prefix)));
        }
        let page: api::AllPageBody = self.client().call(Method::GET, &path, None, None).await?;
        Ok(AllPage { events: page.events, next: Position(page.next_from) })
    }

    async fn head(&self) -> Result<Position, ReelError> {
        let head: api::HeadBody = self.client().call(Method::GET, "/head", None, None).await?;
        self.inner.head.advance(Position(head.head));
        Ok(Position(head.head))
    }

    fn watch_head(&self) -> HeadWatch {
        self.inner.head.watch()
    }

    async fn streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, ReelError> {
        reel_core::backend::check_read_limit(limit)?;
        let mut path = format!("/streams?limit={}", limit.min(api::MAX_PAGE));
        if let Some(category) = category {
            path.push_str(&format!("&category={}", encode_segment(category)));
        }
        if let Some(after) = after {
            path.push_str(&format!("&after={}", encode_segment(after.as_str())));
        }
        let list: api::StreamList = self.client().call(Method::GET, &path, None, None).await?;
        list.streams
            .into_iter()
            .map(|s| Ok(StreamInfo { stream: StreamName::new(s.stream)?, version: StreamVersion(s.version) }))
            .collect()
    }

    async fn stats(&self) -> Result<StoreStats, ReelError> {
        let stats: api::StatsBody = self.client().call(Method::GET, "/stats", None, None).await?;
        Ok(StoreStats {
            event_count: stats.event_count,
            stream_count: stats.stream_count,
            head: Position(stats.head),
            storage_bytes: stats.storage_bytes,
        })
    }
}
