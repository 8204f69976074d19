//! The live feeds, as Server-Sent Events, of what the ingest newly stored, in the order stored:
//! `GET /api/live`, one `position` event per position (per vehicle: the order of the positions
//! topic) and one `decommissioned` per vehicle taken off the map, and `GET /api/events/live`, one
//! `event` per fleet event. One [`LiveFeed`] type serves both; each route has its own instance as
//! its state.
//!
//! SSE rather than WebSocket: the feeds only flow one way, browsers reconnect by themselves
//! (`EventSource`), and they pass through any HTTP proxy. Each client has a bounded buffer; one
//! that falls behind gets a `lagged` event (and should reload what it shows) instead of
//! slowing the ingest down.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream::{self, Stream};
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A live-feed message: one update, already serialized (once for every client), and its SSE
/// event name.
#[derive(Debug, Clone)]
struct LiveUpdate {
    event: &'static str,
    data: Arc<str>,
}

/// One feed: the ingest publishes what it stored, each client reads it through its own buffer
/// of `--live-buffer` updates.
#[derive(Debug, Clone)]
pub(crate) struct LiveFeed {
    /// The SSE event name of an update (unless published under another one).
    event: &'static str,
    updates: broadcast::Sender<LiveUpdate>,
    clients: IntGauge,
    lagged: IntCounter,
    /// Ends every open stream: an open stream must not hold the server's graceful shutdown.
    stop: CancellationToken,
}

/// The two feeds of a tracker.
#[derive(Debug, Clone)]
pub(crate) struct Feeds {
    /// `/api/live`: `position` events.
    pub positions: LiveFeed,
    /// `/api/events/live`: `event` events.
    pub events: LiveFeed,
}

impl Feeds {
    /// Both feeds, buffering `buffer` updates per client, whose streams end when `stop` is
    /// cancelled.
    pub(crate) fn new(buffer: NonZeroUsize, metrics: &Metrics, stop: CancellationToken) -> Self {
        Feeds {
            positions: LiveFeed::new("positions", "position", buffer, metrics, stop.clone()),
            events: LiveFeed::new("events", "event", buffer, metrics, stop),
        }
    }
}

impl LiveFeed {
    /// A feed named `name` in the metrics, whose updates are SSE events named `event`.
    fn new(name: &'static str, event: &'static str, buffer: NonZeroUsize, metrics: &Metrics, stop: CancellationToken) -> Self {
        let (updates, _) = broadcast::channel(buffer.get());
        LiveFeed {
            event,
            updates,
            clients: metrics.live_clients.with_label_values(&[name]),
            lagged: metrics.live_lagged.with_label_values(&[name]),
            stop,
        }
    }

    /// Sends newly stored items to every connected client, in the order given; with no client
    /// connected nothing is serialized.
    pub(crate) fn publish<T: Serialize>(&self, items: impl IntoIterator<Item = T>) {
        if self.updates.receiver_count() == 0 {
            return;
        }
        for item in items {
            self.publish_as(self.event, item);
        }
    }

    /// Sends one item as an update named `event` (not the feed's usual one).
    pub(crate) fn publish_as<T: Serialize>(&self, event: &'static str, item: T) {
        if self.updates.receiver_count() == 0 {
            return;
        }
        if let Ok(json) = serde_json::to_string(&item) {
            // An error only means the last client left meanwhile.
            let _ = self.updates.send(LiveUpdate { event, data: json.into() });
        }
    }

    /// Sends items that are JSON text already (stored event bodies), as they are.
    pub(crate) fn publish_json<'a>(&self, items: impl IntoIterator<Item = &'a str>) {
        if self.updates.receiver_count() == 0 {
            return;
        }
        for json in items {
            let _ = self.updates.send(LiveUpdate { event: self.event, data: json.into() });
        }
    }
}

/// Counts a client in the gauge for as long as its stream exists.
struct ClientGuard(IntGauge);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Client {
    updates: broadcast::Receiver<LiveUpdate>,
    stop: CancellationToken,
    started: bool,
    _guard: ClientGuard,
}

/// `GET /api/live` and `GET /api/events/live`: the feed is the route's state.
pub(crate) async fn serve(State(feed): State<LiveFeed>) -> impl IntoResponse {
    feed.clients.inc();
    // Subscribed before the response goes out: once a client has the headers, it misses
    // nothing stored after that.
    let client = Client {
        updates: feed.updates.subscribe(),
        stop: feed.stop.clone(),
        started: false,
        _guard: ClientGuard(feed.clients.clone()),
    };
    Sse::new(stream_of(client, feed.lagged.clone())).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn stream_of(client: Client, lagged: IntCounter) -> impl Stream<Item = Result<Event, Infallible>> {
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
                Ok(update) => Event::default().event(update.event).data(&*update.data),
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
