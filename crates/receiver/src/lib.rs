//! fleetstream receiver: the WebSocket gateway between vehicles and Kafka.
//!
//! Devices connect to `ws://HOST:30000/ws`, authenticate with a token bound to their obu_id(s),
//! and send positions as JSON text frames. Each position is written to the raw topic (key =
//! obu_id) by one shared idempotent, acks=all producer, and answered with an ack frame only after
//! Kafka's delivery report, or with an error frame naming a reason code. Input that cannot be
//! accepted is kept in the dead-letter topic. See docs/wire-format.md.
//!
//! ```text
//! receiver --kafka-brokers 127.0.0.1:9092 --auth none
//! ```

mod auth;
mod config;
mod connection;
mod ingest;
mod limits;
mod metrics;
mod per_ip;
mod serve;
mod socket;
mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rdkafka::producer::{FutureProducer, Producer as _};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use fleetstream_core::frames::{ErrorFrame, ServerFrame};
use fleetstream_core::http::{ops_router, Health};
use fleetstream_core::reason::{Reason, Rejection};

pub use auth::{Allowed, Tokens};
pub use config::{AuthMode, Config};
pub use connection::close_code;
pub use metrics::Metrics;

/// Socket read buffer of each WebSocket connection. tungstenite zero-fills all of it before
/// the first read, so every idle connection holds it whole; a position is a few hundred bytes,
/// and a larger frame is read in several calls into a buffer grown to the frame's size.
const WS_READ_BUFFER_BYTES: usize = 2 * 1024;

/// Write batching threshold of each WebSocket connection (allocated only as answers are
/// written).
const WS_WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Most bytes a WebSocket connection keeps unsent. Answers wait for the socket instead (and
/// `--write-timeout` ends the wait); this bounds what tungstenite queues by itself: the pongs
/// to a device that pings and never reads.
const WS_MAX_WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// What the server and its handlers share.
pub(crate) struct Shared {
    config: Config,
    ingest: Arc<ingest::Ingest>,
    limits: limits::ConnectionLimits,
    metrics: Metrics,
    connections: Arc<Semaphore>,
    /// The current device tokens (reloaded on SIGHUP or when the file changes); none with
    /// `--auth none`.
    tokens: Option<tokio::sync::watch::Sender<Arc<Tokens>>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    health: Health,
    next_connection: AtomicU64,
}

impl Shared {
    fn gateway(&self) -> connection::Gateway {
        connection::Gateway {
            ingest: self.ingest.clone(),
            limits: self.limits,
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

/// A bound, not yet serving receiver.
pub struct Application {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("addr", &self.listener.local_addr().ok()).finish()
    }
}

impl Application {
    /// Loads tokens, creates the producer and binds the listener (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // A descriptor per connection, plus the listener, Kafka's sockets and the ops server.
        fleetstream_core::nofile::raise_and_log("receiver", Some(config.max_connections as u64 + 256));
        let tokens = match config.auth {
            AuthMode::None => {
                tracing::warn!("device authentication is OFF (--auth none): any client may publish as any vehicle");
                None
            }
            AuthMode::Token => {
                let tokens = Tokens::load(config.auth_tokens_file.as_deref(), config.auth_tokens.as_ref().map(fleetstream_core::secret::Secret::expose))?;
                tracing::info!(tokens = tokens.len(), "device tokens loaded");
                Some(tokio::sync::watch::Sender::new(Arc::new(tokens)))
            }
        };
        let mut producer_config = config.kafka.producer_config(&config.producer);
        // Room for every in-flight position plus DLQ records, so the local queue is never the
        // bound: the in-flight semaphores are.
        let queue = (config.max_in_flight * 2).max(100_000);
        producer_config.set("queue.buffering.max.messages", queue.to_string());
        config.kafka.apply_overrides(&mut producer_config);
        let producer: FutureProducer = producer_config.create().context("cannot create Kafka producer")?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let instance = config.instance_id.clone().unwrap_or_else(|| format!("receiver-{:08x}", rand_id()));
        tracing::info!(
            addr = %listener.local_addr()?,
            brokers = %config.kafka.brokers,
            options = ?config.kafka.redacted_options(),
            topic = %config.topic,
            tls = tls.is_some(),
            instance = %instance,
            "receiver listening"
        );
        let tracing = fleetstream_core::otel::Tracing::start(&config.trace, "fleetstream-receiver", config.trace_sample_ratio)?;
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            ingest: Arc::new(ingest::Ingest::new(&config, producer, instance, tracing, metrics.clone(), shutdown.clone())),
            limits: limits::ConnectionLimits::new(&config),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            metrics,
            tokens,
            shutdown,
            tracker: TaskTracker::new(),
            health: Health::new(),
            next_connection: AtomicU64::new(1),
            config,
        });
        Ok(Application { listener, tls, shared })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The service's metrics (tests and embedding).
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics.clone()
    }

    /// Serves until `shutdown` resolves, then drains: no new connections or frames, every
    /// in-flight position answered, sockets closed with 1001, all within the shutdown timeout.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let shared = self.shared;
        let probe = tokio::spawn(probe_kafka(shared.clone()));
        let reload = tokio::spawn(reload_tokens(shared.clone()));
        let router = Router::new()
            .route("/ws", get(upgrade))
            .with_state(shared.clone())
            .merge(ops_router(shared.metrics.registry.clone(), shared.health.clone()));
        let stopping = shared.clone();
        let stop = async move {
            shutdown.await;
            stopping.health.set_stopping();
            stopping.shutdown.cancel();
        };
        let limits = serve::HttpLimits::new(&shared.config);
        let metrics = shared.metrics.clone();
        match self.tls {
            Some(config) => {
                let listener = tls::TlsListener::new(self.listener, config, shared.config.tls_handshake_timeout)?;
                serve::serve(listener, router, limits, metrics, stop).await;
            }
            None => serve::serve(self.listener, router, limits, metrics, stop).await,
        }

        let timeout = shared.config.shutdown_timeout;
        shared.tracker.close();
        if tokio::time::timeout(timeout, shared.tracker.wait()).await.is_err() {
            tracing::warn!(?timeout, "connections still draining at the shutdown timeout");
        }
        probe.abort();
        reload.abort();
        let producer = shared.ingest.producer().clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        let spans = shared.ingest.tracing.clone();
        let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
        tracing::info!("receiver stopped");
        Ok(())
    }
}

/// Reloads the device tokens on SIGHUP and when the token file changes (checked every
/// `--auth-tokens-poll`). A file that does not parse, or holds no token, is refused: the tokens
/// in use stay, and the error is logged and counted. Connections whose token is gone are
/// closed by themselves (they watch the tokens).
async fn reload_tokens(shared: Arc<Shared>) {
    let Some(tokens) = &shared.tokens else { return };
    let config = &shared.config;
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = config.auth_tokens_file.as_deref().and_then(modified);
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; token file changes are still picked up");
            None
        }
    };
    loop {
        let asked = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            () = tokio::time::sleep(config.auth_tokens_poll) => false,
        };
        let now = config.auth_tokens_file.as_deref().and_then(modified);
        if !asked && now == seen {
            continue;
        }
        seen = now;
        match Tokens::load(config.auth_tokens_file.as_deref(), config.auth_tokens.as_ref().map(fleetstream_core::secret::Secret::expose)) {
            Ok(new) => {
                tracing::info!(tokens = new.len(), trigger = if asked { "SIGHUP" } else { "file changed" }, "device tokens reloaded");
                shared.metrics.token_reloads.with_label_values(&["ok"]).inc();
                tokens.send_replace(Arc::new(new));
            }
            Err(error) => {
                shared.metrics.token_reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = format!("{error:#}"), "device tokens NOT reloaded; the previous ones stay in use");
            }
        }
    }
}

fn rand_id() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

#[derive(Debug, Deserialize)]
struct ConnectQuery {
    token: Option<String>,
}

/// `GET /ws`: check the handshake, authenticate, admit, upgrade.
async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(tls::Peer(peer)): ConnectInfo<tls::Peer>,
    query: Result<Query<ConnectQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Not a WebSocket handshake (no key, another version, no `Upgrade: websocket`...) or an
    // unreadable query string: axum's answer (400 or 426, saying what is wrong), counted.
    let (query, ws) = match (query, ws) {
        (Ok(Query(query)), Ok(ws)) => (query, ws),
        (Err(rejection), _) => return bad_handshake(&shared, peer, rejection.into_response()),
        (_, Err(rejection)) => return bad_handshake(&shared, peer, rejection.into_response()),
    };
    let (allowed, credential) = match &shared.tokens {
        None => (Allowed::Any, None),
        Some(tokens) => match tokens.borrow().credential(&headers, query.token.as_deref()) {
            Ok((key, allowed)) => (allowed, Some(connection::Credential::new(key, tokens.subscribe()))),
            Err(failure) => {
                shared.metrics.auth_failures.with_label_values(&[failure.as_str()]).inc();
                shared.metrics.connections_refused.with_label_values(&["unauthorized"]).inc();
                tracing::info!(%peer, reason = failure.as_str(), "connection refused: authentication failed");
                let body = match failure {
                    auth::AuthFailure::Missing => "missing device token: send `Authorization: Bearer TOKEN` or ?token=TOKEN\n",
                    auth::AuthFailure::Invalid => "invalid device token\n",
                };
                return (StatusCode::UNAUTHORIZED, [("www-authenticate", "Bearer")], body).into_response();
            }
        },
    };
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "receiver shutting down\n").into_response();
    }
    let hard_cap = shared.limits.hard_frame_cap();
    // tungstenite's default 128 KiB read buffer per connection would dominate the memory of
    // 100k idle connections; frames larger than the buffer are still read, in several reads.
    let ws = ws
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER_BYTES);
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        shared.metrics.connections_refused.with_label_values(&[Reason::TooManyConnections.as_str()]).inc();
        let limit = shared.config.max_connections;
        return ws.on_upgrade(move |socket| refuse_connection(socket, limit));
    };
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let tracker = shared.tracker.clone();
    ws.on_upgrade(move |socket| {
        tracker.track_future(async move {
            tracing::debug!(conn = id, %peer, "connection opened");
            connection::Connection::new(shared.gateway(), id, peer, allowed, credential).run(socket).await;
            drop(permit);
        })
    })
}

/// Answers a request that is not a usable WebSocket handshake, and counts it.
fn bad_handshake(shared: &Shared, peer: std::net::SocketAddr, answer: Response) -> Response {
    shared.metrics.connections_refused.with_label_values(&["bad_request"]).inc();
    tracing::debug!(%peer, status = %answer.status(), "upgrade refused: not a valid WebSocket handshake");
    answer
}

/// Over the connection limit: say so in the protocol, then close with 1013 (try again later).
async fn refuse_connection(mut socket: WebSocket, limit: usize) {
    let error = ErrorFrame::new(Rejection::new(
        Reason::TooManyConnections,
        format!("the receiver is at its limit of {limit} connections; reconnect later"),
    ));
    let _ = socket.send(Message::Text(ServerFrame::Error(error).to_json().into())).await;
    let close = CloseFrame { code: close_code::TRY_AGAIN_LATER, reason: Utf8Bytes::from_static("too many connections") };
    let _ = socket.send(Message::Close(Some(close))).await;
}

/// Positions in flight with no delivery answered for this long make the receiver not ready.
const DELIVERY_STALL: Duration = Duration::from_secs(5);

/// Keeps `/readyz` and `fleetstream_receiver_kafka_up` true to whether Kafka answers and
/// acknowledges.
async fn probe_kafka(shared: Arc<Shared>) {
    // A client of its own that remembers why Kafka refused it (credentials, TLS, an ACL), so
    // `/readyz` says so instead of "transport failure".
    let probe = match fleetstream_core::kafka::Probe::new(&shared.config.kafka) {
        Ok(probe) => Arc::new(probe),
        Err(error) => {
            shared.metrics.kafka_up.set(0);
            shared.health.set_not_ready(format!("cannot create a Kafka client: {error:#}"));
            tracing::error!(error = format!("{error:#}"), "cannot create a Kafka client");
            return;
        }
    };
    let mut last_error = String::new();
    loop {
        let (s, p) = (shared.clone(), probe.clone());
        let result = tokio::task::spawn_blocking(move || p.partitions(&s.config.topic, Duration::from_secs(2))).await;
        match result {
            Ok(Ok(Some(_))) => {
                shared.metrics.kafka_up.set(1);
                last_error.clear();
                match shared.ingest.stalled_for(DELIVERY_STALL) {
                    None => shared.health.set_ready(),
                    Some(silent) => shared.health.set_not_ready(format!(
                        "Kafka has acknowledged no position for {:.0} s with {} in flight (too few in-sync replicas?)",
                        silent.as_secs_f64(),
                        shared.metrics.in_flight.get()
                    )),
                }
            }
            Ok(Ok(None)) => {
                shared.metrics.kafka_up.set(1);
                shared.health.set_not_ready(format!("topic {} does not exist", shared.config.topic));
            }
            Ok(Err(error)) => {
                shared.metrics.kafka_up.set(0);
                let message = format!("{error:#}");
                if message != last_error {
                    tracing::error!(error = %message, "Kafka cannot be used");
                    last_error.clone_from(&message);
                }
                shared.health.set_not_ready(format!("Kafka cannot be used: {message}"));
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
