//! The live feed: Server-Sent Events at `GET /api/live`, one `position` event per position newly
//! stored, in the order they were stored (per vehicle: the order of the positions topic).
//!
//! SSE rather than WebSocket: the feed only flows one way, browsers reconnect by themselves
//! (`EventSource`), and it passes through any HTTP proxy. Each client has a bounded buffer; one
//! that falls behind gets a `lagged` event (and should reload `/api/vehicles`) instead of
//! slowing the ingest down.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use fleetstream_core::ProcessedPosition;

use crate::metrics::Metrics;
use crate::view::VehicleView;

/// A live-feed message: one position, already serialized (once for every client).
type LiveUpdate = Arc<str>;

/// The feed: the ingest publishes what it stored, each `/api/live` client reads it through its
/// own buffer of `--live-buffer` updates.
#[derive(Debug, Clone)]
pub(crate) struct LiveFeed {
    updates: broadcast::Sender<LiveUpdate>,
    metrics: Metrics,
    /// Ends every open feed: an open stream must not hold the server's graceful shutdown.
    stop: CancellationToken,
}

impl LiveFeed {
    /// A feed buffering `buffer` updates per client, whose streams end when `stop` is cancelled.
    pub(crate) fn new(buffer: NonZeroUsize, metrics: Metrics, stop: CancellationToken) -> Self {
        let (updates, _) = broadcast::channel(buffer.get());
        LiveFeed { updates, metrics, stop }
    }

    /// Sends newly stored positions to every connected client, in the order given; with no
    /// client connected nothing is serialized.
    pub(crate) fn publish<'a>(&self, positions: impl IntoIterator<Item = &'a ProcessedPosition>) {
        if self.updates.receiver_count() == 0 {
            return;
        }
        for p in positions {
            if let Ok(json) = serde_json::to_string(&VehicleView::live(p)) {
                // An error only means the last client left meanwhile.
                let _ = self.updates.send(json.into());
            }
        }
    }
}

/// Counts a client in the gauge for as long as its stream exists.
struct ClientGuard(Metrics);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.live_clients.dec();
    }
}

struct Client {
    updates: broadcast::Receiver<LiveUpdate>,
    stop: CancellationToken,
    started: bool,
    _guard: ClientGuard,
}

/// `GET /api/live`
pub(crate) async fn live(State(feed): State<LiveFeed>) -> impl IntoResponse {
    feed.metrics.live_clients.inc();
    // Subscribed before the response goes out: once a client has the headers, it misses
    // nothing stored after that.
    let client = Client { updates: feed.updates.subscribe(), stop: feed.stop.clone(), started: false, _guard: ClientGuard(feed.metrics.clone()) };
    let lagged = feed.metrics.live_lagged.clone();
    Sse::new(events(client, lagged)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn events(client: Client, lagged: prometheus::IntCounter) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(client, move |mut c| {
        let lagged = lagged.clone();
        async move {
            if !c.started {
                // Tells the browser how soon to reconnect, and gets the headers flushed at once.
                c.started = true;
                return Some((Ok(Event::default().retry(Duration::from_secs(2)).comment("fleetstream live feed")), c));
            }
            // Ends the stream on shutdown: an open feed must not hold the server's graceful
            // shutdown forever.
            let next = tokio::select! {
                () = c.stop.cancelled() => return None,
                next = c.updates.recv() => next,
            };
            let event = match next {
                Ok(json) => Event::default().event("position").data(&*json),
                Err(RecvError::Lagged(missed)) => {
                    lagged.inc();
                    Event::default().event("lagged").data(format!("{{\"missed\":{missed}}}"))
                }
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), c))
        }
    })
}
