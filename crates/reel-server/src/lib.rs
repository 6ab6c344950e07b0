//! Reel's HTTP server: the JSON API, live streams (SSE), tokens and scopes, Prometheus metrics,
//! the OpenAPI document and the dashboard, over any [`EventStore`](reel_core::EventStore).
//!
//! ```no_run
//! # async fn example(stores: (std::sync::Arc<dyn reel_core::EventStore>, std::sync::Arc<dyn reel_core::SubscriptionStore>)) -> Result<(), reel_core::ReelError> {
//! use reel_server::{Server, ServerConfig};
//!
//! let engine = reel_subscriptions::SubscriptionEngine::new(stores.0.clone(), stores.1, Vec::new())?;
//! let server = Server::start(stores.0, engine, ServerConfig::default()).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run(std::future::pending()).await
//! # }
//! ```

mod api;
mod config;
mod dashboard;
mod error;
mod live;
mod metrics;
mod openapi;
mod presence;
pub mod scopes;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use reel_core::{EventStore, ReelError};
use reel_subscriptions::SubscriptionEngine;
use tokio::net::TcpListener;

pub use config::{ReadOnlyStreams, RequestLimits, ServerConfig, DEFAULT_PORT};
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use presence::{fold as fold_presence, PartitionWork, Presence, PresenceOptions};

use api::AppState;

/// A bound, ready server.
pub struct Server {
    engine: SubscriptionEngine,
    listener: TcpListener,
    state: api::AppContext,
    config: ServerConfig,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Server {
    /// Binds `config.listen` and prepares the routes; refuses a non-loopback address without
    /// tokens.
    pub async fn start(
        events: Arc<dyn EventStore>,
        engine: SubscriptionEngine,
        config: ServerConfig,
    ) -> Result<Self, ReelError> {
        config.check()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| ReelError::InvalidArgument(format!("cannot listen on {}: {e}", config.listen)))?;
        let tokens = config.require_tokens.then(|| Arc::new(tokens::TokenRegistry::new(events.clone())));
        if let Some(tokens) = &tokens {
            if tokens.active_count().await? == 0 {
                tracing::warn!(
                    "tokens are required but none exists yet: create one with `reel token create --scope admin`"
                );
            }
        }
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        let live = live::LiveTail::start(events.clone(), config.limits.live_buffer, watch.clone()).await?;
        let state = api::AppContext {
            events,
            engine: engine.clone(),
            tokens,
            limits: config.limits.clone(),
            metrics: Arc::new(metrics::Metrics::default()),
            live,
            shutdown: watch,
            read_only_streams: config.read_only_streams.clone(),
            presence: None,
        };
        Ok(Self { engine, listener, state, config, shutdown })
    }

    /// Keeps device presence (`POST /devices/{name}/heartbeat`, `GET /devices`, the dashboard's
    /// devices table) and, when the server runs its worker, sweeps it for changes.
    pub fn with_presence(mut self, presence: Presence) -> Self {
        self.state.presence = Some(presence);
        self
    }

    /// Where it listens (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves (and runs the worker for the engine's subscribers, unless told not to) until
    /// `shutdown` completes; then stops accepting, ends live streams, waits up to the grace period
    /// for open requests and stops the worker, which saves its positions and releases its leases.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ReelError> {
        let presence_worker = match (&self.state.presence, self.config.run_worker) {
            (Some(presence), true) => {
                let owner = format!("presence-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
                Some(tokio::spawn(presence.clone().run(owner, self.shutdown.subscribe())))
            }
            _ => None,
        };
        let mut stopped = self.shutdown.subscribe();
        let worker = (self.config.run_worker && self.engine.subscriber_ids().next().is_some()).then(|| {
            let options = reel_subscriptions::WorkerOptions::default();
            tokio::spawn(reel_subscriptions::Worker::new(self.engine.clone(), options).run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        });
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // HTTP/1.1 only: live streams and long polls need nothing more, and each open connection
        // then costs less than with protocol detection.
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(self.config.limits.header_timeout);
        let service = hyper_util::service::TowerToHyperService::new(router(Arc::new(self.state)));
        tokio::pin!(shutdown);
        loop {
            let (socket, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = socket.set_nodelay(true);
            let connection = http.serve_connection(TokioIo::new(socket), service.clone());
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        tracing::info!("shutting down: no new connections; ending live streams");
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(self.config.shutdown_grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("open connections did not finish within the grace period");
        }
        if let Some(presence) = presence_worker {
            let _ = presence.await;
        }
        if let Some(worker) = worker {
            worker.await.map_err(|e| ReelError::storage("stopping the worker", e))??;
        }
        Ok(())
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/streams", get(api::system::streams))
        .route("/streams/{stream}", post(api::streams::append).get(api::streams::read))
        .route("/streams/{stream}/live", get(api::live::stream_live))
        .route("/all", get(api::all::read_all))
        .route("/all/live", get(api::live::all_live))
        .route("/head", get(api::all::head))
        .route("/query", post(api::query::query))
        .route("/devices", get(api::devices::list))
        .route("/devices/{name}/heartbeat", post(api::devices::heartbeat))
        .route("/subscriptions", get(api::subscriptions::list))
        .route("/subscriptions/{id}/pause", post(api::subscriptions::pause))
        .route("/subscriptions/{id}/reactivate", post(api::subscriptions::reactivate))
        .route("/subscriptions/{id}/remove", post(api::subscriptions::remove))
        .route("/health", get(api::system::health))
        .route("/metrics", get(api::system::metrics))
        .route("/stats", get(api::system::stats))
        .route("/openapi.json", get(api::system::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this resource does not take that method")
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.http_requests.get_or_create(&metrics::StatusLabel { status }).inc();
    let micros = started.elapsed().as_micros() as u64;
    tracing::info!(target: "reel_server::access", %method, %path, status, micros, "request");
    response
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error::respond(self)
    }
}
