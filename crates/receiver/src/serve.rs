//! The HTTP/1.1 server in front of the WebSocket upgrade and the ops endpoints.
//!
//! hyper is driven directly, not through `axum::serve`, because `axum::serve` takes no settings
//! and an upgrade request is held to limits only hyper can apply: how long its head may take
//! (`--upgrade-timeout`; a client that drips header bytes is cut off), how large it may be
//! (`--max-header-bytes`; 431), and how many connections its address may hold at once
//! (`--max-connections-per-ip`; 429). WebSocket needs HTTP/1.1 only, so there is no HTTP/2.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse as _;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::per_ip::PerIp;
use crate::socket::ClientIo;
use crate::tls::Peer;

/// Longest a connection over its address's limit may take to send the request that is refused.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// What an HTTP connection is held to before it becomes a WebSocket.
#[derive(Debug, Clone)]
pub(crate) struct HttpLimits {
    upgrade_timeout: Duration,
    max_header_bytes: usize,
    per_ip: PerIp,
}

impl HttpLimits {
    pub(crate) fn new(config: &Config) -> Self {
        HttpLimits {
            upgrade_timeout: config.upgrade_timeout,
            max_header_bytes: config.max_header_bytes,
            per_ip: PerIp::new(config.max_connections_per_ip),
        }
    }
}

/// Accepts connections and serves `router` on each until `stop` resolves; then accepts no more
/// and waits for the requests in progress (an upgraded WebSocket is no longer an HTTP
/// connection: it ends with the receiver's own shutdown).
pub(crate) async fn serve<L>(mut listener: L, router: Router, limits: HttpLimits, metrics: Metrics, stop: impl Future<Output = ()>)
where
    L: Listener<Addr = SocketAddr>,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.upgrade_timeout).max_header_size(limits.max_header_bytes);
    let http = Arc::new(http);
    // Refusals are one short answer on a connection closed after it.
    let mut refusing = http1::Builder::new();
    refusing
        .timer(TokioTimer::new())
        .header_read_timeout(limits.upgrade_timeout.min(REFUSAL_TIMEOUT))
        .max_header_size(limits.max_header_bytes)
        .keep_alive(false);
    let refusing = Arc::new(refusing);
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (io, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        match limits.per_ip.admit(peer.ip()) {
            Some(slot) => {
                let io = ClientIo::new(io, slot);
                connections.spawn(serve_connection(http.clone(), io, peer, router.clone(), metrics.clone(), closing.clone()));
            }
            None => {
                metrics.connections_refused.with_label_values(&[REFUSED_PER_IP]).inc();
                // Debug, not info: a flood would otherwise write a line per attempt.
                tracing::debug!(%peer, limit = limits.per_ip.limit(), "connection refused: too many open from this address");
                connections.spawn(refuse_connection(refusing.clone(), io, peer, limits.per_ip.limit(), closing.clone()));
            }
        }
    }
    // Closing the listening socket: the kernel stops completing handshakes for us.
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// `connections_refused_total` reason of a connection over its address's limit.
pub(crate) const REFUSED_PER_IP: &str = "per_ip_limit";

/// Serves one connection: HTTP requests until it is upgraded to a WebSocket or closed.
async fn serve_connection<Io>(http: Arc<http1::Builder>, io: Io, peer: SocketAddr, router: Router, metrics: Metrics, closing: CancellationToken)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Whether a request head arrived whole: a header timeout before that is a client that
    // never finished its request (counted); after it, an idle keep-alive connection (not).
    let asked = Arc::new(AtomicBool::new(false));
    let service = {
        let asked = asked.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            asked.store(true, Ordering::Relaxed);
            request.extensions_mut().insert(ConnectInfo(Peer(peer)));
            // A Router is always ready: no poll_ready needed before call.
            router.clone().call(request)
        })
    };
    let connection = http.serve_connection(TokioIo::new(io), service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closing.cancelled() => {
            // Answer the request in progress, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    let Err(error) = result else { return };
    match refusal(&error, asked.load(Ordering::Relaxed)) {
        Some(reason) => {
            metrics.connections_refused.with_label_values(&[reason]).inc();
            tracing::debug!(%peer, reason, %error, "HTTP request refused");
        }
        None => tracing::debug!(%peer, %error, "HTTP connection ended with an error"),
    }
}

/// The `connections_refused_total` reason of a connection hyper gave up on, if it is one: the
/// answers are hyper's (431, 400; none for a timeout).
fn refusal(error: &hyper::Error, asked: bool) -> Option<&'static str> {
    if error.is_timeout() {
        (!asked).then_some("upgrade_timeout")
    } else if error.is_parse_too_large() {
        Some("headers_too_large")
    } else if error.is_parse() {
        Some("bad_request")
    } else {
        // The client went away mid-request, a reset, ...: nothing was refused.
        None
    }
}

/// Answers the connection's request with 429 and closes it.
async fn refuse_connection<Io>(http: Arc<http1::Builder>, io: Io, peer: SocketAddr, limit: usize, closing: CancellationToken)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
        let body = format!(
            "too many connections from {}: at most {limit} may be open at once from one address; close one or retry later\n",
            peer.ip().to_canonical()
        );
        let answer = (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "10")], body).into_response();
        std::future::ready(Ok::<_, Infallible>(answer))
    });
    let connection = http.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
